"""Bottleneck adapters (Houlsby et al., 2019): a small residual MLP after a layer, trained while the model is frozen."""
import math

from mindspore import dtype as mstype
from mindspore.common.initializer import HeUniform
from mindspore.ops import operations as P

from mindpet.delta.base.bottleneck import BottleneckBranch, ResidualAdapterDense, ResidualAdapterLayer
from mindpet.delta.base.docs import DENSE_ADAPTER_TIED, DENSE_SHARD_ARGUMENTS, shard_doc, with_dense_arguments
from mindpet.parallel.plan import Dim, Operand, primitive_op, strategy_arguments
from mindpet.utils.naming import DELTA_PREFIX
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import check_positive_int

ADAPTER_BRANCH = DELTA_PREFIX + "adapter"
# The same default as nn.Dense, so the bottleneck starts with well-scaled features; the up-projection starts at
# zero, which makes the adapter the identity at init.
_DOWN_WEIGHT_INIT = HeUniform(negative_slope=math.sqrt(5))

# The adapter branch in the shard() arguments of both adapter cells; ``h`` is the adapted tensor.
_ADAPTER_SHARD_ARGUMENTS = """
            strategy_matmul_down_sampler (tuple): ``h @ W_down^T``, e.g. ``((dp, 1), (1, 1))``.
            strategy_bias_down_sampler (tuple): ``+ b_down``, e.g. ``((dp, 1), (1,))``.
            strategy_non_linearity (tuple): the activation input's layout, e.g. ``((dp, 1),)``.
            strategy_matmul_up_sampler (tuple): ``h @ W_up^T``, e.g. ``((dp, 1), (1, 1))``.
            strategy_bias_up_sampler (tuple): ``+ b_up``, e.g. ``((dp, 1), (1,))``.
            strategy_residual_add (tuple): ``h + branch``, e.g. ``((dp, 1), (dp, 1))``."""


class AdapterBranch(BottleneckBranch):
    """``up(non_linearity(h W_down^T + b_down)) W_up^T + b_up`` with full-rank projections.

    Parameters (under the owner's ``mindpet_delta_adapter`` attribute): ``down_weight``
    ``(bottleneck_size, hidden_size)``, ``down_bias`` ``(bottleneck_size,)``, ``up_weight``
    ``(hidden_size, bottleneck_size)`` and ``up_bias`` ``(hidden_size,)``. ``up_weight`` and both biases start
    at zero.
    """

    def __init__(self, hidden_size, bottleneck_size, non_linearity, param_init_type, compute_dtype, owner):
        super().__init__(hidden_size, bottleneck_size, non_linearity, param_init_type, compute_dtype, owner)
        self.down_weight = make_parameter(_DOWN_WEIGHT_INIT, (bottleneck_size, hidden_size), param_init_type,
                                          "down_weight", "down_weight", owner)
        self.up_weight = make_parameter("zeros", (hidden_size, bottleneck_size), param_init_type, "up_weight",
                                        "up_weight", owner)
        self.down_matmul = P.MatMul(transpose_b=True)
        self.up_matmul = P.MatMul(transpose_b=True)

    def _down(self, h):
        return self.down_matmul(h, self._compute_param(self.down_weight))

    def _up(self, h):
        return self.up_matmul(h, self._compute_param(self.up_weight))

    def _bottleneck_dim(self):
        return Dim("bottleneck_size", self.bottleneck_size)

    def _down_ops(self, hidden, bottleneck, source, output):
        return (primitive_op("strategy_matmul_down_sampler", self.down_matmul,
                             (source, Operand("down_weight", (bottleneck, hidden))), output),)

    def _up_ops(self, hidden, bottleneck, source, output):
        return (primitive_op("strategy_matmul_up_sampler", self.up_matmul,
                             (source, Operand("up_weight", (hidden, bottleneck))), output),)


