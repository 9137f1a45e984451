"""How much of a network trains."""
from typing import NamedTuple

from mindspore import nn

from mindpet.checkpoint.selection import optimizer_state_ids
from mindpet.utils.validation import argument_error


class TrainableSummary(NamedTuple):
    """The trainable and total parameter element counts of a network; ``str()`` prints them on one line."""
    trainable: int
    total: int

    @property
    def ratio(self):
        """``trainable / total`` (0 for an empty network)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self):
        return (f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                f"trainable%: {100.0 * self.ratio:.4f}")


def parameter_sizes(network):
    """``{id(param): element count}`` for every parameter of ``network``. A quantized weight counts as the weights it
    stores (its codes as ``out * in`` elements, its scales as none), as PEFT counts a 4-bit base, so quantizing a base
    changes no count."""
    sizes = {id(param): param.size for param in network.get_parameters()}
    for _, cell in network.cells_and_names():
        if getattr(cell, "is_frozen_storage", False):
            sizes.update(cell.parameter_sizes())
    return sizes


def trainable_summary(network):
    """Count the parameter elements of ``network`` that train (``requires_grad=True``) and all of them.

    Optimizer state is not counted, so a training cell gives the same figures as the network it trains. A quantized
    weight (:class:`~mindpet.quantization.NF4Dense`) counts as the weights it stores.

    Args:
        network (Cell): the network, a network with loss, or a training cell.

    Returns:
        TrainableSummary: ``trainable``, ``total`` and ``ratio``; ``str()`` is
        ``trainable params: 147,456 || all params: 22,860,416 || trainable%: 0.6450``.

    Raises:
        TypeError: `network` is not a Cell.

    Examples:
        >>> from mindspore import nn
        >>> from mindpet import trainable_summary
        >>> net = nn.Dense(4, 2)
        >>> net.weight.requires_grad = False
        >>> print(trainable_summary(net))
        trainable params: 2 || all params: 10 || trainable%: 20.0000
    """
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, "trainable_summary", "network", "a mindspore.nn.Cell", network)
    state_ids = optimizer_state_ids(network)
    params = [param for param in network.get_parameters() if id(param) not in state_ids]
    sizes = parameter_sizes(network)
    return TrainableSummary(sum(sizes[id(param)] for param in params if param.requires_grad),
                            sum(sizes[id(param)] for param in params))
