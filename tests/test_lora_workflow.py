"""The whole LoRA workflow: swap nn.Dense for LoRADense, freeze_delta, Model.train with both checkpoint
callbacks, then reload the delta into a fresh network."""
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, Model, ModelCheckpoint

from mindpet.delta import LoRADense
from mindpet.graph import TrainableParamsCheckPoint, freeze_delta, load_delta_checkpoint
from toy_models import IN, Regressor

RANK = 4
SAMPLES, BATCH, EPOCHS = 256, 32, 12


def lora_regressor():
    return Regressor(LoRADense, lora_rank=RANK, lora_alpha=2 * RANK, compute_dtype=ms.float32)


def values(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A pretrained base checkpoint and a downstream task: the base with a low-rank change to its encoder."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    folder = tmp_path_factory.mktemp("task")
    base = Regressor()
    base_ckpt = str(folder / "base.ckpt")
    ms.save_checkpoint(base, base_ckpt)

    teacher = Regressor()
    ms.load_param_into_net(teacher, ms.load_checkpoint(base_ckpt))
    rng = np.random.default_rng(0)
    for layer in teacher.encoder:
        out_dim, in_dim = layer.weight.shape
        change = rng.standard_normal((out_dim, 2)) @ rng.standard_normal((2, in_dim)) * 0.3
        layer.weight.set_data(Tensor(layer.weight.asnumpy() + change.astype(np.float32)))
    x = rng.standard_normal((SAMPLES, IN)).astype(np.float32)
    y = teacher(Tensor(x)).asnumpy()
    return {"base_ckpt": base_ckpt, "x": x, "y": y, "folder": folder}


def mse(net, task):
    net.set_train(False)
    return float(np.mean((net(Tensor(task["x"])).asnumpy() - task["y"]) ** 2))


@pytest.fixture(scope="module")
def trained(task):
    """Train LoRA with TrainableParamsCheckPoint and ModelCheckpoint side by side in one Model.train (GRAPH)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = lora_regressor()
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(task["base_ckpt"]))
    assert all("lora" in name for name in not_loaded)
    trainable = freeze_delta(net, mode="lora")
    before = values(net)
    start_loss = mse(net, task)

    config = CheckpointConfig(save_checkpoint_steps=SAMPLES // BATCH, keep_checkpoint_max=1)
    delta_cb = TrainableParamsCheckPoint(prefix="delta", directory=str(task["folder"] / "delta"), config=config)
    full_cb = ModelCheckpoint(prefix="full", directory=str(task["folder"] / "full"), config=config)
    dataset = NumpySlicesDataset({"x": task["x"], "y": task["y"]}, shuffle=True).batch(BATCH)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=2e-2)
    model = Model(net, loss_fn=nn.MSELoss(), optimizer=optimizer)
    model.train(EPOCHS, dataset, callbacks=[delta_cb, full_cb], dataset_sink_mode=False)
    return {"net": net, "trainable": trainable, "before": before, "after": values(net),
            "start_loss": start_loss, "end_loss": mse(net, task),
            "delta_file": delta_cb.latest_ckpt_file_name, "full_file": full_cb.latest_ckpt_file_name}


def test_freeze_delta_leaves_exactly_the_lora_matrices(trained):
    expected = sorted(f"encoder.{i}.mindpet_delta_lora_{m}" for i in range(2) for m in "ab")
    assert trained["trainable"] == expected


def test_loss_falls_below_a_quarter(trained):
    assert trained["end_loss"] < 0.25 * trained["start_loss"], (trained["start_loss"], trained["end_loss"])


def test_frozen_parameters_stay_bit_identical(trained):
    for name, before in trained["before"].items():
        after = trained["after"][name]
        if name in trained["trainable"]:
            assert not np.array_equal(before, after), f"{name} did not train"
        else:
            assert np.array_equal(before, after), f"frozen {name} changed"


def test_delta_file_holds_exactly_the_lora_parameters(trained):
    delta = ms.load_checkpoint(trained["delta_file"])
    assert sorted(delta) == trained["trainable"]
    full = ms.load_checkpoint(trained["full_file"])
    for name, value in delta.items():
        assert np.array_equal(value.asnumpy(), full[name].asnumpy())
        assert np.array_equal(value.asnumpy(), trained["after"][name])
    # The point of a delta checkpoint: it is a small fraction of the full one.
    assert os.path.getsize(trained["delta_file"]) < 0.5 * os.path.getsize(trained["full_file"])


def test_delta_reload_into_fresh_network_reproduces_outputs(trained, task, mode):
    fresh = lora_regressor()
    ms.load_param_into_net(fresh, ms.load_checkpoint(task["base_ckpt"]))
    freeze_delta(fresh, mode="lora")
    report = load_delta_checkpoint(fresh, trained["delta_file"])
    assert not report.missing and not report.unexpected
    x = Tensor(task["x"][:16])
    trained["net"].set_train(False)
    fresh.set_train(False)
    assert np.array_equal(fresh(x).asnumpy(), trained["net"](x).asnumpy())


def test_merged_trained_network_matches_and_unmerges(trained, task):
    net = trained["net"]
    net.set_train(False)
    x = Tensor(task["x"][:16])
    before = net(x).asnumpy()
    for layer in net.encoder:
        layer.merge()
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
    for layer in net.encoder:
        layer.unmerge()
    for name, value in trained["after"].items():
        np.testing.assert_allclose(values(net)[name], value, rtol=1e-6, atol=1e-6)


def test_loading_a_delta_into_a_merged_network_is_refused(trained, task):
    fresh = lora_regressor()
    ms.load_param_into_net(fresh, ms.load_checkpoint(task["base_ckpt"]))
    freeze_delta(fresh, mode="lora")
    fresh.encoder[1].merge()
    with pytest.raises(ValueError, match=r"\['encoder.1'\] are merged; call unmerge\(\)"):
        load_delta_checkpoint(fresh, trained["delta_file"])
    fresh.encoder[1].unmerge()
    assert load_delta_checkpoint(fresh, trained["delta_file"]).missing == []
