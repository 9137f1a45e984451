"""Turn the JSON lines written by ``run_grid.py`` into the Markdown tables of ``docs/results.md``.

For each method the learning rate is the one with the best held-out accuracy on the first seed; the main table
averages every seed run at that rate. Step time comes from the short back-to-back timing runs, relative to the
full fine-tuning run of the same batch (the grid's own step times depend on what else the shared machine ran
meanwhile); peak memory is the smallest over the method's grid runs, over full fine-tuning's among runs with the
same evaluation batch (which sets the evaluation graph's memory). QLoRA is compared with float32 LoRA in a table of
its own, with the bytes of the encoder's frozen Dense weights and the step time of a back-to-back LoRA/QLoRA pair of
short runs.

Run::

    python examples/bert/summarize.py examples/bert/results/grid_runs.jsonl
"""
import argparse
import json
import os

import numpy as np

# Methods whose step time and memory are compared with LoRA's in their own back-to-back runs.
PAIRED_WITH_LORA = ("qlora",)
METHOD_ORDER = ("full", "frozen_head", "lora", "lora_rdrop", "rslora", "dora", "qlora", "adalora", "adapter",
                "low_rank_adapter", "ia3", "bitfit", "ptuning2", "prompt_tuning", "ptuning")


def read_runs(path):
    with open(path, encoding="utf-8") as results:
        return [json.loads(line) for line in results if line.strip()]


def chosen_runs(runs, method, first_seed):
    """The runs of `method` at the rate that did best on `first_seed`, and that rate."""
    tuning = [run for run in runs if run["method"] == method and run["seed"] == first_seed]
    best = max(tuning, key=lambda run: (run["accuracy"], -run["lr"]))
    return [run for run in runs if run["method"] == method and run["lr"] == best["lr"]], best["lr"]


def _eval_batch(run):
    """The evaluation batch of a run; runs recorded before the field existed evaluated 100 snippets per call."""
    return run.get("eval_batch_size", 100)


def memory_ratio_text(runs, method):
    """The method's smallest peak RSS over full fine-tuning's, among runs with the same evaluation batch (which
    sets the evaluation graph's memory); without such a full run there is nothing to compare with."""
    batches = {_eval_batch(run) for run in runs if run["method"] == method}
    full = [run["peak_rss_mb"] for run in runs if run["method"] == "full" and _eval_batch(run) in batches]
    if not full:
        return "no full run with its eval batch"
    method_rss = [run["peak_rss_mb"] for run in runs if run["method"] == method and _eval_batch(run) in batches]
    return f"{min(method_rss) / min(full):.2f}"


def _percent(value):
    return f"{value:.2f}%" if value >= 0.1 else f"{value:.4f}%"


def step_ratios(timing_runs):
    """Each method's median step time over that of the ``full`` run that precedes it in `timing_runs`.

    The timing runs come in back-to-back batches, each led by a ``full`` run; a ratio is taken within one batch,
    under one load. A method timed in several batches keeps the ratio of the first: a later batch that times it
    again beside new methods (as a reference for them) does not change its row.
    """
    ratios, full_seconds = {}, None
    for run in timing_runs:
        if run["method"] == "full":
            full_seconds = run["step_median_seconds"]
        if full_seconds is not None:
            ratios.setdefault(run["method"], run["step_median_seconds"] / full_seconds)
    return ratios


