"""AdaLoRA: the cell against NumPy (masked triplets, fp32 and fp16), the config, the importance updated in the
training graph against the paper's formulas, the cubic budget schedule, ``Model.train`` runs in GRAPH mode with and
without dataset sink (final budget, allocation, one compile, loss, frozen base), the guards, adapter files (round
trip, PEFT both ways, ``mindpet merge``) and truncation."""
import json
import logging
import os
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.graph import api as graph_api
from mindspore.train import Callback, Model, RunContext
from mindspore.train.callback import _InternalCallbackParam  # pylint: disable=protected-access

from injection_models import TinyNet
from mindpet import (AdaLoraCallback, AdaLoraConfig, check_shard_strategies, get_delta_model, load_delta,
                     merge_and_unload, plan_delta, quantize_base, save_delta)
from mindpet.checkpoint.adapter_dir import CONFIG_FILE, WEIGHTS_FILE
from mindpet.checkpoint.safetensors_file import read_safetensors, write_safetensors
from mindpet.cli import EXIT_OK, main
from mindpet.delta import AdaLoRADense
from mindpet.delta.adalora import AdaLoraOrthogonalLoss, AdaLoraTrainOneStepCell, adalora_cells, truncate_adalora

PATHS = ["head", "strong", "weak"]
# 8 x 12 samples: 24 steps of 4. The schedule: warm-up to step 4, pruning every 4 steps, final pattern at step 18.
# A small penalty: its gradient is alike in every cell and would hide how the task's gradients differ between them.
SCHEDULE = dict(init_r=4, target_r=2, tinit=4, tfinal=6, deltaT=4, total_step=24, lora_alpha=8, orth_reg_weight=1e-3)


class Branches(nn.Cell):
    """Two parallel layers read out by a head; the ``weak`` branch enters at 1/100 of its size, so its gradients
    (and its importance) are far smaller than the ``strong`` one's."""

    def __init__(self, seed=0):
        super().__init__()
        ms.set_seed(seed)
        self.strong = nn.Dense(8, 8)
        self.weak = nn.Dense(8, 8)
        self.head = nn.Dense(8, 2)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.head(self.relu(self.strong(x)) + 0.01 * self.relu(self.weak(x)))


def _data(count=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(count, 8)).astype(np.float32)
    return x, np.tanh(x[:, :2] * 2 + x[:, 2:4]).astype(np.float32)


def _dataset():
    x, y = _data()
    return NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(4)


def _values(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters()}


def _adalora_net(seed=0, **overrides):
    config = AdaLoraConfig(target_modules=PATHS, **{**SCHEDULE, **overrides})
    return get_delta_model(Branches(seed), config), config


def _train_cell(net, config, optimizer=None):
    allocator = AdaLoraCallback(net, config)
    loss = AdaLoraOrthogonalLoss(nn.WithLossCell(net, nn.MSELoss()), config.orth_reg_weight)
    optimizer = optimizer or nn.Adam(net.trainable_params(), learning_rate=0.02)
    return AdaLoraTrainOneStepCell(loss, optimizer, allocator), allocator


class _Recorder(Callback):
    """After the allocator: the count of nonzero singular values at every callback."""

    def __init__(self, net):
        super().__init__()
        self.cells = [cell for _, cell in adalora_cells(net)]
        self.nonzero = {}

    def on_train_step_end(self, run_context):
        self.nonzero[run_context.original_args().cur_step_num] = sum(
            int(np.count_nonzero(cell.mindpet_delta_adalora_e.asnumpy())) for cell in self.cells)


@pytest.fixture
def compile_counter(monkeypatch):
    """Counts the graphs MindSpore actually compiles (cache hits excluded)."""
    compiled = []
    original = graph_api._CellGraphExecutor.compile  # pylint: disable=protected-access

    def counting(self, obj, *args, **kwargs):
        phase, new = original(self, obj, *args, **kwargs)
        if new:
            compiled.append(type(obj).__name__)
        return phase, new

    monkeypatch.setattr(graph_api._CellGraphExecutor, "compile", counting)  # pylint: disable=protected-access
    return compiled


