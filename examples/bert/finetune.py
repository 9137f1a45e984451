"""Fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes sentiment with one mindpet method, offline on a CPU.

The steps a user takes, in order:

1. Build the plain model (``BertClassifier(config, 2)``; P-Tuning v2 adds its prefix encoder here) and load the
   pretrained weights; every weight must map.
2. ``apply_method``: ``get_delta_model(net, LoraConfig(target_modules=['query', 'value'], ...))`` for LoRA and the
   adapters, ``freeze_delta`` for BitFit and P-Tuning v2, before building the optimizer; prompt tuning and P-tuning
   v1 first put their config's cell into the model's embeddings hook (prompt tuning's prompt starts from the word
   embeddings of ``--prompt-init-text``). The trainable summary is printed.
3. ``Model.train`` with ``TrainableParamsCheckPoint`` (saves only the trained parameters), ``LossMonitor`` and
   ``TimeMonitor``.
4. Accuracy on held-out snippets, then the delta is reloaded with ``load_delta_checkpoint`` into a freshly built
   pretrained model with the same method applied, which must give the same logits.

Run (defaults: LoRA r=8 on query and value, 2,400 training snippets, 2 epochs of batch 32 = 150 steps, 1,000
held-out snippets, about 4 minutes on 2 CPU cores)::

    python examples/bert/finetune.py
    python examples/bert/finetune.py --method adapter --seed 1 --result-json results.jsonl

``--method qlora`` quantizes every Dense layer of the encoder to NF4 (``quantize_base``) before LoRA goes on query and
value; the run records the bytes of the encoder's frozen Dense weights (``base_weight_bytes``) for every method.
``--method lora_rdrop`` trains LoRA with the R-Drop loss (``RDropLoss`` on ``rdrop_repeat``-ed batches): every
step runs the forward pass on twice the batch. ``--method adalora`` trains AdaLoRA (rank 12 pruned to an average of 8
on query and value) with its recipe: ``AdaLoraOrthogonalLoss``, ``AdaLoraTrainOneStepCell`` and ``AdaLoraCallback``;
its result line records the final rank of each layer (``final_ranks``).

Two runs with the same ``--seed`` differ slightly unless ``--deterministic`` is given (see
:func:`make_deterministic`); with it they are bit-identical, and slower.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np

if __package__ in (None, ""):
    # Run as a script: make the ``bert`` package (this folder) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402
from mindspore.dataset import NumpySlicesDataset  # noqa: E402
from mindspore.train import Callback, CheckpointConfig, LossMonitor, Model, TimeMonitor  # noqa: E402

from bert.data import encode_reviews, load_tokenizer, read_reviews, split_reviews, text_token_ids  # noqa: E402
from bert.methods import METHODS, QUANT_BLOCK_SIZE, apply_method, model_options  # noqa: E402
from bert.modeling import BertClassifier, BertConfig  # noqa: E402
from bert.weights import load_pretrained, model_file, read_pretrained  # noqa: E402
from mindpet import AdaLoraCallback, TrainableParamsCheckPoint, load_delta_checkpoint, trainable_summary  # noqa: E402
from mindpet.delta import RDropLoss, rdrop_repeat  # noqa: E402
from mindpet.delta.adalora import AdaLoraOrthogonalLoss, AdaLoraTrainOneStepCell  # noqa: E402

NUM_LABELS = 2
# In GRAPH mode each evaluated network compiles a graph whose memory grows with the batch: on MiniLM about 160 MB
# at 16 snippets and 900 MB at 100, at the same speed per snippet (docs/benchmarks.md, "Memory").
EVAL_BATCH_SIZE = 16
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
WARMUP_SHARE = 0.1
# The better peak learning rate of each method's two-rate grid (docs/results.md); for rslora, dora and ia3 the first
# rate of their grid (run_grid.py), as their second rates have not been run yet; AdaLoRA at LoRA's rate.
DEFAULT_LRS = {"full": 5e-5, "frozen_head": 3e-3, "lora": 1e-3, "lora_rdrop": 1e-3, "adapter": 1e-3,
               "low_rank_adapter": 1e-3, "bitfit": 1e-3, "ptuning2": 1e-2, "qlora": 1e-3, "prompt_tuning": 1e-2,
               "ptuning": 3e-3, "rslora": 5e-4, "dora": 1e-3, "ia3": 3e-3, "adalora": 1e-3}
# Prompt tuning's default init text: a short description of the task, whose word embeddings start the prompt.
PROMPT_INIT_TEXT = "Is this movie review positive or negative?"


class ClassifierWithLoss(nn.Cell):
    """The classifier and its loss: cross-entropy, or with `rdrop_alpha` the R-Drop loss on a doubled batch."""

    def __init__(self, net, rdrop_alpha=None):
        super().__init__(auto_prefix=False)
        self.net = net
        self.use_rdrop = rdrop_alpha is not None
        self.rdrop_alpha = rdrop_alpha
        self.loss = RDropLoss() if self.use_rdrop else nn.CrossEntropyLoss()

    def construct(self, input_ids, attention_mask, labels):
        if self.use_rdrop:
            input_ids, attention_mask, labels = rdrop_repeat(input_ids, attention_mask, labels)
            return self.loss(self.net(input_ids, attention_mask), labels, self.rdrop_alpha)
        return self.loss(self.net(input_ids, attention_mask), labels)


class StepTimer(Callback):
    """Wall time of every training step; the first includes graph compilation."""

    def __init__(self):
        super().__init__()
        self.step_seconds = []
        self._start = None

    def on_train_step_begin(self, run_context):
        self._start = time.perf_counter()

    def on_train_step_end(self, run_context):
        self.step_seconds.append(time.perf_counter() - self._start)


def make_deterministic():
    """Make runs with the same seed bit-identical: deterministic kernels, and one CPU kernel thread.

    The seeds alone are not enough on CPU. MindSpore's CPU Dropout kernel splits each tensor into chunks that its
    threads fill from one shared random engine, so which element gets which draw depends on thread timing. Its
    launcher runs the first five calls of each kernel as one chunk and then starts splitting, so two runs agree
    for five steps and drift apart from the sixth. With one kernel thread the draws come in a fixed order.
    ``set_deterministic`` covers the GPU and Ascend kernels. Call it before the first operator runs.
    """
    ms.set_deterministic(True)
    ms.device_context.cpu.op_tuning.threads_num(1)


def warmup_linear_decay(peak_lr, total_steps):
    """Per-step learning rates: linear warm-up over the first 10% of the steps, then linear decay to 0."""
    warmup_steps = max(1, int(WARMUP_SHARE * total_steps))
    steps = np.arange(total_steps, dtype=np.float64)
    warmup = (steps + 1) / warmup_steps
    decay = (total_steps - steps) / max(1, total_steps - warmup_steps)
    return np.minimum(warmup, decay).clip(0.0, 1.0).astype(np.float32) * peak_lr


def build_model(config, method, weights=None, pre_seq_len=16, **hyperparameters):
    """A ``BertClassifier``, pretrained weights loaded when `weights` is given, with `method` applied and frozen.

    Returns:
        tuple of the network and the sorted names of its trainable parameters.
    """
    net = BertClassifier(config, NUM_LABELS, **model_options(method, pre_seq_len))
    if weights is not None:
        load_pretrained(net, weights)
    return net, apply_method(net, method, **hyperparameters)


def train(net, method, train_data, lr, epochs, batch_size, seed, output_dir, rdrop_alpha=None, print_every=25):
    """Train the trainable parameters of `net` with ``Model.train``; the delta checkpoint goes to `output_dir`.

    Args:
        net (BertClassifier): A frozen network (see :func:`build_model`).
        method (str): The method's name, for the checkpoint prefix.
        train_data (EncodedReviews): The training snippets.
        lr (float): Peak learning rate of AdamW (warm-up then linear decay, no weight decay).
        epochs (int): Passes over `train_data`.
        batch_size (int): Snippets per step; the last incomplete batch of an epoch is dropped.
        seed (int): Seed of the shuffle order.
        output_dir (str): Folder of the delta checkpoint.
        rdrop_alpha (float, optional): Train with R-Drop of this weight. Default: ``None``, plain cross-entropy.
        print_every (int): Steps between loss lines. Default: 25.

    Returns:
        tuple of the delta checkpoint path, the step wall times in seconds, and the training wall time.
    """
    ms.dataset.config.set_seed(seed)
    dataset = NumpySlicesDataset(train_data.columns(), shuffle=True).batch(batch_size, drop_remainder=True)
    steps_per_epoch = dataset.get_dataset_size()
    total_steps = epochs * steps_per_epoch
    optimizer = nn.AdamWeightDecay(net.trainable_params(), Tensor(warmup_linear_decay(lr, total_steps)),
                                   weight_decay=0.0)
    network = ClassifierWithLoss(net, rdrop_alpha)
    allocator = []
    if method == "adalora":
        # AdaLoRA's recipe: the orthogonality penalty joins the loss, the training cell tracks the importance in the
        # graph, and the callback reallocates the rank budget (docs/adalora.md).
        config = net.delta_configs["adalora"]
        allocator = [AdaLoraCallback(net, config)]
        model = Model(AdaLoraTrainOneStepCell(AdaLoraOrthogonalLoss(network, config.orth_reg_weight), optimizer,
                                              allocator[0]))
    else:
        model = Model(network, optimizer=optimizer)
    os.makedirs(output_dir, exist_ok=True)
    delta_saver = TrainableParamsCheckPoint(
        prefix=f"{method}_lr{lr:g}_seed{seed}", directory=output_dir,
        config=CheckpointConfig(save_checkpoint_steps=total_steps, keep_checkpoint_max=1))
    timer = StepTimer()
    callbacks = allocator + [delta_saver, LossMonitor(per_print_times=print_every),
                             TimeMonitor(data_size=steps_per_epoch), timer]
    start = time.perf_counter()
    model.train(epochs, dataset, callbacks=callbacks, dataset_sink_mode=False)
    return delta_saver.latest_ckpt_file_name, timer.step_seconds, time.perf_counter() - start


def predict(net, data, batch_size=EVAL_BATCH_SIZE):
    """Logits of `net` in eval mode for every snippet of `data`, shape ``(len(data), num_labels)``.

    The last batch is padded to `batch_size` with copies of its first row, so one compiled graph serves all.
    """
    net.set_train(False)
    logits = []
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data)))
        padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
        out = net(Tensor(data.input_ids[padded]), Tensor(data.attention_mask[padded])).asnumpy()
        logits.append(out[:len(rows)])
    return np.concatenate(logits)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def add_memory_options(parser):
    """The options that trade memory for time (docs/benchmarks.md, "Memory")."""
    parser.add_argument("--eval-batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help="snippets per evaluation call; in GRAPH mode the evaluation graph's memory grows with "
                             f"it (default {EVAL_BATCH_SIZE})")
    parser.add_argument("--compile-cache", metavar="DIR",
                        help="keep MindSpore's compiled graphs in DIR: a later run with the same settings skips most "
                             "of the compilation (time and about 200 MB of peak memory)")


def configure_compile_cache(directory):
    """Let MindSpore save the front end's compiled graphs under `directory` and load them in later runs."""
    if directory:
        ms.set_context(enable_compile_cache=True, compile_cache_path=directory)


