"""Quantizing the Dense layers of a built network to NF4, in place."""
from mindspore import nn

from mindpet.injection.hosts import MINDFORMERS_LINEAR, NN_DENSE, UnsupportedHost, dense_arguments
from mindpet.injection.targeting import TargetSpec, check_target_spec, closest_paths
from mindpet.injection.tree import replace_cells
from mindpet.quantization.layer import NF4Dense, check_block_fits, check_quantization
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error

# The layers quantize_base replaces: float Dense-like layers (an NF4Dense is already quantized).
QUANTIZABLE_KINDS = (NN_DENSE, MINDFORMERS_LINEAR)


def _quantizable_kind(cell):
    return next((kind for kind in QUANTIZABLE_KINDS if kind.accepts(cell)), None)


def _matched_layers(network, target, owner):
    """``[(path, host view)]`` of the layers ``target`` names; ValueError for a named cell that cannot be
    quantized (with ``"all-dense"`` such cells are skipped)."""
    matched, refused = [], []
    for path, cell in network.cells_and_names():
        kind = _quantizable_kind(cell)
        if not path or not target.matches(path, kind is not None):
            continue
        try:
            if isinstance(cell, NF4Dense):
                raise UnsupportedHost("it is already quantized")
            if kind is None:
                raise UnsupportedHost("it is not a float Dense-like layer (nn.Dense or MindFormers' Linear)")
            matched.append((path, kind.view(cell)))
        except UnsupportedHost as reason:
            refused.append(f"'{path}' ({type(cell).__name__}): {reason}")
    if refused and not target.is_all_dense:
        raise ValueError(f"For '{owner}', these matched cells cannot be quantized: {'; '.join(refused[:20])}. "
                         f"Narrow target_modules.")
    return matched


def quantize_base(network, target_modules, quant_type="nf4", double_quant=True, block_size=64):
    """Replace the targeted Dense layers of ``network`` in place by frozen :class:`~mindpet.quantization.NF4Dense`
    layers: the base of QLoRA (Dettmers et al., 2023).

    Each matched ``nn.Dense`` (or MindFormers ``Linear``) is quantized from its current weight, so load the
    pretrained weights first; it keeps its bias (in its float dtype, frozen), its activation and its dtype as the
    compute dtype. The float weight is dropped: afterwards the network holds the 4-bit storage only, and
    ``mindspore.save_checkpoint`` writes it (``<path>.weight.codes``, ``<path>.weight.absmax``, ...), so a network
    quantized once can be rebuilt, quantized again (from any weights) and loaded from that file with
    ``mindspore.load_checkpoint``. Then apply LoRA with :func:`mindpet.get_delta_model`, which keeps the storage.
    Call it before the network's first call in GRAPH mode.

    Args:
        network (Cell): the network, with its pretrained weights loaded.
        target_modules (Union[list[str], str]): the layers to quantize, targeted as ``target_modules`` of
            :class:`~mindpet.LoraConfig`: a list of names (a full path, a path suffix or an ``fnmatch`` pattern), a
            full-match regular expression, or ``"all-dense"`` (every float Dense-like layer; cells it cannot
            quantize are skipped).
        quant_type (str): the 4-bit data type; only ``'nf4'``. Default: ``'nf4'``.
        double_quant (bool): quantize the block absmaxes to 8 bits as well (about 4.13 instead of 4.5 bits a
            weight). Default: ``True``.
        block_size (int): elements per absmax block; even, and a divisor of every matched layer's
            ``in_channels``. Default: ``64``.

    Returns:
        Cell, ``network`` changed in place.

    Raises:
        TypeError: `network` is not a Cell; `target_modules` is not a list of str or a str; `quant_type` is not a
            str, `block_size` not an int, `double_quant` not a bool.
        ValueError: `quant_type` is not ``'nf4'``; `block_size` is not positive, odd, or does not divide a matched
            layer's ``in_channels`` (the message names the layer); `target_modules` matches no quantizable layer
            (the message names the closest paths); a cell it names is not a float Dense-like layer or is already
            quantized.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet import quantize_base
        >>> net = nn.SequentialCell([nn.Dense(128, 64), nn.ReLU(), nn.Dense(64, 2)])
        >>> net = quantize_base(net, target_modules=["0"])
        >>> type(net[0]).__name__, net[0].quantization_info()["block_size"]
        ('NF4Dense', 64)
        >>> net(ms.Tensor(np.ones((3, 128)), ms.float32)).shape
        (3, 2)
    """
    owner = "quantize_base"
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, owner, "network", "a mindspore.nn.Cell", network)
    target = TargetSpec(check_target_spec(target_modules, "target_modules", owner, required=True))
    check_quantization(quant_type, block_size, double_quant, owner)
    matched = _matched_layers(network, target, owner)
    if not matched:
        paths = [path for path, cell in network.cells_and_names() if path]
        dense_paths = [path for path, cell in network.cells_and_names() if path and _quantizable_kind(cell)] or paths
        raise ValueError(f"For '{owner}', target_modules={target_modules!r} matches no float Dense-like layer; the "
                         f"closest paths are {closest_paths(target_modules, dense_paths)}.")
    for entry in target.unmatched_entries([path for path, _ in network.cells_and_names() if path]):
        logger.warning("%s: the target_modules entry %r matches no cell.", owner, entry)
    for path, host in matched:
        check_block_fits(block_size, host.in_channels, owner, f"'{path}'")
    replacements = {}
    for path, host in matched:
        arguments = dict(dense_arguments(host), weight_init=host.weight.value())
        cell = NF4Dense(**arguments, block_size=block_size, double_quant=double_quant, quant_type=quant_type)
        if host.has_bias:
            cell.bias = host.bias
            cell.bias.requires_grad = False
        if host.split is not None:
            cell.shard(strategy_matmul=host.split.matmul, strategy_bias_add=host.bias_strategy,
                       strategy_activation=(host.split.output,) if host.activation is not None else None)
        replacements[path] = cell
    logger.info("%s: quantized %d layer(s) to NF4 (block_size=%d, double_quant=%s).", owner, len(replacements),
                block_size, double_quant)
    return replace_cells(network, replacements)