@with_dense_arguments
class AdapterLayer(ResidualAdapterLayer):
    r"""A bottleneck adapter inserted after an existing layer: ``y = x + up(non_linearity(down(x)))``.

    .. math::
        y = x + \mathrm{non\_linearity}(x W_{down}^T + b_{down})\, W_{up}^T + b_{up}

    ``W_down`` is ``(bottleneck_size, hidden_size)`` and ``W_up`` is ``(hidden_size, bottleneck_size)``. ``W_up``
    and both biases start at zero, so a fresh layer is exactly the identity and the pretrained model's outputs
    are unchanged until training moves it. The parameters are ``mindpet_delta_adapter.down_weight``,
    ``.down_bias``, ``.up_weight`` and ``.up_bias``, which ``freeze_delta(net, 'adapter')`` selects.

    The branch computes in ``compute_dtype``; the residual sum stays in the input's dtype. Adapters are
    nonlinear, so unlike LoRA they cannot be merged into the preceding weight.

    Args:
        hidden_size (int): size of the last input (and output) dimension.
        bottleneck_size (int): width of the bottleneck. Default: 64.
        non_linearity (str): activation between the projections, one of the names
            :func:`mindpet.utils.activation.build_activation` knows (e.g. ``'gelu'``, ``'relu'``, ``'tanh'``,
            ``'leakyrelu'``, ``'silu'``). Default: ``'gelu'``.
{dtypes}

{layer_inputs_outputs}

    Raises:
        TypeError: ``hidden_size`` or ``bottleneck_size`` is not an int; ``non_linearity`` is not a str;
            ``param_init_type`` or ``compute_dtype`` is not float16 or float32; when called, ``x`` is not a
            float16, float32 or bfloat16 Tensor (at compile time in GRAPH mode).
        ValueError: ``hidden_size`` or ``bottleneck_size`` is <= 0 or above 2**31 - 1; ``non_linearity`` is
            LogSoftmax in semi-auto or auto parallel mode.
        ActivationNotFoundError: ``non_linearity`` is an unknown name (a ValueError and a KeyError).

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import AdapterLayer
        >>> adapter = AdapterLayer(hidden_size=16, bottleneck_size=4, compute_dtype=ms.float32)
        >>> x = ms.Tensor(np.ones((2, 3, 16)), ms.float32)
        >>> y = adapter(x)
        >>> y.shape, bool((y == x).all())
        ((2, 3, 16), True)
    """

    BRANCH_NAME = ADAPTER_BRANCH

    def __init__(self, hidden_size, bottleneck_size=64, non_linearity="gelu", param_init_type=mstype.float32,
                 compute_dtype=mstype.float16):
        super().__init__(param_init_type, compute_dtype)
        owner = type(self).__name__
        self.hidden_size = check_positive_int(hidden_size, "hidden_size", owner)
        self.bottleneck_size = check_positive_int(bottleneck_size, "bottleneck_size", owner)
        self.mindpet_delta_adapter = AdapterBranch(self.hidden_size, self.bottleneck_size, non_linearity,
                                                   param_init_type, compute_dtype, owner)

    def shard(self, strategy_matmul_down_sampler=None, strategy_bias_down_sampler=None, strategy_non_linearity=None,
              strategy_matmul_up_sampler=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc(_ADAPTER_SHARD_ARGUMENTS, "``hidden_size``, ``bottleneck_size``",
                              "``N`` or ``hidden_size`` unlike an earlier strategy (the branch is added back to its "
                              "input)")

    def extend_repr(self):
        return (f"hidden_size={self.hidden_size}, bottleneck_size={self.bottleneck_size}, "
                f"non_linearity={self.mindpet_delta_adapter.non_linearity}")


@with_dense_arguments
class AdapterDense(ResidualAdapterDense):
    r"""A Dense layer followed by a bottleneck adapter, a drop-in replacement for ``nn.Dense``.

    .. math::
        h = \mathrm{activation}(x W^T + b), \qquad y = h + \mathrm{non\_linearity}(h W_{down}^T + b_{down})\,
            W_{up}^T + b_{up}

    ``W`` (``weight``) and ``b`` (``bias``) keep ``nn.Dense``'s names and shapes, so a pretrained checkpoint of
    the unmodified model loads unchanged. The adapter (:class:`AdapterLayer`'s parameters, under
    ``mindpet_delta_adapter``) starts as the identity, so a fresh cell computes what the Dense layer it replaces
    computed: bit for bit with ``compute_dtype=float32``, within float16 rounding with the default float16 (the
    Dense part computes in ``compute_dtype``). Adapters are nonlinear and cannot be merged into ``weight``.

    Args:
{dense_channels}
{dense_inits}
        bottleneck_size (int): width of the adapter's bottleneck. Default: 64.
        non_linearity (str): activation inside the adapter. Default: ``'gelu'``.
{dtypes}

{dense_inputs_outputs}

    Raises:
        TypeError: ``in_channels``, ``out_channels`` or ``bottleneck_size`` is not an int; ``has_bias`` is not a
            bool; ``activation`` is not a str, Cell, Primitive or None; ``non_linearity`` is not a str; an init
            is not a Tensor, str, Initializer or number; ``param_init_type`` or ``compute_dtype`` is not float16
            or float32; when called, ``x`` is not a float16, float32 or bfloat16 Tensor.
        ValueError: ``in_channels``, ``out_channels`` or ``bottleneck_size`` is <= 0 or above 2**31 - 1; an init
            Tensor has the wrong shape, an init name is unknown, or an init number or Tensor value is NaN or
            infinite.
        ActivationNotFoundError: ``activation`` or ``non_linearity`` is an unknown name (a ValueError and a
            KeyError).

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import AdapterDense
        >>> dense = AdapterDense(in_channels=8, out_channels=4, bottleneck_size=2, compute_dtype=ms.float32)
        >>> x = ms.Tensor(np.ones((3, 5, 8)), ms.float32)
        >>> dense(x).shape
        (3, 5, 4)
    """

    BRANCH_NAME = ADAPTER_BRANCH

    def __init__(self, in_channels, out_channels, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None, bottleneck_size=64, non_linearity="gelu", param_init_type=mstype.float32,
                 compute_dtype=mstype.float16):
        super().__init__(in_channels, out_channels, weight_init, bias_init, has_bias, activation, param_init_type,
                         compute_dtype)
        owner = type(self).__name__
        self.bottleneck_size = check_positive_int(bottleneck_size, "bottleneck_size", owner)
        self.mindpet_delta_adapter = AdapterBranch(self.out_channels, self.bottleneck_size, non_linearity,
                                                   param_init_type, compute_dtype, owner)

    def shard(self, strategy_matmul_org=None, strategy_bias_org=None, strategy_activation_org=None,
              strategy_matmul_down_sampler=None, strategy_bias_down_sampler=None, strategy_non_linearity=None,
              strategy_matmul_up_sampler=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc(DENSE_SHARD_ARGUMENTS + _ADAPTER_SHARD_ARGUMENTS,
                              "``in_channels``, ``out_channels``, ``bottleneck_size``", DENSE_ADAPTER_TIED)

    def extend_repr(self):
        return (f"{super().extend_repr()}, bottleneck_size={self.bottleneck_size}, "
                f"non_linearity={self.mindpet_delta_adapter.non_linearity}")
