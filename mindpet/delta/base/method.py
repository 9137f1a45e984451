"""The record a delta method registers: its name, config, cells, and how it is injected and recognised."""
import dataclasses
import fnmatch
from typing import Callable, Optional

from mindpet.delta.base.file_format import AdapterFormat, native_format
from mindpet.delta.base.mergeable import MergeableDense
from mindpet.utils.naming import is_delta_param


@dataclasses.dataclass(frozen=True)
class DeltaMethod:
    """One entry of :mod:`mindpet.registry`.

    Args:
        name (str): the method's name, also its ``freeze_delta`` mode and the ``mindpet_delta_<name>`` marker of its
            parameters.
        cell_types (tuple[type]): the cells that hold the method's delta. Default: ``()``.
        config_class (type, optional): its :class:`~mindpet.delta.base.config.DeltaConfig` subclass.
        aliases (tuple[str]): other accepted names (lower case); parameters marked ``mindpet_delta_<alias>`` belong
            to the method too, as older cells and MindFormers name them. Default: ``()``.
        trains_pattern (str, optional): for a method that trains the model's own parameters instead of adding some
            (BitFit), the ``fnmatch`` pattern of their names.
        build (Callable, optional): ``build(host, config, path) -> Cell``, the cell that replaces the Dense-like
            layer ``host`` (a :class:`~mindpet.injection.hosts.HostView`) at ``path``; None when the method cannot
            be injected into a Dense-like layer.
        added_params (Callable, optional): ``added_params(host, config, path) -> (trainable, frozen)``, the
            parameter elements ``build`` adds, for the dry run.
        host_strategies (Callable, optional): ``host_strategies(host, cell) -> dict``, the ``shard()`` arguments
            of the built cell derived from the strategies set on the host (``host.split``, a
            :class:`~mindpet.parallel.derive.DenseSplit`, and ``host.bias_strategy``).
        adapter_format (AdapterFormat): how :func:`mindpet.save_delta` writes the method's delta and
            :func:`mindpet.load_delta` reads it (see :mod:`mindpet.delta.base.file_format`). Default: the method's
            parameters under their mindpet names, with ``peft_type`` ``'MINDPET_<NAME>'``.
    """

    name: str
    cell_types: tuple = ()
    config_class: Optional[type] = None
    aliases: tuple = ()
    trains_pattern: Optional[str] = None
    build: Optional[Callable] = None
    added_params: Optional[Callable] = None
    host_strategies: Optional[Callable] = None
    adapter_format: Optional[AdapterFormat] = None

    def __post_init__(self):
        if self.adapter_format is None:
            # A frozen dataclass sets its own fields through object.__setattr__.
            object.__setattr__(self, "adapter_format", native_format(f"MINDPET_{self.name.upper()}", self.config_class))

    @property
    def injectable(self):
        """Whether :func:`mindpet.get_delta_model` can apply the method to a Dense-like layer."""
        return self.build is not None

    @property
    def mergeable(self):
        """Whether the method's delta folds into the base weight (:func:`mindpet.merge_and_unload`)."""
        return any(issubclass(cell_type, MergeableDense) for cell_type in self.cell_types)

    def owns_parameter(self, param_name):
        """Whether the parameter named ``param_name`` is one this method trains."""
        if self.trains_pattern is not None:
            return fnmatch.fnmatchcase(param_name, self.trains_pattern)
        return any(is_delta_param(param_name, marker) for marker in (self.name, *self.aliases))

    def parameter_rule(self):
        """How the method's parameters are recognised, in words (for error messages)."""
        if self.trains_pattern is not None:
            return f"a parameter whose name matches '{self.trains_pattern}'"
        markers = " or ".join(f"'mindpet_delta_{marker}'" for marker in (self.name, *self.aliases))
        return (f"a parameter whose dotted name has a component {markers}, alone or followed by '_<role>', as the "
                f"{self.name} cells create")
