"""Checking ``shard()`` strategies before they reach a primitive.

``Primitive.shard`` accepts any tuple of int tuples, so a wrong strategy would only fail once a parallel job
compiles. These checks reject a malformed one at ``shard()`` time with the argument named;
:mod:`mindpet.parallel.plan` adds the checks against the cell's sizes, the other strategies and the device count.
"""
import numbers

from mindpet.utils.validation import argument_error


def _is_layout(layout):
    return isinstance(layout, tuple) and all(
        isinstance(dim, numbers.Integral) and not isinstance(dim, bool) and dim > 0 for dim in layout)


def plain_ints(value):
    """``value`` with every integer inside it (a NumPy one, say) as a Python int, since ``Primitive.shard`` takes
    nothing else; tuples keep their shape and anything else is returned as it is, for the checks to judge."""
    if isinstance(value, tuple):
        return tuple(plain_ints(item) for item in value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def check_strategy(strategy, arg_name, owner, input_ranks):
    """Validate one operator's strategy: a tuple holding one layout per operator input.

    Args:
        strategy (Union[tuple[tuple[int]], None]): the strategy; None means "let the framework choose".
        arg_name (str): the ``shard()`` argument that carried it.
        owner (str): the cell class name.
        input_ranks (tuple[int]): the rank of each operator input (0 for a scalar, whose layout is ``()``).

    Returns:
        The strategy, unchanged.

    Raises:
        ValueError: not a tuple of tuples of positive ints, the wrong number of layouts for the operator's
            inputs, or a layout whose length differs from that input's rank.
    """
    if strategy is None:
        return None
    if not isinstance(strategy, tuple) or not all(_is_layout(layout) for layout in strategy):
        raise argument_error(ValueError, owner, arg_name, "a tuple of tuples of positive ints", strategy)
    if len(strategy) != len(input_ranks):
        raise argument_error(ValueError, owner, arg_name,
                             f"{len(input_ranks)} layout(s), one per operator input", strategy)
    for index, (layout, rank) in enumerate(zip(strategy, input_ranks)):
        if len(layout) != rank:
            raise argument_error(ValueError, owner, arg_name,
                                 f"a layout of length {rank} for input {index} (a rank-{rank} tensor)", strategy)
    return strategy


def shard_op(primitive, strategy, arg_name, owner, input_ranks):
    """Check ``strategy`` and apply it to ``primitive``; None leaves the primitive to the framework."""
    if check_strategy(strategy, arg_name, owner, input_ranks) is not None:
        primitive.shard(strategy)
