"""The config that applies AdaLoRA to a network by :func:`mindpet.get_delta_model`, and schedules its budget."""
import dataclasses
from typing import Dict, List, Optional, Union

from mindpet.delta.base.config import DeltaConfig
from mindpet.utils.validation import (
    argument_error,
    check_finite_number,
    check_nonzero_number,
    check_positive_int,
    check_rate,
)


def _check_count(value, arg_name, owner):
    """An int >= 0."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise argument_error(TypeError, owner, arg_name, "an int", value)
    if value < 0:
        raise argument_error(ValueError, owner, arg_name, "an int >= 0", value)
    return value


def _check_beta(value, arg_name, owner):
    """A float strictly between 0 and 1, as the exponential averages need."""
    if not isinstance(value, float):
        raise argument_error(TypeError, owner, arg_name, "a float in (0, 1)", value)
    if not 0.0 < value < 1.0:
        raise argument_error(ValueError, owner, arg_name, "in the open range (0, 1)", value)
    return value


@dataclasses.dataclass
class AdaLoraConfig(DeltaConfig):
    """AdaLoRA on every targeted Dense-like layer: each becomes a :class:`~mindpet.delta.AdaLoRADense` of rank
    `init_r` holding the layer's own ``weight`` and ``bias``, its activation and its dtypes; during training
    :class:`~mindpet.AdaLoraCallback` prunes the total rank to ``target_r`` times the number of adapted layers. The
    field names are PEFT's.

    The budget (the number of singular values kept over all layers) follows PEFT's schedule at optimizer step ``t``
    (counted from 1): ``init_r * n`` while ``t <= tinit``; then
    ``int((init_r - target_r) * n * (1 - (t - tinit) / (total_step - tfinal - tinit)) ** 3) + target_r * n``,
    applied every `deltaT` steps, until ``t = total_step - tfinal``, where the final pattern is fixed for the last
    `tfinal` steps.

    Args:
{targeting_arguments}
        init_r (int): the rank every adapted layer starts with. Default: ``12``.
        target_r (int): the average rank at the end, at most `init_r`. Default: ``8``.
        tinit (int): steps of warm-up before any pruning. Default: ``0``.
        tfinal (int): steps at the end trained with the final pattern fixed. Default: ``0``.
        deltaT (int): steps between two reallocations of the budget. Default: ``1``.
        beta1 (float): the smoothing of the sensitivity, in (0, 1). Default: ``0.85``.
        beta2 (float): the smoothing of the uncertainty, in (0, 1). Default: ``0.85``.
        orth_reg_weight (Union[int, float]): the weight of the orthogonality penalty (>= 0), used by
            :class:`~mindpet.delta.adalora.AdaLoraOrthogonalLoss`. Default: ``0.5``.
        total_step (int): the number of optimizer steps of the training run; required. Default: ``None``.
        lora_alpha (Union[int, float]): the scale numerator; the update is multiplied by ``lora_alpha / init_r``.
            Default: ``8``.
        lora_dropout (float): dropout on the branch input while training, in [0, 1). Default: ``0.0``.
        rank_pattern (dict[str, list[bool]], optional): the triplets each layer kept, by cell path, a list of
            `init_r` bools (True kept). The callback records it at the final phase; a config holding it injects
            each listed layer truncated to its kept rank (as :func:`~mindpet.load_delta` does from a file).
            Default: ``None``.

    Raises:
        TypeError: a rank, step count or `deltaT` is not an int; `beta1`, `beta2` or `lora_dropout` is not a float;
            `lora_alpha` or `orth_reg_weight` is not a number; `rank_pattern` is not a dict of str to lists of bool;
            and as :class:`~mindpet.delta.base.config.DeltaConfig`.
        ValueError: `init_r`, `target_r`, `deltaT` or `total_step` <= 0 (or `total_step` missing); `target_r` >
            `init_r`; `tinit` or `tfinal` < 0; ``tinit >= total_step - tfinal`` (no budgeting phase); a beta outside
            (0, 1); `orth_reg_weight` < 0; `lora_alpha` 0; `lora_dropout` outside [0, 1); a `rank_pattern` list
            whose length is not `init_r`; and as :class:`~mindpet.delta.base.config.DeltaConfig`.

    Examples:
        >>> from mindpet import AdaLoraConfig
        >>> config = AdaLoraConfig(target_modules=["query", "value"], init_r=12, target_r=8, tinit=10, tfinal=20,
        ...                        deltaT=5, total_step=150)
        >>> AdaLoraConfig.from_dict(config.to_dict()) == config
        True
        >>> AdaLoraConfig(target_modules=["query"], tinit=100, tfinal=60, total_step=150)
        Traceback (most recent call last):
            ...
        ValueError: For 'AdaLoraConfig', the argument 'tinit' must be below total_step - tfinal = 90, or ...
    """

    method = "adalora"

    init_r: int = 12
    target_r: int = 8
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: Union[int, float] = 0.5
    total_step: Optional[int] = None
    lora_alpha: Union[int, float] = 8
    lora_dropout: float = 0.0
    rank_pattern: Optional[Dict[str, List[bool]]] = None

    def validate(self):
        super().validate()
        owner = type(self).__name__
        check_positive_int(self.init_r, "init_r", owner)
        check_positive_int(self.target_r, "target_r", owner)
        if self.target_r > self.init_r:
            raise argument_error(ValueError, owner, "target_r", f"at most init_r={self.init_r}", self.target_r)
        _check_count(self.tinit, "tinit", owner)
        _check_count(self.tfinal, "tfinal", owner)
        check_positive_int(self.deltaT, "deltaT", owner)
        _check_beta(self.beta1, "beta1", owner)
        _check_beta(self.beta2, "beta2", owner)
        if check_finite_number(self.orth_reg_weight, "orth_reg_weight", owner) < 0:
            raise argument_error(ValueError, owner, "orth_reg_weight", "a number >= 0", self.orth_reg_weight)
        if self.total_step is None:
            raise argument_error(ValueError, owner, "total_step", "the number of optimizer steps of the run (an int "
                                 "> 0): the budget schedule needs it", self.total_step)
        check_positive_int(self.total_step, "total_step", owner)
        if self.tinit >= self.total_step - self.tfinal:
            raise argument_error(ValueError, owner, "tinit", f"below total_step - tfinal = "
                                 f"{self.total_step - self.tfinal}, or no step is left to prune the rank in",
                                 self.tinit)
        check_nonzero_number(self.lora_alpha, "lora_alpha", owner)
        check_rate(self.lora_dropout, "lora_dropout", owner)
        self.rank_pattern = self._checked_pattern(owner)
        return self

    def _checked_pattern(self, owner):
        if self.rank_pattern is None:
            return None
        pattern = self.rank_pattern
        if not isinstance(pattern, dict) or not all(isinstance(key, str) and key for key in pattern):
            raise argument_error(TypeError, owner, "rank_pattern", "a dict with non-empty str keys", pattern)
        for key, kept in pattern.items():
            if not isinstance(kept, list) or not all(isinstance(flag, bool) for flag in kept):
                raise argument_error(TypeError, owner, f"rank_pattern[{key!r}]", "a list of bool", kept)
            if len(kept) != self.init_r:
                raise argument_error(ValueError, owner, f"rank_pattern[{key!r}]",
                                     f"a list of init_r={self.init_r} bools", kept)
        return dict(pattern)

    def rank_of(self, path):
        """The number of triplets the layer at ``path`` holds when injected: its kept rank in `rank_pattern`, at
        least 1 (a layer pruned to rank 0 keeps one triplet, masked), else `init_r`."""
        kept = (self.rank_pattern or {}).get(path)
        return self.init_r if kept is None else max(1, sum(kept))

    def final_ranks(self):
        """``{cell path: kept rank}`` from `rank_pattern` (empty before the final phase was reached)."""
        return {path: sum(kept) for path, kept in sorted((self.rank_pattern or {}).items())}

    def budget(self, step, cells):
        """PEFT's budget at optimizer step ``step`` (from 1) for ``cells`` adapted layers, and whether the budget is
        (re)applied at that step: ``(budget, mask)``."""
        initial, target = self.init_r * cells, self.target_r * cells
        if step <= self.tinit:
            return initial, False
        if step > self.total_step - self.tfinal:
            return target, True
        remaining = 1 - (step - self.tinit) / (self.total_step - self.tfinal - self.tinit)
        return int((initial - target) * remaining ** 3 + target), step % self.deltaT == 0
