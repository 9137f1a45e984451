"""Tests for TrainableParamsCheckPoint and load_delta_checkpoint."""
import logging
import os
import subprocess
import sys
import time

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops
from mindspore.train import Callback, CheckpointConfig, Model, ModelCheckpoint

from mindpet.checkpoint.atomic import STAGING_PREFIX, make_staging_dir
from mindpet.graph import TrainableParamsCheckPoint, load_delta_checkpoint

IN_FEATURES, HIDDEN, OUT_CLASSES, RANK = 6, 8, 3, 2
BATCH = 4
TRAINED_NAMES = {"mindpet_delta_lora_a", "mindpet_delta_lora_b", "head.weight", "head.bias"}
ENC_KEY = b"0123456789abcdef"
PROBE_INPUT = Tensor(np.random.RandomState(7).rand(5, IN_FEATURES).astype(np.float32))


class DeltaNet(nn.Cell):
    """A frozen Dense base with a low-rank delta added to its output, followed by a trainable head."""

    def __init__(self):
        super().__init__()
        self.base = nn.Dense(IN_FEATURES, HIDDEN)
        self.mindpet_delta_lora_a = Parameter(Tensor(np.random.randn(RANK, IN_FEATURES).astype(np.float32) * 0.1))
        # Nonzero B, so the delta changes the output from the first step on.
        self.mindpet_delta_lora_b = Parameter(Tensor(np.random.randn(HIDDEN, RANK).astype(np.float32) * 0.1))
        self.head = nn.Dense(HIDDEN, OUT_CLASSES)
        self.matmul_transposed = ops.MatMul(transpose_b=True)

    def construct(self, x):
        low_rank = self.matmul_transposed(x, self.mindpet_delta_lora_a)
        hidden = self.base(x) + self.matmul_transposed(low_rank, self.mindpet_delta_lora_b)
        return self.head(hidden)


def frozen_delta_net():
    net = DeltaNet()
    for param in net.base.get_parameters():
        param.requires_grad = False
    return net


def make_dataset(batches):
    rng = np.random.RandomState(1)
    data = {"x": rng.rand(batches * BATCH, IN_FEATURES).astype(np.float32),
            "y": rng.randint(0, OUT_CLASSES, (batches * BATCH,)).astype(np.int32)}
    return ds.NumpySlicesDataset(data, shuffle=False).batch(BATCH)


def make_loss():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def train(net, callbacks, batches=4, epochs=1, sink=False):
    model = Model(net, make_loss(), nn.Adam(net.trainable_params(), learning_rate=0.05))
    model.train(epochs, make_dataset(batches), callbacks=callbacks, dataset_sink_mode=sink)


def delta_callback(directory, prefix="delta", **config_kwargs):
    return TrainableParamsCheckPoint(prefix=prefix, directory=str(directory),
                                     config=CheckpointConfig(**config_kwargs))


def current_values(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters()}


def params_by_name(net):
    return {param.name: param for param in net.get_parameters()}


def assert_values_equal(loaded, expected, names):
    for name in names:
        assert np.array_equal(loaded[name].asnumpy(), expected[name]), name


def assert_round_trip(base_file, delta_file, expected_output, **load_kwargs):
    """A fresh net given the base weights and then the delta reproduces the trained output exactly."""
    fresh = frozen_delta_net()
    ms.load_param_into_net(fresh, ms.load_checkpoint(base_file), strict_load=True)
    # Base weights alone are not the trained network: the delta has to carry the difference.
    assert not np.array_equal(fresh(PROBE_INPUT).asnumpy(), expected_output)
    result = load_delta_checkpoint(fresh, str(delta_file), **load_kwargs)
    assert result.missing == [] and result.unexpected == []
    assert np.array_equal(fresh(PROBE_INPUT).asnumpy(), expected_output)


