"""Side by side with HF PEFT on torch: the MiniLM example's training step, full fine-tuning and LoRA, in both
frameworks, timed in the same interleaved rounds and measured for peak memory in sibling processes.

The torch side runs in its own process (:mod:`bench.peer_worker`), so neither framework's threads, allocator or
imports touch the other's; the driver sends it one ``step`` request at a time and times the answer, so a PEFT
step takes its turn in the rounds exactly as a mindpet step does. torch, transformers and peft are optional
(``pip install -e ".[peer]"``): without them the mindpet rows are still measured and the PEFT rows say why they
are missing.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from bench.memory_worker import REPO_ROOT, peak_memory
from bench.minilm import PEER_METHODS, minilm_shape, pretrained_model_dir
from bench.timing import interleave, ratio_summary
from bench.workloads import build_workload, network_counts

PEER_PACKAGES = ("torch", "transformers", "peft")
INSTALL_HINT = 'pip install -e ".[peer]"'
MODEL = "minilm"
# Runner names in the interleaved rounds.
MINDPET, PEFT = "mindpet", "peft"


def peer_unavailable_reason():
    """None when torch, transformers and peft can be imported, else a sentence saying which are missing."""
    missing = [name for name in PEER_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"HF PEFT rows skipped: {', '.join(missing)} not installed ({INSTALL_HINT})."


def _worker_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def _worker_command(preset_name, *args):
    return [sys.executable, "-m", "bench.peer_worker", "--preset", preset_name, *args]


def peer_peak_memory(method, preset_name):
    """Peak RSS of a torch process training ``method`` (see :func:`bench.peer_worker.measure_memory`).

    Raises:
        RuntimeError: the process failed; the message holds its stderr.
    """
    done = subprocess.run(_worker_command(preset_name, "--memory", method), cwd=REPO_ROOT, env=_worker_env(),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The PEFT memory process for {method} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class PeerServer:
    """The torch process of :func:`bench.peer_worker.serve`, as a context manager.

    ``runner(method)`` returns a callable that runs one PEFT training step and returns when it is done.
    """

    def __init__(self, preset_name):
        self.preset_name = preset_name
        self.process = None
        self.info = None
        # stderr goes to a file, not a pipe: progress bars and warnings must never fill a pipe nobody reads.
        self._stderr = None

    def __enter__(self):
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(_worker_command(self.preset_name, "--serve"), cwd=REPO_ROOT,
                                        env=_worker_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._stderr, text=True, bufsize=1)
        self.info = json.loads(self._read_line("start"))
        return self

    def _read_line(self, what):
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            self._stderr.seek(0)
            raise RuntimeError(f"The PEFT process ended during {what} ({code}):\n{self._stderr.read()[-4000:]}")
        return line

    def runner(self, method):
        def run():
            self.process.stdin.write(f"step {method}\n")
            self.process.stdin.flush()
            answer = self._read_line(f"a {method} step").strip()
            if answer != "ok":
                raise RuntimeError(f"The PEFT process answered {answer!r} to a {method} step.")
        return run

    def __exit__(self, *exc_info):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self._stderr):
            stream.close()
        return False


def _key(framework, method):
    return f"{framework} {method}"


def _memory(preset, jobs, with_peer):
    """Peak RSS of every (framework, method) training process, ``jobs`` at a time."""
    tasks = [(MINDPET, method) for method in PEER_METHODS]
    if with_peer:
        tasks += [(PEFT, method) for method in PEER_METHODS]

    def measure(task):
        framework, method = task
        if framework == MINDPET:
            return peak_memory(MODEL, method, preset.name)
        return peer_peak_memory(method, preset.name)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(zip((_key(*task) for task in tasks), pool.map(measure, tasks)))


def _framework_rows(framework, times, memory, trainable):
    lora, full, floor = _key(framework, "lora"), _key(framework, "full"), _key(framework, "floor")
    return {"lora_vs_full_step": ratio_summary(times[lora], times[full]),
            "floor_vs_full_step": ratio_summary(times[floor], times[full]),
            "lora_vs_floor_step": ratio_summary(times[lora], times[floor]),
            "floor_peak_mib": memory[floor]["peak_kib"] / 1024,
            "lora_peak_mib": memory[lora]["peak_kib"] / 1024, "full_peak_mib": memory[full]["peak_kib"] / 1024,
            "lora_baseline_mib": memory[lora]["baseline_kib"] / 1024,
            "full_baseline_mib": memory[full]["baseline_kib"] / 1024,
            "lora_vs_full_peak": memory[lora]["peak_kib"] / memory[full]["peak_kib"],
            "trainable": trainable}


def compare_with_peer(preset, jobs=2, with_peer=None):
    """mindpet against HF PEFT on the MiniLM shapes (see the module doc).

    Args:
        preset (bench.presets.Preset): the shapes and repetition counts.
        jobs (int): peak-memory processes run at once. Default: 2.
        with_peer (bool, optional): run the PEFT side. Default: when torch, transformers and peft are installed.

    Returns:
        dict: ``available`` and ``reason`` (why the PEFT side did not run, or None); ``shape``; ``pretrained``;
        ``mindpet`` and (when available) ``peft``: the LoRA over full step-time summary, each process's peak RSS
        in MiB and their ratio, trainable counts; when available, ``lora_mindpet_vs_peft`` and
        ``full_mindpet_vs_peft`` (step-time summaries), ``lora_peak_mindpet_vs_peft``, ``peer_info`` (the torch
        version and its threads); ``times_s``, every round's seconds per step.
    """
    reason = peer_unavailable_reason()
    if with_peer is None:
        with_peer = reason is None
    elif not with_peer:
        reason = "HF PEFT rows skipped: --no-peer."
    elif reason is not None:
        raise RuntimeError(reason)
    memory = _memory(preset, jobs, with_peer)
    workloads = {method: build_workload(MODEL, method, preset) for method in PEER_METHODS}
    trainable = {method: list(network_counts(workload.net)) for method, workload in workloads.items()}
    runners = {_key(MINDPET, method): workload.train_runner() for method, workload in workloads.items()}
    results = {"available": with_peer, "reason": None if with_peer else reason,
               "shape": minilm_shape(preset).__dict__, "pretrained": pretrained_model_dir(preset) is not None}
    if not with_peer:
        times = interleave(runners, preset.peer_rounds, preset.peer_steps_per_round, preset.warmup_steps)
        results.update(mindpet=_framework_rows(MINDPET, times, memory, trainable), times_s=times)
        return results
    with PeerServer(preset.name) as server:
        for method in PEER_METHODS:
            runners[_key(PEFT, method)] = server.runner(method)
        times = interleave(runners, preset.peer_rounds, preset.peer_steps_per_round, preset.warmup_steps)
        info = server.info
    results.update(mindpet=_framework_rows(MINDPET, times, memory, trainable),
                   peft=_framework_rows(PEFT, times, memory, info["trainable"]),
                   lora_mindpet_vs_peft=ratio_summary(times[_key(MINDPET, "lora")], times[_key(PEFT, "lora")]),
                   full_mindpet_vs_peft=ratio_summary(times[_key(MINDPET, "full")], times[_key(PEFT, "full")]),
                   lora_peak_mindpet_vs_peft=memory[_key(MINDPET, "lora")]["peak_kib"]
                   / memory[_key(PEFT, "lora")]["peak_kib"],
                   peer_info={"torch": info["torch"], "threads": info["threads"]}, times_s=times)
    return results


def main(argv=None):
    """``python -m bench.peer [--quick] [--no-peer] [--out DIR]``: only the side-by-side comparison, printed as
    Markdown (and written to ``DIR/peer.json``)."""
    import argparse  # pylint: disable=import-outside-toplevel
    import mindspore as ms  # pylint: disable=import-outside-toplevel

    from bench import presets, report  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny BERT and 3 rounds (a check of the pipeline)")
    parser.add_argument("--no-peer", action="store_true", help="mindpet only, even when torch is installed")
    parser.add_argument("--jobs", type=int, default=2, help="peak-memory processes run at once (default 2)")
    parser.add_argument("--out", help="write peer.json (every measurement) to this directory")
    args = parser.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    load_start = os.getloadavg()[0]
    peer = compare_with_peer(presets.PRESETS["quick" if args.quick else "full"], args.jobs,
                             False if args.no_peer else None)
    peer["loadavg"] = [load_start, os.getloadavg()[0]]
    print("\n".join(report.peer_markdown(peer, ms.__version__)))
    print(f"1-minute load average {load_start:.2f} at the start, {peer['loadavg'][1]:.2f} at the end.")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "peer.json"), "w", encoding="utf-8") as handle:
            json.dump(peer, handle, indent=1)
    return peer


if __name__ == "__main__":
    main()
