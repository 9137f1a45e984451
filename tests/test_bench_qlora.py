"""``python -m bench.qlora --quick`` writes a complete report: finite positive ratios and exact weight bytes.

Nothing here asserts a timing: on a shared machine the ratios are facts about that run, not about the code.
"""
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/ lives at the repository root and is not installed with mindpet.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import presets, qlora  # noqa: E402


def test_quick_report_is_complete(tmp_path, graph_mode):
    # The MLP alone: the encoder pair adds four compiles and is built by the example's apply_method, which
    # tests/test_minilm.py covers.
    results = qlora.main(["--quick", "--workloads", "mlp", "--out", str(tmp_path)])
    assert list(results["workloads"]) == ["mlp"]
    assert json.loads((tmp_path / "qlora.json").read_text()) == results
    preset = presets.PRESETS["quick"]
    result = results["workloads"]["mlp"]
    for phase in ("forward", "train"):
        summary = result[phase]
        assert summary["rounds"] == preset.rounds
        assert all(math.isfinite(summary[key]) and summary[key] > 0 for key in ("ratio", "ratio_min", "ratio_max"))
    sizes = result["weight_bytes"]
    assert sizes["float32"] == 4 * preset.mlp_width ** 2 * preset.mlp_depth == 2 * sizes["float16"]
    # 4 bits a weight plus the scales: a float32 absmax per 16 weights, or an int8 one with double quantization.
    weights = sizes["float32"] // 4
    assert sizes["nf4"] == weights // 2 + 4 * weights // 16
    assert weights // 2 + weights // 16 < sizes["nf4_double_quant"] < sizes["nf4"]
    assert qlora.markdown(results).count("\n") == 2
