"""The former import path of :func:`merge_sliced_delta_checkpoints`, which now lives in :mod:`mindpet.checkpoint`."""
from mindpet.checkpoint.sliced import merge_sliced_delta_checkpoints

__all__ = ["merge_sliced_delta_checkpoints"]
