"""save_delta / load_delta: round trips for every registered method into a fresh base, the config travelling with the
tensors, checks that leave the network untouched when they fail, and atomic writes."""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import mindspore as ms
import numpy as np
import pytest
from injection_models import TinyNet, hand_written
from mindspore import dataset as ds
from mindspore import nn
from virtual_token_helpers import SEQ_LENGTH, VOCAB, WIDTH, SteeredModel

from mindpet import (
    AdaLoraConfig,
    AdapterConfig,
    IA3Config,
    LoraConfig,
    LowRankAdapterConfig,
    TrainableParamsCheckPoint,
    freeze_delta,
    get_delta_model,
    load_delta,
    quantize_base,
    save_delta,
)
from mindpet.checkpoint import adapter_dir
from mindpet.checkpoint.adapter_dir import CONFIG_FILE, WEIGHTS_FILE
from mindpet.checkpoint.atomic import STAGING_PREFIX, remove_stale_staging_dirs
from mindpet.checkpoint.safetensors_file import SafetensorsError, read_safetensors, write_safetensors
from mindpet.delta import LoRADense, PrefixEncoder, PrefixLayer, PromptEncoder, PromptTuningEmbedding
from mindpet.registry import METHODS, method_of_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q_PATHS = ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]


def _randomize(params, seed):
    """Give every parameter nonzero random values, so that a delta that did not load shows in the outputs."""
    rng = np.random.default_rng(seed)
    for param in params:
        param.set_data(ms.Tensor(rng.normal(0, 0.3, param.shape).astype(np.float32), param.dtype))


def _tiny(seed=0):
    ms.set_seed(seed)
    return TinyNet()


class PrefixNet(nn.Cell):
    """A PrefixLayer read out through a Dense: the output depends on every prefix parameter."""

    def __init__(self, seed):
        super().__init__()
        ms.set_seed(seed)
        self.prefix = PrefixLayer(prefix_token_num=2, batch_size=2, num_heads=2, hidden_dim=8, embed_dim=4,
                                  mid_dim=6, dropout_rate=0.0)
        self.readout = nn.Dense(8, 3)

    def construct(self, x):
        key, value = self.prefix()[0], self.prefix()[1]
        return self.readout(x + key.sum() + value.mean())


class PTuningNet(nn.Cell):
    def __init__(self, seed):
        super().__init__()
        ms.set_seed(seed)
        self.encoder = PrefixEncoder(pre_seq_len=2, num_layers=2, num_heads=2, kv_channels=4, prefix_projection=True,
                                     projection_dim=6)
        self.readout = nn.Dense(8, 3)

    def construct(self, x):
        prefixes = self.encoder(2)
        return self.readout(x + prefixes[0].sum() - prefixes[1].mean())


# LoRA's variants and LoRA on an NF4 base, round-tripped beside the registered methods.
LORA_VARIANTS = {"rslora": {"use_rslora": True}, "dora": {"use_dora": True}, "qlora": {}}
# Methods whose cells are written in the model source; the fresh network holds fresh cells.
PROMPT_CELLS = {"prompt_tuning": lambda: PromptTuningEmbedding(4, WIDTH),
                # The LSTM encoder here; the MLP's file is checked against PEFT in test_peft_interop.py.
                "ptuning": lambda: PromptEncoder(4, WIDTH, encoder_hidden_size=5,
                                                 encoder_reparameterization_type="LSTM", encoder_num_layers=1,
                                                 compute_dtype=ms.float32)}


def _quantized_tiny(seed=0):
    return quantize_base(_tiny(seed), ["q_proj", "mlp.0"], block_size=16)


