"""The MindPet 1.0.4 import paths of the freezing and checkpoint utilities, kept for code written against them.

New code imports the same names from :mod:`mindpet`; checkpoints live in :mod:`mindpet.checkpoint`.
"""
from mindpet.checkpoint import (
                                BaseLoadResult,
                                DeltaLoadResult,
                                TrainableParamsCheckPoint,
                                TrainingGuard,
                                load_base_checkpoint,
                                load_delta_checkpoint,
                                merge_sliced_delta_checkpoints,
)
from mindpet.freeze import freeze_delta, freeze_from_config, freeze_modules
from mindpet.parallel.check import check_shard_strategies

__all__ = ["BaseLoadResult", "DeltaLoadResult", "TrainableParamsCheckPoint", "TrainingGuard", "check_shard_strategies",
           "freeze_delta", "freeze_from_config", "freeze_modules", "load_base_checkpoint", "load_delta_checkpoint",
           "merge_sliced_delta_checkpoints"]
