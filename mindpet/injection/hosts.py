"""The Dense-like layers a method can be injected into, read through one view.

``nn.Dense`` and MindFormers' ``Linear`` store their weight as ``(out, in)`` and compute ``x W^T + b``; a
:class:`HostKind` in :mod:`mindpet.registry` says how to recognise such a layer and read it as a :class:`HostView`.
MindFormers is never imported here: its layer is recognised by its class.
"""
from typing import Any, Callable, NamedTuple, Optional

from mindspore import nn

from mindpet.parallel.derive import DenseSplit


class UnsupportedHost(ValueError):
    """A matched layer that a method cannot replace; the message says why."""


class HostView(NamedTuple):
    """What a method needs to know of the Dense-like layer it replaces.

    ``weight`` ``(out_channels, in_channels)`` and ``bias`` ``(out_channels,)`` (None without one) are the layer's
    own Parameter objects, which the new cell adopts; on a quantized layer (:class:`~mindpet.quantization.NF4Dense`)
    ``weight`` is its quantized weight cell, and ``param_dtype`` the float dtype that weight was quantized from. ``activation`` is the layer's activation cell (None without
    one); ``param_dtype`` and ``compute_dtype`` its storage and matmul dtypes; ``split`` the layout of its matmul,
    when a strategy was set, and ``bias_strategy`` that of its bias add.
    """
    kind: str
    in_channels: int
    out_channels: int
    weight: Any
    bias: Any
    activation: Any
    param_dtype: Any
    compute_dtype: Any
    split: Optional[DenseSplit]
    bias_strategy: Optional[tuple]

    @property
    def has_bias(self):
        return self.bias is not None


class HostKind(NamedTuple):
    """A kind of Dense-like layer: ``accepts(cell)`` recognises it and ``view(cell)`` reads it (or raises
    :class:`UnsupportedHost`)."""
    name: str
    accepts: Callable
    view: Callable


def _strategy(primitive):
    """The ``in_strategy`` set on ``primitive`` by ``shard()``, or None."""
    return None if primitive is None else primitive.attrs.get("in_strategy")


def dense_view_strategies(matmul, bias_add):
    """The ``split`` and ``bias_strategy`` of a :class:`HostView` from a layer's matmul and bias-add primitives
    (``bias_add`` None without a bias)."""
    return DenseSplit.from_matmul(_strategy(matmul)), _strategy(bias_add)


def _view_dense(cell):
    activation = cell.activation if cell.activation_flag else None
    bias_add = getattr(cell, "bias_add", None) if cell.has_bias else None
    return HostView("nn.Dense", cell.in_channels, cell.out_channels, cell.weight, cell.bias if cell.has_bias else None,
                    activation, cell.weight.dtype, cell.weight.dtype, *dense_view_strategies(cell.matmul, bias_add))


NN_DENSE = HostKind("nn.Dense", lambda cell: isinstance(cell, nn.Dense), _view_dense)


def _is_mindformers_linear(cell):
    cls = type(cell)
    return cls.__name__ == "Linear" and cls.__module__.split(".")[0] == "mindformers"


def _view_mindformers_linear(cell):
    if not getattr(cell, "transpose_b", False):
        raise UnsupportedHost("its weight is stored (in, out) (transpose_b=False)")
    if getattr(cell, "expert_flag", False):
        raise UnsupportedHost("it holds mixture-of-experts weights")
    if tuple(cell.weight.shape) != (cell.out_channels, cell.in_channels):
        raise UnsupportedHost(f"its weight has shape {tuple(cell.weight.shape)}, not (out_channels, in_channels)")
    activation = cell.activation if getattr(cell, "activation_flag", False) else None
    bias_add = getattr(cell, "bias_add", None) if cell.has_bias else None
    return HostView("mindformers Linear", cell.in_channels, cell.out_channels, cell.weight,
                    cell.bias if cell.has_bias else None, activation, cell.weight.dtype, cell.dtype,
                    *dense_view_strategies(cell.matmul, bias_add))


MINDFORMERS_LINEAR = HostKind("mindformers Linear", _is_mindformers_linear, _view_mindformers_linear)


def dense_arguments(host):
    """The arguments every mindpet Dense cell takes, set to rebuild ``host``; the weights start as zeros because
    :func:`adopt_base_parameters` replaces them by the host's own."""
    return dict(in_channels=host.in_channels, out_channels=host.out_channels, weight_init="zeros",
                bias_init="zeros", has_bias=host.has_bias, activation=host.activation,
                param_init_type=host.param_dtype, compute_dtype=host.compute_dtype)


def adopt_base_parameters(cell, host):
    """Give ``cell`` (a :class:`~mindpet.delta.base.dense_core.DenseCore`) the host's ``weight`` and ``bias``
    objects (same values, no copy): Parameters, or a quantized weight cell, which stays quantized."""
    cell.adopt_weight(host.weight)
    if host.has_bias:
        cell.bias = host.bias
    return cell
