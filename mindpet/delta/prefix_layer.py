"""The MindPet manual's import path of :class:`~mindpet.delta.prefix.PrefixLayer`."""
from mindpet.delta.prefix.layer import PrefixLayer

__all__ = ["PrefixLayer"]
