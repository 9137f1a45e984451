"""(IA)^3's entry in adapter directories: Hugging Face PEFT's layout, so that PEFT and mindpet read each other's files.

PEFT (0.21.2 checked) writes ``peft_type: "IA3"``, ``target_modules``, ``feedforward_modules``, ``fan_in_fan_out``,
``init_ia3_weights`` and ``modules_to_save`` in ``adapter_config.json``, and one tensor per adapted module,
``base_model.model.<path>.ia3_l``: ``(out, 1)`` for a module that rescales its output, ``(1, in)`` for a feed-forward
module, which rescales its input. mindpet's ``mindpet_delta_ia3_scale`` is the same vector, shaped ``(out,)`` or
``(in,)``.
"""
import re

from mindpet.delta.base.file_format import PEFT_KEY_PREFIX, AdapterFormat, TensorName
from mindpet.delta.ia3.config import IA3Config
from mindpet.delta.ia3.layer import IA3_SCALE
from mindpet.injection.targeting import TargetSpec

# PEFT settings that change what the tensors mean; mindpet computes only their default.
_REQUIRED_VALUES = {"fan_in_fan_out": False}
# Fields read below, plus PEFT's that steer only initialisation or which modules PEFT wraps (the tensors say which).
_JSON_KEYS = frozenset({"feedforward_modules", "init_ia3_weights", "exclude_modules"})


def peft_is_feedforward(feedforward_modules, path):
    """Whether PEFT treats the module at ``path`` as feed-forward: a str is a full-match regular expression, a list
    matches a path that ends with one of its entries (PEFT's ``_check_target_module_feedforward``)."""
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, path) is not None
    return any(path.endswith(entry) for entry in feedforward_modules or ())


def _file_shape(shape, settings):
    """PEFT's ``ia3_l``: a column ``(out, 1)``, or for a feed-forward module a row ``(1, in)``."""
    return (1, shape[0]) if settings["feedforward"] else (shape[0], 1)


def _is_feedforward(config, path, cell):
    if cell is not None:
        return cell.feedforward
    return TargetSpec(config.feedforward_modules).matches(path, is_dense=True)


def _to_json(config, cells):
    """PEFT's fields; ``feedforward_modules`` lists the exact paths of the modules that rescale their input."""
    feedforward = sorted(path for path, cell in cells.items() if _is_feedforward(config, path, cell))
    return {"feedforward_modules": feedforward, "fan_in_fan_out": False, "init_ia3_weights": True,
            "exclude_modules": None, "inference_mode": True, "task_type": None, "base_model_name_or_path": None,
            "revision": None}


def _target_settings(fields, file_path):
    return {"feedforward": peft_is_feedforward(fields.get("feedforward_modules"), file_path)}


def _cell_settings(cell):
    return {"feedforward": cell.feedforward}


def _from_json(fields, targets, modules_to_save):
    feedforward = sorted(path for path, settings in targets.items() if settings["feedforward"])
    return IA3Config(target_modules=sorted(targets), feedforward_modules=feedforward or None,
                     modules_to_save=modules_to_save or None)


def _fold(weight, bias, tensors, settings):
    """``W diag(l)`` for a feed-forward module (its input is rescaled; the bias is not), else ``diag(l) W`` and
    ``l * b``, as :meth:`IA3Dense.merge` and PEFT's IA3 merge fold it; in float32."""
    scale = tensors[IA3_SCALE].reshape(-1)
    if settings["feedforward"]:
        return weight * scale[None, :], bias
    return weight * scale[:, None], (None if bias is None else bias * scale)


IA3_FORMAT = AdapterFormat(
    peft_type="IA3", key_prefix=PEFT_KEY_PREFIX,
    tensor_names=(TensorName(IA3_SCALE, "ia3_l", _file_shape),),
    to_json=_to_json, from_json=_from_json, target_settings=_target_settings, cell_settings=_cell_settings,
    json_keys=_JSON_KEYS, required_values=_REQUIRED_VALUES, fold=_fold)
