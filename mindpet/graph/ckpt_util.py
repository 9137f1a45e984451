"""The MindPet 1.0.4 import path of the delta-checkpoint API, which now lives in :mod:`mindpet.checkpoint`."""
from mindpet.checkpoint.atomic import save_atomically
from mindpet.checkpoint.callback import TrainableParamsCheckPoint
from mindpet.checkpoint.formats import CHECKPOINT_FORMATS, TRAINING_COUNTER_KEYS
from mindpet.checkpoint.loader import DeltaLoadResult, load_delta_checkpoint
from mindpet.checkpoint.selection import trained_parameters

__all__ = ["CHECKPOINT_FORMATS", "TRAINING_COUNTER_KEYS", "DeltaLoadResult", "TrainableParamsCheckPoint",
           "load_delta_checkpoint", "save_atomically", "trained_parameters"]
