"""Prefix-Tuning (Li & Liang, 2021): trainable key and value prefixes for one attention block. The attention code
prepends them with :class:`~mindpet.delta.PrefixConcat`, so the method is applied in the model source, not injected."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.prefix.layer import PrefixLayer

# MindPet 1.x called the method 'prefixtuning', and MindFormers' prefix encoder still marks its parameters so.
METHOD = DeltaMethod(name="prefix", cell_types=(PrefixLayer,), aliases=("prefixtuning",))

__all__ = ["METHOD", "PrefixLayer"]