@pytest.mark.parametrize("sink", [False, True], ids=["no_sink", "sink"])
def test_delta_holds_only_trained_parameters(mode, sink, tmp_path):
    """
    Feature: TrainableParamsCheckPoint next to ModelCheckpoint in one Model.train, GRAPH and PYNATIVE, sink or not.
    Description: Save every 2 of 4 steps with both callbacks.
    Expectation: The delta holds exactly the trained names, no optimizer state, and the same values as the full
        checkpoint and the trained network; no graph file is written.
        On the CPU build Model accepts dataset_sink_mode=True but trains without sinking (it logs this at INFO).
    """
    net = frozen_delta_net()
    initial = current_values(net)
    full_cb = ModelCheckpoint(prefix="full", directory=str(tmp_path / "full"),
                              config=CheckpointConfig(save_checkpoint_steps=2))
    delta_cb = delta_callback(tmp_path / "delta", save_checkpoint_steps=2)
    # A plain Callback, written against MindSpore's public API only.
    assert isinstance(delta_cb, Callback) and not isinstance(delta_cb, ModelCheckpoint)
    train(net, [full_cb, delta_cb], sink=sink)

    assert sorted(os.listdir(tmp_path / "delta")) == ["delta-1_2.ckpt", "delta-1_4.ckpt"]
    assert delta_cb.latest_ckpt_file_name == str(tmp_path / "delta" / "delta-1_4.ckpt")
    delta = ms.load_checkpoint(delta_cb.latest_ckpt_file_name)
    full = ms.load_checkpoint(full_cb.latest_ckpt_file_name)
    assert set(delta) == TRAINED_NAMES
    assert any(name.startswith("moment1.") for name in full) and "global_step" in full
    trained = current_values(net)
    assert not np.array_equal(trained["head.weight"], initial["head.weight"])
    assert_values_equal(delta, {name: full[name].asnumpy() for name in TRAINED_NAMES}, TRAINED_NAMES)
    assert_values_equal(delta, trained, TRAINED_NAMES)


def test_round_trip_reproduces_outputs(mode, tmp_path):
    """
    Feature: load_delta_checkpoint after training, GRAPH and PYNATIVE.
    Description: Load the untrained base weights, then the delta, into a freshly initialised network.
    Expectation: Its output equals the trained network's output exactly.
    """
    net = frozen_delta_net()
    base_file = str(tmp_path / "base.ckpt")
    ms.save_checkpoint(net, base_file)
    delta_cb = delta_callback(tmp_path / "delta", save_checkpoint_steps=4)
    train(net, [delta_cb])
    assert_round_trip(base_file, delta_cb.latest_ckpt_file_name, net(PROBE_INPUT).asnumpy())


def test_model_fit_accepts_the_callback(graph_mode, tmp_path):
    """
    Feature: TrainableParamsCheckPoint in Model.fit.
    Description: Model.fit refuses user callbacks that define old-style hooks such as ``end``.
    Expectation: fit runs, and the delta it saves at the end of training round-trips.
    """
    net = frozen_delta_net()
    base_file = str(tmp_path / "base.ckpt")
    ms.save_checkpoint(net, base_file)
    delta_cb = delta_callback(tmp_path / "delta", save_checkpoint_steps=1000)
    model = Model(net, make_loss(), nn.Adam(net.trainable_params(), learning_rate=0.05))
    model.fit(1, make_dataset(4), callbacks=[delta_cb])
    assert delta_cb.latest_ckpt_file_name.endswith("delta-1_4.ckpt")
    assert_round_trip(base_file, delta_cb.latest_ckpt_file_name, net(PROBE_INPUT).asnumpy())


def test_user_train_cell_and_saved_network(graph_mode, tmp_path):
    """
    Feature: The network a delta is read from.
    Description: Model gets a ready TrainOneStepCell (its optimizer state is inside the network); one callback
        reads the callback's network, one reads CheckpointConfig.saved_network.
    Expectation: Both files hold exactly the trained names and the trained values.
    """
    net = frozen_delta_net()
    train_cell = nn.TrainOneStepCell(nn.WithLossCell(net, make_loss()),
                                     nn.Adam(net.trainable_params(), learning_rate=0.05))
    from_model = delta_callback(tmp_path / "model", save_checkpoint_steps=4)
    from_config = delta_callback(tmp_path / "config", save_checkpoint_steps=4, saved_network=net)
    Model(train_cell).train(1, make_dataset(4), callbacks=[from_model, from_config], dataset_sink_mode=False)

    trained = current_values(net)
    for callback in (from_model, from_config):
        delta = ms.load_checkpoint(callback.latest_ckpt_file_name)
        assert set(delta) == TRAINED_NAMES
        assert_values_equal(delta, trained, TRAINED_NAMES)


