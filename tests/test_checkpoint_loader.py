"""load_delta_checkpoint's input checks (keys, modes, empty files) and load_base_checkpoint."""
import logging

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindpet.checkpoint import BaseLoadResult, load_base_checkpoint, load_delta_checkpoint
from mindpet.delta import LoRADense
from mindpet.graph import freeze_delta
from mindpet.graph import load_base_checkpoint as graph_load_base_checkpoint
from toy_models import IN, Regressor

SECRET = "correct horse battery staple"


def lora_regressor():
    return Regressor(LoRADense, lora_rank=2, lora_alpha=4, compute_dtype=ms.float32)


def delta_file(tmp_path, name="delta.ckpt"):
    net = lora_regressor()
    freeze_delta(net, "lora")
    path = str(tmp_path / name)
    ms.save_checkpoint(net.trainable_params(), path, format=name.rsplit(".", 1)[1])
    return path


def log_text(caplog):
    return "\n".join(record.getMessage() for record in caplog.records)


def test_str_dec_key_is_refused_without_showing_it(tmp_path, caplog):
    """
    Feature: dec_key is a secret.
    Description: Pass the key as a str, as a user typing it would.
    Expectation: TypeError naming 'dec_key' and its type; the key text is in no message and no log record.
    """
    net = lora_regressor()
    freeze_delta(net, "lora")
    with caplog.at_level(logging.DEBUG), pytest.raises(TypeError, match="'dec_key' must be bytes or None, but got a "
                                                                        "str") as info:
        load_delta_checkpoint(net, delta_file(tmp_path), dec_key=SECRET)
    assert SECRET not in str(info.value) and SECRET not in log_text(caplog)


@pytest.mark.parametrize("dec_mode, error", [("AES-XTS", ValueError), (3, TypeError)])
def test_bad_dec_mode_is_refused(dec_mode, error, tmp_path):
    """
    Feature: dec_mode check.
    Description: Pass an unknown mode and a non-str.
    Expectation: Our error naming 'dec_mode' and the modes MindSpore supports.
    """
    net = lora_regressor()
    freeze_delta(net, "lora")
    with pytest.raises(error, match=r"'dec_mode' must be one of \('AES-GCM', 'AES-CBC', 'SM4-CBC'\)"):
        load_delta_checkpoint(net, delta_file(tmp_path), dec_key=b"0123456789abcdef", dec_mode=dec_mode)


@pytest.mark.parametrize("extension", ["ckpt", "safetensors"])
def test_zero_byte_file_is_named_empty(extension, tmp_path):
    """
    Feature: Empty delta files.
    Description: Load a 0-byte .ckpt and a 0-byte .safetensors file.
    Expectation: ValueError saying the file is empty (MindSpore's own errors speak of an empty dict or an mmap).
    """
    path = tmp_path / f"delta.{extension}"
    path.write_bytes(b"")
    net = lora_regressor()
    freeze_delta(net, "lora")
    with pytest.raises(ValueError, match=r"delta\.%s' is empty \(0 bytes\): it holds no tensors" % extension):
        load_delta_checkpoint(net, str(path))


def test_safetensors_without_tensors_is_named_empty(tmp_path):
    """
    Feature: A safetensors file whose header lists no tensor.
    Description: Write the smallest valid safetensors file: an 8-byte length and the header '{}'.
    Expectation: ValueError saying the file is empty.
    """
    path = tmp_path / "delta.safetensors"
    path.write_bytes((2).to_bytes(8, "little") + b"{}")
    net = lora_regressor()
    freeze_delta(net, "lora")
    with pytest.raises(ValueError, match="is empty: its header lists no tensors"):
        load_delta_checkpoint(net, str(path))


def test_file_with_only_counters_is_named_empty(tmp_path):
    """
    Feature: A checkpoint holding only append_info counters.
    Description: Save no tensors but epoch_num and step_num.
    Expectation: ValueError saying the file is empty and holds only the counters.
    """
    path = str(tmp_path / "delta.ckpt")
    ms.save_checkpoint([], path, append_dict={"epoch_num": 1, "step_num": 4})
    net = lora_regressor()
    freeze_delta(net, "lora")
    with pytest.raises(ValueError, match=r"is empty: it holds only the training counters \['epoch_num', 'step_num'\]"):
        load_delta_checkpoint(net, path)


def test_long_name_lists_are_bounded(tmp_path):
    """
    Feature: Bounded messages.
    Description: Load a delta of a 40-layer network into a network with no such layers, strictly.
    Expectation: The message lists ten unexpected names and counts the other 70.
    """
    big = nn.SequentialCell([nn.Dense(2, 2) for _ in range(40)])
    path = str(tmp_path / "delta.ckpt")
    ms.save_checkpoint(big, path)
    net = nn.Dense(2, 2)
    net.weight.requires_grad = False
    net.bias.requires_grad = False
    with pytest.raises(ValueError, match="80 entries of the file .* and 70 more") as info:
        load_delta_checkpoint(net, path)
    assert len(str(info.value)) < 1000


