"""A cell's shard plan: which tensor axis every ``shard()`` layout entry splits, and the rules that follow from it.

``Primitive.shard`` checks only that a strategy is a tuple of int tuples, and semi-auto parallel refuses the CPU
backend, so a wrong strategy used to surface only once a cluster job compiled. Each delta cell therefore describes
its operators once, naming the axis behind every dimension of every operator input (einsum style), and the rules
below are derived from that description alone:

1. Form (:func:`mindpet.parallel.strategy.check_strategy`): a tuple of layouts of positive ints, one per operator input,
   each as long as that input's rank.
2. Agreement inside an operator: an axis that appears in several inputs of one operator is split alike in each.
   This is MindSpore's own rule for a MatMul's contracted axis, a BiasAdd's channel axis and the inputs of an Add.
3. Divisibility: every split divides the length of the axis it splits, wherever that length is known before the
   call (channels, ranks, bottleneck widths, heads, MLP widths, a prefix cell's batch size; not the flattened batch).
4. Tied axes: the axes a cell lists as ``tied`` (the flattened batch, and the width its delta branch is added to)
   are split alike by every operator, so the branch meets the base output without a hidden redistribution.
5. Flow: an operator that consumes another operator's output takes it in the layout that operator produces it in.
6. Device count, once known: an operator needs as many devices as the product of its splits over distinct axes (the
   size of its device matrix), and that product must divide the device count; MindSpore repeats the computation on
   the remaining devices. On a power-of-2 device count this also makes every split a power of 2, as MindSpore
   requires.

Rules 1 to 5 are checked whenever ``shard()`` is called. Rule 6 is checked then too when a semi-auto or auto
parallel context gives the device count (:func:`configured_device_num`), and by
:func:`mindpet.graph.check_shard_strategies` for a whole network.
"""
import math
from typing import Callable, NamedTuple, Optional, Tuple

from mindspore.ops import operations as P

from mindpet.parallel.activation import activation_input_layout, shard_activation
from mindpet.parallel.context import configured_device_num
from mindpet.parallel.strategy import check_strategy, plain_ints
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error, check_positive_int


class Dim(NamedTuple):
    """One tensor axis of a cell. Equal ``Dim`` values are the same axis.

    ``label`` names the axis in messages; ``size`` is its length, or None when it is known only at call time.
    """
    label: str
    size: Optional[int] = None


# The leading dimensions of a 2-D cell's input, flattened; their product is known only when the cell is called.
TOKENS = Dim("the flattened batch")


class Operand(NamedTuple):
    """An operator input or output: the cell-level tensor it is, and the axis behind each of its dimensions."""
    tensor: str
    dims: Tuple[Dim, ...]


class ShardedOp(NamedTuple):
    """The operator that one ``shard()`` argument configures.

    ``arg_name`` is the argument's documented name; ``inputs`` holds one :class:`Operand` per operator input and
    ``output`` the operand it produces. ``apply`` sets a checked strategy on the primitive(s). ``absent``, when not
    None, says why the cell does not run this operator (e.g. ``"the cell has no bias"``); a strategy given for it is
    ignored with a warning, as MindPet 1.0.4 did, because the manual's own examples pass such strategies.
    ``normalize`` turns an accepted alternative spelling of a strategy into the operator's own.
    """
    arg_name: str
    inputs: Tuple[Operand, ...]
    output: Operand
    apply: Callable
    absent: Optional[str] = None
    normalize: Optional[Callable] = None


def primitive_op(arg_name, primitive, inputs, output_tensor, absent=None):
    """A :class:`ShardedOp` for one primitive.

    The output has the axes of the first input, except for a MatMul: the rows of its first input and the columns of
    its second, each read through the primitive's ``transpose_a`` / ``transpose_b``.
    """
    inputs = tuple(inputs)
    if isinstance(primitive, P.MatMul):
        rows, columns = inputs
        output_dims = (rows.dims[1] if primitive.transpose_a else rows.dims[0],
                       columns.dims[0] if primitive.transpose_b else columns.dims[1])
    else:
        output_dims = inputs[0].dims
    return ShardedOp(arg_name, inputs, Operand(output_tensor, output_dims), primitive.shard, absent)


