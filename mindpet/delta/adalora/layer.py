"""AdaLoRA: LoRA in SVD form whose rank budget moves between layers by importance (Zhang et al., ICLR 2023)."""
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore import dtype as mstype
from mindspore.common.initializer import Normal
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
from mindpet.utils.naming import ADALORA_BRANCH_SCALE, ADALORA_RANK_MASK, delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.validation import argument_error, check_nonzero_number, check_positive_int, check_rate

ADALORA_P = delta_attr_name("adalora", "p")
ADALORA_E = delta_attr_name("adalora", "e")
ADALORA_Q = delta_attr_name("adalora", "q")
# PEFT's initialisation: the singular vectors drawn from N(0, 0.02^2), the singular values at zero.
_DEFAULT_VECTOR_INIT = Normal(sigma=0.02)
# The singleton axis of the singular values (r, 1) and of the rank mask; a shard plan may not split it.
_SINGLETON = Dim("the singular-value column", 1)


def adalora_scaling(lora_alpha, init_r):
    """The branch scale ``lora_alpha / init_r``; it keeps its value when ranks are pruned or truncated."""
    return lora_alpha / init_r


@with_dense_arguments
class AdaLoRADense(ShardValidated, MergeableDense):
    r"""A Dense layer with a trainable update in SVD form whose rank an allocator prunes during training, a drop-in
    replacement for ``nn.Dense``.

    .. math::
        y = \mathrm{activation}\left(x W^T + b + s\, \mathrm{dropout}(x)\, \left((E \odot m) * P\right)^T Q^T
            \right), \qquad s = \frac{lora\_alpha}{init\_r}

    ``P`` (``mindpet_delta_adalora_p``, shape ``(lora_rank, in_channels)``) holds the right singular vectors,
    ``E`` (``mindpet_delta_adalora_e``, ``(lora_rank, 1)``) the singular values, broadcast over the rows of ``P``,
    and ``Q`` (``mindpet_delta_adalora_q``, ``(out_channels, lora_rank)``) the left singular vectors. ``m`` is the
    non-trainable rank mask ``adalora_rank_mask`` ``(lora_rank, 1)``: ones while the budget is being allocated, the
    final pattern (1 kept, 0 pruned) from the final phase on (:class:`~mindpet.AdaLoraCallback` sets it). Masking
    changes values, never shapes, so a compiled training graph is reused. ``E`` starts at zero (as in PEFT), so a
    fresh cell computes what the Dense layer it replaces computed.

    The cell refuses to train on its own: a training step must update the importance of ``P``, ``E`` and ``Q``
    from their gradients, which only :class:`~mindpet.delta.adalora.AdaLoraTrainOneStepCell` does. Calling the cell
    in training mode (``set_train(True)``, as ``Model`` does when it builds its training network) before that training
    cell owns it raises RuntimeError, before any step runs; evaluation and inference are unaffected.

    :meth:`truncate` drops the pruned triplets for inference (shapes shrink, outputs stay the same); :meth:`merge`
    folds ``s Q ((E m) * P)`` into ``weight``. The branch scale lives in the non-trainable Parameter
    ``adalora_branch_scale`` (``s`` unmerged, 0 merged) so that a compiled graph stays correct after a merge.

    Args:
{dense_channels}
        init_r (int): the rank every cell starts with; the scale's denominator, also after pruning or truncation.
        lora_alpha (Union[int, float]): the scale numerator. Must not be 0.
        lora_dropout (float): dropout rate on the branch input while training, in [0, 1). Default: 0.0.
        lora_rank (int, optional): the number of triplets the cell holds, at most `init_r`; fewer for a cell
            truncated to its final rank (as :func:`~mindpet.load_delta` builds one from a file with a rank pattern).
            Default: ``None`` (`init_r`).
        lora_p_init (Union[Tensor, str, Initializer, numbers.Number]): ``P`` init. Default: ``Normal(sigma=0.02)``.
        lora_e_init (Union[Tensor, str, Initializer, numbers.Number]): ``E`` init. Default: ``'zeros'``.
        lora_q_init (Union[Tensor, str, Initializer, numbers.Number]): ``Q`` init. Default: ``Normal(sigma=0.02)``.
{dtypes}
{dense_inits}

{dense_inputs_outputs}

    Raises:
        TypeError: ``in_channels``, ``out_channels``, ``init_r`` or ``lora_rank`` is not an int; ``lora_alpha`` is not
            an int or float; ``lora_dropout`` is not a float; ``has_bias`` is not a bool; ``param_init_type`` or
            ``compute_dtype`` is not float16 or float32; when called, ``x`` is not a float Tensor.
        ValueError: a size is <= 0 or ``lora_rank`` > ``init_r``; ``lora_alpha`` is 0, NaN or infinite;
            ``lora_dropout`` is outside [0, 1); an init Tensor has the wrong shape or a non-finite value.
        RuntimeError: when set to train before an AdaLoRA training cell owns it.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindpet.delta import AdaLoRADense
        >>> dense = AdaLoRADense(8, 4, init_r=3, lora_alpha=6, lora_e_init="ones", compute_dtype=ms.float32)
        >>> [getattr(dense, "mindpet_delta_adalora_" + role).shape for role in "peq"]
        [(3, 8), (3, 1), (4, 3)]
        >>> _ = dense.adalora_rank_mask.set_data(ms.Tensor([[1.0], [0.0], [1.0]], ms.float32))
        >>> x = ms.Tensor(np.ones((2, 8)), ms.float32)
        >>> masked = dense(x).asnumpy()
        >>> dense.truncate().lora_rank, bool(np.allclose(dense(x).asnumpy(), masked, atol=1e-6))
        (2, True)
    """

    def __init__(self, in_channels, out_channels, init_r, lora_alpha, lora_dropout=0.0, lora_rank=None,
                 lora_p_init=_DEFAULT_VECTOR_INIT, lora_e_init="zeros", lora_q_init=_DEFAULT_VECTOR_INIT,
                 param_init_type=mstype.float32, compute_dtype=mstype.float16, weight_init="normal",
                 bias_init="zeros", has_bias=True, activation=None):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation, param_init_type=param_init_type,
                         compute_dtype=compute_dtype)
        owner = type(self).__name__
        self.init_r = check_positive_int(init_r, "init_r", owner)
        self.lora_rank = self.init_r if lora_rank is None else check_positive_int(lora_rank, "lora_rank", owner)
        if self.lora_rank > self.init_r:
            raise argument_error(ValueError, owner, "lora_rank", f"at most init_r={self.init_r}", lora_rank)
        self.lora_alpha = check_nonzero_number(lora_alpha, "lora_alpha", owner)
        self.lora_dropout_rate = check_rate(lora_dropout, "lora_dropout", owner)
        self.scaling = adalora_scaling(self.lora_alpha, self.init_r)
        # Set by AdaLoraTrainOneStepCell: only then may the cell be set to train.
        self.importance_tracked = False

        rank = self.lora_rank
        setattr(self, ADALORA_P, make_parameter(lora_p_init, (rank, self.in_channels), param_init_type, ADALORA_P,
                                                "lora_p_init", owner))
        setattr(self, ADALORA_E, make_parameter(lora_e_init, (rank, 1), param_init_type, ADALORA_E, "lora_e_init",
                                                owner))
        setattr(self, ADALORA_Q, make_parameter(lora_q_init, (self.out_channels, rank), param_init_type, ADALORA_Q,
                                                "lora_q_init", owner))
        self.adalora_rank_mask = Parameter(Tensor(np.ones((rank, 1)), mstype.float32), name=ADALORA_RANK_MASK,
                                           requires_grad=False)
        self.adalora_branch_scale = Parameter(Tensor(self.scaling, mstype.float32), name=ADALORA_BRANCH_SCALE,
                                              requires_grad=False)

        self.lora_dropout = nn.Dropout(p=self.lora_dropout_rate)
        self.mask_mul = P.Mul()
        self.singular_mul = P.Mul()
        self.lora_p_matmul = P.MatMul(transpose_b=True)
        self.lora_q_matmul = P.MatMul(transpose_b=True)
        self.lora_mul = P.Mul()
        self.lora_add = P.Add()

    def add_flags(self, **flags):
        # set_train(True), which Model.train calls before the first step, reaches every cell here: refusing now comes
        # before any forward pass is recorded. (An exception raised inside a PYNATIVE forward under autodiff leaves
        # MindSpore's grad executor broken for the rest of the process.)
        if flags.get("training") and not getattr(self, "importance_tracked", False):
            raise RuntimeError(f"For '{type(self).__name__}', the cell is set to train without importance tracking: "
                               f"AdaLoRA would silently train as plain LoRA. Train the network through "
                               f"mindpet.delta.adalora.AdaLoraTrainOneStepCell with mindpet.AdaLoraCallback "
                               f"(see docs/adalora.md).")
        return super().add_flags(**flags)

    def construct(self, x):
        input_shape = x.shape
        input_dtype = x.dtype
        x = self._to_compute(x)
        y = self.lora_add(self._dense(x), self._branch(x))
        return self._restore(self._activate(y), input_shape, input_dtype)

    def _branch(self, x):
        """``s dropout(x) ((E m) * P)^T Q^T``."""
        values = self.mask_mul(self.mindpet_delta_adalora_e, self.cast(self.adalora_rank_mask,
                                                                       self.mindpet_delta_adalora_e.dtype))
        right = self.singular_mul(self.mindpet_delta_adalora_p, values)
        branch = self.lora_p_matmul(self.lora_dropout(x), self._compute_param(right))
        branch = self.lora_q_matmul(branch, self._compute_param(self.mindpet_delta_adalora_q))
        scale = self.adalora_branch_scale
        if self.compute_dtype != mstype.float32:
            scale = self.cast(scale, self.compute_dtype)
        return self.lora_mul(branch, scale)

    def kept_triplets(self):
        """The rank mask as a bool array ``(lora_rank,)``: True for every triplet the allocator kept."""
        return self.adalora_rank_mask.asnumpy().reshape(-1) > 0

    def delta_arrays(self):
        """``P``, ``E * m`` and ``Q`` as float32 NumPy arrays (pruned singular values read as zero)."""
        mask = self.adalora_rank_mask.asnumpy().astype(np.float32)
        return (self.mindpet_delta_adalora_p.asnumpy().astype(np.float32),
                self.mindpet_delta_adalora_e.asnumpy().astype(np.float32) * mask,
                self.mindpet_delta_adalora_q.asnumpy().astype(np.float32))

    def kept_for_truncation(self):
        """The triplets :meth:`truncate` keeps, bool ``(lora_rank,)``: the kept ones, or the first alone (its mask
        stays 0) when every triplet is pruned, since a cell cannot have rank 0."""
        kept = self.kept_triplets()
        if not kept.any():
            kept[0] = True
        return kept

    def truncate(self):
        """Drop the pruned triplets (rank mask 0): ``P``, ``E``, ``Q`` and the mask shrink to the kept rank, the
        scale stays ``lora_alpha / init_r``, the outputs stay the same. For inference. A cell with every triplet
        pruned keeps one, masked. A network compiled before in GRAPH mode keeps its graph of the old shapes: truncate
        it with :func:`truncate_adalora`, which makes it compile again.

        Returns:
            The cell itself.
        """
        kept = self.kept_for_truncation()
        for name in (ADALORA_P, ADALORA_E):
            param = getattr(self, name)
            param.set_data(Tensor(param.asnumpy()[kept], param.dtype), slice_shape=True)
        param = getattr(self, ADALORA_Q)
        param.set_data(Tensor(param.asnumpy()[:, kept], param.dtype), slice_shape=True)
        mask = self.adalora_rank_mask
        mask.set_data(Tensor(mask.asnumpy()[kept], mstype.float32), slice_shape=True)
        self.lora_rank = int(kept.sum())
        self.compile_cache.clear()
        return self

    @property
    def merged(self):
        """Whether the update is currently folded into ``weight``."""
        return float(self.adalora_branch_scale.asnumpy()) == 0.0

    def _fold(self, weight, bias, unfold):
        """``weight ± s Q ((E m) * P)``, accumulated in float32; the bias is unchanged."""
        lora_p, values, lora_q = self.delta_arrays()
        delta = np.float32(self.scaling) * (lora_q @ (values * lora_p))
        return (weight - delta if unfold else weight + delta), bias

    def _set_branch_active(self, active):
        self.adalora_branch_scale.set_data(Tensor(self.scaling if active else 0.0, mstype.float32))

    def shard(self, strategy_org_dense_matmul=None, strategy_org_bias_add=None, strategy_mask_mul=None,
              strategy_singular_mul=None, strategy_lora_dropout=None, strategy_lora_p_matmul=None,
              strategy_lora_q_matmul=None, strategy_lora_mul=None, strategy_lora_add=None, strategy_activation=None):
        return self._accept_strategies(strategy_arguments(locals()))

    shard.__doc__ = shard_doc("""
            strategy_org_dense_matmul (tuple): ``x (N, in) @ weight (out, in)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_org_bias_add (tuple): ``+ bias``, e.g. ``((dp, mp), (mp,))``.
            strategy_mask_mul (tuple): ``E (r, 1) * m (r, 1)``, e.g. ``((1, 1), (1, 1))``.
            strategy_singular_mul (tuple): ``P (r, in) * (E m) (r, 1)``, e.g. ``((1, 1), (1, 1))``.
            strategy_lora_dropout (tuple): dropout on the branch input ``x``, e.g. ``((dp, 1),)``.
            strategy_lora_p_matmul (tuple): ``x @ ((E m) * P) (r, in)^T``, e.g. ``((dp, 1), (1, 1))``.
            strategy_lora_q_matmul (tuple): ``(N, r) @ Q (out, r)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_lora_mul (tuple): the branch times its scale (a scalar), e.g. ``((dp, mp), ())``.
            strategy_lora_add (tuple): the Dense output plus the branch, e.g. ``((dp, mp), (dp, mp))``.
            strategy_activation (tuple): the activation input's layout, e.g. ``((dp, mp),)``.""",
                              "``in_channels``, ``out_channels``, ``lora_rank``; the singular-value column is never "
                              "split",
                              "``N`` or ``out_channels`` unlike an earlier strategy (the branch is added to the Dense "
                              "output)")

    def _shard_plan(self):
        """The Dense part and the branch ``dropout(x) ((E m) * P)^T Q^T * scale`` meet in ``lora_add``."""
        in_dim, out_dim = self._channel_dims()
        rank = Dim("lora_rank", self.lora_rank)
        column = (rank, _SINGLETON)
        update = (TOKENS, out_dim)
        dense_ops, dense_output = self._dense_ops("strategy_org_dense_matmul", "strategy_org_bias_add")
        ops = [*dense_ops,
               primitive_op("strategy_mask_mul", self.mask_mul,
                            (Operand(ADALORA_E, column), Operand(ADALORA_RANK_MASK, column)), "singular_values"),
               primitive_op("strategy_singular_mul", self.singular_mul,
                            (Operand(ADALORA_P, (rank, in_dim)), Operand("singular_values", column)), "right"),
               primitive_op("strategy_lora_dropout", self.lora_dropout.dropout, (Operand("x", (TOKENS, in_dim)),),
                            "lora_input"),
               primitive_op("strategy_lora_p_matmul", self.lora_p_matmul,
                            (Operand("lora_input", (TOKENS, in_dim)), Operand("right", (rank, in_dim))),
                            "lora_hidden"),
               primitive_op("strategy_lora_q_matmul", self.lora_q_matmul,
                            (Operand("lora_hidden", (TOKENS, rank)), Operand(ADALORA_Q, (out_dim, rank))),
                            "lora_update"),
               primitive_op("strategy_lora_mul", self.lora_mul,
                            (Operand("lora_update", update), Operand(ADALORA_BRANCH_SCALE, ())), "lora_scaled"),
               primitive_op("strategy_lora_add", self.lora_add,
                            (Operand(dense_output, update), Operand("lora_scaled", update)), "sum"),
               activation_op("strategy_activation", self.activation, type(self).__name__, Operand("sum", update),
                             "activated")]
        return OperatorPlan(ops, tied=(TOKENS, out_dim))

    def extend_repr(self):
        return (f"{super().extend_repr()}, init_r={self.init_r}, lora_rank={self.lora_rank}, "
                f"lora_alpha={self.lora_alpha}, lora_dropout={self.lora_dropout_rate}")


