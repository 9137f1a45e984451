"""Low-rank adapters (Mahabadi et al., 2021, "Compacter"): bottleneck adapters whose projection weights are
products of two rank-``low_rank_size`` factors, for a fraction of the Houlsby adapter's parameters."""
from mindspore import dtype as mstype
from mindspore.common.initializer import Initializer
from mindspore.ops import operations as P

from mindpet.delta.base.bottleneck import BottleneckBranch, ResidualAdapterDense, ResidualAdapterLayer
from mindpet.delta.base.docs import DENSE_ADAPTER_TIED, DENSE_SHARD_ARGUMENTS, shard_doc, with_dense_arguments
from mindpet.parallel.plan import Dim, Operand, primitive_op, strategy_arguments
from mindpet.utils.naming import DELTA_PREFIX
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import argument_error, check_positive_int

LOW_RANK_ADAPTER_BRANCH = DELTA_PREFIX + "low_rank_adapter"


def _bottleneck_size(width, reduction_factor, width_name, owner):
    """``width // reduction_factor``, refusing a factor that would leave an empty bottleneck."""
    if reduction_factor > width:
        raise argument_error(ValueError, owner, "reduction_factor", f"<= {width_name} ({width})", reduction_factor)
    return width // reduction_factor


class LowRankBranch(BottleneckBranch):
    """``up(non_linearity(h W_down + b_down)) W_up + b_up`` where ``W_down = L_down R_down``, ``W_up = L_up R_up``.

    Parameters (under the owner's ``mindpet_delta_low_rank_adapter`` attribute): ``down_weight_left``
    ``(hidden_size, low_rank_size)``, ``down_weight_right`` ``(low_rank_size, bottleneck_size)``,
    ``up_weight_left`` ``(bottleneck_size, low_rank_size)``, ``up_weight_right``
    ``(low_rank_size, hidden_size)``, and the zero-initialised ``down_bias`` and ``up_bias``.
    """

    def __init__(self, hidden_size, bottleneck_size, low_rank_size, low_rank_w_init, non_linearity,
                 param_init_type, compute_dtype, owner):
        super().__init__(hidden_size, bottleneck_size, non_linearity, param_init_type, compute_dtype, owner)
        if not isinstance(low_rank_w_init, (str, Initializer)):
            raise argument_error(TypeError, owner, "low_rank_w_init", "a str or an Initializer", low_rank_w_init)
        self.low_rank_size = low_rank_size
        factor_shapes = {"down_weight_left": (hidden_size, low_rank_size),
                         "down_weight_right": (low_rank_size, bottleneck_size),
                         "up_weight_left": (bottleneck_size, low_rank_size),
                         "up_weight_right": (low_rank_size, hidden_size)}
        for name, shape in factor_shapes.items():
            setattr(self, name, make_parameter(low_rank_w_init, shape, param_init_type, name, "low_rank_w_init",
                                               owner))
        # The manual's shard() splits forming each weight (``*_weight``) and applying it (``*_input``) separately.
        self.down_weight_matmul = P.MatMul()
        self.down_input_matmul = P.MatMul()
        self.up_weight_matmul = P.MatMul()
        self.up_input_matmul = P.MatMul()

    def _down(self, h):
        weight = self.down_weight_matmul(self._compute_param(self.down_weight_left),
                                         self._compute_param(self.down_weight_right))
        return self.down_input_matmul(h, weight)

    def _up(self, h):
        weight = self.up_weight_matmul(self._compute_param(self.up_weight_left),
                                       self._compute_param(self.up_weight_right))
        return self.up_input_matmul(h, weight)

    def _bottleneck_dim(self):
        return Dim("the bottleneck width", self.bottleneck_size)

    def _projection_ops(self, name, weight_matmul, input_matmul, weight_dims, source, output):
        """Forming a projection weight ``(rows, columns)`` from its factors, then applying it to ``source``."""
        rows, columns = weight_dims
        rank = Dim("low_rank_size", self.low_rank_size)
        weight = f"{name}_weight"
        return (primitive_op(f"strategy_matmul_{name}_sampler_weight", weight_matmul,
                             (Operand(f"{weight}_left", (rows, rank)), Operand(f"{weight}_right", (rank, columns))),
                             weight),
                primitive_op(f"strategy_matmul_{name}_sampler_input", input_matmul,
                             (source, Operand(weight, weight_dims)), output))

    def _down_ops(self, hidden, bottleneck, source, output):
        return self._projection_ops("down", self.down_weight_matmul, self.down_input_matmul, (hidden, bottleneck),
                                    source, output)

    def _up_ops(self, hidden, bottleneck, source, output):
        return self._projection_ops("up", self.up_weight_matmul, self.up_input_matmul, (bottleneck, hidden), source,
                                    output)


