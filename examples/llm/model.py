"""A Llama causal language model in MindSpore, written with plain ``nn.Dense`` layers (SmolLM2-135M's architecture).

The cells carry Hugging Face's names, so ``target_modules`` read as they do for a Hugging Face Llama:
``model.embed_tokens``, ``model.layers.<i>.self_attn.{q_proj,k_proj,v_proj,o_proj}``,
``model.layers.<i>.mlp.{gate_proj,up_proj,down_proj}``, the RMSNorms ``model.layers.<i>.input_layernorm``,
``model.layers.<i>.post_attention_layernorm`` and ``model.norm``, and ``lm_head``, which shares the embedding table
when the word embeddings are tied. Every projection is an ``nn.Dense`` without bias holding ``(out, in)`` weights.

The block is pre-norm: ``h = x + o_proj(attention(RMSNorm(x)))``, ``y = h + down_proj(silu(gate_proj(n)) * up_proj(n))``
with ``n = RMSNorm(h)``. ``RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight``. Attention is causal, with rotary position
embeddings in Hugging Face's "rotate half" layout (dimension ``j`` of a head turns with dimension ``j + head_dim/2``
by ``position * rope_theta^(-2j/head_dim)``) and grouped-query attention: query head ``h`` reads key/value head
``h // (num_heads // num_kv_heads)``. ``gguf_loader.py`` converts llama.cpp's adjacent-pair layout to this one.

Nothing here knows about LoRA, IA3 or QLoRA: apply them to the built model by config, as to any model nobody edited
(``get_delta_model(model, LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
"up_proj", "down_proj"]))``; ``quantize_base(model, target_modules=[...])`` first for QLoRA). The prompt-side
methods enter through hooks, to be set before the first call (that is, before the first compile):

- Prompt tuning and P-tuning v1: :meth:`LlamaForCausalLM.set_virtual_tokens` with a
  :class:`mindpet.delta.PromptTuningEmbedding` or :class:`mindpet.delta.PromptEncoder` (``token_dim=hidden_size``).
  Its virtual tokens are prepended to the token embeddings (positions ``0 .. n-1``, the text moves up by ``n``, as
  PEFT does it) and the logits of the text positions only are returned, so labels line up with ``input_ids``.
- Prefix tuning: :meth:`LlamaForCausalLM.set_prefix_layers` with one :class:`mindpet.delta.PrefixLayer` per layer,
  built with ``num_heads=num_kv_heads`` and ``hidden_dim=num_kv_heads * head_dim`` (the prefixes are keys and values,
  which have ``num_kv_heads`` heads under GQA).
- P-Tuning v2: :meth:`LlamaForCausalLM.set_prefix_encoder` with a :class:`mindpet.delta.PrefixEncoder` built with
  ``num_layers``, ``num_heads=num_kv_heads`` and ``kv_channels=head_dim``.

Prefix keys are not rotated and the text keeps positions ``0 .. seq-1``; every query attends every prefix position.
The parameters of a hooked cell are renamed to their path in this model (e.g.
``model.layers.0.self_attn.prefix_layer.mindpet_delta_prefix_embedding.embedding_table``), so ``freeze_delta`` and
delta checkpoints see full names. Generation (``generate.py``) works with every hook.

Inputs of :class:`LlamaForCausalLM`: ``input_ids`` (batch, seq) int32 and an optional ``attention_mask`` (batch, seq)
with 1 for tokens and 0 for right padding. With ``key_caches``/``value_caches`` (one fixed-size
``(batch, num_kv_heads, cache_length, head_dim)`` tensor per layer, see :meth:`LlamaForCausalLM.empty_cache`) the
keys and values of the new tokens are written into the caches and attention reads them: without ``cache_position``
the tokens start the sequence (a prefill, which also prepends virtual tokens); with it they continue the sequence at
that position (a decode step). The caches come back with the logits.

Example (random weights; ``gguf_loader.load_smollm2`` builds SmolLM2-135M-Instruct with its weights):

>>> import numpy as np
>>> import mindspore as ms
>>> from llm.model import LlamaConfig, LlamaForCausalLM
>>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
...                      num_kv_heads=2, max_position=64)
>>> model = LlamaForCausalLM(config)
>>> model(ms.Tensor(np.array([[1, 5, 9, 2]]), ms.int32)).shape
(1, 4, 64)
"""
import dataclasses

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal

