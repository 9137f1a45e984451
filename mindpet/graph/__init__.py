"""Graph utilities: freezing parameters and saving or loading delta checkpoints."""
from mindpet.utils.lazy_exports import lazy_exports

_EXPORTS = {
    "freeze_modules": "mindpet.graph.freeze_utils",
    "freeze_delta": "mindpet.graph.freeze_utils",
    "freeze_from_config": "mindpet.graph.freeze_utils",
    "TrainableParamsCheckPoint": "mindpet.graph.ckpt_util",
    "load_delta_checkpoint": "mindpet.graph.ckpt_util",
    "DeltaLoadResult": "mindpet.graph.ckpt_util",
    "check_shard_strategies": "mindpet.graph.strategy_check",
    "merge_sliced_delta_checkpoints": "mindpet.graph.distributed_ckpt",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
