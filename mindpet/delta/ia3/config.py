"""The config that applies (IA)^3 to a network by :func:`mindpet.get_delta_model`."""
import dataclasses
from typing import List, Union

from mindpet.delta.base.config import DeltaConfig
from mindpet.injection.targeting import check_target_spec
from mindpet.utils.validation import argument_error


@dataclasses.dataclass
class IA3Config(DeltaConfig):
    """(IA)^3 on every targeted Dense-like layer: each becomes an :class:`~mindpet.delta.IA3Dense` holding the
    layer's own ``weight`` and ``bias``, its activation and its dtypes. A targeted layer that `feedforward_modules`
    also names rescales its input; every other one rescales its output.

    Args:
{targeting_arguments}
        feedforward_modules (Union[list[str], str], optional): the targeted layers that rescale their input, in the
            forms of `target_modules`. As in PEFT they must be targeted too: when both fields are lists, every entry
            of `feedforward_modules` must be an entry of `target_modules`. Default: ``None`` (none).

    Raises:
        TypeError: `feedforward_modules` is not a list of str, a str or None; and as
            :class:`~mindpet.delta.base.config.DeltaConfig`.
        ValueError: `feedforward_modules` is an empty list, holds an empty entry, is a regular expression that does
            not compile, or (both fields lists) holds an entry that `target_modules` lacks; and as
            :class:`~mindpet.delta.base.config.DeltaConfig`.

    Examples:
        >>> from mindpet import IA3Config
        >>> config = IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"])
        >>> IA3Config.from_dict(config.to_dict()) == config
        True
        >>> IA3Config(target_modules=["key"], feedforward_modules=["output.dense"])
        Traceback (most recent call last):
            ...
        ValueError: For 'IA3Config', the argument 'feedforward_modules' must be a subset of target_modules ...
    """

    method = "ia3"

    feedforward_modules: Union[List[str], str, None] = None

    def validate(self):
        super().validate()
        owner = type(self).__name__
        self.feedforward_modules = check_target_spec(self.feedforward_modules, "feedforward_modules", owner,
                                                     required=False)
        if isinstance(self.feedforward_modules, list) and isinstance(self.target_modules, list):
            untargeted = [entry for entry in self.feedforward_modules if entry not in self.target_modules]
            if untargeted:
                raise argument_error(ValueError, owner, "feedforward_modules",
                                     f"a subset of target_modules (not targeted: {untargeted[:10]})",
                                     self.feedforward_modules)
        return self
