"""The base of every delta cell: parameters stored in one dtype, matmuls computed in another."""
from mindspore import dtype as mstype
from mindspore import nn
from mindspore.ops import operations as P

from mindpet.utils.dtype import check_float_dtype

# The input dtypes a delta cell computes on; an integer input would be truncated by the cast to the compute dtype.
INPUT_FLOAT_TYPES = (mstype.float16, mstype.float32, mstype.bfloat16)


class MixedPrecisionCell(nn.Cell):
    """A cell whose parameters are stored in ``param_init_type`` and multiplied in ``compute_dtype``.

    Subclasses compute on 2-D inputs: :meth:`_flatten` turns ``(*, width)`` into ``(N, width)``,
    :meth:`_to_compute_dtype` checks that the input is a float Tensor and casts it once, :meth:`_compute_param`
    casts a parameter only when the two dtypes differ, and :meth:`_restore` brings back the leading dimensions and
    the caller's dtype.

    Args:
        param_init_type (mindspore.dtype): dtype of the parameters, float32 or float16 (bfloat16 on Ascend).
        compute_dtype (mindspore.dtype): dtype of the matmuls, float32 or float16 (bfloat16 on Ascend).
        owner (str): the public cell named in error messages. Default: this class's name.

    Raises:
        TypeError: ``param_init_type`` or ``compute_dtype`` is not a supported float dtype.
    """

    def __init__(self, param_init_type, compute_dtype, owner=None):
        super().__init__()
        owner = owner or type(self).__name__
        self.owner = owner
        self.param_init_type = check_float_dtype(param_init_type, "param_init_type", owner)
        self.compute_dtype = check_float_dtype(compute_dtype, "compute_dtype", owner)
        # Parameters are cast on every call only when their dtype differs from the compute dtype.
        self.cast_params = param_init_type != compute_dtype
        self.cast = P.Cast()
        self.reshape = P.Reshape()

    def _compute_param(self, param):
        """A parameter in the compute dtype."""
        if self.cast_params:
            return self.cast(param, self.compute_dtype)
        return param

    def _flatten(self, x):
        """``(*, width)`` as ``(N, width)``."""
        if len(x.shape) != 2:
            x = self.reshape(x, (-1, x.shape[-1]))
        return x

    def _to_compute_dtype(self, x):
        """``x`` in the compute dtype; TypeError for a non-float input, as ``nn.Dense`` raises.

        The dtype is known when the graph is compiled, so in GRAPH mode the check runs at compile time.
        """
        if x.dtype not in INPUT_FLOAT_TYPES:
            raise TypeError(f"For '{self.owner}', the input 'x' must be a float16, float32 or bfloat16 Tensor, "
                            f"but got a Tensor of dtype {x.dtype}.")
        if x.dtype != self.compute_dtype:
            x = self.cast(x, self.compute_dtype)
        return x

    def _to_compute(self, x):
        """Flatten to 2-D and cast once to the compute dtype."""
        return self._to_compute_dtype(self._flatten(x))

    def _restore(self, y, input_shape, input_dtype):
        """Give a 2-D result the input's leading dimensions and dtype back."""
        if len(input_shape) != 2:
            y = self.reshape(y, input_shape[:-1] + (y.shape[-1],))
        if y.dtype != input_dtype:
            y = self.cast(y, input_dtype)
        return y
