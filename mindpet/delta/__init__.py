"""Delta cells. Each method lives in its own module and is imported only when first used."""
import importlib

_EXPORTS = {
    "LoRADense": "mindpet.delta.lora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # Lazy export, so that importing one method's module never imports the others.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mindpet.delta' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
