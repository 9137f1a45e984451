"""Delta cells. Each method lives in its own module and is imported only when first used."""
from mindpet.utils.lazy_exports import lazy_exports

_EXPORTS = {
    "LoRADense": "mindpet.delta.lora",
    "merge_and_unload": "mindpet.delta.lora",
    "AdapterLayer": "mindpet.delta.adapter",
    "AdapterDense": "mindpet.delta.adapter",
    "LowRankAdapterLayer": "mindpet.delta.low_rank_adapter",
    "LowRankAdapterDense": "mindpet.delta.low_rank_adapter",
    "PrefixLayer": "mindpet.delta.prefix_layer",
    "PrefixConcat": "mindpet.delta.prefix_attention",
    "PrefixEncoder": "mindpet.delta.ptuning2",
    "RDropLoss": "mindpet.delta.r_drop",
    "rdrop_repeat": "mindpet.delta.r_drop",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
