"""A frozen Dense layer whose weight is stored in NF4: the quantized weight cell and the layer."""
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore import dtype as mstype
from mindspore.ops import operations as P

from mindpet.delta.base.dense_core import DenseCore
from mindpet.delta.base.docs import shard_doc, with_dense_arguments
from mindpet.injection.hosts import HostKind, HostView, dense_view_strategies
from mindpet.parallel.plan import TOKENS, Dim, Operand, OperatorPlan, ShardedOp, ShardValidated, activation_op
from mindpet.quantization.nf4 import (
    NESTED_BLOCK_SIZE,
    NF4_LEVELS,
    QUANT_TYPES,
    NF4Arrays,
    dequantize_nf4,
    quantize_nf4,
)
from mindpet.utils.dtype import check_float_dtype
from mindpet.utils.validation import argument_error, check_bool, check_positive_int, check_str

# The nibble of a packed byte that holds the second code, and the shift that brings down the first.
_LOW_NIBBLE = 0x0F
_NIBBLE_BITS = 4


def check_quantization(quant_type, block_size, double_quant, owner):
    """Validate the quantization arguments; returns them.

    Raises:
        TypeError: `quant_type` is not a str, `block_size` not an int, `double_quant` not a bool.
        ValueError: `quant_type` is not one of :data:`~mindpet.quantization.nf4.QUANT_TYPES`; `block_size` is not
            positive or not even.
    """
    quant_type = check_str(quant_type, "quant_type", owner)
    if quant_type not in QUANT_TYPES:
        raise argument_error(ValueError, owner, "quant_type", f"one of {list(QUANT_TYPES)}", quant_type)
    block_size = check_positive_int(block_size, "block_size", owner)
    if block_size % 2:
        raise argument_error(ValueError, owner, "block_size", "even (two 4-bit codes share a byte)", block_size)
    return quant_type, block_size, check_bool(double_quant, "double_quant", owner)


def check_block_fits(block_size, in_channels, owner, layer="the layer"):
    """ValueError unless ``block_size`` divides ``in_channels`` of ``layer``: blocks never straddle two rows, so a
    row split of the weight (a model-parallel shard) holds whole blocks."""
    if in_channels % block_size:
        raise argument_error(ValueError, owner, "block_size", f"a divisor of the in_channels ({in_channels}) of "
                             f"{layer}: each row holds whole blocks", block_size)


