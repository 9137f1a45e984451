"""Graph utilities: freezing parameters, and (from :mod:`mindpet.checkpoint`) saving or loading delta checkpoints."""
from mindpet.utils.lazy_exports import lazy_exports

_EXPORTS = {
    "freeze_modules": "mindpet.graph.freeze_utils",
    "freeze_delta": "mindpet.graph.freeze_utils",
    "freeze_from_config": "mindpet.graph.freeze_utils",
    "TrainableParamsCheckPoint": "mindpet.checkpoint",
    "TrainingGuard": "mindpet.checkpoint",
    "load_delta_checkpoint": "mindpet.checkpoint",
    "load_base_checkpoint": "mindpet.checkpoint",
    "DeltaLoadResult": "mindpet.checkpoint",
    "BaseLoadResult": "mindpet.checkpoint",
    "check_shard_strategies": "mindpet.graph.strategy_check",
    "merge_sliced_delta_checkpoints": "mindpet.checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