def test_safetensors_round_trip(graph_mode, tmp_path):
    """
    Feature: format='safetensors'.
    Description: Save a safetensors delta, then load it with load_delta_checkpoint.
    Expectation: The file is '<prefix>-<epoch>_<step>.safetensors' and the round trip is exact.
    """
    net = frozen_delta_net()
    base_file = str(tmp_path / "base.ckpt")
    ms.save_checkpoint(net, base_file)
    delta_cb = delta_callback(tmp_path / "delta", save_checkpoint_steps=4, format="safetensors")
    train(net, [delta_cb])
    assert os.listdir(tmp_path / "delta") == ["delta-1_4.safetensors"]
    assert_round_trip(base_file, delta_cb.latest_ckpt_file_name, net(PROBE_INPUT).asnumpy())


def test_encrypted_round_trip(graph_mode, tmp_path):
    """
    Feature: enc_key and enc_mode.
    Description: Save an AES-CBC encrypted delta; load it without and with the key.
    Expectation: Without the key loading fails; with it the round trip is exact.
    """
    net = frozen_delta_net()
    base_file = str(tmp_path / "base.ckpt")
    ms.save_checkpoint(net, base_file)
    delta_cb = delta_callback(tmp_path / "delta", save_checkpoint_steps=4, enc_key=ENC_KEY, enc_mode="AES-CBC")
    train(net, [delta_cb])
    with pytest.raises(ValueError):
        load_delta_checkpoint(frozen_delta_net(), delta_cb.latest_ckpt_file_name)
    assert_round_trip(base_file, delta_cb.latest_ckpt_file_name, net(PROBE_INPUT).asnumpy(),
                      dec_key=ENC_KEY, dec_mode="AES-CBC")


class _EncryptedSafetensorsConfig(CheckpointConfig):
    """A config whose enc_key bypasses CheckpointConfig's own safetensors check."""

    @property
    def enc_key(self):
        return ENC_KEY


def test_safetensors_with_encryption_is_refused(tmp_path):
    """
    Feature: Encryption is not available for safetensors.
    Description: Ask for an encrypted safetensors delta, through CheckpointConfig and past its own check.
    Expectation: ValueError at construction; the callback's message names 'enc_key' and does not show the key.
    """
    with pytest.raises(ValueError, match="safetensors"):
        CheckpointConfig(format="safetensors", enc_key=ENC_KEY)
    with pytest.raises(ValueError, match="'enc_key'") as error:
        TrainableParamsCheckPoint(directory=str(tmp_path), config=_EncryptedSafetensorsConfig(format="safetensors"))
    assert ENC_KEY.decode() not in str(error.value)


@pytest.mark.parametrize("config_kwargs, argument", [
    ({"format": "h5"}, "format"),
    ({"remove_redundancy": True}, "remove_redundancy"),
    ({"incremental": True}, "incremental"),
])
def test_unsupported_config_is_refused(config_kwargs, argument, tmp_path):
    """
    Feature: Constructor checks.
    Description: Pass configs this callback cannot honour.
    Expectation: ValueError naming the argument.
    """
    with pytest.raises(ValueError, match=f"'{argument}'"):
        TrainableParamsCheckPoint(directory=str(tmp_path), config=CheckpointConfig(**config_kwargs))


