"""The delta-parameter naming convention.

Every delta parameter lives under an attribute named ``mindpet_delta_<method>[_<role>]``. Freezing and checkpoint
filtering find delta parameters by that name alone, so a cell only has to follow the convention to take part; the
methods themselves are listed in :mod:`mindpet.registry`.
"""

DELTA_PREFIX = "mindpet_delta_"


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
