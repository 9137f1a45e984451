"""What the adapter-file entries of prompt tuning and P-tuning v1 share: PEFT's prompt-learning layout.

PEFT (0.21.2 checked) saves a prompt-learning adapter as ONE tensor, ``prompt_embeddings`` ``(num_virtual_tokens,
token_dim)``, with no module path (the virtual tokens as the model receives them; for P-tuning the encoder's output),
and ``adapter_config.json`` with ``num_virtual_tokens``, ``token_dim``, ``num_transformer_submodules``,
``num_attention_heads``, ``num_layers`` and the method's own fields. mindpet's prompt cells are written in the model
source, one per network, so the entries are path-less (:class:`~mindpet.delta.base.file_format.AdapterFormat`
``pathless``): the file loads into the network's one cell of the method, wherever it sits.
"""
from mindpet.delta.base.file_format import AdapterFormat

# The prefix PEFT puts before a module path in a prompt-learning model's keys (its base_model is the model itself);
# here it precedes only the saved modules' keys.
PROMPT_KEY_PREFIX = "base_model."
# PEFT's task type for an encoder whose input embeddings take the prompt and whose hidden states are returned. Without
# a task type, PEFT's plain PeftModel runs the model without the prompt, silently; for a decoder, edit it to CAUSAL_LM.
PROMPT_TASK_TYPE = "FEATURE_EXTRACTION"
_COMMON_JSON_KEYS = frozenset({"num_virtual_tokens", "token_dim", "num_attention_heads", "num_layers"})
# PEFT repeats the prompt per transformer submodule (2 for an encoder-decoder); mindpet's cells hold one.
_REQUIRED_VALUES = {"num_transformer_submodules": 1}


def prompt_fields(source):
    """The JSON fields every prompt-learning adapter has, from a cell or a config (``source``). PEFT fills
    ``num_attention_heads`` and ``num_layers`` from the model's config when they are null."""
    return {"num_virtual_tokens": source.num_virtual_tokens, "token_dim": source.token_dim,
            "num_transformer_submodules": 1, "num_attention_heads": None, "num_layers": None,
            "task_type": PROMPT_TASK_TYPE, "inference_mode": True, "base_model_name_or_path": None, "revision": None}


def prompt_settings(fields):
    """The settings a cell must share with the file: its prompt's length and width."""
    return {"num_virtual_tokens": fields["num_virtual_tokens"], "token_dim": fields["token_dim"]}


def prompt_cell_settings(cell):
    return {"num_virtual_tokens": cell.num_virtual_tokens, "token_dim": cell.token_dim}


def prompt_learning_format(peft_type, to_json, json_keys=frozenset(), target_settings=prompt_settings,
                           cell_settings=prompt_cell_settings, **kwargs):
    """The :class:`~mindpet.delta.base.file_format.AdapterFormat` of a prompt-learning method in PEFT's layout.

    Args:
        peft_type (str): PEFT's type, ``'PROMPT_TUNING'`` or ``'P_TUNING'``.
        to_json (Callable): ``to_json(source) -> dict``, the method's own fields from its cell or config.
        json_keys (frozenset[str]): the method's own JSON fields.
        target_settings, cell_settings (Callable): as in ``AdapterFormat``; default: the prompt's length and width.
        kwargs: the other ``AdapterFormat`` fields (``tensor_names``, ``derived_tensors``).
    """
    def fields(config, cells):
        cell = next(iter(cells.values()))
        source = cell if cell is not None else config
        return {**prompt_fields(source), **to_json(source)}

    return AdapterFormat(peft_type=peft_type, key_prefix=PROMPT_KEY_PREFIX, pathless=True, to_json=fields,
                         target_settings=lambda file_fields, path: target_settings(file_fields),
                         cell_settings=cell_settings, json_keys=_COMMON_JSON_KEYS | json_keys,
                         required_values=_REQUIRED_VALUES, **kwargs)