def test_keep_checkpoint_max_keeps_newest(graph_mode, tmp_path):
    """
    Feature: keep_checkpoint_max and file naming.
    Description: Save every step for 2 epochs of 3 steps with keep_checkpoint_max=2.
    Expectation: Only the two newest files remain, named '<prefix>-<epoch>_<step-in-epoch>.ckpt'.
    """
    net = frozen_delta_net()
    delta_cb = delta_callback(tmp_path, save_checkpoint_steps=1, keep_checkpoint_max=2)
    train(net, [delta_cb], batches=3, epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["delta-2_2.ckpt", "delta-2_3.ckpt"]
    assert_values_equal(ms.load_checkpoint(str(tmp_path / "delta-2_3.ckpt")), current_values(net), TRAINED_NAMES)


def test_keep_checkpoint_per_n_minutes_thins_recent_files(graph_mode, tmp_path):
    """
    Feature: keep_checkpoint_per_n_minutes.
    Description: Save every step of 4 with keep_checkpoint_per_n_minutes=1, all within one minute.
    Expectation: As with ModelCheckpoint, the first file of the minute and the newest file remain.
    """
    net = frozen_delta_net()
    delta_cb = delta_callback(tmp_path, save_checkpoint_steps=1, keep_checkpoint_max=0,
                              keep_checkpoint_per_n_minutes=1)
    train(net, [delta_cb])
    assert sorted(os.listdir(tmp_path)) == ["delta-1_1.ckpt", "delta-1_4.ckpt"]


def test_async_save_writes_each_step_completely(graph_mode, tmp_path):
    """
    Feature: async_save=True.
    Description: Save every step asynchronously next to a synchronous full ModelCheckpoint.
    Expectation: After training every delta file loads and holds the values of its own step.
    """
    net = frozen_delta_net()
    full_cb = ModelCheckpoint(prefix="full", directory=str(tmp_path / "full"),
                              config=CheckpointConfig(save_checkpoint_steps=1, keep_checkpoint_max=10))
    delta_cb = delta_callback(tmp_path / "delta", save_checkpoint_steps=1, keep_checkpoint_max=10, async_save=True)
    train(net, [full_cb, delta_cb])

    assert sorted(os.listdir(tmp_path / "delta")) == [f"delta-1_{step}.ckpt" for step in range(1, 5)]
    for step in range(1, 5):
        delta = ms.load_checkpoint(str(tmp_path / "delta" / f"delta-1_{step}.ckpt"))
        full = ms.load_checkpoint(str(tmp_path / "full" / f"full-1_{step}.ckpt"))
        assert set(delta) == TRAINED_NAMES
        assert_values_equal(delta, {name: full[name].asnumpy() for name in TRAINED_NAMES}, TRAINED_NAMES)


def test_append_info_is_saved_and_reported(graph_mode, tmp_path):
    """
    Feature: append_info.
    Description: Save with append_info=['epoch_num', 'step_num'] and load the delta strictly and leniently.
    Expectation: The file carries the counters; load_delta_checkpoint treats them as metadata, not as unexpected.
    """
    net = frozen_delta_net()
    delta_cb = delta_callback(tmp_path, save_checkpoint_steps=4, append_info=["epoch_num", "step_num"])
    train(net, [delta_cb])
    delta = ms.load_checkpoint(delta_cb.latest_ckpt_file_name)
    assert set(delta) == TRAINED_NAMES | {"epoch_num", "step_num"}
    assert int(delta["epoch_num"].asnumpy()) == 1 and int(delta["step_num"].asnumpy()) == 4
    result = load_delta_checkpoint(net, delta_cb.latest_ckpt_file_name)
    assert result.missing == [] and result.unexpected == []


def test_append_info_starting_counters_match_model_checkpoint(graph_mode, tmp_path):
    """
    Feature: append_info with starting counters (resuming), as ModelCheckpoint counts them.
    Description: append_info=[{'epoch_num': 3, 'step_num': 10, 'lr_tag': 7}] for both callbacks in one run.
    Expectation: The delta's counters and extra value equal the full checkpoint's: 3 + 1 epochs, 10 + 4 steps.
    """
    config = {"save_checkpoint_steps": 4, "append_info": [{"epoch_num": 3, "step_num": 10, "lr_tag": 7}]}
    full_cb = ModelCheckpoint(prefix="full", directory=str(tmp_path / "full"), config=CheckpointConfig(**config))
    delta_cb = delta_callback(tmp_path / "delta", **config)
    train(frozen_delta_net(), [full_cb, delta_cb])
    delta = ms.load_checkpoint(delta_cb.latest_ckpt_file_name)
    full = ms.load_checkpoint(full_cb.latest_ckpt_file_name)
    for key in ("epoch_num", "step_num", "lr_tag"):
        assert int(delta[key].asnumpy()) == int(full[key].asnumpy()), key
    assert int(delta["epoch_num"].asnumpy()) == 4 and int(delta["step_num"].asnumpy()) == 14


def _partial_writer(calls):
    def write_partially(save_obj, ckpt_file_name, *args, **kwargs):
        calls.append(ckpt_file_name)
        with open(ckpt_file_name, "wb") as partial_file:
            partial_file.write(b"half a checkpoint")
        raise OSError("No space left on device")
    return write_partially


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_failed_save_leaves_previous_file_intact(graph_mode, async_save, tmp_path, monkeypatch):
    """
    Feature: Atomic saving.
    Description: A callable prefix makes every save target 'latest.ckpt'. After one good run, the writer is
        replaced by one that writes partial bytes and then fails.
    Expectation: Training raises the error; 'latest.ckpt' keeps its previous bytes and nothing else is left.
    """
    def latest_prefix(cb_params):
        return "latest"

    config = {"save_checkpoint_steps": 2, "async_save": async_save}
    train(frozen_delta_net(), [delta_callback(tmp_path, prefix=latest_prefix, **config)])
    previous_bytes = (tmp_path / "latest.ckpt").read_bytes()
    assert set(ms.load_checkpoint(str(tmp_path / "latest.ckpt"))) == TRAINED_NAMES

    calls = []
    monkeypatch.setattr(ms, "save_checkpoint", _partial_writer(calls))
    with pytest.raises(OSError, match="No space left"):
        train(frozen_delta_net(), [delta_callback(tmp_path, prefix=latest_prefix, **config)])
    assert calls
    assert os.listdir(tmp_path) == ["latest.ckpt"]
    assert (tmp_path / "latest.ckpt").read_bytes() == previous_bytes


def _save_entries(path, values):
    ms.save_checkpoint([{"name": name, "data": Tensor(value)} for name, value in values.items()], str(path))


def test_load_reports_missing_entries(tmp_path, caplog):
    """
    Feature: Missing trained parameters.
    Description: Load a delta that lacks 'head.bias', strictly and leniently.
    Expectation: strict raises ValueError naming it and loads nothing; strict=False warns, returns it as missing
        and loads the rest.
    """
    source = current_values(frozen_delta_net())
    path = tmp_path / "delta.ckpt"
    _save_entries(path, {name: source[name] for name in TRAINED_NAMES - {"head.bias"}})
    net = frozen_delta_net()
    before = current_values(net)

    with pytest.raises(ValueError, match="head.bias"):
        load_delta_checkpoint(net, str(path))
    assert np.array_equal(net.head.weight.asnumpy(), before["head.weight"])

    with caplog.at_level(logging.WARNING, logger="mindpet"):
        result = load_delta_checkpoint(net, str(path), strict=False)
    assert result.missing == ["head.bias"] and result.unexpected == []
    assert "head.bias" in caplog.text
    assert np.array_equal(net.head.weight.asnumpy(), source["head.weight"])
    assert np.array_equal(net.head.bias.asnumpy(), before["head.bias"])


def test_load_reports_unexpected_entries(tmp_path):
    """
    Feature: Entries that are no parameter of the network.
    Description: Load a delta with an extra 'adapter.weight' and a frozen base weight.
    Expectation: strict raises ValueError naming the extra; strict=False reports it and loads the others,
        the frozen base weight included.
    """
    source = current_values(frozen_delta_net())
    extra = np.ones((2, 2), np.float32)
    path = tmp_path / "delta.ckpt"
    _save_entries(path, {**{name: source[name] for name in TRAINED_NAMES | {"base.weight"}}, "adapter.weight": extra})
    net = frozen_delta_net()

    with pytest.raises(ValueError, match="adapter.weight"):
        load_delta_checkpoint(net, str(path))
    result = load_delta_checkpoint(net, str(path), strict=False)
    assert result.missing == [] and result.unexpected == ["adapter.weight"]
    assert_values_equal(params_by_name(net), source, TRAINED_NAMES | {"base.weight"})


@pytest.mark.parametrize("bad_name, bad_value, attribute", [
    ("head.weight", np.zeros((OUT_CLASSES + 1, HIDDEN), np.float32), "shape"),
    ("head.bias", np.zeros((OUT_CLASSES,), np.float16), "dtype"),
])
@pytest.mark.parametrize("strict", [True, False])
def test_load_rejects_incompatible_entries(bad_name, bad_value, attribute, strict, tmp_path):
    """
    Feature: Shape and dtype checks.
    Description: Load a delta in which one entry has the wrong shape or dtype.
    Expectation: ValueError naming the key and the attribute, strict or not; no entry is loaded.
    """
    values = current_values(frozen_delta_net())
    values = {name: values[name] for name in TRAINED_NAMES}
    values[bad_name] = bad_value
    path = tmp_path / "delta.ckpt"
    _save_entries(path, values)
    net = frozen_delta_net()
    before = current_values(net)

    with pytest.raises(ValueError, match=f"'{bad_name}' has {attribute}"):
        load_delta_checkpoint(net, str(path), strict=strict)
    assert_values_equal(params_by_name(net), before, TRAINED_NAMES)


def test_load_argument_errors(tmp_path):
    """
    Feature: load_delta_checkpoint argument checks.
    Description: Pass a missing file, an unknown extension and a non-Cell network.
    Expectation: FileNotFoundError, ValueError and TypeError.
    """
    net = frozen_delta_net()
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_delta_checkpoint(net, str(tmp_path / "missing.ckpt"))
    other = tmp_path / "delta.pt"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="'ckpt_file_name'"):
        load_delta_checkpoint(net, str(other))
    with pytest.raises(TypeError, match="'net'"):
        load_delta_checkpoint({"head.weight": 1}, str(other))


