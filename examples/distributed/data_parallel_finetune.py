"""Data-parallel delta fine-tuning launched by ``msrun``: every worker trains the same LoRA and adapter deltas on
its own shard of the data, and the gradients are averaged with AllReduce.

Two steps, run from the repository root::

    python examples/distributed/data_parallel_finetune.py prepare --output-dir dp_run
    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=dp_run/msrun_logs --join=True \\
        examples/distributed/data_parallel_finetune.py train --output-dir dp_run

``prepare`` (one process) writes the "pretrained" checkpoint of a small MLP made of ``nn.Dense`` layers and a
downstream regression task (the pretrained MLP with a low-rank change to its hidden layers). ``train`` runs in
every worker: it swaps the hidden ``nn.Dense`` layers for ``LoRADense`` and ``AdapterDense``, loads the pretrained
checkpoint, freezes everything but the deltas and the head, and trains with ``Model.train``.

Every rank writes its delta checkpoint under ``<output-dir>/rank_<id>/delta/`` with ``TrainableParamsCheckPoint``
(one folder per rank, so no two processes write or prune the same files). Under data parallelism the deltas of
all ranks are identical, so any rank's file (say rank 0's) is the fine-tuning result. ``rank_<id>/metrics.json``
records the held-out error before and after training.

``msrun`` starts its workers with the ``python`` found first on ``PATH``; activate the environment that has
mindpet installed before launching. On CPU the workers talk through MindSpore's ``mccl`` backend; on GPU or
Ascend the same script uses NCCL or HCCL.
"""
import argparse
import json
import os

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.communication import get_group_size, get_rank, init
from mindspore.context import ParallelMode
from mindspore.dataset import NumpySlicesDataset
from mindspore.dataset import config as dataset_config
from mindspore.train import Callback, CheckpointConfig, LossMonitor, Model

from mindpet.delta import AdapterDense, LoRADense
from mindpet.graph import TrainableParamsCheckPoint, freeze_delta

IN_FEATURES, HIDDEN, OUT_FEATURES = 8, 16, 2
LORA_RANK, BOTTLENECK = 4, 4
PRETRAINED_FILE, TASK_FILE, METRICS_FILE, NETWORK_FILE = "pretrained.ckpt", "task.npz", "metrics.json", "network.ckpt"
DELTA_PREFIX = "delta"
# The deltas train next to the task head; everything else stays as pretrained.
TRAINABLE_BESIDES_LORA = ["*mindpet_delta_adapter*", "*head*"]


class MLP(nn.Cell):
    """The model source: the pretrained model uses ``nn.Dense`` for both hidden layers, fine-tuning swaps them."""

    def __init__(self, first_dense=nn.Dense, second_dense=nn.Dense):
        super().__init__()
        self.hidden = nn.CellList([first_dense(IN_FEATURES, HIDDEN, activation="tanh"),
                                   second_dense(HIDDEN, HIDDEN, activation="tanh")])
        self.head = nn.Dense(HIDDEN, OUT_FEATURES)

    def construct(self, x):
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)


def delta_mlp():
    """The fine-tuning model: LoRA on the first hidden layer, a bottleneck adapter after the second."""
    def lora(in_channels, out_channels, activation):
        return LoRADense(in_channels, out_channels, lora_rank=LORA_RANK, lora_alpha=2 * LORA_RANK,
                         activation=activation, compute_dtype=ms.float32)

    def adapter(in_channels, out_channels, activation):
        return AdapterDense(in_channels, out_channels, activation=activation, bottleneck_size=BOTTLENECK,
                            compute_dtype=ms.float32)

    return MLP(lora, adapter)


def prepare(output_dir, samples, seed):
    """Write the pretrained checkpoint and the downstream task into ``output_dir``; return their paths."""
    os.makedirs(output_dir, exist_ok=True)
    ms.set_seed(seed)
    pretrained = MLP()
    pretrained_file = os.path.join(output_dir, PRETRAINED_FILE)
    ms.save_checkpoint(pretrained, pretrained_file)

    rng = np.random.default_rng(seed)
    for layer in pretrained.hidden:
        out_dim, in_dim = layer.weight.shape
        change = rng.standard_normal((out_dim, 2)) @ rng.standard_normal((2, in_dim)) / np.sqrt(in_dim)
        layer.weight.set_data(Tensor(layer.weight.asnumpy() + change.astype(np.float32)))
    x = rng.standard_normal((samples, IN_FEATURES)).astype(np.float32)
    y = pretrained(Tensor(x)).asnumpy()
    task_file = os.path.join(output_dir, TASK_FILE)
    np.savez(task_file, x=x, y=y)
    return pretrained_file, task_file


