"""AdaLoRA's training step: importance tracked inside the compiled graph, and the orthogonality penalty.

MindSpore callbacks never see gradients, so the smoothed sensitivity and uncertainty of every ``P``, ``E`` and
``Q`` entry are updated by :class:`AdaLoraTrainOneStepCell` in the training graph itself, into non-trainable
Parameters that :class:`~mindpet.AdaLoraCallback` reads every ``deltaT`` steps.
"""
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype

from mindpet.delta.adalora.layer import ADALORA_E, ADALORA_P, ADALORA_Q, AdaLoRADense
from mindpet.utils.validation import argument_error, check_finite_number, quote_names

# The trained parameters of a cell whose importance is tracked, in the order the allocator scores them.
TRACKED = (ADALORA_P, ADALORA_E, ADALORA_Q)


def adalora_cells(network):
    """``[(path, cell)]`` of the :class:`AdaLoRADense` cells of ``network``, in ``cells_and_names`` order."""
    return [(path, cell) for path, cell in network.cells_and_names() if isinstance(cell, AdaLoRADense)]


def require_adalora_cells(network, owner):
    """:func:`adalora_cells`, or ValueError naming ``owner`` when there are none."""
    cells = adalora_cells(network)
    if not cells:
        raise argument_error(ValueError, owner, "network", "a network holding AdaLoRADense cells (inject them with "
                             "get_delta_model(net, AdaLoraConfig(...)))", type(network).__name__)
    return cells


