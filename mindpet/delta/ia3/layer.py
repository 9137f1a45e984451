"""(IA)^3: infused adapter by inhibiting and amplifying inner activations (Liu et al., 2022)."""
import numpy as np
from mindspore import Parameter, Tensor
from mindspore import dtype as mstype
from mindspore.ops import operations as P

from mindpet.delta.base.docs import shard_doc, with_dense_arguments
from mindpet.delta.base.mergeable import MergeableDense
from mindpet.parallel.plan import (
    TOKENS,
    Operand,
    OperatorPlan,
    ShardValidated,
    activation_op,
    primitive_op,
    strategy_arguments,
)
from mindpet.utils.logger import logger
from mindpet.utils.naming import IA3_GATE, delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import check_bool

IA3_SCALE = delta_attr_name("ia3", "scale")


@with_dense_arguments
class IA3Dense(ShardValidated, MergeableDense):
    r"""A Dense layer whose output (or, for a feed-forward layer, input) is rescaled by a learned vector ``l``,
    a drop-in replacement for ``nn.Dense``.

    .. math::
        y = \mathrm{activation}\left((x W^T + b) \odot l\right), \qquad l \text{ of shape } (out\_channels,)

    and with ``feedforward=True``

    .. math::
        y = \mathrm{activation}\left((x \odot l) W^T + b\right), \qquad l \text{ of shape } (in\_channels,)

    ``l`` (``mindpet_delta_ia3_scale``) is the only trainable parameter and starts at ones, so a fresh cell computes
    what the Dense layer it replaces computed: bit for bit with float32 parameters and ``compute_dtype=float32``.
    PEFT wraps a linear layer that has no activation of its own; here the layer's activation is applied after the
    rescaling, where the Dense layer applied it, so ``l`` rescales the pre-activation as it does in PEFT.

    :meth:`merge` folds ``l`` into ``weight`` (rows, and ``bias``, scaled without ``feedforward``; columns with it)
    and :meth:`unmerge` divides it out again, which needs every entry of ``l`` nonzero. While merged, ``l`` is raised
    to the power 0 held in the non-trainable Parameter ``ia3_scale_gate`` (1 unmerged), so a graph compiled before a
    merge stays correct after it.

    Args:
{dense_channels}
        feedforward (bool): rescale the input instead of the output, as (IA)^3 does in a transformer's
            feed-forward block. Default: ``False``.
        ia3_init (Union[Tensor, str, Initializer, numbers.Number]): ``l`` init. Default: ``'ones'``.
{dtypes}
{dense_inits}

{dense_inputs_outputs}

    Raises:
        TypeError: ``in_channels`` or ``out_channels`` is not an int; ``feedforward`` or ``has_bias`` is not a bool;
            ``activation`` is not a str, Cell, Primitive or None; ``param_init_type`` or ``compute_dtype`` is not
            float16 or float32; when called, ``x`` is not a float16, float32 or bfloat16 Tensor (at compile time in
            GRAPH mode).
        ValueError: ``in_channels`` or ``out_channels`` is <= 0 or above 2**31 - 1; an init Tensor has the wrong
            shape; an init number or Tensor value is NaN or infinite.
        ActivationNotFoundError: ``activation`` is an unknown name (a ValueError and a KeyError).

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.delta import IA3Dense
        >>> dense = nn.Dense(8, 4)
        >>> ia3 = IA3Dense(8, 4, weight_init=dense.weight.value(), bias_init=dense.bias.value(),
        ...                compute_dtype=ms.float32)
        >>> x = ms.Tensor(np.ones((3, 5, 8)), ms.float32)
        >>> ia3.mindpet_delta_ia3_scale.shape, bool((ia3(x).asnumpy() == dense(x).asnumpy()).all())
        ((4,), True)
        >>> IA3Dense(8, 4, feedforward=True).mindpet_delta_ia3_scale.shape
        (8,)
    """

    def __init__(self, in_channels, out_channels, feedforward=False, ia3_init="ones", param_init_type=mstype.float32,
                 compute_dtype=mstype.float16, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation, param_init_type=param_init_type,
                         compute_dtype=compute_dtype)
        owner = type(self).__name__
        self.feedforward = check_bool(feedforward, "feedforward", owner)
        width = self.in_channels if self.feedforward else self.out_channels
        setattr(self, IA3_SCALE, make_parameter(ia3_init, (width,), param_init_type, IA3_SCALE, "ia3_init", owner))
        # l is raised to this power: 1 while the rescaling applies, 0 while it is folded into the weight.
        self.ia3_scale_gate = Parameter(Tensor(1.0, mstype.float32), name=IA3_GATE, requires_grad=False)
        self.ia3_gate = P.Pow()
        self.ia3_mul = P.Mul()

    def _scale(self):
        """``l`` in the compute dtype, raised to the merge gate."""
        gate = self.ia3_scale_gate
        if self.compute_dtype != mstype.float32:
            gate = self.cast(gate, self.compute_dtype)
        return self.ia3_gate(self._compute_param(self.mindpet_delta_ia3_scale), gate)

    def construct(self, x):
        input_shape = x.shape
        input_dtype = x.dtype
        x = self._to_compute(x)
        if self.feedforward:
            y = self._dense(self.ia3_mul(x, self._scale()))
        else:
            y = self.ia3_mul(self._dense(x), self._scale())
        return self._restore(self._activate(y), input_shape, input_dtype)

    @property
    def merged(self):
        """Whether ``l`` is currently folded into ``weight``."""
        return float(self.ia3_scale_gate.asnumpy()) == 0.0

    def _fold(self, weight, bias, unfold):
        """``weight`` (and ``bias``) times ``l``, accumulated in float32, or divided by it when ``unfold``."""
        scale = self.mindpet_delta_ia3_scale.asnumpy().astype(np.float32)
        owner = f"{type(self).__name__}.{'unmerge' if unfold else 'merge'}"
        zeros = int(np.sum(scale == 0))
        if zeros and unfold:
            raise ValueError(f"For '{owner}', {zeros} entries of mindpet_delta_ia3_scale are 0, so the weight they "
                             f"were merged into cannot be restored.")
        if zeros:
            logger.warning("For '%s', %d entries of mindpet_delta_ia3_scale are 0: the merged weight loses them and "
                           "unmerge() will refuse to restore it.", owner, zeros)
        factor = 1.0 / scale if unfold else scale
        if self.feedforward:
            return weight * factor[None, :], bias
        return weight * factor[:, None], (bias * factor if bias is not None else None)

    def _set_branch_active(self, active):
        self.ia3_scale_gate.set_data(Tensor(1.0 if active else 0.0, mstype.float32))

    def shard(self, strategy_org_dense_matmul=None, strategy_org_bias_add=None, strategy_ia3_gate=None,
              strategy_ia3_mul=None, strategy_activation=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc("""
            strategy_org_dense_matmul (tuple): ``x (N, in) @ weight (out, in)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_org_bias_add (tuple): ``+ bias``, e.g. ``((dp, mp), (mp,))``.
            strategy_ia3_gate (tuple): ``l`` raised to the merge gate (a scalar), e.g. ``((mp,), ())``, or
                ``((1,), ())`` with ``feedforward`` (``l`` then has the input's width).
            strategy_ia3_mul (tuple): the Dense output times ``l``, e.g. ``((dp, mp), (mp,))``; with ``feedforward``
                the input times ``l``, e.g. ``((dp, 1), (1,))``, and the matmul takes its output.
            strategy_activation (tuple): the activation input's layout, e.g. ``((dp, mp),)``.""",
                              "``in_channels``, ``out_channels``",
                              "``N`` or the width ``l`` multiplies unlike an earlier strategy (``l`` rescales that "
                              "tensor)")

    def _shard_plan(self):
        """``l`` meets the Dense output (or, with ``feedforward``, the input) in ``ia3_mul``."""
        owner = type(self).__name__
        in_dim, out_dim = self._channel_dims()
        if self.feedforward:
            scaled = (TOKENS, in_dim)
            ops = [primitive_op("strategy_ia3_gate", self.ia3_gate,
                                (Operand(IA3_SCALE, (in_dim,)), Operand(IA3_GATE, ())), "gated_scale"),
                   primitive_op("strategy_ia3_mul", self.ia3_mul,
                                (Operand("input", scaled), Operand("gated_scale", (in_dim,))), "x")]
            dense_ops, output = self._dense_ops("strategy_org_dense_matmul", "strategy_org_bias_add")
            ops += dense_ops
        else:
            dense_ops, dense_output = self._dense_ops("strategy_org_dense_matmul", "strategy_org_bias_add")
            ops = [*dense_ops,
                   primitive_op("strategy_ia3_gate", self.ia3_gate,
                                (Operand(IA3_SCALE, (out_dim,)), Operand(IA3_GATE, ())), "gated_scale"),
                   primitive_op("strategy_ia3_mul", self.ia3_mul,
                                (Operand(dense_output, (TOKENS, out_dim)), Operand("gated_scale", (out_dim,))),
                                "scaled")]
            output = "scaled"
        ops.append(activation_op("strategy_activation", self.activation, owner, Operand(output, (TOKENS, out_dim)),
                                 "activated"))
        return OperatorPlan(ops, tied=(TOKENS, in_dim if self.feedforward else out_dim))

    def extend_repr(self):
        return f"{super().extend_repr()}, feedforward={self.feedforward}"
