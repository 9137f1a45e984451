"""LoRA: low-rank adaptation of a Dense layer (Hu et al., 2021)."""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import HeUniform
from mindspore.ops import operations as P

from mindpet.delta.base.docs import shard_doc, with_dense_arguments
from mindpet.delta.base.mergeable import MergeableDense
from mindpet.parallel.plan import (
    TOKENS,
    Dim,
    Operand,
    OperatorPlan,
    ShardedOp,
    ShardValidated,
    activation_op,
    primitive_op,
    strategy_arguments,
)
from mindpet.utils.logger import logger
from mindpet.utils.naming import DORA_GATE, DORA_MERGED_FACTOR, LORA_BRANCH_SCALE, delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import check_bool, check_nonzero_number, check_positive_int, check_rate

LORA_A = delta_attr_name("lora", "a")
LORA_B = delta_attr_name("lora", "b")
LORA_MAGNITUDE = delta_attr_name("lora", "magnitude")
_DEFAULT_LORA_A_INIT = HeUniform(negative_slope=math.sqrt(5))
# The smallest row norm DoRA divides by: an all-zero row of W + s B A gets magnitude 0 and factor 0, so it still
# computes what the Dense layer computed (the bias) instead of 0 / 0.
DORA_NORM_FLOOR = 1e-12


def lora_scaling(lora_alpha, lora_rank, use_rslora):
    """The branch scale: ``lora_alpha / lora_rank``, or ``lora_alpha / sqrt(lora_rank)`` with rsLoRA."""
    return lora_alpha / (math.sqrt(lora_rank) if use_rslora else lora_rank)


def dora_row_norms(weight):
    """The L2 norm of every row of ``weight`` (a float32 array), floored at ``DORA_NORM_FLOOR`` as in the cell."""
    return np.maximum(np.sqrt(np.sum(np.square(weight.astype(np.float64)), axis=1)), DORA_NORM_FLOOR)


