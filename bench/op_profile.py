"""Per-operator times of one layer, from MindSpore's profiler: which operators make a delta layer slower than the
layer it replaces."""
import csv
import glob
import os
import re
import tempfile

from mindspore import Profiler

# The profiler's CPU operator table, one row per operator instance of the compiled graph.
OP_TABLE = os.path.join("*", "FRAMEWORK", "cpu_op_detail_info_0.csv")
# ".../layers-CellList/2-LoRADense/MatMul-op1" -> layer 2, class LoRADense, the rest names the operator.
LAYER_OP = re.compile(r"layers-CellList/(\d+)-(\w+)/(.+)$")


def profile_rows(run, steps):
    """The profiler's operator table (one dict per operator of the graph) of ``steps`` calls of one compiled
    runner, profiled on its own."""
    with tempfile.TemporaryDirectory(prefix="mindpet_bench_profile_") as directory:
        profiler = Profiler(output_path=directory)
        for _ in range(steps):
            run()
        profiler.stop()
        profiler.analyse()
        paths = glob.glob(os.path.join(directory, OP_TABLE))
        if len(paths) != 1:
            raise RuntimeError(f"Expected one profiler operator table under '{directory}', found {paths}.")
        with open(paths[0], newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))


def _op_type(op_path):
    """``'Grad_MatMul/MatMul-op3'`` -> ``'MatMul'`` (operator numbers run across graphs, so only types compare)."""
    return op_path.rsplit("/", 1)[-1].split("-op")[0]


def _per_layer(rows):
    """``(layer class, {operator type: ms per call of each such operator, largest first})`` of one network,
    averaged over its layers."""
    per_layer_ops, classes = {}, set()
    for row in rows:
        match = LAYER_OP.search(row["full_op_name"])
        if match is None:
            continue
        layer, cls, op_path = match.groups()
        per_call = float(row["op_total_time(ms)"]) / int(row["op_occurrences"])
        per_layer_ops.setdefault(layer, {}).setdefault(_op_type(op_path), []).append(per_call)
        classes.add(cls)
    if len(classes) != 1:
        raise RuntimeError(f"Expected the layers of one class in the profiled network, found {sorted(classes)}.")
    layers = list(per_layer_ops.values())
    op_types = sorted({op_type for ops in layers for op_type in ops})
    return classes.pop(), {op_type: _mean_sorted([ops.get(op_type, []) for ops in layers]) for op_type in op_types}


def _mean_sorted(lists):
    """Sort each list (largest first) and average position by position; a shorter list counts as zeros there."""
    ordered = [sorted(values, reverse=True) for values in lists]
    length = max(len(values) for values in ordered)
    return [sum(values[index] for values in ordered if index < len(values)) / len(ordered)
            for index in range(length)]


def layer_op_times(runners, steps):
    """Milliseconds per call of the operators of one layer, by type, averaged over layers and networks.

    Each runner (a compiled :class:`bench.mlp.MLP` whose layers are all of one class) is profiled on its own for
    ``steps`` calls, so that operators of different graphs never share a table. Copies of one network differ in
    speed (see ``docs/benchmarks.md``), so pass several copies of each to average that out.

    Args:
        runners (Iterable[Callable]): compiled runners, each already called once.
        steps (int): profiled calls of each.

    Returns:
        dict[str, dict]: layer class to ``{'ops': {operator type: [ms per call of each operator of that type in
        a layer, largest first]}, 'total': the layer's summed operator time, 'networks': networks averaged}``.
    """
    collected = {}
    for run in runners:
        cls, ops = _per_layer(profile_rows(run, steps))
        collected.setdefault(cls, []).append(ops)
    times = {}
    for cls, networks in collected.items():
        op_types = sorted({op_type for ops in networks for op_type in ops})
        ops = {op_type: _mean_sorted([network.get(op_type, []) for network in networks]) for op_type in op_types}
        times[cls] = {"ops": ops, "total": sum(sum(values) for values in ops.values()), "networks": len(networks)}
    return times
