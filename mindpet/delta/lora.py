"""LoRA: low-rank adaptation of a Dense layer (Hu et al., 2021)."""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore import dtype as mstype
from mindspore.common.initializer import HeUniform
from mindspore.ops import operations as P

from mindpet.delta.dense_core import DenseCore
from mindpet.utils.logger import logger
from mindpet.utils.naming import LORA_BRANCH_SCALE, delta_attr_name
from mindpet.utils.param_init import make_parameter
from mindpet.utils.shard_plan import TOKENS, Dim, Operand, OperatorPlan, ShardValidated, activation_op, primitive_op
from mindpet.utils.validation import argument_error, check_nonzero_number, check_positive_int, check_rate

LORA_A = delta_attr_name("lora", "a")
LORA_B = delta_attr_name("lora", "b")
_DEFAULT_LORA_A_INIT = HeUniform(negative_slope=math.sqrt(5))


class LoRADense(ShardValidated, DenseCore):
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
        in_channels (int): size of the last input dimension.
        out_channels (int): size of the last output dimension.
        lora_rank (int): rank of the update, the rows of ``A`` and columns of ``B``.
        lora_alpha (Union[int, float]): scale numerator; the update is multiplied by ``lora_alpha / lora_rank``.
            Must not be 0.
        lora_dropout (float): dropout rate applied to the branch input while training, in [0, 1). Default: 0.0.
        lora_a_init (Union[Tensor, str, Initializer, numbers.Number]): ``A`` init.
            Default: ``HeUniform(negative_slope=math.sqrt(5))``.
        lora_b_init (Union[Tensor, str, Initializer, numbers.Number]): ``B`` init. Default: ``'zeros'``.
        param_init_type (mindspore.dtype): dtype of all parameters, float32 or float16. Default: float32.
        compute_dtype (mindspore.dtype): dtype of the matmuls, float16 or float32. Default: float16.
        weight_init (Union[Tensor, str, Initializer, numbers.Number]): ``weight`` init. Default: ``'normal'``.
        bias_init (Union[Tensor, str, Initializer, numbers.Number]): ``bias`` init. Default: ``'zeros'``.
        has_bias (bool): whether to add ``bias``. Default: ``True``.
        activation (Union[str, Cell, Primitive, None]): activation applied last, e.g. ``'relu'`` or
            ``nn.ReLU()``. Default: ``None``.

    Inputs:
        - **x** (Tensor) - shape :math:`(*, in\_channels)`, rank >= 2.

    Outputs:
        Tensor of shape :math:`(*, out\_channels)` and the dtype of ``x``.

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

    def _delta_weight(self):
        """``scaling * B A`` in float32."""
        lora_a = getattr(self, LORA_A).asnumpy().astype(np.float32)
        lora_b = getattr(self, LORA_B).asnumpy().astype(np.float32)
        return np.float32(self.scaling) * (lora_b @ lora_a)

    def _add_to_weight(self, delta):
        weight = self.weight.asnumpy().astype(np.float32) + delta
        self.weight.set_data(Tensor(weight, self.weight.dtype))

    def merge(self):
        """Fold ``scaling * B A`` into ``weight`` (accumulated in float32) and switch the branch off.

        The output stays the same within rounding: float32 rounding (1e-5 of the largest output) with
        ``compute_dtype=float32``, float16 rounding (2e-3) with float16. Call :meth:`unmerge` before training
        again: while merged, ``A`` and ``B`` receive zero gradients (:class:`~mindpet.checkpoint.TrainingGuard`
        reports it). Merging a merged cell logs a warning and does nothing.

        Returns:
            The cell itself.
        """
        if self.merged:
            logger.warning("%s is already merged; merge() did nothing.", self.cls_name)
            return self
        self._add_to_weight(self._delta_weight())
        self.lora_branch_scale.set_data(Tensor(0.0, mstype.float32))
        return self

    def unmerge(self):
        """Take ``scaling * B A`` out of ``weight`` again and switch the branch back on.

        Unmerging a cell that is not merged logs a warning and does nothing.

        Returns:
            The cell itself.
        """
        if not self.merged:
            logger.warning("%s is not merged; unmerge() did nothing.", self.cls_name)
            return self
        self._add_to_weight(-self._delta_weight())
        self.lora_branch_scale.set_data(Tensor(self.scaling, mstype.float32))
        return self

    def shard(self, strategy_org_dense_matmul=None, strategy_org_bias_add=None, strategy_lora_dropout=None,
              strategy_lora_a_matmul=None, strategy_lora_b_matmul=None, strategy_lora_mul=None,
              strategy_lora_add=None, strategy_activation=None):
        """Set the parallel strategy of each operator (used in semi-auto and auto parallel mode).

        Every strategy is a tuple with one layout per operator input, as for ``mindspore.ops.Primitive.shard``;
        None leaves that operator to the framework (strategies set by an earlier call stay). Inputs are 2-D
        (leading dimensions are flattened into ``N``). The strategies are checked together, with those of earlier
        calls, before any is applied; see :mod:`mindpet.utils.shard_plan` for the rules.

        Args:
            strategy_org_dense_matmul (tuple): ``x (N, in) @ weight (out, in)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_org_bias_add (tuple): ``+ bias``, e.g. ``((dp, mp), (mp,))``.
            strategy_lora_dropout (tuple): dropout on the branch input ``x``, e.g. ``((dp, 1),)``.
            strategy_lora_a_matmul (tuple): ``x @ A (r, in)^T``, e.g. ``((dp, 1), (1, 1))``.
            strategy_lora_b_matmul (tuple): ``(x A^T) (N, r) @ B (out, r)^T``, e.g. ``((dp, 1), (mp, 1))``.
            strategy_lora_mul (tuple): the branch times its scale (a scalar), e.g. ``((dp, mp), ())``.
            strategy_lora_add (tuple): the Dense output plus the branch, e.g. ``((dp, mp), (dp, mp))``.
            strategy_activation (tuple): the activation input's layout, e.g. ``((dp, mp),)``.

        Returns:
            The cell itself.

        Raises:
            ValueError: a strategy is not a tuple of tuples of positive ints, has the wrong number of layouts for its
                operator or a layout of the wrong length; splits an axis unlike itself across the operator's inputs
                (e.g. the contracted ``in`` axis of a matmul) or into unequal parts (``in_channels``,
                ``out_channels``, ``lora_rank``); splits ``N`` or ``out_channels`` unlike an earlier strategy (the
                branch must be split like the Dense output it is added to); takes an operator's output in another
                layout than the operator produces; needs a device count that does not divide the one set in a
                semi-auto or auto parallel context; or is given for a bias or activation the cell does not have.
        """
        return self._accept_strategies(dict(
            strategy_org_dense_matmul=strategy_org_dense_matmul, strategy_org_bias_add=strategy_org_bias_add,
            strategy_lora_dropout=strategy_lora_dropout, strategy_lora_a_matmul=strategy_lora_a_matmul,
            strategy_lora_b_matmul=strategy_lora_b_matmul, strategy_lora_mul=strategy_lora_mul,
            strategy_lora_add=strategy_lora_add, strategy_activation=strategy_activation))

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


