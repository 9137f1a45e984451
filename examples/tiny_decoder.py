"""A small decoder-only transformer written with MindSpore ops, ready for Prefix-Tuning and P-Tuning v2.

It shows where prefixes go in a real attention block: each :class:`CausalSelfAttention` prepends a prefix to its
key and value and widens its causal mask with :class:`mindpet.delta.prefix_attention.PrefixConcat`. Prefixes come
from one of two places:

- Prefix-Tuning: ``TinyDecoder(prefix_layers=[PrefixLayer(...), ...])``, one ``PrefixLayer`` per block, owned by
  that block's attention (the MindPet manual's layout).
- P-Tuning v2: :class:`TinyDecoderWithPTuning2` owns one ``PrefixEncoder``, calls it with the batch size and passes
  layer ``i`` its part through ``TinyDecoder.construct(..., layer_prefixes=...)`` (the manual's ChatGLM2 layout).

Without prefixes the parameter names are those of the plain model, so a base checkpoint loads into every variant.
The tests and the docs use it, with the task helpers at the end of this file. It runs in GRAPH and PYNATIVE mode.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.ops import operations as P

from mindpet.delta import PrefixEncoder
from mindpet.delta import PrefixConcat

VOCAB_SIZE, HIDDEN_SIZE, NUM_HEADS, NUM_LAYERS, SEQ_LENGTH = 32, 32, 2, 2, 8
# Added to the scores of masked positions; large enough to zero their softmax weight in float32.
MASKED_SCORE = -1e9


class CausalSelfAttention(nn.Cell):
    """Multi-head causal self-attention with Dense q/k/v/output projections and an optional PrefixLayer."""

    def __init__(self, hidden_size, num_heads, prefix_layer=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Dense(hidden_size, hidden_size)
        self.key = nn.Dense(hidden_size, hidden_size)
        self.value = nn.Dense(hidden_size, hidden_size)
        self.output = nn.Dense(hidden_size, hidden_size)
        self.prefix_layer = prefix_layer
        self.prefix_concat = PrefixConcat()
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.reshape = P.Reshape()
        self.transpose = P.Transpose()
        self.scores_matmul = P.BatchMatMul(transpose_b=True)
        self.context_matmul = P.BatchMatMul()
        self.softmax = nn.Softmax(axis=-1)

    def _split_heads(self, x):
        batch, seq_length, _ = x.shape
        x = self.reshape(x, (batch, seq_length, self.num_heads, self.head_dim))
        return self.transpose(x, (0, 2, 1, 3))

    def construct(self, x, attention_mask, layer_prefix=None):
        """x: (batch, seq, hidden); attention_mask: (batch, 1, seq, seq) with 1 = attend; layer_prefix: optional
        (2, batch, heads, prefix_length, head_dim) from a PrefixEncoder."""
        batch, seq_length, hidden_size = x.shape
        query = self._split_heads(self.query(x))
        key = self._split_heads(self.key(x))
        value = self._split_heads(self.value(x))
        if self.prefix_layer is not None:
            layer_prefix = self.prefix_layer(batch)
        if layer_prefix is not None:
            key, value, attention_mask = self.prefix_concat(key, value, layer_prefix, attention_mask)
        scores = self.scores_matmul(query, key) * self.scale
        scores = scores + (1.0 - attention_mask) * MASKED_SCORE
        context = self.context_matmul(self.softmax(scores), value)
        context = self.reshape(self.transpose(context, (0, 2, 1, 3)), (batch, seq_length, hidden_size))
        return self.output(context)


class DecoderBlock(nn.Cell):
    """Pre-LayerNorm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, hidden_size, num_heads, prefix_layer=None):
        super().__init__()
        self.attention_norm = nn.LayerNorm((hidden_size,))
        self.attention = CausalSelfAttention(hidden_size, num_heads, prefix_layer)
        self.mlp_norm = nn.LayerNorm((hidden_size,))
        self.mlp_in = nn.Dense(hidden_size, 4 * hidden_size, activation="gelu")
        self.mlp_out = nn.Dense(4 * hidden_size, hidden_size)

    def construct(self, x, attention_mask, layer_prefix=None):
        x = x + self.attention(self.attention_norm(x), attention_mask, layer_prefix)
        return x + self.mlp_out(self.mlp_in(self.mlp_norm(x)))


