"""What the bottleneck adapters share: a residual branch ``up(non_linearity(down(h)))`` added to its input.

Houlsby adapters (:mod:`mindpet.delta.adapter`) and low-rank adapters (:mod:`mindpet.delta.low_rank_adapter`)
differ only in how the down- and up-projection weights are formed. Each method subclasses
:class:`BottleneckBranch` for the projections and :class:`ResidualAdapterLayer` / :class:`ResidualAdapterDense`
for the public cells, which keep the branch under the attribute ``mindpet_delta_<method>``.
"""
from mindspore.ops import operations as P

from mindpet.delta.base.dense_core import DenseCore
from mindpet.delta.base.mixed_precision import MixedPrecisionCell
from mindpet.parallel.plan import TOKENS, Dim, Operand, OperatorPlan, ShardValidated, activation_op, primitive_op
from mindpet.utils.activation import build_activation
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import check_str


class BottleneckBranch(MixedPrecisionCell):
    """``up(non_linearity(down(h) + down_bias)) + up_bias`` on a 2-D input already in the compute dtype.

    Subclasses create the projection weights and define :meth:`_down` (``(N, hidden) -> (N, bottleneck)``) and
    :meth:`_up` (``(N, bottleneck) -> (N, hidden)``), with their shard plans :meth:`_down_ops` and :meth:`_up_ops`
    and the bottleneck axis :meth:`_bottleneck_dim`. The biases start at zero.

    Args:
        hidden_size (int): width of the input and output (already validated by the owner).
        bottleneck_size (int): width between the projections (already validated by the owner).
        non_linearity (str): activation name between the projections.
        param_init_type (mindspore.dtype): dtype of the parameters.
        compute_dtype (mindspore.dtype): dtype of the matmuls.
        owner (str): the public cell named in error messages.
    """

    def __init__(self, hidden_size, bottleneck_size, non_linearity, param_init_type, compute_dtype, owner):
        super().__init__(param_init_type, compute_dtype, owner)
        self.hidden_size = hidden_size
        self.bottleneck_size = bottleneck_size
        self.non_linearity = build_activation(check_str(non_linearity, "non_linearity", owner),
                                              "non_linearity", owner)
        self.down_bias = make_parameter("zeros", (bottleneck_size,), param_init_type, "down_bias",
                                        "down_bias", owner)
        self.up_bias = make_parameter("zeros", (hidden_size,), param_init_type, "up_bias", "up_bias", owner)
        self.down_bias_add = P.BiasAdd()
        self.up_bias_add = P.BiasAdd()

    def construct(self, h):
        h = self.down_bias_add(self._down(h), self._compute_param(self.down_bias))
        h = self.non_linearity(h)
        return self.up_bias_add(self._up(h), self._compute_param(self.up_bias))

    def sharded_ops(self, owner, hidden, source):
        """The branch's shard plan on ``source``, the ``(N, hidden)`` tensor it adapts; it produces ``"branch"``.

        Args:
            owner (str): the public cell named in error messages.
            hidden (Dim): the axis of the adapted width.
            source (str): the name of the adapted tensor in the owner's plan.
        """
        bottleneck = self._bottleneck_dim()
        return (*self._down_ops(hidden, bottleneck, Operand(source, (TOKENS, hidden)), "down_projected"),
                primitive_op("strategy_bias_down_sampler", self.down_bias_add,
                             (Operand("down_projected", (TOKENS, bottleneck)), Operand("down_bias", (bottleneck,))),
                             "down_biased"),
                activation_op("strategy_non_linearity", self.non_linearity, owner,
                              Operand("down_biased", (TOKENS, bottleneck)), "down_activated"),
                *self._up_ops(hidden, bottleneck, Operand("down_activated", (TOKENS, bottleneck)), "up_projected"),
                primitive_op("strategy_bias_up_sampler", self.up_bias_add,
                             (Operand("up_projected", (TOKENS, hidden)), Operand("up_bias", (hidden,))), "branch"))


class _ResidualAdapter(ShardValidated):
    """``shard()`` plumbing shared by the layer and Dense forms: the branch lives at ``self.<BRANCH_NAME>``."""

    BRANCH_NAME = None

    def _branch(self, h):
        return getattr(self, self.BRANCH_NAME)(h)

    def _residual_plan(self, hidden, base_ops, source):
        """The plan of ``base_ops`` (producing ``source``, ``(N, hidden)``), the branch on it, and their sum.

        ``N`` and ``hidden`` are tied: the branch output must be split like the tensor it is added back to.
        """
        branch_ops = getattr(self, self.BRANCH_NAME).sharded_ops(type(self).__name__, hidden, source)
        residual = primitive_op("strategy_residual_add", self.residual_add,
                                (Operand(source, (TOKENS, hidden)), Operand("branch", (TOKENS, hidden))), "sum")
        return OperatorPlan((*base_ops, *branch_ops, residual), tied=(TOKENS, hidden))

class ResidualAdapterLayer(_ResidualAdapter, MixedPrecisionCell):
    """``y = x + branch(x)`` for an input of shape ``(*, hidden_size)``, inserted after an existing layer.

    The branch runs in the compute dtype; the residual sum runs in the input's dtype, so the identity path
    loses no precision when the branch computes in float16.
    """

    def __init__(self, param_init_type, compute_dtype):
        super().__init__(param_init_type, compute_dtype)
        self.residual_add = P.Add()

    def construct(self, x):
        input_shape = x.shape
        input_dtype = x.dtype
        x = self._flatten(x)
        branch = self._branch(self._to_compute_dtype(x))
        if branch.dtype != input_dtype:
            branch = self.cast(branch, input_dtype)
        return self._restore(self.residual_add(x, branch), input_shape, input_dtype)

    def _shard_plan(self):
        return self._residual_plan(Dim("hidden_size", self.hidden_size), (), "x")


class ResidualAdapterDense(_ResidualAdapter, DenseCore):
    """``h = activation(x W^T + b)``, ``y = h + branch(h)``: a Dense layer with an adapter on its output."""

    def __init__(self, in_channels, out_channels, weight_init, bias_init, has_bias, activation, param_init_type,
                 compute_dtype):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation, param_init_type=param_init_type,
                         compute_dtype=compute_dtype)
        self.residual_add = P.Add()

    def construct(self, x):
        input_shape = x.shape
        input_dtype = x.dtype
        h = self._activate(self._dense(self._to_compute(x)))
        y = self.residual_add(h, self._branch(h))
        return self._restore(y, input_shape, input_dtype)

    def _shard_plan(self):
        _, out_dim = self._channel_dims()
        dense_ops, dense_output = self._dense_ops("strategy_matmul_org", "strategy_bias_org")
        activation = activation_op("strategy_activation_org", self.activation, type(self).__name__,
                                   Operand(dense_output, (TOKENS, out_dim)), "dense_activated")
        source = "dense_activated" if self.activation_flag else dense_output
        return self._residual_plan(out_dim, (*dense_ops, activation), source)
