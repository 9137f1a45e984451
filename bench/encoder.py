"""The transformer-encoder workload: the BERT classifier of ``examples/bert``, randomly initialised."""
import mindspore as ms
import numpy as np
from bert.methods import apply_method, model_options
from bert.modeling import BertClassifier, BertConfig
from mindspore import Tensor, nn

from bench import presets


def encoder_config(preset):
    """The :class:`BertConfig` of ``preset``; positions cover exactly the benchmark's sequence length."""
    return BertConfig(vocab_size=preset.encoder_vocab, hidden_size=preset.encoder_hidden,
                      num_layers=preset.encoder_layers, num_heads=preset.encoder_heads,
                      intermediate_size=preset.encoder_intermediate, max_position_embeddings=preset.encoder_seq_len)


def build_encoder(method, preset):
    """A BERT classifier with ``method`` applied as the example applies it (every method but ``'full'`` also trains
    the head)."""
    net = BertClassifier(encoder_config(preset), preset.num_labels,
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
