"""Which parameters a delta checkpoint holds: the trained ones, told apart from optimizer state."""
from mindspore import nn

from mindpet.utils.validation import argument_error


def optimizers_in(network):
    """The ``nn.Optimizer`` cells inside ``network``, in ``cells_and_names`` order (the network itself included).

    Args:
        network (mindspore.nn.Cell): A network, or a training cell such as ``nn.TrainOneStepCell``.

    Returns:
        list[mindspore.nn.Optimizer].
    """
    return [cell for _, cell in network.cells_and_names() if isinstance(cell, nn.Optimizer)]


def optimizer_state_ids(network):
    """Ids of the parameters that optimizers inside ``network`` own but do not update (moments, step, lr).

    Args:
        network (mindspore.nn.Cell): A network, or a training cell holding an optimizer.

    Returns:
        set[int], the ``id`` of every such parameter.
    """
    state_ids = set()
    for optimizer in optimizers_in(network):
        updated_ids = {id(param) for param in optimizer.parameters}
        state_ids.update(id(param) for param in optimizer.get_parameters() if id(param) not in updated_ids)
    return state_ids


def trained_parameters(network):
    """The parameters of ``network`` a delta checkpoint holds: ``requires_grad=True`` minus optimizer state.

    Optimizer state (``global_step``, ``learning_rate``, ``moment1.*``, ...) also has ``requires_grad=True``, so it
    is told apart by ownership: a parameter of an ``nn.Optimizer`` cell that is not in that optimizer's
    ``parameters`` is state, not a weight.

    Args:
        network (mindspore.nn.Cell): A network, a network with loss, or a training cell holding an optimizer.

    Returns:
        list[Parameter], in the order of ``network.get_parameters()``.

    Raises:
        TypeError: If `network` is not a `mindspore.nn.Cell`.

    Examples:
        >>> from mindspore import nn
        >>> from mindpet.checkpoint import trained_parameters
        >>> net = nn.Dense(3, 2)
        >>> net.bias.requires_grad = False
        >>> train_net = nn.TrainOneStepCell(net, nn.Adam(net.trainable_params()))
        >>> [param.name for param in trained_parameters(train_net)]
        ['weight']
    """
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, "trained_parameters", "network", "a mindspore.nn.Cell", network)
    state_ids = optimizer_state_ids(network)
    return [param for param in network.get_parameters() if param.requires_grad and id(param) not in state_ids]
