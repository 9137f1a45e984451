"""Shared fixtures: execution modes and deterministic seeds. The examples folder is importable from tests."""
import os
import sys

import numpy as np
import pytest
import mindspore as ms

# Tests exercise the example models (such as examples/tiny_decoder.py) that the docs point users to.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


@pytest.fixture(params=sorted(MODES))
def mode(request):
    """Run the test once in GRAPH_MODE and once in PYNATIVE_MODE."""
    ms.set_context(mode=MODES[request.param])
    yield request.param
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    ms.set_seed(0)
    yield