def check_reload(fresh, delta_path, eval_data, logits, batch_size, result):
    """Load the saved delta into `fresh` (a newly built model) and record in `result` how well it reproduces the
    trained model's `logits`; a different accuracy is an error, not a footnote."""
    load_delta_checkpoint(fresh, delta_path)
    reloaded_logits = predict(fresh, eval_data, batch_size)
    result["reloaded_accuracy"] = accuracy(reloaded_logits, eval_data.labels)
    result["reload_max_abs_logit_diff"] = float(np.max(np.abs(reloaded_logits - logits)))
    print(f"reloaded the delta into a fresh model: accuracy {result['reloaded_accuracy']:.4f}, largest logit "
          f"difference {result['reload_max_abs_logit_diff']:.2e}")
    if result["reloaded_accuracy"] != result["accuracy"]:
        raise RuntimeError("The reloaded delta does not reproduce the trained model's accuracy.")


def finish_run(result, args):
    """Add the peak memory and evaluation batch to `result`, print the run summary, append the JSON line that
    ``--result-json`` asks for, and return `result`."""
    result["peak_rss_mb"] = peak_rss_mb()
    result["eval_batch_size"] = args.eval_batch_size
    print_run_summary(result)
    if args.result_json:
        with open(args.result_json, "a", encoding="utf-8") as result_file:
            result_file.write(json.dumps(result) + "\n")
    return result


