"""A BERT encoder with a sentence-classification head, in MindSpore, written with plain ``nn.Dense`` layers.

The layers mirror Hugging Face ``BertModel`` so that a pretrained checkpoint maps onto them by renaming only
(see ``weights.py``): every Linear layer of the original is an ``nn.Dense`` here, weights ``(out, in)``. The
sentence vector is the mean of the last hidden states over the attention mask (the pooling of
sentence-transformers models such as all-MiniLM-L6-v2), and ``classifier`` is an ``nn.Dense`` on top.

Nothing here knows about LoRA or adapters: ``methods.py`` applies them to the built model by config, with
:func:`mindpet.get_delta_model`, as to any model nobody edited. P-Tuning v2 is the exception: its prefixes enter the
attention scores, so it is a model option (``prefix=PrefixOptions(...)``): a :class:`mindpet.delta.PrefixEncoder`
gives every layer ``pre_seq_len`` trainable key and value prefixes, which :class:`mindpet.delta.PrefixConcat`
prepends, and the mask gets ``pre_seq_len`` attending columns in front.

Prompt tuning and P-tuning v1 enter through an embeddings hook: :meth:`BertClassifier.set_virtual_tokens` gives the
embeddings a :class:`mindpet.delta.PromptTuningEmbedding` or :class:`mindpet.delta.PromptEncoder`, whose virtual
tokens are prepended to the word embeddings with :func:`mindpet.delta.prepend_virtual_tokens` before the position
and token-type embeddings are added, as PEFT prepends them to a Hugging Face BERT's ``inputs_embeds`` (so the virtual
tokens take positions ``0 .. n-1`` and the text moves up by ``n``). The mask is widened to attend them. The sentence
vector stays the mean over the text tokens only: the virtual tokens act through attention, and the pooled vector is
taken over the same positions as without them.

Example (random weights; ``weights.load_pretrained`` puts the all-MiniLM-L6-v2 weights in):

>>> import numpy as np
>>> import mindspore as ms
>>> from mindpet import LoraConfig, get_delta_model
>>> from bert.modeling import BertClassifier, BertConfig
>>> config = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
>>> net = get_delta_model(BertClassifier(config, num_labels=2), LoraConfig(target_modules=["query", "value"]))
>>> input_ids = ms.Tensor(np.array([[2, 7, 8, 3], [2, 9, 3, 0]]), ms.int32)
>>> attention_mask = ms.Tensor(np.array([[1, 1, 1, 1], [1, 1, 1, 0]]), ms.int32)
>>> net(input_ids, attention_mask).shape
(2, 2)
"""
import dataclasses
import json
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal

from mindpet.delta import PrefixConcat, PrefixEncoder, prepend_virtual_tokens

# Added to the attention scores of padding positions: exp(-10000) is 0 in float32, and, unlike -inf, a fully
# masked row cannot produce NaN.
MASKED_SCORE = -10000.0
# BERT's initializer_range: random-init weights look like a pretrained model's, for benchmarks without weights.
INIT_STDDEV = 0.02
# The smallest mask sum mean pooling divides by (sentence-transformers clamps at the same value).
MIN_MASK_SUM = 1e-9