class TinyDecoder(nn.Cell):
    """Token and position embeddings, ``num_layers`` decoder blocks, a final LayerNorm and an LM head.

    Args:
        vocab_size, hidden_size, num_heads, num_layers, seq_length (int): model sizes; ``seq_length`` is the
            longest input.
        prefix_layers (list[PrefixLayer], optional): one ``PrefixLayer`` per block for Prefix-Tuning, built with
            ``num_heads`` and ``hidden_dim=hidden_size``.

    Inputs:
        - **input_ids** (Tensor) - int32 ``(batch, seq)``, ``seq <= seq_length``.
        - **padding_mask** (Tensor, optional) - ``(batch, seq)``, 1 for real tokens and 0 for padding.
        - **layer_prefixes** (tuple[Tensor], optional) - P-Tuning v2 prefixes, one
          ``(2, batch, num_heads, prefix_length, head_dim)`` tensor per block.

    Outputs:
        Logits of shape ``(batch, seq, vocab_size)``, float32.
    """

    def __init__(self, vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, num_heads=NUM_HEADS, num_layers=NUM_LAYERS,
                 seq_length=SEQ_LENGTH, prefix_layers=None):
        super().__init__()
        if prefix_layers is not None and len(prefix_layers) != num_layers:
            raise ValueError(f"TinyDecoder needs one PrefixLayer per block ({num_layers}), got {len(prefix_layers)}.")
        self.num_layers = num_layers
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(seq_length, hidden_size)
        self.positions = Tensor(np.arange(seq_length)[None, :], ms.int32)
        self.causal_mask = Tensor(np.tril(np.ones((seq_length, seq_length)))[None, None], ms.float32)
        self.blocks = nn.CellList([
            DecoderBlock(hidden_size, num_heads, None if prefix_layers is None else prefix_layers[index])
            for index in range(num_layers)])
        self.final_norm = nn.LayerNorm((hidden_size,))
        self.lm_head = nn.Dense(hidden_size, vocab_size, has_bias=False)

    def construct(self, input_ids, padding_mask=None, layer_prefixes=None):
        seq_length = input_ids.shape[1]
        x = self.embedding(input_ids) + self.position_embedding(self.positions[:, :seq_length])
        # (1, 1, seq, seq), or (batch, 1, seq, seq) once padded keys are masked too.
        attention_mask = self.causal_mask[:, :, :seq_length, :seq_length]
        if padding_mask is not None:
            attention_mask = attention_mask * padding_mask.astype(ms.float32)[:, None, None, :]
        for index in range(self.num_layers):
            layer_prefix = None
            if layer_prefixes is not None:
                layer_prefix = layer_prefixes[index]
            x = self.blocks[index](x, attention_mask, layer_prefix)
        return self.lm_head(self.final_norm(x))


class TinyDecoderWithPTuning2(TinyDecoder):
    """The TinyDecoder with a P-Tuning v2 ``PrefixEncoder`` that feeds every block.

    Args:
        pre_seq_len (int): prefix positions per block.
        prefix_projection (bool): whether the encoder reparameterizes its table with an MLP. Default: ``False``.
        projection_dim (int): that MLP's hidden size. Default: 64.
        **model_sizes: the :class:`TinyDecoder` sizes.
    """

    def __init__(self, pre_seq_len, prefix_projection=False, projection_dim=64, **model_sizes):
        super().__init__(**model_sizes)
        hidden_size = model_sizes.get("hidden_size", HIDDEN_SIZE)
        num_heads = model_sizes.get("num_heads", NUM_HEADS)
        self.prefix_encoder = PrefixEncoder(pre_seq_len, self.num_layers, num_heads, hidden_size // num_heads,
                                            prefix_projection=prefix_projection, projection_dim=projection_dim)

    def construct(self, input_ids, padding_mask=None, layer_prefixes=None):
        if layer_prefixes is None:
            layer_prefixes = self.prefix_encoder(input_ids.shape[0])
        return super().construct(input_ids, padding_mask, layer_prefixes)


class TokenCrossEntropy(nn.Cell):
    """Mean cross entropy of ``(batch, seq, vocab)`` logits against ``(batch, seq)`` int32 labels."""

    def __init__(self):
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss()

    def construct(self, logits, labels):
        return self.cross_entropy(logits.reshape((-1, logits.shape[-1])), labels.reshape((-1,)))


def cycle_task(samples, seed, num_cycles=1, vocab_size=VOCAB_SIZE, seq_length=SEQ_LENGTH, cycle_length=8):
    """Next-token data: sequences that walk fixed random cycles through the vocabulary.

    ``seed`` draws ``num_cycles`` cycles, each visiting ``cycle_length`` tokens in a fixed order; every sequence
    follows one of them from a random start. With one cycle the next token is a fixed function of the current one,
    and a model never trained on that cycle starts far above 0 loss; with several, the model has to tell from the
    context which cycle it is on.

    Returns:
        ``(input_ids, labels)``, int32 arrays of shape ``(samples, seq_length)``; labels are inputs shifted by one.
    """
    rng = np.random.default_rng(seed)
    cycles = np.stack([rng.permutation(vocab_size)[:cycle_length] for _ in range(num_cycles)])
    chosen = rng.integers(0, num_cycles, size=samples)
    starts = rng.integers(0, cycle_length, size=samples)
    positions = (starts[:, None] + np.arange(seq_length + 1)[None, :]) % cycle_length
    tokens = cycles[chosen[:, None], positions].astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def mean_token_loss(net, input_ids, labels):
    """The network's mean next-token cross entropy on the given arrays, in inference mode."""
    net.set_train(False)
    logits = net(Tensor(input_ids)).asnumpy().astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(-np.take_along_axis(log_probs, labels[..., None].astype(np.int64), axis=-1).mean())
