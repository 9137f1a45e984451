"""The config of prompt tuning: the prompt's length and width, and how it is initialised."""
import dataclasses
from typing import List, Optional

from mindpet.delta.base.prompt_config import VirtualTokenConfig
from mindpet.delta.prompt_tuning.layer import PromptTuningEmbedding
from mindpet.utils.validation import argument_error, check_str

INIT_TYPES = ("RANDOM", "TEXT")


@dataclasses.dataclass
class PromptTuningConfig(VirtualTokenConfig):
    """Prompt tuning (:class:`~mindpet.delta.PromptTuningEmbedding`): trainable virtual tokens, initialised randomly
    or from the word embeddings of a task description's token ids.

    The fields follow PEFT's ``PromptTuningConfig``. PEFT tokenizes ``prompt_tuning_init_text`` itself; mindpet needs
    no tokenizer, so the token ids come in ``prompt_tuning_init_token_ids`` and the text, when given, is kept as a
    record of where they came from.

    Args:
{virtual_token_arguments}
        prompt_tuning_init (str): ``"RANDOM"`` (a standard normal) or ``"TEXT"`` (the word embeddings of
            `prompt_tuning_init_token_ids`), case-insensitive; stored in capitals. Default: ``"RANDOM"``.
        prompt_tuning_init_token_ids (list[int], optional): the token ids of the init text, repeated or cut to
            `num_virtual_tokens`; required with ``"TEXT"``, refused with ``"RANDOM"``. Default: ``None``.
        prompt_tuning_init_text (str, optional): the text those ids encode; only with ``"TEXT"``. Default: ``None``.

    Raises:
        TypeError: `prompt_tuning_init` or `prompt_tuning_init_text` is not a str; `prompt_tuning_init_token_ids` is
            not a list of ints; and as :class:`~mindpet.delta.base.prompt_config.VirtualTokenConfig`.
        ValueError: `prompt_tuning_init` is neither RANDOM nor TEXT; TEXT without token ids, or RANDOM with ids or
            text; an empty or negative id list; and as :class:`~mindpet.delta.base.prompt_config.VirtualTokenConfig`.

    Examples:
        >>> from mindspore import nn
        >>> from mindpet import PromptTuningConfig
        >>> config = PromptTuningConfig(num_virtual_tokens=6, token_dim=8, prompt_tuning_init="TEXT",
        ...                             prompt_tuning_init_token_ids=[12, 5, 9])
        >>> PromptTuningConfig.from_dict(config.to_dict()) == config
        True
        >>> config.make_cell(embedding=nn.Embedding(20, 8))(2).shape
        (2, 6, 8)
    """

    method = "prompt_tuning"

    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_token_ids: Optional[List[int]] = None
    prompt_tuning_init_text: Optional[str] = None

    def validate(self):
        super().validate()
        owner = type(self).__name__
        init = check_str(self.prompt_tuning_init, "prompt_tuning_init", owner).upper()
        if init not in INIT_TYPES:
            raise argument_error(ValueError, owner, "prompt_tuning_init", f"one of {list(INIT_TYPES)} "
                                 "(case-insensitive)", self.prompt_tuning_init)
        self.prompt_tuning_init = init
        token_ids = self.prompt_tuning_init_token_ids
        if token_ids is not None:
            if not isinstance(token_ids, (list, tuple)) or not all(
                    isinstance(token_id, int) and not isinstance(token_id, bool) for token_id in token_ids):
                raise argument_error(TypeError, owner, "prompt_tuning_init_token_ids", "a list of ints", token_ids)
            if not token_ids or min(token_ids) < 0:
                raise argument_error(ValueError, owner, "prompt_tuning_init_token_ids",
                                     "a non-empty list of ids >= 0", token_ids)
            self.prompt_tuning_init_token_ids = list(token_ids)
        if self.prompt_tuning_init_text is not None:
            check_str(self.prompt_tuning_init_text, "prompt_tuning_init_text", owner)
        if init == "TEXT" and token_ids is None:
            raise argument_error(ValueError, owner, "prompt_tuning_init_token_ids",
                                 "given with prompt_tuning_init='TEXT'", token_ids)
        if init == "RANDOM":
            for arg_name in ("prompt_tuning_init_token_ids", "prompt_tuning_init_text"):
                if getattr(self, arg_name) is not None:
                    raise argument_error(ValueError, owner, arg_name, "None with prompt_tuning_init='RANDOM' (or "
                                         "set prompt_tuning_init='TEXT')", getattr(self, arg_name))
        return self

    def make_cell(self, embedding=None):
        """The :class:`~mindpet.delta.PromptTuningEmbedding` this config describes.

        Args:
            embedding (Union[mindspore.nn.Embedding, Tensor], optional): the model's word embeddings (or their
                table), whose rows initialise the prompt with ``"TEXT"``. Default: ``None``.

        Returns:
            PromptTuningEmbedding.

        Raises:
            ValueError: ``"TEXT"`` without `embedding`, or ``"RANDOM"`` with one; and what the cell raises.
        """
        self.validate()
        owner = f"{type(self).__name__}.make_cell"
        if self.prompt_tuning_init == "TEXT" and embedding is None:
            raise argument_error(ValueError, owner, "embedding", "the model's word embeddings with "
                                 "prompt_tuning_init='TEXT'", embedding)
        if self.prompt_tuning_init == "RANDOM" and embedding is not None:
            raise argument_error(ValueError, owner, "embedding", "None with prompt_tuning_init='RANDOM' (it would "
                                 "not be used)", embedding)
        return PromptTuningEmbedding(self.num_virtual_tokens, self.token_dim,
                                     init_token_ids=self.prompt_tuning_init_token_ids, embedding=embedding)
