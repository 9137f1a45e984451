"""The experiment grid behind ``docs/results.md``: every method, a learning-rate grid, several seeds.

Each run is its own process (``finetune.py``), so its peak memory is its own, and runs go one at a time. For each
method: every learning rate of its grid on the first seed, and the best of them (highest held-out accuracy, the
lower rate on a tie) on every further seed. Every method gets the same budget: the same number of rates (AdaLoRA
one more, see ``LR_GRID``), steps, batches and seeds. A short LoRA run in GRAPH and in PYNATIVE mode compares their step times, and short runs of
every method, back to back, compare theirs.
Results are appended as JSON lines to ``--results``; runs already there are skipped, so the grid can resume.

Run (about 85 minutes on 2 shared CPU cores)::

    python examples/bert/run_grid.py --results examples/bert/results/grid_runs.jsonl
"""
import argparse
import json
import os
import subprocess
import sys

FINETUNE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py")
# Two peak learning rates per method, around the values the original papers report for BERT-size models,
# shifted up because the budget here is short.
LR_GRID = {
    "full": (5e-5, 1e-4),
    "lora": (1e-3, 2e-3),
    "frozen_head": (1e-3, 3e-3),
    "adapter": (1e-3, 2e-3),
    "bitfit": (1e-3, 3e-3),
    "low_rank_adapter": (1e-3, 3e-3),
    "ptuning2": (3e-3, 1e-2),
    "lora_rdrop": (1e-3, 2e-3),
    "qlora": (1e-3, 2e-3),
    "prompt_tuning": (1e-2, 3e-2),
    "ptuning": (3e-3, 1e-2),
    "rslora": (5e-4, 1e-3),
    "dora": (1e-3, 2e-3),
    "ia3": (3e-3, 1e-2),
    # LoRA's two rates, and a third: at the same rate AdaLoRA's update grows far slower under Adam (it grows through
    # its singular values, which start at 0, while the penalty holds P and Q orthonormal; docs/results.md).
    "adalora": (1e-3, 2e-3, 1e-2),
}
# Short runs for timing: 20 steps, little to evaluate.
TIMING_ARGS = ["--epochs", "1", "--num-train", "640", "--num-eval", "100"]


def read_runs(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as results:
        return [json.loads(line) for line in results if line.strip()]


def run_once(results_path, output_dir, extra_args):
    command = [sys.executable, FINETUNE, "--output-dir", output_dir, "--result-json", results_path,
               "--skip-reload"] + extra_args
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def best_lr(runs, method, seed):
    candidates = [run for run in runs if run["method"] == method and run["seed"] == seed and run["mode"] == "graph"]
    return max(candidates, key=lambda run: (run["accuracy"], -run["lr"]))["lr"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--results", required=True, help="JSON-lines file the runs are appended to")
    parser.add_argument("--output-dir", default="mindpet_minilm_grid", help="folder of the delta checkpoints")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(LR_GRID), choices=list(LR_GRID))
    args = parser.parse_args()

    def run_if_new(method, lr, seed):
        if not any(run["method"] == method and run["seed"] == seed and run["lr"] == lr and run["mode"] == "graph"
                   for run in read_runs(args.results)):
            run_once(args.results, args.output_dir, ["--method", method, "--lr", str(lr), "--seed", str(seed)])

    def later_seeds_at_best_lr():
        for method in args.methods:
            lr = best_lr(read_runs(args.results), method, first_seed)
            for seed in later_seeds:
                run_if_new(method, lr, seed)

    # Ordered so that an interrupted grid still covers every method with two seeds: the first rate of every
    # method, the same rate on the later seeds, the other rates, then the later seeds again wherever another
    # rate won on the first seed.
    first_seed, later_seeds = args.seeds[0], args.seeds[1:]
    for method in args.methods:
        run_if_new(method, LR_GRID[method][0], first_seed)
    later_seeds_at_best_lr()
    for method in args.methods:
        for lr in LR_GRID[method][1:]:
            run_if_new(method, lr, first_seed)
    modes_results = os.path.splitext(args.results)[0] + "_modes.jsonl"
    if not read_runs(modes_results):
        for mode in ("graph", "pynative"):
            run_once(modes_results, args.output_dir, TIMING_ARGS + ["--method", "lora", "--mode", mode])
    later_seeds_at_best_lr()
    # The grid's step times depend on what else the machine ran at the time; these runs, back to back, compare
    # the methods under the same conditions.
    timing_results = os.path.splitext(args.results)[0] + "_timing.jsonl"
    if not read_runs(timing_results):
        for method in args.methods:
            run_once(timing_results, args.output_dir, TIMING_ARGS + ["--method", method])
    # QLoRA against fp32 LoRA, back to back: step time and the bytes of the frozen base weights.
    qlora_results = os.path.splitext(args.results)[0] + "_qlora_timing.jsonl"
    if "qlora" in args.methods and not read_runs(qlora_results):
        for method in ("lora", "qlora"):
            run_once(qlora_results, args.output_dir, TIMING_ARGS + ["--method", method])


if __name__ == "__main__":
    main()
