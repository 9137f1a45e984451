"""Checking every delta cell's ``shard()`` strategies in a network before a parallel job is launched."""
import math
from typing import NamedTuple, Optional

from mindspore import nn

from mindpet.parallel.context import configured_device_num
from mindpet.parallel.plan import ShardValidated, check_cell_strategies
from mindpet.utils.validation import argument_error, check_positive_int

_OWNER = "check_shard_strategies"


class StrategyReport(NamedTuple):
    """What :func:`check_shard_strategies` checked.

    - **cells** (dict) - for every delta cell with a ``shard()`` method, in network order, its path in the network
      (``''`` for the network itself) mapped to the strategies it holds, ``{argument: strategy}``; empty for a cell
      whose ``shard()`` was never called, whose operators the framework lays out.
    - **min_device_num** (int) - the smallest device count (per pipeline stage) all the strategies fit: the least
      common multiple of what each operator needs; 1 without strategies.
    - **device_num** (Union[int, None]) - the device count checked against; None when it was unknown, in which case
      the device-count rule was skipped.
    """
    cells: dict
    min_device_num: int
    device_num: Optional[int]


def check_shard_strategies(network, device_num=None):
    r"""Check the ``shard()`` strategies of every delta cell in ``network``, device count included.

    Each cell already checks its strategies when ``shard()`` is called, but the device count is often unknown then:
    semi-auto parallel refuses the CPU backend, and on a cluster it becomes known only when the job starts. Call this
    function on the whole network, on any machine, before launching the job. Every rule of
    :mod:`mindpet.parallel.plan` is checked again, among them that each operator's splits need a number of
    devices that divides ``device_num``.

    Args:
        network (Cell): the network; every cell of it with a MindPet ``shard()`` method is checked.
        device_num (int, optional): the device count of one pipeline stage (the job's device count without pipeline
            parallelism). Default: None, the count of the current semi-auto or auto parallel context when it is
            known (``device_num`` set, or communication initialised), otherwise the device-count rule is skipped.

    Returns:
        StrategyReport: the strategies of every delta cell by path, the smallest device count they fit, and the
        device count checked against.

    Raises:
        TypeError: ``network`` is not a Cell, or ``device_num`` is not an int.
        ValueError: ``device_num`` is <= 0, or any strategy breaks a rule. The message lists every broken rule
            found, each with the path of the cell, the cell class, the argument and the offending numbers.

    Examples:
        >>> from mindspore import nn
        >>> from mindpet.delta import LoRADense
        >>> from mindpet.graph import check_shard_strategies
        >>> network = nn.SequentialCell([LoRADense(16, 8, lora_rank=4, lora_alpha=8), nn.ReLU()])
        >>> _ = network[0].shard(strategy_org_dense_matmul=((2, 1), (4, 1)),
        ...                      strategy_lora_b_matmul=((2, 1), (4, 1)))
        >>> report = check_shard_strategies(network, device_num=16)
        >>> report.min_device_num, list(report.cells)
        (8, ['0'])
        >>> check_shard_strategies(network, device_num=4)
        Traceback (most recent call last):
            ...
        ValueError: check_shard_strategies found 2 broken rule(s) on 4 device(s):
        - cell '0' (LoRADense): For 'LoRADense', the argument 'strategy_org_dense_matmul' must fit a device count of
        4, but got ((2, 1), (4, 1)): it needs 8 devices, 2 (the flattened batch) x 4 (out_channels), and 8 does not
        divide 4.
        - cell '0' (LoRADense): For 'LoRADense', the argument 'strategy_lora_b_matmul' must fit a device count of 4,
        but got ((2, 1), (4, 1)): it needs 8 devices, 2 (the flattened batch) x 4 (out_channels), and 8 does not
        divide 4.
    """
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, _OWNER, "network", "a mindspore.nn.Cell", network)
    if device_num is None:
        device_num = configured_device_num()
    else:
        device_num = check_positive_int(device_num, "device_num", _OWNER)
    cells, requirements, problems = {}, [], []
    for path, cell in network.cells_and_names():
        if not isinstance(cell, ShardValidated):
            continue
        check = check_cell_strategies(cell, device_num)
        cells[path] = check.strategies
        requirements.append(check.device_requirement)
        problems.extend(f"- cell '{path}' ({type(cell).__name__}): {error}" for error in check.errors)
    if problems:
        devices = f" on {device_num} device(s)" if device_num is not None else ""
        raise ValueError(f"{_OWNER} found {len(problems)} broken rule(s){devices}:\n" + "\n".join(problems))
    return StrategyReport(cells, math.lcm(*requirements), device_num)
