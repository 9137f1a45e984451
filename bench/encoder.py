"""The transformer-encoder workload: the BERT classifier of ``examples/bert``, randomly initialised."""
import os

import mindspore as ms
import numpy as np
from bert.methods import apply_method, model_options
from bert.modeling import BertClassifier, BertConfig
from bert.weights import load_pretrained, read_pretrained
from mindspore import Tensor, nn

from mindpet import freeze_modules

from bench import presets
from bench.minilm import FLOOR_TRAINABLE, minilm_batch_arrays, minilm_shape, pretrained_model_dir


def encoder_config(preset, method):
    """The :class:`BertConfig` of ``preset`` for ``method``; positions cover exactly the benchmark's sequence length,
    and the virtual tokens of prompt tuning and P-tuning v1 in front of it."""
    positions = preset.encoder_seq_len
    if method in presets.VIRTUAL_TOKEN_METHODS:
        positions += presets.NUM_VIRTUAL_TOKENS
    return BertConfig(vocab_size=preset.encoder_vocab, hidden_size=preset.encoder_hidden,
                      num_layers=preset.encoder_layers, num_heads=preset.encoder_heads,
                      intermediate_size=preset.encoder_intermediate, max_position_embeddings=positions)


def build_encoder(method, preset):
    """A BERT classifier with ``method`` applied as the example applies it (every method but ``'full'`` also trains
    the head)."""
    net = BertClassifier(encoder_config(preset, method), preset.num_labels,
                         **model_options(method, presets.PTUNING2_PRE_SEQ_LEN))
    apply_method(net, method, **presets.HYPERPARAMETERS)
    return net


def encoder_batch(preset, seed=0):
    """``((input_ids, attention_mask), labels)``: random tokens, the last quarter of each sample padding."""
    rng = np.random.default_rng(seed)
    shape = (preset.encoder_batch, preset.encoder_seq_len)
    input_ids = rng.integers(0, preset.encoder_vocab, size=shape)
    attention_mask = np.ones(shape)
    attention_mask[:, preset.encoder_seq_len - preset.encoder_seq_len // 4:] = 0
    labels = rng.integers(0, preset.num_labels, size=(preset.encoder_batch,))
    return ((Tensor(input_ids, ms.int32), Tensor(attention_mask, ms.int32)), Tensor(labels, ms.int32))


def encoder_loss():
    return nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")


def minilm_config(preset):
    """The :class:`BertConfig` of the comparison with HF PEFT (see :mod:`bench.minilm`)."""
    shape = minilm_shape(preset)
    return BertConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_layers=shape.num_layers,
                      num_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
                      max_position_embeddings=shape.max_position_embeddings)


def build_minilm(method, preset):
    """The example's classifier on all-MiniLM-L6-v2 (pretrained weights when the package is installed) with
    ``method`` applied as the example applies it, or frozen but for the floor's modules (``'floor'``, see
    :data:`bench.minilm.PEER_METHODS`)."""
    shape = minilm_shape(preset)
    net = BertClassifier(minilm_config(preset), shape.num_labels)
    model_dir = pretrained_model_dir(preset)
    if model_dir is not None:
        load_pretrained(net, read_pretrained(os.path.join(model_dir, "model.safetensors")))
    if method == "floor":
        freeze_modules(net, include=["*"], exclude=[f"{module}.*" for module in FLOOR_TRAINABLE["mindpet"]])
    else:
        apply_method(net, method, **presets.HYPERPARAMETERS)
    return net


def minilm_batch(preset):
    """``((input_ids, attention_mask), labels)``: the very arrays the PEFT side trains on."""
    input_ids, attention_mask, labels = minilm_batch_arrays(preset)
    return ((Tensor(input_ids, ms.int32), Tensor(attention_mask, ms.int32)), Tensor(labels, ms.int32))


def minilm_loss():
    """The example's loss."""
    return nn.CrossEntropyLoss()