@dataclasses.dataclass
class BertConfig:
    """The shape of a BERT encoder. Defaults are those of all-MiniLM-L6-v2.

    Args:
        vocab_size (int): rows of the word-embedding table. Default: 30522.
        hidden_size (int): width of every hidden state. Default: 384.
        num_layers (int): transformer layers. Default: 6.
        num_heads (int): attention heads; must divide `hidden_size`. Default: 12.
        intermediate_size (int): width of the feed-forward layer. Default: 1536.
        max_position_embeddings (int): longest sequence the position table covers. Default: 512.
        type_vocab_size (int): rows of the token-type table. Default: 2.
        layer_norm_eps (float): LayerNorm epsilon. Default: 1e-12.
        hidden_dropout (float): dropout on embeddings and sublayer outputs while training. Default: 0.1.
        attention_dropout (float): dropout on attention probabilities while training. Default: 0.1.

    Raises:
        ValueError: If `num_heads` does not divide `hidden_size`.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"For 'BertConfig', the argument 'num_heads' must divide hidden_size "
                             f"({self.hidden_size}), but got {self.num_heads}.")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    @classmethod
    def from_json(cls, path):
        """Read a Hugging Face BERT ``config.json``.

        Args:
            path (str): Path of the file.

        Returns:
            BertConfig.

        Raises:
            ValueError: If the file describes an activation other than exact GELU or a position embedding other
                than absolute, which this encoder does not implement.
        """
        with open(path, encoding="utf-8") as config_file:
            hf_config = json.load(config_file)
        if hf_config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"For 'BertConfig.from_json', '{path}' has hidden_act {hf_config['hidden_act']!r}, "
                             f"but only 'gelu' (exact, erf-based) is implemented.")
        if hf_config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"For 'BertConfig.from_json', '{path}' has position_embedding_type "
                             f"{hf_config['position_embedding_type']!r}, but only 'absolute' is implemented.")
        return cls(vocab_size=hf_config["vocab_size"], hidden_size=hf_config["hidden_size"],
                   num_layers=hf_config["num_hidden_layers"], num_heads=hf_config["num_attention_heads"],
                   intermediate_size=hf_config["intermediate_size"],
                   max_position_embeddings=hf_config["max_position_embeddings"],
                   type_vocab_size=hf_config["type_vocab_size"], layer_norm_eps=hf_config["layer_norm_eps"],
                   hidden_dropout=hf_config["hidden_dropout_prob"],
                   attention_dropout=hf_config["attention_probs_dropout_prob"])


@dataclasses.dataclass(frozen=True)
class PrefixOptions:
    """The P-Tuning v2 prefix encoder of a :class:`BertClassifier`.

    Args:
        pre_seq_len (int): prefix positions per layer. Default: 16.
        prefix_projection (bool): whether an MLP reparameterizes the prefixes. Default: ``False``.
        projection_dim (int): hidden size of that MLP. Default: 512.
    """

    pre_seq_len: int = 16
    prefix_projection: bool = False
    projection_dim: int = 512


def _dense(in_channels, out_channels):
    return nn.Dense(in_channels, out_channels, weight_init=TruncatedNormal(INIT_STDDEV))


def _layer_norm(config):
    return nn.LayerNorm((config.hidden_size,), epsilon=config.layer_norm_eps)


class BertEmbeddings(nn.Cell):
    """Word, position and token-type embeddings, summed, then LayerNorm and dropout. All tokens get type 0.

    ``virtual_tokens`` (None until :meth:`BertClassifier.set_virtual_tokens`) is the embeddings hook: its output is
    prepended to the word embeddings, and the mask widened, before positions are added.
    """

    def __init__(self, config):
        super().__init__()
        init = Normal(INIT_STDDEV)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, embedding_table=init)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                embedding_table=init)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size, embedding_table=init)
        self.layer_norm = _layer_norm(config)
        self.dropout = nn.Dropout(p=config.hidden_dropout)
        self.virtual_tokens = None

    def construct(self, input_ids, attention_mask):
        words = self.word_embeddings(input_ids)
        if self.virtual_tokens is not None:
            words, attention_mask = prepend_virtual_tokens(words, attention_mask,
                                                           self.virtual_tokens(input_ids.shape[0]))
        batch_size, seq_length, _ = words.shape
        hidden = words + self.position_embeddings(ops.arange(0, seq_length, dtype=ms.int32))
        hidden = hidden + self.token_type_embeddings(ops.zeros((batch_size, seq_length), ms.int32))
        return self.dropout(self.layer_norm(hidden)), attention_mask


class BertSelfAttention(nn.Cell):
    """Multi-head scaled dot-product attention; with P-Tuning v2, the layer's prefixes join the keys and values."""

    def __init__(self, config, use_prefix):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.query = _dense(config.hidden_size, config.hidden_size)
        self.key = _dense(config.hidden_size, config.hidden_size)
        self.value = _dense(config.hidden_size, config.hidden_size)
        self.use_prefix = use_prefix
        # The mask reaching attention is additive, so a prefix column that may be attended holds 0.
        self.prefix_concat = PrefixConcat(attend_value=0) if self.use_prefix else None
        self.dropout = nn.Dropout(p=config.attention_dropout)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _split_heads(self, x):
        batch, seq_length, _ = x.shape
        return ops.transpose(ops.reshape(x, (batch, seq_length, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def construct(self, hidden, additive_mask, prefix_key_value=None):
        query = self._split_heads(self.query(hidden))
        key = self._split_heads(self.key(hidden))
        value = self._split_heads(self.value(hidden))
        if self.use_prefix:
            key, value, additive_mask = self.prefix_concat(key, value, prefix_key_value, additive_mask)
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) * self.scale + additive_mask
        probs = self.dropout(ops.softmax(scores, axis=-1))
        context = ops.transpose(ops.matmul(probs, value), (0, 2, 1, 3))
        return ops.reshape(context, hidden.shape)


class BertSublayerOutput(nn.Cell):
    """``LayerNorm(residual + dropout(dense(x)))``."""

    def __init__(self, config, in_channels):
        super().__init__()
        self.dense = _dense(in_channels, config.hidden_size)
        self.dropout = nn.Dropout(p=config.hidden_dropout)
        self.layer_norm = _layer_norm(config)

    def construct(self, x, residual):
        return self.layer_norm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Cell):
    def __init__(self, config, use_prefix):
        super().__init__()
        self.self_attention = BertSelfAttention(config, use_prefix)
        self.output = BertSublayerOutput(config, config.hidden_size)

    def construct(self, hidden, additive_mask, prefix_key_value=None):
        return self.output(self.self_attention(hidden, additive_mask, prefix_key_value), hidden)


class BertIntermediate(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.dense = _dense(config.hidden_size, config.intermediate_size)
        self.activation = nn.GELU(approximate=False)

    def construct(self, hidden):
        return self.activation(self.dense(hidden))


class BertLayer(nn.Cell):
    """One post-LN transformer layer: attention block, then feed-forward block."""

    def __init__(self, config, use_prefix):
        super().__init__()
        self.attention = BertAttention(config, use_prefix)
        self.intermediate = BertIntermediate(config)
        self.output = BertSublayerOutput(config, config.intermediate_size)

    def construct(self, hidden, additive_mask, prefix_key_value=None):
        hidden = self.attention(hidden, additive_mask, prefix_key_value)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Cell):
    """The layers, plus the P-Tuning v2 prefix encoder that feeds all of them."""

    def __init__(self, config, prefix):
        super().__init__()
        self.use_prefix = prefix is not None
        self.layer = nn.CellList([BertLayer(config, self.use_prefix) for _ in range(config.num_layers)])
        self.prefix_encoder = None
        if self.use_prefix:
            self.prefix_encoder = PrefixEncoder(prefix.pre_seq_len, config.num_layers, config.num_heads,
                                                config.head_dim, prefix_projection=prefix.prefix_projection,
                                                projection_dim=prefix.projection_dim,
                                                dropout_prob=config.hidden_dropout)

    def construct(self, hidden, additive_mask):
        if self.use_prefix:
            layer_prefixes = self.prefix_encoder(hidden.shape[0])
            for index, layer in enumerate(self.layer):
                hidden = layer(hidden, additive_mask, layer_prefixes[index])
        else:
            for layer in self.layer:
                hidden = layer(hidden, additive_mask)
        return hidden


class BertModel(nn.Cell):
    """Embeddings and encoder: ``(input_ids, attention_mask)`` to the last hidden states ``(batch, seq, hidden)``
    of the text tokens (virtual tokens attend and are attended, but their own states are not returned)."""

    def __init__(self, config, prefix):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, prefix)

    def construct(self, input_ids, attention_mask):
        hidden, attention_mask = self.embeddings(input_ids, attention_mask)
        mask = ops.cast(attention_mask, ms.float32)
        # (batch, 1, 1, seq): broadcast over heads and queries; 0 where a key may be attended.
        additive_mask = ops.reshape((1.0 - mask) * MASKED_SCORE, (mask.shape[0], 1, 1, mask.shape[1]))
        hidden = self.encoder(hidden, additive_mask)
        if self.embeddings.virtual_tokens is not None:
            # The virtual tokens lead the sequence; the text's hidden states follow them.
            hidden = hidden[:, hidden.shape[1] - input_ids.shape[1]:]
        return hidden


