"""Folding every mergeable delta into its base weight and putting back plain Dense layers, for inference."""
from mindspore import nn

from mindpet.delta.base.mergeable import MergeableDense
from mindpet.injection.tree import replace_cells
from mindpet.registry import method_of_cell
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error


def merge_and_unload(network):
    """Merge every mergeable delta cell of ``network`` and replace it by a plain Dense layer, for inference.

    Every cell of a mergeable method (:class:`~mindpet.delta.LoRADense`, and every cell built on
    :class:`~mindpet.delta.base.mergeable.MergeableDense`) is merged, if it is not yet, and replaced by an ``nn.Dense``
    with its ``in_channels``, ``out_channels``, ``has_bias`` and activation, holding the very same ``weight`` and
    ``bias`` Parameters under the same names. A checkpoint of the result therefore loads into the model built with
    ``nn.Dense``. A merged cell still runs its switched-off branch; the ``nn.Dense`` runs only ``x W^T + b`` and the
    activation. Cells are found in plain attributes, ``nn.SequentialCell``, ``nn.CellList`` and ``nn.CellDict``; a
    cell held in two places is replaced in both.

    On a quantized base (:func:`mindpet.quantize_base`) the weight is dequantized to the float dtype it was quantized
    from, the delta is folded in (in float32), and the Dense layer gets new ``weight`` and ``bias`` Parameters of the
    same names; the log says which weights were dequantized.

    ``nn.Dense`` computes in its weight's dtype. A cell whose ``compute_dtype`` differs from its ``param_init_type``
    (for example float32 parameters computed in float16, the manual's default) is replaced by a
    :class:`~mindpet.delta.base.dense_core.DenseCore` instead: the same Parameters and names, computing in
    ``compute_dtype`` and returning the input's dtype, as the delta cell did.

    Call it before the network's first call in GRAPH mode: a network called before keeps running the graph compiled
    then (still correct, but no faster). Afterwards the network holds no delta parameters of the merged methods.

    Args:
        network (Cell): the network, or a mergeable delta cell itself.

    Returns:
        Cell, ``network`` changed in place; the new Dense layer when ``network`` is a mergeable delta cell.

    Raises:
        TypeError: ``network`` is not a Cell.
        ValueError: ``network`` holds delta cells of a method that cannot merge (adapters, prefixes); nothing is
            changed then. The message names their paths.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.delta import LoRADense, merge_and_unload
        >>> net = nn.SequentialCell([LoRADense(8, 4, lora_rank=2, lora_alpha=4, lora_b_init="normal",
        ...                                    compute_dtype=ms.float32), nn.ReLU()])
        >>> x = ms.Tensor(np.ones((3, 8)), ms.float32)
        >>> before = net(x).asnumpy()
        >>> net = merge_and_unload(net)
        >>> type(net[0]).__name__, [param.name for param in net.get_parameters()]
        ('Dense', ['0.weight', '0.bias'])
        >>> bool(np.allclose(net(x).asnumpy(), before, atol=1e-5))
        True
    """
    owner = "merge_and_unload"
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, owner, "network", "a Cell", network)
    cells = list(network.cells_and_names())
    unmergeable = [f"{path or '<network>'} ({type(cell).__name__})" for path, cell in cells
                   if method_of_cell(cell) is not None and not isinstance(cell, MergeableDense)]
    if unmergeable:
        raise ValueError(f"For '{owner}', these delta cells cannot be merged into a base weight: "
                         f"{', '.join(unmergeable[:20])}. Only methods whose update is linear in the weight merge.")
    replacements = {path: cell.to_plain_dense() for path, cell in cells if isinstance(cell, MergeableDense)}
    if not replacements:
        logger.warning("%s: the network holds no mergeable delta cell; nothing was changed.", owner)
        return network
    logger.info("%s: merged and replaced %d cell(s).", owner, len(replacements))
    return replace_cells(network, replacements)
