"""The shardable activations: each name against a NumPy formula, lookup errors and shard reach."""

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindpet.parallel.activation import shard_activation
from mindpet.utils.activation import ACTIVATION_NAMES, ActivationNotFoundError, ShardableActivation, build_activation
from numpy_activations import REFERENCES


def test_every_name_has_a_reference():
    assert set(REFERENCES) == set(ACTIVATION_NAMES)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_matches_numpy(mode, name):
    x = np.linspace(-4.0, 4.0, 24, dtype=np.float32).reshape(4, 6)
    out = build_activation(name, "activation", "Test")(Tensor(x))
    np.testing.assert_allclose(out.asnumpy(), REFERENCES[name](x.astype(np.float64)), rtol=1e-4, atol=1e-5)


def test_names_are_case_insensitive():
    assert isinstance(build_activation("ReLU", "activation", "Test"), ShardableActivation)


def test_cells_are_kept_and_primitives_wrapped():
    cell = nn.Tanh()
    assert build_activation(cell, "activation", "Test") is cell
    wrapped = build_activation(ops.ReLU(), "activation", "Test")
    assert isinstance(wrapped, ShardableActivation)
    np.testing.assert_array_equal(wrapped(Tensor(np.array([[-1.0, 2.0]], np.float32))).asnumpy(), [[0.0, 2.0]])
    assert build_activation(None, "activation", "Test") is None


def test_unknown_name_error_is_readable_and_catchable_as_both_types():
    with pytest.raises(ActivationNotFoundError) as info:
        build_activation("swishy", "non_linearity", "Test")
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    # KeyError would wrap the message in quotes; the error prints it plainly.
    assert str(info.value).startswith("For 'Test', the argument 'non_linearity' must be one of")
    assert "but got 'swishy'" in str(info.value)


@pytest.mark.parametrize("bad", [1, 0.5, ["relu"], nn.Dense])
def test_bad_type(bad):
    with pytest.raises(TypeError, match="'activation' must be a str, Cell, Primitive or None"):
        build_activation(bad, "activation", "Test")


@pytest.mark.parametrize("activation", ["logsoftmax", nn.LogSoftmax(), ops.LogSoftmax()])
def test_log_softmax_refused_in_semi_auto_parallel(activation):
    ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel")
    try:
        with pytest.raises(ValueError, match="cannot be LogSoftmax in semi-auto or auto parallel mode"):
            build_activation(activation, "activation", "Test")
    finally:
        ms.reset_auto_parallel_context()
    assert isinstance(build_activation(activation, "activation", "Test"), nn.Cell)


@pytest.mark.parametrize("name,expected", [
    ("relu", [((2, 4),)]),
    ("silu", [((2, 4),), ((2, 4), (2, 4))]),
    ("leakyrelu", [((2, 4), ()), ((2, 4), (2, 4))]),
])
def test_shard_layout_reaches_every_primitive(name, expected):
    activation = build_activation(name, "activation", "Test")
    shard_activation(activation, ((2, 4),), "strategy_activation", "Test")
    assert [primitive.in_strategy for primitive, _ in activation.layout_plan()] == expected


def test_shard_a_cell_with_one_primitive():
    relu = nn.ReLU()
    shard_activation(relu, ((2, 1),), "strategy_activation", "Test")
    assert relu.relu.in_strategy == ((2, 1),)


def test_shard_a_cell_without_reachable_primitive_names_the_argument():
    with pytest.raises(ValueError, match="'strategy_activation' cannot be applied to the activation cell GELU"):
        shard_activation(nn.GELU(), ((2, 1),), "strategy_activation", "Test")
