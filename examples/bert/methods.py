"""How each fine-tuning method reaches the unedited BERT of ``modeling.py``.

mindpet's injectable methods (LoRA and its rsLoRA and DoRA options, the adapters, (IA)^3) are applied by config
with :func:`mindpet.get_delta_model`, which also freezes everything but the delta and the ``classifier`` head
(``modules_to_save``). BitFit trains the model's own biases, so it is a ``freeze_delta`` call. P-Tuning v2 is built
into the model (``PrefixOptions``) and then frozen the same way. Prompt tuning and P-tuning v1 build their cell from
their config (``PromptTuningConfig`` / ``PTuningConfig``, ``make_cell``) and hand it to the model's embeddings hook
(``BertClassifier.set_virtual_tokens``), after the pretrained weights are in: prompt tuning's ``TEXT`` init copies
rows of the word embeddings. ``full`` and ``frozen_head`` are the two baselines, ``lora_rdrop`` is LoRA trained with
the R-Drop loss, ``rslora`` and ``dora`` are LoRA with those options, and ``qlora`` is LoRA on a 4-bit NF4 base
(:func:`mindpet.quantize_base` first). The mindpet methods and their configs come from :mod:`mindpet.registry`; this
file only says where in BERT each one goes.

Freeze before building the optimizer: an optimizer built earlier keeps updating every parameter it was given.

>>> from bert.methods import apply_method
>>> from bert.modeling import BertClassifier, BertConfig
>>> config = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
>>> trainable = apply_method(BertClassifier(config, 2), "lora", lora_rank=4)
>>> len(trainable), trainable[:2]
(10, ['bert.encoder.layer.0.attention.self_attention.query.mindpet_delta_lora_a', \
'bert.encoder.layer.0.attention.self_attention.query.mindpet_delta_lora_b'])
"""
import dataclasses

from bert.modeling import PrefixOptions
from mindpet import freeze_delta, freeze_modules, get_delta_model, quantize_base
from mindpet.registry import get_method, method_names

HEAD = "classifier"
BASELINES = ("full", "frozen_head")
# Where each injectable mindpet method goes in BERT: LoRA on the query and value projections (Hu et al.), the
# adapters after the attention output and the feed-forward output projections (Houlsby et al.), (IA)^3 on the key and
# value projections and both output projections, as PEFT's BERT default (its entry 'output.dense' names both);
# AdaLoRA where LoRA goes.
TARGETS = {"lora": ["query", "value"], "adapter": ["output.dense"], "low_rank_adapter": ["output.dense"],
           "ia3": ["key", "value", "output.dense"], "adalora": ["query", "value"]}
# Methods built into the model source, then frozen with freeze_delta.
MODEL_SIDE = ("bitfit", "ptuning2")
# Methods whose cell goes into the embeddings hook, then frozen with freeze_delta.
VIRTUAL_TOKENS = ("prompt_tuning", "ptuning")
# Example variants of a mindpet method: another loss on its delta (lora_rdrop), config options (rsLoRA, DoRA), or the
# method on a quantized base (QLoRA).
VARIANTS = {"lora_rdrop": "lora", "rslora": "lora", "dora": "lora", "qlora": "lora"}
# Config fields each method or variant fixes: the LoRA options, and (IA)^3's feed-forward layers (PEFT's BERT
# default: the output projections rescale their input).
FIXED_OPTIONS = {"rslora": {"use_rslora": True}, "dora": {"use_dora": True},
                 "ia3": {"feedforward_modules": ["output.dense"]},
                 # AdaLoRA starts at rank 12 and ends at an average rank of 8: LoRA r=8's budget.
                 "adalora": {"init_r": 12, "target_r": 8}}
# QLoRA's base: every Dense layer of the encoder (the query, key, value and attention-output projections, the
# feed-forward up- and down-projections) is stored in NF4; the embeddings, LayerNorms and the classifier head stay
# float32. LoRA then goes on query and value, as for 'lora'.
QUANTIZED_BASE = {"qlora": ["query", "key", "value", "output.dense", "intermediate.dense"]}
# Elements per NF4 absmax block (the QLoRA paper's 64); it must divide the width of every quantized layer.
QUANT_BLOCK_SIZE = 64
METHODS = BASELINES + tuple(name for name in method_names()
                             if name in TARGETS or name in MODEL_SIDE or name in VIRTUAL_TOKENS) + tuple(VARIANTS)


