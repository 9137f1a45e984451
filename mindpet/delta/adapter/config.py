"""The config that adds a bottleneck adapter after Dense-like layers by :func:`mindpet.get_delta_model`."""
import dataclasses

from mindpet.delta.base.config import DeltaConfig
from mindpet.utils.activation import check_activation_name
from mindpet.utils.validation import check_positive_int, check_str


@dataclasses.dataclass
class AdapterConfig(DeltaConfig):
    """A Houlsby bottleneck adapter after every targeted Dense-like layer: each becomes an
    :class:`~mindpet.delta.AdapterDense` holding the layer's own ``weight`` and ``bias``, its activation and dtypes.

    Args:
{targeting_arguments}
        bottleneck_size (int): the adapter's inner width. Default: ``64``.
        non_linearity (str): the activation between the projections. Default: ``'gelu'``.

    Raises:
        TypeError: `bottleneck_size` is not an int or `non_linearity` not a str; and as
            :class:`~mindpet.delta.base.config.DeltaConfig`.
        ValueError: `bottleneck_size` <= 0; and as :class:`~mindpet.delta.base.config.DeltaConfig`.
        ActivationNotFoundError: `non_linearity` is an unknown name (a ValueError and a KeyError).

    Examples:
        >>> from mindpet import AdapterConfig
        >>> AdapterConfig(target_modules=["output.dense"], bottleneck_size=16).bottleneck_size
        16
    """

    method = "adapter"

    bottleneck_size: int = 64
    non_linearity: str = "gelu"

    def validate(self):
        super().validate()
        owner = type(self).__name__
        check_positive_int(self.bottleneck_size, "bottleneck_size", owner)
        check_activation_name(check_str(self.non_linearity, "non_linearity", owner), "non_linearity", owner)
        return self
