"""The Markdown tables of the multilingual-e5-small section of ``docs/results.md``, from ``finetune.py``'s JSON lines.

For each method the learning rate is the one with the best held-out accuracy on the first seed
(``examples/bert/summarize.py``'s rule); the main table lists every seed at that rate.

Run::

    python examples/e5/summarize.py examples/e5/results/grid_runs.jsonl
"""
import argparse
import os
import sys

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bert.summarize import chosen_runs, read_runs  # noqa: E402

METHOD_ORDER = ("frozen_head", "lora", "qlora")
# What each method keeps of the 72 encoder matrices.
BASE_STORAGE = {"frozen_head": "float32", "lora": "float32", "qlora": "NF4"}


def main_table(runs, first_seed):
    lines = ["| method | accuracy per seed | mean | lr | trainable | median step (s) | encoder matrices |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for method in (method for method in METHOD_ORDER if any(run["method"] == method for run in runs)):
        method_runs, lr = chosen_runs(runs, method, first_seed)
        method_runs = sorted(method_runs, key=lambda run: run["seed"])
        per_seed = ", ".join(f"{run['accuracy']:.3f} (seed {run['seed']})" for run in method_runs)
        steps = np.median([run["step_median_seconds"] for run in method_runs])
        lines.append(f"| {method} | {per_seed} | {np.mean([run['accuracy'] for run in method_runs]):.4f} | {lr:g} | "
                     f"{method_runs[0]['trainable_percent']:.4f}% | {steps:.2f} | "
                     f"{method_runs[0]['encoder_matrix_bytes'] / 1e6:.1f} MB {BASE_STORAGE[method]} |")
    return "\n".join(lines)


def run_table(runs):
    lines = ["| method | lr | seed | steps | accuracy | median step (s) | first step (s) | peak RSS (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {method: index for index, method in enumerate(METHOD_ORDER)}
    for run in sorted(runs, key=lambda run: (order[run["method"]], run["steps"], run["lr"], run["seed"])):
        lines.append(f"| {run['method']} | {run['lr']:g} | {run['seed']} | {run['steps']} | {run['accuracy']:.4f} | "
                     f"{run['step_median_seconds']:.2f} | {run['first_step_seconds']:.1f} | "
                     f"{run['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("results", help="the JSON-lines file finetune.py --result-json appended to")
    parser.add_argument("--first-seed", type=int, default=0, help="the seed the learning rates were chosen on")
    parser.add_argument("--steps", type=int, help="only the runs of this many steps (default: all)")
    args = parser.parse_args()
    runs = [run for run in read_runs(args.results) if args.steps in (None, run["steps"])]
    print(main_table(runs, args.first_seed), end="\n\n")
    print(run_table(runs))


if __name__ == "__main__":
    main()
