"""QLoRA: NF4 storage against a NumPy reference, NF4Dense, quantize_base, LoRA on a 4-bit base, merge, checkpoints."""
import logging
import os
from statistics import NormalDist

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from mindpet import (
    LoraConfig,
    freeze_modules,
    get_delta_model,
    merge_and_unload,
    plan_delta,
    quantize_base,
    trainable_summary,
)
from mindpet.delta import LoRADense
from mindpet.quantization import NF4Dense, NF4Weight
from mindpet.quantization.nf4 import (
    NESTED_BLOCK_SIZE,
    NF4_LEVELS,
    dequantize_nf4,
    double_quant_error_bound,
    quantize_nf4,
    unpack_codes,
)

IN, HIDDEN, OUT = 128, 64, 4


def reference_nf4(weight, block_size):
    """An independent NF4 reference: each element's nearest level (ties to the lower one) after division by its
    block's absmax; returns the codes ``(out, in)``, the absmaxes ``(out, in // block_size)`` and the dequantized
    weight."""
    out_channels, in_channels = weight.shape
    blocks = weight.reshape(out_channels, -1, block_size).astype(np.float32)
    absmax = np.abs(blocks).max(axis=2)
    normalized = blocks / np.where(absmax > 0, absmax, 1)[..., None]
    distance = np.abs(normalized[..., None] - NF4_LEVELS)
    codes = np.argmin(distance, axis=-1)  # argmin keeps the first (lower) of two equal distances
    dequantized = NF4_LEVELS[codes] * absmax[..., None]
    return codes.reshape(weight.shape), absmax, dequantized.reshape(weight.shape)


def normal_weight(shape, seed=0, scale=0.05):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def mlp():
    return nn.SequentialCell([nn.Dense(IN, HIDDEN), nn.ReLU(), nn.Dense(HIDDEN, OUT)])


def storage(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters() if ".weight." in param.name}


def fresh_call(net, x):
    """``net(x)`` through a new wrapper cell: a GRAPH-mode network compiled before its layers were replaced keeps the
    old graph, a new wrapper compiles the current layers."""
    return nn.SequentialCell([net])(x).asnumpy()


# --- the levels and the NumPy quantizer ---------------------------------------------------------------------------

