"""The loss, the training loop and the held-out evaluation of a causal language model, one compiled graph each.

Every sequence has one length (``data.encode_examples`` pads), so training, evaluation and greedy generation each
compile a single graph. The loss is the mean cross entropy over the answer tokens; prompt and padding positions
hold :data:`llm.data.IGNORE_INDEX` and count for nothing.
"""
import math
import os

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, LossMonitor, Model

from bert.finetune import StepTimer, warmup_linear_decay
from llm.data import IGNORE_INDEX, token_log_likelihoods
from mindpet import TrainableParamsCheckPoint


class CausalLMWithLoss(nn.Cell):
    """A causal language model and its loss: mean next-token cross entropy over the labels that are not
    :data:`~llm.data.IGNORE_INDEX`.

    Inputs:
        - **input_ids** (Tensor) - int32 ``(batch, seq)``.
        - **labels** (Tensor) - int32 ``(batch, seq)``, the next token of each position or the ignore index.

    Outputs:
        Tensor, the scalar loss, float32.
    """

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net
        self.cross_entropy = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def construct(self, input_ids, labels):
        logits = self.net(input_ids).astype(ms.float32)
        return self.cross_entropy(logits.reshape((-1, logits.shape[-1])), labels.reshape((-1,)))


class StepTimerWithLoss(StepTimer):
    """The wall time of every training step (the first includes graph compilation) and its loss."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_step_end(self, run_context):
        super().on_train_step_end(run_context)
        self.losses.append(float(np.mean(run_context.original_args().net_outputs.asnumpy())))


def train(net, examples, lr, steps, batch_size, seed, output_dir, prefix, print_every=10):
    """Train the trainable parameters of `net` for `steps` steps with ``Model.train`` (AdamW, warm-up then linear
    decay, no weight decay); :class:`mindpet.TrainableParamsCheckPoint` saves them at the end.

    Args:
        net (mindspore.nn.Cell): The frozen model with its method applied; it maps ``input_ids`` to logits.
        examples (CausalLMExamples): At least ``steps * batch_size`` training examples; each is seen once.
        lr (float): Peak learning rate.
        steps (int): Optimizer steps.
        batch_size (int): Examples per step.
        seed (int): Seed of the shuffle order.
        output_dir (str): Folder of the checkpoint.
        prefix (str): Checkpoint file prefix.
        print_every (int): Steps between loss lines. Default: 10.

    Returns:
        tuple of the checkpoint path and the :class:`StepTimerWithLoss` (step times and losses).

    Raises:
        ValueError: If `examples` holds fewer than ``steps * batch_size`` examples.
    """
    if len(examples) < steps * batch_size:
        raise ValueError(f"For 'train', {steps} steps of {batch_size} need {steps * batch_size} examples, but got "
                         f"{len(examples)}.")
    ms.dataset.config.set_seed(seed)
    dataset = NumpySlicesDataset(examples.select(slice(0, steps * batch_size)).columns(), shuffle=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    optimizer = nn.AdamWeightDecay(net.trainable_params(), Tensor(warmup_linear_decay(lr, steps)), weight_decay=0.0)
    model = Model(CausalLMWithLoss(net), optimizer=optimizer)
    os.makedirs(output_dir, exist_ok=True)
    saver = TrainableParamsCheckPoint(prefix=prefix, directory=output_dir,
                                      config=CheckpointConfig(save_checkpoint_steps=steps, keep_checkpoint_max=1))
    timer = StepTimerWithLoss()
    model.train(1, dataset, callbacks=[saver, LossMonitor(per_print_times=print_every), timer],
                dataset_sink_mode=False)
    return saver.latest_ckpt_file_name, timer


def logits_of(net, input_ids):
    """The float32 logits of `net` in inference mode for an int32 array ``(batch, seq)``."""
    net.set_train(False)
    return net(Tensor(input_ids)).astype(ms.float32).asnumpy()


def held_out_loss(net, examples, batch_size):
    """The mean cross entropy over every answer token of `examples` (token-weighted) and its perplexity.

    The last batch is padded with copies of its first row, so one compiled graph serves all; the copies are not
    counted.

    Returns:
        tuple of the loss (float, nats per token) and the perplexity ``exp(loss)``.
    """
    log_likelihoods = []
    for start in range(0, len(examples), batch_size):
        rows = np.arange(start, min(start + batch_size, len(examples)))
        padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
        logits = logits_of(net, examples.input_ids[padded])[:len(rows)]
        log_likelihoods.append(token_log_likelihoods(logits, examples.labels[rows]))
    loss = -float(np.mean(np.concatenate(log_likelihoods)))
    return loss, math.exp(loss)