class EpochLosses(Callback):
    """Keeps the training loss of every epoch's last step; each rank computes it on a batch of its own shard."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_epoch_end(self, run_context):
        self.losses.append(float(run_context.original_args().net_outputs.asnumpy()))


def held_out_error(net, x, y):
    net.set_train(False)
    return float(np.mean((net(Tensor(x)).asnumpy() - y) ** 2))


def train(output_dir, epochs, batch_size, learning_rate, seed, save_network=False):
    """One worker's part of the data-parallel run; returns the path of its last delta checkpoint.

    With ``save_network`` the whole fine-tuned network also goes to ``rank_<id>/network.ckpt``, to check that the
    frozen weights are still the pretrained ones.
    """
    init()
    rank, group_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL, gradients_mean=True)
    # The same seeds on every rank: identical delta initial values and the same global shuffle order.
    ms.set_seed(seed)
    dataset_config.set_seed(seed)

    task = np.load(os.path.join(output_dir, TASK_FILE))
    split = len(task["x"]) * 3 // 4
    train_x, train_y, test_x, test_y = task["x"][:split], task["y"][:split], task["x"][split:], task["y"][split:]

    net = delta_mlp()
    ms.load_param_into_net(net, ms.load_checkpoint(os.path.join(output_dir, PRETRAINED_FILE)))
    # Freeze before the optimizer is built: an optimizer keeps updating whatever it was given.
    trainable = freeze_delta(net, mode="lora", exclude=TRAINABLE_BESIDES_LORA)
    error_before = held_out_error(net, test_x, test_y)

    # Each rank reads its own 1/group_size of every epoch.
    dataset = NumpySlicesDataset({"x": train_x, "y": train_y}, shuffle=True, num_shards=group_size,
                                 shard_id=rank).batch(batch_size, drop_remainder=True)
    steps_per_epoch = dataset.get_dataset_size()
    rank_dir = os.path.join(output_dir, f"rank_{rank}")
    delta_checkpoint = TrainableParamsCheckPoint(
        prefix=DELTA_PREFIX, directory=os.path.join(rank_dir, "delta"),
        config=CheckpointConfig(save_checkpoint_steps=steps_per_epoch, keep_checkpoint_max=1))
    model = Model(net, loss_fn=nn.MSELoss(), optimizer=nn.Adam(net.trainable_params(), learning_rate=learning_rate))
    epoch_losses = EpochLosses()
    model.train(epochs, dataset, callbacks=[delta_checkpoint, epoch_losses, LossMonitor(steps_per_epoch)],
                dataset_sink_mode=False)

    error_after = held_out_error(net, test_x, test_y)
    if save_network:
        ms.save_checkpoint(net, os.path.join(rank_dir, NETWORK_FILE))
    metrics = {"rank": rank, "group_size": group_size, "trainable": trainable, "steps_per_epoch": steps_per_epoch,
               "epoch_end_losses": epoch_losses.losses, "held_out_mse_before": error_before,
               "held_out_mse_after": error_after, "delta_file": delta_checkpoint.latest_ckpt_file_name}
    with open(os.path.join(rank_dir, METRICS_FILE), "w", encoding="utf-8") as metrics_file:
        json.dump(metrics, metrics_file, indent=2)
    print(f"rank {rank}/{group_size}: held-out MSE {error_before:.4f} -> {error_after:.4f}; "
          f"delta checkpoint {delta_checkpoint.latest_ckpt_file_name}", flush=True)
    return delta_checkpoint.latest_ckpt_file_name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "train"), help="'prepare' once, then 'train' under msrun")
    parser.add_argument("--output-dir", default="mindpet_data_parallel", help="shared by both steps")
    parser.add_argument("--samples", type=int, default=512, help="prepare: size of the task")
    parser.add_argument("--epochs", type=int, default=8, help="train: passes over the training split")
    parser.add_argument("--batch-size", type=int, default=16, help="train: samples per rank and step")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="train: Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-network", action="store_true",
                        help="train: also save each rank's whole network, frozen weights included")
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    if args.step == "prepare":
        pretrained_file, task_file = prepare(args.output_dir, args.samples, args.seed)
        print(f"Wrote {pretrained_file} and {task_file}.")
    else:
        train(args.output_dir, args.epochs, args.batch_size, args.learning_rate, args.seed, args.save_network)


if __name__ == "__main__":
    main()
