"""LoRADense's rsLoRA and DoRA options against NumPy references of their formulas: forward, gradient, merge, shard
plans, injection by config and training."""
import logging

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from injection_models import WIDTH, TinyNet, plain_dense
from mindpet import LoraConfig, get_delta_model, load_base_checkpoint, merge_and_unload, plan_delta, trainable_summary
from mindpet.delta import LoRADense
from mindpet.graph import check_shard_strategies, freeze_delta
from numpy_activations import REFERENCES

IN, OUT, RANK, ALPHA = 6, 5, 3, 4.0
SHARD_OUT = 8


def random_weights(rng, has_bias=True, out_channels=OUT):
    """Base, A and B nonzero, and a magnitude that is not the row norm of W + s B A (so DoRA's factor is not 1)."""
    weights = {"weight": rng.standard_normal((out_channels, IN)).astype(np.float32) * 0.5,
               "lora_a": rng.standard_normal((RANK, IN)).astype(np.float32) * 0.5,
               "lora_b": rng.standard_normal((out_channels, RANK)).astype(np.float32) * 0.5,
               "magnitude": rng.uniform(0.5, 2.0, out_channels).astype(np.float32)}
    if has_bias:
        weights["bias"] = rng.standard_normal(out_channels).astype(np.float32)
    return weights


def scaling(use_rslora):
    return ALPHA / (np.sqrt(RANK) if use_rslora else RANK)


def build(weights, use_rslora=False, use_dora=False, **kwargs):
    cell = LoRADense(IN, weights["weight"].shape[0], lora_rank=RANK, lora_alpha=ALPHA,
                     weight_init=Tensor(weights["weight"]), has_bias="bias" in weights,
                     bias_init=Tensor(weights["bias"]) if "bias" in weights else "zeros",
                     lora_a_init=Tensor(weights["lora_a"]), lora_b_init=Tensor(weights["lora_b"]),
                     use_rslora=use_rslora, use_dora=use_dora, **kwargs)
    if use_dora:
        cell.mindpet_delta_lora_magnitude.set_data(Tensor(weights["magnitude"]))
    return cell


def adapted_weight(weights, use_rslora=False):
    """``V = W + s B A`` in float64."""
    return weights["weight"].astype(np.float64) + scaling(use_rslora) * (
        weights["lora_b"].astype(np.float64) @ weights["lora_a"])


def reference(x, weights, use_rslora=False, use_dora=False, activation=None):
    """LoRA: ``x V^T + b``; DoRA: ``m / ||V||_row * x V^T + b``; then the activation; float64."""
    x = x.astype(np.float64)
    adapted = adapted_weight(weights, use_rslora)
    y = x @ adapted.T
    if use_dora:
        y = y * (weights["magnitude"] / np.linalg.norm(adapted, axis=1))
    y = y + weights.get("bias", 0.0)
    return REFERENCES[activation](y) if activation else y


CASES = [
    # (use_rslora, use_dora, input shape, compute dtype, has_bias, activation)
    (True, False, (4, IN), ms.float32, True, "gelu"),
    (True, False, (2, 3, IN), ms.float16, True, None),
    (False, True, (4, IN), ms.float32, True, "relu"),
    (False, True, (2, 3, IN), ms.float32, False, None),
    (True, True, (2, 2, 2, IN), ms.float32, True, None),
    (False, True, (2, 3, IN), ms.float16, True, "gelu"),
    (False, True, (4, IN), ms.float16, False, None),
]


@pytest.mark.parametrize("use_rslora,use_dora,shape,compute_dtype,has_bias,activation", CASES)
def test_matches_numpy_reference(mode, use_rslora, use_dora, shape, compute_dtype, has_bias, activation):
    rng = np.random.default_rng(1)
    weights = random_weights(rng, has_bias)
    cell = build(weights, use_rslora, use_dora, compute_dtype=compute_dtype, activation=activation)
    x = rng.standard_normal(shape).astype(np.float32)
    out = cell(Tensor(x))
    expected = reference(x, weights, use_rslora, use_dora, activation)
    assert out.shape == shape[:-1] + (OUT,) and out.dtype == ms.float32
    tolerance = 1e-5 if compute_dtype == ms.float32 else 2e-2
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=tolerance, atol=tolerance)
    # The variant must matter for the check to mean anything: plain LoRA computes something else.
    plain = reference(x, weights, activation=activation)
    assert np.abs(expected - plain).max() > 0.1