def activation_op(arg_name, activation, owner, source, output_tensor):
    """A :class:`ShardedOp` that splits every primitive of ``activation`` (None: the cell has none) like ``source``."""
    absent = None if activation is not None else "the cell has no activation"
    return ShardedOp(arg_name, (source,), Operand(output_tensor, source.dims),
                     lambda strategy: shard_activation(activation, strategy, arg_name, owner), absent,
                     activation_input_layout)


def _normalized(op, strategy):
    """``strategy`` in the operator's own spelling."""
    return op.normalize(strategy) if op.normalize is not None else strategy


def _entries(op, strategy):
    """``(input index, axis, Dim, split)`` for every layout entry of ``strategy``."""
    for index, (operand, layout) in enumerate(zip(op.inputs, strategy)):
        for axis, (dim, split) in enumerate(zip(operand.dims, layout)):
            yield index, axis, dim, split


def _first_entry(op, strategy, dim):
    """The first ``(input index, axis, Dim, split)`` of ``dim`` in ``strategy``, or None if ``op`` lacks that axis."""
    return next((entry for entry in _entries(op, strategy) if entry[2] == dim), None)


def _output_layout(op, strategy):
    return tuple(_first_entry(op, strategy, dim)[3] for dim in op.output.dims)


def _device_matrix(op, strategy):
    """The split of each distinct axis of the operator: MindSpore's device matrix, before repetition."""
    splits = {}
    for _, _, dim, split in _entries(op, strategy):
        splits.setdefault(dim, split)
    return splits


def _strategy_error(owner, arg_name, requirement, found, strategy):
    return ValueError(f"For '{owner}', the argument '{arg_name}' must {requirement}, but got {strategy!r}: {found}.")


