"""Delta checkpoints: save only what delta tuning trains, load it back, and guard the training that produces it.

- :class:`TrainableParamsCheckPoint` (``callback``): a ``Model.train`` callback that saves the trained parameters.
- :class:`TrainingGuard` (``guard``): checks at the start of training for setups that silently train nothing.
- :func:`load_delta_checkpoint` and :func:`load_base_checkpoint` (``loader``): the delta, and the pretrained
  weights of a network that holds delta cells.
- :func:`merge_sliced_delta_checkpoints` (``sliced``): one full delta from the slices of a model-parallel run.
- :func:`trained_parameters` (``selection``): which parameters a delta holds.
- :func:`save_delta` and :func:`load_delta` (``adapter_files``): adapter directories, the delta with its config, in
  Hugging Face PEFT's layout where PEFT has the method.

Files are written atomically through a staging folder (``atomic``).
"""
from mindpet.checkpoint.adapter_files import load_delta, save_delta
from mindpet.checkpoint.callback import TrainableParamsCheckPoint
from mindpet.checkpoint.guard import TrainingGuard
from mindpet.checkpoint.loader import BaseLoadResult, DeltaLoadResult, load_base_checkpoint, load_delta_checkpoint
from mindpet.checkpoint.selection import trained_parameters
from mindpet.checkpoint.sliced import merge_sliced_delta_checkpoints

__all__ = ["BaseLoadResult", "DeltaLoadResult", "TrainableParamsCheckPoint", "TrainingGuard", "load_base_checkpoint",
           "load_delta", "load_delta_checkpoint", "merge_sliced_delta_checkpoints", "save_delta",
           "trained_parameters"]
