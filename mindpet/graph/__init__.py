"""Graph utilities: freezing parameters and saving or loading delta checkpoints."""
import importlib

_EXPORTS = {
    "freeze_modules": "mindpet.graph.freeze_utils",
    "freeze_delta": "mindpet.graph.freeze_utils",
    "freeze_from_config": "mindpet.graph.freeze_utils",
    "TrainableParamsCheckPoint": "mindpet.graph.ckpt_util",
    "load_delta_checkpoint": "mindpet.graph.ckpt_util",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # Lazy export: freezing does not need the checkpoint machinery and the reverse.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mindpet.graph' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
