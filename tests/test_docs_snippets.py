"""Every ```python block in the docs and the README runs as it is written.

A block fenced as ```python must be a complete program. A fragment that needs the reader's own model (for example
``freeze_delta(network, ...)``) is fenced as ```py instead: it is highlighted the same way but not run here.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
RUNNABLE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Runs each block file in one interpreter (importing MindSpore once per page), each in a fresh namespace and in
# GRAPH mode, the default. MindSpore compiles GRAPH cells from their source file, so blocks are files, not strings.
RUNNER = """
import runpy, sys
import mindspore as ms
for path in sys.argv[1:]:
    ms.set_context(mode=ms.GRAPH_MODE)
    print(f"--- {path}", flush=True)
    runpy.run_path(path, run_name="__main__")
"""


def runnable_blocks(page):
    with open(page, encoding="utf-8") as handle:
        return RUNNABLE_BLOCK.findall(handle.read())


def test_every_page_is_checked():
    # A page without a runnable block is allowed, but the pages that teach an API must keep one, and so must the
    # README, whose four-step workflow is the first code a newcomer copies.
    pages_with_code = {os.path.basename(page) for page in PAGES if runnable_blocks(page)}
    assert {"lora.md", "adapter.md", "low_rank_adapter.md", "prefix.md", "ptuning2.md", "r_drop.md",
            "bitfit.md", "freeze.md", "checkpoint.md", "injection.md", "README.md", "prompt_tuning.md",
            "ptuning.md", "adalora.md"} <= pages_with_code


# Every text a user reads for installation; the package named mindpet on PyPI is MindPet 1.0.4, not this one.
INSTALL_TEXTS = PAGES + sorted(glob.glob(os.path.join(ROOT, "mindpet", "**", "*.py"), recursive=True)
                               + glob.glob(os.path.join(ROOT, "bench", "*.py"))
                               + glob.glob(os.path.join(ROOT, "examples", "**", "*.py"), recursive=True))


def test_no_text_tells_users_to_install_mindpet_from_pypi():
    """
    Feature: Installation instructions.
    Description: Search the README, the docs and every message in the code for a pip install of 'mindpet' (with or
        without extras or quotes).
    Expectation: None: installs are from the clone ('pip install -e .'), and the README explains MindFormers.
    """
    from_pypi = re.compile(r"pip install\s+(--\S+\s+)*[\"']?mindpet\b")
    offenders = []
    for path in INSTALL_TEXTS:
        with open(path, encoding="utf-8") as handle:
            offenders += [f"{os.path.relpath(path, ROOT)}: {line.strip()}" for line in handle if from_pypi.search(line)]
    assert offenders == []
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert "pip install -e ." in readme and "pip install --no-deps mindformers" in readme


@pytest.mark.parametrize("page", [page for page in PAGES if runnable_blocks(page)],
                         ids=lambda page: os.path.relpath(page, ROOT))
def test_python_blocks_run(page, tmp_path):
    paths = []
    for index, block in enumerate(runnable_blocks(page)):
        path = tmp_path / f"block_{index}.py"
        path.write_text(block, encoding="utf-8")
        paths.append(str(path))
    result = subprocess.run([sys.executable, "-c", RUNNER, *paths], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, f"a block of {page} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
