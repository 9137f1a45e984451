"""Delta cells. Each method lives in its own module and is imported only when first used."""
from mindpet.utils.lazy_exports import lazy_exports

_EXPORTS = {
    "LoRADense": "mindpet.delta.lora",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
