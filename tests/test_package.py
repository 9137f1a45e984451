"""Import paths from the API contract (the MindPet 1.0.4 paths, the ones MindFormers imports, and the top level)."""
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
    ("mindpet.graph.freeze_utils", "freeze_modules"),
    ("mindpet.utils.version_control", "get_dropout"),
    ("mindpet", "LoraConfig"),
    ("mindpet", "AdaLoraConfig"),
    ("mindpet", "AdaLoraCallback"),
    ("mindpet.delta", "AdaLoRADense"),
    ("mindpet.delta.adalora", "AdaLoraTrainOneStepCell"),
    ("mindpet.delta.adalora", "AdaLoraOrthogonalLoss"),
    ("mindpet", "AdapterConfig"),
    ("mindpet", "LowRankAdapterConfig"),
    ("mindpet", "get_delta_model"),
    ("mindpet", "plan_delta"),
    ("mindpet", "trainable_summary"),
    ("mindpet", "merge_and_unload"),
    ("mindpet", "freeze_delta"),
    ("mindpet", "TrainableParamsCheckPoint"),
    ("mindpet", "check_shard_strategies"),
    ("mindpet", "quantize_base"),
    ("mindpet.delta", "NF4Dense"),
    ("mindpet.quantization", "NF4Dense"),
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


def _modules_loaded_by(statement):
    script = f"import sys; {statement}; print(sorted(m for m in sys.modules if m.startswith('mindpet')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_importing_mindpet_writes_no_file_and_needs_no_optional_package(tmp_path):
    # Exports are eager (lazy ones would only pay off in front of optional dependencies, and there are none):
    # importing the package loads every method, and nothing else of note.
    result = subprocess.run([sys.executable, "-c", "import mindpet, sys; print('yaml' in sys.modules)"],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert list(tmp_path.iterdir()) == []
    loaded = _modules_loaded_by("import mindpet.delta.lora")
    assert "mindpet.registry" in loaded and "mindpet.delta.adapter" in loaded
