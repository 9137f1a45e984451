"""The transformer-encoder workload: the BERT classifier of ``examples/bert``, randomly initialised."""
import os
import sys

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from bench import presets

# examples/ is not a package of the distribution; the benchmarks import the example model from the source tree.
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
if EXAMPLES_DIR not in sys.path:
    sys.path.insert(0, EXAMPLES_DIR)

from bert.methods import freeze_for_method  # noqa: E402  (needs EXAMPLES_DIR on sys.path)
from bert.modeling import BertClassifier, BertConfig  # noqa: E402

METHOD_OPTIONS = {"lora_rank": presets.LORA_RANK, "lora_alpha": presets.LORA_ALPHA,
                  "bottleneck_size": presets.ADAPTER_BOTTLENECK,
                  "reduction_factor": presets.LOW_RANK_REDUCTION_FACTOR, "low_rank_size": presets.LOW_RANK_SIZE,
                  "pre_seq_len": presets.PTUNING2_PRE_SEQ_LEN, "compute_dtype": ms.float32}


def encoder_config(preset):
    """The :class:`BertConfig` of ``preset``; positions cover exactly the benchmark's sequence length."""
    return BertConfig(vocab_size=preset.encoder_vocab, hidden_size=preset.encoder_hidden,
                      num_layers=preset.encoder_layers, num_heads=preset.encoder_heads,
                      intermediate_size=preset.encoder_intermediate, max_position_embeddings=preset.encoder_seq_len)


def build_encoder(method, preset):
    """A BERT classifier built and frozen for ``method`` (every method but ``'full'`` also trains the head)."""
    net = BertClassifier(encoder_config(preset), preset.num_labels, method=method, **METHOD_OPTIONS)
    freeze_for_method(net, method)
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