@pytest.mark.parametrize("directory, error, match", [
    (5, TypeError, "'directory' must be a str, os.PathLike, callable or None, but got 5"),
    ("file", ValueError, "'directory' must be a folder, not an existing file"),
])
def test_bad_directory_is_refused(directory, error, match, tmp_path):
    """
    Feature: directory check.
    Description: Pass an int, and the path of an existing file.
    Expectation: Our error naming 'directory'.
    """
    if directory == "file":
        directory = str(tmp_path / "a_file")
        open(directory, "w", encoding="utf-8").close()
    with pytest.raises(error, match=match):
        TrainableParamsCheckPoint(directory=directory)


def test_bad_enc_mode_is_refused_without_the_key(tmp_path):
    """
    Feature: enc_mode check.
    Description: A CheckpointConfig with a key and an unknown mode (CheckpointConfig accepts any str).
    Expectation: ValueError naming 'enc_mode' at construction, not at the first save; the key is not shown.
    """
    with pytest.raises(ValueError, match="'enc_mode' must be one of") as info:
        delta_callback(tmp_path, enc_key=ENC_KEY, enc_mode="AES-XTS")
    assert ENC_KEY.decode() not in str(info.value)


def test_nothing_trainable_is_refused(graph_mode, tmp_path):
    """
    Feature: No empty delta files.
    Description: Build the optimizer, then freeze every parameter, then train with the callback.
    Expectation: ValueError naming the network, before the first step; no file is written.
    """
    net = frozen_delta_net()
    model = Model(net, make_loss(), nn.Adam(net.trainable_params(), learning_rate=0.05))
    for param in net.get_parameters():
        param.requires_grad = False
    with pytest.raises(ValueError, match="the network 'DeltaNet' has no trainable parameters"):
        model.train(1, make_dataset(4), callbacks=[delta_callback(tmp_path, save_checkpoint_steps=1)],
                    dataset_sink_mode=False)
    assert os.listdir(tmp_path) == []


