"""Import paths from the API contract, and import isolation between methods."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module,name", [
    ("mindpet.delta", "LoRADense"),
    ("mindpet.delta", "merge_and_unload"),
    ("mindpet.delta.lora", "LoRADense"),
    ("mindpet.delta", "AdapterLayer"),
    ("mindpet.delta", "AdapterDense"),
    ("mindpet.delta", "LowRankAdapterLayer"),
    ("mindpet.delta", "LowRankAdapterDense"),
    ("mindpet.delta.adapter", "AdapterLayer"),
    ("mindpet.delta.adapter", "AdapterDense"),
    ("mindpet.delta.adapter", "LowRankAdapterLayer"),
    ("mindpet.delta.adapter", "LowRankAdapterDense"),
    ("mindpet.delta.low_rank_adapter", "LowRankAdapterLayer"),
    ("mindpet.delta.low_rank_adapter", "LowRankAdapterDense"),
    ("mindpet.delta", "PrefixLayer"),
    ("mindpet.delta.prefix_layer", "PrefixLayer"),
    ("mindpet.delta", "PrefixConcat"),
    ("mindpet.delta.prefix_attention", "PrefixConcat"),
    ("mindpet.delta", "PrefixEncoder"),
    ("mindpet.delta.ptuning2", "PrefixEncoder"),
    ("mindpet.delta", "RDropLoss"),
    ("mindpet.delta", "rdrop_repeat"),
    ("mindpet.delta.r_drop", "RDropLoss"),
    ("mindpet.delta.r_drop", "rdrop_repeat"),
    ("mindpet.graph", "freeze_modules"),
    ("mindpet.graph", "freeze_delta"),
    ("mindpet.graph", "freeze_from_config"),
    ("mindpet.graph", "TrainableParamsCheckPoint"),
    ("mindpet.graph", "load_delta_checkpoint"),
    ("mindpet.graph", "check_shard_strategies"),
    ("mindpet.graph", "merge_sliced_delta_checkpoints"),
    ("mindpet.graph.freeze_utils", "freeze_delta"),
    ("mindpet.graph.ckpt_util", "TrainableParamsCheckPoint"),
    ("mindpet.graph.ckpt_util", "load_delta_checkpoint"),
    ("mindpet.graph.distributed_ckpt", "merge_sliced_delta_checkpoints"),
    ("mindpet.graph", "TrainingGuard"),
    ("mindpet.graph", "load_base_checkpoint"),
    ("mindpet.checkpoint", "TrainableParamsCheckPoint"),
    ("mindpet.checkpoint", "TrainingGuard"),
    ("mindpet.checkpoint", "load_delta_checkpoint"),
    ("mindpet.checkpoint", "load_base_checkpoint"),
    ("mindpet.checkpoint", "DeltaLoadResult"),
    ("mindpet.checkpoint", "BaseLoadResult"),
    ("mindpet.checkpoint", "merge_sliced_delta_checkpoints"),
    ("mindpet.checkpoint", "trained_parameters"),
])
def test_public_import_paths(module, name):
    package = __import__(module, fromlist=[name])
    assert getattr(package, name).__module__.startswith("mindpet.")
    assert name in dir(package)


def test_unknown_attribute():
    import mindpet.delta
    with pytest.raises(AttributeError, match="module 'mindpet.delta' has no attribute 'NoSuchCell'"):
        getattr(mindpet.delta, "NoSuchCell")


def _modules_loaded_by(statement):
    script = f"import sys; {statement}; print(sorted(m for m in sys.modules if m.startswith('mindpet')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_importing_one_module_does_not_import_the_others():
    freezing = _modules_loaded_by("from mindpet.graph import freeze_delta")
    assert "mindpet.graph.ckpt_util" not in freezing and "mindpet.delta.lora" not in freezing
    assert "mindpet.checkpoint" not in freezing
    lora = _modules_loaded_by("from mindpet.delta import LoRADense")
    assert "mindpet.delta.lora" in lora and "mindpet.graph.freeze_utils" not in lora
