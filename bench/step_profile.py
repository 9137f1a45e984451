"""Where a training step of the MiniLM example spends its time, full fine-tuning against LoRA and the floor
(:data:`bench.minilm.PEER_METHODS`), from MindSpore's profiler: ``python -m bench.step_profile [--quick] [--steps N]``.

Each network (the comparison's shapes, :mod:`bench.minilm`; AdamW) is compiled, warmed up and then profiled on its
own for ``--steps`` steps. Every operator of the compiled graph is put in one group (the Dense products, attention,
GELU, LayerNorm and its gradient, dropout, the optimizer, ...) by its type and scope; the table gives each group's
milliseconds per step for each network. The operators of a step run partly in parallel on the CPU's cores, so the
summed operator time exceeds the step's wall time; the groups show where the networks differ, not the
wall-clock ratio.
"""
import argparse
import collections

import mindspore as ms

from bench import presets
from bench.minilm import PEER_METHODS
from bench.op_profile import profile_rows
from bench.workloads import build_workload

# (group, test on (operator type, full scope name)); the first group that matches takes the operator.
GROUPS = (
    ("optimizer (AdamW)", lambda op, name: op.startswith("Adam") or "optimizer" in name.lower()),
    ("Dense products (MatMul), forward and backward", lambda op, name: op == "MatMul"),
    ("Dense bias gradients (BiasAddGrad)", lambda op, name: op == "BiasAddGrad"),
    ("embedding gradients (UnsortedSegmentSum)", lambda op, name: op == "UnsortedSegmentSum"),
    ("attention products (BatchMatMul)", lambda op, name: op == "BatchMatMul"),
    ("exact GELU and its gradient (Erf, Div, Pow, Exp, Mul, Neg)", lambda op, name: "GELU" in name),
    ("LayerNorm gradient (LayerNormGrad: input, gamma and beta at once)", lambda op, name: op == "LayerNormGrad"),
    ("LayerNorm", lambda op, name: op == "LayerNorm"),
    ("dropout and its gradient", lambda op, name: op in ("Dropout", "DropoutGrad")),
    ("transposes (attention heads)", lambda op, name: op == "Transpose"),
    ("LoRA branch: scale and add (Mul, Add)", lambda op, name: "LoRADense" in name and op in ("Mul", "Add")),
    ("other elementwise and reductions", lambda op, name: True),
)


def _group(op_type, name):
    return next(group for group, matches in GROUPS if matches(op_type, name))


def step_groups(rows, steps):
    """``{group: ms per step}`` and ``{group: operators per step}`` of one profiled network."""
    times, counts = collections.Counter(), collections.Counter()
    for row in rows:
        name = row["full_op_name"]
        op_type = name.rsplit("/", 1)[-1].split("-op")[0]
        group = _group(op_type, name)
        times[group] += float(row["op_total_time(ms)"]) / steps
        counts[group] += int(row["op_occurrences"]) / steps
    return dict(times), dict(counts)


def profile_minilm(preset, steps):
    """Profile each of :data:`bench.minilm.PEER_METHODS` on the comparison's shapes, one at a time; returns
    ``{method: {'ms': {group: ms per step}, 'ops': {group: operators per step}}}``."""
    profiled = {}
    for method in PEER_METHODS:
        run = build_workload("minilm", method, preset).train_runner()
        for _ in range(preset.warmup_steps + 1):
            run()
        times, counts = step_groups(profile_rows(run, steps), steps)
        profiled[method] = {"ms": times, "ops": counts}
    return profiled


def markdown(profiled):
    """The groups as a Markdown table, largest first in full fine-tuning, with the totals."""
    methods = [method for method in PEER_METHODS if method in profiled]
    full = profiled["full"]
    groups = sorted({group for entry in profiled.values() for group in entry["ms"]},
                    key=lambda group: -full["ms"].get(group, 0.0))
    lines = ["| Operators | " + " | ".join(f"{method}: ms per step (ops)" for method in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for group in groups:
        cells = [f"{profiled[method]['ms'].get(group, 0.0):.1f} ({profiled[method]['ops'].get(group, 0):.0f})"
                 for method in methods]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    totals = {method: sum(profiled[method]["ms"].values()) for method in methods}
    lines.append("| **all operators** (over full) | " + " | ".join(
        f"{totals[method]:.1f} ({totals[method] / totals['full']:.3f})" for method in methods) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny BERT of the quick preset")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps of each network (default 5)")
    args = parser.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    print(markdown(profile_minilm(presets.PRESETS["quick" if args.quick else "full"], args.steps)))


if __name__ == "__main__":
    main()
