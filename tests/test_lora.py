"""LoRADense against a NumPy reference of its formula, its errors, merge/unmerge and shard()."""
import logging
import os
import re

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindpet.delta import AdapterDense, AdapterLayer, LoRADense, LowRankAdapterDense, merge_and_unload
from mindpet.delta.base.dense_core import DenseCore
from mindpet.utils.activation import ActivationNotFoundError
from numpy_activations import REFERENCES

IN, OUT, RANK, ALPHA = 6, 5, 3, 4.0
# The manual's shard() example splits out_channels 4-way, so the cells it is applied to have 8 of them.
SHARD_OUT = 8


REFERENCE_ACTIVATIONS = {None: lambda x: x, "gelu": REFERENCES["gelu"], "tanh_cell": np.tanh,
                         "relu_primitive": lambda x: np.maximum(x, 0.0)}


def make_activation(kind):
    return {None: None, "gelu": "gelu", "tanh_cell": nn.Tanh(), "relu_primitive": ops.ReLU()}[kind]


def random_weights(rng, has_bias=True, out_channels=OUT):
    weights = {"weight": rng.standard_normal((out_channels, IN)).astype(np.float32) * 0.5,
               "lora_a": rng.standard_normal((RANK, IN)).astype(np.float32) * 0.5,
               "lora_b": rng.standard_normal((out_channels, RANK)).astype(np.float32) * 0.5}
    if has_bias:
        weights["bias"] = rng.standard_normal(out_channels).astype(np.float32)
    return weights


def build_lora(weights, **kwargs):
    out_channels = weights["weight"].shape[0]
    return LoRADense(IN, out_channels, lora_rank=RANK, lora_alpha=ALPHA, weight_init=Tensor(weights["weight"]),
                     bias_init=Tensor(weights["bias"]) if "bias" in weights else "zeros",
                     lora_a_init=Tensor(weights["lora_a"]), lora_b_init=Tensor(weights["lora_b"]),
                     has_bias="bias" in weights, **kwargs)


def reference(x, weights, activation=None):
    """act(x W^T + b + alpha/r * x A^T B^T) in float64."""
    x = x.astype(np.float64)
    y = x @ weights["weight"].T + weights.get("bias", 0.0)
    y = y + (ALPHA / RANK) * (x @ weights["lora_a"].T @ weights["lora_b"].T)
    return REFERENCE_ACTIVATIONS[activation](y)


CASES = [
    # (input shape, compute dtype, has_bias, activation)
    ((4, IN), ms.float32, True, None),
    ((2, 3, IN), ms.float32, True, "gelu"),
    ((2, 3, IN), ms.float32, False, "tanh_cell"),
    ((2, 2, 2, IN), ms.float32, True, "relu_primitive"),
    ((4, IN), ms.float16, True, "gelu"),
    ((2, 3, IN), ms.float16, False, None),
]


@pytest.mark.parametrize("shape,compute_dtype,has_bias,activation", CASES)
def test_matches_numpy_reference(mode, shape, compute_dtype, has_bias, activation):
    rng = np.random.default_rng(1)
    weights = random_weights(rng, has_bias)
    cell = build_lora(weights, compute_dtype=compute_dtype, activation=make_activation(activation))
    x = rng.standard_normal(shape).astype(np.float32)
    out = cell(Tensor(x))
    expected = reference(x, weights, activation)
    assert out.shape == shape[:-1] + (OUT,)
    assert out.dtype == ms.float32
    tolerance = 1e-5 if compute_dtype == ms.float32 else 2e-2
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=tolerance, atol=tolerance)
    # The delta branch must matter for this check to mean anything.
    without_delta = REFERENCE_ACTIVATIONS[activation](x @ weights["weight"].T + weights.get("bias", 0.0))
    assert np.abs(expected - without_delta).max() > 0.1


def test_output_keeps_input_dtype(mode):
    weights = random_weights(np.random.default_rng(2))
    cell = build_lora(weights, compute_dtype=ms.float32)
    x = np.random.default_rng(3).standard_normal((2, IN)).astype(np.float16)
    out = cell(Tensor(x))
    assert out.dtype == ms.float16
    np.testing.assert_allclose(out.asnumpy(), reference(x.astype(np.float32), weights), rtol=2e-2, atol=2e-2)