_SHARD_ARGS_DOC = """
            strategy_matmul_down_sampler_weight (tuple): ``L_down @ R_down``, e.g. ``((1, 1), (1, 1))``.
            strategy_matmul_down_sampler_input (tuple): ``h @ W_down``, e.g. ``((dp, 1), (1, 1))``.
            strategy_bias_down_sampler (tuple): ``+ b_down``, e.g. ``((dp, 1), (1,))``.
            strategy_non_linearity (tuple): the adapter activation input's layout, e.g. ``((dp, 1),)``.
            strategy_matmul_up_sampler_weight (tuple): ``L_up @ R_up``, e.g. ``((1, 1), (1, 1))``.
            strategy_matmul_up_sampler_input (tuple): ``h @ W_up``, e.g. ``((dp, 1), (1, 1))``.
            strategy_bias_up_sampler (tuple): ``+ b_up``, e.g. ``((dp, 1), (1,))``.
            strategy_residual_add (tuple): the residual sum, e.g. ``((dp, 1), (dp, 1))``."""


@with_dense_arguments
class LowRankAdapterLayer(ResidualAdapterLayer):
    r"""A low-rank adapter inserted after an existing layer: an :class:`~mindpet.delta.AdapterLayer` whose
    projection weights are each a product of two rank-``low_rank_size`` factors.

    .. math::
        y = x + \mathrm{non\_linearity}(x\, L_{down} R_{down} + b_{down})\, L_{up} R_{up} + b_{up}

    with ``k = hidden_size // reduction_factor``, ``L_down`` ``(hidden_size, low_rank_size)``, ``R_down``
    ``(low_rank_size, k)``, ``L_up`` ``(k, low_rank_size)`` and ``R_up`` ``(low_rank_size, hidden_size)``. The
    four factors use ``low_rank_w_init`` and the biases start at zero. As in the MindPet manual and the
    Compacter paper, both projections are initialised non-zero, so unlike :class:`~mindpet.delta.AdapterLayer`
    a fresh layer is close to, but not exactly, the identity. The parameters live under
    ``mindpet_delta_low_rank_adapter``, which ``freeze_delta(net, 'low_rank_adapter')`` selects. Adapters are
    nonlinear and cannot be merged into the preceding weight.

    Args:
        hidden_size (int): size of the last input (and output) dimension.
        reduction_factor (int): the bottleneck is ``hidden_size // reduction_factor`` wide; at most
            ``hidden_size``.
        low_rank_size (int): rank of each projection's factors. Default: 1.
        low_rank_w_init (Union[str, Initializer]): init of the four factors. Default: ``'xavier_uniform'``.
        non_linearity (str): activation between the projections, e.g. ``'gelu'``, ``'relu'``, ``'tanh'``,
            ``'leakyrelu'`` or ``'silu'``. Default: ``'gelu'``.
{dtypes}

{layer_inputs_outputs}

    Raises:
        TypeError: ``hidden_size``, ``reduction_factor`` or ``low_rank_size`` is not an int; ``low_rank_w_init``
            is not a str or Initializer; ``non_linearity`` is not a str; ``param_init_type`` or
            ``compute_dtype`` is not float16 or float32; when called, ``x`` is not a float16, float32 or bfloat16
            Tensor (at compile time in GRAPH mode).
        ValueError: ``hidden_size``, ``reduction_factor`` or ``low_rank_size`` is <= 0 or above 2**31 - 1;
            ``reduction_factor`` is greater than ``hidden_size``; ``low_rank_w_init`` is an unknown initializer
            name.
        ActivationNotFoundError: ``non_linearity`` is an unknown name (a ValueError and a KeyError).

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import LowRankAdapterLayer
        >>> adapter = LowRankAdapterLayer(hidden_size=16, reduction_factor=4, compute_dtype=ms.float32)
        >>> adapter(ms.Tensor(np.ones((2, 3, 16)), ms.float32)).shape
        (2, 3, 16)
        >>> sorted(p.name for p in adapter.trainable_params())[:2]
        ['mindpet_delta_low_rank_adapter.down_bias', 'mindpet_delta_low_rank_adapter.down_weight_left']
    """

    BRANCH_NAME = LOW_RANK_ADAPTER_BRANCH

    def __init__(self, hidden_size, reduction_factor, low_rank_size=1, low_rank_w_init="xavier_uniform",
                 non_linearity="gelu", param_init_type=mstype.float32, compute_dtype=mstype.float16):
        super().__init__(param_init_type, compute_dtype)
        owner = type(self).__name__
        self.hidden_size = check_positive_int(hidden_size, "hidden_size", owner)
        self.reduction_factor = check_positive_int(reduction_factor, "reduction_factor", owner)
        self.low_rank_size = check_positive_int(low_rank_size, "low_rank_size", owner)
        self.bottleneck_size = _bottleneck_size(self.hidden_size, self.reduction_factor, "hidden_size", owner)
        self.mindpet_delta_low_rank_adapter = LowRankBranch(
            self.hidden_size, self.bottleneck_size, self.low_rank_size, low_rank_w_init, non_linearity,
            param_init_type, compute_dtype, owner)

    def shard(self, strategy_matmul_down_sampler_weight=None, strategy_matmul_down_sampler_input=None,
              strategy_bias_down_sampler=None, strategy_non_linearity=None, strategy_matmul_up_sampler_weight=None,
              strategy_matmul_up_sampler_input=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc(_SHARD_ARGS_DOC, "``hidden_size``, ``low_rank_size``, the bottleneck width",
                              "``N`` or ``hidden_size`` unlike an earlier strategy (the branch is added back to its "
                              "input)")

    def extend_repr(self):
        return (f"hidden_size={self.hidden_size}, reduction_factor={self.reduction_factor}, "
                f"low_rank_size={self.low_rank_size}, "
                f"non_linearity={self.mindpet_delta_low_rank_adapter.non_linearity}")


@with_dense_arguments
class LowRankAdapterDense(ResidualAdapterDense):
    r"""A Dense layer followed by a low-rank adapter, a drop-in replacement for ``nn.Dense``.

    .. math::
        h = \mathrm{activation}(x W^T + b), \qquad
        y = h + \mathrm{non\_linearity}(h\, L_{down} R_{down} + b_{down})\, L_{up} R_{up} + b_{up}

    ``W`` (``weight``) and ``b`` (``bias``) keep ``nn.Dense``'s names and shapes, so a pretrained checkpoint of
    the unmodified model loads unchanged. The adapter is :class:`LowRankAdapterLayer`'s, of width
    ``out_channels`` and bottleneck ``out_channels // reduction_factor``, under
    ``mindpet_delta_low_rank_adapter``. Both projections start non-zero (as in the MindPet manual), so a fresh
    cell is close to, but not exactly, the Dense layer it replaces.

    Args:
{dense_channels}
{dense_inits}
        reduction_factor (int): the bottleneck is ``out_channels // reduction_factor`` wide; at most
            ``out_channels``. Default: 1.
        low_rank_size (int): rank of each projection's factors. Default: 1.
        low_rank_w_init (Union[str, Initializer]): init of the four factors. Default: ``'xavier_uniform'``.
        non_linearity (str): activation inside the adapter. Default: ``'gelu'``.
{dtypes}

{dense_inputs_outputs}

    Raises:
        TypeError: ``in_channels``, ``out_channels``, ``reduction_factor`` or ``low_rank_size`` is not an int;
            ``has_bias`` is not a bool; ``activation`` is not a str, Cell, Primitive or None; ``non_linearity``
            is not a str; ``weight_init`` or ``bias_init`` is not a Tensor, str, Initializer or number;
            ``low_rank_w_init`` is not a str or Initializer; ``param_init_type`` or ``compute_dtype`` is not
            float16 or float32; when called, ``x`` is not a float16, float32 or bfloat16 Tensor.
        ValueError: ``in_channels``, ``out_channels``, ``reduction_factor`` or ``low_rank_size`` is <= 0 or
            above 2**31 - 1; ``reduction_factor`` is greater than ``out_channels``; an init Tensor has the wrong
            shape, an init name is unknown, or an init number or Tensor value is NaN or infinite.
        ActivationNotFoundError: ``activation`` or ``non_linearity`` is an unknown name (a ValueError and a
            KeyError).

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import LowRankAdapterDense
        >>> dense = LowRankAdapterDense(in_channels=8, out_channels=16, reduction_factor=4,
        ...                             compute_dtype=ms.float32)
        >>> dense(ms.Tensor(np.ones((3, 5, 8)), ms.float32)).shape
        (3, 5, 16)
    """

    BRANCH_NAME = LOW_RANK_ADAPTER_BRANCH

    def __init__(self, in_channels, out_channels, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None, reduction_factor=1, low_rank_size=1, low_rank_w_init="xavier_uniform",
                 non_linearity="gelu", param_init_type=mstype.float32, compute_dtype=mstype.float16):
        super().__init__(in_channels, out_channels, weight_init, bias_init, has_bias, activation, param_init_type,
                         compute_dtype)
        owner = type(self).__name__
        self.reduction_factor = check_positive_int(reduction_factor, "reduction_factor", owner)
        self.low_rank_size = check_positive_int(low_rank_size, "low_rank_size", owner)
        self.bottleneck_size = _bottleneck_size(self.out_channels, self.reduction_factor, "out_channels", owner)
        self.mindpet_delta_low_rank_adapter = LowRankBranch(
            self.out_channels, self.bottleneck_size, self.low_rank_size, low_rank_w_init, non_linearity,
            param_init_type, compute_dtype, owner)

    def shard(self, strategy_matmul_org=None, strategy_bias_org=None, strategy_activation_org=None,
              strategy_matmul_down_sampler_weight=None, strategy_matmul_down_sampler_input=None,
              strategy_bias_down_sampler=None, strategy_non_linearity=None, strategy_matmul_up_sampler_weight=None,
              strategy_matmul_up_sampler_input=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc(DENSE_SHARD_ARGUMENTS + _SHARD_ARGS_DOC,
                              "``in_channels``, ``out_channels``, ``low_rank_size``, the bottleneck width",
                              DENSE_ADAPTER_TIED)

    def extend_repr(self):
        return (f"{super().extend_repr()}, reduction_factor={self.reduction_factor}, "
                f"low_rank_size={self.low_rank_size}, "
                f"non_linearity={self.mindpet_delta_low_rank_adapter.non_linearity}")
