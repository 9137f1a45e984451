"""IA3Dense against a NumPy reference of its formula, its config, merge, shard plan, injection and training."""
import logging

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from injection_models import WIDTH, TinyNet, plain_dense
from mindpet import IA3Config, get_delta_model, merge_and_unload, plan_delta, trainable_summary
from mindpet.delta import IA3Dense
from mindpet.graph import check_shard_strategies, freeze_delta
from numpy_activations import REFERENCES
from test_lora_variants import train_to_teacher

IN, OUT = 6, 5
SHARD_OUT = 8


def random_weights(rng, feedforward, has_bias=True, out_channels=OUT):
    """A base and an ``l`` far from ones (negative entries too), so the rescaling matters."""
    weights = {"weight": rng.standard_normal((out_channels, IN)).astype(np.float32) * 0.5,
               "scale": rng.uniform(-1.5, 2.5, IN if feedforward else out_channels).astype(np.float32)}
    if has_bias:
        weights["bias"] = rng.standard_normal(out_channels).astype(np.float32)
    return weights


def build(weights, feedforward, **kwargs):
    return IA3Dense(IN, weights["weight"].shape[0], feedforward=feedforward, weight_init=Tensor(weights["weight"]),
                    has_bias="bias" in weights, bias_init=Tensor(weights["bias"]) if "bias" in weights else "zeros",
                    ia3_init=Tensor(weights["scale"]), **kwargs)


def reference(x, weights, feedforward, activation=None):
    """``(x W^T + b) * l`` or ``(x * l) W^T + b``, then the activation; float64."""
    x = x.astype(np.float64)
    if feedforward:
        y = (x * weights["scale"]) @ weights["weight"].T + weights.get("bias", 0.0)
    else:
        y = (x @ weights["weight"].T + weights.get("bias", 0.0)) * weights["scale"]
    return REFERENCES[activation](y) if activation else y


CASES = [
    # (feedforward, input shape, compute dtype, has_bias, activation)
    (False, (4, IN), ms.float32, True, "relu"),
    (True, (2, 3, IN), ms.float32, True, "gelu"),
    (False, (2, 2, 2, IN), ms.float32, False, None),
    (True, (4, IN), ms.float32, False, None),
    (False, (2, 3, IN), ms.float16, True, "gelu"),
    (True, (4, IN), ms.float16, True, None),
]


@pytest.mark.parametrize("feedforward,shape,compute_dtype,has_bias,activation", CASES)
def test_matches_numpy_reference(mode, feedforward, shape, compute_dtype, has_bias, activation):
    rng = np.random.default_rng(1)
    weights = random_weights(rng, feedforward, has_bias)
    cell = build(weights, feedforward, compute_dtype=compute_dtype, activation=activation)
    x = rng.standard_normal(shape).astype(np.float32)
    out = cell(Tensor(x))
    expected = reference(x, weights, feedforward, activation)
    assert out.shape == shape[:-1] + (OUT,) and out.dtype == ms.float32
    tolerance = 1e-5 if compute_dtype == ms.float32 else 2e-2
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=tolerance, atol=tolerance)
    unscaled = reference(x, {**weights, "scale": np.ones_like(weights["scale"])}, feedforward, activation)
    assert np.abs(expected - unscaled).max() > 0.1


@pytest.mark.parametrize("feedforward", [False, True])
def test_fresh_cell_equals_the_dense_it_replaces_bit_for_bit(mode, feedforward):
    dense = nn.Dense(IN, OUT, activation="gelu", bias_init="normal")
    cell = IA3Dense(IN, OUT, feedforward=feedforward, activation="gelu", compute_dtype=ms.float32,
                    weight_init=Tensor(dense.weight.asnumpy()), bias_init=Tensor(dense.bias.asnumpy()))
    assert np.array_equal(cell.mindpet_delta_ia3_scale.asnumpy(), np.ones(IN if feedforward else OUT))
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, IN)).astype(np.float32))
    assert np.array_equal(cell(x).asnumpy(), dense(x).asnumpy())


