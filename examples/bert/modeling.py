"""A BERT encoder with a sentence-classification head, in MindSpore, with mindpet's delta methods built in.

The layers mirror Hugging Face ``BertModel`` so that a pretrained checkpoint maps onto them by renaming only
(see ``weights.py``): every Linear layer of the original is an ``nn.Dense`` here, weights ``(out, in)``. The
sentence vector is the mean of the last hidden states over the attention mask (the pooling of
sentence-transformers models such as all-MiniLM-L6-v2), and ``classifier`` is an ``nn.Dense`` on top.

``method`` decides, in the model source, what the delta method changes, as a user of mindpet would write it:

- ``'full'``, ``'frozen_head'``, ``'bitfit'``: the plain model (the difference is only what is frozen, see
  ``methods.py``).
- ``'lora'``, ``'lora_rdrop'``: the query and value projections are :class:`mindpet.delta.LoRADense` instead of
  ``nn.Dense`` (R-Drop changes the loss, not the model).
- ``'adapter'``, ``'low_rank_adapter'``: an :class:`mindpet.delta.AdapterLayer` (or
  :class:`mindpet.delta.LowRankAdapterLayer`) after the attention output projection and after the feed-forward
  output projection of every layer, before the residual sum and LayerNorm (Houlsby et al., 2019).
- ``'ptuning2'``: one :class:`mindpet.delta.PrefixEncoder` gives every layer ``pre_seq_len`` trainable key and
  value prefixes, which :class:`mindpet.delta.PrefixConcat` prepends; the mask gets ``pre_seq_len`` attending
  columns in front.

Example (random weights; ``weights.load_pretrained`` puts the all-MiniLM-L6-v2 weights in):

>>> import numpy as np
>>> import mindspore as ms
>>> from bert.modeling import BertClassifier, BertConfig
>>> config = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
>>> net = BertClassifier(config, num_labels=2, method="lora", lora_rank=4)
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

from mindpet.delta import AdapterLayer, LoRADense, LowRankAdapterLayer, PrefixConcat, PrefixEncoder

METHOD_NAMES = ("full", "frozen_head", "lora", "adapter", "low_rank_adapter", "bitfit", "ptuning2", "lora_rdrop")
LORA_METHODS = ("lora", "lora_rdrop")
ADAPTER_METHODS = ("adapter", "low_rank_adapter")
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
class MethodOptions:
    """The delta method of a :class:`BertClassifier` and the sizes of its cells (unused sizes are ignored)."""

    method: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    bottleneck_size: int = 64
    reduction_factor: int = 8
    low_rank_size: int = 1
    pre_seq_len: int = 16
    prefix_projection: bool = False
    projection_dim: int = 512
    compute_dtype: ms.dtype = ms.float32

    def __post_init__(self):
        if self.method not in METHOD_NAMES:
            raise ValueError(f"For 'BertClassifier', the argument 'method' must be one of {METHOD_NAMES}, "
                             f"but got {self.method!r}.")


def _dense(in_channels, out_channels, options=None, activation=None):
    """An ``nn.Dense``, or a LoRADense when ``options`` asks for LoRA (only query and value pass ``options``)."""
    weight_init = TruncatedNormal(INIT_STDDEV)
    if options is not None and options.method in LORA_METHODS:
        return LoRADense(in_channels, out_channels, lora_rank=options.lora_rank, lora_alpha=options.lora_alpha,
                         lora_dropout=options.lora_dropout, compute_dtype=options.compute_dtype,
                         weight_init=weight_init, activation=activation)
    return nn.Dense(in_channels, out_channels, weight_init=weight_init, activation=activation)


def _adapter(hidden_size, options):
    """The adapter cell that follows a sublayer's output projection, or None when the method has none."""
    if options.method == "adapter":
        return AdapterLayer(hidden_size, bottleneck_size=options.bottleneck_size,
                            compute_dtype=options.compute_dtype)
    if options.method == "low_rank_adapter":
        return LowRankAdapterLayer(hidden_size, reduction_factor=options.reduction_factor,
                                   low_rank_size=options.low_rank_size, compute_dtype=options.compute_dtype)
    return None


def _layer_norm(config):
    return nn.LayerNorm((config.hidden_size,), epsilon=config.layer_norm_eps)


class BertEmbeddings(nn.Cell):
    """Word, position and token-type embeddings, summed, then LayerNorm and dropout. All tokens get type 0."""

    def __init__(self, config):
        super().__init__()
        init = Normal(INIT_STDDEV)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, embedding_table=init)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                embedding_table=init)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size, embedding_table=init)
        self.layer_norm = _layer_norm(config)
        self.dropout = nn.Dropout(p=config.hidden_dropout)

    def construct(self, input_ids):
        positions = ops.arange(0, input_ids.shape[1], dtype=ms.int32)
        hidden = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        hidden = hidden + self.token_type_embeddings(ops.zeros_like(input_ids))
        return self.dropout(self.layer_norm(hidden))