def truncate_adalora(network):
    """Truncate every :class:`AdaLoRADense` of ``network`` to the triplets its rank mask kept, for inference, and
    make the network compile again in GRAPH mode (a graph compiled before holds the old shapes). The outputs stay the
    same.

    Args:
        network (Cell): a network holding AdaLoRA cells.

    Returns:
        dict[str, int], the rank of each cell by path.

    Raises:
        ValueError: `network` holds no AdaLoRA cell.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.delta.adalora import AdaLoRADense, truncate_adalora
        >>> net = nn.SequentialCell([AdaLoRADense(8, 4, init_r=3, lora_alpha=6, lora_e_init="ones",
        ...                                      compute_dtype=ms.float32), nn.ReLU()])
        >>> _ = net[0].adalora_rank_mask.set_data(ms.Tensor([[0.0], [1.0], [1.0]], ms.float32))
        >>> x = ms.Tensor(np.ones((2, 8)), ms.float32)
        >>> masked = net(x).asnumpy()
        >>> truncate_adalora(net), bool(np.allclose(net(x).asnumpy(), masked, atol=1e-6))
        ({'0': 2}, True)
    """
    cells = [(path, cell) for path, cell in network.cells_and_names() if isinstance(cell, AdaLoRADense)]
    if not cells:
        raise argument_error(ValueError, "truncate_adalora", "network", "a network holding AdaLoRADense cells",
                             type(network).__name__)
    for _, cell in cells:
        cell.truncate()
    for _, cell in network.cells_and_names():
        cell.compile_cache.clear()
    return {path: cell.lora_rank for path, cell in cells}
