"""Floating-point dtypes accepted for parameters and computation."""
import mindspore as ms
from mindspore import dtype as mstype

from mindpet.utils.validation import argument_error

_PORTABLE_FLOAT_TYPES = (mstype.float16, mstype.float32)
# bfloat16 kernels exist only on Ascend; elsewhere the first matmul would fail deep inside a graph.
_BFLOAT16_TARGETS = ("Ascend",)


def check_float_dtype(value, arg_name, owner):
    """Return ``value`` if it is float16 or float32 (or bfloat16 on Ascend), else raise TypeError."""
    if value in _PORTABLE_FLOAT_TYPES:
        return value
    if value == mstype.bfloat16 and ms.get_context("device_target") in _BFLOAT16_TARGETS:
        return value
    raise argument_error(TypeError, owner, arg_name,
                         "mindspore.float16 or mindspore.float32 (bfloat16 only on Ascend)", value)
