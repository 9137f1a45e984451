"""Activation lookup that yields cells whose every primitive can be sharded (:mod:`mindpet.parallel.activation`
applies the strategies).

MindSpore's ``nn.get_activation`` builds cells such as ``nn.GELU`` or ``nn.SiLU`` whose primitives are hidden
inside functional calls, so a ``shard()`` strategy cannot reach them. Each activation here keeps its primitives
as attributes and splits all of them with the layout of its input.
"""
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import operations as P

from mindpet.utils.validation import argument_error


class ActivationNotFoundError(ValueError, KeyError):
    """An unknown activation name.

    The MindPet manual documents KeyError for ``activation`` and ValueError for ``non_linearity``; subclassing both
    keeps code that catches either working.
    """

    def __str__(self):
        # KeyError would otherwise print the message with quotes around it.
        return str(self.args[0]) if self.args else ""


_INPUT = "input"    # an operand with the activation input's layout
_SCALAR = "scalar"  # a Python scalar operand, whose layout is ()


class ShardableActivation(nn.Cell):
    """An activation made of primitives that all take the layout of the activation input.

    Subclasses list ``(primitive, operand kinds)`` pairs in ``layout_plan``; ``shard_layout`` applies one
    input layout to each of them.
    """

    def layout_plan(self):
        """Return ``((primitive, operand_kinds), ...)`` for every primitive this activation runs."""
        raise NotImplementedError(f"{type(self).__name__} must list its primitives in layout_plan().")

    def shard_layout(self, layout):
        """Split every primitive of this activation with ``layout``, the layout of its input tensor."""
        for primitive, operands in self.layout_plan():
            primitive.shard(tuple(layout if kind == _INPUT else () for kind in operands))


class PrimitiveActivation(ShardableActivation):
    """An activation that is one unary primitive, such as ``ops.ReLU()``."""

    def __init__(self, primitive):
        super().__init__()
        self.primitive = primitive

    def construct(self, x):
        return self.primitive(x)

    def layout_plan(self):
        return ((self.primitive, (_INPUT,)),)


class SiLU(ShardableActivation):
    """``x * sigmoid(x)``, also called swish."""

    def __init__(self):
        super().__init__()
        self.sigmoid = P.Sigmoid()
        self.mul = P.Mul()

    def construct(self, x):
        return self.mul(x, self.sigmoid(x))

    def layout_plan(self):
        return ((self.sigmoid, (_INPUT,)), (self.mul, (_INPUT, _INPUT)))


class LeakyReLU(ShardableActivation):
    """``max(x, alpha * x)`` for ``0 <= alpha <= 1``; ``alpha`` defaults to MindSpore's 0.2."""

    def __init__(self, alpha=0.2):
        super().__init__()
        self.alpha = alpha
        self.mul = P.Mul()
        self.maximum = P.Maximum()

    def construct(self, x):
        return self.maximum(x, self.mul(x, self.alpha))

    def layout_plan(self):
        return ((self.mul, (_INPUT, _SCALAR)), (self.maximum, (_INPUT, _INPUT)))


_UNARY_PRIMITIVES = {
    "relu": P.ReLU,
    "relu6": P.ReLU6,
    "gelu": P.GeLU,  # tanh approximation, as nn.GELU() and get_activation('gelu')
    "fast_gelu": P.FastGeLU,
    "tanh": P.Tanh,
    "sigmoid": P.Sigmoid,
    "elu": P.Elu,
    "hswish": P.HSwish,
    "hsigmoid": P.HSigmoid,
    "softsign": P.Softsign,
    "softplus": P.Softplus,
    "softmax": lambda: P.Softmax(axis=-1),
    "logsoftmax": lambda: P.LogSoftmax(axis=-1),
}
_COMPOSITES = {"silu": SiLU, "swish": SiLU, "leakyrelu": LeakyReLU, "leaky_relu": LeakyReLU}

ACTIVATION_NAMES = tuple(sorted(set(_UNARY_PRIMITIVES) | set(_COMPOSITES)))


def _in_auto_parallel():
    return ms.get_auto_parallel_context("parallel_mode") in ("semi_auto_parallel", "auto_parallel")


def _refuse_log_softmax_in_parallel(is_log_softmax, arg_name, owner):
    # The manual documents this restriction: LogSoftmax has no distributed implementation for these cells.
    if is_log_softmax and _in_auto_parallel():
        raise ValueError(f"For '{owner}', the argument '{arg_name}' cannot be LogSoftmax in semi-auto or auto "
                         f"parallel mode.")


def check_activation_name(name, arg_name, owner):
    """Return ``name`` if it is a known activation name (case-insensitive), else raise ActivationNotFoundError."""
    if name.lower() not in ACTIVATION_NAMES:
        raise ActivationNotFoundError(
            f"For '{owner}', the argument '{arg_name}' must be one of {list(ACTIVATION_NAMES)}, but got {name!r}.")
    return name


def build_activation(activation, arg_name, owner):
    """Turn a user's ``activation`` argument into a cell (or None).

    Args:
        activation (Union[str, Cell, Primitive, None]): an activation name (case-insensitive, one of
            ``ACTIVATION_NAMES``), a Cell, a unary Primitive, or None.
        arg_name (str): the argument name, for error messages.
        owner (str): the cell class name, for error messages.

    Returns:
        A :class:`ShardableActivation` for names and primitives, the Cell itself for a Cell, or None.

    Raises:
        TypeError: ``activation`` is of another type.
        ActivationNotFoundError: an unknown name (subclass of both ValueError and KeyError).
        ValueError: LogSoftmax in semi-auto or auto parallel mode.
    """
    if activation is None:
        return None
    if isinstance(activation, str):
        key = activation.lower()
        if key in _UNARY_PRIMITIVES:
            _refuse_log_softmax_in_parallel(key == "logsoftmax", arg_name, owner)
            return PrimitiveActivation(_UNARY_PRIMITIVES[key]())
        if key in _COMPOSITES:
            return _COMPOSITES[key]()
        check_activation_name(activation, arg_name, owner)
    if isinstance(activation, ops.Primitive):
        _refuse_log_softmax_in_parallel(isinstance(activation, P.LogSoftmax), arg_name, owner)
        return PrimitiveActivation(activation)
    if isinstance(activation, nn.Cell):
        _refuse_log_softmax_in_parallel(isinstance(activation, nn.LogSoftmax), arg_name, owner)
        return activation
    raise argument_error(TypeError, owner, arg_name, "a str, Cell, Primitive or None", activation)