def adalora_schedule(total_step):
    """AdaLoRA's schedule for a run of ``total_step`` steps: the first 10% train all 12 ranks, so that the
    importance (zero while the singular values still are) has something to measure; the budget is then reallocated
    every ~3% of the run; the last 20% train the final pattern (150 steps: tinit 15, deltaT 5, tfinal 30)."""
    return {"total_step": total_step, "tinit": total_step // 10, "tfinal": total_step // 5,
            "deltaT": max(1, total_step // 30)}


def model_options(method, pre_seq_len=16):
    """The ``BertClassifier`` keyword arguments `method` needs in the model source (P-Tuning v2's prefix encoder)."""
    return {"prefix": PrefixOptions(pre_seq_len=pre_seq_len)} if method == "ptuning2" else {}


def apply_method(net, method, target_modules=None, head=HEAD, **hyperparameters):
    """Apply `method` to `net` and freeze it for training; return the sorted names of its trainable parameters.

    ``'full'`` freezes nothing; ``'frozen_head'`` freezes everything but the head; an injectable method is applied
    with ``get_delta_model`` and its registry config (hyperparameters the config does not have are ignored);
    BitFit and P-Tuning v2 train their parameters with ``freeze_delta``; prompt tuning and P-tuning v1 put the cell
    of their config into ``net.set_virtual_tokens`` (`net` must be a ``BertClassifier``), then ``freeze_delta``.
    Every method but ``'full'`` trains the head as well.

    Args:
        net (mindspore.nn.Cell): The model, a ``BertClassifier`` built with :func:`model_options` for `method`, or
            another network (the benchmarks' MLP).
        method (str): One of :data:`METHODS`.
        target_modules (Union[list[str], str], optional): Where an injectable method goes. Default: ``None``, the
            BERT layers of :data:`TARGETS`.
        head (str, optional): The task head, trained by every method; None when the network has none.
            Default: ``'classifier'``.
        **hyperparameters: Config fields, such as ``lora_rank`` or ``bottleneck_size``; for ``'qlora'`` also
            ``quant_block_size`` (default :data:`QUANT_BLOCK_SIZE`); ``'adalora'`` needs ``total_step``, from which
            :func:`adalora_schedule` derives the rest of its schedule.

    Returns:
        list[str], the sorted names of the trainable parameters.

    Raises:
        ValueError: If `method` is unknown, or `net` lacks what a model-side method needs.
    """
    if method not in METHODS:
        raise ValueError(f"For 'apply_method', the argument 'method' must be one of {METHODS}, but got {method!r}.")
    head_patterns = [f"*{head}*"] if head else None
    if method == "full":
        return freeze_modules(net, exclude=["*"])
    if method == "frozen_head":
        return freeze_modules(net, include=["*"], exclude=head_patterns)
    if method in QUANTIZED_BASE:
        quantize_base(net, QUANTIZED_BASE[method], block_size=hyperparameters.get("quant_block_size",
                                                                                  QUANT_BLOCK_SIZE))
    record = get_method(VARIANTS.get(method, method))
    if record.name in MODEL_SIDE:
        return freeze_delta(net, mode=record.name, exclude=head_patterns)
    fields = {field.name for field in dataclasses.fields(record.config_class)}
    options = {key: value for key, value in hyperparameters.items() if key in fields}
    if record.name in VIRTUAL_TOKENS:
        config = record.config_class(token_dim=net.config.hidden_size, **options)
        word_embeddings = net.bert.embeddings.word_embeddings
        net.set_virtual_tokens(config.make_cell(embedding=word_embeddings) if config.method == "prompt_tuning"
                               and config.prompt_tuning_init == "TEXT" else config.make_cell())
        return freeze_delta(net, mode=record.name, exclude=head_patterns)
    if record.name == "adalora" and "total_step" in options:
        options = {**adalora_schedule(options["total_step"]), **options}
    options.update(FIXED_OPTIONS.get(method, {}))
    config = record.config_class(target_modules=target_modules or TARGETS[record.name],
                                 modules_to_save=[head] if head else None, **options)
    get_delta_model(net, config)
    return sorted(param.name for param in net.get_parameters() if param.requires_grad)
