"""``python -m bench.width_check``: how much copies of one MLP differ in speed at a power-of-two width and next to it.

Builds ``COPIES`` copies of the full fine-tuning MLP of the full preset at each width, times them interleaved and
prints, per width, each copy's median step time and the slowest over the fastest. Not part of ``python -m bench``;
``docs/benchmarks.md`` quotes it to explain the copy spread of the MLP at width 1024.
"""
import dataclasses
import statistics

import mindspore as ms

from bench.presets import PRESETS
from bench.timing import instance_key, interleave
from bench.workloads import build_workload

WIDTHS = (1024, 1000)
COPIES = 4
ROUNDS = 11


def main():
    ms.set_context(mode=ms.GRAPH_MODE)
    full = PRESETS["full"]
    for width in WIDTHS:
        preset = dataclasses.replace(full, mlp_width=width)
        runners = {instance_key("full", copy): build_workload("mlp", "full", preset).train_runner()
                   for copy in range(COPIES)}
        per_step = interleave(runners, ROUNDS, full.mlp_steps_per_round, full.warmup_steps)
        medians = sorted(1e3 * statistics.median(times) for times in per_step.values())
        print(f"width {width}: copies' median ms per step {', '.join(f'{m:.2f}' for m in medians)}; "
              f"slowest / fastest {medians[-1] / medians[0]:.3f}", flush=True)


if __name__ == "__main__":
    main()