class AdaLoraTrainOneStepCell(nn.TrainOneStepCell):
    r"""``nn.TrainOneStepCell`` for AdaLoRA: one optimizer step that also updates the importance of every entry of
    ``P``, ``E`` and ``Q`` from its gradient, before the optimizer changes it. Use it as ``Model(train_cell)``.

    For every entry ``w`` with gradient ``g``, as in the AdaLoRA paper (eqs. 8-10):

    .. math::
        I = |w\, g|, \qquad \bar I \leftarrow \beta_1 \bar I + (1 - \beta_1) I, \qquad
        \bar U \leftarrow \beta_2 \bar U + (1 - \beta_2) |I - \bar I|

    The averages live in non-trainable Parameters of this cell (``adalora_sensitivity.*`` and
    ``adalora_uncertainty.*``), updated with ``ops.assign`` in the compiled graph and ordered before the optimizer
    step, so ``w`` is the value the gradient was taken at (the paper's order; PEFT multiplies the gradient by the
    already-updated weight). After the optimizer step, ``E`` is multiplied by each cell's rank mask, so a pruned
    singular value stays at zero although the optimizer's momentum would move it (PEFT re-masks after every step
    too). ``allocator`` (an :class:`~mindpet.AdaLoraCallback` of the same network) reads them every
    ``deltaT`` steps and prunes the rank; it must be passed to ``Model.train`` as a callback too. A step run without
    it (the callback's ``on_train_begin`` never ran) raises RuntimeError before anything is computed.

    Args:
        network (Cell): the network with its loss, returning a scalar (e.g. ``nn.WithLossCell``, or
            :class:`AdaLoraOrthogonalLoss` around it); it must hold :class:`~mindpet.delta.AdaLoRADense` cells.
        optimizer (Cell): the optimizer; its parameters must include every ``P``, ``E`` and ``Q``.
        allocator (AdaLoraCallback): the callback that allocates the budget.
        sens (numbers.Number): the loss scale the gradient starts from. Default: ``1.0``.

    Inputs:
        - **\*inputs** - the inputs of `network`.

    Outputs:
        Tensor, the loss.

    Raises:
        TypeError: `allocator` is not an AdaLoraCallback.
        ValueError: `network` holds no AdaLoRA cell, or `optimizer` does not train one of their parameters; the
            allocator already belongs to another training cell.
        RuntimeError: a step runs while `allocator` is not running as a callback of ``Model.train`` (at compile
            time in GRAPH mode).

    Examples:
        >>> from mindspore import nn
        >>> from mindpet import AdaLoraCallback, AdaLoraConfig, get_delta_model
        >>> from mindpet.delta.adalora import AdaLoraTrainOneStepCell
        >>> config = AdaLoraConfig(target_modules=["0"], init_r=4, target_r=2, total_step=20)
        >>> net = get_delta_model(nn.SequentialCell([nn.Dense(8, 4), nn.ReLU(), nn.Dense(4, 2)]), config)
        >>> allocator = AdaLoraCallback(net, config)
        >>> optimizer = nn.SGD(net.trainable_params(), learning_rate=0.1)
        >>> train_cell = AdaLoraTrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), optimizer, allocator)
        >>> len(train_cell.sensitivity)
        3
    """

    def __init__(self, network, optimizer, allocator, sens=1.0):
        # The allocator's class lives beside this one; imported here so that each module stays importable alone.
        from mindpet.delta.adalora.callback import AdaLoraCallback  # pylint: disable=import-outside-toplevel
        owner = type(self).__name__
        if not isinstance(allocator, AdaLoraCallback):
            raise argument_error(TypeError, owner, "allocator", "a mindpet.AdaLoraCallback", allocator)
        super().__init__(network, optimizer, check_finite_number(sens, "sens", owner))
        cells = require_adalora_cells(network, owner)
        position = {id(param): index for index, param in enumerate(self.weights)}
        untrained = [getattr(cell, name).name for _, cell in cells for name in TRACKED
                     if id(getattr(cell, name)) not in position]
        if untrained:
            raise argument_error(ValueError, owner, "optimizer", "an optimizer over every AdaLoRA parameter (build "
                                 f"it from network.trainable_params() after freezing); it lacks "
                                 f"{quote_names(untrained)}", type(optimizer).__name__)
        tracked = [getattr(cell, name) for _, cell in cells for name in TRACKED]
        self.tracked_indices = tuple(position[id(param)] for param in tracked)
        self.sensitivity = ParameterTuple(self._zeros_like(param, "sensitivity") for param in tracked)
        self.uncertainty = ParameterTuple(self._zeros_like(param, "uncertainty") for param in tracked)
        self.singular_values = ParameterTuple(getattr(cell, ADALORA_E) for _, cell in cells)
        self.rank_masks = ParameterTuple(cell.adalora_rank_mask for _, cell in cells)
        self.beta1 = allocator.config.beta1
        self.beta2 = allocator.config.beta2
        # Set by the allocator's on_train_begin; read when the step is compiled (GRAPH) or run (PYNATIVE).
        self.allocator_running = False
        for _, cell in cells:
            cell.importance_tracked = True
        allocator.attach(self, [cell for _, cell in cells])

    @staticmethod
    def _zeros_like(param, kind):
        return Parameter(Tensor(np.zeros(param.shape), mstype.float32), name=f"adalora_{kind}.{param.name}",
                         requires_grad=False)

    def construct(self, *inputs):
        if not self.allocator_running:
            raise RuntimeError("For 'AdaLoraTrainOneStepCell', the AdaLoRA allocator is not running: pass the "
                               "AdaLoraCallback given to this cell in the callbacks of Model.train, or the rank "
                               "budget is never allocated and AdaLoRA trains as plain LoRA.")
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        updates = ()
        for slot, index in enumerate(self.tracked_indices):
            weight = ops.cast(self.weights[index], mstype.float32)
            sensitivity = ops.abs(weight * ops.cast(grads[index], mstype.float32))
            smoothed = self.beta1 * self.sensitivity[slot] + (1 - self.beta1) * sensitivity
            uncertain = self.beta2 * self.uncertainty[slot] + (1 - self.beta2) * ops.abs(sensitivity - smoothed)
            updates += (ops.assign(self.sensitivity[slot], smoothed), ops.assign(self.uncertainty[slot], uncertain))
        grads = ops.depend(grads, updates)
        stepped = self.optimizer(grads)
        # Pruned singular values stay at zero although the optimizer's momentum would move them.
        masked = ()
        for index, values in enumerate(self.singular_values):
            values_now = ops.depend(values, stepped)
            masked += (ops.assign(values, values_now * ops.cast(self.rank_masks[index], values.dtype)),)
        return ops.depend(loss, masked)


