"""Trainable and total parameter counts derived on paper from the shapes, independently of the networks.

The benchmark records these next to the counts read from the built networks; the tests require them to be equal.
"""
from bench import presets


def _adapter_params(width):
    """A Houlsby adapter on ``width`` features: down ``(b, width)`` + ``b``, up ``(width, b)`` + ``width``."""
    bottleneck = presets.ADAPTER_BOTTLENECK
    return 2 * width * bottleneck + bottleneck + width


def _low_rank_adapter_params(width):
    """Factors ``(width, s) (s, k)`` down and ``(k, s) (s, width)`` up, plus biases ``k`` and ``width``."""
    bottleneck = width // presets.LOW_RANK_REDUCTION_FACTOR
    rank = presets.LOW_RANK_SIZE
    return 2 * rank * (width + bottleneck) + bottleneck + width


# LoRADense also holds ``lora_branch_scale``, a non-trainable scalar that merge() sets to 0.
LORA_SCALE_PARAMS = 1
# IA3Dense holds ``ia3_scale_gate``, a non-trainable scalar that merge() sets to 0.
IA3_GATE_PARAMS = 1


def _dora_frozen(out_channels):
    """DoRA adds the merge gate (a scalar) and the merge factor ``(out,)`` beside the branch scale."""
    return LORA_SCALE_PARAMS + 1 + out_channels


def _lora_params(in_channels, out_channels):
    """``A`` is ``(r, in)``, ``B`` is ``(out, r)``."""
    return presets.LORA_RANK * (in_channels + out_channels)


def _dense_params(in_channels, out_channels):
    return in_channels * out_channels + out_channels


def _prompt_mlp_params(width):
    """P-tuning v1's MLP encoder: ``width -> e``, ``e -> e``, ``e -> width``, each with a bias."""
    hidden = presets.PTUNING_ENCODER_HIDDEN
    return _dense_params(width, hidden) + _dense_params(hidden, hidden) + _dense_params(hidden, width)


def mlp_counts(method, preset):
    """``(trainable, total)`` parameters of the MLP of ``preset`` fine-tuned with ``method``.

    Every one of the ``mlp_depth`` layers is ``width x width`` with a bias. LoRA adds ``r (in + out)`` trainable
    parameters per layer (and its scalar scale);
    an adapter ``2 w b + b + w``; a low-rank adapter ``2 s (w + k) + k + w`` with ``k = w // reduction_factor``;
    BitFit trains the ``w`` biases of each layer. rsLoRA counts as LoRA; DoRA adds a magnitude ``w`` per layer
    (and a frozen gate and ``w`` merge factors); (IA)^3 a scale ``w`` per layer (and a frozen gate).
    """
    width, depth = preset.mlp_width, preset.mlp_depth
    base = depth * _dense_params(width, width)
    lora = _lora_params(width, width)
    added_per_layer = {"full": 0, "bitfit": 0, "lora": lora, "rslora": lora, "dora": lora + width, "ia3": width,
                       "adapter": _adapter_params(width), "low_rank_adapter": _low_rank_adapter_params(width)}
    added = depth * added_per_layer[method]
    trainable = {"full": base, "bitfit": depth * width}.get(method, added)
    frozen_per_layer = {"lora": LORA_SCALE_PARAMS, "rslora": LORA_SCALE_PARAMS, "dora": _dora_frozen(width),
                        "ia3": IA3_GATE_PARAMS}.get(method, 0)
    return trainable, base + added + depth * frozen_per_layer


def encoder_counts(method, config, num_labels):
    """``(trainable, total)`` parameters of a BERT classifier of shape ``config`` fine-tuned with ``method``.

    The base: word, position and token-type embeddings and a LayerNorm; per layer the query, key, value and
    output projections, two LayerNorms, and the feed-forward pair; a classifier on the hidden size. Every method
    but ``'full'`` trains the classifier plus: LoRA, ``r (h + h)`` on query and on value of each layer; adapters,
    one after the attention output and one after the feed-forward output of each layer; BitFit, the biases of the
    six Dense layers of each layer (LayerNorm shifts are named ``beta``, not ``bias``); P-Tuning v2, a table of
    ``pre_seq_len`` rows of ``layers * 2 * hidden`` (a key and a value prefix per layer). rsLoRA counts as LoRA;
    DoRA adds a magnitude of ``h`` to each of LoRA's layers; (IA)^3 scales the key and value outputs (``h`` each)
    and the inputs of both output projections (``h`` and ``intermediate``) of each layer. Prompt tuning trains ``n``
    virtual tokens of ``hidden``; P-tuning v1, those and the MLP ``hidden -> e -> e -> hidden`` (``e`` the encoder
    hidden size). The position table covers the virtual tokens too (``config`` says how far).

    Args:
        method (str): the fine-tuning method.
        config: an object with BertConfig's size attributes (``hidden_size``, ``num_layers``,
            ``intermediate_size``, ``vocab_size``, ``max_position_embeddings``, ``type_vocab_size``).
        num_labels (int): classes of the classifier.
    """
    hidden, layers, intermediate = config.hidden_size, config.num_layers, config.intermediate_size
    layer_norm = 2 * hidden
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * hidden + layer_norm
    per_layer = (4 * _dense_params(hidden, hidden) + _dense_params(hidden, intermediate)
                 + _dense_params(intermediate, hidden) + 2 * layer_norm)
    head = _dense_params(hidden, num_labels)
    base = embeddings + layers * per_layer + head
    lora = layers * 2 * _lora_params(hidden, hidden)
    added = {"full": 0, "bitfit": 0, "lora": lora, "rslora": lora, "dora": lora + layers * 2 * hidden,
             "ia3": layers * (3 * hidden + intermediate),
             "adapter": layers * 2 * _adapter_params(hidden),
             "low_rank_adapter": layers * 2 * _low_rank_adapter_params(hidden),
             "ptuning2": presets.PTUNING2_PRE_SEQ_LEN * layers * 2 * hidden,
             "prompt_tuning": presets.NUM_VIRTUAL_TOKENS * hidden,
             "ptuning": presets.NUM_VIRTUAL_TOKENS * hidden + _prompt_mlp_params(hidden)}[method]
    if method == "full":
        return base, base
    if method == "bitfit":
        return layers * (5 * hidden + intermediate) + head, base
    frozen_added = {"lora": layers * 2 * LORA_SCALE_PARAMS, "rslora": layers * 2 * LORA_SCALE_PARAMS,
                    "dora": layers * 2 * _dora_frozen(hidden), "ia3": layers * 4 * IA3_GATE_PARAMS}.get(method, 0)
    return added + head, base + added + frozen_added