@pytest.fixture
def pretrained(tmp_path):
    """A checkpoint of the unmodified model (nn.Dense everywhere), saved as a full ModelCheckpoint would be."""
    base = Regressor()
    path = str(tmp_path / "pretrained.ckpt")
    ms.save_checkpoint(base, path, append_dict={"global_step": 10})
    return base, path


def test_base_checkpoint_loads_without_listing_delta_parameters(pretrained, caplog):
    """
    Feature: load_base_checkpoint.
    Description: Load the pretrained checkpoint into the model with LoRADense cells, from a path and from a dict.
    Expectation: Every base weight is loaded; nothing is missing; the extra entry is reported as unexpected; and no
        warning lists the delta parameters (load_param_into_net warns about all six of them).
    """
    base, path = pretrained
    with caplog.at_level(logging.WARNING):
        ms.load_param_into_net(lora_regressor(), ms.load_checkpoint(path))
    assert "are not loaded" in log_text(caplog) and "mindpet_delta_lora_a" in log_text(caplog)
    caplog.clear()

    for source in (path, ms.load_checkpoint(path), {name: Tensor(value.asnumpy())
                                                     for name, value in ms.load_checkpoint(path).items()}):
        net = lora_regressor()
        with caplog.at_level(logging.WARNING):
            result = load_base_checkpoint(net, source)
        assert result == BaseLoadResult(missing=[], unexpected=["global_step"])
        assert log_text(caplog) == ""
        for name, param in base.parameters_and_names():
            assert np.array_equal(dict(net.parameters_and_names())[name].asnumpy(), param.asnumpy()), name
    x = Tensor(np.random.default_rng(0).standard_normal((3, IN)).astype(np.float32))
    assert np.allclose(net(x).asnumpy(), base(x).asnumpy(), atol=1e-6)


def test_base_checkpoint_reports_real_misses(pretrained, caplog):
    """
    Feature: Real misses.
    Description: Load a checkpoint that lacks 'head.bias', strictly and leniently.
    Expectation: strict raises ValueError naming only 'head.bias' and loads nothing; strict=False warns about it
        alone, returns it as missing and loads the rest.
    """
    base, path = pretrained
    values = {name: value for name, value in ms.load_checkpoint(path).items() if name != "head.bias"}
    net = lora_regressor()
    before = net.head.weight.asnumpy().copy()
    with pytest.raises(ValueError, match=r"1 base parameters of the network are missing from the given dict: "
                                         r"\['head.bias'\]"):
        graph_load_base_checkpoint(net, values)
    assert np.array_equal(net.head.weight.asnumpy(), before)

    with caplog.at_level(logging.WARNING):
        result = load_base_checkpoint(net, values, strict=False)
    assert result.missing == ["head.bias"]
    assert "head.bias" in log_text(caplog) and "mindpet_delta" not in log_text(caplog)
    assert np.array_equal(net.head.weight.asnumpy(), base.head.weight.asnumpy())


def test_base_checkpoint_shape_mismatch_changes_nothing(pretrained):
    """
    Feature: Shape checks before loading.
    Description: A checkpoint whose 'head.weight' has another shape.
    Expectation: ValueError naming it; no parameter changed.
    """
    _, path = pretrained
    values = ms.load_checkpoint(path)
    values["head.weight"] = ms.Parameter(Tensor(np.zeros((5, 5), np.float32)), name="head.weight")
    net = lora_regressor()
    before = net.encoder[0].weight.asnumpy().copy()
    with pytest.raises(ValueError, match="'head.weight' has shape"):
        load_base_checkpoint(net, values)
    assert np.array_equal(net.encoder[0].weight.asnumpy(), before)


@pytest.mark.parametrize("source, error, match", [
    (["a.ckpt"], TypeError, "'ckpt_file_name_or_dict' must be a checkpoint path"),
    ({"w": np.zeros(2)}, TypeError, "'ckpt_file_name_or_dict' must be a checkpoint path"),
    ("missing.ckpt", FileNotFoundError, "missing.ckpt"),
])
def test_base_checkpoint_argument_errors(source, error, match):
    """
    Feature: load_base_checkpoint argument checks.
    Description: A list, a dict of numpy arrays, a missing file.
    Expectation: TypeError or FileNotFoundError naming the argument or file.
    """
    with pytest.raises(error, match=match):
        load_base_checkpoint(lora_regressor(), source)