def add_run_options(parser, output_dir):
    """The options every example run script shares: the execution mode, where the delta checkpoints and the result
    line go, the reload check, and determinism. `output_dir` is the default checkpoint folder."""
    parser.add_argument("--mode", choices=sorted(MODES), default="graph", help="MindSpore execution mode")
    parser.add_argument("--output-dir", default=output_dir, help="folder of the delta checkpoints")
    parser.add_argument("--result-json", help="append one JSON line with the results to this file")
    parser.add_argument("--skip-reload", action="store_true", help="skip the reload check (saves a compile)")
    parser.add_argument("--deterministic", action="store_true",
                        help="bit-identical runs for a seed: deterministic kernels, one CPU kernel thread (slower)")


def start_run(args):
    """Apply the options of :func:`add_run_options` and :func:`add_memory_options`, and seed every generator."""
    if args.deterministic:
        make_deterministic()
    ms.set_context(mode=MODES[args.mode])
    configure_compile_cache(args.compile_cache)
    ms.set_seed(args.seed)
    np.random.seed(args.seed)


def base_weight_bytes(net):
    """The bytes of the encoder's frozen Dense weights as stored: float32 Parameters, or the NF4 codes and scales of
    a quantized base (``qlora``)."""
    return sum(param.nbytes for param in net.get_parameters() if param.name.startswith("bert.encoder.")
               and not param.requires_grad and (param.name.endswith(".weight") or ".weight." in param.name))