def test_float16_parameters(mode):
    weights = random_weights(np.random.default_rng(4))
    cell = build_lora(weights, param_init_type=ms.float16, compute_dtype=ms.float32)
    assert all(p.dtype == ms.float16 for p in cell.get_parameters() if p.name != "lora_branch_scale")
    x = np.random.default_rng(5).standard_normal((3, IN)).astype(np.float32)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), reference(x, weights), rtol=1e-2, atol=1e-2)


def test_fresh_cell_equals_the_dense_it_replaces(mode):
    dense = nn.Dense(IN, OUT, activation="relu")
    lora = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, activation="relu", compute_dtype=ms.float32,
                     weight_init=Tensor(dense.weight.asnumpy()), bias_init=Tensor(dense.bias.asnumpy()))
    assert not np.any(lora.mindpet_delta_lora_b.asnumpy())
    assert np.any(lora.mindpet_delta_lora_a.asnumpy())
    x = Tensor(np.random.default_rng(6).standard_normal((4, IN)).astype(np.float32))
    np.testing.assert_allclose(lora(x).asnumpy(), dense(x).asnumpy(), rtol=1e-6, atol=1e-6)


LORA_DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "lora.md")


def documented_precision():
    """The Precision table of docs/lora.md: compute dtype name -> (fresh vs nn.Dense, merged vs unmerged)."""
    table = {}
    with open(LORA_DOCS, encoding="utf-8") as docs:
        for line in docs:
            # Cells are separated by '|' not escaped as '\\|' (which the cells use for max|y|).
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if len(cells) == 3 and re.fullmatch(r"`float(16|32)`( \(default\))?", cells[0]):
                table[cells[0].split("`")[1]] = (cells[1], cells[2])
    return table


def assert_within_claim(claim, measured, reference):
    """``claim`` is 'bit-identical' or 'within <bound> of max\\|y\\|' (relative to the largest output)."""
    if claim == "bit-identical":
        assert np.array_equal(measured, reference)
    else:
        bound = float(re.fullmatch(r"within ([0-9.e-]+) of max\\\|y\\\|", claim).group(1))
        assert np.abs(measured - reference).max() <= bound * np.abs(reference).max()


@pytest.mark.parametrize("channels", [64, 768])
def test_documented_precision_holds(channels):
    """
    Feature: The precision docs/lora.md states for each compute dtype.
    Description: With float32 parameters, compare a fresh LoRADense with the nn.Dense of the same weights, and a
        merged cell (nonzero B) with the unmerged one, on standard normal inputs, for both compute dtypes.
    Expectation: float32 is bit-identical to nn.Dense; every difference is within the bound the table states.
    """
    table = documented_precision()
    assert sorted(table) == ["float16", "float32"] and table["float32"][0] == "bit-identical"
    rng = np.random.default_rng(channels)
    x = Tensor(rng.standard_normal((32, channels)).astype(np.float32))
    for name, compute_dtype in (("float32", ms.float32), ("float16", ms.float16)):
        fresh_claim, merge_claim = table[name]
        lora = LoRADense(channels, channels, lora_rank=8, lora_alpha=16, compute_dtype=compute_dtype,
                         bias_init=Tensor(rng.standard_normal(channels).astype(np.float32) * 0.1))
        dense = nn.Dense(channels, channels, weight_init=Tensor(lora.weight.asnumpy()),
                         bias_init=Tensor(lora.bias.asnumpy()))
        assert_within_claim(fresh_claim, lora(x).asnumpy(), dense(x).asnumpy())
        lora.mindpet_delta_lora_b.set_data(Tensor(rng.standard_normal((channels, 8)).astype(np.float32) * 0.01))
        unmerged = lora(x).asnumpy()
        lora.merge()
        assert_within_claim(merge_claim, lora(x).asnumpy(), unmerged)


