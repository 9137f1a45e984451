"""P-tuning v1's entry in adapter directories: PEFT's ``P_TUNING`` layout plus the encoder.

PEFT saves only ``prompt_embeddings``, the encoder's OUTPUT (``PromptEncoder.virtual_token_embeddings``), and uses it
as the prompt when it loads the file. mindpet writes that tensor for PEFT and, beside it, the encoder's own parameters
under their names in the cell (``mindpet_delta_ptuning_embedding``, ``mindpet_delta_ptuning_dense_in.weight``, ...),
which PEFT ignores, so that training can resume from the file. A file with ``prompt_embeddings`` alone (PEFT's) does
not hold the encoder, and is refused.
"""
from mindpet.delta.base.file_format import DerivedTensor
from mindpet.delta.base.prompt_format import prompt_cell_settings, prompt_learning_format, prompt_settings

_ENCODER_FIELDS = ("encoder_hidden_size", "encoder_reparameterization_type", "encoder_num_layers", "encoder_dropout")

_OUTPUT_ONLY = ("PEFT saves a P-tuning adapter as the encoder's output alone, from which the PromptEncoder's "
                "parameters cannot be recovered. Those virtual tokens are a prompt-tuning table: hold them in a "
                "PromptTuningEmbedding(num_virtual_tokens, token_dim) (set 'peft_type' to \"PROMPT_TUNING\" in the "
                "file's adapter_config.json and load_delta it into a network holding one), as PEFT itself uses the "
                "tensor as the prompt.")


def _to_json(source):
    encoder_type = getattr(source, "encoder_type", None) or source.encoder_reparameterization_type
    return {"encoder_hidden_size": source.encoder_hidden_size, "encoder_reparameterization_type": encoder_type,
            "encoder_num_layers": source.encoder_num_layers, "encoder_dropout": source.encoder_dropout}


def _encoder_settings(encoder_type, hidden_size, num_layers):
    encoder_type = str(encoder_type).upper()
    # The MLP has a fixed depth: PEFT writes its unused encoder_num_layers, which says nothing then.
    return {"encoder_reparameterization_type": encoder_type, "encoder_hidden_size": hidden_size,
            "encoder_num_layers": num_layers if encoder_type == "LSTM" else None}


def _target_settings(fields):
    return {**prompt_settings(fields),
            **_encoder_settings(fields.get("encoder_reparameterization_type", "MLP"), fields["encoder_hidden_size"],
                                fields.get("encoder_num_layers"))}


def _cell_settings(cell):
    return {**prompt_cell_settings(cell),
            **_encoder_settings(cell.encoder_type, cell.encoder_hidden_size, cell.encoder_num_layers)}


P_TUNING_FORMAT = prompt_learning_format(
    "P_TUNING", _to_json, json_keys=frozenset(_ENCODER_FIELDS), target_settings=_target_settings,
    cell_settings=_cell_settings,
    derived_tensors=(DerivedTensor("prompt_embeddings", lambda cell: cell.virtual_token_embeddings().asnumpy(),
                                   _OUTPUT_ONLY),))