def test_dora_with_float16_parameters(mode):
    weights = random_weights(np.random.default_rng(30))
    cell = build(weights, use_dora=True, param_init_type=ms.float16, compute_dtype=ms.float32)
    assert cell.mindpet_delta_lora_magnitude.dtype == ms.float16
    x = np.random.default_rng(31).standard_normal((3, IN)).astype(np.float32)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), reference(x, weights, use_dora=True), rtol=1e-2, atol=1e-2)


def test_rslora_scale_is_alpha_over_sqrt_rank():
    cell = LoRADense(IN, OUT, lora_rank=16, lora_alpha=8, use_rslora=True)
    assert cell.scaling == pytest.approx(2.0)
    assert float(cell.lora_branch_scale.asnumpy()) == pytest.approx(2.0)
    assert LoRADense(IN, OUT, lora_rank=16, lora_alpha=8).scaling == pytest.approx(0.5)


def test_fresh_dora_cell_equals_the_dense_it_replaces(mode):
    """The docstring's claim: within 2e-6 of the largest output in float32 (the factor is 1 up to rounding)."""
    rng = np.random.default_rng(2)
    dense = nn.Dense(IN, OUT, activation="relu", bias_init=Tensor(rng.standard_normal(OUT).astype(np.float32)))
    dora = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, activation="relu", compute_dtype=ms.float32,
                     weight_init=Tensor(dense.weight.asnumpy()), bias_init=Tensor(dense.bias.asnumpy()),
                     use_dora=True)
    np.testing.assert_allclose(dora.mindpet_delta_lora_magnitude.asnumpy(),
                               np.linalg.norm(dense.weight.asnumpy(), axis=1), rtol=1e-6)
    x = Tensor(rng.standard_normal((8, IN)).astype(np.float32))
    expected = dense(x).asnumpy()
    assert np.abs(dora(x).asnumpy() - expected).max() <= 2e-6 * np.abs(expected).max()


def test_magnitude_starts_at_the_row_norms_of_the_adapted_weight():
    """With a nonzero B at init (PEFT's rule), m is the norm of W + s B A, so DoRA starts where LoRA is."""
    weights = random_weights(np.random.default_rng(3))
    cell = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, weight_init=Tensor(weights["weight"]),
                     lora_a_init=Tensor(weights["lora_a"]), lora_b_init=Tensor(weights["lora_b"]), use_dora=True,
                     compute_dtype=ms.float32)
    np.testing.assert_allclose(cell.mindpet_delta_lora_magnitude.asnumpy(),
                               np.linalg.norm(adapted_weight(weights), axis=1), rtol=1e-6)


def test_init_dora_magnitude_after_loading_pretrained_weights(tmp_path):
    pretrained = nn.SequentialCell([nn.Dense(IN, OUT)])
    path = str(tmp_path / "pretrained.ckpt")
    ms.save_checkpoint(pretrained, path)
    net = nn.SequentialCell([LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, use_dora=True,
                                       compute_dtype=ms.float32)])
    ms.load_param_into_net(net, ms.load_checkpoint(path))
    norms = np.linalg.norm(pretrained[0].weight.asnumpy(), axis=1)
    # Built from its own random weight, the magnitude is stale until it is initialised again.
    assert not np.allclose(net[0].mindpet_delta_lora_magnitude.asnumpy(), norms, rtol=1e-3)
    assert net[0].init_dora_magnitude() is net[0]
    np.testing.assert_allclose(net[0].mindpet_delta_lora_magnitude.asnumpy(), norms, rtol=1e-6)
    x = Tensor(np.random.default_rng(4).standard_normal((3, IN)).astype(np.float32))
    np.testing.assert_allclose(net(x).asnumpy(), pretrained(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_load_base_checkpoint_initialises_the_magnitude(tmp_path, caplog):
    pretrained = nn.SequentialCell([nn.Dense(IN, OUT), nn.Dense(OUT, OUT)])
    path = str(tmp_path / "pretrained.ckpt")
    ms.save_checkpoint(pretrained, path)
    net = nn.SequentialCell([LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, use_dora=True),
                             LoRADense(OUT, OUT, lora_rank=RANK, lora_alpha=ALPHA, use_dora=True)])
    with caplog.at_level(logging.INFO, logger="mindpet"):
        load_base_checkpoint(net, path)
    assert "DoRA magnitudes set to the row norms of the loaded weights in 2 cell(s)" in caplog.text
    # The default float16 compute: the norms of the weight as multiplied, rounded to float16.
    for index in range(2):
        np.testing.assert_allclose(net[index].mindpet_delta_lora_magnitude.asnumpy(),
                                   np.linalg.norm(pretrained[index].weight.asnumpy(), axis=1), rtol=1e-3)
    # A checkpoint that holds the magnitude keeps it.
    trained = {param.name: Tensor(param.asnumpy()) for param in pretrained.get_parameters()}
    trained["0.mindpet_delta_lora_magnitude"] = Tensor(np.full(OUT, 3.0, np.float32))
    load_base_checkpoint(net, trained)
    assert np.array_equal(net[0].mindpet_delta_lora_magnitude.asnumpy(), np.full(OUT, 3.0, np.float32))


def test_an_all_zero_row_computes_the_bias_not_nan(mode):
    weights = random_weights(np.random.default_rng(5))
    weights["weight"][1] = 0.0
    cell = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, weight_init=Tensor(weights["weight"]),
                     bias_init=Tensor(weights["bias"]), use_dora=True, compute_dtype=ms.float32)
    out = cell(Tensor(np.ones((2, IN), np.float32))).asnumpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 1], weights["bias"][1], rtol=1e-6)