class NF4Weight(nn.Cell):
    r"""A frozen weight ``(out_channels, in_channels)`` stored in NF4 (4-bit NormalFloat, Dettmers et al., 2023).

    The weight is cut into blocks of ``block_size`` consecutive elements of each row; an element is stored as the
    index of the nearest of the 16 NF4 levels after division by its block's absolute maximum, two indices a byte.
    :meth:`dequantize` computes ``level[code] * absmax`` in float32 (the levels are gathered, the absmaxes
    broadcast over their blocks) and casts the result to the requested dtype once.

    Parameters (all frozen, ``requires_grad=False``; :func:`mindpet.freeze_modules` never unfreezes them):

    - ``codes`` uint8 ``(out_channels, in_channels // 2)``, the first element of a pair in the high nibble.
    - ``absmax`` float32 ``(out_channels, in_channels // block_size)``; with ``double_quant``, int8
      ``(nested_blocks * 256,)``: the absmaxes minus their mean, linearly quantized in blocks of 256 (the last block
      padded with zeros).
    - ``nested_absmax`` float32 ``(nested_blocks,)`` and ``nested_offset`` float32 ``()``, with ``double_quant`` only:
      each nested block's largest centred absmax, and the mean.

    Args:
        weight (numpy.ndarray): the float weight to quantize, ``(out_channels, in_channels)``.
        block_size (int): elements per absmax block; even, and a divisor of ``in_channels``.
        double_quant (bool): quantize the absmaxes to 8 bits as well (about 4.13 bits a weight instead of 4.5).
        dtype (mindspore.dtype): the float dtype of the weight it replaces, float32 or float16; :meth:`to_array` and
            merging give the weight back in it.

    Raises:
        TypeError: ``block_size`` is not an int, ``double_quant`` not a bool, ``dtype`` not float16 or float32.
        ValueError: ``weight`` is not 2-D; ``block_size`` is not positive, odd, or does not divide ``in_channels``.
    """

    # Read by the freezing functions: a cell whose parameters are storage, never trained.
    is_frozen_storage = True

    def __init__(self, weight, block_size=64, double_quant=True, dtype=mstype.float32):
        super().__init__()
        owner = type(self).__name__
        weight = np.asarray(weight)
        if weight.ndim != 2:
            raise argument_error(ValueError, owner, "weight", "a 2-D array (out_channels, in_channels)",
                                 f"an array of shape {weight.shape}")
        self.out_channels, self.in_channels = (int(size) for size in weight.shape)
        _, self.block_size, self.double_quant = check_quantization("nf4", block_size, double_quant, owner)
        check_block_fits(self.block_size, self.in_channels, owner)
        self.dtype = check_float_dtype(dtype, "dtype", owner)
        self.blocks_per_row = self.in_channels // self.block_size
        arrays = quantize_nf4(weight, self.block_size, self.double_quant)
        self.codes = Parameter(Tensor(arrays.codes), name="codes", requires_grad=False)
        self.absmax = Parameter(Tensor(arrays.absmax), name="absmax", requires_grad=False)
        if self.double_quant:
            self.nested_absmax = Parameter(Tensor(arrays.nested_scale), name="nested_absmax", requires_grad=False)
            self.nested_offset = Parameter(Tensor(arrays.offset), name="nested_offset", requires_grad=False)
        self.levels = Tensor(NF4_LEVELS)
        self.nibble_bits = Tensor(_NIBBLE_BITS, mstype.int32)
        self.low_nibble = Tensor(_LOW_NIBBLE, mstype.int32)
        self.nested_code_max = Tensor(127.0, mstype.float32)

        self.cast = P.Cast()
        self.reshape = P.Reshape()
        self.right_shift = P.RightShift()
        self.bitwise_and = P.BitwiseAnd()
        self.interleave = P.Stack(axis=-1)
        self.gather = P.Gather()
        self.scale_mul = P.Mul()
        self.nested_mul = P.Mul()
        self.nested_div = P.RealDiv()
        self.nested_add = P.Add()
        self.slice = P.StridedSlice()
        self.stop_gradient = P.StopGradient()

    @property
    def shape(self):
        """The shape of the weight it stores, ``(out_channels, in_channels)``."""
        return self.out_channels, self.in_channels

    def _absmax(self):
        """The float32 absmaxes ``(out_channels, blocks_per_row, 1)``."""
        if not self.double_quant:
            return self.reshape(self.absmax, (self.out_channels, self.blocks_per_row, 1))
        codes = self.reshape(self.cast(self.absmax, mstype.float32), (-1, NESTED_BLOCK_SIZE))
        step = self.nested_div(self.reshape(self.nested_absmax, (-1, 1)), self.nested_code_max)
        centred = self.reshape(self.nested_mul(codes, step), (-1,))
        blocks = self.out_channels * self.blocks_per_row
        centred = self.slice(centred, (0,), (blocks,), (1,))
        return self.reshape(self.nested_add(centred, self.nested_offset), (self.out_channels, self.blocks_per_row, 1))

    def dequantize(self, dtype):
        """The weight ``(out_channels, in_channels)`` in ``dtype``; no gradient flows into the storage."""
        packed = self.cast(self.codes, mstype.int32)
        codes = self.interleave((self.right_shift(packed, self.nibble_bits), self.bitwise_and(packed, self.low_nibble)))
        codes = self.reshape(codes, (self.out_channels, self.blocks_per_row, self.block_size))
        weight = self.scale_mul(self.gather(self.levels, codes, 0), self._absmax())
        weight = self.reshape(weight, (self.out_channels, self.in_channels))
        if dtype != mstype.float32:
            weight = self.cast(weight, dtype)
        return self.stop_gradient(weight)

    def arrays(self):
        """The stored arrays as an :class:`~mindpet.quantization.nf4.NF4Arrays` of NumPy arrays."""
        if not self.double_quant:
            return NF4Arrays(self.codes.asnumpy(), self.absmax.asnumpy(), None, None)
        return NF4Arrays(self.codes.asnumpy(), self.absmax.asnumpy(), self.nested_absmax.asnumpy(),
                         self.nested_offset.asnumpy())

    def to_array(self):
        """The dequantized weight as a float32 NumPy array ``(out_channels, in_channels)``."""
        return dequantize_nf4(self.arrays(), self.block_size)

    def parameter_sizes(self):
        """``{id(param): count}``: the codes count as the ``out_channels * in_channels`` weights they store, the
        scales as none (see :func:`mindpet.injection.summary.parameter_sizes`)."""
        sizes = {id(param): 0 for param in self.get_parameters()}
        sizes[id(self.codes)] = self.out_channels * self.in_channels
        return sizes

    def storage_bytes(self):
        """The bytes of the stored Parameters."""
        return sum(param.nbytes for param in self.get_parameters())

    def quantization_info(self):
        """How the weight is stored, as a JSON-safe dict (for the fingerprint of a saved delta)."""
        return {"quant_type": "nf4", "block_size": self.block_size, "double_quant": self.double_quant,
                "nested_block_size": NESTED_BLOCK_SIZE if self.double_quant else None,
                "shape": [self.out_channels, self.in_channels], "dtype": str(self.dtype).lower()}

    def block_layout_op(self, arg_name, out_dim):
        """The matmul strategy ``((dp, k), (mp, k))`` seen by the storage: ``k`` must split the blocks of a row
        (``in_channels // block_size``) into equal parts; the dequantization is then split ``(mp, k)`` as well."""
        blocks = Dim(f"the blocks of a row (in_channels / block_size = {self.blocks_per_row})", self.blocks_per_row)
        inputs = (Operand("x", (TOKENS, blocks)), Operand("weight", (out_dim, blocks)))
        return ShardedOp(arg_name, inputs, Operand("dequantized_weight", (out_dim, blocks)), self._shard_dequantize)

    def _shard_dequantize(self, strategy):
        (_, k), (mp, _) = strategy
        self.right_shift.shard(((mp, k), ()))
        self.bitwise_and.shard(((mp, k), ()))
        self.gather.shard(((1,), (mp, k, 1)))
        self.scale_mul.shard(((mp, k, 1), (mp, k, 1)))


