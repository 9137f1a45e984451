"""Prompt tuning's entry in adapter directories: PEFT's ``PROMPT_TUNING`` layout. The table
``mindpet_delta_prompt_tuning_embedding`` is PEFT's ``prompt_embeddings``, same shape, no module path."""
from mindpet.delta.base.file_format import TensorName
from mindpet.delta.base.prompt_format import prompt_learning_format
from mindpet.delta.prompt_tuning.layer import EMBEDDING_NAME


def _to_json(source):
    # The file holds the trained table, so the init is history. TEXT would make PEFT load a tokenizer
    # (tokenizer_name_or_path) that mindpet does not know; RANDOM loads the table as it is.
    return {"prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
            "tokenizer_kwargs": None}


PROMPT_TUNING_FORMAT = prompt_learning_format(
    "PROMPT_TUNING", _to_json, json_keys=frozenset({"prompt_tuning_init", "prompt_tuning_init_text",
                                                    "tokenizer_name_or_path", "tokenizer_kwargs"}),
    tensor_names=(TensorName(EMBEDDING_NAME, "prompt_embeddings"),))
