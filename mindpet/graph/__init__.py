"""The MindPet 1.0.4 import paths of the freezing and checkpoint utilities, kept for code written against them.

New code imports the same names from :mod:`mindpet`.
"""
from mindpet.graph.ckpt_util import DeltaLoadResult, TrainableParamsCheckPoint, load_delta_checkpoint
from mindpet.graph.distributed_ckpt import merge_sliced_delta_checkpoints
from mindpet.graph.freeze_utils import freeze_delta, freeze_from_config, freeze_modules
from mindpet.parallel.check import check_shard_strategies

__all__ = ["DeltaLoadResult", "TrainableParamsCheckPoint", "check_shard_strategies", "freeze_delta",
           "freeze_from_config", "freeze_modules", "load_delta_checkpoint", "merge_sliced_delta_checkpoints"]
