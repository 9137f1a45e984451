"""Checks at the start of training for setups in which training silently changes nothing, or the wrong weights.

Two mistakes give no error in MindSpore: training a network whose LoRA cells are merged (the branch is off, so the
delta gets zero gradients and the loss stays where it is), and an optimizer built before ``freeze_delta`` (it still
holds the frozen weights, and weight decay moves them). :class:`TrainingGuard` reports both at ``on_train_begin``;
:class:`~mindpet.checkpoint.TrainableParamsCheckPoint` runs the same checks.
"""
from mindspore.train import Callback

from mindpet.checkpoint.selection import optimizers_in, trained_parameters
from mindpet.delta.base.mergeable import merged_cells
from mindpet.utils.logger import logger
from mindpet.utils.naming import is_added_by_delta
from mindpet.utils.validation import check_bool, quote_names


def _trained_delta_of_merged_cells(network):
    """Merged cells that would train: they hold a trainable delta parameter, which gets zero gradients."""
    cells = dict(network.cells_and_names())
    return [name for name in merged_cells(network)
            if any(param.requires_grad and is_added_by_delta(param.name) for param in cells[name].get_parameters())]


def _optimizers(cb_params):
    optimizer = getattr(cb_params, "optimizer", None)
    if optimizer is not None:
        return [optimizer]
    return optimizers_in(cb_params.train_network)


def training_problems(cb_params, owner):
    """The setup mistakes that make training change nothing, or change frozen weights, described for the user.

    Checked: merged cells with trainable delta parameters; optimizer parameters that are frozen
    (``requires_grad=False``, so the optimizer was built before freezing); trainable parameters of the network that
    no optimizer updates. Names are listed, at most ten per problem.

    Args:
        cb_params (RunContext.original_args): The callback parameters of ``Model.train``: ``network``,
            ``train_network`` and ``optimizer`` are read.
        owner (str): The callback named in the messages.

    Returns:
        list[str], one message per problem found; empty when the setup is sound.
    """
    network = cb_params.network
    problems = []
    merged = _trained_delta_of_merged_cells(network)
    if merged:
        problems.append(f"For '{owner}', the cells {quote_names(merged)} are merged: their update is folded into "
                        f"the weight and their branch is off, so their trainable delta parameters get zero gradients "
                        f"and training changes nothing there. Call unmerge() on them before training.")
    optimizers = _optimizers(cb_params)
    if not optimizers:
        return problems
    updated = [param for optimizer in optimizers for param in optimizer.parameters]
    frozen = [param.name for param in updated if not param.requires_grad]
    if frozen:
        problems.append(f"For '{owner}', the optimizer updates {len(frozen)} frozen parameters "
                        f"(requires_grad=False): {quote_names(frozen)}. It was built before freezing, so it changes "
                        f"weights meant to stay fixed (weight decay moves them even without a gradient). Build the "
                        f"optimizer from net.trainable_params() after freeze_delta(...).")
    updated_ids = {id(param) for param in updated}
    left_out = [param.name for param in trained_parameters(network) if id(param) not in updated_ids]
    if left_out:
        problems.append(f"For '{owner}', {len(left_out)} trainable parameters are in no optimizer, so they never "
                        f"change: {quote_names(left_out)}. Build the optimizer from net.trainable_params() after "
                        f"freezing.")
    return problems


class TrainingGuard(Callback):
    """
    A `Model.train` callback that checks, when training begins, that training will change what it should.

    It reports three mistakes MindSpore trains through silently:

    - merged cells (such as a :class:`~mindpet.delta.LoRADense` after ``merge()``) with trainable delta parameters:
      the branch is off, so the delta gets zero gradients and the loss does not move;
    - an optimizer holding frozen parameters, because it was built before ``freeze_delta``: it updates weights
      meant to stay fixed, and weight decay moves them even without a gradient;
    - trainable parameters that no optimizer updates.

    Each problem is logged as a warning on the ``mindpet`` logger, naming the parameters or cells (at most ten per
    problem). With ``strict=True`` the problems raise instead, before the first step. After ``on_train_begin``, the
    attribute ``problems`` holds the messages (empty for a sound setup).
    :class:`~mindpet.checkpoint.TrainableParamsCheckPoint` runs the same checks and warns.

    Args:
        strict (bool): Whether a problem raises ValueError instead of logging a warning. Default: ``False``.

    Raises:
        TypeError: If `strict` is not a bool.
        ValueError: At ``on_train_begin``, with `strict`, if a problem is found; the message lists every problem.

    Examples:
        >>> import numpy as np
        >>> import mindspore.dataset as ds
        >>> from mindspore import nn
        >>> from mindspore.train import Model
        >>> from mindpet.checkpoint import TrainingGuard
        >>> net = nn.Dense(4, 2)
        >>> optimizer = nn.Momentum(net.trainable_params(), 0.01, 0.9, weight_decay=0.1)  # built too early
        >>> net.weight.requires_grad = False
        >>> data = {"x": np.ones((4, 4), np.float32), "y": np.zeros((4,), np.int32)}
        >>> dataset = ds.NumpySlicesDataset(data, shuffle=False).batch(2)
        >>> loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean')
        >>> guard = TrainingGuard(strict=True)
        >>> Model(net, loss, optimizer).train(1, dataset, callbacks=[guard])
        Traceback (most recent call last):
            ...
        ValueError: For 'TrainingGuard', the optimizer updates 1 frozen parameters (requires_grad=False): ['weight']...
    """

    _OWNER = "TrainingGuard"

    def __init__(self, strict=False):
        super().__init__()
        self.strict = check_bool(strict, "strict", self._OWNER)
        self.problems = []

    def on_train_begin(self, run_context):
        """Check the setup; warn about each problem, or raise with `strict`.

        Args:
            run_context (RunContext): Context of the training run.
        """
        self.problems = training_problems(run_context.original_args(), self._OWNER)
        if self.problems and self.strict:
            raise ValueError("\n".join(self.problems))
        for problem in self.problems:
            logger.warning(problem)
