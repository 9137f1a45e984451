"""The benchmark driver: ``python -m bench [--quick] [--out DIR] [--docs PAGE]``.

Measures, for the MLP and the transformer encoder, in GRAPH mode: each method's training step time over full
fine-tuning's (interleaved runs), its training process's peak memory over full fine-tuning's (one process each),
its delta checkpoint's size, and its trainable parameters against the analytic count; and, for LoRA, LoRADense's
step time over a hand-written LoRA layer's and the merged, merged-and-unloaded and unmerged forward times over
nn.Dense's. Writes
``benchmarks.json``, ``benchmarks.md`` and (with matplotlib) ``benchmarks.png`` to ``--out``.
"""
import argparse
import dataclasses
import datetime
import functools
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import mindspore as ms

from bench import encoder, presets, report
from bench.checkpoint_size import checkpoint_sizes
from bench.lora_overhead import forward_runners, hand_written_train_runner
from bench.memory_worker import peak_memory
from bench.op_profile import layer_op_times
from bench.param_counts import encoder_counts
from bench.peer import compare_with_peer
from bench.timing import combine_instances, instance_key, interleave, ratio_summary
from bench.workloads import LORA_VARIANTS, MODELS, NOT_APPLICABLE, analytic_counts, applicable_methods, \
    build_workload, network_counts

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REFERENCE_METHOD = "full"
HAND_WRITTEN = "hand_written_lora"
# The model of the MindPet manual's tables: BERT-base on TNEWS, a Chinese task (the Chinese vocabulary of 21128
# tokens, 15 labels). Its trainable shares, from the same formulas as the benchmarked encoder's, compare with the
# manual's.
BERT_BASE_SHAPE = {"vocab_size": 21128, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
                   "intermediate_size": 3072, "max_position_embeddings": 512}
BERT_BASE_LABELS = 15


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few rounds (under 2 minutes)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for the JSON, Markdown and PNG files")
    parser.add_argument("--docs", help="a Markdown page whose generated block is replaced by the new tables; "
                                       "the plot is copied to images/benchmarks.png beside it")
    parser.add_argument("--jobs", type=int, default=2, help="peak-memory processes run at once (default 2)")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the HF PEFT side of the MiniLM comparison even when torch is installed")
    return parser.parse_args(argv)


def _loadavg():
    return list(os.getloadavg())


def _memory(preset, jobs):
    """Peak memory of every (model, method) training process, ``jobs`` processes at a time."""
    pairs = [(model, method) for model in MODELS for method in applicable_methods(model)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda pair: peak_memory(*pair, preset.name), pairs))
    return dict(zip(pairs, results))


def _memory_ratios(measured, reference):
    increment = measured["peak_kib"] - measured["baseline_kib"]
    reference_increment = reference["peak_kib"] - reference["baseline_kib"]
    return dict(measured, peak_ratio=measured["peak_kib"] / reference["peak_kib"], increment_kib=increment,
                increment_ratio=increment / reference_increment)


def _trainable(net, model, method, preset):
    trainable, total = network_counts(net)
    analytic_trainable, analytic_total = analytic_counts(model, method, preset)
    return {"network": trainable, "analytic": analytic_trainable, "total_network": total,
            "total_analytic": analytic_total, "share": trainable / total}


def _train_runner(model, method, preset):
    return build_workload(model, method, preset).train_runner()


def _timed_runners(names_and_builders, instances):
    """``{instance_key(name, i): runner}`` with ``instances`` independently built copies of each network."""
    return {instance_key(name, instance): build() for name, build in names_and_builders
            for instance in range(instances)}


def _step_time(per_step, names, instances, reference):
    """Each network's per-round time (mean over its copies) against ``reference``'s, plus its copy spread."""
    times, spread = combine_instances(per_step, names, instances)
    return {name: dict(ratio_summary(times[name], times[reference]), instance_spread=spread[name])
            for name in names}


def _model_results(model, preset, memory):
    """Trainable counts, checkpoint sizes and interleaved step times of every method on ``model``."""
    if model == "mlp":
        steps, rounds, instances = preset.mlp_steps_per_round, preset.rounds, preset.mlp_instances
    else:
        steps, rounds, instances = preset.encoder_steps_per_round, preset.encoder_rounds, preset.encoder_instances
    methods, builders = {}, []
    for method in applicable_methods(model):
        workload = build_workload(model, method, preset)
        methods[method] = {"applicable": True, "trainable": _trainable(workload.net, model, method, preset),
                           "checkpoint": checkpoint_sizes(workload.net),
                           "memory": _memory_ratios(memory[model, method], memory[model, REFERENCE_METHOD])}
        builders.append((method, functools.partial(_train_runner, model, method, preset)))
    per_step = interleave(_timed_runners(builders, instances), rounds, steps, preset.warmup_steps)
    step_times = _step_time(per_step, list(methods), instances, REFERENCE_METHOD)
    variants = [method for method in LORA_VARIANTS if method in methods]
    vs_lora = _step_time(per_step, variants + ["lora"], instances, "lora")
    for method in methods:
        methods[method]["step_time"] = step_times[method]
        if method in variants:
            methods[method]["step_time_vs_lora"] = vs_lora[method]
    for method, reason in NOT_APPLICABLE[model].items():
        methods[method] = {"applicable": False, "reason": reason}
    return {"methods": methods, "rounds": rounds, "steps_per_round": steps, "instances": instances,
            "times_s": per_step}


def _compare(times, spread, name, reference):
    """``name`` against ``reference`` (per-round times averaged over copies), with both copy spreads."""
    return dict(ratio_summary(times[name], times[reference]), instance_spread=spread[name],
                reference_instance_spread=spread[reference])