def test_parameter_names_root_and_nested():
    root = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA)
    assert [p.name for p in root.get_parameters()] == [
        "weight", "bias", "mindpet_delta_lora_a", "mindpet_delta_lora_b", "lora_branch_scale"]
    assert root.mindpet_delta_lora_a.shape == (RANK, IN)
    assert root.mindpet_delta_lora_b.shape == (OUT, RANK)
    assert not root.lora_branch_scale.requires_grad

    class Block(nn.Cell):
        def __init__(self):
            super().__init__()
            self.layers = nn.CellList([LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA)])

        def construct(self, x):
            return self.layers[0](x)

    assert [p.name for p in Block().get_parameters()][:4] == [
        "layers.0.weight", "layers.0.bias", "layers.0.mindpet_delta_lora_a", "layers.0.mindpet_delta_lora_b"]


def test_dropout_applies_to_branch_only_while_training(mode):
    weights = random_weights(np.random.default_rng(7))
    cell = build_lora(weights, lora_dropout=0.5, compute_dtype=ms.float32)
    x = np.random.default_rng(8).standard_normal((64, IN)).astype(np.float32)
    cell.set_train(False)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), reference(x, weights), rtol=1e-5, atol=1e-5)
    cell.set_train(True)
    trained = cell(Tensor(x)).asnumpy()
    assert np.abs(trained - reference(x, weights)).max() > 1e-3
    # Dropout touches the branch input only: the Dense part is unchanged, so removing it leaves a pure
    # low-rank term, which lies in the column space of B.
    branch = trained - (x @ weights["weight"].T + weights["bias"])
    residual = branch - branch @ np.linalg.pinv(weights["lora_b"].T) @ weights["lora_b"].T
    assert np.abs(residual).max() < 1e-4


