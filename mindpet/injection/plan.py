"""The dry run: which cells a config would change, which it cannot, and what would train afterwards."""
from typing import NamedTuple, Tuple

from mindspore import nn

from mindpet.injection.hosts import UnsupportedHost
from mindpet.injection.summary import parameter_sizes
from mindpet.injection.targeting import TargetSpec, closest_paths, entry_matches
from mindpet.registry import host_kind, method_of_cell, method_of_config
from mindpet.utils.validation import argument_error


class PlannedCell(NamedTuple):
    """A cell the method would replace: its ``path``, ``cell_type`` name, ``in_channels``, ``out_channels`` and
    the ``added_params`` it would gain (trainable ones)."""
    path: str
    cell_type: str
    in_channels: int
    out_channels: int
    added_params: int


class SkippedCell(NamedTuple):
    """A matched cell the method cannot replace: its ``path``, ``cell_type`` name and the ``reason``."""
    path: str
    cell_type: str
    reason: str


class DeltaPlan(NamedTuple):
    """What :func:`plan_delta` found.

    - **method** (str) - the method's registry name.
    - **matched** (tuple[PlannedCell]) - the cells that would be replaced, in network order.
    - **unmatched_entries** (tuple[str]) - entries of ``target_modules`` that name no cell.
    - **unsupported** (tuple[SkippedCell]) - cells ``"all-dense"`` reached that cannot take the method.
    - **modules_to_save** (tuple[str]) - paths of the cells that would train and be saved beside the delta.
    - **trainable** (int) - the trainable parameter count afterwards.
    - **total** (int) - the parameter count afterwards.
    """
    method: str
    matched: Tuple[PlannedCell, ...]
    unmatched_entries: Tuple[str, ...]
    unsupported: Tuple[SkippedCell, ...]
    modules_to_save: Tuple[str, ...]
    trainable: int
    total: int

    @property
    def trainable_ratio(self):
        """``trainable / total`` (0 for an empty network)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self):
        rows = [("path", "type", "in", "out", "added params")]
        rows += [(cell.path, cell.cell_type, str(cell.in_channels), str(cell.out_channels), f"{cell.added_params:,}")
                 for cell in self.matched]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = [f"{self.method}: {len(self.matched)} cell(s) to replace"]
        for index, row in enumerate(rows):
            lines.append("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
        lines += [f"unmatched target entry: {entry!r}" for entry in self.unmatched_entries]
        lines += [f"skipped: {cell.path} ({cell.cell_type}): {cell.reason}" for cell in self.unsupported]
        lines += [f"saved beside the delta: {path}" for path in self.modules_to_save]
        lines.append(f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                     f"trainable%: {100.0 * self.trainable_ratio:.4f}")
        return "\n".join(lines)


class Resolution(NamedTuple):
    """The cells a config reaches: ``matched`` as ``(path, cell, host view)``, the rest as in :class:`DeltaPlan`."""
    method: object
    matched: tuple
    unmatched_entries: tuple
    unsupported: tuple
    saved_paths: tuple


def _is_under(path, roots):
    return any(path == root or path.startswith(root + ".") for root in roots)


def resolve_targets(network, config, owner):
    """Find the cells ``config`` targets in ``network``; shared by the dry run and the injection.

    Raises:
        TypeError: `network` is not a Cell, or `config` no registered method's config.
        ValueError: the method cannot be injected; the config matches no cell (the message names the closest
            paths); a matched cell already holds a delta; a cell named explicitly cannot take the method.
    """
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, owner, "network", "a mindspore.nn.Cell", network)
    method = method_of_config(config, owner)
    config.validate()
    if not method.injectable:
        raise ValueError(f"For '{owner}', the method '{method.name}' cannot be injected into Dense layers; "
                         f"add its cells in the model source.")
    cells = [(path, cell) for path, cell in network.cells_and_names() if path]
    paths = [path for path, _ in cells]
    saved_paths = tuple(path for path in paths if any(entry_matches(entry, path)
                                                      for entry in config.modules_to_save or ()))
    delta_paths = [path for path, cell in cells if method_of_cell(cell) is not None]
    target, exclude = TargetSpec(config.target_modules), TargetSpec(config.exclude_modules)
    matched, unsupported, held = [], [], []
    for path, cell in cells:
        kind = host_kind(cell)
        is_dense = kind is not None
        if not target.matches(path, is_dense) or exclude.matches(path, is_dense) or _is_under(path, saved_paths):
            continue
        holder = method_of_cell(cell)
        if holder is not None:
            held.append(f"'{path}' ({type(cell).__name__}, {holder.name})")
            continue
        if _is_under(path, delta_paths):
            continue  # a cell inside a delta cell is part of that delta
        try:
            if kind is None:
                raise UnsupportedHost("it is not a Dense-like layer (nn.Dense or MindFormers' Linear)")
            matched.append((path, cell, kind.view(cell)))
        except UnsupportedHost as reason:
            unsupported.append(SkippedCell(path, type(cell).__name__, str(reason)))
    if held:
        raise ValueError(f"For '{owner}', these cells already hold a delta method, and a cell takes one method: "
                         f"{', '.join(held[:20])}.")
    if unsupported and not target.is_all_dense:
        listed = "; ".join(f"'{cell.path}' ({cell.cell_type}): {cell.reason}" for cell in unsupported[:20])
        raise ValueError(f"For '{owner}', the method '{method.name}' cannot replace these matched cells: {listed}. "
                         f"Narrow target_modules, or add them to exclude_modules.")
    if not matched:
        dense_paths = [path for path, cell in cells if host_kind(cell) is not None] or paths
        raise ValueError(f"For '{owner}', target_modules={config.target_modules!r} matches no Dense-like layer "
                         f"that can take '{method.name}'; the closest paths are "
                         f"{closest_paths(config.target_modules, dense_paths)}.")
    return Resolution(method, tuple(matched), tuple(target.unmatched_entries(paths)), tuple(unsupported),
                      saved_paths)


def saved_parameters(network, saved_paths):
    """The parameters of the cells at ``saved_paths``, each once."""
    params = {}
    for path, cell in network.cells_and_names():
        if path in saved_paths:
            params.update((id(param), param) for param in cell.get_parameters())
    return list(params.values())


def plan_delta(network, config):
    """List what :func:`get_delta_model` would do with ``config``, changing nothing.

    Args:
        network (Cell): the network.
        config (DeltaConfig): an injectable method's config, e.g. :class:`~mindpet.LoraConfig`.

    Returns:
        DeltaPlan: the cells that would be replaced (path, type, widths, parameters added), the target entries that
        matched nothing, the cells ``"all-dense"`` reached but cannot adapt, the cells saved beside the delta, and
        the trainable and total parameter counts afterwards. ``str(plan)`` is a readable table.

    Raises:
        TypeError: `network` is not a Cell, or `config` no registered method's config.
        ValueError: the config matches no cell (the message names the closest paths), a matched cell already holds
            a delta method, or a cell named by `target_modules` cannot take the method.

    Examples:
        >>> from mindspore import nn
        >>> from mindpet import LoraConfig, plan_delta
        >>> net = nn.SequentialCell([nn.Dense(16, 8), nn.ReLU(), nn.Dense(8, 2)])
        >>> plan = plan_delta(net, LoraConfig(target_modules=["0"], lora_rank=2))
        >>> [(cell.path, cell.added_params) for cell in plan.matched], plan.trainable
        ([('0', 48)], 48)
    """
    resolution = resolve_targets(network, config, "plan_delta")
    method = resolution.method
    planned, frozen_added = [], 0
    for path, cell, host in resolution.matched:
        trainable, frozen = method.added_params(host, config, path)
        frozen_added += frozen
        planned.append(PlannedCell(path, type(cell).__name__, host.in_channels, host.out_channels, trainable))
    added = sum(cell.added_params for cell in planned)
    total = sum(parameter_sizes(network).values()) + added + frozen_added
    saved = sum(param.size for param in saved_parameters(network, resolution.saved_paths))
    return DeltaPlan(method.name, tuple(planned), resolution.unmatched_entries, resolution.unsupported,
                     resolution.saved_paths, added + saved, total)
