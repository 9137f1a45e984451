"""P-tuning v1 (Liu et al., 2021): virtual tokens re-parameterised by an MLP or an LSTM, prepended to the input
embeddings with :func:`~mindpet.delta.prepend_virtual_tokens`. Not P-Tuning v2 (``mindpet.delta.ptuning2``), which
gives every attention layer key and value prefixes."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.ptuning.config import PTuningConfig
from mindpet.delta.ptuning.layer import PromptEncoder
from mindpet.delta.ptuning.peft_format import P_TUNING_FORMAT

METHOD = DeltaMethod(name="ptuning", cell_types=(PromptEncoder,), config_class=PTuningConfig,
                     adapter_format=P_TUNING_FORMAT)

__all__ = ["METHOD", "PTuningConfig", "PromptEncoder"]