class OperatorPlan:
    """The shard plan of a cell configured one operator at a time.

    Args:
        ops (Sequence[ShardedOp]): the operators in the order they run; earlier operators are the reference that
            later ones are compared with.
        tied (Sequence[Dim]): axes every operator must split alike (rule 4).

    Strategies are passed as ``{arg_name: strategy}``; a strategy None means "left to the framework".
    """

    def __init__(self, ops, tied=()):
        self.ops = tuple(ops)
        self.tied = tuple(tied)

    @staticmethod
    def merge(accepted, given):
        """Strategies after a ``shard()`` call: the ones it sets replace earlier ones, None keeps them."""
        return {**accepted, **{key: value for key, value in given.items() if value is not None}}

    def _checked(self, op, owner, strategy):
        """Rules 1 to 3 for one operator; returns the strategy in the operator's own spelling."""
        strategy = _normalized(op, strategy)
        check_strategy(strategy, op.arg_name, owner, tuple(len(operand.dims) for operand in op.inputs))
        first_seen = {}
        for index, axis, dim, split in _entries(op, strategy):
            seen_index, seen_axis, _, seen_split = first_seen.setdefault(dim, (index, axis, dim, split))
            if split != seen_split:
                raise _strategy_error(owner, op.arg_name, f"split {dim.label} alike in every input",
                                      f"{seen_split} at input {seen_index}, axis {seen_axis} and {split} at input "
                                      f"{index}, axis {axis}", strategy)
            if dim.size is not None and dim.size % split:
                raise _strategy_error(owner, op.arg_name, f"split {dim.label} ({dim.size}) into equal parts",
                                      f"{split} at input {index}, axis {axis}", strategy)
        return strategy

    def _tied_errors(self, owner, checked):
        for dim in self.tied:
            reference = None
            for op, strategy in checked:
                entry = _first_entry(op, strategy, dim)
                if entry is None:
                    continue
                index, axis, _, split = entry
                if reference is None:
                    reference = (op.arg_name, split)
                elif split != reference[1]:
                    yield _strategy_error(owner, op.arg_name, f"split {dim.label} {reference[1]}-way, as "
                                          f"'{reference[0]}' does", f"{split} at input {index}, axis {axis}",
                                          strategy)

    def _flow_errors(self, owner, checked):
        producers = {op.output.tensor: (op, strategy) for op, strategy in checked}
        for op, strategy in checked:
            for index, operand in enumerate(op.inputs):
                producer = producers.get(operand.tensor)
                if producer is None or producer[0] is op:
                    continue
                expected = _output_layout(*producer)
                if strategy[index] != expected:
                    yield _strategy_error(owner, op.arg_name, f"take input {index}, the output of "
                                          f"'{producer[0].arg_name}', in "
                                          f"the layout it is produced in, {expected}",
                                          f"input {index} is laid out as {strategy[index]}", strategy)

    def _device_errors(self, owner, checked, device_num):
        for op, strategy in checked:
            matrix = _device_matrix(op, strategy)
            needed = math.prod(matrix.values())
            if device_num % needed:
                factors = " x ".join(f"{split} ({dim.label})" for dim, split in matrix.items() if split > 1)
                yield _strategy_error(owner, op.arg_name, f"fit a device count of {device_num}",
                                      f"it needs {needed} devices, {factors}, and {needed} does not divide "
                                      f"{device_num}", strategy)

    def errors(self, owner, strategies, device_num):
        """Yield a ValueError for every broken rule, operator by operator first, then across operators.

        ``device_num`` None skips rule 6.
        """
        checked = []
        for op in self.ops:
            strategy = strategies.get(op.arg_name)
            if strategy is None:
                continue
            try:
                checked.append((op, self._checked(op, owner, strategy)))
            except ValueError as error:
                yield error
        yield from self._tied_errors(owner, checked)
        yield from self._flow_errors(owner, checked)
        if device_num is not None:
            yield from self._device_errors(owner, checked, device_num)

    def device_requirements(self, strategies):
        """The device count each set strategy needs (the size of its device matrix)."""
        return [math.prod(_device_matrix(op, _normalized(op, strategies[op.arg_name])).values())
                for op in self.ops if op.arg_name in strategies]

    def apply(self, given):
        """Set every strategy of ``given`` that is not None on its primitives, in the order the operators run."""
        for op in self.ops:
            strategy = given.get(op.arg_name)
            if strategy is not None:
                op.apply(_normalized(op, strategy))


class DegreePlan:
    """The shard plan of a cell split by whole parallel degrees, such as ``data_parallel`` and ``model_parallel``.

    Args:
        divides (dict[str, tuple[Dim]]): for each degree argument, in checking order, the axes it splits.
        apply (Callable): sets the operators' strategies from the degrees, passed as keyword arguments.

    The degrees are positive ints that divide their axes' lengths; together they need their product of devices.
    Strategies are passed as ``{arg_name: degree}``.
    """

    def __init__(self, divides, apply):
        self.divides = dict(divides)
        self._apply = apply

    @staticmethod
    def merge(accepted, given):
        """Every ``shard()`` call sets all degrees."""
        return dict(given)

    @staticmethod
    def _checked(owner, arg_name, degree, dims):
        degree = check_positive_int(degree, arg_name, owner)
        for dim in dims:
            if dim.size is not None and dim.size % degree:
                raise argument_error(ValueError, owner, arg_name, f"a divisor of {dim.label} ({dim.size})", degree)
        return degree

    def errors(self, owner, strategies, device_num):
        """Yield a TypeError or ValueError for every broken rule; ``device_num`` None skips the device count.

        A cell that was never sharded (no strategies) has nothing to check.
        """
        if not strategies:
            return
        degrees = {}
        for arg_name, dims in self.divides.items():
            try:
                degrees[arg_name] = self._checked(owner, arg_name, strategies[arg_name], dims)
            except (TypeError, ValueError) as error:
                yield error
        needed = math.prod(degrees.values())
        if device_num is not None and len(degrees) == len(self.divides) and device_num % needed:
            names = " and ".join(f"'{arg_name}'" for arg_name in degrees)
            product = " x ".join(str(degree) for degree in degrees.values())
            yield ValueError(f"For '{owner}', the arguments {names} must multiply to a divisor of the device count "
                             f"{device_num}, but got {product} = {needed}.")

    def device_requirements(self, strategies):
        """The device count the degrees need together."""
        return [math.prod(strategies.values())] if strategies else []

    def apply(self, given):
        self._apply(**given)


