"""The config that adds a low-rank adapter after Dense-like layers by :func:`mindpet.get_delta_model`."""
import dataclasses

from mindpet.delta.base.config import DeltaConfig
from mindpet.utils.activation import check_activation_name
from mindpet.utils.validation import check_positive_int, check_str


@dataclasses.dataclass
class LowRankAdapterConfig(DeltaConfig):
    """A low-rank (Compacter-style) adapter after every targeted Dense-like layer: each becomes a
    :class:`~mindpet.delta.LowRankAdapterDense` holding the layer's own ``weight`` and ``bias``, its activation and
    dtypes.

    Args:
{targeting_arguments}
        reduction_factor (int): the bottleneck is ``out_channels // reduction_factor`` wide. Default: ``1``.
        low_rank_size (int): the rank of each projection's factors. Default: ``1``.
        low_rank_w_init (str): the initializer name of the factors. Default: ``'xavier_uniform'``.
        non_linearity (str): the activation between the projections. Default: ``'gelu'``.

    Raises:
        TypeError: an int field is not an int or a str field not a str; and as
            :class:`~mindpet.delta.base.config.DeltaConfig`.
        ValueError: an int field is <= 0; and as :class:`~mindpet.delta.base.config.DeltaConfig`. A
            `reduction_factor` larger than a targeted layer's ``out_channels`` is refused when the config is applied.
        ActivationNotFoundError: `non_linearity` is an unknown name (a ValueError and a KeyError).

    Examples:
        >>> from mindpet import LowRankAdapterConfig
        >>> LowRankAdapterConfig(target_modules=["output.dense"], reduction_factor=16).low_rank_size
        1
    """

    method = "low_rank_adapter"

    reduction_factor: int = 1
    low_rank_size: int = 1
    low_rank_w_init: str = "xavier_uniform"
    non_linearity: str = "gelu"

    def validate(self):
        super().validate()
        owner = type(self).__name__
        check_positive_int(self.reduction_factor, "reduction_factor", owner)
        check_positive_int(self.low_rank_size, "low_rank_size", owner)
        check_str(self.low_rank_w_init, "low_rank_w_init", owner)
        check_activation_name(check_str(self.non_linearity, "non_linearity", owner), "non_linearity", owner)
        return self