def main_table(runs, timing_runs, first_seed):
    methods = [method for method in METHOD_ORDER if any(run["method"] == method for run in runs)]
    chosen = {method: chosen_runs(runs, method, first_seed) for method in methods}
    ratios = step_ratios(timing_runs)
    lines = ["| method | held-out accuracy, mean (min-max) | seeds | lr | trainable | step time / full | "
             "peak RSS / full | delta checkpoint |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in methods:
        method_runs, lr = chosen[method]
        accuracies = [run["accuracy"] for run in method_runs]
        seeds = ",".join(str(run["seed"]) for run in sorted(method_runs, key=lambda run: run["seed"]))
        # QLoRA ran after later memory savings of the example, so its time and memory are compared with LoRA's in
        # back-to-back runs of the same code instead (qlora_table).
        paired = method in PAIRED_WITH_LORA
        # A method without a timing run yet has no comparable step time.
        step_ratio = "-" if paired else f"{ratios[method]:.2f}" if method in ratios else "no timing run"
        memory_ratio = "-" if paired else memory_ratio_text(runs, method)
        size = method_runs[0]["delta_bytes"]
        size_text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        lines.append(f"| {method} | {np.mean(accuracies):.4f} ({min(accuracies):.4f}-{max(accuracies):.4f}) | "
                     f"{seeds} | {lr:g} | {_percent(method_runs[0]['trainable_percent'])} | {step_ratio} | "
                     f"{memory_ratio} | {size_text} |")
    return "\n".join(lines)


def qlora_table(runs, pair_runs, first_seed):
    """QLoRA against float32 LoRA: accuracy per seed at each one's chosen rate, the bytes of the encoder's frozen
    Dense weights, and the step time and peak memory of the back-to-back timing pair."""
    pair = {run["method"]: run for run in pair_runs}
    lines = ["| method | lr | accuracy per seed | mean | encoder Dense weights | step time / LoRA | "
             "peak RSS (MB), timing run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for method in ("lora", "qlora"):
        method_runs, lr = chosen_runs(runs, method, first_seed)
        accuracies = ", ".join(f"{run['seed']}: {run['accuracy']:.4f}"
                               for run in sorted(method_runs, key=lambda run: run["seed"]))
        mean = np.mean([run["accuracy"] for run in method_runs])
        timing = pair[method]
        step_ratio = timing["step_median_seconds"] / pair["lora"]["step_median_seconds"]
        lines.append(f"| {method} | {lr:g} | {accuracies} | {mean:.4f} | {timing['base_weight_bytes'] / 1e6:.2f} MB | "
                     f"{step_ratio:.2f} | {timing['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def grid_table(runs):
    lines = ["| method | lr | seed | accuracy | median step (s) | train wall (s) | peak RSS (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    order = {method: index for index, method in enumerate(METHOD_ORDER)}
    for run in sorted(runs, key=lambda run: (order[run["method"]], run["lr"], run["seed"])):
        lines.append(f"| {run['method']} | {run['lr']:g} | {run['seed']} | {run['accuracy']:.4f} | "
                     f"{run['step_median_seconds']:.2f} | {run['train_seconds']:.0f} | {run['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def timing_table(runs):
    lines = ["| method | mode | steps | median step (s) | first step, with compilation (s) |",
             "| --- | --- | --- | --- | --- |"]
    for run in runs:
        lines.append(f"| {run['method']} | {run['mode']} | {run['steps']} | {run['step_median_seconds']:.2f} | "
                     f"{run['first_step_seconds']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("results", help="the JSON-lines file of run_grid.py")
    parser.add_argument("--first-seed", type=int, default=0, help="the seed the learning rates were chosen on")
    args = parser.parse_args()
    runs = [run for run in read_runs(args.results) if run["mode"] == "graph"]
    stem = os.path.splitext(args.results)[0]
    timing_runs = read_runs(stem + "_timing.jsonl")
    print(main_table(runs, timing_runs, args.first_seed), end="\n\n")
    print(grid_table(runs), end="\n\n")
    print(timing_table(timing_runs + read_runs(stem + "_modes.jsonl")))
    qlora_pair = stem + "_qlora_timing.jsonl"
    if any(run["method"] == "qlora" for run in runs) and os.path.exists(qlora_pair):
        print("", qlora_table(runs, read_runs(qlora_pair), args.first_seed), sep="\n")


if __name__ == "__main__":
    main()