def peak_rss_mb():
    """The peak resident memory of this process so far, in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_run_summary(result):
    """The last line of a run: the trainable share, the training step time and the process's peak memory."""
    print(f"summary: {result['trainable_percent']:.2f}% of {result['total_params']:,} parameters trainable; "
          f"median training step {result['step_median_seconds']:.3f} s over {result['steps']} steps (the first, "
          f"with compilation, {result['first_step_seconds']:.1f} s); peak RSS {result['peak_rss_mb']:,.0f} MB")


def method_options(args, tokenizer):
    """The methods' hyperparameters from the command line; `tokenizer` encodes prompt tuning's init text."""
    prompt_init = {"prompt_tuning_init": "RANDOM"}
    if args.prompt_init_text:
        prompt_init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": args.prompt_init_text,
                       "prompt_tuning_init_token_ids": text_token_ids(tokenizer, args.prompt_init_text)}
    return {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "bottleneck_size": args.bottleneck_size,
            "reduction_factor": args.reduction_factor, "pre_seq_len": args.pre_seq_len,
            "num_virtual_tokens": args.num_virtual_tokens, "encoder_hidden_size": args.encoder_hidden_size,
            "encoder_reparameterization_type": args.encoder_type, **prompt_init,
            "quant_block_size": args.quant_block_size}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_memory_options(parser)
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the method's best in the grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization, dropout and shuffling")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=2400, help="training snippets")
    parser.add_argument("--num-eval", type=int, default=1000, help="held-out snippets")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per snippet after truncation")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--bottleneck-size", type=int, default=64, help="adapter width")
    parser.add_argument("--reduction-factor", type=int, default=8, help="low-rank adapter: width = hidden / this")
    parser.add_argument("--pre-seq-len", type=int, default=16, help="P-Tuning v2 prefix length")
    parser.add_argument("--quant-block-size", type=int, default=QUANT_BLOCK_SIZE,
                        help="qlora: elements per NF4 absmax block")
    parser.add_argument("--num-virtual-tokens", type=int, default=20,
                        help="prompt tuning and P-tuning v1: virtual tokens prepended to every snippet")
    parser.add_argument("--prompt-init-text", default=PROMPT_INIT_TEXT,
                        help="prompt tuning: the text whose word embeddings initialise the prompt ('' for random)")
    parser.add_argument("--encoder-hidden-size", type=int, default=128, help="P-tuning v1: encoder hidden size")
    parser.add_argument("--encoder-type", choices=["MLP", "LSTM"], default="MLP", help="P-tuning v1: encoder")
    parser.add_argument("--rdrop-alpha", type=float, default=4.0, help="R-Drop weight (method lora_rdrop)")
    add_run_options(parser, output_dir="mindpet_minilm")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LRS[args.method]
    return args