def _delta_net(method):
    """A trained-looking network of ``method`` (random nonzero delta) and a builder of its fresh base."""
    if method in PROMPT_CELLS:
        def fresh():
            # One seed: the frozen head's bias is drawn from it. The trained delta is randomised below.
            ms.set_seed(1)
            model = SteeredModel(PROMPT_CELLS[method]())
            freeze_delta(model, method)
            return model
        trained = fresh()
        _randomize([param for param in trained.get_parameters() if "mindpet_delta" in param.name], seed=2)
        return trained, fresh
    if method in LORA_VARIANTS:
        trained = _quantized_tiny() if method == "qlora" else _tiny()
        get_delta_model(trained, LoraConfig(target_modules=["q_proj", "mlp.0"], lora_rank=2, lora_alpha=6,
                                            **LORA_VARIANTS[method]))
        _randomize(trained.trainable_params(), seed=3)
        return trained, (_quantized_tiny if method == "qlora" else _tiny)
    if method in ("prefix", "ptuning2"):
        cls = PrefixNet if method == "prefix" else PTuningNet
        trained = cls(seed=1)
        _randomize(trained.trainable_params(), seed=2)
        trained.readout.weight.requires_grad = False
        trained.readout.bias.requires_grad = False
        return trained, lambda: cls(seed=5)
    trained = _tiny()
    if method == "bitfit":
        freeze_delta(trained, "bitfit")
        trained.head.weight.requires_grad = True  # a trained head is saved whole, its bias with it
    else:
        config = {"lora": LoraConfig(target_modules=["q_proj", "mlp.0"], lora_rank=2, lora_alpha=6,
                                     rank_pattern={"mlp.0": 3}, modules_to_save=["head"]),
                  "adapter": AdapterConfig(target_modules=["v_proj"], bottleneck_size=3),
                  "low_rank_adapter": LowRankAdapterConfig(target_modules=["o_proj"], reduction_factor=4),
                  "ia3": IA3Config(target_modules=["k_proj", "mlp.0", "mlp.1"], feedforward_modules=["mlp.1"]),
                  "adalora": AdaLoraConfig(target_modules=["q_proj", "mlp.0"], init_r=3, total_step=10,
                                           target_r=2)}[method]
        get_delta_model(trained, config)
    _randomize(trained.trainable_params(), seed=3)
    return trained, _tiny


def _inputs(method):
    rng = np.random.default_rng(7)
    if method in PROMPT_CELLS:
        return (ms.Tensor(rng.integers(0, VOCAB, (2, SEQ_LENGTH)), ms.int32),
                ms.Tensor(np.ones((2, SEQ_LENGTH)), ms.int32))
    shape = (2, 8) if method in ("prefix", "ptuning2") else (2, 5, 16)
    return (ms.Tensor(rng.normal(size=shape).astype(np.float32)),)


def _input(method):
    return _inputs(method)[0]


def _values(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters()}


def _assert_unchanged(net, before):
    after = _values(net)
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        assert np.array_equal(after[name], value), name


