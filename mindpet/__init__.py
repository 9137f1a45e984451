"""mindpet: parameter-efficient fine-tuning (delta tuning) for MindSpore.

Apply a method to any network by config (:func:`get_delta_model` with :class:`LoraConfig`, :class:`AdapterConfig`,
:class:`LowRankAdapterConfig`, :class:`IA3Config` or :class:`AdaLoraConfig`, whose training takes
:class:`AdaLoraCallback`, after a dry run with :func:`plan_delta`), or build the cells of :mod:`mindpet.delta` into
the model source (:class:`PromptTuningConfig` and :class:`PTuningConfig` build the
virtual-token cells that a model's embedding code prepends). Freezing, delta checkpoints and strategy checks are
exported here too.
"""
__version__ = "2.0.0"

from mindpet.checkpoint import (
                                BaseLoadResult,
                                DeltaLoadResult,
                                TrainableParamsCheckPoint,
                                TrainingGuard,
                                load_base_checkpoint,
                                load_delta,
                                load_delta_checkpoint,
                                merge_sliced_delta_checkpoints,
                                save_delta,
)
from mindpet.delta.adalora import AdaLoraCallback, AdaLoraConfig
from mindpet.delta.adapter import AdapterConfig
from mindpet.delta.base.config import DeltaConfig
from mindpet.delta.ia3 import IA3Config
from mindpet.delta.lora import LoraConfig
from mindpet.delta.low_rank_adapter import LowRankAdapterConfig
from mindpet.delta.prompt_tuning import PromptTuningConfig
from mindpet.delta.ptuning import PTuningConfig
from mindpet.freeze import freeze_delta, freeze_from_config, freeze_modules
from mindpet.injection.inject import get_delta_model
from mindpet.injection.merge import merge_and_unload
from mindpet.injection.plan import DeltaPlan, plan_delta
from mindpet.injection.summary import TrainableSummary, trainable_summary
from mindpet.parallel.check import check_shard_strategies
from mindpet.quantization import quantize_base
from mindpet.registry import config_from_dict

__all__ = ["AdaLoraCallback", "AdaLoraConfig", "AdapterConfig", "BaseLoadResult", "DeltaConfig", "DeltaLoadResult", "DeltaPlan", "IA3Config",
           "LoraConfig", "LowRankAdapterConfig", "PTuningConfig", "PromptTuningConfig", "TrainableParamsCheckPoint",
           "TrainableSummary", "TrainingGuard",
           "check_shard_strategies", "config_from_dict", "freeze_delta", "freeze_from_config", "freeze_modules",
           "get_delta_model", "load_base_checkpoint", "load_delta", "load_delta_checkpoint", "merge_and_unload",
           "merge_sliced_delta_checkpoints", "plan_delta", "quantize_base", "save_delta", "trainable_summary"]