class TestMerge:
    def test_merged_forward_matches_unmerged_and_unmerge_restores(self, mode):
        weights = random_weights(np.random.default_rng(9))
        cell = build_lora(weights, compute_dtype=ms.float32, activation="gelu")
        x = Tensor(np.random.default_rng(10).standard_normal((2, 3, IN)).astype(np.float32))
        before = cell(x).asnumpy()
        assert not cell.merged
        assert cell.merge() is cell
        assert cell.merged
        expected_weight = weights["weight"] + (ALPHA / RANK) * weights["lora_b"] @ weights["lora_a"]
        np.testing.assert_allclose(cell.weight.asnumpy(), expected_weight, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cell(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
        assert cell.unmerge() is cell
        assert not cell.merged
        np.testing.assert_allclose(cell.weight.asnumpy(), weights["weight"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cell(x).asnumpy(), before, rtol=1e-5, atol=1e-5)

    def test_network_compiled_before_merge_stays_correct(self, graph_mode):
        weights = random_weights(np.random.default_rng(11))
        cell = build_lora(weights, compute_dtype=ms.float32)
        net = nn.SequentialCell([cell, nn.ReLU()])
        x = Tensor(np.random.default_rng(12).standard_normal((4, IN)).astype(np.float32))
        before = net(x).asnumpy()
        cell.merge()
        np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
        cell.unmerge()
        np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-5)

    def test_merge_twice_and_unmerge_unmerged_warn_and_do_nothing(self, caplog):
        cell = build_lora(random_weights(np.random.default_rng(13)))
        with caplog.at_level(logging.WARNING, logger="mindpet"):
            cell.unmerge()
        assert "not merged" in caplog.text
        cell.merge()
        merged_weight = cell.weight.asnumpy().copy()
        with caplog.at_level(logging.WARNING, logger="mindpet"):
            cell.merge()
        assert "already merged" in caplog.text
        assert np.array_equal(cell.weight.asnumpy(), merged_weight)

    def test_merged_state_travels_with_a_full_checkpoint(self, tmp_path):
        weights = random_weights(np.random.default_rng(14))
        cell = build_lora(weights, compute_dtype=ms.float32).merge()
        path = str(tmp_path / "merged.ckpt")
        ms.save_checkpoint(cell, path)
        fresh = build_lora(random_weights(np.random.default_rng(15)), compute_dtype=ms.float32)
        ms.load_param_into_net(fresh, ms.load_checkpoint(path))
        assert fresh.merged
        x = Tensor(np.random.default_rng(16).standard_normal((3, IN)).astype(np.float32))
        np.testing.assert_allclose(fresh(x).asnumpy(), cell(x).asnumpy(), rtol=1e-6, atol=1e-6)


def test_pretrained_dense_checkpoint_loads_after_swap(mode, tmp_path):
    class Model(nn.Cell):
        def __init__(self, dense_cls, **kwargs):
            super().__init__()
            self.query = dense_cls(IN, OUT, **kwargs)
            self.head = nn.Dense(OUT, 2)

        def construct(self, x):
            return self.head(self.query(x))

    pretrained = Model(nn.Dense)
    path = str(tmp_path / "pretrained.ckpt")
    ms.save_checkpoint(pretrained, path)
    swapped = Model(LoRADense, lora_rank=RANK, lora_alpha=ALPHA, compute_dtype=ms.float32)
    not_loaded, unused = ms.load_param_into_net(swapped, ms.load_checkpoint(path))
    assert sorted(not_loaded) == ["query.lora_branch_scale", "query.mindpet_delta_lora_a",
                                  "query.mindpet_delta_lora_b"]
    assert not unused
    x = Tensor(np.random.default_rng(17).standard_normal((3, IN)).astype(np.float32))
    np.testing.assert_allclose(swapped(x).asnumpy(), pretrained(x).asnumpy(), rtol=1e-6, atol=1e-6)


class SumOfOutputs(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x):
        return self.cell(x).sum()


def test_gradients_reach_both_lora_matrices(mode):
    weights = random_weights(np.random.default_rng(18))
    cell = build_lora(weights, compute_dtype=ms.float32)
    x = Tensor(np.random.default_rng(19).standard_normal((4, IN)).astype(np.float32))
    params = [cell.mindpet_delta_lora_a, cell.mindpet_delta_lora_b]
    grads = ms.grad(SumOfOutputs(cell), grad_position=None, weights=params)(x)
    assert all(np.abs(g.asnumpy()).max() > 0 for g in grads)
    # d(sum y)/dA = scaling * B^T 1 x, a closed form to check against.
    ones = np.ones((4, OUT), np.float32)
    expected_grad_a = (ALPHA / RANK) * (ones @ weights["lora_b"]).T @ x.asnumpy()
    np.testing.assert_allclose(grads[0].asnumpy(), expected_grad_a, rtol=1e-5, atol=1e-5)


MANUAL_STRATEGIES = dict(
    strategy_org_dense_matmul=((2, 1), (4, 1)), strategy_org_bias_add=((2, 4), (4,)),
    strategy_lora_dropout=((2, 1),), strategy_lora_a_matmul=((2, 1), (1, 1)),
    strategy_lora_b_matmul=((2, 1), (4, 1)), strategy_lora_mul=((2, 4), ()),
    strategy_lora_add=((2, 4), (2, 4)), strategy_activation=((2, 4), (2, 4)))


class TestShard:
    def test_manual_example_is_accepted_and_changes_no_numbers(self, mode):
        weights = random_weights(np.random.default_rng(20), out_channels=SHARD_OUT)
        cell = build_lora(weights, compute_dtype=ms.float32, activation="relu")
        assert cell.shard(**MANUAL_STRATEGIES) is cell
        assert cell.lora_mul.in_strategy == ((2, 4), ())
        assert cell.matmul.in_strategy == ((2, 1), (4, 1))
        assert cell.activation.primitive.in_strategy == ((2, 4),)
        x = np.random.default_rng(21).standard_normal((4, IN)).astype(np.float32)
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), reference(x, weights, "relu_primitive"),
                                   rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("activation", ["silu", "leakyrelu", "gelu", nn.ReLU()])
    def test_activation_strategy_reaches_every_primitive(self, activation):
        cell = LoRADense(IN, SHARD_OUT, lora_rank=RANK, lora_alpha=ALPHA, activation=activation)
        cell.shard(strategy_activation=((2, 4),))
        primitives = [value for value in vars(cell.activation).values() if isinstance(value, ops.Primitive)]
        assert primitives
        for primitive in primitives:
            assert primitive.in_strategy[0] == (2, 4)

    @pytest.mark.parametrize("argument,strategy,expected", [
        ("strategy_org_dense_matmul", ((2, 1),), "2 layout"),
        ("strategy_org_dense_matmul", [(2, 1), (4, 1)], "tuple of tuples"),
        ("strategy_lora_a_matmul", ((2, 1), (1, 0)), "tuple of tuples of positive ints"),
        ("strategy_lora_b_matmul", ((2, 1, 1), (4, 1)), "length 2 for input 0"),
        ("strategy_lora_mul", ((2, 4), (1,)), "length 0 for input 1"),
        ("strategy_org_bias_add", ((2, 4), (4, 1)), "length 1 for input 1"),
        ("strategy_lora_dropout", ((2, 1), (2, 1)), "1 layout"),
        ("strategy_activation", ((2, 4), (1, 4)), "1 layout"),
    ])
    def test_malformed_strategy_names_the_argument(self, argument, strategy, expected):
        cell = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, activation="relu")
        with pytest.raises(ValueError, match=argument) as info:
            cell.shard(**{argument: strategy})
        assert expected in str(info.value)

    def test_activation_strategy_without_activation_is_ignored(self, caplog):
        cell = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA)
        with caplog.at_level("WARNING", logger="mindpet"):
            assert cell.shard(strategy_activation=((2, 4),)) is cell
        assert "'strategy_activation' is ignored because the cell has no activation" in caplog.text