def test_gradient_reaches_only_the_scale(mode):
    rng = np.random.default_rng(3)
    weights = random_weights(rng, feedforward=False)
    cell = build(weights, False, compute_dtype=ms.float32)
    assert freeze_delta(cell, "ia3") == ["mindpet_delta_ia3_scale"]
    x = rng.standard_normal((4, IN)).astype(np.float32)

    class Summed(nn.Cell):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def construct(self, inputs):
            return self.cell(inputs).sum()
    grads = ms.grad(Summed(), grad_position=None, weights=cell.trainable_params())(Tensor(x))
    # d(sum y)/dl = sum over the batch of x W^T + b.
    np.testing.assert_allclose(grads[0].asnumpy(), (x @ weights["weight"].T + weights["bias"]).sum(axis=0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feedforward", [False, True])
def test_merge_parity_and_unmerge_restores(mode, feedforward):
    weights = random_weights(np.random.default_rng(4), feedforward)
    cell = build(weights, feedforward, compute_dtype=ms.float32, activation="relu")
    x = Tensor(np.random.default_rng(5).standard_normal((2, 3, IN)).astype(np.float32))
    before = cell(x).asnumpy()
    cell.merge()
    assert cell.merged
    if feedforward:
        np.testing.assert_allclose(cell.weight.asnumpy(), weights["weight"] * weights["scale"], rtol=1e-6)
        np.testing.assert_array_equal(cell.bias.asnumpy(), weights["bias"])
    else:
        np.testing.assert_allclose(cell.weight.asnumpy(), weights["weight"] * weights["scale"][:, None], rtol=1e-6)
        np.testing.assert_allclose(cell.bias.asnumpy(), weights["bias"] * weights["scale"], rtol=1e-6)
    np.testing.assert_allclose(cell(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
    cell.unmerge()
    np.testing.assert_allclose(cell.weight.asnumpy(), weights["weight"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cell.bias.asnumpy(), weights["bias"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cell(x).asnumpy(), before, rtol=1e-5, atol=1e-5)


def test_graph_compiled_before_merge_stays_correct(graph_mode):
    weights = random_weights(np.random.default_rng(6), feedforward=False)
    cell = build(weights, False, compute_dtype=ms.float32)
    net = nn.SequentialCell([cell, nn.Tanh()])
    x = Tensor(np.random.default_rng(7).standard_normal((4, IN)).astype(np.float32))
    before = net(x).asnumpy()
    cell.merge()
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
    cell.unmerge()
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feedforward", [False, True])
def test_merge_and_unload_parity(mode, feedforward):
    weights = random_weights(np.random.default_rng(8), feedforward)
    x = Tensor(np.random.default_rng(9).standard_normal((2, 3, IN)).astype(np.float32))
    expected = nn.SequentialCell([build(weights, feedforward, compute_dtype=ms.float32)])(x).asnumpy()
    network = nn.SequentialCell([build(weights, feedforward, compute_dtype=ms.float32)])
    merge_and_unload(network)
    assert type(network[0]) is nn.Dense
    assert [param.name for param in network.get_parameters()] == ["0.weight", "0.bias"]
    np.testing.assert_allclose(network(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_zero_scale_merges_with_a_warning_and_refuses_to_unmerge(caplog):
    weights = random_weights(np.random.default_rng(10), feedforward=True)
    weights["scale"][3] = 0.0
    cell = build(weights, True, compute_dtype=ms.float32)
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        cell.merge()
    assert "1 entries of mindpet_delta_ia3_scale are 0" in caplog.text
    with pytest.raises(ValueError, match=r"IA3Dense\.unmerge.*1 entries of mindpet_delta_ia3_scale are 0"):
        cell.unmerge()
    assert cell.merged


def test_parameter_names():
    assert [p.name for p in IA3Dense(IN, OUT).get_parameters()] == [
        "weight", "bias", "mindpet_delta_ia3_scale", "ia3_scale_gate"]
    assert not IA3Dense(IN, OUT).ia3_scale_gate.requires_grad


@pytest.mark.parametrize("make,error,argument", [
    (lambda: IA3Dense(IN, OUT, feedforward=1), TypeError, "feedforward"),
    (lambda: IA3Dense(IN, OUT, ia3_init=Tensor(np.ones(IN, np.float32))), ValueError, "ia3_init"),
    (lambda: IA3Dense(IN, OUT, feedforward=True, ia3_init=Tensor(np.ones(OUT, np.float32))), ValueError,
     "ia3_init"),
    (lambda: IA3Dense(IN, OUT, ia3_init=float("nan")), ValueError, "ia3_init"),
    (lambda: IA3Dense(IN, 0), ValueError, "out_channels"),
    (lambda: IA3Dense(IN, OUT, compute_dtype=ms.int32), TypeError, "compute_dtype"),
    (lambda: IA3Config(target_modules=["key"], feedforward_modules=["output.dense"]), ValueError,
     "feedforward_modules"),
    (lambda: IA3Config(target_modules=["key"], feedforward_modules=5), TypeError, "feedforward_modules"),
    (lambda: IA3Config(target_modules=["key"], feedforward_modules=[]), ValueError, "feedforward_modules"),
    (lambda: IA3Config(target_modules=["key"], feedforward_modules="(unclosed"), ValueError, "feedforward_modules"),
    (lambda: IA3Config(feedforward_modules=["key"]), TypeError, "target_modules"),
])
def test_errors_name_the_argument(make, error, argument):
    with pytest.raises(error, match=f"'{argument}'") as info:
        make()
    assert "but got" in str(info.value)


def test_untargeted_feedforward_entry_is_named():
    with pytest.raises(ValueError, match=r"subset of target_modules \(not targeted: \['mlp\.1'\]\)"):
        IA3Config(target_modules=["k_proj", "mlp.0"], feedforward_modules=["mlp.0", "mlp.1"])


def test_config_round_trip_and_regex_feedforward():
    config = IA3Config(target_modules="all-dense", feedforward_modules=r".*mlp\.1", exclude_modules=["head"])
    assert IA3Config.from_dict(config.to_dict()) == config
    network = get_delta_model(TinyNet(), config)
    cells = {path: cell for path, cell in network.cells_and_names() if isinstance(cell, IA3Dense)}
    assert len(cells) == 12
    assert sorted(path for path, cell in cells.items() if cell.feedforward) == ["layers.0.mlp.1", "layers.1.mlp.1"]


class TestShard:
    STRATEGIES = {False: dict(strategy_org_dense_matmul=((2, 1), (4, 1)), strategy_org_bias_add=((2, 4), (4,)),
                              strategy_ia3_gate=((4,), ()), strategy_ia3_mul=((2, 4), (4,)),
                              strategy_activation=((2, 4),)),
                  True: dict(strategy_ia3_gate=((2,), ()), strategy_ia3_mul=((2, 2), (2,)),
                             strategy_org_dense_matmul=((2, 2), (4, 2)), strategy_org_bias_add=((2, 4), (4,)),
                             strategy_activation=((2, 4),))}

    @pytest.mark.parametrize("feedforward", [False, True])
    def test_documented_strategies_are_accepted_and_change_no_numbers(self, mode, feedforward):
        weights = random_weights(np.random.default_rng(11), feedforward, out_channels=SHARD_OUT)
        cell = build(weights, feedforward, compute_dtype=ms.float32, activation="relu")
        assert cell.shard(**self.STRATEGIES[feedforward]) is cell
        assert cell.ia3_mul.in_strategy == self.STRATEGIES[feedforward]["strategy_ia3_mul"]
        x = np.random.default_rng(12).standard_normal((4, IN)).astype(np.float32)
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), reference(x, weights, feedforward, "relu"),
                                   rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("feedforward,argument,strategy,expected", [
        (False, "strategy_ia3_mul", ((2, 2), (2,)), "split out_channels 4-way"),
        (False, "strategy_ia3_gate", ((3,), ()), "into equal parts"),
        (True, "strategy_org_dense_matmul", ((2, 1), (4, 1)), "split in_channels 2-way"),
        (True, "strategy_ia3_mul", ((2, 2), (1,)), "split in_channels alike in every input"),
    ])
    def test_inconsistent_strategy_names_the_argument(self, feedforward, argument, strategy, expected):
        cell = IA3Dense(IN, SHARD_OUT, feedforward=feedforward)
        first = "strategy_org_dense_matmul" if not feedforward else "strategy_ia3_mul"
        cell.shard(**{first: self.STRATEGIES[feedforward][first]})
        with pytest.raises(ValueError, match=argument) as info:
            cell.shard(**{argument: strategy})
        assert expected in str(info.value)

    def test_injected_strategies_follow_the_host(self):
        network = TinyNet()
        for path, cell in network.cells_and_names():
            if path.endswith(("q_proj", "mlp.1")):
                cell.matmul.shard(((2, 2), (4, 2)))
                cell.bias_add.shard(((2, 4), (4,)))
        config = IA3Config(target_modules=["q_proj", "mlp.1"], feedforward_modules=["mlp.1"])
        network = get_delta_model(network, config)
        report = check_shard_strategies(network, device_num=16)
        assert report.min_device_num == 16 and len(report.cells) == 4
        cells = dict(network.cells_and_names())
        assert cells["layers.0.attn.q_proj"].ia3_mul.in_strategy == ((2, 4), (4,))
        assert cells["layers.0.mlp.1"].ia3_mul.in_strategy == ((2, 2), (2,))
        with pytest.raises(ValueError, match="fit a device count of 8"):
            check_shard_strategies(network, device_num=8)


TARGETS = ["layers.0.attn.k_proj", "layers.1.attn.v_proj", "layers.0.mlp.1", "layers.1.mlp.0"]
FEEDFORWARD = ["layers.0.mlp.1"]


def hand_written():
    def make_dense(path, in_channels, out_channels, activation=None):
        if path in TARGETS:
            return IA3Dense(in_channels, out_channels, feedforward=path in FEEDFORWARD, activation=activation,
                            compute_dtype=ms.float32)
        return plain_dense(path, in_channels, out_channels, activation)
    return TinyNet(make_dense)


def test_injection_by_config_equals_hand_written(mode):
    config = IA3Config(target_modules=TARGETS, feedforward_modules=FEEDFORWARD)
    network = TinyNet()
    x = Tensor(np.random.default_rng(13).standard_normal((2, 5, WIDTH)).astype(np.float32))
    plain = TinyNet()
    ms.load_param_into_net(plain, {p.name: ms.Parameter(Tensor(p.asnumpy()), name=p.name)
                                   for p in network.get_parameters()}, strict_load=True)
    plain_output = plain(x).asnumpy()
    plan = plan_delta(network, config)
    assert [(cell.path, cell.added_params) for cell in plan.matched] == [
        ("layers.0.attn.k_proj", WIDTH), ("layers.0.mlp.1", 32), ("layers.1.attn.v_proj", WIDTH),
        ("layers.1.mlp.0", 32)]
    injected = get_delta_model(network, config)
    summary = trainable_summary(injected)
    assert (plan.trainable, plan.total) == (summary.trainable, summary.total)
    assert np.array_equal(injected(x).asnumpy(), plain_output)
    rng = np.random.default_rng(14)
    for param in injected.get_parameters():
        if "ia3" in param.name and param.requires_grad:
            param.set_data(Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    written = hand_written()
    assert [p.name for p in injected.get_parameters()] == [p.name for p in written.get_parameters()]
    ms.load_param_into_net(written, {p.name: ms.Parameter(Tensor(p.asnumpy()), name=p.name)
                                     for p in injected.get_parameters()}, strict_load=True)
    injected_output = injected(x).asnumpy()
    np.testing.assert_allclose(written(x).asnumpy(), injected_output, rtol=1e-6, atol=1e-6)
    assert np.abs(injected_output - plain_output).max() > 1e-2
    assert sorted(freeze_delta(injected, "ia3")) == sorted(f"{path}.mindpet_delta_ia3_scale" for path in TARGETS)
    merge_and_unload(injected)
    assert not any(isinstance(cell, IA3Dense) for _, cell in injected.cells_and_names())
    np.testing.assert_allclose(injected(x).asnumpy(), injected_output, rtol=1e-5, atol=1e-5)


def test_ia3_fine_tunes_a_rescaled_teacher_and_reloads(tmp_path):
    """
    Feature: (IA)^3 trains end to end in GRAPH mode on the toy regressor; its delta reloads into a fresh network.
    Description: Inject (IA)^3 by config (the second layer as feed-forward) and fit a teacher whose first layer's
        rows and second layer's columns are rescaled; save the trainable parameters; reload into a fresh network.
    Expectation: the loss falls under 25% of its start; frozen weights stay bit-identical; the reload matches.
    """
    from mindpet import load_base_checkpoint, load_delta_checkpoint
    from toy_models import Regressor

    def make_student(base_path):
        net = Regressor()
        load_base_checkpoint(net, base_path)
        return get_delta_model(net, IA3Config(target_modules=["encoder.0", "encoder.1"],
                                              feedforward_modules=["encoder.1"]))

    layer_index = iter(range(2))

    def rescale(weight, rng):
        if next(layer_index) == 0:
            return weight * rng.uniform(0.3, 1.7, (weight.shape[0], 1))
        return weight * rng.uniform(0.3, 1.7, (1, weight.shape[1]))

    run = train_to_teacher(make_student, rescale, tmp_path, learning_rate=5e-2)
    assert run["final_loss"] < 0.25 * run["start_loss"]
    assert sorted(run["trainable"]) == ["encoder.0.mindpet_delta_ia3_scale", "encoder.1.mindpet_delta_ia3_scale"]
    for name, value in run["before"].items():
        changed = not np.array_equal(run["after"][name], value)
        assert changed == (name in run["trainable"]), name
    fresh = make_student(run["base_path"])
    load_delta_checkpoint(fresh, run["delta_path"])
    np.testing.assert_allclose(fresh(run["x"]).asnumpy(), run["student"](run["x"]).asnumpy(), rtol=1e-6, atol=1e-6)