@pytest.mark.parametrize("method", [method.name for method in METHODS] + list(LORA_VARIANTS))
def test_round_trip_into_a_fresh_base(method, mode, tmp_path):
    trained, fresh_base = _delta_net(method)
    x = _inputs(method)
    expected = trained(*x).asnumpy()
    folder = save_delta(trained, str(tmp_path / "adapter"))
    fresh = fresh_base()
    if method in ("prefix", "ptuning2"):
        fresh.readout.weight.set_data(trained.readout.weight.data)
        fresh.readout.bias.set_data(trained.readout.bias.data)
    # The base alone computes something else (a separate instance: a compiled graph would keep the old layers).
    assert not np.allclose(fresh_base()(*x).asnumpy(), expected, atol=1e-3)
    result = load_delta(fresh, folder)
    assert result.missing == [] and result.unexpected == []
    np.testing.assert_allclose(fresh(*x).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    if method in PROMPT_CELLS:
        assert sorted(_values(fresh)) == sorted(_values(trained))
        for name, value in _values(trained).items():
            if "mindpet_delta" in name:
                np.testing.assert_array_equal(_values(fresh)[name], value)
    elif method not in ("prefix", "ptuning2", "bitfit"):
        adapted = sorted(path for path, cell in trained.cells_and_names() if method_of_cell(cell) is not None)
        assert fresh.delta_configs["lora" if method in LORA_VARIANTS else method].target_modules == adapted
        assert sorted(_values(fresh)) == sorted(_values(trained))
        assert sorted(p.name for p in fresh.trainable_params()) == sorted(p.name for p in trained.trainable_params())


def test_lora_file_is_in_peft_layout(tmp_path):
    trained, _ = _delta_net("lora")
    folder = save_delta(trained, str(tmp_path / "adapter"))
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as file:
        fields = json.load(file)
    tensors, metadata = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    assert fields["peft_type"] == "LORA" and fields["r"] == 2 and fields["lora_alpha"] == 6
    assert fields["target_modules"] == sorted(Q_PATHS + ["layers.0.mlp.0", "layers.1.mlp.0"])
    assert fields["rank_pattern"] == {r"layers\.0\.mlp\.0": 3, r"layers\.1\.mlp\.0": 3}
    assert fields["modules_to_save"] == ["head"] and fields["bias"] == "none" and fields["use_dora"] is False
    assert tensors["base_model.model.layers.0.attn.q_proj.lora_A.weight"].shape == (2, 16)
    assert tensors["base_model.model.layers.0.mlp.0.lora_B.weight"].shape == (32, 3)
    np.testing.assert_array_equal(tensors["base_model.model.head.weight"], trained.head.weight.asnumpy())
    assert len(tensors) == 4 * 2 + 2
    fingerprint = json.loads(metadata["base_fingerprint"])
    assert fingerprint["layers.0.mlp.0.weight"] == {"shape": [32, 16]}
    assert metadata["mindpet_version"] and metadata["mindspore_version"] == ms.__version__


def test_key_map_renames_both_ways(tmp_path):
    trained, _ = _delta_net("adapter")
    folder = save_delta(trained, str(tmp_path / "adapter"), key_map={"layers": "model.blocks"})
    tensors, _ = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    assert all(key.startswith("model.blocks.") for key in tensors)
    fresh = _tiny()
    load_delta(fresh, folder, key_map=lambda path: path.replace("model.blocks", "layers"))
    x = _input("adapter")
    np.testing.assert_allclose(fresh(x).asnumpy(), trained(x).asnumpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="first differing weight is 'model.blocks.0.attn.v_proj.weight'.*key_map"):
        load_delta(_tiny(), folder)
    with pytest.raises(TypeError, match="key_map"):
        load_delta(_tiny(), folder, key_map=["layers"])


def test_wrong_alpha_is_refused_not_loaded(tmp_path):
    trained = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj"], lora_rank=4, lora_alpha=16))
    _randomize(trained.trainable_params(), seed=3)
    folder = save_delta(trained, str(tmp_path / "adapter"))
    held = hand_written("lora", Q_PATHS)  # rank 4, alpha 8
    before = _values(held)
    with pytest.raises(ValueError, match=r"'layers.0.attn.q_proj' has lora_alpha=8.0 .* lora_alpha=16"):
        load_delta(held, folder)
    _assert_unchanged(held, before)
    # Into a base, the file's alpha is injected.
    fresh = _tiny()
    load_delta(fresh, folder)
    assert [cell.lora_alpha for cell in (fresh.layers[0].attn.q_proj, fresh.layers[1].attn.q_proj)] == [16, 16]


def test_fingerprint_mismatch_names_the_weight_and_changes_nothing(tmp_path):
    trained, _ = _delta_net("lora")
    folder = save_delta(trained, str(tmp_path / "adapter"))
    other = _tiny()
    other.layers[1].mlp[0] = nn.Dense(16, 32, has_bias=False)
    other.layers[1].attn.q_proj = nn.Dense(16, 20)
    before = _values(other)
    with pytest.raises(ValueError, match=r"first differing weight is 'layers.1.attn.q_proj.weight'.*\[16, 16\].*"
                                         r"\[20, 16\]"):
        load_delta(other, folder)
    _assert_unchanged(other, before)
    assert not hasattr(other, "delta_configs")


def test_strict_failure_after_injection_is_undone(tmp_path):
    trained, _ = _delta_net("lora")
    folder = save_delta(trained, str(tmp_path / "adapter"))
    tensors, metadata = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    tensors["no_such_module.weight"] = np.ones((2,), np.float32)
    write_safetensors(os.path.join(folder, WEIGHTS_FILE), tensors, metadata)
    fresh = _tiny()
    before = _values(fresh)
    trainable = [param.requires_grad for param in fresh.get_parameters()]
    with pytest.raises(ValueError, match=r"1 tensors of the file have no parameter.*'no_such_module.weight'"):
        load_delta(fresh, folder)
    _assert_unchanged(fresh, before)
    assert [param.requires_grad for param in fresh.get_parameters()] == trainable
    assert not any(isinstance(cell, LoRADense) for _, cell in fresh.cells_and_names())
    assert not hasattr(fresh, "delta_configs")
    result = load_delta(fresh, folder, strict=False)
    assert result.unexpected == ["no_such_module.weight"] and result.missing == []


def test_missing_delta_parameters_under_strict(tmp_path):
    trained = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj"], lora_rank=4, lora_alpha=8))
    _randomize(trained.trainable_params(), seed=3)
    folder = save_delta(trained, str(tmp_path / "adapter"))
    held = hand_written("lora", Q_PATHS + ["layers.0.attn.v_proj"])
    before = _values(held)
    with pytest.raises(ValueError, match=r"2 delta parameters of the network are not in the file.*v_proj"):
        load_delta(held, folder)
    _assert_unchanged(held, before)
    result = load_delta(held, folder, strict=False)
    assert result.missing == ["layers.0.attn.v_proj.mindpet_delta_lora_a", "layers.0.attn.v_proj.mindpet_delta_lora_b"]
    np.testing.assert_array_equal(held.layers[0].attn.q_proj.mindpet_delta_lora_a.asnumpy(),
                                  trained.layers[0].attn.q_proj.mindpet_delta_lora_a.asnumpy())


def test_methods_applied_in_the_source_need_their_cells(tmp_path):
    trained, _ = _delta_net("prefix")
    folder = save_delta(trained, str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match="prefix is applied in the model source"):
        load_delta(nn.SequentialCell([nn.Dense(8, 3)]), folder)


def test_peft_settings_mindpet_cannot_honour_are_refused_unknown_ones_warned(tmp_path, caplog):
    trained, _ = _delta_net("lora")
    folder = save_delta(trained, str(tmp_path / "adapter"))
    config_path = os.path.join(folder, CONFIG_FILE)
    with open(config_path, encoding="utf-8") as file:
        fields = json.load(file)
    with open(config_path, "w", encoding="utf-8") as file:
        json.dump({**fields, "fan_in_fan_out": True}, file)
    with pytest.raises(ValueError, match="fan_in_fan_out=True"):
        load_delta(_tiny(), folder)
    with open(config_path, "w", encoding="utf-8") as file:
        json.dump({**fields, "future_knob": 3, "kasa_config": None}, file)
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        load_delta(_tiny(), folder)
    warnings = [record.getMessage() for record in caplog.records if "does not know" in record.getMessage()]
    assert len(warnings) == 1 and "'future_knob'" in warnings[0] and "kasa_config" not in warnings[0]
    with open(config_path, "w", encoding="utf-8") as file:
        json.dump({**fields, "peft_type": "VERA"}, file)
    with pytest.raises(ValueError, match="peft_type 'VERA'.*'LORA', 'MINDPET_ADAPTER'"):
        load_delta(_tiny(), folder)


def test_save_refuses_what_it_cannot_save(tmp_path):
    nothing = _tiny()
    for param in nothing.get_parameters():
        param.requires_grad = param.name.endswith("weight")
    with pytest.raises(ValueError, match="no delta cell.*trains no bias"):
        save_delta(nothing, str(tmp_path / "a"))
    both = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj"]))
    get_delta_model(both, AdapterConfig(target_modules=["v_proj"]))
    with pytest.raises(ValueError, match=r"several methods \['adapter', 'lora'\]"):
        save_delta(both, str(tmp_path / "a"))
    trained, _ = _delta_net("adapter")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds files other than an adapter's"):
        save_delta(trained, str(tmp_path / "busy"))
    with pytest.raises(TypeError, match="'directory'"):
        save_delta(trained, 3)
    with pytest.raises(FileNotFoundError, match="has no 'adapter_model.safetensors'"):
        os.makedirs(tmp_path / "half")
        (tmp_path / "half" / CONFIG_FILE).write_text("{}")
        load_delta(_tiny(), str(tmp_path / "half"))


def test_a_failed_save_leaves_the_old_directory(tmp_path, monkeypatch):
    trained, _ = _delta_net("adapter")
    folder = save_delta(trained, str(tmp_path / "adapter"))
    old = {name: (tmp_path / "adapter" / name).read_bytes() for name in os.listdir(folder)}

    def fail_midway(path, tensors, metadata=None, bfloat16_names=()):
        with open(path, "wb") as file:
            file.write(b"\x10\x00")
        raise OSError("disk full")

    monkeypatch.setattr(adapter_dir, "write_safetensors", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_delta(trained, folder)
    with pytest.raises(OSError, match="disk full"):
        save_delta(trained, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["adapter"]
    assert {name: (tmp_path / "adapter" / name).read_bytes() for name in os.listdir(folder)} == old


KILLED_SAVE = """
import os, sys, time
sys.path.insert(0, {tests!r})
from mindpet import LoraConfig, get_delta_model, save_delta
from mindpet.checkpoint import adapter_dir
from injection_models import TinyNet

def write_then_hang(path, tensors, metadata=None, bfloat16_names=()):
    with open(path, "wb") as file:
        file.write(b"partial")
    print("writing", flush=True)
    time.sleep(60)

adapter_dir.write_safetensors = write_then_hang
save_delta(get_delta_model(TinyNet(), LoraConfig(target_modules=["q_proj"])), {folder!r})
"""


def test_a_save_killed_midway_leaves_no_directory(tmp_path):
    folder = str(tmp_path / "adapter")
    script = KILLED_SAVE.format(tests=os.path.join(ROOT, "tests"), folder=folder)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout.readline().strip() == b"writing"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not os.path.exists(folder)
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(STAGING_PREFIX)]
    assert leftovers and sorted(os.path.basename(p) for p in remove_stale_staging_dirs(str(tmp_path))) == leftovers
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_delta(_tiny(), folder)


def test_trainable_params_checkpoint_writes_the_adapter_directory(tmp_path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = get_delta_model(_tiny(), LoraConfig(target_modules=["q_proj"], lora_rank=2, lora_alpha=4))
        rng = np.random.default_rng(0)
        data = {"x": rng.normal(size=(8, 5, 16)).astype(np.float32), "y": rng.integers(0, 3, (8,)).astype(np.int32)}
        dataset = ds.NumpySlicesDataset(data, shuffle=False).batch(4)
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        model = ms.train.Model(net, loss, nn.Adam(net.trainable_params(), 0.05))
        callback = TrainableParamsCheckPoint(prefix="delta", directory=str(tmp_path), save_adapter=True,
                                             config=ms.train.CheckpointConfig(save_checkpoint_steps=1))
        model.train(1, dataset, callbacks=[callback], dataset_sink_mode=False)
        assert sorted(os.listdir(tmp_path)) == ["delta-1_1.ckpt", "delta-1_2.ckpt", "delta_adapter"]
        assert np.abs(net.layers[0].attn.q_proj.mindpet_delta_lora_b.asnumpy()).max() > 0
        fresh = _tiny()
        load_delta(fresh, str(tmp_path / "delta_adapter"))
        x = _input("lora")
        np.testing.assert_allclose(fresh(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-5)
        with pytest.raises(TypeError, match="save_adapter"):
            TrainableParamsCheckPoint(directory=str(tmp_path), save_adapter="yes")
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_float16_delta_round_trip(tmp_path):
    ms.set_seed(0)
    trained = get_delta_model(nn.SequentialCell([nn.Dense(8, 6, dtype=ms.float16)]),
                              LoraConfig(target_modules=["0"], lora_rank=2, lora_alpha=4))
    _randomize(trained.trainable_params(), seed=4)
    folder = save_delta(trained, str(tmp_path / "adapter"))
    tensors, _ = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    assert {value.dtype for value in tensors.values()} == {np.dtype(np.float16)}
    ms.set_seed(0)
    fresh = nn.SequentialCell([nn.Dense(8, 6, dtype=ms.float16)])
    load_delta(fresh, folder)
    assert fresh[0].mindpet_delta_lora_b.dtype == ms.float16
    x = ms.Tensor(np.ones((2, 8)), ms.float16)
    np.testing.assert_array_equal(fresh(x).asnumpy(), trained(x).asnumpy())


def test_safetensors_file_bfloat16_and_truncation(tmp_path):
    path = str(tmp_path / "t.safetensors")
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    write_safetensors(path, {"a": values, "b": np.arange(6, dtype=np.int32).reshape(2, 3)}, {"k": "v"},
                      bfloat16_names=["a"])
    tensors, metadata = read_safetensors(path)
    assert metadata == {"k": "v"} and tensors["b"].tolist() == [[0, 1, 2], [3, 4, 5]]
    # bfloat16 keeps 8 significant bits: exact for the first three, rounded to nearest for 1e-3.
    np.testing.assert_array_equal(tensors["a"][:3], values[:3])
    assert abs(tensors["a"][3] - 1e-3) <= 1e-3 * 2 ** -8
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(data[:-4])
    with pytest.raises(SafetensorsError, match=r"t.safetensors' is not a valid safetensors file.*truncated"):
        read_safetensors(path)


def test_cells_written_in_the_source_save_without_a_config(tmp_path, caplog):
    # LoRA's file records rank and alpha read from the cells, so it injects into a base like an injected delta.
    held = hand_written("lora", Q_PATHS)
    _randomize([p for p in held.get_parameters() if "mindpet_delta" in p.name], seed=6)
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        save_delta(held, str(tmp_path / "unfrozen"))
    assert "30 trained parameters outside the lora delta are saved with it" in caplog.text
    freeze_delta(held, "lora")
    folder = save_delta(held, str(tmp_path / "lora"))
    fresh = _tiny()
    held_values = {param.name: param for param in held.get_parameters()}
    for param in fresh.get_parameters():
        param.set_data(held_values[param.name].data)  # the same pretrained base
    load_delta(fresh, folder)
    assert (fresh.layers[1].attn.q_proj.lora_rank, fresh.layers[1].attn.q_proj.lora_alpha) == (4, 8)
    x = _input("lora")
    np.testing.assert_allclose(fresh(x).asnumpy(), held(x).asnumpy(), rtol=1e-5, atol=1e-5)
    # An adapter's hyperparameters are not all in its cells: without a config it loads only where the cells are.
    held = hand_written("adapter", ["layers.0.mlp.1"])
    freeze_delta(held, "adapter")
    folder = save_delta(held, str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match="lacks the field 'bottleneck_size': it records no config"):
        load_delta(_tiny(), folder)
    assert load_delta(hand_written("adapter", ["layers.0.mlp.1"]), folder).missing == []
