"""The side-by-side comparison with HF PEFT (bench/peer.py): its rows appear when torch, transformers and peft can
be imported, and are skipped with a sentence saying so when they cannot.

Only tiny shapes run here (the quick preset's BERT); nothing asserts a timing. The full ``python -m bench --quick``
run of tests/test_bench.py also checks that its report holds the comparison.
"""
import dataclasses
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import peer, presets, report  # noqa: E402
from bench.minilm import minilm_batch_arrays, minilm_shape  # noqa: E402

HAS_PEER = all(importlib.util.find_spec(name) is not None for name in peer.PEER_PACKAGES)
needs_peer = pytest.mark.skipif(not HAS_PEER, reason="torch, transformers or peft is not installed")
QUICK = presets.PRESETS["quick"]


def _summary(ratio):
    return {"ratio": ratio, "ratio_min": ratio, "ratio_max": ratio, "median_ms": 10.0 * ratio,
            "reference_median_ms": 10.0}


def _framework(ratio):
    return {"lora_vs_full_step": _summary(ratio), "floor_vs_full_step": _summary(ratio - 0.05),
            "lora_vs_floor_step": _summary(1.05), "lora_peak_mib": 700.0, "full_peak_mib": 1000.0,
            "lora_vs_full_peak": 0.7, "floor_peak_mib": 690.0,
            "trainable": {"lora": [2114, 22790], "full": [22790, 22790], "floor": [130, 22790]}}


def _peer_results(available):
    results = {"available": available, "reason": None if available else "HF PEFT rows skipped: torch not installed.",
               "shape": minilm_shape(QUICK).__dict__, "pretrained": False, "mindpet": _framework(0.6),
               "times_s": {"mindpet lora": [0.1, 0.1, 0.1]}}
    if available:
        results.update(peft=_framework(0.7), lora_mindpet_vs_peft=_summary(0.9), full_mindpet_vs_peft=_summary(1.1),
                       lora_peak_mindpet_vs_peft=1.2, peer_info={"torch": "2.13.0", "threads": 2})
    return results


def test_reason_names_the_missing_packages(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("torch", "peft") else object())
    reason = peer.peer_unavailable_reason()
    assert "torch, peft not installed" in reason and "[peer]" in reason
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    assert peer.peer_unavailable_reason() is None


def test_without_peer_the_report_keeps_mindpet_and_says_why():
    text = "\n".join(report.peer_markdown(_peer_results(available=False), "2.10.0"))
    assert "| mindpet (MindSpore 2.10.0, GRAPH) |" in text
    assert "HF PEFT (torch" not in text and "mindpet / PEFT" not in text
    assert "HF PEFT rows skipped: torch not installed." in text


def test_with_peer_the_report_has_both_frameworks_and_the_cross_ratios():
    text = "\n".join(report.peer_markdown(_peer_results(available=True), "2.10.0"))
    assert "| HF PEFT (torch 2.13.0, eager) | 2,114 of 22,790 | 0.700 (0.70–0.70) | 0.650 (0.65–0.65) |" in text
    assert "| LoRA step: mindpet / PEFT | 0.900 (0.90–0.90) | | |" in text
    assert "| LoRA peak RSS: mindpet / PEFT | 1.200 | ≤ 1.5 | yes |" in text


def test_asking_for_the_peer_without_torch_raises(monkeypatch):
    monkeypatch.setattr(peer, "peer_unavailable_reason", lambda: "HF PEFT rows skipped: torch not installed.")
    with pytest.raises(RuntimeError, match="torch not installed"):
        peer.compare_with_peer(QUICK, with_peer=True)


def test_both_frameworks_train_on_the_same_tokens():
    first, second = minilm_batch_arrays(QUICK), minilm_batch_arrays(QUICK)
    for one, other in zip(first, second):
        assert (one == other).all()
    input_ids, attention_mask, labels = first
    shape = minilm_shape(QUICK)
    assert input_ids.shape == attention_mask.shape == (shape.batch, shape.seq_len)
    assert labels.shape == (shape.batch,) and input_ids.max() < shape.vocab_size


@needs_peer
def test_peer_process_trains_both_methods_with_the_same_trainable_count_as_mindpet():
    with peer.PeerServer(QUICK.name) as server:
        for method in ("full", "lora"):
            server.runner(method)()
        trainable = server.info["trainable"]
    shape = minilm_shape(QUICK)
    # LoRA r (in + out) on query and value of every layer, plus the head (PEFT's trainable copy of it).
    head = shape.hidden_size * shape.num_labels + shape.num_labels
    lora = shape.num_layers * 2 * presets.LORA_RANK * 2 * shape.hidden_size + head
    assert trainable["lora"][0] == lora
    assert trainable["full"][0] == trainable["full"][1]
    assert trainable["floor"][0] == _floor_count()


def _floor_count():
    """The head and the embeddings' LayerNorm (gamma and beta)."""
    shape = minilm_shape(QUICK)
    return shape.hidden_size * shape.num_labels + shape.num_labels + 2 * shape.hidden_size


def test_mindpet_floor_trains_only_the_head_and_the_embedding_norm():
    from bench.workloads import build_workload, network_counts  # pylint: disable=import-outside-toplevel
    net = build_workload("minilm", "floor", QUICK).net
    assert network_counts(net)[0] == _floor_count()
    assert sorted(param.name for param in net.trainable_params()) == [
        "bert.embeddings.layer_norm.beta", "bert.embeddings.layer_norm.gamma", "classifier.bias", "classifier.weight"]


@needs_peer
def test_peer_memory_process_reports_its_peak():
    measured = peer.peer_peak_memory("lora", QUICK.name)
    assert measured["peak_kib"] >= measured["baseline_kib"] > 0


@needs_peer
def test_compare_with_peer_times_both_frameworks_in_the_same_rounds(monkeypatch):
    # The peak-memory processes are tested above; here they are replaced so that the test takes seconds.
    fake_memory = {peer._key(framework, method): {"baseline_kib": 1024, "peak_kib": 2048}
                   for framework in (peer.MINDPET, peer.PEFT) for method in peer.PEER_METHODS}
    monkeypatch.setattr(peer, "_memory", lambda preset, jobs, with_peer: fake_memory)
    preset = dataclasses.replace(QUICK, peer_rounds=2, warmup_steps=1)
    results = peer.compare_with_peer(preset)
    assert results["available"] and results["reason"] is None
    assert set(results["times_s"]) == set(fake_memory)
    assert all(len(times) == 2 for times in results["times_s"].values())
    for framework in (peer.MINDPET, peer.PEFT):
        assert results[framework]["lora_vs_full_step"]["ratio"] > 0
        assert results[framework]["trainable"]["lora"][0] == results[peer.MINDPET]["trainable"]["lora"][0]
    text = "\n".join(report.peer_markdown(results, "2.10.0"))
    assert "| HF PEFT (torch " in text and "| LoRA step: mindpet / PEFT |" in text
