"""Benchmarks of the delta-tuning methods on MindSpore: trainable share, step time, peak memory, checkpoint size
and what merging LoRA buys at inference.

The machines this runs on are shared and noisy, so every reported figure is a ratio of two quantities measured in
the same run (step times of interleaved runs, peak memory of sibling processes, file sizes), never an absolute
time. Run ``python -m bench`` (about 10 minutes on 2 CPU cores) or ``python -m bench --quick``; see
``docs/benchmarks.md``.
"""
