"""AdaLoRA's entry in adapter directories: Hugging Face PEFT's layout, so that PEFT and mindpet read each other's files.

PEFT (0.21.2 checked) writes ``peft_type: "ADALORA"``, the schedule (``init_r``, ``target_r``, ``tinit``, ``tfinal``,
``deltaT``, ``beta1``, ``beta2``, ``orth_reg_weight``, ``total_step``), ``lora_alpha``, ``lora_dropout`` and
``rank_pattern``: ``{"<module path>.lora_E": [bool] * init_r}``, the triplets each module kept, or null before any
was pruned. The tensors ``base_model.model.<path>.lora_A`` ``(r, in)``, ``.lora_E`` ``(r, 1)`` and ``.lora_B``
``(out, r)`` hold only the kept triplets (``r`` the module's count of True). On reload PEFT builds each module at
that rank with the scale of ``init_r``: ``lora_alpha / (init_r + 1e-5)``, mindpet's ``lora_alpha / init_r`` within
1e-6 relative. A cell cannot have rank 0: mindpet writes a cell pruned to rank 0 with one triplet whose singular
value is 0, and reads a module PEFT pruned to rank 0 (empty tensors) into one zero triplet; both compute the same.
"""
import numpy as np

from mindpet.delta.adalora.config import AdaLoraConfig
from mindpet.delta.adalora.layer import ADALORA_E, ADALORA_P, ADALORA_Q, adalora_scaling
from mindpet.delta.base.file_format import PEFT_KEY_PREFIX, AdapterFormat, TensorName
from mindpet.utils.logger import logger

_SCHEDULE = ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step")
_PATTERN_SUFFIX = ".lora_E"
# PEFT settings that change what the tensors mean; only their default is computed here.
_REQUIRED_VALUES = {"bias": "none", "fan_in_fan_out": False, "lora_bias": False, "use_rslora": False,
                    "use_dora": False, "layer_replication": None, "use_qalora": False, "target_parameters": None,
                    "trainable_token_indices": None}
_JSON_KEYS = frozenset({*_SCHEDULE, "r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern",
                        "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
                        "megatron_config", "megatron_core", "qalora_group_size", "ensure_weight_tying",
                        "layers_to_transform", "layers_pattern", "exclude_modules", "kasa_config",
                        "monteclora_config", "velora_config", "alora_invocation_tokens", "use_bdlora",
                        "arrow_config"})


def _file_pattern(cell):
    """PEFT's ``rank_pattern`` entry of ``cell``: ``init_r`` bools; a truncated cell's dropped triplets read False."""
    return [bool(flag) for flag in cell.kept_for_truncation()] + [False] * (cell.init_r - cell.lora_rank)


def _file_values(cell, local, values):
    """Only the kept triplets of ``P``, ``E`` (masked) and ``Q``."""
    kept = cell.kept_for_truncation()
    if local == ADALORA_E:
        values = values * cell.adalora_rank_mask.asnumpy().astype(values.dtype)
    return values[:, kept] if local == ADALORA_Q else values[kept]


def _file_shape(local, shape, settings):
    """A module PEFT pruned to rank 0 is stored with empty tensors; its cell holds one triplet."""
    if settings.get("lora_rank") != 0:
        return shape
    return (shape[0], 0) if local == ADALORA_Q else (0, shape[1])


def _cell_values(local, values, shape):
    """The file's triplets, or one zero triplet for a module pruned to rank 0 (its singular value 0)."""
    if values.size == 0:
        return np.zeros(shape, values.dtype)
    return values


def _to_json(config, cells):
    first = next(iter(cells.values()))
    if cells and all(cell is not None for cell in cells.values()):
        patterns = {f"{path}{_PATTERN_SUFFIX}": _file_pattern(cell) for path, cell in cells.items()}
        pruned = [path for path, cell in cells.items() if not cell.kept_triplets().any()]
        if pruned:
            logger.warning("save_delta: AdaLoRA pruned %s to rank 0; the file keeps one triplet of each with a "
                           "singular value of 0, which computes the same.", pruned[:10])
    else:
        patterns = {}
    fields = {"init_r": config.init_r if config is not None else first.init_r,
              "lora_alpha": config.lora_alpha if config is not None else first.lora_alpha,
              "lora_dropout": config.lora_dropout if config is not None else first.lora_dropout_rate,
              "rank_pattern": patterns if any(not all(kept) for kept in patterns.values()) else None,
              "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
              "task_type": None, "base_model_name_or_path": None, "revision": None}
    if config is not None:
        fields.update((name, getattr(config, name)) for name in _SCHEDULE)
    return fields


def _kept_rank(fields, file_path):
    pattern = (fields.get("rank_pattern") or {}).get(f"{file_path}{_PATTERN_SUFFIX}")
    return fields["init_r"] if pattern is None else sum(bool(flag) for flag in pattern)


def _target_settings(fields, file_path):
    return {"init_r": fields["init_r"], "lora_rank": _kept_rank(fields, file_path), "lora_alpha": fields["lora_alpha"]}


def _cell_settings(cell):
    return {"init_r": cell.init_r, "lora_rank": cell.lora_rank, "lora_alpha": cell.lora_alpha}


def _from_json(fields, targets, modules_to_save):
    init_r = fields["init_r"]
    pattern = {path: [True] * s["lora_rank"] + [False] * (init_r - s["lora_rank"]) for path, s in targets.items()
               if s["lora_rank"] != init_r}
    schedule = {name: fields[name] for name in _SCHEDULE if name in fields}
    return AdaLoraConfig(target_modules=sorted(targets), modules_to_save=modules_to_save or None,
                         lora_alpha=fields["lora_alpha"], lora_dropout=fields.get("lora_dropout", 0.0),
                         rank_pattern=pattern or None, **schedule)


def _fold(weight, bias, tensors, settings):
    """``W + s Q (E * P)`` with ``s = lora_alpha / init_r``, in float32; the bias is unchanged."""
    scale = np.float32(adalora_scaling(settings["lora_alpha"], settings["init_r"]))
    return weight + scale * (tensors[ADALORA_Q] @ (tensors[ADALORA_E] * tensors[ADALORA_P])), bias


ADALORA_FORMAT = AdapterFormat(
    peft_type="ADALORA", key_prefix=PEFT_KEY_PREFIX,
    tensor_names=(TensorName(ADALORA_P, "lora_A", lambda shape, settings: _file_shape(ADALORA_P, shape, settings)),
                  TensorName(ADALORA_E, "lora_E", lambda shape, settings: _file_shape(ADALORA_E, shape, settings)),
                  TensorName(ADALORA_Q, "lora_B", lambda shape, settings: _file_shape(ADALORA_Q, shape, settings))),
    to_json=_to_json, from_json=_from_json, target_settings=_target_settings, cell_settings=_cell_settings,
    json_keys=_JSON_KEYS, required_values=_REQUIRED_VALUES, fold=_fold, file_values=_file_values,
    cell_values=_cell_values)