class AdaLoraOrthogonalLoss(nn.Cell):
    r"""Any cell returning a scalar loss, plus AdaLoRA's orthogonality penalty on the cells inside it.

    .. math::
        \mathcal{L} = \mathcal{L}_{network} + w \sum_{cells} \left(\lVert P P^T - I \rVert_F^2 +
            \lVert Q^T Q - I \rVert_F^2\right)

    as in the AdaLoRA paper (eq. 4) and mindpet's SPEC. PEFT adds ``w`` times the *unsquared* Frobenius norms averaged
    over the matrices instead; the two push ``P`` and ``Q`` towards orthogonality alike, with different strength.
    The penalty is computed in float32 whatever the parameters' dtype.

    Args:
        network (Cell): returns the loss (a scalar Tensor); it must hold :class:`~mindpet.delta.AdaLoRADense` cells.
        orth_reg_weight (Union[int, float]): ``w``, >= 0 (``AdaLoraConfig.orth_reg_weight``).

    Inputs:
        - **\*inputs** - the inputs of `network`.

    Outputs:
        Tensor, the penalised loss, float32.

    Raises:
        TypeError: `orth_reg_weight` is not a number.
        ValueError: `orth_reg_weight` < 0 or not finite; `network` holds no AdaLoRA cell.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet import AdaLoraConfig, get_delta_model
        >>> from mindpet.delta.adalora import AdaLoraOrthogonalLoss
        >>> config = AdaLoraConfig(target_modules=["0"], init_r=4, target_r=2, total_step=20)
        >>> net = get_delta_model(nn.SequentialCell([nn.Dense(8, 4), nn.ReLU(), nn.Dense(4, 2)]), config)
        >>> plain = nn.WithLossCell(net, nn.MSELoss())
        >>> penalised = AdaLoraOrthogonalLoss(plain, orth_reg_weight=0.5)
        >>> x, y = ms.Tensor(np.ones((3, 8)), ms.float32), ms.Tensor(np.zeros((3, 2)), ms.float32)
        >>> bool(penalised(x, y) > plain(x, y))
        True
    """

    def __init__(self, network, orth_reg_weight):
        super().__init__(auto_prefix=False)
        owner = type(self).__name__
        weight = check_finite_number(orth_reg_weight, "orth_reg_weight", owner)
        if weight < 0:
            raise argument_error(ValueError, owner, "orth_reg_weight", "a number >= 0", orth_reg_weight)
        self.network = network
        self.orth_reg_weight = weight
        cells = require_adalora_cells(network, owner)
        self.right = ParameterTuple(getattr(cell, ADALORA_P) for _, cell in cells)
        self.left = ParameterTuple(getattr(cell, ADALORA_Q) for _, cell in cells)
        self.identities = tuple(Tensor(np.eye(cell.lora_rank), mstype.float32) for _, cell in cells)

    def construct(self, *inputs):
        loss = ops.cast(self.network(*inputs), mstype.float32)
        penalty = ops.zeros((), mstype.float32)
        for index, identity in enumerate(self.identities):
            right = ops.cast(self.right[index], mstype.float32)
            left = ops.cast(self.left[index], mstype.float32)
            penalty += ops.reduce_sum(ops.square(ops.matmul(right, right.T) - identity))
            penalty += ops.reduce_sum(ops.square(ops.matmul(left.T, left) - identity))
        return loss + self.orth_reg_weight * penalty
