"""How each fine-tuning method reaches the unedited Llama of ``llm.model``.

- ``lora``: :func:`mindpet.get_delta_model` with LoRA on every attention and MLP projection (``q_proj``, ``k_proj``,
  ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``), as the QLoRA paper adapts every linear layer.
- ``qlora``: :func:`mindpet.quantize_base` stores those projections in NF4 first, then the same LoRA goes on top.
- ``ia3``: (IA)^3 on ``k_proj``, ``v_proj`` and ``down_proj``, ``down_proj`` rescaling its input (PEFT's Llama
  default).
- ``prompt_tuning`` and ``ptuning``: the cell of their config (``PromptTuningConfig`` / ``PTuningConfig``) goes into
  the model's embeddings hook (``set_virtual_tokens``); prompt tuning's prompt starts from the word embeddings of
  :data:`PROMPT_INIT_TEXT`.
- ``prefix`` (a ``PrefixLayer`` per attention block, ``set_prefix_layers``) and ``ptuning2`` (one ``PrefixEncoder``
  for all blocks, ``set_prefix_encoder``) go into the model's prefix hooks; both make key and value prefixes for the
  ``num_kv_heads`` key/value heads of grouped-query attention.
- ``full``: every parameter trains; the reference.

Freeze before building the optimizer: an optimizer built earlier keeps updating every parameter it was given.
"""
import dataclasses

from mindpet import freeze_delta, freeze_modules, get_delta_model, quantize_base
from mindpet.delta import PrefixEncoder, PrefixLayer
from mindpet.registry import get_method

METHODS = ("full", "lora", "qlora", "prompt_tuning", "ptuning", "prefix", "ptuning2", "ia3")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {"lora": PROJECTIONS, "ia3": ["k_proj", "v_proj", "down_proj"]}
FIXED_OPTIONS = {"ia3": {"feedforward_modules": ["down_proj"]}}
VIRTUAL_TOKENS = ("prompt_tuning", "ptuning")
MODEL_SIDE = ("prefix", "ptuning2")
# The mindpet method each example method applies.
MINDPET_METHOD = {"qlora": "lora"}
# Elements per NF4 absmax block (the QLoRA paper's 64); it divides every projection's input width (576 and 1536).
QUANT_BLOCK_SIZE = 64
# The text whose word embeddings start prompt tuning's prompt: a description of the task.
PROMPT_INIT_TEXT = "Write a movie review of the requested sentiment."
# PrefixLayer's reparameterization: prefix vectors of this size through an MLP of this width (smaller than MindPet's
# 512 so that the prefixes of 30 layers stay about 1% of the model).
PREFIX_EMBED_DIM, PREFIX_MID_DIM = 64, 128


def add_prefixes(net, method, prefix_length):
    """Give `net` (a ``LlamaForCausalLM``) the key/value prefixes of ``'prefix'`` or ``'ptuning2'``, `prefix_length`
    positions per layer, sized for its key/value heads."""
    config = net.config
    kv_width = config.num_kv_heads * config.head_dim
    if method == "prefix":
        # PrefixLayer counts prefix tokens per batch (MindPet's convention); the call's batch size may differ.
        net.set_prefix_layers([PrefixLayer(prefix_token_num=prefix_length, batch_size=1,
                                           num_heads=config.num_kv_heads, hidden_dim=kv_width,
                                           embed_dim=PREFIX_EMBED_DIM, mid_dim=PREFIX_MID_DIM, dropout_rate=0.0)
                               for _ in range(config.num_layers)])
    else:
        net.set_prefix_encoder(PrefixEncoder(prefix_length, config.num_layers, config.num_kv_heads, config.head_dim))


def apply_method(net, method, prefix_length=8, **hyperparameters):
    """Apply `method` to `net` (a ``LlamaForCausalLM`` with its pretrained weights) and freeze everything else;
    return the sorted names of the trainable parameters. Call it before the model's first call.

    Args:
        net (LlamaForCausalLM): The causal language model.
        method (str): One of :data:`METHODS`.
        prefix_length (int): Prefix positions per layer of ``'prefix'`` and ``'ptuning2'``. Default: 8.
        **hyperparameters: Config fields (``lora_rank``, ``lora_alpha``, ``num_virtual_tokens``,
            ``encoder_hidden_size``, ``prompt_tuning_init``, ``prompt_tuning_init_token_ids``, ...); those the
            method's config lacks are ignored (``token_dim`` is the model's). ``quant_block_size`` sets QLoRA's NF4
            blocks.

    Returns:
        list[str], the sorted names of the trainable parameters.

    Raises:
        ValueError: If `method` is not one of :data:`METHODS`.
    """
    if method not in METHODS:
        raise ValueError(f"For 'apply_method', the argument 'method' must be one of {METHODS}, but got {method!r}.")
    if method == "full":
        return freeze_modules(net, exclude=["*"])
    record = get_method(MINDPET_METHOD.get(method, method))
    if record.name in MODEL_SIDE:
        add_prefixes(net, record.name, prefix_length)
        return freeze_delta(net, mode=record.name)
    fields = {field.name for field in dataclasses.fields(record.config_class)}
    options = {key: value for key, value in hyperparameters.items() if key in fields}
    if record.name in VIRTUAL_TOKENS:
        options["token_dim"] = net.config.hidden_size
        config = record.config_class(**options)
        text_init = record.name == "prompt_tuning" and config.prompt_tuning_init == "TEXT"
        net.set_virtual_tokens(config.make_cell(embedding=net.model.embed_tokens) if text_init
                               else config.make_cell())
        return freeze_delta(net, mode=record.name)
    if method == "qlora":
        quantize_base(net, PROJECTIONS, block_size=hyperparameters.get("quant_block_size", QUANT_BLOCK_SIZE))
    options.update(FIXED_OPTIONS.get(method, {}))
    get_delta_model(net, record.config_class(target_modules=TARGETS[record.name], **options))
    return sorted(param.name for param in net.get_parameters() if param.requires_grad)