def test_levels_are_the_papers_normal_quantiles():
    """QLoRA's construction: 8 positive and 7 negative quantiles of N(0, 1) at offset 0.9677083, an exact 0,
    normalized to [-1, 1]."""
    inverse_cdf = NormalDist().inv_cdf
    offset = 0.9677083
    positive = [inverse_cdf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    negative = [-inverse_cdf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    levels = np.sort(np.array(positive + [0.0] + negative))
    levels /= np.abs(levels).max()
    assert NF4_LEVELS.dtype == np.float32 and NF4_LEVELS.shape == (16,)
    np.testing.assert_allclose(NF4_LEVELS, levels, rtol=0, atol=1e-6)
    assert NF4_LEVELS[7] == 0.0 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[15] == 1.0


def test_quantize_equals_the_reference_exactly_without_double_quant():
    weight = normal_weight((8, 256))
    weight[3, 64:128] = 0.0  # an all-zero block
    weight[5, :16] = NF4_LEVELS * 0.3  # every level exactly, in a block whose absmax is 0.3
    weight[5, 16:64] = 0.0
    codes, absmax, dequantized = reference_nf4(weight, 64)
    arrays = quantize_nf4(weight, block_size=64, double_quant=False)
    np.testing.assert_array_equal(unpack_codes(arrays.codes), codes)
    np.testing.assert_array_equal(arrays.absmax, absmax)
    np.testing.assert_array_equal(dequantize_nf4(arrays, 64), dequantized)
    assert arrays.nested_scale is None and double_quant_error_bound(arrays) == 0.0
    np.testing.assert_array_equal(unpack_codes(arrays.codes)[5, :16], np.arange(16))


def test_two_codes_a_byte_first_in_the_high_nibble():
    """The seed's example: [1.55, 1.62, 1.83, 4.32] -> codes [11, 11, 12, 15] -> bytes 0xBB, 0xCF."""
    arrays = quantize_nf4(np.array([[1.55, 1.62, 1.83, 4.32]], np.float32), block_size=4, double_quant=False)
    np.testing.assert_array_equal(arrays.codes, [[0xBB, 0xCF]])
    np.testing.assert_allclose(dequantize_nf4(arrays, 4), [[1.46, 1.46, 1.90, 4.32]], atol=5e-3)


def test_double_quant_stays_within_its_bound():
    weight = normal_weight((96, 512), seed=1)  # 768 absmaxes: 3 nested blocks
    codes, absmax, dequantized = reference_nf4(weight, 64)
    arrays = quantize_nf4(weight, block_size=64, double_quant=True)
    np.testing.assert_array_equal(unpack_codes(arrays.codes), codes)
    assert arrays.absmax.dtype == np.int8 and arrays.absmax.shape == (3 * NESTED_BLOCK_SIZE,)
    np.testing.assert_allclose(arrays.offset, absmax.mean(), rtol=1e-6)
    bound = double_quant_error_bound(arrays)
    error = np.abs(dequantize_nf4(arrays, 64) - dequantized)
    assert 0 < error.max() <= bound * (1 + 1e-5)
    # The bound is half an int8 step of the widest nested block of centred absmaxes.
    centred = absmax.reshape(-1) - absmax.mean()
    assert bound == pytest.approx(np.abs(centred).max() / 254, rel=1e-6)


def test_a_partial_nested_block_is_padded():
    weight = normal_weight((6, 128), seed=2)  # 12 absmaxes: one nested block, mostly padding
    arrays = quantize_nf4(weight, block_size=64, double_quant=True)
    assert arrays.absmax.shape == (NESTED_BLOCK_SIZE,) and not arrays.absmax[12:].any()
    _, _, dequantized = reference_nf4(weight, 64)
    assert np.abs(dequantize_nf4(arrays, 64) - dequantized).max() <= double_quant_error_bound(arrays) * (1 + 1e-5)


@pytest.mark.parametrize("double_quant", [True, False])
def test_storage_is_at_most_0_16_of_fp32(double_quant):
    stored = NF4Weight(normal_weight((256, 1024)), block_size=64, double_quant=double_quant)
    fp32_bytes = 256 * 1024 * 4
    assert stored.storage_bytes() <= 0.16 * fp32_bytes
    bits_per_weight = 8 * stored.storage_bytes() / (256 * 1024)
    assert bits_per_weight == pytest.approx(4.127 if double_quant else 4.5, abs=0.01)


# --- NF4Dense ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compute_dtype", [ms.float32, ms.float16], ids=["fp32", "fp16"])
def test_forward_matches_numpy_dequantize_then_matmul(mode, compute_dtype):
    weight = normal_weight((OUT * 4, IN), seed=3)
    bias = normal_weight((OUT * 4,), seed=4)
    dense = NF4Dense(IN, OUT * 4, weight_init=Tensor(weight), bias_init=Tensor(bias), activation="relu",
                     compute_dtype=compute_dtype)
    x = np.random.default_rng(5).standard_normal((2, 3, IN)).astype(np.float32)
    arrays = quantize_nf4(weight, 64, double_quant=True)
    expected = np.maximum(x @ dequantize_nf4(arrays, 64).T + bias, 0)
    assert np.abs(expected).max() > 0.1  # a nonzero output
    result = dense(Tensor(x))
    assert result.dtype == ms.float32 and result.shape == (2, 3, OUT * 4)
    tolerance = 1e-5 if compute_dtype == ms.float32 else 3e-3
    np.testing.assert_allclose(result.asnumpy(), expected, rtol=tolerance, atol=tolerance)


class _Dequantized(nn.Cell):
    def __init__(self, stored, dtype):
        super().__init__()
        self.stored = stored
        self.dtype = dtype

    def construct(self):
        return self.stored.dequantize(self.dtype)


@pytest.mark.parametrize("double_quant", [True, False])
def test_graph_dequantization_equals_numpy_bit_for_bit(mode, double_quant):
    weight = normal_weight((20, 128), seed=6)
    stored = NF4Weight(weight, block_size=32, double_quant=double_quant)
    expected = dequantize_nf4(quantize_nf4(weight, 32, double_quant), 32)
    np.testing.assert_array_equal(_Dequantized(stored, ms.float32)().asnumpy(), expected)
    np.testing.assert_array_equal(stored.to_array(), expected)
    np.testing.assert_array_equal(_Dequantized(stored, ms.float16)().asnumpy(), expected.astype(np.float16))


def test_nf4_dense_is_frozen_and_describes_its_storage():
    dense = NF4Dense(IN, OUT, block_size=32, double_quant=False)
    assert not any(param.requires_grad for param in dense.get_parameters())
    assert sorted(param.name for param in dense.get_parameters()) == ["bias", "weight.absmax", "weight.codes"]
    assert dense.quantization_info() == {"quant_type": "nf4", "block_size": 32, "double_quant": False,
                                         "nested_block_size": None, "shape": [OUT, IN], "dtype": "float32"}
    assert freeze_modules(dense, exclude=["*"]) == ["bias"]  # the storage stays frozen


# --- quantize_base, LoRA on NF4, merge, checkpoints ---------------------------------------------------------------

def test_quantize_base_replaces_dense_and_keeps_bias_and_counts():
    net = mlp()
    weight, bias = net[0].weight.asnumpy().copy(), net[0].bias
    before = trainable_summary(net).total
    assert quantize_base(net, ["0"], double_quant=False) is net
    assert isinstance(net[0], NF4Dense) and isinstance(net[2], nn.Dense)
    assert net[0].bias is bias and not bias.requires_grad
    np.testing.assert_array_equal(net[0].weight.to_array(), reference_nf4(weight, 64)[2])
    assert [param.name for param in net[0].get_parameters()] == ["0.bias", "0.weight.codes", "0.weight.absmax"]
    assert trainable_summary(net).total == before  # 4-bit weights count as the weights they store
    config = LoraConfig(target_modules=["0"], lora_rank=2)
    plan = plan_delta(net, config)
    assert [(cell.path, cell.cell_type) for cell in plan.matched] == [("0", "NF4Dense")]
    get_delta_model(net, config)
    summary = trainable_summary(net)
    assert (plan.trainable, plan.total) == (summary.trainable, summary.total) == (2 * (IN + HIDDEN), before + 1
                                                                               + 2 * (IN + HIDDEN))


def test_all_dense_quantizes_every_float_dense_and_skips_quantized_ones():
    net = quantize_base(mlp(), "all-dense", block_size=4)
    assert isinstance(net[0], NF4Dense) and isinstance(net[2], NF4Dense)
    with pytest.raises(ValueError, match="no float Dense-like layer"):
        quantize_base(net, "all-dense")


@pytest.fixture(scope="module")
def trained():
    """LoRA on an NF4 base (double quantization) trained 30 steps in GRAPH mode toward a low-rank change."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    teacher = mlp()
    net = mlp()
    ms.load_param_into_net(net, {name: ms.Parameter(param.value(), name=name)
                                 for name, param in teacher.parameters_and_names()})
    rng = np.random.default_rng(7)
    change = rng.standard_normal((HIDDEN, 2)) @ rng.standard_normal((2, IN)) * 0.2
    teacher[0].weight.set_data(Tensor(teacher[0].weight.asnumpy() + change.astype(np.float32)))
    x = rng.standard_normal((64, IN)).astype(np.float32)
    y = teacher(Tensor(x)).asnumpy()

    quantize_base(net, "all-dense")
    get_delta_model(net, LoraConfig(target_modules=["0"], lora_rank=4, lora_alpha=8))
    frozen = storage(net)
    loss_net = nn.WithLossCell(net, nn.MSELoss())
    step = nn.TrainOneStepCell(loss_net, nn.Adam(net.trainable_params(), learning_rate=1e-2))
    step.set_train()
    losses = [float(step(Tensor(x), Tensor(y)).asnumpy()) for _ in range(30)]
    net.set_train(False)
    return {"net": net, "x": x, "losses": losses, "frozen": frozen}


def test_lora_on_nf4_trains_while_the_storage_stays_bit_identical(trained):
    net, losses = trained["net"], trained["losses"]
    assert isinstance(net[0], LoRADense) and net[0].weight_quantized and isinstance(net[2], NF4Dense)
    assert losses[-1] < 0.5 * losses[0]
    after = storage(net)
    assert sorted(after) == sorted(trained["frozen"]) and len(after) == 8
    for name, value in trained["frozen"].items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert np.abs(net[0].mindpet_delta_lora_b.asnumpy()).max() > 0


def test_merge_and_unload_returns_a_dequantized_dense(trained, caplog):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, x = trained["net"], Tensor(trained["x"])
    try:
        cell = net[0]
        with pytest.raises(ValueError, match="merge_and_unload"):
            cell.merge()
        expected_weight = cell.weight.to_array() + cell.scaling * (cell.mindpet_delta_lora_b.asnumpy()
                                                                   @ cell.mindpet_delta_lora_a.asnumpy())
        before = net(x).asnumpy()
        dense = cell.to_plain_dense()
        with caplog.at_level(logging.INFO, logger="mindpet"):
            merged = merge_and_unload(nn.SequentialCell([cell]))[0]
        assert "dequantized from nf4" in caplog.text
        assert type(dense) is nn.Dense and type(merged) is nn.Dense and merged.weight.dtype == ms.float32
        np.testing.assert_allclose(merged.weight.asnumpy(), expected_weight, rtol=0, atol=1e-6)
        assert merged.weight.name == "0.weight" and not cell.merged
        after = nn.SequentialCell([merged, net[1], net[2]])(x).asnumpy()
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_fp16_base_merges_to_fp16_dense():
    net = nn.SequentialCell([nn.Dense(IN, OUT, dtype=ms.float16)])
    quantize_base(net, ["0"])
    get_delta_model(net, LoraConfig(target_modules=["0"], lora_rank=2))
    assert net[0].weight.quantization_info()["dtype"] == "float16"
    dense = merge_and_unload(net)[0]
    assert type(dense) is nn.Dense and dense.weight.dtype == ms.float16


def test_checkpoint_keeps_the_4bit_storage(tmp_path):
    net = quantize_base(mlp(), "all-dense")
    x = Tensor(np.random.default_rng(8).standard_normal((5, IN)).astype(np.float32))
    expected = net(x).asnumpy()
    path = str(tmp_path / "nf4.ckpt")
    ms.save_checkpoint(net, path)
    fp32_path = str(tmp_path / "fp32.ckpt")
    ms.save_checkpoint(mlp(), fp32_path)
    assert os.path.getsize(path) < 0.25 * os.path.getsize(fp32_path)

    fresh = quantize_base(mlp(), "all-dense")  # quantized from other weights, then loaded
    assert not np.array_equal(fresh[0].weight.codes.asnumpy(), net[0].weight.codes.asnumpy())
    not_loaded, _ = ms.load_param_into_net(fresh, ms.load_checkpoint(path))
    assert not not_loaded
    for name, value in storage(net).items():
        np.testing.assert_array_equal(storage(fresh)[name], value, err_msg=name)
    np.testing.assert_array_equal(fresh(x).asnumpy(), expected)


# --- shard() --------------------------------------------------------------------------------------------------------

def test_shard_validates_the_block_layout():
    dense = NF4Dense(256, 64, block_size=64)  # 4 blocks a row
    assert dense.shard(strategy_matmul=((2, 4), (2, 4)), strategy_bias_add=((2, 2), (2,))) is dense
    with pytest.raises(ValueError, match=r"strategy_matmul.*blocks of a row \(in_channels / block_size = 4\)"):
        NF4Dense(256, 64, block_size=64).shard(strategy_matmul=((1, 8), (1, 8)))
    with pytest.raises(ValueError, match="strategy_bias_add"):
        NF4Dense(256, 64).shard(strategy_matmul=((2, 1), (2, 1)), strategy_bias_add=((2, 4), (4,)))


def test_lora_on_nf4_checks_the_block_layout_too():
    net = get_delta_model(quantize_base(mlp(), ["0"], block_size=64), LoraConfig(target_modules=["0"], lora_rank=2))
    net[0].shard(strategy_org_dense_matmul=((1, 2), (1, 2)))
    with pytest.raises(ValueError, match="blocks of a row"):
        net[0].shard(strategy_org_dense_matmul=((1, 4), (1, 4)))


def test_host_strategies_carry_over_to_the_quantized_layer():
    net = mlp()
    net[0].matmul.shard(((2, 1), (4, 1)))
    quantize_base(net, ["0"])
    assert net[0].matmul.attrs["in_strategy"] == ((2, 1), (4, 1))


# --- errors --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, argument", [
    ({"quant_type": "fp4"}, ValueError, "quant_type"),
    ({"quant_type": 4}, TypeError, "quant_type"),
    ({"block_size": 0}, ValueError, "block_size"),
    ({"block_size": 33}, ValueError, "block_size"),
    ({"block_size": 48}, ValueError, "block_size"),  # does not divide in_channels 128
    ({"block_size": 64.0}, TypeError, "block_size"),
    ({"block_size": True}, TypeError, "block_size"),
    ({"double_quant": 1}, TypeError, "double_quant"),
])
def test_bad_arguments(kwargs, error, argument):
    with pytest.raises(error, match=f"'quantize_base', the argument '{argument}'") as info:
        quantize_base(mlp(), ["0"], **kwargs)
    assert repr(kwargs[next(iter(kwargs))]) in str(info.value)
    with pytest.raises(error, match=f"'NF4Dense', the argument '{argument}'"):
        NF4Dense(IN, OUT, **kwargs)


def test_unknown_quant_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"one of \['nf4'\].*'fp4'"):
        quantize_base(mlp(), ["0"], quant_type="fp4")


def test_block_size_error_names_the_layer():
    net = nn.SequentialCell([nn.Dense(128, 96), nn.Dense(96, 2)])
    with pytest.raises(ValueError, match=r"in_channels \(96\) of '1'"):
        quantize_base(net, "all-dense", block_size=64)
    assert isinstance(net[0], nn.Dense)  # nothing changed


def test_targeting_errors():
    with pytest.raises(TypeError, match="'network'"):
        quantize_base("net", ["0"])
    with pytest.raises(TypeError, match="'target_modules'"):
        quantize_base(mlp(), None)
    with pytest.raises(ValueError, match=r"matches no float Dense-like layer; the closest paths are \['0'"):
        quantize_base(mlp(), ["00"])
    with pytest.raises(ValueError, match="'1' \\(ReLU\\): it is not a float Dense-like layer"):
        quantize_base(mlp(), ["0", "1"])
    net = quantize_base(mlp(), ["0"])
    with pytest.raises(ValueError, match="'0' \\(NF4Dense\\): it is already quantized"):
        quantize_base(net, ["0"])
    with pytest.raises(ValueError, match=r"weight.*2-D"):
        NF4Weight(np.zeros(8, np.float32))


def test_adapters_inject_on_nf4_too(mode):
    from mindpet import AdapterConfig

    net = quantize_base(mlp(), ["0"])
    stored = net[0].weight
    x = Tensor(np.random.default_rng(9).standard_normal((2, IN)).astype(np.float32))
    before = fresh_call(net, x)
    get_delta_model(net, AdapterConfig(target_modules=["0"], bottleneck_size=4))
    assert net[0].weight is stored and net[0].weight_quantized
    # The adapter's up-projection starts at zero: the adapted layer computes what the NF4 layer computed.
    np.testing.assert_allclose(fresh_call(net, x), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_dora_and_ia3_inject_on_nf4_and_merge_to_a_dequantized_dense(mode, method):
    from mindpet import IA3Config

    config = {"dora": LoraConfig(target_modules=["0"], lora_rank=4, lora_alpha=8, use_dora=True),
              "ia3": IA3Config(target_modules=["0"], feedforward_modules=["0"])}[method]
    net = quantize_base(mlp(), ["0"])
    stored, stored_codes = net[0].weight, net[0].weight.codes.asnumpy().copy()
    x = Tensor(np.random.default_rng(10).standard_normal((3, IN)).astype(np.float32))
    before = fresh_call(net, x)
    get_delta_model(net, config)
    cell = net[0]
    assert cell.weight is stored and cell.weight_quantized
    if method == "dora":
        # The magnitude starts at the row norms of the dequantized base, not of a float copy that does not exist.
        np.testing.assert_allclose(cell.mindpet_delta_lora_magnitude.asnumpy(),
                                   np.linalg.norm(stored.to_array(), axis=1), rtol=1e-6)
    np.testing.assert_allclose(fresh_call(net, x), before, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(11)
    for param in net.trainable_params():
        param.set_data(Tensor(param.asnumpy() * (1 + 0.2 * rng.standard_normal(param.shape)).astype(np.float32)
                              + 0.02 * rng.standard_normal(param.shape).astype(np.float32), param.dtype))
    adapted = fresh_call(net, x)
    assert np.abs(adapted - before).max() > 1e-3
    merged = merge_and_unload(net)
    assert type(merged[0]) is nn.Dense
    np.testing.assert_allclose(fresh_call(merged, x), adapted, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stored.codes.asnumpy(), stored_codes)


def test_mindformers_linear_is_quantized(graph_mode):
    layers = pytest.importorskip("mindformers.modules.layers")

    class Block(nn.Cell):
        def __init__(self):
            super().__init__()
            self.wide = layers.Linear(16, 32, transpose_b=False, compute_dtype=ms.float32)
            self.proj = layers.Linear(32, 16, compute_dtype=ms.float32)

        def construct(self, x):
            return self.proj(self.wide(x))

    block = Block()
    weight = block.proj.weight.asnumpy().copy()
    x = np.random.default_rng(10).standard_normal((3, 16)).astype(np.float32)
    hidden = block.wide(Tensor(x)).asnumpy()
    quantize_base(block, "all-dense", block_size=16)  # 'wide' stores its weight (in, out): skipped
    assert isinstance(block.proj, NF4Dense) and not isinstance(block.wide, NF4Dense)
    expected = hidden @ reference_nf4(weight, 16)[2].T + block.proj.bias.asnumpy()
    np.testing.assert_allclose(block.proj(Tensor(hidden)).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"'wide' \(Linear\): its weight is stored \(in, out\)"):
        quantize_base(Block(), ["wide"], block_size=16)


@pytest.mark.parametrize("compute_dtype", [ms.float32, ms.float16], ids=["fp32", "fp16"])
def test_lora_on_nf4_matches_numpy(mode, compute_dtype):
    """``y = x dequant(W)^T + b + s x A^T B^T`` with a nonzero ``B``."""
    weight, bias = normal_weight((HIDDEN, IN), seed=11), normal_weight((HIDDEN,), seed=12)
    net = nn.SequentialCell([NF4Dense(IN, HIDDEN, weight_init=Tensor(weight), bias_init=Tensor(bias),
                                      compute_dtype=compute_dtype)])
    get_delta_model(net, LoraConfig(target_modules=["0"], lora_rank=4, lora_alpha=8))
    cell = net[0]
    assert cell.compute_dtype == compute_dtype
    lora_b = normal_weight((HIDDEN, 4), seed=13, scale=0.5)
    cell.mindpet_delta_lora_b.set_data(Tensor(lora_b))
    lora_a = cell.mindpet_delta_lora_a.asnumpy()
    x = np.random.default_rng(14).standard_normal((2, 5, IN)).astype(np.float32)
    delta = 2.0 * (x @ lora_a.T) @ lora_b.T
    expected = x @ dequantize_nf4(quantize_nf4(weight, 64), 64).T + bias + delta
    assert np.abs(delta).max() > 0.1
    tolerance = 1e-5 if compute_dtype == ms.float32 else 5e-3
    np.testing.assert_allclose(net(Tensor(x)).asnumpy(), expected, rtol=tolerance, atol=tolerance)
