"""The delta-parameter naming convention.

Every delta parameter lives under an attribute named ``mindpet_delta_<method>[_<role>]``. Freezing and checkpoint
filtering find delta parameters by that name alone, so a cell only has to follow the convention to take part; the
methods themselves are listed in :mod:`mindpet.registry`.
"""

DELTA_PREFIX = "mindpet_delta_"

# State that a delta cell keeps as a Parameter beside its delta but never trains, so it is not named
# ``mindpet_delta_<method>_*`` (freeze_delta would make it trainable): LoRADense's branch scale, DoRA's merge gate and
# the factor a DoRA merge applied (unmerge divides it out), IA3's merge gate, AdaLoRA's branch scale and rank mask.
LORA_BRANCH_SCALE = "lora_branch_scale"
DORA_GATE = "lora_magnitude_gate"
DORA_MERGED_FACTOR = "lora_magnitude_merged_factor"
IA3_GATE = "ia3_scale_gate"
ADALORA_BRANCH_SCALE = "adalora_branch_scale"
ADALORA_RANK_MASK = "adalora_rank_mask"
DELTA_STATE_NAMES = (LORA_BRANCH_SCALE, DORA_GATE, DORA_MERGED_FACTOR, IA3_GATE, ADALORA_BRANCH_SCALE,
                     ADALORA_RANK_MASK)


def delta_attr_name(method, role):
    """Attribute (and parameter) name for a delta parameter, e.g. ``delta_attr_name('lora', 'a')``."""
    return f"{DELTA_PREFIX}{method}_{role}"


def is_delta_param(param_name, method):
    """Whether a dotted parameter name has a path component of delta method ``method``.

    A component matches if it is ``mindpet_delta_<method>`` or starts with ``mindpet_delta_<method>_``, so
    ``mindpet_delta_adapter_*`` never matches ``mindpet_delta_low_rank_adapter_*``.
    """
    marker = DELTA_PREFIX + method
    return any(part == marker or part.startswith(marker + "_") for part in param_name.split("."))


def is_added_by_delta(param_name):
    """Whether a dotted parameter name belongs to a delta cell's additions rather than to the base model.

    That is a delta parameter of any method (a component starting with ``mindpet_delta_``) or delta-cell state
    (a last component in ``DELTA_STATE_NAMES``). A pretrained checkpoint of the unmodified model holds none of them.
    """
    parts = param_name.split(".")
    return parts[-1] in DELTA_STATE_NAMES or any(part.startswith(DELTA_PREFIX) for part in parts)
