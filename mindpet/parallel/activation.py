"""Splitting an activation with the layout of its input, whatever cell or primitive it is."""
from mindspore import ops

from mindpet.parallel.strategy import check_strategy
from mindpet.utils.activation import ACTIVATION_NAMES, ShardableActivation


def activation_input_layout(strategy):
    """An activation strategy in the operator's own spelling, ``((dp, mp),)``.

    The MindPet manual's LoRADense example writes it as ``((dp, mp), (dp, mp))``: an input and an equal output
    layout. That spelling is folded to the input's layout; anything else is returned unchanged for checking.
    """
    if isinstance(strategy, tuple) and len(strategy) == 2 and strategy[0] == strategy[1]:
        return strategy[:1]
    return strategy


def shard_activation(activation, strategy, arg_name, owner):
    """Split ``activation`` (from :func:`mindpet.utils.activation.build_activation`) with ``strategy``, the layout
    of its 2-D input.

    ``strategy`` holds one layout, ``((dp, mp),)``, or the manual's pair (see :func:`activation_input_layout`).
    A Cell that is not a :class:`ShardableActivation` can be split only if it holds exactly one primitive.

    Raises:
        ValueError: a malformed strategy, or a Cell whose primitives cannot be reached.
    """
    (layout,) = check_strategy(activation_input_layout(strategy), arg_name, owner, input_ranks=(2,))
    if isinstance(activation, ShardableActivation):
        activation.shard_layout(layout)
        return
    primitives = [value for value in vars(activation).values() if isinstance(value, ops.Primitive)]
    if len(primitives) != 1:
        raise ValueError(f"For '{owner}', the argument '{arg_name}' cannot be applied to the activation cell "
                         f"{type(activation).__name__}, which exposes {len(primitives)} primitives instead of one. "
                         f"Pass the activation by name (one of {list(ACTIVATION_NAMES)}) to shard it.")
    primitives[0].shard((layout,))