def _plain_dense(cell):
    """The merged ``cell`` as a Dense layer holding the very same ``weight``/``bias`` Parameters (and activation).

    That is an ``nn.Dense`` when the cell computes in its parameters' dtype, as ``nn.Dense`` does; otherwise a
    :class:`DenseCore`, which computes in ``compute_dtype`` and returns the input's dtype, as the LoRADense did.
    """
    if not cell.merged:
        cell.merge()
    if cell.compute_dtype == cell.param_init_type:
        dense = nn.Dense(cell.in_channels, cell.out_channels, weight_init="zeros", bias_init="zeros",
                         has_bias=cell.has_bias, activation=cell.activation, dtype=cell.param_init_type)
    else:
        dense = DenseCore(cell.in_channels, cell.out_channels, weight_init="zeros", has_bias=cell.has_bias,
                          activation=cell.activation, param_init_type=cell.param_init_type,
                          compute_dtype=cell.compute_dtype)
    # Reusing the Parameter objects keeps their values, names and any sharing without a copy.
    dense.weight = cell.weight
    if cell.has_bias:
        dense.bias = cell.bias
    return dense


def _replace_child(parent, key, child):
    """Put ``child`` where ``parent`` holds the cell registered under ``key``, the way ``parent`` stores cells."""
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        # Both keep their own index besides ``_cells`` (SequentialCell's ``cell_list``); item assignment updates it.
        parent[list(parent._cells).index(key)] = child  # pylint: disable=protected-access
    elif isinstance(parent, nn.CellDict):
        parent[key] = child
    else:
        setattr(parent, key, child)


