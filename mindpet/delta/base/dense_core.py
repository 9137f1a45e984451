"""The ``nn.Dense``-compatible core that every delta Dense cell extends."""
import numpy as np
from mindspore import Parameter
from mindspore import dtype as mstype
from mindspore.ops import operations as P

from mindpet.delta.base.docs import with_dense_arguments
from mindpet.delta.base.mixed_precision import MixedPrecisionCell
from mindpet.parallel.plan import TOKENS, Dim, Operand, primitive_op
from mindpet.utils.activation import build_activation
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import check_bool, check_positive_int


@with_dense_arguments
class DenseCore(MixedPrecisionCell):
    r"""``y = activation(x W^T + b)`` with ``nn.Dense``'s parameter names, so pretrained checkpoints load unchanged.

    Subclasses add a delta branch in ``construct`` using the helpers below: :meth:`_to_compute` flattens the
    input to 2-D and casts it once to ``compute_dtype``, :meth:`_dense` applies the frozen weight and bias,
    :meth:`_activate` the activation, and :meth:`_restore` brings back the leading dimensions and the input
    dtype. The frozen weight is either the Parameter ``weight`` or, after :meth:`adopt_weight` was given a quantized
    weight cell (:class:`~mindpet.quantization.NF4Weight`), that cell, dequantized by :meth:`_base_weight` on every
    call. On its own the core is a Dense layer that computes in ``compute_dtype`` and returns the input's dtype;
    :func:`mindpet.delta.merge_and_unload` uses it for merged LoRA cells whose compute dtype differs from their
    parameters'.

    Args:
{dense_channels}
{dense_inits}
{dtypes}

{dense_inputs_outputs}
    """

    def __init__(self, in_channels, out_channels, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None, param_init_type=mstype.float32, compute_dtype=mstype.float16):
        super().__init__(param_init_type, compute_dtype)
        owner = type(self).__name__
        self.in_channels = check_positive_int(in_channels, "in_channels", owner)
        self.out_channels = check_positive_int(out_channels, "out_channels", owner)
        self.has_bias = check_bool(has_bias, "has_bias", owner)

        self.weight = make_parameter(weight_init, (self.out_channels, self.in_channels), param_init_type,
                                     "weight", "weight_init", owner)
        # True once adopt_weight() replaced the Parameter by a quantized weight cell; fixed before the first compile.
        self.weight_quantized = False
        self.bias = None
        if self.has_bias:
            self.bias = make_parameter(bias_init, (self.out_channels,), param_init_type, "bias", "bias_init", owner)
        self.activation = build_activation(activation, "activation", owner)
        self.activation_flag = self.activation is not None

        self.matmul = P.MatMul(transpose_b=True)
        self.bias_add = P.BiasAdd()

    def construct(self, x):
        input_shape = x.shape
        input_dtype = x.dtype
        return self._restore(self._activate(self._dense(self._to_compute(x))), input_shape, input_dtype)

    def adopt_weight(self, weight):
        """Hold ``weight`` as the frozen weight: a Parameter ``(out_channels, in_channels)`` (kept as the very same
        object), or a quantized weight cell of that shape, which replaces the float Parameter so that only the
        quantized storage stays resident. Call it before the first compile.

        Raises:
            ValueError: ``weight`` has another shape.
        """
        shape = tuple(weight.shape)
        if shape != (self.out_channels, self.in_channels):
            raise ValueError(f"For '{type(self).__name__}', the adopted weight must have shape "
                             f"{(self.out_channels, self.in_channels)}, but got {shape}.")
        if isinstance(weight, Parameter):
            self.weight = weight
            return
        del self.weight
        self.weight = weight
        self.weight_quantized = True

    def _base_weight(self):
        """The frozen weight ``(out_channels, in_channels)`` in the compute dtype, as :meth:`_dense` multiplies it;
        a quantized weight is dequantized straight to the compute dtype."""
        if self.weight_quantized:
            return self.weight.dequantize(self.compute_dtype)
        return self._compute_param(self.weight)

    def base_weight_array(self):
        """The frozen weight ``(out_channels, in_channels)`` as a float32 NumPy array (dequantized if quantized)."""
        if self.weight_quantized:
            return self.weight.to_array()
        return self.weight.asnumpy().astype(np.float32)

    def _dense(self, x):
        """``x W^T + b`` on a 2-D input already in the compute dtype."""
        y = self.matmul(x, self._base_weight())
        if self.has_bias:
            y = self.bias_add(y, self._compute_param(self.bias))
        return y

    def _activate(self, y):
        if self.activation_flag:
            y = self.activation(y)
        return y

    def _channel_dims(self):
        """The input and output width as shard-plan axes."""
        return Dim("in_channels", self.in_channels), Dim("out_channels", self.out_channels)

    def _dense_ops(self, matmul_arg, bias_arg):
        """The shard plan of ``x W^T + b``: its operators, and the name of the tensor the Dense part produces.

        ``matmul_arg`` splits ``x`` ``(N, in_channels)`` and ``weight`` ``(out_channels, in_channels)``; ``bias_arg``
        the product ``(N, out_channels)`` and ``bias`` ``(out_channels,)``, and is refused without a bias.
        """
        in_dim, out_dim = self._channel_dims()
        no_bias = None if self.has_bias else "the cell has no bias"
        ops = (primitive_op(matmul_arg, self.matmul, (Operand("x", (TOKENS, in_dim)),
                                                      Operand("weight", (out_dim, in_dim))), "dense"),
               primitive_op(bias_arg, self.bias_add, (Operand("dense", (TOKENS, out_dim)), Operand("bias", (out_dim,))),
                            "dense_biased", absent=no_bias))
        if self.weight_quantized:
            # The matmul strategy also splits the quantized storage, which holds whole blocks only.
            ops += (self.weight.block_layout_op(matmul_arg, out_dim),)
        return ops, "dense_biased" if self.has_bias else "dense"

    def extend_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, has_bias={self.has_bias}, "
                f"activation={self.activation}")
