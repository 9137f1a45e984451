"""Data-parallel delta fine-tuning under msrun with 2 CPU workers (examples/distributed/data_parallel_finetune.py)."""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import mindspore as ms
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "distributed", "data_parallel_finetune.py")
WORKERS = 2
# A guard against a hung cluster, not a performance bound: the run takes well under a minute on 2 idle cores.
LAUNCH_TIMEOUT_S = 300
# msrun's scheduler gives up on workers that have not registered after this long.
CLUSTER_TIMEOUT_S = 120
TRAIN_ARGS = ["--epochs", "6", "--batch-size", "16", "--save-network"]


def load_example():
    spec = importlib.util.spec_from_file_location("data_parallel_finetune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # GRAPH mode compiles construct() by looking its module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_pids(pid):
    """Direct children of ``pid``, read from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat_file:
                # The command name in parentheses may hold spaces; the parent id is the 2nd field after it.
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def stop_launch(process):
    """Kill msrun and the workers it started. msrun starts each worker in a session of its own."""
    for worker in child_pids(process.pid):
        try:
            os.killpg(worker, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def worker_logs(log_dir):
    if not os.path.isdir(log_dir):
        return f"(no log folder {log_dir})"
    parts = []
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name), encoding="utf-8", errors="replace") as log_file:
            lines = [line for line in log_file if "[INFO]" not in line]
        parts.append(f"----- {name} (last 60 lines without INFO) -----\n" + "".join(lines[-60:]))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Prepare the pretrained checkpoint in this process, then train under msrun with 2 local workers."""
    example = load_example()
    output_dir = str(tmp_path_factory.mktemp("data_parallel"))
    ms.set_context(mode=ms.GRAPH_MODE)
    example.prepare(output_dir, samples=512, seed=0)

    bin_dir = os.path.dirname(sys.executable)
    msrun = os.path.join(bin_dir, "msrun")
    assert os.path.isfile(msrun), f"msrun is not installed next to {sys.executable}"
    env = dict(os.environ)
    # msrun starts 'python' from PATH: it has to be this interpreter, the one with mindpet installed.
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    log_dir = os.path.join(output_dir, "msrun_logs")
    command = [msrun, f"--worker_num={WORKERS}", f"--local_worker_num={WORKERS}", f"--master_port={free_port()}",
               f"--log_dir={log_dir}", "--join=True", f"--cluster_time_out={CLUSTER_TIMEOUT_S}",
               SCRIPT, "train", "--output-dir", output_dir] + TRAIN_ARGS
    # Workers run in the temporary folder, so anything MindSpore writes to the working directory stays there.
    process = subprocess.Popen(command, cwd=output_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        launcher_output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_launch(process)
        pytest.fail(f"msrun did not finish within {LAUNCH_TIMEOUT_S} s.\n{worker_logs(log_dir)}")
    assert process.returncode == 0, (f"msrun exited with {process.returncode}.\n{launcher_output[-3000:]}\n"
                                     f"{worker_logs(log_dir)}")

    metrics = []
    for rank in range(WORKERS):
        with open(os.path.join(output_dir, f"rank_{rank}", example.METRICS_FILE), encoding="utf-8") as metrics_file:
            metrics.append(json.load(metrics_file))
    return {"example": example, "output_dir": output_dir, "metrics": metrics}


def load_values(path):
    return {name: value.asnumpy() for name, value in ms.load_checkpoint(path).items()}


def test_every_rank_joined_one_group_and_wrote_its_delta(run):
    """
    Feature: msrun launches the example with 2 CPU workers in DATA_PARALLEL mode.
    Description: Read each rank's metrics.
    Expectation: Ranks 0 and 1 in a group of 2, each with its delta file in its own rank_<id>/delta folder.
    """
    assert [m["rank"] for m in run["metrics"]] == list(range(WORKERS))
    assert all(m["group_size"] == WORKERS for m in run["metrics"])
    for rank, metrics in enumerate(run["metrics"]):
        delta_dir = os.path.join(run["output_dir"], f"rank_{rank}", "delta")
        assert os.listdir(delta_dir) == [os.path.basename(metrics["delta_file"])]


def test_ranks_trained_on_different_shards_yet_hold_identical_deltas(run):
    """
    Feature: Gradients are averaged across ranks (AllReduce), so the deltas stay in step.
    Description: Compare the two ranks' training losses and delta checkpoints.
    Expectation: The losses differ (each rank computes them on its own shard), the deltas are bitwise equal and
        hold exactly the trainable parameters, and the held-out error fell.
    """
    first, second = run["metrics"]
    assert first["epoch_end_losses"] != second["epoch_end_losses"]
    deltas = [load_values(m["delta_file"]) for m in run["metrics"]]
    assert sorted(deltas[0]) == sorted(deltas[1]) == first["trainable"]
    for name in first["trainable"]:
        assert np.array_equal(deltas[0][name], deltas[1][name]), name
    for metrics in run["metrics"]:
        assert metrics["held_out_mse_after"] < metrics["held_out_mse_before"]


def test_frozen_weights_kept_the_pretrained_values_and_the_rest_trained(run):
    """
    Feature: freeze_delta before the optimizer keeps the pretrained weights fixed under data parallelism.
    Description: Compare each rank's whole network with the pretrained checkpoint and with the zero initial values.
    Expectation: Every frozen pretrained weight is bitwise unchanged; the head moved away from its pretrained
        values, and every zero-initialised delta parameter (LoRA B, the adapter's up-projection and biases) is
        nonzero.
    """
    example = run["example"]
    pretrained = load_values(os.path.join(run["output_dir"], example.PRETRAINED_FILE))
    trainable = set(run["metrics"][0]["trainable"])
    zero_initialised = {param.name for param in example.delta_mlp().get_parameters()
                        if param.name in trainable and not param.asnumpy().any()}
    assert {"hidden.0.mindpet_delta_lora_b", "hidden.1.mindpet_delta_adapter.up_weight"} <= zero_initialised
    for rank in range(WORKERS):
        network = load_values(os.path.join(run["output_dir"], f"rank_{rank}", example.NETWORK_FILE))
        for name, value in pretrained.items():
            if name in trainable:
                assert not np.array_equal(network[name], value), (rank, name)
            else:
                assert np.array_equal(network[name], value), (rank, name)
        for name in zero_initialised:
            assert network[name].any(), (rank, name)