class SumTimes(nn.Cell):
    """``sum(cell(x) * weights)``: its gradient with respect to the output is ``weights``."""

    def __init__(self, cell, output_weights):
        super().__init__()
        self.cell = cell
        self.output_weights = Tensor(output_weights)

    def construct(self, x):
        return (self.cell(x) * self.output_weights).sum()


def test_dora_gradient_treats_the_norm_as_a_constant(mode):
    """
    Feature: DoRA's row norm is detached from the gradient (the DoRA paper, section 4.3).
    Description: d(sum(y * G))/d(m, A, B) from MindSpore against the hand derivation with ||V|| held constant:
        with f = m / ||V||, dm = sum_N G * x V^T / ||V||, dB = s (G f)^T (x A^T), dA = s ((G f) B)^T x.
    Expectation: equal within 1e-4; the gradient of B through the norm (finite differences) differs clearly.
    """
    rng = np.random.default_rng(6)
    weights = random_weights(rng)
    cell = build(weights, use_dora=True, compute_dtype=ms.float32)
    x = rng.standard_normal((4, IN)).astype(np.float32)
    output_weights = rng.standard_normal((4, OUT)).astype(np.float32)
    params = [cell.mindpet_delta_lora_magnitude, cell.mindpet_delta_lora_a, cell.mindpet_delta_lora_b]
    grads = [g.asnumpy() for g in ms.grad(SumTimes(cell, output_weights), grad_position=None, weights=params)(
        Tensor(x))]

    s = scaling(False)
    x64, g64 = x.astype(np.float64), output_weights.astype(np.float64)
    adapted = adapted_weight(weights)
    norms = np.linalg.norm(adapted, axis=1)
    factor = weights["magnitude"] / norms
    scaled_g = g64 * factor
    expected = [np.sum(g64 * (x64 @ adapted.T), axis=0) / norms,
                s * (scaled_g @ weights["lora_b"]).T @ x64,
                s * scaled_g.T @ (x64 @ weights["lora_a"].T)]
    for grad, want in zip(grads, expected):
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)

    def loss(lora_b):
        v = weights["weight"].astype(np.float64) + s * lora_b @ weights["lora_a"]
        y = (x64 @ v.T) * (weights["magnitude"] / np.linalg.norm(v, axis=1)) + weights["bias"]
        return np.sum(y * g64)
    step = 1e-6
    through_norm = np.zeros_like(expected[2])
    for index in np.ndindex(*through_norm.shape):
        shifted = weights["lora_b"].astype(np.float64).copy()
        shifted[index] += step
        lowered = shifted.copy()
        lowered[index] -= 2 * step
        through_norm[index] = (loss(shifted) - loss(lowered)) / (2 * step)
    assert np.abs(through_norm - expected[2]).max() > 0.1


