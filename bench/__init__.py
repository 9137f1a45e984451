"""Benchmarks of the delta-tuning methods on MindSpore: trainable share, step time, peak memory, checkpoint size,
what merging LoRA buys at inference, and the MiniLM example's step side by side with HF PEFT on torch.

The machines this runs on are shared and noisy, so every reported figure is a ratio of two quantities measured in
the same run (step times of interleaved runs, peak memory of sibling processes, file sizes), never an absolute
time. Run ``python -m bench`` (about 8 minutes on 2 CPU cores) or ``python -m bench --quick``; see
``docs/benchmarks.md``.
"""
import os
import sys

# examples/ is not a package of the distribution: the benchmarks use the example model and its method table
# (examples/bert/methods.py) from the source tree.
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
if EXAMPLES_DIR not in sys.path:
    sys.path.insert(0, EXAMPLES_DIR)