def _make(**overrides):
    kwargs = dict(in_channels=IN, out_channels=OUT, lora_rank=RANK, lora_alpha=ALPHA)
    kwargs.update(overrides)
    return LoRADense(**kwargs)


@pytest.mark.parametrize("overrides,error,argument", [
    (dict(in_channels=2.0), TypeError, "in_channels"),
    (dict(out_channels="5"), TypeError, "out_channels"),
    (dict(lora_rank=True), TypeError, "lora_rank"),
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(out_channels=-1), ValueError, "out_channels"),
    (dict(lora_rank=0), ValueError, "lora_rank"),
    (dict(lora_alpha="16"), TypeError, "lora_alpha"),
    (dict(lora_alpha=None), TypeError, "lora_alpha"),
    (dict(lora_alpha=0), ValueError, "lora_alpha"),
    (dict(lora_alpha=float("nan")), ValueError, "lora_alpha"),
    (dict(lora_alpha=float("inf")), ValueError, "lora_alpha"),
    (dict(lora_alpha=-np.inf), ValueError, "lora_alpha"),
    (dict(lora_alpha=10 ** 400), ValueError, "lora_alpha"),
    (dict(in_channels=10 ** 30), ValueError, "in_channels"),
    (dict(out_channels=2 ** 31), ValueError, "out_channels"),
    (dict(lora_rank=10 ** 30), ValueError, "lora_rank"),
    (dict(lora_dropout="0.1"), TypeError, "lora_dropout"),
    (dict(lora_dropout=1), TypeError, "lora_dropout"),
    (dict(lora_dropout=1.0), ValueError, "lora_dropout"),
    (dict(lora_dropout=-0.1), ValueError, "lora_dropout"),
    (dict(has_bias=1), TypeError, "has_bias"),
    (dict(activation=3), TypeError, "activation"),
    (dict(param_init_type=ms.int32), TypeError, "param_init_type"),
    (dict(compute_dtype=np.float32), TypeError, "compute_dtype"),
    (dict(compute_dtype=ms.bfloat16), TypeError, "compute_dtype"),
    (dict(lora_a_init=Tensor(np.zeros((RANK, IN + 1), np.float32))), ValueError, "lora_a_init"),
    (dict(lora_a_init=Tensor(np.zeros((RANK,), np.float32))), ValueError, "lora_a_init"),
    (dict(lora_b_init=Tensor(np.zeros((RANK, OUT), np.float32))), ValueError, "lora_b_init"),
    (dict(weight_init=Tensor(np.zeros((IN, OUT), np.float32))), ValueError, "weight_init"),
    (dict(bias_init=Tensor(np.zeros((OUT, 1), np.float32))), ValueError, "bias_init"),
    (dict(weight_init="no_such_init"), ValueError, "weight_init"),
    (dict(lora_a_init=float("nan")), ValueError, "lora_a_init"),
    (dict(bias_init=-np.inf), ValueError, "bias_init"),
    (dict(lora_b_init=Tensor(np.full((OUT, RANK), np.nan, np.float32))), ValueError, "lora_b_init"),
    (dict(weight_init=Tensor(np.where(np.eye(OUT, IN), np.inf, 0.0).astype(np.float16))), ValueError, "weight_init"),
    (dict(lora_b_init=[0.0]), TypeError, "lora_b_init"),
])
def test_bad_arguments(overrides, error, argument):
    with pytest.raises(error, match=f"'{argument}'") as info:
        _make(**overrides)
    # The message shows what was received.
    assert "but got" in str(info.value)