from mindpet.delta import PrefixConcat, prepend_virtual_tokens

# Added to the scores of positions a query may not attend: exp(-1e9) is exactly 0 in float32, and, unlike -inf, a
# row with nothing to attend (a padding query) gives a finite uniform softmax instead of NaN.
MASKED_SCORE = -1e9
# Hugging Face Llama's initializer_range, for random weights of a realistic scale.
INIT_STDDEV = 0.02


@dataclasses.dataclass
class LlamaConfig:
    """The shape of a Llama model. Defaults are those of SmolLM2-135M.

    Args:
        vocab_size (int): rows of the token-embedding table. Default: 49152.
        hidden_size (int): width of the hidden states. Default: 576.
        intermediate_size (int): width of the SwiGLU feed-forward layer. Default: 1536.
        num_layers (int): decoder layers. Default: 30.
        num_heads (int): query heads; must divide `hidden_size`. Default: 9.
        num_kv_heads (int): key/value heads (grouped-query attention); must divide `num_heads`. Default: 3.
        rope_theta (float): base of the rotary frequencies. Default: 100000.0.
        rms_norm_eps (float): epsilon of every RMSNorm. Default: 1e-5.
        tie_word_embeddings (bool): whether ``lm_head`` reuses the embedding table. Default: ``True``.
        max_position (int): the longest sequence the rotary tables cover (virtual tokens included). Default: 8192.

    Raises:
        ValueError: If `num_heads` does not divide `hidden_size`, `num_kv_heads` does not divide `num_heads`, or the
            head size is odd (rotary embeddings turn pairs of dimensions).
    """

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    max_position: int = 8192

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "max_position"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"For 'LlamaConfig', the argument '{name}' must be a positive int, but got "
                                 f"{value!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"For 'LlamaConfig', the argument 'num_heads' must divide hidden_size "
                             f"({self.hidden_size}), but got {self.num_heads}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"For 'LlamaConfig', the argument 'num_kv_heads' must divide num_heads "
                             f"({self.num_heads}), but got {self.num_kv_heads}.")
        if self.head_dim % 2:
            raise ValueError(f"For 'LlamaConfig', the head size hidden_size / num_heads must be even for rotary "
                             f"embeddings, but got {self.head_dim}.")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads


