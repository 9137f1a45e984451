"""Prompt tuning (Lester et al., 2021): trainable virtual tokens prepended to the input embeddings. The model
prepends them with :func:`~mindpet.delta.prepend_virtual_tokens`, so the method is applied in the model source (or an
embeddings hook), not injected into layers."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.prompt_tuning.config import PromptTuningConfig
from mindpet.delta.prompt_tuning.layer import PromptTuningEmbedding
from mindpet.delta.prompt_tuning.peft_format import PROMPT_TUNING_FORMAT

METHOD = DeltaMethod(name="prompt_tuning", cell_types=(PromptTuningEmbedding,), config_class=PromptTuningConfig,
                     adapter_format=PROMPT_TUNING_FORMAT)

__all__ = ["METHOD", "PromptTuningConfig", "PromptTuningEmbedding"]
