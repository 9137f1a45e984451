"""LoRA's entry in adapter directories: Hugging Face PEFT's layout, so that PEFT and mindpet read each other's files.

PEFT (0.21.2 checked) writes ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``lora_dropout``, ``rank_pattern``,
``alpha_pattern``, ``use_rslora``, ``use_dora``, ``bias``, ``target_modules`` and ``modules_to_save`` in
``adapter_config.json``, and ``base_model.model.<path>.lora_A.weight`` ``(r, in)``, ``.lora_B.weight``
``(out, r)`` and, with DoRA, ``.lora_magnitude_vector`` ``(out,)`` in ``adapter_model.safetensors``: the shapes of
mindpet's ``mindpet_delta_lora_a``, ``mindpet_delta_lora_b`` and ``mindpet_delta_lora_magnitude``.
"""
import dataclasses
import re

import numpy as np

from mindpet.delta.base.file_format import PEFT_KEY_PREFIX, AdapterFormat, TensorName
from mindpet.delta.lora.config import LoraConfig
from mindpet.delta.lora.layer import LORA_A, LORA_B, LORA_MAGNITUDE, dora_row_norms, lora_scaling
from mindpet.injection.targeting import pattern_value

# The LoRA variants of PEFT's JSON; each is read only when LoraConfig has a field of that name, and refused when set
# otherwise (a variant this version cannot compute must not load as plain LoRA).
_VARIANTS = ("use_rslora", "use_dora")
_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(LoraConfig))
_SUPPORTED_VARIANTS = tuple(name for name in _VARIANTS if name in _CONFIG_FIELDS)

# PEFT settings that change what the tensors mean; mindpet computes only their default, so a file that sets them is
# refused, not misread. (fan_in_fan_out: weights stored (in, out); lora_bias: a trained bias on lora_B; ...)
_REQUIRED_VALUES = {"bias": "none", "fan_in_fan_out": False, "lora_bias": False, "layer_replication": None,
                    "use_qalora": False, "target_parameters": None, "trainable_token_indices": None,
                    "alora_invocation_tokens": None, "use_bdlora": None, "arrow_config": None,
                    **{name: False for name in _VARIANTS if name not in _CONFIG_FIELDS}}
# Fields read by the functions below, plus PEFT fields that only steer initialisation or which modules PEFT wraps
# (the tensors themselves say which modules were adapted), so that they are never reported as unknown.
_JSON_KEYS = frozenset({"r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern", *_VARIANTS,
                        "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
                        "megatron_config", "megatron_core", "qalora_group_size", "ensure_weight_tying",
                        "layers_to_transform", "layers_pattern", "exclude_modules"})


def peft_pattern_value(patterns, path, default):
    """The value of the first key of ``patterns`` that PEFT would pick for ``path``: a key matches when the path
    ends with it after a ``'.'`` boundary, as a regular expression (PEFT's ``get_pattern_key``)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _cell_or_config(config, path, cell):
    """``(rank, alpha, dropout)`` of the module at ``path``: from its cell, or from the config alone (``cell`` None,
    as when ``mindpet convert`` writes a file with no network)."""
    if cell is not None:
        return cell.lora_rank, cell.lora_alpha, cell.lora_dropout_rate
    return (pattern_value(config.rank_pattern, path, config.lora_rank),
            pattern_value(config.alpha_pattern, path, config.lora_alpha), config.lora_dropout)


def _to_json(config, cells):
    """PEFT's fields; rank and alpha per adapted module (``cells``: ``{file path: LoRADense or None}``) become exact
    ``rank_pattern`` / ``alpha_pattern`` entries where they differ from the config's (or the first cell's)."""
    settings = {path: _cell_or_config(config, path, cell) for path, cell in cells.items()}
    first_rank, first_alpha, first_dropout = next(iter(settings.values()))
    rank = config.lora_rank if config is not None else first_rank
    alpha = config.lora_alpha if config is not None else first_alpha
    dropout = config.lora_dropout if config is not None else first_dropout
    fields = {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
              "rank_pattern": {re.escape(path): value[0] for path, value in settings.items() if value[0] != rank},
              "alpha_pattern": {re.escape(path): value[1] for path, value in settings.items() if value[1] != alpha},
              "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
              "task_type": None, "base_model_name_or_path": None, "revision": None, "layers_to_transform": None,
              "layers_pattern": None}
    source = next(iter(cells.values())) or config
    for name in _VARIANTS:
        fields[name] = bool(getattr(source, name, False))
    return fields


def _fold(weight, bias, tensors, settings):
    """``V = W + s B A`` with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA), in float32; with DoRA
    ``m / ||V||_row * V``, as :meth:`LoRADense.merge` folds it (PEFT's DoRA merge too). The bias is unchanged.
    ``tensors`` by cell name."""
    scale = lora_scaling(settings["lora_alpha"], settings["lora_rank"], settings.get("use_rslora", False))
    adapted = weight + np.float32(scale) * (tensors[LORA_B] @ tensors[LORA_A])
    if not settings.get("use_dora"):
        return adapted, bias
    magnitude = tensors[LORA_MAGNITUDE].reshape(-1).astype(np.float64)
    factor = (magnitude / dora_row_norms(adapted)).astype(np.float32)
    return factor[:, None] * adapted, bias


def _target_settings(fields, file_path):
    settings = {"lora_rank": peft_pattern_value(fields.get("rank_pattern"), file_path, fields["r"]),
                "lora_alpha": peft_pattern_value(fields.get("alpha_pattern"), file_path, fields["lora_alpha"])}
    settings.update((name, bool(fields.get(name, False))) for name in _SUPPORTED_VARIANTS)
    return settings


def _cell_settings(cell):
    settings = {"lora_rank": cell.lora_rank, "lora_alpha": cell.lora_alpha}
    settings.update((name, bool(getattr(cell, name, False))) for name in _SUPPORTED_VARIANTS)
    return settings


def _from_json(fields, targets, modules_to_save):
    rank, alpha = fields["r"], fields["lora_alpha"]
    return LoraConfig(target_modules=sorted(targets), modules_to_save=modules_to_save or None, lora_rank=rank,
                      lora_alpha=alpha, lora_dropout=fields.get("lora_dropout", 0.0),
                      rank_pattern={path: s["lora_rank"] for path, s in targets.items() if s["lora_rank"] != rank},
                      alpha_pattern={path: s["lora_alpha"] for path, s in targets.items() if s["lora_alpha"] != alpha},
                      **{name: bool(fields.get(name, False)) for name in _SUPPORTED_VARIANTS})


LORA_FORMAT = AdapterFormat(
    peft_type="LORA", key_prefix=PEFT_KEY_PREFIX,
    tensor_names=(TensorName(LORA_A, "lora_A.weight"), TensorName(LORA_B, "lora_B.weight"),
                  TensorName(LORA_MAGNITUDE, "lora_magnitude_vector")),
    to_json=_to_json, from_json=_from_json, target_settings=_target_settings, cell_settings=_cell_settings,
    json_keys=_JSON_KEYS, required_values=_REQUIRED_VALUES, fold=_fold,
    pattern_fields=("rank_pattern", "alpha_pattern"))