def strategy_arguments(arguments):
    """The ``strategy_*`` entries of a ``shard()`` call's ``locals()``: ``{argument name: strategy}``."""
    return {name: value for name, value in arguments.items() if name.startswith("strategy_")}


class ShardValidated:
    """Mixin for cells whose ``shard()`` strategies are checked against a plan before they reach any primitive.

    A subclass describes itself in :meth:`_shard_plan` (an :class:`OperatorPlan` or a :class:`DegreePlan`) and its
    ``shard()`` hands the arguments to :meth:`_accept_strategies`. The cell keeps what it accepted, so
    :func:`check_cell_strategies` (and :func:`mindpet.graph.check_shard_strategies` for a network) can check it
    again once the device count is known.
    """

    def _shard_plan(self):
        raise NotImplementedError(f"{type(self).__name__} must describe its operators in _shard_plan().")

    def _accepted_strategies(self):
        """``{arg_name: strategy}`` for every strategy set so far."""
        return getattr(self, "_mindpet_accepted_strategies", {})

    def _accept_strategies(self, strategies):
        """Check ``strategies`` (``{arg_name: strategy}``) with those set before, apply them, and keep them.

        A strategy for an operator the cell does not run (a bias or activation it lacks) is dropped with a warning.
        Integers of other types (NumPy's) become Python ints, the only kind ``Primitive.shard`` takes.
        Raises the first broken rule; nothing is applied then.
        """
        plan = self._shard_plan()
        owner = type(self).__name__
        absent = {op.arg_name: op.absent for op in getattr(plan, "ops", ()) if op.absent is not None}
        given = {}
        for arg_name, strategy in strategies.items():
            if strategy is not None and arg_name in absent:
                logger.warning("For '%s', the argument '%s' is ignored because %s (got %r).", owner, arg_name,
                               absent[arg_name], strategy)
                continue
            given[arg_name] = plain_ints(strategy)
        merged = plan.merge(self._accepted_strategies(), given)
        error = next(plan.errors(owner, merged, configured_device_num()), None)
        if error is not None:
            raise error
        plan.apply(given)
        self._mindpet_accepted_strategies = merged
        return self


class CellShardCheck(NamedTuple):
    """What :func:`check_cell_strategies` found: the ``strategies`` set (``{argument: strategy}``), the broken rules
    as exceptions (``errors``), and the device count the strategies need at least (``device_requirement``, the least
    common multiple of every operator's need; 1 without strategies)."""
    strategies: dict
    errors: tuple
    device_requirement: int


def check_cell_strategies(cell, device_num=None):
    """Check again every strategy a :class:`ShardValidated` cell accepted, with the device count ``device_num``.

    Args:
        cell (ShardValidated): the cell.
        device_num (Union[int, None]): the device count of a pipeline stage; None skips the device-count rule.

    Returns:
        CellShardCheck.
    """
    plan = cell._shard_plan()
    accepted = cell._accepted_strategies()
    errors = tuple(plan.errors(type(cell).__name__, accepted, device_num))
    return CellShardCheck(dict(accepted), errors, math.lcm(*plan.device_requirements(accepted)))
