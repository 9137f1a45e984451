"""Prompt tuning (Lester et al., 2021): trainable virtual tokens prepended to the input embeddings. The model
prepends them with :func:`~mindpet.delta.prepend_virtual_tokens`, so the method is applied in the model source (or an
embeddings hook), not injected into layers."""
from mindpet.delta.base.method import DeltaMethod
from mindpet.delta.prompt_tuning.config import PromptTuningConfig
from mindpet.delta.prompt_tuning.layer import PromptTuningEmbedding

METHOD = DeltaMethod(name="prompt_tuning", cell_types=(PromptTuningEmbedding,), config_class=PromptTuningConfig)

__all__ = ["METHOD", "PromptTuningConfig", "PromptTuningEmbedding"]