def _profiled(runners, names, preset):
    """The first ``profiled_instances`` copies of each of ``names``."""
    return [runners[instance_key(name, instance)] for name in names for instance in range(preset.profiled_instances)]


def _lora_overhead(preset):
    """LoRADense against the hand-written layer (training) and merged/unloaded/unmerged against nn.Dense (inference),
    timed interleaved and then broken down per operator by the profiler (last: profiling slows what runs)."""
    instances = preset.overhead_instances
    train_runners = _timed_runners((("lora", functools.partial(_train_runner, "mlp", "lora", preset)),
                                    (HAND_WRITTEN, functools.partial(hand_written_train_runner, preset))), instances)
    train = interleave(train_runners, preset.rounds, preset.mlp_steps_per_round, preset.warmup_steps)
    train_times, train_spread = combine_instances(train, ("lora", HAND_WRITTEN), instances)

    forward_sets = [forward_runners(preset) for _ in range(instances)]
    names = list(forward_sets[0][0])
    forward_runners_by_key = {instance_key(name, instance): forward_sets[instance][0][name] for name in names
                              for instance in range(instances)}
    forward = interleave(forward_runners_by_key, preset.rounds, preset.forward_steps_per_round, preset.warmup_steps)
    forward_times, forward_spread = combine_instances(forward, names, instances)

    forward_ops = layer_op_times(_profiled(forward_runners_by_key, ("dense", "merged"), preset),
                                 preset.profiled_steps)
    train_ops = layer_op_times(_profiled(train_runners, ("lora", HAND_WRITTEN), preset), preset.profiled_steps)
    return {"instances": instances,
            "train_lora_dense_vs_hand_written": _compare(train_times, train_spread, "lora", HAND_WRITTEN),
            "forward_merged_vs_dense": _compare(forward_times, forward_spread, "merged", "dense"),
            "forward_unloaded_vs_dense": _compare(forward_times, forward_spread, "unloaded", "dense"),
            "forward_unmerged_vs_merged": _compare(forward_times, forward_spread, "unmerged", "merged"),
            "forward_hand_written_vs_dense": _compare(forward_times, forward_spread, "hand_written", "dense"),
            "train_times_s": train, "forward_times_s": forward, "check": forward_sets[0][1],
            "layer_op_ms": {"forward": forward_ops, "train": train_ops}}


def _bert_base_shares():
    config = encoder.BertConfig(**BERT_BASE_SHAPE)
    shares = {}
    for method in applicable_methods("encoder"):
        trainable, total = encoder_counts(method, config, BERT_BASE_LABELS)
        shares[method] = {"trainable": trainable, "total": total, "share": trainable / total}
    return {"shape": dict(BERT_BASE_SHAPE, num_labels=BERT_BASE_LABELS), "methods": shares}


def run_benchmarks(preset, jobs=2, command=None, with_peer=None):
    """Every measurement of one run, as the JSON-ready dict the reports are written from.

    Args:
        preset (bench.presets.Preset): the shapes and repetition counts.
        jobs (int): peak-memory processes run at once. Default: 2.
        command (str, optional): the command line, recorded in the results.
        with_peer (bool, optional): run HF PEFT beside mindpet on the MiniLM shapes (see :mod:`bench.peer`).
            Default: when torch, transformers and peft are installed; False skips it.

    Returns:
        dict with ``meta``, ``models`` (``mlp`` and ``encoder``: per method ``trainable``, ``checkpoint``,
        ``memory`` and ``step_time``), ``lora_overhead``, ``bert_base_shares`` and ``peer`` (mindpet and, when
        available, HF PEFT on the MiniLM shapes).
    """
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    started = time.perf_counter()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command, "preset": dataclasses.asdict(preset),
            "method_settings": {"lora_rank": presets.LORA_RANK, "lora_alpha": presets.LORA_ALPHA,
                                "adapter_bottleneck": presets.ADAPTER_BOTTLENECK,
                                "low_rank_reduction_factor": presets.LOW_RANK_REDUCTION_FACTOR,
                                "low_rank_size": presets.LOW_RANK_SIZE,
                                "ptuning2_pre_seq_len": presets.PTUNING2_PRE_SEQ_LEN,
                                "num_virtual_tokens": presets.NUM_VIRTUAL_TOKENS,
                                "ptuning_encoder_hidden": presets.PTUNING_ENCODER_HIDDEN},
            "mode": "GRAPH_MODE", "mindspore": ms.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "loadavg_start": _loadavg()}
    # Memory processes first: while they run, nothing is being timed.
    memory = _memory(preset, jobs)
    models = {model: _model_results(model, preset, memory) for model in MODELS}
    lora_overhead = _lora_overhead(preset)
    # Last: the side-by-side comparison holds its own memory processes, run before its timing.
    peer = compare_with_peer(preset, jobs, with_peer)
    meta.update(loadavg_end=_loadavg(), duration_s=time.perf_counter() - started)
    return {"meta": meta, "models": models, "lora_overhead": lora_overhead, "bert_base_shares": _bert_base_shares(),
            "peer": peer}


def main(argv=None):
    args = _parse_args(argv)
    preset = presets.PRESETS["quick" if args.quick else "full"]
    command = " ".join(["python -m bench"] + [shlex.quote(arg) for arg in (sys.argv[1:] if argv is None else argv)])
    results = run_benchmarks(preset, jobs=args.jobs, command=command, with_peer=False if args.no_peer else None)
    paths = report.write_reports(results, args.out, docs_page=args.docs)
    for path in paths:
        print(f"wrote {path}")
