"""Prefix-Tuning and P-Tuning v2 end to end in well under a minute on a CPU.

1. "Pretrain" the small decoder of ``tiny_decoder.py`` on one next-token task and save its checkpoint.
2. Build the same decoder with prefixes: a ``PrefixLayer`` per attention block (``--method prefix``) or one
   ``PrefixEncoder`` feeding every block (``--method ptuning2``). The pretrained checkpoint loads unchanged; only the
   prefix parameters are new.
3. ``freeze_delta(net, method)`` before building the optimizer.
4. Train on a downstream task with ``Model.train`` and ``TrainableParamsCheckPoint``, which saves the prefix
   parameters only.
5. Reload the delta into a fresh decoder that holds the pretrained weights and check the outputs match.

Run: ``python examples/prefix_tuning.py`` (both methods) or ``python examples/prefix_tuning.py --method prefix``.
"""
import argparse
import os

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.dataset import NumpySlicesDataset
from mindspore.train import CheckpointConfig, LossMonitor, Model

from mindpet import (TrainableParamsCheckPoint, freeze_delta, load_base_checkpoint, load_delta_checkpoint,
                     trainable_summary)
from mindpet.delta import PrefixLayer
from tiny_decoder import (HIDDEN_SIZE, NUM_HEADS, NUM_LAYERS, TinyDecoder, TinyDecoderWithPTuning2,
                          TokenCrossEntropy, cycle_task, mean_token_loss)

BATCH_SIZE = 16
PREFIX_LENGTH = 4
PRETRAIN_SEED, DOWNSTREAM_SEED = 100, 0
PRETRAIN_CYCLES = 8
LEARNING_RATES = {"prefix": 2e-2, "ptuning2": 5e-2}


def build(method):
    """The decoder with the prefixes of ``method``; parameter names of the plain decoder are unchanged."""
    if method == "prefix":
        # PrefixLayer counts prefix tokens for the whole batch, as in MindPet: PREFIX_LENGTH per sample.
        return TinyDecoder(prefix_layers=[
            PrefixLayer(prefix_token_num=PREFIX_LENGTH * BATCH_SIZE, batch_size=BATCH_SIZE, num_heads=NUM_HEADS,
                        hidden_dim=HIDDEN_SIZE, embed_dim=16, mid_dim=32, dropout_rate=0.0)
            for _ in range(NUM_LAYERS)])
    return TinyDecoderWithPTuning2(pre_seq_len=PREFIX_LENGTH)


def batches(input_ids, labels):
    dataset = NumpySlicesDataset({"input_ids": input_ids, "labels": labels}, shuffle=True)
    return dataset.batch(BATCH_SIZE, drop_remainder=True)


def pretrain(path, samples, epochs):
    """Train every parameter of a plain decoder on the pretraining task and save it to ``path``."""
    net = TinyDecoder()
    input_ids, labels = cycle_task(samples, PRETRAIN_SEED, num_cycles=PRETRAIN_CYCLES)
    model = Model(net, loss_fn=TokenCrossEntropy(), optimizer=nn.Adam(net.trainable_params(), learning_rate=1e-2))
    model.train(epochs, batches(input_ids, labels), dataset_sink_mode=False)
    print(f"Pretrained the base decoder: loss on its own task {mean_token_loss(net, input_ids, labels):.3f}.")
    ms.save_checkpoint(net, path)


def fine_tune(method, base_ckpt, output_dir, samples, epochs):
    net = build(method)
    load_base_checkpoint(net, base_ckpt)   # the prefix parameters are new: not counted as missing
    trainable = freeze_delta(net, mode=method)
    print(f"\n[{method}] {trainable_summary(net)} in {len(trainable)} tensors")

    input_ids, labels = cycle_task(samples, DOWNSTREAM_SEED)
    start = mean_token_loss(net, input_ids, labels)
    dataset = batches(input_ids, labels)
    steps_per_epoch = dataset.get_dataset_size()
    checkpoint = TrainableParamsCheckPoint(
        prefix=method, directory=os.path.join(output_dir, method),
        config=CheckpointConfig(save_checkpoint_steps=steps_per_epoch, keep_checkpoint_max=1))
    optimizer = nn.Adam(net.trainable_params(), learning_rate=LEARNING_RATES[method])
    model = Model(net, loss_fn=TokenCrossEntropy(), optimizer=optimizer)
    model.train(epochs, dataset, callbacks=[checkpoint, LossMonitor(steps_per_epoch)], dataset_sink_mode=False)
    end = mean_token_loss(net, input_ids, labels)
    print(f"[{method}] downstream loss: {start:.3f} before, {end:.3f} after ({end / start:.1%} of the start)")

    delta_file = checkpoint.latest_ckpt_file_name
    fresh = build(method)
    load_base_checkpoint(fresh, base_ckpt)
    freeze_delta(fresh, mode=method)
    load_delta_checkpoint(fresh, delta_file)
    probe = Tensor(input_ids[:BATCH_SIZE])
    net.set_train(False)
    fresh.set_train(False)
    same = np.array_equal(fresh(probe).asnumpy(), net(probe).asnumpy())
    print(f"[{method}] delta checkpoint {delta_file}: {os.path.getsize(delta_file):,} bytes "
          f"(the base checkpoint: {os.path.getsize(base_ckpt):,}); a fresh decoder reloaded from it gives "
          f"{'identical' if same else 'DIFFERENT'} outputs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["prefix", "ptuning2", "both"], default="both")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--output-dir", default="mindpet_prefix_example", help="where checkpoints are written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    base_ckpt = os.path.join(args.output_dir, "pretrained.ckpt")
    pretrain(base_ckpt, args.samples, args.pretrain_epochs)
    methods = ["prefix", "ptuning2"] if args.method == "both" else [args.method]
    for method in methods:
        fine_tune(method, base_ckpt, args.output_dir, args.samples, args.epochs)


if __name__ == "__main__":
    main()
