"""MindPet 1.0.4's version helpers that MindFormers imports (``mindformers.pet`` builds its prefix encoders' dropout
with :func:`get_dropout`)."""
from mindspore import nn

from mindpet.utils.validation import check_rate


def get_dropout(dropout_prob):
    """An ``nn.Dropout`` that drops with probability ``dropout_prob``.

    MindSpore 2.x takes the drop probability as ``p``; MindSpore 1.x took ``keep_prob``. MindPet 1.0.4 chose the
    argument by version, and MindFormers still calls this function; mindpet supports MindSpore 2.x only.

    Args:
        dropout_prob (float): the probability of dropping an element, in [0, 1).

    Returns:
        nn.Dropout.

    Raises:
        TypeError: `dropout_prob` is not a float (or int 0).
        ValueError: `dropout_prob` is outside [0, 1).

    Examples:
        >>> from mindpet.utils.version_control import get_dropout
        >>> get_dropout(0.1).p
        0.1
    """
    return nn.Dropout(p=check_rate(dropout_prob, "dropout_prob", "get_dropout"))
