"""BitFit, the 'bitfit' mode of freeze_delta: what it trains, a GRAPH-mode Model.train run, and its delta checkpoint."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, Model

from mindpet.delta import AdapterDense
from mindpet.graph import TrainableParamsCheckPoint, freeze_delta, load_delta_checkpoint

IN, HIDDEN, FFN, OUT = 8, 16, 32, 2
SAMPLES, BATCH, EPOCHS = 256, 32, 12
BIAS_NAMES = ["embed.bias", "ffn_in.bias", "ffn_out.bias", "head.bias"]


class TinyEncoder(nn.Cell):
    """A transformer-like block in miniature: projection, LayerNorm, residual feed-forward, task head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Dense(IN, HIDDEN)
        self.layer_norm = nn.LayerNorm((HIDDEN,))
        self.ffn_in = nn.Dense(HIDDEN, FFN, activation="gelu")
        self.ffn_out = nn.Dense(FFN, HIDDEN)
        self.head = nn.Dense(HIDDEN, OUT)
        self.tanh = nn.Tanh()

    def construct(self, x):
        hidden = self.layer_norm(self.embed(x))
        hidden = hidden + self.ffn_out(self.ffn_in(hidden))
        return self.head(self.tanh(hidden))


def values(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters()}


def test_bitfit_trains_exactly_the_bias_terms():
    net = TinyEncoder()
    trainable = freeze_delta(net, "bitfit")
    assert trainable == BIAS_NAMES
    assert sorted(param.name for param in net.trainable_params()) == BIAS_NAMES
    # LayerNorm names its shift 'beta', which '*bias' does not match: the LayerNorm stays frozen.
    assert not net.layer_norm.beta.requires_grad and not net.layer_norm.gamma.requires_grad


def test_bitfit_with_the_head_trainable():
    net = TinyEncoder()
    assert freeze_delta(net, "bitfit", exclude=["*head*"]) == sorted(BIAS_NAMES + ["head.weight"])


def test_bitfit_with_layer_norm_shift_as_in_the_paper():
    net = TinyEncoder()
    assert freeze_delta(net, "bitfit", exclude=["*beta"]) == sorted(BIAS_NAMES + ["layer_norm.beta"])


def test_bitfit_on_a_net_without_bias_raises():
    with pytest.raises(ValueError, match=r"'\*bias'"):
        freeze_delta(nn.Dense(IN, OUT, has_bias=False), "bitfit")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A pretrained base and a downstream task that only the bias terms separate from it."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(2)
    folder = tmp_path_factory.mktemp("bitfit")
    base = TinyEncoder()
    base_ckpt = str(folder / "base.ckpt")
    ms.save_checkpoint(base, base_ckpt)

    teacher = TinyEncoder()
    ms.load_param_into_net(teacher, ms.load_checkpoint(base_ckpt))
    rng = np.random.default_rng(0)
    for param in teacher.get_parameters():
        if param.name in BIAS_NAMES:
            param.set_data(Tensor(param.asnumpy() + rng.normal(0.0, 0.5, param.shape).astype(np.float32)))
    teacher.set_train(False)
    x = rng.standard_normal((SAMPLES, IN)).astype(np.float32)
    y = teacher(Tensor(x)).asnumpy()
    return {"base_ckpt": base_ckpt, "x": x, "y": y, "folder": folder}


def base_network(task):
    net = TinyEncoder()
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(task["base_ckpt"]))
    assert not not_loaded
    return net


def mse(net, task):
    net.set_train(False)
    return float(np.mean((net(Tensor(task["x"])).asnumpy() - task["y"]) ** 2))


@pytest.fixture(scope="module")
def trained(task):
    """BitFit with Model.train in GRAPH mode, saving the delta with TrainableParamsCheckPoint."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = base_network(task)
    trainable = freeze_delta(net, "bitfit")
    trainable_size = sum(param.size for param in net.trainable_params())
    total_size = sum(param.size for param in net.get_parameters())
    before = values(net)
    start_loss = mse(net, task)

    config = CheckpointConfig(save_checkpoint_steps=SAMPLES // BATCH, keep_checkpoint_max=1)
    delta_cb = TrainableParamsCheckPoint(prefix="bitfit", directory=str(task["folder"] / "delta"), config=config)
    dataset = NumpySlicesDataset({"x": task["x"], "y": task["y"]}, shuffle=True).batch(BATCH)
    model = Model(net, loss_fn=nn.MSELoss(), optimizer=nn.Adam(net.trainable_params(), learning_rate=3e-2))
    model.train(EPOCHS, dataset, callbacks=[delta_cb], dataset_sink_mode=False)
    return {"net": net, "trainable": trainable, "before": before, "after": values(net),
            "start_loss": start_loss, "end_loss": mse(net, task), "delta_file": delta_cb.latest_ckpt_file_name,
            "trainable_share": trainable_size / total_size}


def test_bitfit_run_lowers_the_loss(trained):
    # 66 of 1282 parameters (5.1%) train. Measured: the MSE falls from 0.085 to 0.0011 (a ratio of 0.013; 0.004 to
    # 0.021 over four other base and task seeds).
    assert trained["trainable_share"] == pytest.approx(66 / 1282)
    assert trained["end_loss"] < 0.1 * trained["start_loss"], (trained["start_loss"], trained["end_loss"])


def test_only_bias_terms_change(trained):
    for name, before in trained["before"].items():
        after = trained["after"][name]
        if name in trained["trainable"]:
            assert not np.array_equal(before, after), f"{name} did not train"
        else:
            assert np.array_equal(before, after), f"frozen {name} changed"


def test_delta_checkpoint_round_trip(trained, task, mode):
    delta = ms.load_checkpoint(trained["delta_file"])
    assert sorted(delta) == BIAS_NAMES
    fresh = base_network(task)
    freeze_delta(fresh, "bitfit")
    report = load_delta_checkpoint(fresh, trained["delta_file"])
    assert not report.missing and not report.unexpected
    x = Tensor(task["x"][:16])
    trained["net"].set_train(False)
    fresh.set_train(False)
    assert np.array_equal(fresh(x).asnumpy(), trained["net"](x).asnumpy())


class EncoderWithAdapter(nn.Cell):
    def __init__(self):
        super().__init__()
        self.body = AdapterDense(IN, HIDDEN, bottleneck_size=4, compute_dtype=ms.float32)
        self.head = nn.Dense(HIDDEN, OUT)

    def construct(self, x):
        return self.head(self.body(x))


def test_bitfit_alongside_adapter_cells():
    net = EncoderWithAdapter()
    base_biases = ["body.bias", "head.bias"]
    adapter_biases = ["body.mindpet_delta_adapter.down_bias", "body.mindpet_delta_adapter.up_bias"]
    adapter_weights = ["body.mindpet_delta_adapter.down_weight", "body.mindpet_delta_adapter.up_weight"]
    # An adapter's own bias vectors end in 'bias' too, so plain BitFit trains them (but not the adapter weights).
    assert freeze_delta(net, "bitfit") == sorted(base_biases + adapter_biases)
    assert freeze_delta(net, "bitfit", include=["*mindpet_delta_*"]) == base_biases
    # Adapters plus BitFit: the adapter's parameters and every bias term.
    assert freeze_delta(net, "adapter", exclude=["*bias"]) == sorted(base_biases + adapter_biases + adapter_weights)