@with_dense_arguments
class LoRADense(ShardValidated, MergeableDense):
    r"""A Dense layer with a trainable low-rank update, a drop-in replacement for ``nn.Dense``.

    .. math::
        y = \mathrm{activation}\left(x W^T + b + s\, \mathrm{dropout}(x)\, A^T B^T\right), \qquad
        s = \frac{lora\_alpha}{lora\_rank}

    ``W`` (``weight``) and ``b`` (``bias``) keep ``nn.Dense``'s names and shapes, so a pretrained checkpoint of
    the unmodified model loads unchanged. ``A`` (``mindpet_delta_lora_a``, shape ``(lora_rank, in_channels)``)
    and ``B`` (``mindpet_delta_lora_b``, shape ``(out_channels, lora_rank)``) are the delta; ``B`` starts at zero,
    so a fresh cell computes what the Dense layer it replaces computed: bit for bit with ``compute_dtype=float32``
    and float32 parameters, within float16 rounding (up to about 1e-3 of the largest output) with the default
    float16.

    With ``use_rslora`` (rank-stabilized LoRA, Kalajievski 2023) the scale is :math:`s = lora\_alpha /
    \sqrt{lora\_rank}`, which keeps the update's size steady as the rank grows.

    With ``use_dora`` (DoRA, Liu et al. 2024) the layer learns each output row's length and direction apart: a
    trainable magnitude ``m`` (``mindpet_delta_lora_magnitude``, shape ``(out_channels,)``) rescales every row of
    the adapted weight :math:`V = W + s B A` to length ``m``, and the bias is added after:

    .. math::
        y = \mathrm{activation}\left(\frac{m}{\lVert V \rVert_{row}} \odot
            \left(x W^T + s\, \mathrm{dropout}(x)\, A^T B^T\right) + b\right)

    ``m`` starts at the row norms of ``W + s B A`` (of ``W`` when ``B`` starts at zero), so a fresh cell computes
    what the Dense layer computed within float32 rounding (2e-6 of the largest output with ``compute_dtype=float32``;
    the factor ``m / ||V||`` is 1 up to rounding, not exactly). The row norms are computed in float32 from the weight
    as it is multiplied (:meth:`_base_weight`) and detached from the gradient, as the DoRA paper advises, so ``A``
    and ``B`` get gradient only through the product. With dropout, the dropped input feeds the low-rank product only,
    as in PEFT. DoRA adds one ``(out_channels, in_channels)`` product ``B A`` and a row norm to every call: expect it
    to be slower than plain LoRA (docs/benchmarks.md). A cell written into a model's source computes ``m`` from its
    own initial weight: :func:`~mindpet.load_base_checkpoint` and :func:`~mindpet.get_delta_model` compute it again
    from the pretrained weight; after loading weights any other way, call :meth:`init_dora_magnitude`.

    :meth:`merge` folds the update into ``weight`` for inference (``s B A``; with DoRA the whole rescaled ``V``) and
    :meth:`unmerge` takes it out again. The branch's scale lives in the non-trainable Parameter ``lora_branch_scale``
    (``s`` unmerged, 0 merged), and DoRA's factor is switched off by the non-trainable ``lora_magnitude_gate``, so a
    graph compiled before a merge stays correct after it. A DoRA merge keeps the factor it applied in the
    non-trainable ``lora_magnitude_merged_factor`` so that :meth:`unmerge` can divide it out.

    Args:
{dense_channels}
        lora_rank (int): rank of the update, the rows of ``A`` and columns of ``B``.
        lora_alpha (Union[int, float]): scale numerator; the update is multiplied by ``lora_alpha / lora_rank``
            (``lora_alpha / sqrt(lora_rank)`` with ``use_rslora``). Must not be 0.
        lora_dropout (float): dropout rate applied to the branch input while training, in [0, 1). Default: 0.0.
        lora_a_init (Union[Tensor, str, Initializer, numbers.Number]): ``A`` init.
            Default: ``HeUniform(negative_slope=math.sqrt(5))``.
        lora_b_init (Union[Tensor, str, Initializer, numbers.Number]): ``B`` init. Default: ``'zeros'``.
{dtypes}
{dense_inits}
        use_rslora (bool): scale the update by ``lora_alpha / sqrt(lora_rank)``. Default: ``False``.
        use_dora (bool): learn a magnitude per output row (DoRA). Default: ``False``.

{dense_inputs_outputs}

    Raises:
        TypeError: ``in_channels``, ``out_channels`` or ``lora_rank`` is not an int; ``lora_alpha`` is not an int
            or float; ``lora_dropout`` is not a float; ``has_bias``, ``use_rslora`` or ``use_dora`` is not a bool;
            ``activation`` is not a str, Cell, Primitive or None; ``param_init_type`` or ``compute_dtype`` is not
            float16 or float32; when called, ``x`` is not a float16, float32 or bfloat16 Tensor (at compile time in
            GRAPH mode).
        ValueError: ``in_channels``, ``out_channels`` or ``lora_rank`` is <= 0 or above 2**31 - 1;
            ``lora_alpha`` is 0, NaN or infinite; ``lora_dropout`` is outside [0, 1); an init Tensor has the
            wrong shape; an init number or Tensor value is NaN or infinite.
        ActivationNotFoundError: ``activation`` is an unknown name (a ValueError and a KeyError).

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import LoRADense
        >>> dense = LoRADense(in_channels=8, out_channels=4, lora_rank=2, lora_alpha=4,
        ...                   compute_dtype=ms.float32)
        >>> x = ms.Tensor(np.ones((3, 5, 8)), ms.float32)
        >>> dense(x).shape
        (3, 5, 4)
        >>> dora = LoRADense(8, 4, lora_rank=2, lora_alpha=4, use_dora=True, compute_dtype=ms.float32)
        >>> dora.mindpet_delta_lora_magnitude.shape
        (4,)
        >>> bool(np.allclose(dora.mindpet_delta_lora_magnitude.asnumpy(),
        ...                  np.linalg.norm(dora.weight.asnumpy(), axis=1)))
        True
    """

    def __init__(self, in_channels, out_channels, lora_rank, lora_alpha, lora_dropout=0.0,
                 lora_a_init=_DEFAULT_LORA_A_INIT, lora_b_init="zeros", param_init_type=mstype.float32,
                 compute_dtype=mstype.float16, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None, use_rslora=False, use_dora=False):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation, param_init_type=param_init_type,
                         compute_dtype=compute_dtype)
        owner = type(self).__name__
        self.lora_rank = check_positive_int(lora_rank, "lora_rank", owner)
        self.lora_alpha = check_nonzero_number(lora_alpha, "lora_alpha", owner)
        self.lora_dropout_rate = check_rate(lora_dropout, "lora_dropout", owner)
        self.use_rslora = check_bool(use_rslora, "use_rslora", owner)
        self.use_dora = check_bool(use_dora, "use_dora", owner)
        self.scaling = lora_scaling(self.lora_alpha, self.lora_rank, self.use_rslora)

        setattr(self, LORA_A, make_parameter(lora_a_init, (self.lora_rank, self.in_channels), param_init_type,
                                             LORA_A, "lora_a_init", owner))
        setattr(self, LORA_B, make_parameter(lora_b_init, (self.out_channels, self.lora_rank), param_init_type,
                                             LORA_B, "lora_b_init", owner))
        self.lora_branch_scale = Parameter(Tensor(self.scaling, mstype.float32), name=LORA_BRANCH_SCALE,
                                           requires_grad=False)

        self.lora_dropout = nn.Dropout(p=self.lora_dropout_rate)
        self.lora_a_matmul = P.MatMul(transpose_b=True)
        self.lora_b_matmul = P.MatMul(transpose_b=True)
        self.lora_mul = P.Mul()
        self.lora_add = P.Add()
        if self.use_dora:
            self._init_dora()

    def _init_dora(self):
        """DoRA's magnitude, its merge state, and the operators of the row norm and the rescaling."""
        setattr(self, LORA_MAGNITUDE, Parameter(Tensor(np.zeros(self.out_channels), self.param_init_type),
                                                name=LORA_MAGNITUDE))
        # 1 while the factor m / ||V|| applies, 0 while merged (the factor is raised to this power).
        self.lora_magnitude_gate = Parameter(Tensor(1.0, mstype.float32), name=DORA_GATE, requires_grad=False)
        self.lora_magnitude_merged_factor = Parameter(Tensor(np.ones(self.out_channels), mstype.float32),
                                                      name=DORA_MERGED_FACTOR, requires_grad=False)
        self.dora_weight_matmul = P.MatMul()
        self.dora_weight_mul = P.Mul()
        self.dora_weight_add = P.Add()
        self.dora_norm = P.LpNorm(axis=[1], p=2, keep_dims=False, epsilon=DORA_NORM_FLOOR)
        self.dora_div = P.Div()
        self.dora_gate = P.Pow()
        self.dora_mul = P.Mul()
        self.init_dora_magnitude()

    def _lora_weight(self):
        """``s B A`` in float32, from the parameters' current values."""
        lora_a = getattr(self, LORA_A).asnumpy().astype(np.float32)
        lora_b = getattr(self, LORA_B).asnumpy().astype(np.float32)
        return np.float32(self.scaling) * (lora_b @ lora_a)

    def init_dora_magnitude(self):
        """Set DoRA's magnitude ``m`` to the row norms of ``W + s B A`` from the current weights, so that the cell
        computes what LoRA with the same ``A`` and ``B`` computes (the Dense layer's output while ``B`` is zero).

        The magnitude is computed when the cell is built, from its initial weight. :func:`~mindpet.load_base_checkpoint`
        calls this for every DoRA cell whose weight it loads; call it yourself after loading weights any other way.

        Returns:
            The cell itself.

        Raises:
            ValueError: the cell was built without ``use_dora``, or is merged (the weight holds the update then).
        """
        owner = f"{type(self).__name__}.init_dora_magnitude"
        if not self.use_dora:
            raise ValueError(f"For '{owner}', the cell must be built with use_dora=True, but it was not.")
        if self.merged:
            raise ValueError(f"For '{owner}', the cell must not be merged (its weight holds the update); "
                             f"call unmerge() first.")
        weight = self._base_weight().asnumpy().astype(np.float32)
        norms = dora_row_norms(weight + self._lora_weight())
        getattr(self, LORA_MAGNITUDE).set_data(Tensor(norms, self.param_init_type))
        return self

    def construct(self, x):
        input_shape = x.shape
        input_dtype = x.dtype
        x = self._to_compute(x)
        if self.use_dora:
            y = self._dora(x)
        else:
            y = self.lora_add(self._dense(x), self._branch(x))
        return self._restore(self._activate(y), input_shape, input_dtype)

    def _scale_in(self, dtype):
        """The branch scale in ``dtype``."""
        scale = self.lora_branch_scale
        if dtype != mstype.float32:
            scale = self.cast(scale, dtype)
        return scale

    def _branch(self, x):
        """``s dropout(x) A^T B^T``."""
        branch = self.lora_dropout(x)
        branch = self.lora_a_matmul(branch, self._compute_param(self.mindpet_delta_lora_a))
        branch = self.lora_b_matmul(branch, self._compute_param(self.mindpet_delta_lora_b))
        return self.lora_mul(branch, self._scale_in(self.compute_dtype))

    def _dora(self, x):
        """``m / ||W + s B A||_row * (x W^T + branch) + b``, the norm in float32 and without gradient."""
        weight = self._base_weight()
        adapted = self.lora_add(self.matmul(x, weight), self._branch(x))
        lora_a = self.mindpet_delta_lora_a
        lora_b = self.mindpet_delta_lora_b
        if lora_a.dtype != mstype.float32:
            lora_a = self.cast(lora_a, mstype.float32)
            lora_b = self.cast(lora_b, mstype.float32)
        if weight.dtype != mstype.float32:
            weight = self.cast(weight, mstype.float32)
        lora_weight = self.dora_weight_mul(self.dora_weight_matmul(lora_b, lora_a), self.lora_branch_scale)
        norm = ops.stop_gradient(self.dora_norm(self.dora_weight_add(weight, lora_weight)))
        magnitude = self.mindpet_delta_lora_magnitude
        if magnitude.dtype != mstype.float32:
            magnitude = self.cast(magnitude, mstype.float32)
        factor = self.dora_gate(self.dora_div(magnitude, norm), self.lora_magnitude_gate)
        if self.compute_dtype != mstype.float32:
            factor = self.cast(factor, self.compute_dtype)
        y = self.dora_mul(adapted, factor)
        if self.has_bias:
            y = self.bias_add(y, self._compute_param(self.bias))
        return y

    @property
    def merged(self):
        """Whether the low-rank update is currently folded into ``weight``."""
        return float(self.lora_branch_scale.asnumpy()) == 0.0

    def _fold(self, weight, bias, unfold):
        """``weight ± s B A``, accumulated in float32; with DoRA ``m / ||V|| * V`` for ``V = weight + s B A``, and
        back. The bias is unchanged."""
        delta = self._lora_weight()
        if not self.use_dora:
            return (weight - delta if unfold else weight + delta), bias
        owner = f"{type(self).__name__}.unmerge" if unfold else f"{type(self).__name__}.merge"
        if unfold:
            factor = self.lora_magnitude_merged_factor.asnumpy()
            lost = np.flatnonzero(factor == 0)
            if lost.size:
                raise ValueError(f"For '{owner}', {lost.size} row(s) of the weight were merged with magnitude 0 "
                                 f"(first: row {lost[0]}), so the original weight cannot be restored.")
            return weight / factor[:, None] - delta, bias
        adapted = weight + delta
        magnitude = getattr(self, LORA_MAGNITUDE).asnumpy().astype(np.float64)
        factor = (magnitude / dora_row_norms(adapted)).astype(np.float32)
        if not np.all(factor):
            logger.warning("For '%s', %d magnitude(s) are 0: the merged weight loses those rows and unmerge() will "
                           "refuse to restore them.", owner, int(np.sum(factor == 0)))
        self.lora_magnitude_merged_factor.set_data(Tensor(factor, mstype.float32))
        return factor[:, None] * adapted, bias

    def _set_branch_active(self, active):
        self.lora_branch_scale.set_data(Tensor(self.scaling if active else 0.0, mstype.float32))
        if self.use_dora:
            self.lora_magnitude_gate.set_data(Tensor(1.0 if active else 0.0, mstype.float32))

    def shard(self, strategy_org_dense_matmul=None, strategy_org_bias_add=None, strategy_lora_dropout=None,
              strategy_lora_a_matmul=None, strategy_lora_b_matmul=None, strategy_lora_mul=None,
              strategy_lora_add=None, strategy_activation=None, strategy_dora_weight_matmul=None,
              strategy_dora_weight_mul=None, strategy_dora_weight_add=None, strategy_dora_norm=None,
              strategy_dora_div=None, strategy_dora_gate=None, strategy_dora_mul=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc("""
            strategy_org_dense_matmul (tuple): ``x (N, in) @ weight (out, in)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_org_bias_add (tuple): ``+ bias``, e.g. ``((dp, mp), (mp,))``.
            strategy_lora_dropout (tuple): dropout on the branch input ``x``, e.g. ``((dp, 1),)``.
            strategy_lora_a_matmul (tuple): ``x @ A (r, in)^T``, e.g. ``((dp, 1), (1, 1))``.
            strategy_lora_b_matmul (tuple): ``(x A^T) (N, r) @ B (out, r)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_lora_mul (tuple): the branch times its scale (a scalar), e.g. ``((dp, mp), ())``.
            strategy_lora_add (tuple): the Dense output plus the branch, e.g. ``((dp, mp), (dp, mp))``.
            strategy_activation (tuple): the activation input's layout, e.g. ``((dp, mp),)``.
            strategy_dora_weight_matmul (tuple): DoRA only: ``B (out, r) @ A (r, in)``, e.g. ``((mp, 1), (1, 1))``.
            strategy_dora_weight_mul (tuple): DoRA only: ``B A`` times the scale, e.g. ``((mp, 1), ())``.
            strategy_dora_weight_add (tuple): DoRA only: ``weight + s B A``, e.g. ``((mp, 1), (mp, 1))``.
            strategy_dora_norm (tuple): DoRA only: the row norms of ``weight + s B A``, e.g. ``((mp, 1),)``.
            strategy_dora_div (tuple): DoRA only: ``m (out,) / norms (out,)``, e.g. ``((mp,), (mp,))``.
            strategy_dora_gate (tuple): DoRA only: the factor raised to the merge gate (a scalar), e.g.
                ``((mp,), ())``.
            strategy_dora_mul (tuple): DoRA only: the sum times the factor, e.g. ``((dp, mp), (mp,))``; the bias is
                added to its output.""",
                              "``in_channels``, ``out_channels``, ``lora_rank``",
                              "``N`` or ``out_channels`` unlike an earlier strategy (the branch is added to the Dense "
                              "output)")

    def _shard_plan(self):
        """The Dense part ``x W^T`` and the branch ``dropout(x) A^T B^T * scale`` meet in ``lora_add``; LoRA adds the
        bias to the Dense part, DoRA after rescaling the sum by ``m / ||W + s B A||``.

        The branch must split ``N`` and ``out_channels`` as the Dense part does.
        """
        owner = type(self).__name__
        in_dim, out_dim = self._channel_dims()
        rank = Dim("lora_rank", self.lora_rank)
        update = (TOKENS, out_dim)
        without_dora = None if self.use_dora else "the cell does not use DoRA"
        if self.use_dora:
            dense_ops = (primitive_op("strategy_org_dense_matmul", self.matmul,
                                      (Operand("x", (TOKENS, in_dim)), Operand("weight", (out_dim, in_dim))), "dense"),)
            dense_output = "dense"
        else:
            dense_ops, dense_output = self._dense_ops("strategy_org_dense_matmul", "strategy_org_bias_add")
        ops_ = [*dense_ops,
                primitive_op("strategy_lora_dropout", self.lora_dropout.dropout, (Operand("x", (TOKENS, in_dim)),),
                             "lora_input"),
                primitive_op("strategy_lora_a_matmul", self.lora_a_matmul,
                             (Operand("lora_input", (TOKENS, in_dim)), Operand(LORA_A, (rank, in_dim))),
                             "lora_hidden"),
                primitive_op("strategy_lora_b_matmul", self.lora_b_matmul,
                             (Operand("lora_hidden", (TOKENS, rank)), Operand(LORA_B, (out_dim, rank))),
                             "lora_update"),
                primitive_op("strategy_lora_mul", self.lora_mul,
                             (Operand("lora_update", update), Operand("lora_branch_scale", ())), "lora_scaled"),
                primitive_op("strategy_lora_add", self.lora_add,
                             (Operand(dense_output, update), Operand("lora_scaled", update)), "sum")]
        if self.use_dora:
            ops_ += self._dora_ops(in_dim, out_dim, rank, update)
            activation_input = "dora_biased" if self.has_bias else "dora_scaled"
        else:
            activation_input = "sum"
        ops_.append(activation_op("strategy_activation", self.activation, owner, Operand(activation_input, update),
                                  "activated"))
        ops_ += [ShardedOp(arg_name, (), Operand(arg_name, ()), None, absent=without_dora)
                 for arg_name in DORA_STRATEGIES if not self.use_dora]
        return OperatorPlan(ops_, tied=(TOKENS, out_dim))

    def _dora_ops(self, in_dim, out_dim, rank, update):
        """DoRA's operators: the row norms of ``W + s B A`` and the rescaled sum, then the bias."""
        weight = (out_dim, in_dim)
        magnitude = (out_dim,)
        no_bias = None if self.has_bias else "the cell has no bias"
        return [
            primitive_op("strategy_dora_weight_matmul", self.dora_weight_matmul,
                         (Operand(LORA_B, (out_dim, rank)), Operand(LORA_A, (rank, in_dim))), "lora_weight"),
            primitive_op("strategy_dora_weight_mul", self.dora_weight_mul,
                         (Operand("lora_weight", weight), Operand("lora_branch_scale", ())), "lora_weight_scaled"),
            primitive_op("strategy_dora_weight_add", self.dora_weight_add,
                         (Operand("weight", weight), Operand("lora_weight_scaled", weight)), "adapted_weight"),
            ShardedOp("strategy_dora_norm", (Operand("adapted_weight", weight),), Operand("row_norms", magnitude),
                      self.dora_norm.shard),
            primitive_op("strategy_dora_div", self.dora_div,
                         (Operand(LORA_MAGNITUDE, magnitude), Operand("row_norms", magnitude)), "magnitude_ratio"),
            primitive_op("strategy_dora_gate", self.dora_gate,
                         (Operand("magnitude_ratio", magnitude), Operand(DORA_GATE, ())), "dora_factor"),
            primitive_op("strategy_dora_mul", self.dora_mul,
                         (Operand("sum", update), Operand("dora_factor", magnitude)), "dora_scaled"),
            primitive_op("strategy_org_bias_add", self.bias_add,
                         (Operand("dora_scaled", update), Operand("bias", magnitude)), "dora_biased", absent=no_bias),
        ]

    def extend_repr(self):
        return (f"{super().extend_repr()}, lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha}, "
                f"lora_dropout={self.lora_dropout_rate}, use_rslora={self.use_rslora}, use_dora={self.use_dora}")


# DoRA's shard() arguments, ignored with a warning by a cell without DoRA.
DORA_STRATEGIES = ("strategy_dora_weight_matmul", "strategy_dora_weight_mul", "strategy_dora_weight_add",
                   "strategy_dora_norm", "strategy_dora_div", "strategy_dora_gate", "strategy_dora_mul")