@pytest.mark.parametrize("make_cell", [
    lambda: LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA),
    lambda: AdapterDense(IN, OUT, bottleneck_size=2),
    lambda: LowRankAdapterDense(IN, OUT, reduction_factor=1),
    lambda: AdapterLayer(IN, bottleneck_size=2),
], ids=["LoRADense", "AdapterDense", "LowRankAdapterDense", "AdapterLayer"])
def test_integer_input_is_refused(mode, make_cell):
    """
    Feature: The input dtype check of every delta cell (MixedPrecisionCell), GRAPH and PYNATIVE.
    Description: Call the cell on an int32 Tensor, which the cast to the compute dtype would silently accept.
    Expectation: TypeError naming the cell, the input and the dtype, as nn.Dense raises one; float input still works.
    """
    cell = make_cell()
    with pytest.raises(TypeError, match=f"For '{type(cell).__name__}', the input 'x' must be a float16, float32 "
                                        f"or bfloat16 Tensor, but got a Tensor of dtype Int32"):
        cell(Tensor(np.full((2, IN), 3), ms.int32))
    assert cell(Tensor(np.ones((2, IN)), ms.float32)).dtype == ms.float32


def test_unknown_activation_is_both_value_and_key_error():
    for caught in (ValueError, KeyError, ActivationNotFoundError):
        with pytest.raises(caught, match="'activation' must be one of .* but got 'no_such_act'"):
            _make(activation="no_such_act")


def test_accepted_edge_values():
    cell = _make(lora_dropout=0, lora_alpha=-2, activation="GELU", lora_b_init=0.5)
    assert cell.scaling == pytest.approx(-2 / RANK)
    assert np.allclose(cell.mindpet_delta_lora_b.asnumpy(), 0.5)


# merge_and_unload: every placement of a LoRADense, each with another bias/activation combination.
UNLOAD_CASES = [("sequential", True, None), ("attribute", False, "relu_primitive"), ("cell_list", True, "gelu"),
                ("top", False, "tanh_cell")]


class _Block(nn.Cell):
    def __init__(self, layer):
        super().__init__()
        self.proj = layer

    def construct(self, x):
        return self.proj(x)


class _Nested(nn.Cell):
    """The layer two attributes deep, so its parameter names carry two prefixes (``block.proj.weight``)."""

    def __init__(self, layer):
        super().__init__()
        self.block = _Block(layer)

    def construct(self, x):
        return self.block(x)


class _Listed(nn.Cell):
    def __init__(self, layer):
        super().__init__()
        self.layers = nn.CellList([layer])

    def construct(self, x):
        return self.layers[0](x)


def placed(placement, layer):
    return {"top": lambda: layer, "sequential": lambda: nn.SequentialCell([nn.ReLU(), layer]),
            "attribute": lambda: _Nested(layer), "cell_list": lambda: _Listed(layer)}[placement]()


def lora_network(placement, weights, activation):
    return placed(placement, build_lora(weights, compute_dtype=ms.float32, activation=make_activation(activation)))


def plain_network(placement, weights, activation):
    layer = nn.Dense(IN, OUT, weight_init=Tensor(weights["weight"]), has_bias="bias" in weights,
                     bias_init=Tensor(weights["bias"]) if "bias" in weights else "zeros",
                     activation=make_activation(activation))
    return placed(placement, layer)


