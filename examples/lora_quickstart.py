"""LoRA end to end in one minute on a CPU.

1. "Pretrain" a small MLP made of ``nn.Dense`` layers and save its checkpoint.
2. Swap ``nn.Dense`` for ``LoRADense`` in the model source; the pretrained checkpoint loads unchanged.
3. ``freeze_delta(net, 'lora', exclude=['*head*'])`` before building the optimizer.
4. Train with ``Model.train`` and ``TrainableParamsCheckPoint``, which saves the LoRA matrices and the head only.
5. Reload the delta into a fresh network on top of the pretrained weights and check the outputs match.

The downstream task is the pretrained network with a low-rank change to its hidden layers, which is exactly
what LoRA can learn. Run: ``python examples/lora_quickstart.py``.
"""
import argparse
import os

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, LossMonitor, Model, TimeMonitor

from mindpet import (TrainableParamsCheckPoint, freeze_delta, load_base_checkpoint, load_delta_checkpoint,
                     trainable_summary)
from mindpet.delta import LoRADense

IN_FEATURES, HIDDEN, OUT_FEATURES = 32, 128, 4


class MLP(nn.Cell):
    """The model source. Fine-tuning with LoRA changes one argument: the Dense class of the hidden layers."""

    def __init__(self, dense_cls=nn.Dense, **dense_kwargs):
        super().__init__()
        self.hidden = nn.CellList([dense_cls(IN_FEATURES, HIDDEN, activation="gelu", **dense_kwargs),
                                   dense_cls(HIDDEN, HIDDEN, activation="gelu", **dense_kwargs)])
        self.head = nn.Dense(HIDDEN, OUT_FEATURES)

    def construct(self, x):
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)


def lora_mlp(rank):
    return MLP(LoRADense, lora_rank=rank, lora_alpha=2 * rank, compute_dtype=ms.float32)


def make_task(base_ckpt, samples, seed):
    """Inputs and targets of a downstream task: the pretrained MLP with a rank-2 change per hidden layer."""
    teacher = MLP()
    ms.load_param_into_net(teacher, ms.load_checkpoint(base_ckpt))
    rng = np.random.default_rng(seed)
    for layer in teacher.hidden:
        out_dim, in_dim = layer.weight.shape
        change = rng.standard_normal((out_dim, 2)) @ rng.standard_normal((2, in_dim)) / np.sqrt(in_dim)
        layer.weight.set_data(Tensor(layer.weight.asnumpy() + change.astype(np.float32)))
    x = rng.standard_normal((samples, IN_FEATURES)).astype(np.float32)
    return x, teacher(Tensor(x)).asnumpy()


def mean_squared_error(net, x, y):
    net.set_train(False)
    return float(np.mean((net(Tensor(x)).asnumpy() - y) ** 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--output-dir", default="mindpet_quickstart", help="where checkpoints are written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    base_ckpt = os.path.join(args.output_dir, "pretrained.ckpt")
    ms.save_checkpoint(MLP(), base_ckpt)
    x, y = make_task(base_ckpt, args.samples, args.seed)
    split = args.samples * 3 // 4

    net = lora_mlp(args.rank)
    # Every base weight must load; the LoRA parameters are new, and load_base_checkpoint does not count them missing.
    load_base_checkpoint(net, base_ckpt)
    trainable = freeze_delta(net, mode="lora", exclude=["*head*"])
    print(f"{trainable_summary(net)}: {trainable}")

    start = mean_squared_error(net, x[split:], y[split:])
    dataset = NumpySlicesDataset({"x": x[:split], "y": y[:split]}, shuffle=True).batch(32)
    steps_per_epoch = dataset.get_dataset_size()
    checkpoint = TrainableParamsCheckPoint(
        prefix="lora", directory=os.path.join(args.output_dir, "delta"),
        config=CheckpointConfig(save_checkpoint_steps=steps_per_epoch, keep_checkpoint_max=2))
    model = Model(net, loss_fn=nn.MSELoss(), optimizer=nn.Adam(net.trainable_params(), learning_rate=1e-2))
    model.train(args.epochs, dataset, callbacks=[checkpoint, LossMonitor(steps_per_epoch), TimeMonitor()],
                dataset_sink_mode=False)
    end = mean_squared_error(net, x[split:], y[split:])
    print(f"Held-out MSE: {start:.4f} before fine-tuning, {end:.4f} after ({end / start:.1%} of the start).")

    delta_file = checkpoint.latest_ckpt_file_name
    fresh = lora_mlp(args.rank)
    load_base_checkpoint(fresh, base_ckpt)
    freeze_delta(fresh, mode="lora", exclude=["*head*"])
    load_delta_checkpoint(fresh, delta_file)
    reloaded = mean_squared_error(fresh, x[split:], y[split:])
    print(f"Delta checkpoint: {delta_file} ({os.path.getsize(delta_file):,} bytes; "
          f"the pretrained checkpoint is {os.path.getsize(base_ckpt):,} bytes).")
    print(f"Reloaded into a fresh network: held-out MSE {reloaded:.4f} "
          f"({'identical' if reloaded == end else 'DIFFERENT'}).")


if __name__ == "__main__":
    main()