def _mse(net):
    """The loss over the whole data set, in inference mode."""
    net.set_train(False)
    x, y = _data()
    return float(np.mean((net(ms.Tensor(x)).asnumpy() - y) ** 2))


def _sink_protocol(train_cell, callbacks, sink_size):
    """What ``Model.train(..., dataset_sink_mode=True, sink_size=...)`` does on Ascend and GPU (on CPU MindSpore
    falls back to one callback per step): ``sink_size`` steps in the graph, then one ``on_train_step_end`` with
    ``cur_step_num`` advanced by ``sink_size``."""
    batches = list(_dataset().create_tuple_iterator())
    params = _InternalCallbackParam()
    params.epoch_num, params.batch_num, params.cur_step_num = len(batches) // sink_size, sink_size, 0
    params.dataset_sink_mode, params.sink_size = True, sink_size
    context = RunContext(params)
    train_cell.set_train()
    for callback in callbacks:
        callback.on_train_begin(context)
    for start in range(0, len(batches), sink_size):
        for x, y in batches[start:start + sink_size]:
            params.net_outputs = train_cell(x, y)
        params.cur_step_num += sink_size
        for callback in callbacks:
            callback.on_train_step_end(context)
    for callback in callbacks:
        callback.on_train_end(context)


def _run(sink, compile_counter):
    """Train a fresh AdaLoRA ``Branches`` for 24 steps with Model.train; returns what the checks need."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config = _adalora_net()
    before = _values(net)
    train_cell, allocator = _train_cell(net, config)
    recorder = _Recorder(net)
    compile_counter.clear()
    if sink:
        _sink_protocol(train_cell, [allocator, recorder], sink_size=4)
    else:
        Model(train_cell).train(1, _dataset(), callbacks=[allocator, recorder], dataset_sink_mode=False)
    compiled = list(compile_counter)
    losses = (_mse(Branches()), _mse(net))
    return SimpleNamespace(net=net, config=config, allocator=allocator, nonzero=recorder.nonzero, losses=losses,
                           before=before, compiled=compiled)


@pytest.fixture(scope="module")
def trained():
    """One non-sink run shared by the file tests (the compile counter is checked in the run tests)."""
    counter = []
    return _run(False, counter)


# --- the cell -----------------------------------------------------------------------------------------------------

def _randomised_cell(compute_dtype, mask):
    rng = np.random.default_rng(1)
    cell = AdaLoRADense(6, 5, init_r=4, lora_alpha=6, compute_dtype=compute_dtype,
                        lora_e_init=ms.Tensor(rng.normal(size=(4, 1)).astype(np.float32)),
                        lora_p_init=ms.Tensor(rng.normal(0, 0.5, size=(4, 6)).astype(np.float32)),
                        lora_q_init=ms.Tensor(rng.normal(0, 0.5, size=(5, 4)).astype(np.float32)),
                        weight_init=ms.Tensor(rng.normal(size=(5, 6)).astype(np.float32)),
                        bias_init=ms.Tensor(rng.normal(size=(5,)).astype(np.float32)))
    cell.adalora_rank_mask.set_data(ms.Tensor(np.array(mask, np.float32)[:, None]))
    return cell


def _numpy_forward(cell, x):
    lora_p, values, lora_q = cell.delta_arrays()
    weight, bias = cell.weight.asnumpy(), cell.bias.asnumpy()
    return x @ weight.T + bias + cell.lora_alpha / cell.init_r * (x @ (values * lora_p).T @ lora_q.T)


@pytest.mark.parametrize("compute_dtype, tolerance", [(ms.float32, 1e-5), (ms.float16, 4e-3)])
def test_forward_matches_numpy_with_masked_triplets(mode, compute_dtype, tolerance):
    cell = _randomised_cell(compute_dtype, [1, 0, 1, 0])
    x = np.random.default_rng(2).normal(size=(3, 2, 6)).astype(np.float32)
    expected = _numpy_forward(cell, x)
    unmasked = _randomised_cell(compute_dtype, [1, 1, 1, 1])
    assert np.abs(_numpy_forward(unmasked, x) - expected).max() > 0.1
    got = cell(ms.Tensor(x)).asnumpy()
    assert got.dtype == np.float32 and got.shape == (3, 2, 5)
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())


def test_fresh_cell_is_the_dense_layer_and_merge_truncate_keep_outputs(mode):
    dense = nn.Dense(6, 5)
    cell = AdaLoRADense(6, 5, init_r=4, lora_alpha=6, compute_dtype=ms.float32, weight_init=dense.weight.value(),
                        bias_init=dense.bias.value())
    x = ms.Tensor(np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32))
    np.testing.assert_array_equal(cell(x).asnumpy(), dense(x).asnumpy())
    cell = _randomised_cell(ms.float32, [0, 1, 1, 0])
    expected = cell(x).asnumpy()
    cell.truncate()
    assert cell.lora_rank == 2 and cell.mindpet_delta_adalora_q.shape == (5, 2)
    assert cell.mindpet_delta_adalora_p.shape == (2, 6) and cell.adalora_rank_mask.shape == (2, 1)
    np.testing.assert_allclose(cell(x).asnumpy(), expected, atol=1e-6)
    np.testing.assert_allclose(cell.to_plain_dense()(x).asnumpy(), expected, atol=1e-5)
    pruned = _randomised_cell(ms.float32, [0, 0, 0, 0])
    assert pruned.truncate().lora_rank == 1 and pruned.adalora_rank_mask.asnumpy().tolist() == [[0.0]]
    base = x.asnumpy() @ pruned.weight.asnumpy().T + pruned.bias.asnumpy()
    np.testing.assert_allclose(pruned(x).asnumpy(), base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"init_r": 2.0}, TypeError, "'init_r' must be an int"),
    ({"target_r": 16}, ValueError, "'target_r' must be at most init_r=12"),
    ({"total_step": None}, ValueError, "'total_step' must be the number of optimizer steps"),
    ({"tinit": 50, "tfinal": 50}, ValueError, "'tinit' must be below total_step - tfinal = 50"),
    ({"beta1": 1}, TypeError, "'beta1' must be a float"),
    ({"beta2": 1.0}, ValueError, "'beta2' must be in the open range"),
    ({"orth_reg_weight": -0.1}, ValueError, "'orth_reg_weight' must be a number >= 0"),
    ({"deltaT": 0}, ValueError, "'deltaT' must be a positive int"),
    ({"tfinal": -1}, ValueError, "'tfinal' must be an int >= 0"),
    ({"rank_pattern": {"query": [True] * 3}}, ValueError, r"'rank_pattern\['query'\]' must be a list of init_r=12"),
    ({"rank_pattern": {"query": [1] * 12}}, TypeError, "must be a list of bool"),
])
def test_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaLoraConfig(target_modules=["query"], **{"total_step": 100, **kwargs})


def test_cell_errors():
    with pytest.raises(ValueError, match="'lora_rank' must be at most init_r=2"):
        AdaLoRADense(4, 4, init_r=2, lora_alpha=2, lora_rank=3)
    with pytest.raises(TypeError, match="'init_r' must be an int"):
        AdaLoRADense(4, 4, init_r="2", lora_alpha=2)
    with pytest.raises(ValueError, match="'network' must be a network holding AdaLoRADense cells"):
        truncate_adalora(nn.Dense(2, 2))


def test_dry_run_counts_the_triplets():
    plan = plan_delta(Branches(), AdaLoraConfig(target_modules=PATHS, **SCHEDULE))
    added = {cell.path: cell.added_params for cell in plan.matched}
    assert added == {"head": 4 * (8 + 2 + 1), "strong": 4 * (8 + 8 + 1), "weak": 4 * (8 + 8 + 1)}


# --- the schedule and the importance ------------------------------------------------------------------------------

def test_budget_follows_the_cubic_schedule_step_by_step():
    config = AdaLoraConfig(target_modules=["q"], init_r=6, target_r=2, tinit=5, tfinal=10, deltaT=3, total_step=40)
    cells, start, end = 4, 24, 8
    for step in range(1, 41):
        budget, mask = config.budget(step, cells)
        if step <= 5:
            assert (budget, mask) == (start, False), step
        elif step > 30:
            assert (budget, mask) == (end, True), step
        else:
            progress = (step - 5) / (40 - 10 - 5)
            assert budget == int(end + (start - end) * (1 - progress) ** 3), step
            assert mask == (step % 3 == 0), step
    assert config.budget(30, cells)[0] == end and config.budget(6, cells)[0] == 22


def _numpy_gradients(cell_params, x, y, scale):
    """Gradients of mean((x W^T + b + s x (E P)^T Q^T - y)^2) with respect to P, E and Q."""
    weight, bias, lora_p, values, lora_q = cell_params
    hidden = x @ lora_p.T
    scaled = hidden * values.T
    residual = x @ weight.T + bias + scale * scaled @ lora_q.T - y
    d_out = 2 * residual / residual.size
    d_q = scale * d_out.T @ scaled
    d_scaled = scale * d_out @ lora_q
    d_values = (d_scaled * hidden).sum(axis=0)[:, None]
    d_p = (d_scaled * values.T).T @ x
    return d_p, d_values, d_q


def test_importance_matches_the_paper_formulas(mode):
    cell = _randomised_cell(ms.float32, [1, 1, 1, 1])
    cell.weight.requires_grad = False
    cell.bias.requires_grad = False
    config = AdaLoraConfig(target_modules=["x"], init_r=4, target_r=2, beta1=0.7, beta2=0.6, total_step=10,
                           orth_reg_weight=0.0)
    lr = 0.1
    train_cell, _ = _train_cell(cell, config, nn.SGD(cell.trainable_params(), learning_rate=lr))
    # What the allocator's on_train_begin does: the step is called here without Model.train.
    train_cell.allocator_running = True
    train_cell.set_train()
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(5, 5)).astype(np.float32)
    weight, bias = cell.weight.asnumpy(), cell.bias.asnumpy()
    # Copies: asnumpy() can alias a parameter that the step updates in place.
    params = [cell.mindpet_delta_adalora_p.asnumpy().copy(), cell.mindpet_delta_adalora_e.asnumpy().copy(),
              cell.mindpet_delta_adalora_q.asnumpy().copy()]
    smoothed = [np.zeros_like(p) for p in params]
    uncertain = [np.zeros_like(p) for p in params]
    for _ in range(3):
        train_cell(ms.Tensor(x), ms.Tensor(y))
        grads = _numpy_gradients([weight, bias, *params], x, y, cell.scaling)
        for i, (param, grad) in enumerate(zip(params, grads)):
            sensitivity = np.abs(param * grad)
            smoothed[i] = 0.7 * smoothed[i] + 0.3 * sensitivity
            uncertain[i] = 0.6 * uncertain[i] + 0.4 * np.abs(sensitivity - smoothed[i])
        params = [param - lr * grad for param, grad in zip(params, grads)]
    for i in range(3):
        assert np.abs(smoothed[i]).max() > 1e-4 and np.abs(uncertain[i]).max() > 1e-5
        np.testing.assert_allclose(train_cell.sensitivity[i].asnumpy(), smoothed[i], rtol=2e-4, atol=1e-8)
        np.testing.assert_allclose(train_cell.uncertainty[i].asnumpy(), uncertain[i], rtol=2e-4, atol=1e-8)
    np.testing.assert_allclose(cell.mindpet_delta_adalora_e.asnumpy(), params[1], rtol=1e-5, atol=1e-7)


def test_orthogonal_penalty_matches_numpy(mode):
    net, config = _adalora_net()
    rng = np.random.default_rng(5)
    for param in net.trainable_params():
        param.set_data(ms.Tensor(rng.normal(0, 0.5, param.shape).astype(np.float32)))
    plain = nn.WithLossCell(net, nn.MSELoss())
    penalised = AdaLoraOrthogonalLoss(plain, orth_reg_weight=0.3)
    x, y = (ms.Tensor(v[:4]) for v in _data())
    expected = 0.0
    for _, cell in adalora_cells(net):
        lora_p, lora_q = cell.mindpet_delta_adalora_p.asnumpy(), cell.mindpet_delta_adalora_q.asnumpy()
        expected += np.sum((lora_p @ lora_p.T - np.eye(4)) ** 2) + np.sum((lora_q.T @ lora_q - np.eye(4)) ** 2)
    got = float(penalised(x, y).asnumpy()) - float(plain(x, y).asnumpy())
    assert expected > 1
    np.testing.assert_allclose(got, 0.3 * expected, rtol=1e-5)


# --- training with Model.train --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sink", [False, True], ids=["no_sink", "sink"])
def test_model_train_allocates_the_budget(sink, compile_counter, caplog):
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        run = _run(sink, compile_counter)
    assert "AdaLoraCallback" not in caplog.text
    # One graph for the whole run, although the masks changed at every reallocation.
    assert len(run.compiled) == 1, run.compiled
    # Without sink, the final pattern is fixed at total_step - tfinal = 18; with sinks of 4 steps, at step 20.
    final_step = 20 if sink else 18
    assert [step for step, _ in run.allocator.allocations] == [8, 12, 16, final_step]
    for step, budget in run.allocator.allocations:
        assert budget == run.config.budget(step, 3)[0] and run.nonzero[step] == budget, (step, budget)
    cells = dict(adalora_cells(run.net))
    assert sum(int(np.count_nonzero(cell.mindpet_delta_adalora_e.asnumpy())) for cell in cells.values()) == 6
    ranks = run.config.final_ranks()
    assert sorted(ranks) == PATHS and sum(ranks.values()) == 6
    assert ranks["strong"] > ranks["weak"], ranks
    for path, cell in cells.items():
        np.testing.assert_array_equal(cell.kept_triplets(), run.config.rank_pattern[path])
    base_loss, trained_loss = run.losses
    assert trained_loss < 0.8 * base_loss, run.losses
    after = _values(run.net)
    frozen = [name for name in run.before if name.endswith(("weight", "bias"))]
    assert len(frozen) == 6
    for name in frozen:
        np.testing.assert_array_equal(after[name], run.before[name], err_msg=name)


def test_plain_training_is_refused(mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net, _ = _adalora_net()
    # Model builds its training network, and sets it to train, already in its constructor.
    with pytest.raises(RuntimeError, match="set to train without importance tracking.*AdaLoraTrainOneStepCell"):
        Model(net, nn.MSELoss(), nn.Adam(net.trainable_params(), 0.01)).train(1, _dataset(), dataset_sink_mode=False)


@pytest.mark.parametrize("sink", [False, True], ids=["no_sink", "sink"])
def test_training_without_the_callback_is_refused(sink, mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net, config = _adalora_net()
    train_cell, _ = _train_cell(net, config)
    before = _values(net)
    with pytest.raises(RuntimeError, match="allocator is not running: pass the AdaLoraCallback"):
        Model(train_cell).train(1, _dataset(), dataset_sink_mode=sink)
    after = _values(net)
    assert all(np.array_equal(after[name], value) for name, value in before.items())


def test_callback_without_training_cell_is_refused(pynative):
    net, config = _adalora_net()
    train_cell, _ = _train_cell(net, config)
    # A second allocator for the same network: no training cell feeds it importance.
    stray_allocator = AdaLoraCallback(net, config)
    with pytest.raises(RuntimeError, match="no AdaLoraTrainOneStepCell was built with this callback"):
        Model(train_cell).train(1, _dataset(), callbacks=[stray_allocator], dataset_sink_mode=False)


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def test_schedule_warnings(caplog, pynative):
    net, config = _adalora_net(total_step=30, deltaT=3, tfinal=10)
    train_cell, allocator = _train_cell(net, config)
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        Model(train_cell).train(1, _dataset().take(3), callbacks=[allocator], dataset_sink_mode=False)
    assert "this run trains 3 steps but config.total_step is 30" in caplog.text
    assert "before the final pattern is fixed at step 20" in caplog.text
    assert config.rank_pattern is None


def test_sink_size_that_does_not_divide_delta_t_is_reported(caplog):
    net, config = _adalora_net(deltaT=3)
    _, allocator = _train_cell(net, config)
    params = _InternalCallbackParam()
    params.epoch_num, params.batch_num, params.cur_step_num = 6, 4, 0
    params.dataset_sink_mode, params.sink_size = True, 4
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        allocator.on_train_begin(RunContext(params))
    assert "sink_size 4 does not divide deltaT 3" in caplog.text
    assert "config.total_step" not in caplog.text


# --- adapter files and truncation ---------------------------------------------------------------------------------

def _inputs():
    return ms.Tensor(_data()[0][:6])


def test_saved_file_loads_truncated_into_a_fresh_base(trained, tmp_path, pynative):
    net, config = trained.net, trained.config
    expected = net(_inputs()).asnumpy()
    folder = save_delta(net, str(tmp_path / "adapter"))
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as file:
        fields = json.load(file)
    tensors, _ = read_safetensors(os.path.join(folder, WEIGHTS_FILE))
    ranks = config.final_ranks()
    assert fields["peft_type"] == "ADALORA" and fields["init_r"] == 4 and fields["total_step"] == 24
    assert {key: sum(flags) for key, flags in fields["rank_pattern"].items()} == \
        {f"{path}.lora_E": max(rank, 1) for path, rank in ranks.items()}
    for path in PATHS:
        assert tensors[f"base_model.model.{path}.lora_A"].shape == (max(ranks[path], 1), 8)
    fresh = Branches()
    assert not np.allclose(fresh(_inputs()).asnumpy(), expected, atol=1e-3)
    assert load_delta(fresh, folder).missing == []
    for path, cell in adalora_cells(fresh):
        assert cell.lora_rank == max(ranks[path], 1) and cell.init_r == 4
    np.testing.assert_allclose(fresh(_inputs()).asnumpy(), expected, rtol=1e-6, atol=1e-6)
    assert fresh.delta_configs["adalora"].final_ranks() == {path: max(rank, 1) for path, rank in ranks.items()
                                                             if rank < 4}


def test_truncating_the_trained_network_keeps_its_outputs(trained, mode):
    net, config = trained.net, trained.config
    fresh, _ = _adalora_net()
    params = {param.name: param for param in fresh.get_parameters()}
    for name, value in _values(net).items():
        params[name].set_data(ms.Tensor(value))
    fresh.set_train(False)
    expected = fresh(_inputs()).asnumpy()
    ranks = {path: max(rank, 1) for path, rank in config.final_ranks().items()}
    assert truncate_adalora(fresh) == ranks
    for path, cell in adalora_cells(fresh):
        assert cell.mindpet_delta_adalora_p.shape == (ranks[path], 8)
    np.testing.assert_allclose(fresh(_inputs()).asnumpy(), expected, rtol=1e-6, atol=1e-6)


def _torch_branches(net):
    """``Branches`` in torch, holding the base weights of the MindSpore ``net``."""
    torch = pytest.importorskip("torch")

    class TorchBranches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.strong, self.weak, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.relu(self.strong(x)) + 0.01 * torch.relu(self.weak(x)))

    model = TorchBranches()
    values = _values(net)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.tensor(values[name]))
    return model


def _torch_out(model):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return model(torch.tensor(_data()[0][:6])).numpy()


def test_mindpet_file_loads_in_peft_and_merges_as_peft_does(trained, tmp_path, pynative):
    peft = pytest.importorskip("peft")
    net = trained.net
    folder = save_delta(net, str(tmp_path / "adapter"))
    loaded = peft.PeftModel.from_pretrained(_torch_branches(Branches()), folder).eval()
    np.testing.assert_allclose(_torch_out(loaded), net(_inputs()).asnumpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(_torch_out(_torch_branches(Branches())) - net(_inputs()).asnumpy()).max() > 1e-3
    base, out = str(tmp_path / "base.safetensors"), str(tmp_path / "merged.safetensors")
    write_safetensors(base, {name: value for name, value in _values(Branches()).items()})
    assert main(["merge", "--base", base, "--delta", folder, "--out", out]) == EXIT_OK
    merged, _ = read_safetensors(out)
    for name, value in loaded.merge_and_unload().state_dict().items():
        np.testing.assert_allclose(merged[name], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_peft_trained_file_loads_into_mindpet(tmp_path, pynative):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, target_modules=PATHS, total_step=12, tinit=2,
                                tfinal=4, deltaT=2)
    model = peft.get_peft_model(_torch_branches(Branches()), config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, y = (torch.tensor(v[:16]) for v in _data())
    for step in range(12):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.save_pretrained(str(tmp_path / "peft"))
    fresh = Branches()
    load_delta(fresh, str(tmp_path / "peft"))
    ranks = {path: sum(flags) for path, flags in model.peft_config["default"].rank_pattern.items()}
    assert sum(ranks.values()) == 6
    # A module PEFT pruned to rank 0 becomes one zero triplet.
    assert {path: cell.lora_rank for path, cell in adalora_cells(fresh)} == \
        {key[:-len(".lora_E")]: max(rank, 1) for key, rank in ranks.items()}
    np.testing.assert_allclose(fresh(_inputs()).asnumpy(), _torch_out(model.eval()), rtol=1e-5, atol=1e-5)


def test_on_an_nf4_base_it_computes_and_merges(pynative):
    net = nn.SequentialCell([nn.Dense(64, 32), nn.ReLU(), nn.Dense(32, 4)])
    quantize_base(net, ["0"], block_size=16)
    get_delta_model(net, AdaLoraConfig(target_modules=["0"], init_r=4, target_r=2, total_step=10))
    cell = net[0]
    assert isinstance(cell, AdaLoRADense) and cell.weight_quantized
    rng = np.random.default_rng(6)
    cell.mindpet_delta_adalora_e.set_data(ms.Tensor(rng.normal(size=(4, 1)).astype(np.float32)))
    cell.mindpet_delta_adalora_q.set_data(ms.Tensor(rng.normal(size=(32, 4)).astype(np.float32)))
    x = ms.Tensor(rng.normal(size=(3, 64)).astype(np.float32))
    hidden = x.asnumpy() @ cell.base_weight_array().T + cell.bias.asnumpy() + 2 * (
        x.asnumpy() @ (cell.mindpet_delta_adalora_e.asnumpy() * cell.mindpet_delta_adalora_p.asnumpy()).T
        @ cell.mindpet_delta_adalora_q.asnumpy().T)
    expected = np.maximum(hidden, 0) @ net[2].weight.asnumpy().T + net[2].bias.asnumpy()
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)
    merged = merge_and_unload(net)
    assert type(merged[0]) is nn.Dense
    np.testing.assert_allclose(merged(x).asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_injected_cells_follow_the_host_split_and_check_strategies():
    network = TinyNet()
    for path, cell in network.cells_and_names():
        if path.endswith(("q_proj", "o_proj")):
            cell.matmul.shard(((2, 1), (4, 1)))
            cell.bias_add.shard(((2, 4), (4,)))
    network = get_delta_model(network, AdaLoraConfig(target_modules=["q_proj", "o_proj"], init_r=4, total_step=10,
                                                     target_r=2))
    report = check_shard_strategies(network, device_num=8)
    assert report.min_device_num == 8 and len(report.cells) == 4
    cell = dict(network.cells_and_names())["layers.0.attn.o_proj"]
    assert cell.lora_q_matmul.in_strategy == ((2, 1), (4, 1)) and cell.lora_add.in_strategy == ((2, 4), (2, 4))
    assert cell.mask_mul.in_strategy == ((1, 1), (1, 1))
    with pytest.raises(ValueError, match="'strategy_mask_mul' must split the singular-value column"):
        cell.shard(strategy_mask_mul=((1, 2), (1, 2)))
    with pytest.raises(ValueError, match="'strategy_lora_q_matmul' must split the flattened batch 2-way"):
        cell.shard(strategy_lora_q_matmul=((4, 1), (4, 1)))
