"""``python -m bench --quick`` writes a complete report: every field, finite positive ratios, exact trainable counts.

The benchmark runs once (tiny shapes) for the whole module. Nothing here asserts a timing: on a shared machine
the ratios are facts about that run, not about the code.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/ lives at the repository root and is not installed with mindpet.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import presets, report  # noqa: E402
from bench.workloads import LORA_VARIANTS, METHODS, MODELS  # noqa: E402
STEP_TIME_FIELDS = {"ratio", "ratio_min", "ratio_max", "rounds", "median_ms", "min_ms", "max_ms",
                    "reference_median_ms", "reference_min_ms", "reference_max_ms", "instance_spread"}
MEMORY_FIELDS = {"baseline_kib", "peak_kib", "peak_ratio", "increment_kib", "increment_ratio"}
CHECKPOINT_FIELDS = {"tensors", "delta_bytes", "payload_bytes", "overhead_bytes", "name_bytes",
                     "overhead_per_tensor", "size_ratio", "full_bytes", "share_of_full"}
TRAINABLE_FIELDS = {"network", "analytic", "total_network", "total_analytic", "share"}
LORA_OVERHEAD_RATIOS = ("train_lora_dense_vs_hand_written", "forward_merged_vs_dense", "forward_unloaded_vs_dense",
                        "forward_unmerged_vs_merged", "forward_hand_written_vs_dense")
FLOAT32_BYTES = 4
# Keys naming a ratio: "ratio", "ratio_min", "peak_ratio", "share", "share_of_full", "instance_spread" (not
# "duration_s").
RATIO_KEY = re.compile(r"(^|_)(ratio|share|spread)($|_)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # --no-peer: tests/test_bench_peer.py runs the PEFT side on its own, in seconds.
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--no-peer", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def results(run_dir):
    with open(run_dir / report.JSON_NAME, encoding="utf-8") as handle:
        return json.load(handle)


def _applicable(results):
    for model in MODELS:
        for method, entry in results["models"][model]["methods"].items():
            if entry["applicable"]:
                yield model, method, entry


def _ratios(value, where=""):
    """Every number stored under a key that names a ratio or a share."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (int, float)) and RATIO_KEY.search(key):
                yield f"{where}.{key}", item
            else:
                yield from _ratios(item, f"{where}.{key}")


def test_files_are_written(run_dir):
    expected = {report.JSON_NAME, report.MARKDOWN_NAME}
    if importlib.util.find_spec("matplotlib") is not None:
        expected.add(report.PLOT_NAME)
    assert expected <= set(os.listdir(run_dir))


def test_every_method_has_every_field(results):
    assert results["meta"]["preset"]["name"] == "quick"
    for model in MODELS:
        assert set(results["models"][model]["methods"]) == set(METHODS)
    for _, _, entry in _applicable(results):
        assert TRAINABLE_FIELDS <= set(entry["trainable"])
        assert STEP_TIME_FIELDS <= set(entry["step_time"])
        assert MEMORY_FIELDS <= set(entry["memory"])
        for file_format in ("ckpt", "safetensors"):
            assert CHECKPOINT_FIELDS <= set(entry["checkpoint"][file_format])
    for model in MODELS:
        for method in LORA_VARIANTS:
            assert STEP_TIME_FIELDS <= set(results["models"][model]["methods"][method]["step_time_vs_lora"])
    not_applicable = results["models"]["mlp"]["methods"]["ptuning2"]
    assert not not_applicable["applicable"] and "attention" in not_applicable["reason"]
    for key in LORA_OVERHEAD_RATIOS:
        assert STEP_TIME_FIELDS | {"reference_instance_spread"} <= set(results["lora_overhead"][key])
    for phase, measured, reference in report.OP_PROFILE_ROWS:
        layer_ops = results["lora_overhead"]["layer_op_ms"][phase]
        assert layer_ops[measured]["total"] > 0 and layer_ops[reference]["total"] > 0


