"""The parallel context as the strategy checks need it: the only module that reads private MindSpore state."""
import mindspore as ms
from mindspore.communication import get_group_size
from mindspore.communication._comm_helper import GlobalComm
from mindspore.parallel._auto_parallel_context import auto_parallel_context

_STRATEGY_MODES = ("semi_auto_parallel", "auto_parallel")


def configured_device_num():
    """The device count the current parallel context gives each pipeline stage, or None while it is unknown.

    It is known in semi-auto and auto parallel mode (the modes that use ``shard()`` strategies) once ``device_num``
    was set explicitly or communication was initialised. ``mindspore.get_auto_parallel_context('device_num')`` alone
    cannot tell: it answers 1 before anything is set. MindSpore lays operators out within a pipeline stage, so the
    count is divided by ``pipeline_stages``.
    """
    if ms.get_auto_parallel_context("parallel_mode") not in _STRATEGY_MODES:
        return None
    if auto_parallel_context().get_device_num_is_set():
        device_num = ms.get_auto_parallel_context("device_num")
    elif GlobalComm.INITED:
        device_num = get_group_size()
    else:
        return None
    return device_num // ms.get_auto_parallel_context("pipeline_stages")
