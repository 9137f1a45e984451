"""The config that applies LoRA to a network by :func:`mindpet.get_delta_model`."""
import dataclasses
import re
from typing import Dict, Union

from mindpet.delta.base.config import DeltaConfig
from mindpet.utils.validation import (
    argument_error,
    check_bool,
    check_nonzero_number,
    check_positive_int,
    check_rate,
)


def _check_patterns(patterns, arg_name, owner, check_value):
    """A dict of cell name or regular expression -> value, each value checked by ``check_value``."""
    if patterns is None:
        return {}
    if not isinstance(patterns, dict) or not all(isinstance(key, str) and key for key in patterns):
        raise argument_error(TypeError, owner, arg_name, "a dict with non-empty str keys", patterns)
    for key, value in patterns.items():
        try:
            re.compile(key)
        except re.error as err:
            raise argument_error(ValueError, owner, f"{arg_name}[{key!r}]", f"a valid regular expression ({err})",
                                 key) from err
        check_value(value, f"{arg_name}[{key!r}]", owner)
    return dict(patterns)


@dataclasses.dataclass
class LoraConfig(DeltaConfig):
    """LoRA on every targeted Dense-like layer: each becomes a :class:`~mindpet.delta.LoRADense` holding the
    layer's own ``weight`` and ``bias``, its activation and its dtypes.

    Args:
{targeting_arguments}
        lora_rank (int): the rank of each update. Default: ``8``.
        lora_alpha (Union[int, float]): the scale numerator; the update is multiplied by ``lora_alpha / lora_rank``.
            Default: ``16``.
        lora_dropout (float): dropout on the branch input while training, in [0, 1). Default: ``0.0``.
        rank_pattern (dict[str, int], optional): per-layer ranks, keyed by a layer name (as a list entry of
            `target_modules`) or a full-match regular expression. Default: ``None`` (empty).
        alpha_pattern (dict[str, Union[int, float]], optional): per-layer alphas, keyed the same way.
            Default: ``None`` (empty).
        use_rslora (bool): scale the update by ``lora_alpha / sqrt(lora_rank)`` (rsLoRA). Default: ``False``.
        use_dora (bool): learn a magnitude per output row (DoRA); it starts at the row norms of each layer's own
            weight. Default: ``False``.

    Raises:
        TypeError: `lora_rank` is not an int, `lora_alpha` not a number, `lora_dropout` not a float, a pattern not a
            dict with str keys, `use_rslora` or `use_dora` not a bool; and as
            :class:`~mindpet.delta.base.config.DeltaConfig`.
        ValueError: `lora_rank` <= 0, `lora_alpha` 0 or not finite, `lora_dropout` outside [0, 1), a pattern key
            not a valid regular expression; and as :class:`~mindpet.delta.base.config.DeltaConfig`.

    Examples:
        >>> from mindpet import LoraConfig
        >>> config = LoraConfig(target_modules=["query", "value"], lora_rank=4, lora_alpha=8)
        >>> config.to_dict()["lora_rank"], LoraConfig.from_dict(config.to_dict()) == config
        (4, True)
        >>> LoraConfig(target_modules=["query", "value"], use_dora=True).to_dict()["use_dora"]
        True
    """

    method = "lora"

    lora_rank: int = 8
    lora_alpha: Union[int, float] = 16
    lora_dropout: float = 0.0
    rank_pattern: Dict[str, int] = None
    alpha_pattern: Dict[str, Union[int, float]] = None
    use_rslora: bool = False
    use_dora: bool = False

    def validate(self):
        super().validate()
        owner = type(self).__name__
        check_positive_int(self.lora_rank, "lora_rank", owner)
        check_nonzero_number(self.lora_alpha, "lora_alpha", owner)
        check_rate(self.lora_dropout, "lora_dropout", owner)
        self.rank_pattern = _check_patterns(self.rank_pattern, "rank_pattern", owner, check_positive_int)
        self.alpha_pattern = _check_patterns(self.alpha_pattern, "alpha_pattern", owner, check_nonzero_number)
        check_bool(self.use_rslora, "use_rslora", owner)
        check_bool(self.use_dora, "use_dora", owner)
        return self
