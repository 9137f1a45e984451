"""NormalFloat-4 (NF4) blockwise quantization in NumPy: the levels, the codes, their packing and double quantization.

NF4 (Dettmers et al., *QLoRA: Efficient Finetuning of Quantized LLMs*, 2023) has 16 levels in [-1, 1] placed at
quantiles of the standard normal distribution, with an exact 0. A weight is cut into blocks of ``block_size``
consecutive elements of its row-major ``(out, in)`` layout; each block is divided by its absolute maximum (its
*absmax*) and every element is replaced by the index of the nearest level. Two 4-bit indices share a byte, the first
element in the high nibble, as bitsandbytes packs them.

Double quantization stores the absmaxes themselves in 8 bits: their mean (the *offset*) is subtracted, as
bitsandbytes does, and the centred values are quantized in blocks of :data:`NESTED_BLOCK_SIZE` with one float32
scale each. bitsandbytes maps them onto its 8-bit "dynamic" float code; here they are quantized linearly and
symmetrically to int8 (``round(127 c / s)`` with ``s`` the block's largest ``|c|``), which needs only a cast and a
multiply to dequantize and gives the simple bound of :func:`double_quant_error_bound`: a dequantized absmax is off by
at most ``s / 254``, and since every level lies in [-1, 1], so is each weight element beyond its NF4 rounding.
"""
from typing import NamedTuple, Optional

import numpy as np

# The 16 NF4 levels, in code order. Source: the QLoRA paper (Dettmers et al., 2023, appendix E) and bitsandbytes
# (``bitsandbytes/functional.py``, ``get_4bit_type("nf4")``); written out in full so the codes never depend on how a
# library recomputes the normal quantiles.
NF4_LEVELS = np.array([
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
], dtype=np.float32)

# A value exactly halfway between two levels takes the lower one, as bitsandbytes' comparison tree does (``x > t``).
_MIDPOINTS = (NF4_LEVELS[:-1] + NF4_LEVELS[1:]) / np.float32(2)

# How many absmaxes share one float32 scale under double quantization (the paper's and bitsandbytes' 256).
NESTED_BLOCK_SIZE = 256
# The largest int8 code of a centred absmax.
_NESTED_CODE_MAX = 127
QUANT_TYPES = ("nf4",)


class NF4Arrays(NamedTuple):
    """A weight in NF4, as NumPy arrays.

    - **codes** (uint8, ``(out, in // 2)``) - two level indices a byte, the first element in the high nibble.
    - **absmax** - one per block, ``(out, in // block_size)``: float32, or with double quantization the int8 codes
      of the centred absmaxes, padded with zeros to a whole number of nested blocks and flattened,
      ``(nested_blocks * 256,)``.
    - **nested_scale** (float32, ``(nested_blocks,)``) - with double quantization, the largest ``|centred absmax|``
      of each nested block; else None.
    - **offset** (float32, ``()``) - with double quantization, the mean absmax; else None.
    """
    codes: np.ndarray
    absmax: np.ndarray
    nested_scale: Optional[np.ndarray]
    offset: Optional[np.ndarray]


def nearest_levels(normalized):
    """The NF4 code (0..15) of each value of ``normalized`` (values in [-1, 1]), as uint8."""
    return np.searchsorted(_MIDPOINTS, normalized, side="left").astype(np.uint8)


def pack_codes(codes):
    """Pack uint8 codes (0..15) two a byte along the last axis (of even length), the first in the high nibble."""
    return ((codes[..., 0::2] << 4) | codes[..., 1::2]).astype(np.uint8)


def unpack_codes(packed):
    """The inverse of :func:`pack_codes`: ``(..., n)`` bytes give ``(..., 2 n)`` codes."""
    codes = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), dtype=np.uint8)
    codes[..., 0::2] = packed >> 4
    codes[..., 1::2] = packed & 0x0F
    return codes


