"""Quantized frozen bases: NF4 storage (:mod:`~mindpet.quantization.nf4`), the :class:`NF4Dense` layer and
:func:`quantize_base`, which swaps a network's Dense layers for it (QLoRA's base). ``quantize_base`` is exported from
:mod:`mindpet` as well."""
from mindpet.quantization.apply import quantize_base
from mindpet.quantization.layer import NF4Dense, NF4Weight

__all__ = ["NF4Dense", "NF4Weight", "quantize_base"]
