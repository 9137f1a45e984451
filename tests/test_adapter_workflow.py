"""Adapters end to end: a frozen base plus each adapter type learns a task in Model.train, the base stays
bit-identical, the delta checkpoint reproduces the outputs, and freeze_delta tells the methods apart."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, Model

from mindpet.delta import AdapterDense, AdapterLayer, LoRADense, LowRankAdapterDense, LowRankAdapterLayer
from mindpet.graph import TrainableParamsCheckPoint, freeze_delta, load_delta_checkpoint
from toy_models import HIDDEN, IN, OUT, Regressor

SAMPLES, BATCH, EPOCHS = 256, 32, 12
ADAPTER_ARGS = dict(bottleneck_size=4, compute_dtype=ms.float32)
LOW_RANK_ARGS = dict(reduction_factor=4, low_rank_size=2, compute_dtype=ms.float32)


class LayerNet(Regressor):
    """The base model with an adapter layer inserted after each hidden layer."""

    def __init__(self, layer_cls, **layer_kwargs):
        super().__init__()
        self.adapters = nn.CellList([layer_cls(HIDDEN, **layer_kwargs) for _ in range(2)])

    def construct(self, x):
        for layer, adapter in zip(self.encoder, self.adapters):
            x = adapter(layer(x))
        return self.head(x)


METHODS = {
    # name: (freeze_delta mode, network factory)
    "adapter_dense": ("adapter", lambda: Regressor(AdapterDense, **ADAPTER_ARGS)),
    "adapter_layer": ("adapter", lambda: LayerNet(AdapterLayer, **ADAPTER_ARGS)),
    "low_rank_dense": ("low_rank_adapter", lambda: Regressor(LowRankAdapterDense, **LOW_RANK_ARGS)),
    "low_rank_layer": ("low_rank_adapter", lambda: LayerNet(LowRankAdapterLayer, **LOW_RANK_ARGS)),
}


def values(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def with_base(net, base_ckpt):
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(base_ckpt))
    assert all("mindpet_delta_" in name for name in not_loaded)
    return net


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    ms.set_seed(1)
    path = str(tmp_path_factory.mktemp("base") / "base.ckpt")
    ms.save_checkpoint(Regressor(), path)
    return path


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, base_checkpoint, tmp_path_factory):
    """Train one adapter type on a task it can represent: the base with other (random) adapter weights."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(2)
    mode, factory = METHODS[request.param]
    rng = np.random.default_rng(0)
    teacher = with_base(factory(), base_checkpoint)
    for param in teacher.get_parameters():
        if "mindpet_delta_" in param.name:
            param.set_data(Tensor(rng.standard_normal(param.shape).astype(np.float32) * 0.5))
    x = rng.standard_normal((SAMPLES, IN)).astype(np.float32)
    y = teacher(Tensor(x)).asnumpy()

    net = with_base(factory(), base_checkpoint)
    trainable = freeze_delta(net, mode)
    before = values(net)
    loss_fn = nn.MSELoss()
    start_loss = float(loss_fn(net(Tensor(x)), Tensor(y)).asnumpy())
    folder = str(tmp_path_factory.mktemp(request.param))
    checkpoint = TrainableParamsCheckPoint(prefix="delta", directory=folder,
                                           config=CheckpointConfig(save_checkpoint_steps=SAMPLES // BATCH))
    dataset = NumpySlicesDataset({"x": x, "y": y}, shuffle=True).batch(BATCH)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=2e-2)
    Model(net, loss_fn, optimizer).train(EPOCHS, dataset, callbacks=[checkpoint])
    end_loss = float(loss_fn(net(Tensor(x)), Tensor(y)).asnumpy())
    return dict(name=request.param, mode=mode, factory=factory, net=net, trainable=trainable, before=before,
                start_loss=start_loss, end_loss=end_loss, x=x, checkpoint=checkpoint.latest_ckpt_file_name)


def test_loss_falls_below_a_quarter(trained):
    assert trained["end_loss"] < 0.25 * trained["start_loss"], (trained["start_loss"], trained["end_loss"])


def test_only_the_delta_trains_and_the_base_stays_bit_identical(trained):
    assert trained["trainable"] and all("mindpet_delta_" in name for name in trained["trainable"])
    after = values(trained["net"])
    for name, before in trained["before"].items():
        if name in trained["trainable"]:
            assert not np.array_equal(after[name], before), f"{name} did not train"
        else:
            assert np.array_equal(after[name], before), f"frozen {name} changed"


def test_delta_checkpoint_round_trip(trained, base_checkpoint):
    saved = ms.load_checkpoint(trained["checkpoint"])
    assert set(saved) == set(trained["trainable"])
    fresh = with_base(trained["factory"](), base_checkpoint)
    freeze_delta(fresh, trained["mode"])
    result = load_delta_checkpoint(fresh, trained["checkpoint"])
    assert not result.missing and not result.unexpected
    x = Tensor(trained["x"][:16])
    assert np.array_equal(fresh(x).asnumpy(), trained["net"](x).asnumpy())


class Mixed(nn.Cell):
    """One cell of every Dense-replacing method plus both adapter layers."""

    def __init__(self):
        super().__init__()
        self.lora = LoRADense(IN, HIDDEN, lora_rank=2, lora_alpha=4)
        self.adapter = AdapterDense(HIDDEN, HIDDEN, bottleneck_size=4)
        self.low_rank = LowRankAdapterDense(HIDDEN, HIDDEN, reduction_factor=4)
        self.adapter_layer = AdapterLayer(HIDDEN, bottleneck_size=4)
        self.low_rank_layer = LowRankAdapterLayer(HIDDEN, reduction_factor=4)
        self.head = nn.Dense(HIDDEN, OUT)

    def construct(self, x):
        x = self.low_rank(self.adapter(self.lora(x)))
        return self.head(self.low_rank_layer(self.adapter_layer(x)))


ADAPTER_PARAMS = ("down_weight", "down_bias", "up_weight", "up_bias")
LOW_RANK_PARAMS = ("down_weight_left", "down_weight_right", "down_bias", "up_weight_left", "up_weight_right",
                   "up_bias")


@pytest.mark.parametrize("mode,expected", [
    ("adapter", {f"{cell}.mindpet_delta_adapter.{name}" for cell in ("adapter", "adapter_layer")
                 for name in ADAPTER_PARAMS}),
    ("low_rank_adapter", {f"{cell}.mindpet_delta_low_rank_adapter.{name}" for cell in ("low_rank", "low_rank_layer")
                          for name in LOW_RANK_PARAMS}),
    ("lora", {"lora.mindpet_delta_lora_a", "lora.mindpet_delta_lora_b"}),
])
def test_freeze_delta_selects_exactly_one_method(mode, expected):
    net = Mixed()
    assert set(freeze_delta(net, mode)) == expected
    assert {p.name for p in net.trainable_params()} == expected
    assert set(freeze_delta(net, mode, exclude=["head.*"])) == expected | {"head.weight", "head.bias"}