def _quantize_nested(absmax):
    """Double quantization of float32 absmaxes: ``(int8 codes, nested_scale, offset)``."""
    offset = np.float32(absmax.mean())
    centred = absmax.reshape(-1) - offset
    nested_blocks = -(-centred.size // NESTED_BLOCK_SIZE)
    padded = np.zeros(nested_blocks * NESTED_BLOCK_SIZE, dtype=np.float32)
    padded[:centred.size] = centred
    padded = padded.reshape(nested_blocks, NESTED_BLOCK_SIZE)
    nested_scale = np.abs(padded).max(axis=1).astype(np.float32)
    safe_scale = np.where(nested_scale > 0, nested_scale, np.float32(1))
    codes = np.rint(padded / safe_scale[:, None] * _NESTED_CODE_MAX).astype(np.int8)
    return codes.reshape(-1), nested_scale, np.asarray(offset, dtype=np.float32)


def dequantize_absmax(arrays, blocks_shape):
    """The float32 absmaxes ``blocks_shape`` of ``arrays`` (an :class:`NF4Arrays`), dequantized when double
    quantized."""
    if arrays.nested_scale is None:
        return arrays.absmax.astype(np.float32)
    codes = arrays.absmax.astype(np.float32).reshape(-1, NESTED_BLOCK_SIZE)
    step = arrays.nested_scale / np.float32(_NESTED_CODE_MAX)
    centred = (codes * step[:, None]).reshape(-1)[:int(np.prod(blocks_shape))]
    return (centred + arrays.offset).astype(np.float32).reshape(blocks_shape)


def quantize_nf4(weight, block_size=64, double_quant=True):
    """Quantize a 2-D float weight ``(out, in)`` to NF4.

    Args:
        weight (numpy.ndarray): the weight, float16 or float32, ``(out, in)``; ``block_size`` must divide ``in``
            (checked by the callers, :class:`~mindpet.quantization.NF4Dense` and :func:`~mindpet.quantize_base`).
        block_size (int): elements per absmax block, even. Default: ``64``.
        double_quant (bool): quantize the absmaxes to 8 bits as well. Default: ``True``.

    Returns:
        NF4Arrays.

    Examples:
        >>> import numpy as np
        >>> from mindpet.quantization.nf4 import dequantize_nf4, quantize_nf4
        >>> weight = np.array([[1.55, 1.62, 1.83, 4.32]], np.float32)
        >>> arrays = quantize_nf4(weight, block_size=4, double_quant=False)
        >>> arrays.codes, np.round(dequantize_nf4(arrays, block_size=4), 2)
        (array([[187, 207]], dtype=uint8), array([[1.46, 1.46, 1.9 , 4.32]], dtype=float32))
    """
    weight = np.asarray(weight, dtype=np.float32)
    out_channels, in_channels = weight.shape
    blocks = weight.reshape(out_channels, in_channels // block_size, block_size)
    absmax = np.abs(blocks).max(axis=2)
    # An all-zero block has absmax 0; its elements are 0 and take the exact level 0.
    safe_absmax = np.where(absmax > 0, absmax, np.float32(1))
    codes = nearest_levels(blocks / safe_absmax[..., None]).reshape(out_channels, in_channels)
    packed = pack_codes(codes)
    if not double_quant:
        return NF4Arrays(packed, absmax.astype(np.float32), None, None)
    return NF4Arrays(packed, *_quantize_nested(absmax))


def dequantize_nf4(arrays, block_size):
    """The float32 weight ``(out, in)`` that ``arrays`` (an :class:`NF4Arrays` of blocks of ``block_size``)
    stores: ``level[code] * absmax`` of each element's block."""
    codes = unpack_codes(arrays.codes)
    out_channels, in_channels = codes.shape
    absmax = dequantize_absmax(arrays, (out_channels, in_channels // block_size))
    levels = NF4_LEVELS[codes].reshape(out_channels, in_channels // block_size, block_size)
    return (levels * absmax[..., None]).reshape(out_channels, in_channels)


def double_quant_error_bound(arrays):
    """The largest error double quantization can add to any element of the weight ``arrays`` stores: half an int8
    step of the widest nested block, ``max(nested_scale) / 254``; 0 without double quantization."""
    if arrays.nested_scale is None:
        return 0.0
    return float(arrays.nested_scale.max()) / (2 * _NESTED_CODE_MAX)


def storage_bytes(arrays):
    """The bytes the arrays of ``arrays`` take."""
    return sum(array.nbytes for array in arrays if array is not None)