def rotary_tables(config):
    """The cos and sin tables ``(max_position, head_dim)`` of the rotate-half layout, float32 NumPy arrays."""
    half = config.head_dim // 2
    inverse_frequencies = config.rope_theta ** (-np.arange(half, dtype=np.float64) * 2.0 / config.head_dim)
    angles = np.arange(config.max_position, dtype=np.float64)[:, None] * inverse_frequencies[None, :]
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class LlamaRMSNorm(nn.Cell):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis, computed in float32; ``weight`` starts at ones."""

    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(hidden_size, np.float32)), name="weight")
        self.eps = eps

    def construct(self, x):
        x32 = ops.cast(x, ms.float32)
        variance = ops.mean(ops.square(x32), -1, keep_dims=True)
        return ops.cast(x32 * ops.rsqrt(variance + self.eps) * self.weight, x.dtype)


def _rotate(x, cos, sin):
    """Rotary embedding in the rotate-half layout: ``x * cos + concat(-x2, x1) * sin``; cos/sin ``(T, head_dim)``."""
    half = x.shape[-1] // 2
    rotated = ops.concat((-x[..., half:], x[..., :half]), -1)
    return x * cos + rotated * sin


class LlamaAttention(nn.Cell):
    """Causal grouped-query attention with rotary embeddings, optional key/value prefixes and a fixed-size cache."""

    def __init__(self, config, init):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.group_size = config.num_heads // config.num_kv_heads
        self.scale = self.head_dim ** -0.5
        hidden, kv_width = config.hidden_size, config.num_kv_heads * config.head_dim
        self.q_proj = nn.Dense(hidden, hidden, weight_init=init, has_bias=False)
        self.k_proj = nn.Dense(hidden, kv_width, weight_init=init, has_bias=False)
        self.v_proj = nn.Dense(hidden, kv_width, weight_init=init, has_bias=False)
        self.o_proj = nn.Dense(hidden, hidden, weight_init=init, has_bias=False)
        self.prefix_layer = None
        self.prefix_concat = PrefixConcat(attend_value=1)

    def _split_heads(self, x, num_heads):
        batch, seq_length, _ = x.shape
        return ops.transpose(ops.reshape(x, (batch, seq_length, num_heads, self.head_dim)), (0, 2, 1, 3))

    def construct(self, hidden, cos, sin, mask, layer_prefix=None, key_cache=None, value_cache=None,
                  write_slots=None):
        """``mask`` (batch or 1, 1, T, S): 1 where a query may attend a key, over the S keys (the cache's slots when
        caching). ``write_slots`` (T, cache_length): the one-hot slot of each new token in the cache."""
        batch, seq_length, hidden_size = hidden.shape
        query = _rotate(self._split_heads(self.q_proj(hidden), self.num_heads), cos, sin)
        key = _rotate(self._split_heads(self.k_proj(hidden), self.num_kv_heads), cos, sin)
        value = self._split_heads(self.v_proj(hidden), self.num_kv_heads)
        if key_cache is not None:
            # One-hot placement keeps every shape static, so one decode graph serves every position; a product with
            # an exact 0/1 matrix copies the values bit for bit.
            placement = ops.transpose(write_slots, (1, 0))
            kept = ops.reshape(1.0 - ops.reduce_sum(write_slots, 0), (1, 1, -1, 1))
            key_cache = key_cache * kept + ops.matmul(placement, key)
            value_cache = value_cache * kept + ops.matmul(placement, value)
            key, value = key_cache, value_cache
        if self.prefix_layer is not None:
            layer_prefix = self.prefix_layer(batch)
        if layer_prefix is not None:
            key, value, mask = self.prefix_concat(key, value, layer_prefix, mask)
        # Grouped-query attention without copying keys: the group_size query heads that share a key/value head are
        # stacked on the query axis, (batch, kv_heads, group_size * T, head_dim).
        grouped = ops.reshape(query, (batch, self.num_kv_heads, self.group_size * seq_length, self.head_dim))
        scores = ops.matmul(grouped, ops.transpose(key, (0, 1, 3, 2))) * self.scale
        scores = ops.reshape(scores, (batch, self.num_heads, seq_length, -1))
        scores = scores + (1.0 - mask) * MASKED_SCORE
        probs = ops.reshape(ops.softmax(scores, -1), (batch, self.num_kv_heads, self.group_size * seq_length, -1))
        context = ops.reshape(ops.matmul(probs, value), (batch, self.num_heads, seq_length, self.head_dim))
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (batch, seq_length, hidden_size))
        return self.o_proj(context), key_cache, value_cache


class LlamaMLP(nn.Cell):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, config, init):
        super().__init__()
        self.gate_proj = nn.Dense(config.hidden_size, config.intermediate_size, weight_init=init, has_bias=False)
        self.up_proj = nn.Dense(config.hidden_size, config.intermediate_size, weight_init=init, has_bias=False)
        self.down_proj = nn.Dense(config.intermediate_size, config.hidden_size, weight_init=init, has_bias=False)

    def construct(self, x):
        gate = self.gate_proj(x)
        return self.down_proj(gate * ops.sigmoid(gate) * self.up_proj(x))


class LlamaDecoderLayer(nn.Cell):
    """Pre-norm block: ``x + self_attn(input_layernorm(x))``, then ``h + mlp(post_attention_layernorm(h))``."""

    def __init__(self, config, init):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, init)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config, init)

    def construct(self, hidden, cos, sin, mask, layer_prefix=None, key_cache=None, value_cache=None,
                  write_slots=None):
        attended, key_cache, value_cache = self.self_attn(self.input_layernorm(hidden), cos, sin, mask, layer_prefix,
                                                          key_cache, value_cache, write_slots)
        hidden = hidden + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden)), key_cache, value_cache


class LlamaModel(nn.Cell):
    """Embeddings, decoder layers and the final norm, with the virtual-token and P-Tuning v2 hooks."""

    def __init__(self, config, init):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, embedding_table=init)
        self.layers = nn.CellList([LlamaDecoderLayer(config, init) for _ in range(config.num_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        cos, sin = rotary_tables(config)
        self.rope_cos = Tensor(cos)
        self.rope_sin = Tensor(sin)
        self.virtual_tokens = None
        self.prefix_encoder = None

    def construct(self, input_ids, attention_mask=None, key_caches=None, value_caches=None, cache_position=None):
        if key_caches is not None and attention_mask is not None:
            raise ValueError("For 'LlamaForCausalLM', 'attention_mask' is not used with key/value caches (the cache "
                             "is causal and generates one sequence at a time); pass None.")
        if key_caches is None and cache_position is not None:
            raise ValueError("For 'LlamaForCausalLM', 'cache_position' needs 'key_caches' and 'value_caches'.")
        batch, seq_length = input_ids.shape
        hidden = self.embed_tokens(input_ids)
        starts_sequence = cache_position is None
        num_virtual = 0
        if self.virtual_tokens is not None and starts_sequence:
            if attention_mask is None:
                attention_mask = ops.ones((batch, seq_length), ms.float32)
            hidden, attention_mask = prepend_virtual_tokens(hidden, attention_mask, self.virtual_tokens(batch))
            num_virtual = hidden.shape[1] - seq_length
        total_length = hidden.shape[1]
        if starts_sequence:
            positions = ops.arange(0, total_length, dtype=ms.int32)
        else:
            positions = ops.reshape(cache_position, (1,)) + ops.arange(0, total_length, dtype=ms.int32)
        cos = ops.gather(self.rope_cos, positions, 0)
        sin = ops.gather(self.rope_sin, positions, 0)
        if key_caches is None:
            # Causal over the sequence, and padded keys hidden: (batch or 1, 1, T, T).
            key_positions = ops.arange(0, total_length, dtype=ms.int32)
            mask = ops.cast(ops.reshape(key_positions, (1, -1)) <= ops.reshape(key_positions, (-1, 1)), ms.float32)
            mask = ops.reshape(mask, (1, 1, total_length, total_length))
            if attention_mask is not None:
                mask = mask * ops.reshape(ops.cast(attention_mask, ms.float32), (batch, 1, 1, total_length))
            write_slots = None
        else:
            # Slot l of the cache holds position l; a query at position p attends the slots up to p. Later slots are
            # empty or hold stale values that the step writing them first replaces.
            slots = ops.arange(0, key_caches[0].shape[2], dtype=ms.int32)
            mask = ops.cast(ops.reshape(slots, (1, -1)) <= ops.reshape(positions, (-1, 1)), ms.float32)
            write_slots = ops.cast(ops.reshape(slots, (1, -1)) == ops.reshape(positions, (-1, 1)), ms.float32)
            mask = ops.reshape(mask, (1, 1, total_length, -1))
        layer_prefixes = None
        if self.prefix_encoder is not None:
            layer_prefixes = self.prefix_encoder(batch)
        new_key_caches = ()
        new_value_caches = ()
        for index, layer in enumerate(self.layers):
            layer_prefix = None if layer_prefixes is None else layer_prefixes[index]
            if key_caches is None:
                hidden, _, _ = layer(hidden, cos, sin, mask, layer_prefix)
            else:
                hidden, key_cache, value_cache = layer(hidden, cos, sin, mask, layer_prefix, key_caches[index],
                                                       value_caches[index], write_slots)
                new_key_caches = new_key_caches + (key_cache,)
                new_value_caches = new_value_caches + (value_cache,)
        hidden = self.norm(hidden)
        if num_virtual:
            # The virtual tokens lead the sequence; the text's hidden states follow them.
            hidden = hidden[:, num_virtual:]
        return hidden, new_key_caches, new_value_caches


def _check_cell(cell, arg_name, owner):
    if not isinstance(cell, nn.Cell):
        raise TypeError(f"For '{owner}', the argument '{arg_name}' must be a mindspore.nn.Cell, but got "
                        f"{type(cell).__name__}.")


def _check_attribute(cell, attribute, expected, arg_name, owner):
    actual = getattr(cell, attribute, None)
    if actual != expected:
        raise ValueError(f"For '{owner}', the argument '{arg_name}' must have {attribute}={expected}, but got "
                         f"{actual!r}.")


def _name_parameters(cell, path):
    """Rename the parameters of a cell hooked in after construction to their path in the model."""
    for local_name, param in cell.parameters_and_names():
        param.name = f"{path}.{local_name}"


class LlamaForCausalLM(nn.Cell):
    """A Llama model with its language-model head (see the module docstring for the layout and the hooks).

    Args:
        config (LlamaConfig): The model's shape.
        random_init (bool): draw the weights from N(0, 0.02^2); ``False`` starts them at zero, which is much faster
            when a checkpoint fills them anyway (the loader does this). Default: ``True``.

    Inputs:
        - **input_ids** (Tensor) - int32 token ids, shape :math:`(batch, seq)`.
        - **attention_mask** (Tensor, optional) - 1 for tokens, 0 for right padding, shape :math:`(batch, seq)`.
          Used without a cache. Default: ``None`` (every position is a token).
        - **key_caches**, **value_caches** (tuple[Tensor], optional) - one
          :math:`(batch, num\\_kv\\_heads, cache\\_length, head\\_dim)` tensor per layer. Default: ``None``.
        - **cache_position** (Tensor, optional) - int32 scalar: the position of the first token of `input_ids` when
          it continues a cached sequence. Default: ``None`` (the tokens start the sequence).

    Raises:
        ValueError: If `attention_mask` comes with caches, or `cache_position` without them (when the call is
            traced, so at compile time in GRAPH mode).

    Outputs:
        float32 logits :math:`(batch, seq, vocab\\_size)`; with caches, the tuple ``(logits, key_caches,
        value_caches)`` holding the updated caches.
    """

    def __init__(self, config, random_init=True):
        super().__init__()
        self.config = config
        init = Normal(INIT_STDDEV) if random_init else "zeros"
        self.model = LlamaModel(config, init)
        self.lm_head = nn.Dense(config.hidden_size, config.vocab_size, weight_init=init, has_bias=False)
        if config.tie_word_embeddings:
            # One Parameter in two cells: the embedding and the head stay equal through training and loading.
            self.lm_head.weight = self.model.embed_tokens.embedding_table

    def construct(self, input_ids, attention_mask=None, key_caches=None, value_caches=None, cache_position=None):
        hidden, key_caches, value_caches = self.model(input_ids, attention_mask, key_caches, value_caches,
                                                      cache_position)
        logits = ops.cast(self.lm_head(hidden), ms.float32)
        if not key_caches:
            return logits
        return logits, key_caches, value_caches

    def empty_cache(self, batch_size, cache_length, dtype=ms.float32):
        """Zero key and value caches for :meth:`construct`: two tuples of ``num_layers`` tensors of shape
        ``(batch_size, num_kv_heads, cache_length, head_dim)``. ``cache_length`` counts virtual tokens too. Wrap the
        caches a call returns in ``ms.mutable`` before passing them back (as ``generate.py`` does)."""
        config = self.config
        shape = (batch_size, config.num_kv_heads, cache_length, config.head_dim)
        if cache_length > config.max_position:
            raise ValueError(f"For 'LlamaForCausalLM.empty_cache', the argument 'cache_length' must be at most "
                             f"max_position ({config.max_position}), but got {cache_length}.")
        # mutable: a tuple of Tensors passed to a GRAPH-mode cell is otherwise a constant, recompiled on each change.
        return (ms.mutable(tuple(ops.zeros(shape, dtype) for _ in range(config.num_layers))),
                ms.mutable(tuple(ops.zeros(shape, dtype) for _ in range(config.num_layers))))

    @property
    def num_virtual_tokens(self):
        """How many virtual tokens the embeddings hook prepends (0 without one)."""
        cell = self.model.virtual_tokens
        return 0 if cell is None else cell.num_virtual_tokens

    def set_virtual_tokens(self, cell):
        """Prepend the virtual tokens of `cell` to every sequence (prompt tuning, P-tuning v1); call before the first
        compile.

        Args:
            cell (Union[PromptTuningEmbedding, PromptEncoder]): called with the batch size, it returns
                ``(batch, num_virtual_tokens, hidden_size)``. Its parameters are renamed
                ``model.virtual_tokens.<name>``.

        Raises:
            TypeError: If `cell` is not a ``mindspore.nn.Cell``.
            ValueError: If its ``token_dim`` is not the hidden size.
        """
        owner = "LlamaForCausalLM.set_virtual_tokens"
        _check_cell(cell, "cell", owner)
        _check_attribute(cell, "token_dim", self.config.hidden_size, "cell", owner)
        self.model.virtual_tokens = cell
        _name_parameters(cell, "model.virtual_tokens")

    def set_prefix_layers(self, cells):
        """Give each layer's attention its own key/value prefixes (prefix tuning); call before the first compile.

        Args:
            cells (Union[list, tuple]): one :class:`mindpet.delta.PrefixLayer` per layer, each with
                ``num_heads=num_kv_heads`` and ``hidden_dim=num_kv_heads * head_dim``. Layer ``i``'s parameters are
                renamed ``model.layers.<i>.self_attn.prefix_layer.<name>``.

        Raises:
            TypeError: If `cells` is not a list or tuple of ``mindspore.nn.Cell``.
            ValueError: If it does not hold one cell per layer, or a cell's heads or width do not match the keys.
        """
        owner = "LlamaForCausalLM.set_prefix_layers"
        config = self.config
        if not isinstance(cells, (list, tuple)):
            raise TypeError(f"For '{owner}', the argument 'cells' must be a list or tuple of PrefixLayer, but got "
                            f"{type(cells).__name__}.")
        if len(cells) != config.num_layers:
            raise ValueError(f"For '{owner}', the argument 'cells' must hold one PrefixLayer per layer "
                             f"({config.num_layers}), but got {len(cells)}.")
        self._check_no_prefix(owner)
        for cell in cells:
            _check_cell(cell, "cells", owner)
            _check_attribute(cell, "num_heads", config.num_kv_heads, "cells", owner)
            _check_attribute(cell, "hidden_dim", config.num_kv_heads * config.head_dim, "cells", owner)
        for index, cell in enumerate(cells):
            self.model.layers[index].self_attn.prefix_layer = cell
            _name_parameters(cell, f"model.layers.{index}.self_attn.prefix_layer")

    def set_prefix_encoder(self, cell):
        """Feed every layer key/value prefixes from one P-Tuning v2 encoder; call before the first compile.

        Args:
            cell (PrefixEncoder): built with ``num_layers``, ``num_heads=num_kv_heads`` and
                ``kv_channels=head_dim``. Its parameters are renamed ``model.prefix_encoder.<name>``.

        Raises:
            TypeError: If `cell` is not a ``mindspore.nn.Cell``.
            ValueError: If its layers, heads or head size do not match the model's keys.
        """
        owner = "LlamaForCausalLM.set_prefix_encoder"
        config = self.config
        _check_cell(cell, "cell", owner)
        self._check_no_prefix(owner)
        _check_attribute(cell, "num_layers", config.num_layers, "cell", owner)
        _check_attribute(cell, "num_heads", config.num_kv_heads, "cell", owner)
        _check_attribute(cell, "kv_channels", config.head_dim, "cell", owner)
        self.model.prefix_encoder = cell
        _name_parameters(cell, "model.prefix_encoder")

    def _check_no_prefix(self, owner):
        has_layers = any(layer.self_attn.prefix_layer is not None for layer in self.model.layers)
        if has_layers or self.model.prefix_encoder is not None:
            raise ValueError(f"For '{owner}', the model already has key/value prefixes; build a fresh model to "
                             f"change them.")