def test_dropout_feeds_only_the_low_rank_product(mode):
    """PEFT's DoRA with dropout: ``f * (x W^T + s dropout(x) A^T B^T) + b``."""
    rng = np.random.default_rng(7)
    weights = random_weights(rng)
    cell = build(weights, use_dora=True, lora_dropout=0.5, compute_dtype=ms.float32)
    x = rng.standard_normal((64, IN)).astype(np.float32)
    cell.set_train(False)
    evaluated = cell(Tensor(x)).asnumpy()
    np.testing.assert_allclose(evaluated, reference(x, weights, use_dora=True), rtol=1e-5, atol=1e-5)
    cell.set_train(True)
    trained = cell(Tensor(x)).asnumpy()
    assert np.abs(trained - evaluated).max() > 1e-2
    # Only the branch input changed: the difference divided by the factor lies in the column space of B.
    factor = weights["magnitude"] / np.linalg.norm(adapted_weight(weights), axis=1)
    change = (trained - evaluated) / factor
    lora_b = weights["lora_b"].astype(np.float64)
    residual = change - change @ np.linalg.pinv(lora_b.T) @ lora_b.T
    assert np.abs(residual).max() < 1e-4


@pytest.mark.parametrize("use_rslora,use_dora", [(True, False), (False, True), (True, True)])
def test_merge_parity_and_unmerge_restores(mode, use_rslora, use_dora):
    weights = random_weights(np.random.default_rng(8))
    cell = build(weights, use_rslora, use_dora, compute_dtype=ms.float32, activation="gelu")
    x = Tensor(np.random.default_rng(9).standard_normal((2, 3, IN)).astype(np.float32))
    before = cell(x).asnumpy()
    cell.merge()
    adapted = adapted_weight(weights, use_rslora)
    if use_dora:
        adapted = adapted * (weights["magnitude"] / np.linalg.norm(adapted, axis=1))[:, None]
    np.testing.assert_allclose(cell.weight.asnumpy(), adapted, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cell(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
    cell.unmerge()
    np.testing.assert_allclose(cell.weight.asnumpy(), weights["weight"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cell(x).asnumpy(), before, rtol=1e-5, atol=1e-5)


def test_dora_graph_compiled_before_merge_stays_correct(graph_mode):
    weights = random_weights(np.random.default_rng(10))
    cell = build(weights, use_dora=True, compute_dtype=ms.float32)
    net = nn.SequentialCell([cell, nn.ReLU()])
    x = Tensor(np.random.default_rng(11).standard_normal((4, IN)).astype(np.float32))
    before = net(x).asnumpy()
    cell.merge()
    assert cell.merged and float(cell.lora_magnitude_gate.asnumpy()) == 0.0
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
    cell.unmerge()
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_rslora,use_dora", [(True, False), (False, True)])
def test_merge_and_unload_parity(mode, use_rslora, use_dora):
    weights = random_weights(np.random.default_rng(12))
    x = Tensor(np.random.default_rng(13).standard_normal((2, 3, IN)).astype(np.float32))
    expected = nn.SequentialCell([build(weights, use_rslora, use_dora, compute_dtype=ms.float32)])(x).asnumpy()
    network = nn.SequentialCell([build(weights, use_rslora, use_dora, compute_dtype=ms.float32)])
    merge_and_unload(network)
    assert type(network[0]) is nn.Dense
    assert [param.name for param in network.get_parameters()] == ["0.weight", "0.bias"]
    np.testing.assert_allclose(network(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_merged_dora_state_travels_with_a_full_checkpoint(tmp_path):
    weights = random_weights(np.random.default_rng(14))
    cell = build(weights, use_dora=True, compute_dtype=ms.float32).merge()
    path = str(tmp_path / "merged.ckpt")
    ms.save_checkpoint(cell, path)
    fresh = build(random_weights(np.random.default_rng(15)), use_dora=True, compute_dtype=ms.float32)
    ms.load_param_into_net(fresh, ms.load_checkpoint(path))
    assert fresh.merged
    fresh.unmerge()
    np.testing.assert_allclose(fresh.weight.asnumpy(), weights["weight"], rtol=1e-6, atol=1e-6)


def test_zero_magnitude_merges_with_a_warning_and_refuses_to_unmerge(caplog):
    weights = random_weights(np.random.default_rng(16))
    weights["magnitude"][2] = 0.0
    cell = build(weights, use_dora=True, compute_dtype=ms.float32)
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        cell.merge()
    assert "1 magnitude(s) are 0" in caplog.text
    merged_weight = cell.weight.asnumpy().copy()
    with pytest.raises(ValueError, match=r"LoRADense\.unmerge.*1 row\(s\).*row 2"):
        cell.unmerge()
    assert cell.merged and np.array_equal(cell.weight.asnumpy(), merged_weight)


def test_parameter_names_and_freeze_delta():
    cell = LoRADense(IN, OUT, lora_rank=RANK, lora_alpha=ALPHA, use_dora=True)
    assert [param.name for param in cell.get_parameters()] == [
        "weight", "bias", "mindpet_delta_lora_a", "mindpet_delta_lora_b", "lora_branch_scale",
        "mindpet_delta_lora_magnitude", "lora_magnitude_gate", "lora_magnitude_merged_factor"]
    assert cell.mindpet_delta_lora_magnitude.shape == (OUT,)
    net = nn.SequentialCell([cell])
    assert freeze_delta(net, "lora") == ["0.mindpet_delta_lora_a", "0.mindpet_delta_lora_b",
                                         "0.mindpet_delta_lora_magnitude"]


@pytest.mark.parametrize("make,error,argument", [
    (lambda: LoRADense(IN, OUT, RANK, ALPHA, use_rslora=1), TypeError, "use_rslora"),
    (lambda: LoRADense(IN, OUT, RANK, ALPHA, use_dora="yes"), TypeError, "use_dora"),
    (lambda: LoraConfig(target_modules=["q"], use_rslora=None), TypeError, "use_rslora"),
    (lambda: LoraConfig(target_modules=["q"], use_dora=1), TypeError, "use_dora"),
    (lambda: LoRADense(IN, OUT, RANK, ALPHA).init_dora_magnitude(), ValueError, "use_dora=True"),
    (lambda: LoRADense(IN, OUT, RANK, ALPHA, use_dora=True).merge().init_dora_magnitude(), ValueError,
     "must not be merged"),
])
def test_errors_name_the_argument(make, error, argument):
    with pytest.raises(error, match=argument):
        make()


MANUAL_DORA = dict(
    strategy_org_dense_matmul=((2, 1), (4, 1)), strategy_org_bias_add=((2, 4), (4,)),
    strategy_lora_dropout=((2, 1),), strategy_lora_a_matmul=((2, 1), (1, 1)),
    strategy_lora_b_matmul=((2, 1), (4, 1)), strategy_lora_mul=((2, 4), ()), strategy_lora_add=((2, 4), (2, 4)),
    strategy_dora_weight_matmul=((4, 1), (1, 1)), strategy_dora_weight_mul=((4, 1), ()),
    strategy_dora_weight_add=((4, 1), (4, 1)), strategy_dora_norm=((4, 1),), strategy_dora_div=((4,), (4,)),
    strategy_dora_gate=((4,), ()), strategy_dora_mul=((2, 4), (4,)), strategy_activation=((2, 4),))


class TestShard:
    def test_documented_strategies_are_accepted_and_change_no_numbers(self, mode):
        weights = random_weights(np.random.default_rng(20), out_channels=SHARD_OUT)
        cell = build(weights, use_dora=True, compute_dtype=ms.float32, activation="relu")
        assert cell.shard(**MANUAL_DORA) is cell
        assert cell.dora_mul.in_strategy == ((2, 4), (4,))
        assert cell.dora_norm.in_strategy == ((4, 1),)
        assert cell.bias_add.in_strategy == ((2, 4), (4,))
        x = np.random.default_rng(21).standard_normal((4, IN)).astype(np.float32)
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), reference(x, weights, use_dora=True,
                                                                       activation="relu"), rtol=1e-5, atol=1e-5)
        assert check_shard_strategies(cell, device_num=8).min_device_num == 8

    @pytest.mark.parametrize("argument,strategy,expected", [
        ("strategy_dora_mul", ((2, 2), (2,)), "split out_channels 4-way"),
        ("strategy_dora_div", ((4,), (2,)), "split out_channels alike in every input"),
        ("strategy_dora_norm", ((4, 1), (4, 1)), "1 layout"),
        ("strategy_dora_gate", ((4,), (1,)), "length 0 for input 1"),
        ("strategy_dora_weight_add", ((3, 1), (3, 1)), "into equal parts"),
        ("strategy_org_bias_add", ((2, 4), (2,)), "split out_channels alike"),
    ])
    def test_inconsistent_dora_strategy_names_the_argument(self, argument, strategy, expected):
        cell = LoRADense(IN, SHARD_OUT, lora_rank=RANK, lora_alpha=ALPHA, use_dora=True)
        cell.shard(strategy_org_dense_matmul=((2, 1), (4, 1)))
        with pytest.raises(ValueError, match=argument) as info:
            cell.shard(**{argument: strategy})
        assert expected in str(info.value)

    def test_dora_strategy_on_a_plain_lora_cell_is_ignored(self, caplog):
        cell = LoRADense(IN, SHARD_OUT, lora_rank=RANK, lora_alpha=ALPHA)
        with caplog.at_level("WARNING", logger="mindpet"):
            assert cell.shard(strategy_dora_mul=((2, 4), (4,))) is cell
        assert "'strategy_dora_mul' is ignored because the cell does not use DoRA" in caplog.text


def sharded_tiny_net(dp=2, mp=4):
    network = TinyNet()
    for path, cell in network.cells_and_names():
        if path.endswith("q_proj") or path.endswith("o_proj"):
            cell.matmul.shard(((dp, 1), (mp, 1)))
            cell.bias_add.shard(((dp, mp), (mp,)))
    return network


def test_injected_dora_strategies_follow_the_host():
    network = get_delta_model(sharded_tiny_net(), LoraConfig(target_modules=["q_proj", "o_proj"], use_dora=True))
    report = check_shard_strategies(network, device_num=8)
    assert report.min_device_num == 8 and len(report.cells) == 4
    cell = dict(network.cells_and_names())["layers.0.attn.o_proj"]
    assert cell.dora_mul.in_strategy == ((2, 4), (4,))
    assert cell.dora_weight_matmul.in_strategy == ((4, 1), (1, 1))
    assert cell.bias_add.in_strategy == ((2, 4), (4,))
    with pytest.raises(ValueError, match="fit a device count of 4"):
        check_shard_strategies(network, device_num=4)


def hand_written_dora(targets):
    def make_dense(path, in_channels, out_channels, activation=None):
        if path in targets:
            return LoRADense(in_channels, out_channels, lora_rank=4, lora_alpha=8, activation=activation,
                             compute_dtype=ms.float32, use_rslora=True, use_dora=True)
        return plain_dense(path, in_channels, out_channels, activation)
    return TinyNet(make_dense)


def test_injection_by_config_equals_hand_written(mode):
    targets = ["layers.0.attn.q_proj", "layers.1.attn.o_proj", "layers.1.mlp.0"]
    config = LoraConfig(target_modules=targets, lora_rank=4, lora_alpha=8, use_rslora=True, use_dora=True)
    network = TinyNet()
    x = Tensor(np.random.default_rng(22).standard_normal((2, 5, WIDTH)).astype(np.float32))
    # A copy computes the plain output: in GRAPH mode a network called before the injection keeps its old graph.
    plain = TinyNet()
    ms.load_param_into_net(plain, {p.name: ms.Parameter(Tensor(p.asnumpy()), name=p.name)
                                   for p in network.get_parameters()}, strict_load=True)
    plain_output = plain(x).asnumpy()
    plan = plan_delta(network, config)
    injected = get_delta_model(network, config)
    summary = trainable_summary(injected)
    assert (plan.trainable, plan.total) == (summary.trainable, summary.total)
    # The magnitudes come from the adopted pretrained weights: a fresh injection changes nothing (float32 rounding).
    np.testing.assert_allclose(injected(x).asnumpy(), plain_output, rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(23)
    for param in injected.get_parameters():
        if param.name.endswith(("lora_b", "lora_magnitude")):
            param.set_data(Tensor(param.asnumpy() + 0.3 * rng.standard_normal(param.shape).astype(np.float32)))
    written = hand_written_dora(targets)
    assert [p.name for p in injected.get_parameters()] == [p.name for p in written.get_parameters()]
    ms.load_param_into_net(written, {p.name: ms.Parameter(Tensor(p.asnumpy()), name=p.name)
                                     for p in injected.get_parameters()}, strict_load=True)
    injected_output = injected(x).asnumpy()
    np.testing.assert_allclose(written(x).asnumpy(), injected_output, rtol=1e-6, atol=1e-6)
    assert np.abs(injected_output - plain_output).max() > 1e-2
    merge_and_unload(injected)
    np.testing.assert_allclose(injected(x).asnumpy(), injected_output, rtol=1e-5, atol=1e-5)


def train_to_teacher(make_student, change_teacher, tmp_path, steps=150, learning_rate=2e-2):
    """Fine-tune a fresh delta network (`make_student`, base weights loaded) towards a teacher, the base changed by
    `change_teacher(weight (out, in), rng) -> weight`; return the losses, the parameter values before and after, the
    delta checkpoint and the data. Shared by the variant and (IA)^3 workflow tests."""
    from toy_models import IN as TOY_IN, Regressor
    ms.set_context(mode=ms.GRAPH_MODE)
    base = Regressor()
    base_path = str(tmp_path / "base.ckpt")
    ms.save_checkpoint(base, base_path)
    teacher = Regressor()
    ms.load_param_into_net(teacher, ms.load_checkpoint(base_path))
    rng = np.random.default_rng(0)
    for layer in teacher.encoder:
        layer.weight.set_data(Tensor(change_teacher(layer.weight.asnumpy(), rng).astype(np.float32)))
    x = Tensor(rng.standard_normal((128, TOY_IN)).astype(np.float32))
    y = teacher(x)

    student = make_student(base_path)
    before = {p.name: p.asnumpy().copy() for p in student.get_parameters()}
    loss_net = nn.WithLossCell(student, nn.MSELoss())
    step = nn.TrainOneStepCell(loss_net, nn.Adam(student.trainable_params(), learning_rate=learning_rate))
    losses = [float(step(x, y).asnumpy()) for _ in range(steps)]
    delta_path = str(tmp_path / "delta.ckpt")
    ms.save_checkpoint(student.trainable_params(), delta_path)
    after = {p.name: p.asnumpy().copy() for p in student.get_parameters()}
    trainable = {p.name for p in student.trainable_params()}
    return dict(student=student, losses=losses, before=before, after=after, trainable=trainable,
                delta_path=delta_path, base_path=base_path, x=x, final_loss=float(loss_net(x, y).asnumpy()),
                start_loss=float(np.mean((base(x).asnumpy() - y.asnumpy()) ** 2)))


def test_dora_fine_tunes_a_low_rank_change_and_reloads(tmp_path):
    """
    Feature: DoRA trains end to end in GRAPH mode on the toy regressor; its delta reloads into a fresh network.
    Description: Inject DoRA into the pretrained base by config and fit a teacher whose encoder weights differ by a
        rank-2 change; save the trainable parameters; load base and delta into a freshly injected network.
    Expectation: the loss falls under 25% of its start; frozen weights stay bit-identical; the reloaded network
        computes the same outputs.
    """
    from mindpet import load_base_checkpoint, load_delta_checkpoint
    from toy_models import Regressor

    def make_student(base_path):
        net = Regressor()
        load_base_checkpoint(net, base_path)
        return get_delta_model(net, LoraConfig(target_modules=["encoder.0", "encoder.1"], lora_rank=4,
                                               lora_alpha=8, use_dora=True, modules_to_save=["head"]))

    def low_rank_change(weight, rng):
        return weight + 0.3 * rng.standard_normal((weight.shape[0], 2)) @ rng.standard_normal((2, weight.shape[1]))

    run = train_to_teacher(make_student, low_rank_change, tmp_path)
    assert run["final_loss"] < 0.25 * run["start_loss"]
    assert any("magnitude" in name for name in run["trainable"])
    for name, value in run["before"].items():
        if name not in run["trainable"]:
            assert np.array_equal(run["after"][name], value), name
        elif "magnitude" in name or "lora_b" in name:
            assert not np.array_equal(run["after"][name], value), name
    fresh = make_student(run["base_path"])
    load_delta_checkpoint(fresh, run["delta_path"])
    np.testing.assert_allclose(fresh(run["x"]).asnumpy(), run["student"](run["x"]).asnumpy(), rtol=1e-6, atol=1e-6)
