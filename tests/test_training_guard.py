"""TrainingGuard and the same checks in TrainableParamsCheckPoint: setups that silently train nothing, or the wrong
weights, are reported when training begins."""
import logging

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, Model

from mindpet.checkpoint import TrainableParamsCheckPoint, TrainingGuard
from mindpet.delta.base.mergeable import merged_cells
from mindpet.delta import LoRADense
from mindpet.graph import TrainingGuard as GraphTrainingGuard
from mindpet.graph import freeze_delta
from toy_models import IN, OUT, Regressor


def lora_regressor():
    return Regressor(LoRADense, lora_rank=2, lora_alpha=4, lora_b_init="normal", compute_dtype=ms.float32)


def dataset():
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((16, IN)).astype(np.float32),
            "y": rng.standard_normal((16, OUT)).astype(np.float32)}
    return NumpySlicesDataset(data, shuffle=False).batch(8)


def values(net):
    return {param.name: param.asnumpy().copy() for param in net.get_parameters()}


def mindpet_log(caplog):
    """What the mindpet logger wrote (MindSpore's own warnings go to the same capture)."""
    return "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("mindpet"))


def train(net, optimizer, callbacks):
    Model(net, nn.MSELoss(), optimizer).train(1, dataset(), callbacks=callbacks, dataset_sink_mode=False)


def test_sound_setup_reports_nothing(graph_mode, caplog):
    """
    Feature: TrainingGuard on a correct setup.
    Description: Freeze, then build the optimizer from trainable_params(), then train.
    Expectation: No problem and no warning.
    """
    net = lora_regressor()
    freeze_delta(net, "lora", exclude=["head.*"])
    guard = TrainingGuard()
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        train(net, nn.Adam(net.trainable_params(), 0.01), [guard])
    assert guard.problems == [] and mindpet_log(caplog) == ""


def test_merged_cells_are_reported(graph_mode, caplog):
    """
    Feature: Training merged LoRA cells.
    Description: Merge the LoRA cells, then train only their delta.
    Expectation: The loss cannot move (zero gradients); the guard warns and names both merged cells.
    """
    net = lora_regressor()
    freeze_delta(net, "lora")
    for layer in net.encoder:
        layer.merge()
    assert merged_cells(net) == ["encoder.0", "encoder.1"]
    before = values(net)
    guard = TrainingGuard()
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        train(net, nn.Adam(net.trainable_params(), 0.01), [guard])
    assert len(guard.problems) == 1
    assert "['encoder.0', 'encoder.1'] are merged" in mindpet_log(caplog) and "unmerge()" in mindpet_log(caplog)
    after = values(net)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_merged_cells_with_frozen_delta_are_fine(graph_mode):
    """
    Feature: A merged network whose delta is not trained.
    Description: Merge the LoRA cells and train only the head.
    Expectation: That is a sound setup: no problem.
    """
    net = lora_regressor()
    freeze_delta(net, "lora", include=["*mindpet_delta*"], exclude=["head.*"])
    for layer in net.encoder:
        layer.merge()
    guard = TrainingGuard()
    train(net, nn.Adam(net.trainable_params(), 0.01), [guard])
    assert guard.problems == []


def test_optimizer_built_before_freezing_is_reported(graph_mode, caplog):
    """
    Feature: An optimizer built before freeze_delta.
    Description: Build AdamWeightDecay (weight decay 0.1) from every parameter, then freeze to LoRA only, then train.
    Expectation: The guard warns, naming the frozen parameters the optimizer holds; and indeed weight decay moved the
        frozen base weights, which is what the warning is about.
    """
    net = lora_regressor()
    optimizer = nn.AdamWeightDecay(net.trainable_params(), 0.01, weight_decay=0.1)
    freeze_delta(net, "lora")
    before = values(net)
    guard = TrainingGuard()
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        train(net, optimizer, [guard])
    assert len(guard.problems) == 1
    assert "the optimizer updates 6 frozen parameters (requires_grad=False)" in mindpet_log(caplog)
    assert "'encoder.0.weight'" in mindpet_log(caplog) and "'head.bias'" in mindpet_log(caplog)
    assert not np.array_equal(before["encoder.0.weight"], values(net)["encoder.0.weight"])


def test_trainable_parameters_left_out_of_the_optimizer_are_reported(graph_mode, caplog):
    """
    Feature: Trainable parameters that no optimizer updates.
    Description: Build the optimizer from the LoRA parameters, then unfreeze the head too.
    Expectation: The guard warns, naming the head's parameters.
    """
    net = lora_regressor()
    freeze_delta(net, "lora")
    optimizer = nn.Adam(net.trainable_params(), 0.01)
    freeze_delta(net, "lora", exclude=["head.*"])
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        train(net, optimizer, [TrainingGuard()])
    assert "2 trainable parameters are in no optimizer" in mindpet_log(caplog)
    assert "['head.weight', 'head.bias']" in mindpet_log(caplog)


def test_strict_raises_before_the_first_step(graph_mode):
    """
    Feature: TrainingGuard(strict=True).
    Description: Train with an optimizer built before freezing.
    Expectation: ValueError naming the frozen parameters, raised before any weight changed.
    """
    net = lora_regressor()
    optimizer = nn.AdamWeightDecay(net.trainable_params(), 0.01, weight_decay=0.1)
    freeze_delta(net, "lora")
    before = values(net)
    with pytest.raises(ValueError, match=r"updates 6 frozen parameters .*'encoder.0.weight'"):
        train(net, optimizer, [GraphTrainingGuard(strict=True)])
    after = values(net)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_names_are_bounded(graph_mode):
    """
    Feature: Bounded messages.
    Description: An optimizer built before freezing a network of 30 Dense layers.
    Expectation: The message names ten parameters and counts the rest.
    """
    net = nn.SequentialCell([nn.Dense(4, 4) for _ in range(30)])
    optimizer = nn.SGD(net.trainable_params(), 0.01)
    for param in net.get_parameters():
        param.requires_grad = param.name == "29.bias"
    rng = np.random.default_rng(0)
    data = NumpySlicesDataset({"x": rng.standard_normal((8, 4)).astype(np.float32),
                               "y": rng.standard_normal((8, 4)).astype(np.float32)}, shuffle=False).batch(8)
    guard = TrainingGuard()
    Model(net, nn.MSELoss(), optimizer).train(1, data, callbacks=[guard], dataset_sink_mode=False)
    assert "updates 59 frozen parameters" in guard.problems[0] and guard.problems[0].count("weight'") <= 10
    assert "and 49 more" in guard.problems[0]


def test_checkpoint_callback_warns_too(graph_mode, tmp_path, caplog):
    """
    Feature: TrainableParamsCheckPoint runs the guard's checks.
    Description: Train merged LoRA cells with only the checkpoint callback.
    Expectation: The same warning, from 'TrainableParamsCheckPoint'.
    """
    net = lora_regressor()
    freeze_delta(net, "lora")
    net.encoder[0].merge()
    callback = TrainableParamsCheckPoint(directory=str(tmp_path), config=CheckpointConfig(save_checkpoint_steps=2))
    with caplog.at_level(logging.WARNING, logger="mindpet"):
        train(net, nn.Adam(net.trainable_params(), 0.01), [callback])
    assert "For 'TrainableParamsCheckPoint', the cells ['encoder.0'] are merged" in mindpet_log(caplog)


def test_strict_must_be_bool():
    """
    Feature: TrainingGuard argument check.
    Description: Pass strict=1.
    Expectation: TypeError naming 'strict'.
    """
    with pytest.raises(TypeError, match="'strict' must be a bool"):
        TrainingGuard(strict=1)