def main(argv=None):
    args = parse_args(argv)
    start_run(args)

    tokenizer = load_tokenizer(model_file("tokenizer.json"), args.max_length)
    train_reviews, eval_reviews = split_reviews(read_reviews(), args.num_train, args.num_eval)
    train_data, eval_data = encode_reviews(tokenizer, train_reviews), encode_reviews(tokenizer, eval_reviews)
    config = BertConfig.from_json(model_file("config.json"))

    # The pretrained tensors are read again for the reload check rather than kept: 90 MB less during training.
    options = {**method_options(args, tokenizer), "total_step": args.epochs * (len(train_data) // args.batch_size)}
    net, _ = build_model(config, args.method, read_pretrained(), **options)
    summary = trainable_summary(net)
    trainable, total = summary.trainable, summary.total
    print(f"method {args.method}: {summary}; the encoder's frozen Dense weights take "
          f"{base_weight_bytes(net) / 1e6:.2f} MB")
    rdrop_alpha = args.rdrop_alpha if args.method == "lora_rdrop" else None
    delta_path, step_seconds, train_seconds = train(net, args.method, train_data, args.lr, args.epochs,
                                                    args.batch_size, args.seed, args.output_dir, rdrop_alpha)
    logits = predict(net, eval_data, args.eval_batch_size)
    acc = accuracy(logits, eval_data.labels)
    result = {"method": args.method, "seed": args.seed, "lr": args.lr, "accuracy": acc,
              "trainable_params": trainable, "total_params": total, "trainable_percent": 100 * trainable / total,
              "base_weight_bytes": base_weight_bytes(net),
              "steps": len(step_seconds), "train_seconds": train_seconds,
              "step_median_seconds": float(np.median(step_seconds)), "first_step_seconds": step_seconds[0],
              "delta_path": os.path.abspath(delta_path), "delta_bytes": os.path.getsize(delta_path),
              "mode": args.mode, "deterministic": args.deterministic, "epochs": args.epochs,
              "batch_size": args.batch_size,
              "num_train": args.num_train, "num_eval": args.num_eval, "max_length": args.max_length}
    if args.method == "adalora":
        result["final_ranks"] = net.delta_configs["adalora"].final_ranks()
    print(f"held-out accuracy {acc:.4f} on {len(eval_data)} snippets; {result['trainable_percent']:.2f}% "
          f"trainable; delta checkpoint {result['delta_path']} ({result['delta_bytes'] / 1e6:.2f} MB)")

    if not args.skip_reload:
        fresh, _ = build_model(config, args.method, read_pretrained(), **options)
        check_reload(fresh, delta_path, eval_data, logits, args.eval_batch_size, result)

    return finish_run(result, args)


if __name__ == "__main__":
    main()