def merge_and_unload(network):
    """Merge every :class:`LoRADense` in ``network`` and replace it by a plain ``nn.Dense``, for inference.

    A merged LoRADense still runs its (switched-off) rank-``r`` branch; the ``nn.Dense`` that replaces it runs
    only ``x W^T + b`` and the activation. Each replacement has the LoRADense's ``in_channels``,
    ``out_channels``, ``has_bias`` and activation, and holds the very same ``weight`` and ``bias`` Parameters
    (``weight`` merged), so parameter names such as ``layers.0.weight`` stay those of the pretrained model and a
    checkpoint of the result loads into the model built with ``nn.Dense``. Cells are found in plain attributes,
    ``nn.SequentialCell``, ``nn.CellList`` and ``nn.CellDict``; a LoRADense held in two places is replaced by one
    ``nn.Dense`` in both. Cells not yet merged are merged first (see :meth:`LoRADense.merge`).

    Afterwards the network holds no LoRA parameters: it cannot be unmerged and its LoRA cannot be trained. The
    network is changed in place, and in GRAPH mode a network that was called before keeps running the graph
    compiled then, which still holds the replaced (merged) LoRADense cells: its outputs stay right but it gets no
    faster. Call ``merge_and_unload`` before the network's first call (or on a newly built network loaded from the
    checkpoint) so that the graph is compiled from the new ``nn.Dense`` cells.

    ``nn.Dense`` computes in its weight's dtype. A LoRADense whose ``compute_dtype`` differs from its
    ``param_init_type`` (for example float32 parameters computed in float16, the LoRADense default) is therefore
    replaced by a :class:`~mindpet.delta.dense_core.DenseCore` instead, the frozen Dense core of mindpet's cells:
    the same Parameters and names, computing in ``compute_dtype`` and returning the input's dtype, as the
    LoRADense did.

    Args:
        network (Cell): the network, or a LoRADense itself.

    Returns:
        Cell, ``network`` changed in place; the new Dense layer when ``network`` is a LoRADense.

    Raises:
        TypeError: ``network`` is not a Cell.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.delta import LoRADense, merge_and_unload
        >>> net = nn.SequentialCell([LoRADense(8, 4, lora_rank=2, lora_alpha=4, lora_b_init="normal",
        ...                                    compute_dtype=ms.float32), nn.ReLU()])
        >>> x = ms.Tensor(np.ones((3, 8)), ms.float32)
        >>> before = net(x).asnumpy()
        >>> net = merge_and_unload(net)
        >>> type(net[0]).__name__, [param.name for param in net.get_parameters()]
        ('Dense', ['0.weight', '0.bias'])
        >>> bool(np.allclose(net(x).asnumpy(), before, atol=1e-5))
        True
    """
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, "merge_and_unload", "network", "a Cell", network)
    found = [(where, cell) for where, cell in network.cells_and_names() if isinstance(cell, LoRADense)]
    names = {id(param): param.name for _, cell in found for param in cell.get_parameters()}
    replacements = {id(cell): _plain_dense(cell) for _, cell in found}
    if isinstance(network, LoRADense):
        network = replacements[id(network)]
    for parent in [cell for _, cell in network.cells_and_names()]:
        for key, child in list(parent._cells.items()):  # pylint: disable=protected-access
            if isinstance(child, LoRADense):
                _replace_child(parent, key, replacements[id(child)])
    # Inserting a cell renames its parameters after the key in its direct parent only; restore the full names.
    for dense in replacements.values():
        for param in dense.get_parameters():
            param.name = names.get(id(param), param.name)
    return network