@with_dense_arguments
class NF4Dense(ShardValidated, DenseCore):
    r"""A frozen Dense layer whose weight is stored in 4-bit NormalFloat (QLoRA, Dettmers et al., 2023).

    .. math::
        y = \mathrm{activation}\left(x\, \mathrm{dequant}(W_{NF4})^T + b\right),\qquad
        \mathrm{dequant}(W)_{ij} = \mathrm{level}[c_{ij}] \cdot \mathrm{absmax}_{i,\lfloor j / block\_size \rfloor}

    The weight built from ``weight_init`` is quantized once, at construction, into an :class:`NF4Weight` held as
    ``weight`` (Parameters ``weight.codes``, ``weight.absmax`` and, with ``double_quant``, ``weight.nested_absmax``
    and ``weight.nested_offset``); the float weight is not kept. The bias stays in ``param_init_type``. Every call
    dequantizes the weight to ``compute_dtype``. Nothing in the layer trains; LoRA and the other mergeable methods
    inject on top of it with :func:`mindpet.get_delta_model` and keep the 4-bit storage.
    :func:`mindpet.quantize_base` swaps the Dense layers of a built network for this layer.

    Args:
{dense_channels}
{dense_inits}
{dtypes}
        block_size (int): elements per absmax block; even, and a divisor of ``in_channels``. Default: ``64``.
        double_quant (bool): quantize the absmaxes to 8 bits in blocks of 256 as well. Default: ``True``.
        quant_type (str): the 4-bit data type; only ``'nf4'``. Default: ``'nf4'``.

{dense_inputs_outputs}

    Raises:
        TypeError: ``in_channels``, ``out_channels`` or ``block_size`` is not an int; ``quant_type`` not a str;
            ``has_bias`` or ``double_quant`` not a bool; ``param_init_type`` or ``compute_dtype`` is not float16 or
            float32; when called, ``x`` is not a float Tensor.
        ValueError: ``in_channels`` or ``out_channels`` is <= 0; ``quant_type`` is not ``'nf4'``; ``block_size`` is
            not positive, odd, or does not divide ``in_channels``; an init Tensor has the wrong shape.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.quantization import NF4Dense
        >>> weight = ms.Tensor(np.random.default_rng(0).normal(size=(4, 128)), ms.float32)
        >>> dense = NF4Dense(128, 4, weight_init=weight, compute_dtype=ms.float32)
        >>> dense(ms.Tensor(np.ones((2, 3, 128)), ms.float32)).shape
        (2, 3, 4)
        >>> sorted(param.name for param in dense.get_parameters())
        ['bias', 'weight.absmax', 'weight.codes', 'weight.nested_absmax', 'weight.nested_offset']
        >>> dense.weight.storage_bytes(), 4 * 128 * 4
        (520, 2048)
    """

    def __init__(self, in_channels, out_channels, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None, param_init_type=mstype.float32, compute_dtype=mstype.float16, block_size=64,
                 double_quant=True, quant_type="nf4"):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init, has_bias=has_bias,
                         activation=activation, param_init_type=param_init_type, compute_dtype=compute_dtype)
        owner = type(self).__name__
        self.quant_type, block_size, double_quant = check_quantization(quant_type, block_size, double_quant, owner)
        check_block_fits(block_size, self.in_channels, owner)
        self.adopt_weight(NF4Weight(self.weight.asnumpy(), block_size, double_quant, self.param_init_type))
        if self.has_bias:
            self.bias.requires_grad = False

    def quantization_info(self):
        """How the weight is stored: ``quant_type``, ``block_size``, ``double_quant``, ``nested_block_size``,
        ``shape`` and ``dtype`` (a JSON-safe dict)."""
        return self.weight.quantization_info()

    def shard(self, strategy_matmul=None, strategy_bias_add=None, strategy_activation=None):
        return self._accept_strategies({"strategy_matmul": strategy_matmul, "strategy_bias_add": strategy_bias_add,
                                        "strategy_activation": strategy_activation})

    shard.__doc__ = shard_doc("""
            strategy_matmul (tuple): ``x (N, in) @ weight (out, in)^T``, e.g. ``((dp, 1), (mp, 1))``; the
                dequantization of the weight is split like the weight.
            strategy_bias_add (tuple): ``+ bias``, e.g. ``((dp, mp), (mp,))``.
            strategy_activation (tuple): the activation input's layout, e.g. ``((dp, mp),)``.""",
                              "``in_channels``, ``out_channels``, the blocks of a row (``in_channels / block_size``)",
                              "``N`` or ``out_channels`` unlike an earlier strategy")

    def _shard_plan(self):
        _, out_dim = self._channel_dims()
        dense_ops, dense_output = self._dense_ops("strategy_matmul", "strategy_bias_add")
        ops = (*dense_ops, activation_op("strategy_activation", self.activation, type(self).__name__,
                                         Operand(dense_output, (TOKENS, out_dim)), "activated"))
        return OperatorPlan(ops, tied=(TOKENS, out_dim))

    def extend_repr(self):
        return (f"{super().extend_repr()}, quant_type={self.quant_type}, block_size={self.weight.block_size}, "
                f"double_quant={self.weight.double_quant}")


def _view_nf4_dense(cell):
    activation = cell.activation if cell.activation_flag else None
    return HostView("NF4Dense", cell.in_channels, cell.out_channels, cell.weight, cell.bias if cell.has_bias else None,
                    activation, cell.param_init_type, cell.compute_dtype,
                    *dense_view_strategies(cell.matmul, cell.bias_add if cell.has_bias else None))


# The host kind of mindpet.registry.HOST_KINDS: a method injected on an NF4Dense adopts its quantized weight cell.
NF4_DENSE = HostKind("NF4Dense", lambda cell: isinstance(cell, NF4Dense), _view_nf4_dense)
