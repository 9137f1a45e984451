"""LoRA: low-rank adaptation of a Dense layer (Hu et al., 2021)."""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn
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
    ShardValidated,
    activation_op,
    primitive_op,
    strategy_arguments,
)
from mindpet.utils.naming import LORA_BRANCH_SCALE, delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import check_nonzero_number, check_positive_int, check_rate

LORA_A = delta_attr_name("lora", "a")
LORA_B = delta_attr_name("lora", "b")
_DEFAULT_LORA_A_INIT = HeUniform(negative_slope=math.sqrt(5))


@with_dense_arguments
class LoRADense(ShardValidated, MergeableDense):
    r"""A Dense layer with a trainable low-rank update, a drop-in replacement for ``nn.Dense``.

    .. math::
        y = \mathrm{activation}\left(x W^T + b + \frac{lora\_alpha}{lora\_rank}\,
            \mathrm{dropout}(x)\, A^T B^T\right)

    ``W`` (``weight``) and ``b`` (``bias``) keep ``nn.Dense``'s names and shapes, so a pretrained checkpoint of
    the unmodified model loads unchanged. ``A`` (``mindpet_delta_lora_a``, shape ``(lora_rank, in_channels)``)
    and ``B`` (``mindpet_delta_lora_b``, shape ``(out_channels, lora_rank)``) are the delta; ``B`` starts at zero,
    so a fresh cell computes what the Dense layer it replaces computed: bit for bit with ``compute_dtype=float32``
    and float32 parameters, within float16 rounding (up to about 1e-3 of the largest output) with the default
    float16.

    :meth:`merge` folds the update into ``weight`` for inference and :meth:`unmerge` takes it out again. The
    branch's scale lives in the non-trainable Parameter ``lora_branch_scale`` (``lora_alpha / lora_rank``
    unmerged, 0 merged), so a graph compiled before a merge stays correct after it.

    Args:
{dense_channels}
        lora_rank (int): rank of the update, the rows of ``A`` and columns of ``B``.
        lora_alpha (Union[int, float]): scale numerator; the update is multiplied by ``lora_alpha / lora_rank``.
            Must not be 0.
        lora_dropout (float): dropout rate applied to the branch input while training, in [0, 1). Default: 0.0.
        lora_a_init (Union[Tensor, str, Initializer, numbers.Number]): ``A`` init.
            Default: ``HeUniform(negative_slope=math.sqrt(5))``.
        lora_b_init (Union[Tensor, str, Initializer, numbers.Number]): ``B`` init. Default: ``'zeros'``.
{dtypes}
{dense_inits}

{dense_inputs_outputs}

    Raises:
        TypeError: ``in_channels``, ``out_channels`` or ``lora_rank`` is not an int; ``lora_alpha`` is not an int
            or float; ``lora_dropout`` is not a float; ``has_bias`` is not a bool; ``activation`` is not a str,
            Cell, Primitive or None; ``param_init_type`` or ``compute_dtype`` is not float16 or float32; when
            called, ``x`` is not a float16, float32 or bfloat16 Tensor (at compile time in GRAPH mode).
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
    """

    def __init__(self, in_channels, out_channels, lora_rank, lora_alpha, lora_dropout=0.0,
                 lora_a_init=_DEFAULT_LORA_A_INIT, lora_b_init="zeros", param_init_type=mstype.float32,
                 compute_dtype=mstype.float16, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation, param_init_type=param_init_type,
                         compute_dtype=compute_dtype)
        owner = type(self).__name__
        self.lora_rank = check_positive_int(lora_rank, "lora_rank", owner)
        self.lora_alpha = check_nonzero_number(lora_alpha, "lora_alpha", owner)
        self.lora_dropout_rate = check_rate(lora_dropout, "lora_dropout", owner)
        self.scaling = self.lora_alpha / self.lora_rank

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

    def construct(self, x):
        input_shape = x.shape
        input_dtype = x.dtype
        x = self._to_compute(x)
        y = self._dense(x)
        branch = self.lora_dropout(x)
        branch = self.lora_a_matmul(branch, self._compute_param(self.mindpet_delta_lora_a))
        branch = self.lora_b_matmul(branch, self._compute_param(self.mindpet_delta_lora_b))
        scale = self.lora_branch_scale
        if self.compute_dtype != mstype.float32:
            scale = self.cast(scale, self.compute_dtype)
        branch = self.lora_mul(branch, scale)
        y = self.lora_add(y, branch)
        return self._restore(self._activate(y), input_shape, input_dtype)

    @property
    def merged(self):
        """Whether the low-rank update is currently folded into ``weight``."""
        return float(self.lora_branch_scale.asnumpy()) == 0.0

    def _fold(self, weight, bias, unfold):
        """``weight ± scaling * B A``, accumulated in float32; the bias is unchanged."""
        lora_a = getattr(self, LORA_A).asnumpy().astype(np.float32)
        lora_b = getattr(self, LORA_B).asnumpy().astype(np.float32)
        delta = np.float32(self.scaling) * (lora_b @ lora_a)
        return (weight - delta if unfold else weight + delta), bias

    def _set_branch_active(self, active):
        self.lora_branch_scale.set_data(Tensor(self.scaling if active else 0.0, mstype.float32))

    def shard(self, strategy_org_dense_matmul=None, strategy_org_bias_add=None, strategy_lora_dropout=None,
              strategy_lora_a_matmul=None, strategy_lora_b_matmul=None, strategy_lora_mul=None,
              strategy_lora_add=None, strategy_activation=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc("""
            strategy_org_dense_matmul (tuple): ``x (N, in) @ weight (out, in)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_org_bias_add (tuple): ``+ bias``, e.g. ``((dp, mp), (mp,))``.
            strategy_lora_dropout (tuple): dropout on the branch input ``x``, e.g. ``((dp, 1),)``.
            strategy_lora_a_matmul (tuple): ``x @ A (r, in)^T``, e.g. ``((dp, 1), (1, 1))``.
            strategy_lora_b_matmul (tuple): ``(x A^T) (N, r) @ B (out, r)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_lora_mul (tuple): the branch times its scale (a scalar), e.g. ``((dp, mp), ())``.
            strategy_lora_add (tuple): the Dense output plus the branch, e.g. ``((dp, mp), (dp, mp))``.
            strategy_activation (tuple): the activation input's layout, e.g. ``((dp, mp),)``.""",
                              "``in_channels``, ``out_channels``, ``lora_rank``",
                              "``N`` or ``out_channels`` unlike an earlier strategy (the branch is added to the Dense "
                              "output)")

    def _shard_plan(self):
        """The Dense part ``x W^T + b`` and the branch ``dropout(x) A^T B^T * scale`` meet in ``lora_add``.

        The branch must split ``N`` and ``out_channels`` as the Dense part does.
        """
        owner = type(self).__name__
        in_dim, out_dim = self._channel_dims()
        rank = Dim("lora_rank", self.lora_rank)
        update = (TOKENS, out_dim)
        dense_ops, dense_output = self._dense_ops("strategy_org_dense_matmul", "strategy_org_bias_add")
        ops = (*dense_ops,
               primitive_op("strategy_lora_dropout", self.lora_dropout.dropout, (Operand("x", (TOKENS, in_dim)),),
                            "lora_input"),
               primitive_op("strategy_lora_a_matmul", self.lora_a_matmul,
                            (Operand("lora_input", (TOKENS, in_dim)), Operand(LORA_A, (rank, in_dim))), "lora_hidden"),
               primitive_op("strategy_lora_b_matmul", self.lora_b_matmul,
                            (Operand("lora_hidden", (TOKENS, rank)), Operand(LORA_B, (out_dim, rank))), "lora_update"),
               primitive_op("strategy_lora_mul", self.lora_mul,
                            (Operand("lora_update", update), Operand("lora_branch_scale", ())), "lora_scaled"),
               primitive_op("strategy_lora_add", self.lora_add,
                            (Operand(dense_output, update), Operand("lora_scaled", update)), "sum"),
               activation_op("strategy_activation", self.activation, owner, Operand("sum", update), "activated"))
        return OperatorPlan(ops, tied=(TOKENS, out_dim))

    def extend_repr(self):
        return (f"{super().extend_repr()}, lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha}, "
                f"lora_dropout={self.lora_dropout_rate}")