def test_every_ratio_is_finite_and_positive(results):
    ratios = list(_ratios(results))
    # At least 11 workloads x (step time 4, memory 2, share 1, 2 formats x 2).
    assert len(ratios) > 11 * 11
    for where, value in ratios:
        assert math.isfinite(value) and value > 0, where


def test_trainable_counts_equal_the_analytic_formulas(results):
    for model, method, entry in _applicable(results):
        trainable = entry["trainable"]
        assert trainable["network"] == trainable["analytic"], (model, method)
        assert trainable["total_network"] == trainable["total_analytic"], (model, method)
    # Spelled out once more for LoRA, r (in + out) per layer, and BitFit, one bias per output.
    preset = presets.PRESETS["quick"]
    rank, width, hidden = presets.LORA_RANK, preset.mlp_width, preset.encoder_hidden
    mlp, encoder = results["models"]["mlp"]["methods"], results["models"]["encoder"]["methods"]
    assert mlp["lora"]["trainable"]["network"] == preset.mlp_depth * rank * (width + width)
    assert mlp["bitfit"]["trainable"]["network"] == preset.mlp_depth * width
    head = hidden * preset.num_labels + preset.num_labels
    assert encoder["lora"]["trainable"]["network"] == preset.encoder_layers * 2 * rank * (hidden + hidden) + head
    # DoRA adds a magnitude per output row; (IA)^3 one scale per rescaled width (key and value outputs, the inputs of
    # the attention and feed-forward output projections).
    assert mlp["dora"]["trainable"]["network"] == mlp["lora"]["trainable"]["network"] + preset.mlp_depth * width
    assert encoder["ia3"]["trainable"]["network"] == \
        preset.encoder_layers * (3 * hidden + preset.encoder_intermediate) + head


def test_delta_payload_is_trainable_parameters_times_element_size(results):
    for model, method, entry in _applicable(results):
        for sizes in entry["checkpoint"].values():
            assert sizes["payload_bytes"] == entry["trainable"]["network"] * FLOAT32_BYTES, (model, method)
            assert sizes["delta_bytes"] == sizes["payload_bytes"] + sizes["overhead_bytes"]


def test_merged_forward_matches_unmerged(results):
    check = results["lora_overhead"]["check"]
    assert check["merged_vs_unmerged_max_abs_diff"] < 1e-4
    assert check["unloaded_vs_unmerged_max_abs_diff"] < 1e-4
    assert check["unmerged_vs_dense_max_abs_diff"] > 1e-3


def test_markdown_has_a_row_per_method(run_dir):
    text = (run_dir / report.MARKDOWN_NAME).read_text(encoding="utf-8")
    for _, title, _ in report.LORA_ROWS:
        assert f"| {title} |" in text
    for model in MODELS:
        for method in METHODS:
            assert f"| {report.MODEL_TITLES[model]} | {method} |" in text


def test_docs_block_is_replaced(results, tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\n{report.BLOCK_BEGIN}\nold table\n{report.BLOCK_END}\n\nProse.\n", encoding="utf-8")
    report.write_reports(results, str(tmp_path / "out"), docs_page=str(page))
    text = page.read_text(encoding="utf-8")
    assert "old table" not in text and text.endswith(f"{report.BLOCK_END}\n\nProse.\n")
    assert "| MLP | lora |" in text
    page.write_text("# No block\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no block"):
        report.write_reports(results, str(tmp_path / "out"), docs_page=str(page))


def test_peer_comparison_keeps_the_mindpet_rows_without_peft(results, run_dir):
    peer = results["peer"]
    assert not peer["available"] and "--no-peer" in peer["reason"] and "peft" not in peer
    for key in ("lora_vs_full_step", "floor_vs_full_step", "lora_vs_floor_step"):
        assert STEP_TIME_FIELDS - {"instance_spread"} <= set(peer["mindpet"][key])
    assert peer["mindpet"]["lora_peak_mib"] > 0
    text = (run_dir / report.MARKDOWN_NAME).read_text(encoding="utf-8")
    assert "| mindpet (MindSpore " in text and "| mindpet: LoRA step / full step |" in text
    assert "HF PEFT rows skipped: --no-peer." in text and "| HF PEFT (torch " not in text