def test_earlier_run_gets_a_new_prefix(graph_mode, tmp_path):
    """
    Feature: Files of an earlier run are kept, as with ModelCheckpoint.
    Description: Train twice into one folder with the same prefix.
    Expectation: The second run writes 'delta_1-...' and the first run's file stays.
    """
    train(frozen_delta_net(), [delta_callback(tmp_path, save_checkpoint_steps=4)])
    second = delta_callback(tmp_path, save_checkpoint_steps=4)
    train(frozen_delta_net(), [second])
    assert sorted(os.listdir(tmp_path)) == ["delta-1_4.ckpt", "delta_1-1_4.ckpt"]
    assert second.latest_ckpt_file_name.endswith("delta_1-1_4.ckpt")


class _FailAtStep(ms.train.Callback):
    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num == 3:
            raise RuntimeError("the machine caught fire")


def test_exception_save_writes_the_delta(graph_mode, tmp_path):
    """
    Feature: CheckpointConfig(exception_save=True).
    Description: Training raises at step 3.
    Expectation: The error propagates, and '<prefix>-1_3_breakpoint.ckpt' holds the trained parameters of step 3.
    """
    net = frozen_delta_net()
    delta_cb = delta_callback(tmp_path, save_checkpoint_steps=100, exception_save=True)
    with pytest.raises(RuntimeError, match="caught fire"):
        train(net, [delta_cb, _FailAtStep()])
    assert os.listdir(tmp_path) == ["delta-1_3_breakpoint.ckpt"]
    assert_values_equal(ms.load_checkpoint(str(tmp_path / "delta-1_3_breakpoint.ckpt")), current_values(net),
                        TRAINED_NAMES)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_training_error_wins_over_a_failing_breakpoint_save(graph_mode, async_save, tmp_path, monkeypatch, caplog):
    """
    Feature: exception_save when the disk fails too.
    Description: Every write fails with OSError; training raises at step 3; exception_save is on. With async_save,
        the save of step 2 is still failing in the background then.
    Expectation: The training error propagates, not the OSError; the failed breakpoint (and, with async_save, the
        failed background write) is logged as an error; no file is left.
    """
    monkeypatch.setattr(ms, "save_checkpoint", _partial_writer([]))
    delta_cb = delta_callback(tmp_path, save_checkpoint_steps=2 if async_save else 100, exception_save=True,
                              async_save=async_save)
    with caplog.at_level(logging.ERROR, logger="mindpet"), pytest.raises(RuntimeError, match="caught fire"):
        train(frozen_delta_net(), [delta_cb, _FailAtStep()])
    assert "the exception_save checkpoint could not be written: No space left" in caplog.text
    assert ("a background checkpoint write failed too" in caplog.text) == async_save
    assert os.listdir(tmp_path) == []


