"""Which parameters each fine-tuning method trains: one ``freeze_delta`` (or ``freeze_modules``) call per method.

The classifier head is new for the task, so every method trains it (``exclude=['*classifier*']``). Freeze before
building the optimizer: an optimizer built earlier keeps updating every parameter it was given.

>>> from bert.methods import freeze_for_method
>>> from bert.modeling import BertClassifier, BertConfig
>>> config = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
>>> trainable = freeze_for_method(BertClassifier(config, 2, method="lora", lora_rank=4), "lora")
>>> len(trainable), trainable[-2:]
(10, ['classifier.bias', 'classifier.weight'])
"""
from mindpet.graph import freeze_delta, freeze_modules

from bert.modeling import METHOD_NAMES

METHODS = METHOD_NAMES
HEAD_PATTERNS = ["*classifier*"]
# The freeze_delta mode of each method that trains mindpet delta parameters (or, for BitFit, the biases).
FREEZE_MODES = {"lora": "lora", "lora_rdrop": "lora", "adapter": "adapter", "low_rank_adapter": "low_rank_adapter",
                "bitfit": "bitfit", "ptuning2": "ptuning2"}


def freeze_for_method(net, method):
    """Freeze `net` for `method` and return the sorted names of its trainable parameters.

    ``'full'`` freezes nothing; ``'frozen_head'`` freezes everything but the classifier; every other method
    trains its delta parameters (BitFit: every ``*bias``) and the classifier.

    Args:
        net (mindspore.nn.Cell): A ``BertClassifier`` built with the same `method`.
        method (str): One of :data:`METHODS`.

    Returns:
        list[str], the sorted names of the trainable parameters.

    Raises:
        ValueError: If `method` is unknown, or `net` has no delta parameters of the method.
    """
    if method not in METHODS:
        raise ValueError(f"For 'freeze_for_method', the argument 'method' must be one of {METHODS}, "
                         f"but got {method!r}.")
    if method == "full":
        return freeze_modules(net, exclude=["*"])
    if method == "frozen_head":
        return freeze_modules(net, include=["*"], exclude=HEAD_PATTERNS)
    return freeze_delta(net, mode=FREEZE_MODES[method], exclude=HEAD_PATTERNS)
