"""P-Tuning v2 (Liu et al., 2022): a key and value prefix for every layer from one encoder. The attention code
prepends them with :class:`~mindpet.delta.PrefixConcat`, so the method is applied in the model source, not injected.
``mindpet.delta.ptuning2.PrefixEncoder`` is the MindPet manual's import path."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.ptuning2.layer import PrefixEncoder

METHOD = DeltaMethod(name="ptuning2", cell_types=(PrefixEncoder,))

__all__ = ["METHOD", "PrefixEncoder"]
