"""Peak resident memory of a training process, one process per method so that no method inherits another's peak.

``python -m bench.memory_worker --model mlp --method lora --preset quick`` builds the workload, runs a few compiled
training steps and prints one JSON line: ``baseline_kib`` (the process's peak resident memory after importing MindSpore
and mindpet, before building anything) and ``peak_kib`` (after training), both from :func:`bench.rss.peak_rss_kib`
(``VmHWM``, which a large parent process does not leak into as it does into ``ru_maxrss``).
"""
import argparse
import json
import os
import subprocess
import sys

import mindspore as ms

from bench.presets import PRESETS
from bench.rss import peak_rss_kib
from bench.workloads import build_workload

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_in_this_process(model, method, preset_name):
    """Build, train ``memory_steps`` steps, and return the high-water marks of this process (see the module doc)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    baseline = peak_rss_kib()
    preset = PRESETS[preset_name]
    run_step = build_workload(model, method, preset).train_runner()
    for _ in range(preset.memory_steps):
        run_step()
    return {"baseline_kib": baseline, "peak_kib": peak_rss_kib()}


def peak_memory(model, method, preset_name):
    """Run :func:`measure_in_this_process` in a fresh Python process and return its result.

    Raises:
        RuntimeError: the process failed; the message holds its stderr.
    """
    command = [sys.executable, "-m", "bench.memory_worker", "--model", model, "--method", method,
               "--preset", preset_name]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The memory process for {model}/{method} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--preset", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(measure_in_this_process(args.model, args.method, args.preset)), flush=True)


if __name__ == "__main__":
    main()