class BertSelfAttention(nn.Cell):
    """Multi-head scaled dot-product attention; with P-Tuning v2, the layer's prefixes join the keys and values."""

    def __init__(self, config, options):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.query = _dense(config.hidden_size, config.hidden_size, options)
        self.key = _dense(config.hidden_size, config.hidden_size)
        self.value = _dense(config.hidden_size, config.hidden_size, options)
        self.use_prefix = options.method == "ptuning2"
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
    """``LayerNorm(residual + adapter(dropout(dense(x))))``; the adapter exists only for adapter methods."""

    def __init__(self, config, in_channels, options):
        super().__init__()
        self.dense = _dense(in_channels, config.hidden_size)
        self.dropout = nn.Dropout(p=config.hidden_dropout)
        self.adapter = _adapter(config.hidden_size, options)
        self.use_adapter = self.adapter is not None
        self.layer_norm = _layer_norm(config)

    def construct(self, x, residual):
        hidden = self.dropout(self.dense(x))
        if self.use_adapter:
            hidden = self.adapter(hidden)
        return self.layer_norm(hidden + residual)


class BertAttention(nn.Cell):
    def __init__(self, config, options):
        super().__init__()
        self.self_attention = BertSelfAttention(config, options)
        self.output = BertSublayerOutput(config, config.hidden_size, options)

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

    def __init__(self, config, options):
        super().__init__()
        self.attention = BertAttention(config, options)
        self.intermediate = BertIntermediate(config)
        self.output = BertSublayerOutput(config, config.intermediate_size, options)

    def construct(self, hidden, additive_mask, prefix_key_value=None):
        hidden = self.attention(hidden, additive_mask, prefix_key_value)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Cell):
    """The layers, plus the P-Tuning v2 prefix encoder that feeds all of them."""

    def __init__(self, config, options):
        super().__init__()
        self.layer = nn.CellList([BertLayer(config, options) for _ in range(config.num_layers)])
        self.use_prefix = options.method == "ptuning2"
        self.prefix_encoder = None
        if self.use_prefix:
            self.prefix_encoder = PrefixEncoder(options.pre_seq_len, config.num_layers, config.num_heads,
                                                config.head_dim, prefix_projection=options.prefix_projection,
                                                projection_dim=options.projection_dim,
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
    """Embeddings and encoder: ``(input_ids, attention_mask)`` to the last hidden states ``(batch, seq, hidden)``."""

    def __init__(self, config, options):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, options)

    def construct(self, input_ids, attention_mask):
        mask = ops.cast(attention_mask, ms.float32)
        # (batch, 1, 1, seq): broadcast over heads and queries; 0 where a key may be attended.
        additive_mask = ops.reshape((1.0 - mask) * MASKED_SCORE, (mask.shape[0], 1, 1, mask.shape[1]))
        return self.encoder(self.embeddings(input_ids), additive_mask)


class BertClassifier(nn.Cell):
    """BERT, mean pooling over the attention mask, dropout and a linear ``classifier``.

    Args:
        config (BertConfig): The encoder's shape.
        num_labels (int): Number of classes.
        method (str): One of ``'full'``, ``'frozen_head'``, ``'lora'``, ``'adapter'``, ``'low_rank_adapter'``,
            ``'bitfit'``, ``'ptuning2'``, ``'lora_rdrop'``; what it changes is described in the module docstring.
            Default: ``'full'``.
        lora_rank (int): LoRA rank. Default: 8.
        lora_alpha (Union[int, float]): LoRA scale numerator. Default: 16.
        lora_dropout (float): dropout on the LoRA branch input. Default: 0.0.
        bottleneck_size (int): width of each AdapterLayer. Default: 64.
        reduction_factor (int): each LowRankAdapterLayer is ``hidden_size // reduction_factor`` wide. Default: 8.
        low_rank_size (int): rank of the LowRankAdapterLayer factors. Default: 1.
        pre_seq_len (int): P-Tuning v2 prefix positions per layer. Default: 16.
        prefix_projection (bool): whether an MLP reparameterizes the P-Tuning v2 prefixes. Default: ``False``.
        projection_dim (int): hidden size of that MLP. Default: 512.
        compute_dtype (mindspore.dtype): matmul dtype of the delta cells. Default: ``mindspore.float32``.

    Inputs:
        - **input_ids** (Tensor) - int32 token ids, shape :math:`(batch, seq\\_length)`.
        - **attention_mask** (Tensor) - 1 for tokens, 0 for padding, shape :math:`(batch, seq\\_length)`.

    Outputs:
        Tensor of shape :math:`(batch, num\\_labels)`, float32 logits.

    Raises:
        ValueError: If `method` is not one of the names above, or a delta cell rejects its size.
    """

    def __init__(self, config, num_labels, method="full", lora_rank=8, lora_alpha=16, lora_dropout=0.0,
                 bottleneck_size=64, reduction_factor=8, low_rank_size=1, pre_seq_len=16, prefix_projection=False,
                 projection_dim=512, compute_dtype=ms.float32):
        super().__init__()
        self.config = config
        self.options = MethodOptions(method, lora_rank, lora_alpha, lora_dropout, bottleneck_size, reduction_factor,
                                     low_rank_size, pre_seq_len, prefix_projection, projection_dim, compute_dtype)
        self.bert = BertModel(config, self.options)
        self.dropout = nn.Dropout(p=config.hidden_dropout)
        self.classifier = nn.Dense(config.hidden_size, num_labels, weight_init=TruncatedNormal(INIT_STDDEV))

    @property
    def method(self):
        return self.options.method

    def construct(self, input_ids, attention_mask):
        hidden = self.bert(input_ids, attention_mask)
        mask = ops.expand_dims(ops.cast(attention_mask, hidden.dtype), -1)
        summed = ops.reduce_sum(hidden * mask, 1)
        pooled = summed / ops.clamp(ops.reduce_sum(mask, 1), min=MIN_MASK_SUM)
        return self.classifier(self.dropout(pooled))