def base_names(network):
    return [param.name for param in network.get_parameters() if "lora" not in param.name]


@pytest.mark.parametrize("placement, has_bias, activation", UNLOAD_CASES)
def test_unloaded_network_computes_what_the_lora_network_did(mode, placement, has_bias, activation):
    weights = random_weights(np.random.default_rng(40), has_bias=has_bias)
    x = Tensor(np.random.default_rng(41).standard_normal((2, 3, IN)).astype(np.float32))
    # A separate network gives the unmerged outputs: in GRAPH mode a network called before keeps its old graph.
    expected = lora_network(placement, weights, activation)(x).asnumpy()
    network = lora_network(placement, weights, activation)
    names = base_names(network)
    assert sum("lora" in param.name for param in network.get_parameters()) == 3
    unloaded = merge_and_unload(network)
    assert unloaded is network if placement != "top" else type(unloaded) is nn.Dense
    assert not any(isinstance(cell, LoRADense) for _, cell in unloaded.cells_and_names())
    assert [param.name for param in unloaded.get_parameters()] == names
    np.testing.assert_allclose(unloaded(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement, has_bias, activation", UNLOAD_CASES)
def test_checkpoint_of_unloaded_network_loads_into_the_plain_model(graph_mode, tmp_path, placement, has_bias,
                                                                   activation):
    weights = random_weights(np.random.default_rng(42), has_bias=has_bias)
    unloaded = merge_and_unload(lora_network(placement, weights, activation))
    path = str(tmp_path / "unloaded.ckpt")
    ms.save_checkpoint(unloaded, path)
    plain = plain_network(placement, random_weights(np.random.default_rng(43), has_bias=has_bias), activation)
    assert base_names(plain) == [param.name for param in unloaded.get_parameters()]
    params_not_loaded, checkpoint_not_loaded = ms.load_param_into_net(plain, ms.load_checkpoint(path))
    assert params_not_loaded == [] and checkpoint_not_loaded == []
    x = Tensor(np.random.default_rng(44).standard_normal((4, IN)).astype(np.float32))
    np.testing.assert_allclose(plain(x).asnumpy(), unloaded(x).asnumpy(), rtol=1e-6, atol=1e-6)


def test_unload_merges_once_and_replaces_a_shared_cell_once(graph_mode):
    weights = random_weights(np.random.default_rng(45))
    cell = build_lora(weights, compute_dtype=ms.float32).merge()
    merged_weight = cell.weight.asnumpy().copy()
    network = nn.SequentialCell([cell, nn.ReLU(), cell])
    merge_and_unload(network)
    assert network[0] is network[2] and type(network[0]) is nn.Dense
    assert np.array_equal(network[0].weight.asnumpy(), merged_weight)


@pytest.mark.parametrize("compute_dtype", [ms.float16, ms.float32])
def test_unload_keeps_a_mixed_precision_cell_computing_in_its_compute_dtype(mode, compute_dtype):
    weights = random_weights(np.random.default_rng(46))
    x = Tensor(np.random.default_rng(47).standard_normal((2, 3, IN)).astype(np.float32))
    expected = build_lora(weights, compute_dtype=compute_dtype)(x).asnumpy()
    network = nn.SequentialCell([build_lora(weights, compute_dtype=compute_dtype)])
    names = base_names(network)
    merge_and_unload(network)
    replacement = network[0]
    assert not isinstance(replacement, LoRADense)
    assert type(replacement) is (nn.Dense if compute_dtype == ms.float32 else DenseCore)
    assert [param.name for param in network.get_parameters()] == names
    output = network(x)
    assert output.dtype == ms.float32
    # float16 rounds the merged weight and the product: compare at float16's precision.
    tolerance = 1e-5 if compute_dtype == ms.float32 else 1e-2
    np.testing.assert_allclose(output.asnumpy(), expected, rtol=tolerance, atol=tolerance)


def test_unload_refuses_what_is_not_a_cell():
    with pytest.raises(TypeError, match="'network' must be a Cell"):
        merge_and_unload("net")