class BertClassifier(nn.Cell):
    """BERT, mean pooling over the attention mask, dropout and a linear ``classifier``.

    Args:
        config (BertConfig): The encoder's shape.
        num_labels (int): Number of classes.
        prefix (PrefixOptions, optional): Add a P-Tuning v2 prefix encoder. Default: ``None``.

    Inputs:
        - **input_ids** (Tensor) - int32 token ids, shape :math:`(batch, seq\\_length)`.
        - **attention_mask** (Tensor) - 1 for tokens, 0 for padding, shape :math:`(batch, seq\\_length)`.

    Outputs:
        Tensor of shape :math:`(batch, num\\_labels)`, float32 logits.
    """

    def __init__(self, config, num_labels, prefix=None):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, prefix)
        self.dropout = nn.Dropout(p=config.hidden_dropout)
        self.classifier = nn.Dense(config.hidden_size, num_labels, weight_init=TruncatedNormal(INIT_STDDEV))

    def set_virtual_tokens(self, cell):
        """Prepend the virtual tokens of `cell` to every input, from the next compile on (call it before the first).

        Args:
            cell (Union[PromptTuningEmbedding, PromptEncoder]): called with the batch size, it returns
                ``(batch, num_virtual_tokens, hidden_size)``. Its parameters are named by their path in this model,
                ``bert.embeddings.virtual_tokens.<name>``, so delta checkpoints hold full names.

        Raises:
            TypeError: If `cell` is not a ``mindspore.nn.Cell``.
            ValueError: If its ``token_dim`` is not the hidden size.
        """
        if not isinstance(cell, nn.Cell):
            raise TypeError(f"For 'BertClassifier.set_virtual_tokens', the argument 'cell' must be a "
                            f"mindspore.nn.Cell, but got {type(cell).__name__}.")
        if getattr(cell, "token_dim", None) != self.config.hidden_size:
            raise ValueError(f"For 'BertClassifier.set_virtual_tokens', the argument 'cell' must have token_dim "
                             f"{self.config.hidden_size}, but got {getattr(cell, 'token_dim', None)}.")
        self.bert.embeddings.virtual_tokens = cell
        path = "bert.embeddings.virtual_tokens"
        for local_name, param in cell.parameters_and_names():
            param.name = f"{path}.{local_name}"

    def construct(self, input_ids, attention_mask):
        hidden = self.bert(input_ids, attention_mask)
        mask = ops.expand_dims(ops.cast(attention_mask, hidden.dtype), -1)
        summed = ops.reduce_sum(hidden * mask, 1)
        pooled = summed / ops.clamp(ops.reduce_sum(mask, 1), min=MIN_MASK_SUM)
        return self.classifier(self.dropout(pooled))
