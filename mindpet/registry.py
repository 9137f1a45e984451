"""The method registry: one record per delta method, and the kinds of Dense-like layer methods are injected into.

``freeze_delta`` modes, :func:`mindpet.get_delta_model`, :func:`mindpet.merge_and_unload`, the loaders, the examples
and ``bench/`` read these lists instead of keeping their own. A new method adds its folder under
``mindpet/delta/`` (cells, config, and a ``METHOD`` record) and one line to ``METHODS``.
"""
from mindpet.delta import (adalora, adapter, bitfit, ia3, lora, low_rank_adapter, prefix, prompt_tuning, ptuning,
                           ptuning2)
from mindpet.injection.hosts import MINDFORMERS_LINEAR, NN_DENSE
from mindpet.quantization.layer import NF4_DENSE
from mindpet.utils.validation import argument_error, check_str

METHODS = (
    lora.METHOD,
    adapter.METHOD,
    low_rank_adapter.METHOD,
    prefix.METHOD,
    ptuning2.METHOD,
    bitfit.METHOD,
    ia3.METHOD,
    prompt_tuning.METHOD,
    ptuning.METHOD,
    adalora.METHOD,
)

# The base-cell hook: a layer of one of these kinds can host an injected method.
HOST_KINDS = (NN_DENSE, MINDFORMERS_LINEAR, NF4_DENSE)


def method_names():
    """Every registered method name, in registry order."""
    return tuple(method.name for method in METHODS)


def get_method(name, arg_name="mode", owner="get_method"):
    """The record of the method called ``name`` (case-insensitive, aliases accepted).

    Raises:
        TypeError: `name` is not a str.
        ValueError: no method has that name.
    """
    key = check_str(name, arg_name, owner).lower()
    for method in METHODS:
        if key == method.name or key in method.aliases:
            return method
    valid = sorted(method_names() + tuple(alias for method in METHODS for alias in method.aliases))
    raise argument_error(ValueError, owner, arg_name, f"one of {valid} (case-insensitive)", name)


def method_of_config(config, owner):
    """The record whose config class ``config`` is an instance of.

    Raises:
        TypeError: `config` is no registered method's config.
    """
    for method in METHODS:
        if method.config_class is not None and isinstance(config, method.config_class):
            return method
    expected = "a config of one of " + ", ".join(m.config_class.__name__ for m in METHODS if m.config_class)
    raise argument_error(TypeError, owner, "config", expected, config)


def method_of_cell(cell):
    """The record of the method whose delta ``cell`` holds, or None."""
    for method in METHODS:
        if isinstance(cell, method.cell_types):
            return method
    return None


def host_kind(cell):
    """The :class:`~mindpet.injection.hosts.HostKind` of ``cell``, or None when it is no Dense-like layer."""
    return next((kind for kind in HOST_KINDS if kind.accepts(cell)), None)


def config_from_dict(data):
    """The config that ``config.to_dict()`` described, of the method named in ``data["method"]``.

    Raises:
        TypeError: `data` is not a dict.
        ValueError: `data` names no method, or one without a config.
    """
    owner = "config_from_dict"
    if not isinstance(data, dict):
        raise argument_error(TypeError, owner, "data", "a dict", data)
    method = get_method(data.get("method"), "data['method']", owner)
    if method.config_class is None:
        raise argument_error(ValueError, owner, "data['method']", "a method that has a config", data.get("method"))
    return method.config_class.from_dict(data)