# Writes a delta through the atomic writer, whose MindSpore save hangs after half a file, so it can be killed there.
_KILLED_SAVER = """
import sys, time
import numpy as np
import mindspore as ms
from mindspore.train import CheckpointConfig
from mindpet.checkpoint.atomic import save_atomically

def write_half_then_hang(save_obj, path, *args, **kwargs):
    with open(path, "wb") as partial:
        partial.write(b"half a checkpoint")
    print("writing", flush=True)
    time.sleep(600)

ms.save_checkpoint = write_half_then_hang
save_atomically([{"name": "head.bias", "data": ms.Tensor(np.ones(3, np.float32))}], None, sys.argv[1],
                CheckpointConfig())
"""


def test_staging_folder_of_a_killed_save_is_removed_at_the_next_start(graph_mode, tmp_path):
    """
    Feature: Leftovers of a killed save.
    Description: A real process is killed (SIGKILL) while it writes a delta into the folder; then a new run starts
        there.
    Expectation: The kill leaves a '.mindpet_staging_<pid>_*' folder with the half-written file; the next
        TrainableParamsCheckPoint removes it when training begins (its process is gone), so only the new run's
        file remains.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    saver = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(tmp_path / "delta-1_4.ckpt")], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline() == "writing\n"
    finally:
        saver.kill()
        saver.wait()
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(f"{STAGING_PREFIX}{saver.pid}_")
    assert os.listdir(tmp_path / leftovers[0]) == ["delta-1_4.ckpt"]

    train(frozen_delta_net(), [delta_callback(tmp_path, save_checkpoint_steps=4)])
    assert os.listdir(tmp_path) == ["delta-1_4.ckpt"]


def test_only_stale_staging_folders_are_removed(graph_mode, tmp_path):
    """
    Feature: Which staging folders are stale.
    Description: Before training, the folder holds a staging folder of this (running) process, one of another host
        untouched for an hour, and one of another host written just now.
    Expectation: Only the hour-old one is removed: a running save, and a recent one that cannot be checked, stay.
    """
    own = make_staging_dir(str(tmp_path))
    old_remote = tmp_path / f"{STAGING_PREFIX}123_ffffffff_old"
    recent_remote = tmp_path / f"{STAGING_PREFIX}123_ffffffff_recent"
    for folder in (old_remote, recent_remote):
        folder.mkdir()
        (folder / "delta-1_4.ckpt").write_bytes(b"half")
    hour_ago = time.time() - 3600
    for path in (old_remote / "delta-1_4.ckpt", old_remote):
        os.utime(path, (hour_ago, hour_ago))
    train(frozen_delta_net(), [delta_callback(tmp_path, save_checkpoint_steps=4)])
    assert sorted(os.listdir(tmp_path)) == sorted(["delta-1_4.ckpt", os.path.basename(own), recent_remote.name])
