"""Where the resident memory of a MiniLM training process goes, phase by phase:
``python -m bench.memory_phases --method lora [--batch 32] [--context JSON] [--eval-batch N --eval-mode graph]``.

One process builds the comparison's network (:mod:`bench.minilm`, AdamW), compiles its training step, runs it, and
optionally evaluates; it prints one JSON line with its peak resident memory (MiB, :func:`bench.rss.peak_rss_kib`) after importing MindSpore, after building,
after compiling (``TrainOneStepCell.compile``, GRAPH mode only), after the first step, after a few more, and after the evaluation
call; with ``MS_DEV_RUNTIME_CONF="memory_statistics:True"`` MindSpore also prints its memory pool's peak. Run
one process per setting: a high-water mark never comes down. ``--context`` passes MindSpore context settings,
such as ``'{"jit_config": {"jit_level": "O0"}}'``, ``'{"memory_optimize_level": "O1"}'`` or
``'{"enable_compile_cache": true, "compile_cache_path": "/tmp/cache"}'``.
"""
import argparse
import dataclasses
import json
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor

from bench.minilm import minilm_shape
from bench.presets import PRESETS
from bench.rss import peak_rss_kib
from bench.training import train_step_cell
from bench.workloads import build_workload

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


def _peak_mib():
    return peak_rss_kib() / 1024


def measure_phases(method, preset, batch, eval_batch=None, eval_mode="graph", steps=3):
    """The high-water mark after each phase (see the module doc), in MiB, and the first step's seconds."""
    phases = {"import": _peak_mib()}
    preset = dataclasses.replace(preset, minilm_batch=batch)
    workload = build_workload("minilm", method, preset)
    step = train_step_cell(workload.net, workload.loss_fn, workload.optimizer)
    args = tuple(workload.inputs) + (workload.target,)
    phases["built"] = _peak_mib()
    start = time.perf_counter()
    if ms.get_context("mode") == ms.GRAPH_MODE:
        step.compile(*args)
        phases["compiled"] = _peak_mib()
    step(*args).asnumpy()
    phases["first_step_s"] = time.perf_counter() - start
    phases["first_step"] = _peak_mib()
    for _ in range(steps):
        step(*args).asnumpy()
    phases["trained"] = _peak_mib()
    if eval_batch:
        shape = minilm_shape(preset)
        rng = np.random.default_rng(1)
        input_ids = Tensor(rng.integers(0, shape.vocab_size, size=(eval_batch, shape.seq_len)), ms.int32)
        attention_mask = Tensor(np.ones((eval_batch, shape.seq_len)), ms.int32)
        ms.set_context(mode=MODES[eval_mode])
        workload.net.set_train(False)
        start = time.perf_counter()
        workload.net(input_ids, attention_mask).asnumpy()
        phases["eval_first_call_s"] = time.perf_counter() - start
        start = time.perf_counter()
        workload.net(input_ids, attention_mask).asnumpy()
        phases["eval_call_s"] = time.perf_counter() - start
        phases["evaluated"] = _peak_mib()
    return phases


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.memory_phases", description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lora", help="full, lora or frozen_head (default lora)")
    parser.add_argument("--batch", type=int, default=32, help="training samples per step (default 32)")
    parser.add_argument("--mode", choices=sorted(MODES), default="graph", help="mode of the training step")
    parser.add_argument("--context", default="{}", help="MindSpore context settings, as JSON")
    parser.add_argument("--eval-batch", type=int, help="also run the network in eval mode on this many samples")
    parser.add_argument("--eval-mode", choices=sorted(MODES), default="graph", help="mode of that evaluation")
    parser.add_argument("--quick", action="store_true", help="the tiny BERT of the quick preset")
    args = parser.parse_args(argv)
    context = json.loads(args.context)
    ms.set_context(mode=MODES[args.mode], **context)
    ms.set_seed(0)
    phases = measure_phases(args.method, PRESETS["quick" if args.quick else "full"], args.batch, args.eval_batch,
                            args.eval_mode)
    print(json.dumps({"method": args.method, "batch": args.batch, "mode": args.mode, "context": context,
                      "eval_batch": args.eval_batch, "eval_mode": args.eval_mode,
                      **{key: round(value, 2) for key, value in phases.items()}}), flush=True)


if __name__ == "__main__":
    main()
