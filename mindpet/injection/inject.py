"""Applying a method to a network by config: the matched Dense-like layers are replaced in place."""
from mindpet.injection.plan import resolve_targets, saved_parameters
from mindpet.injection.tree import replace_cells
from mindpet.registry import method_of_cell
from mindpet.utils.logger import logger

CONFIGS_ATTR = "delta_configs"


def _freeze_all_but_delta(network, saved):
    """Only delta parameters (as their cells created them) and ``saved`` parameters train afterwards."""
    saved_ids = {id(param) for param in saved}
    delta_params = {}
    for _, cell in network.cells_and_names():
        method = method_of_cell(cell)
        if method is not None:
            delta_params.update((id(param), param.requires_grad and method.owns_parameter(param.name))
                                for param in cell.get_parameters())
    for param in network.get_parameters():
        param.requires_grad = id(param) in saved_ids or delta_params.get(id(param), False)


def get_delta_model(network, config):
    """Apply a delta method to ``network`` by config: every targeted Dense-like layer is replaced in place.

    Each matched ``nn.Dense`` (or MindFormers ``Linear``, or a 4-bit :class:`~mindpet.quantization.NF4Dense`, whose
    quantized weight cell the new cell keeps) becomes the method's cell, holding the layer's own ``weight`` and
    ``bias`` Parameter objects (same names, no copy), its activation and its dtypes; it computes in the
    layer's dtype, so a fresh LoRA or adapter cell returns exactly what the layer returned. Shard strategies already
    set on the layer's matmul are carried over and the branch's strategies are derived from them (and validated).
    The new parameters are named by their full paths, exactly as in a network written with the method's cells.

    Afterwards only delta parameters and the cells of ``modules_to_save`` train; everything else is frozen. Call it
    before building the optimizer and before the network's first call in GRAPH mode. The config is kept in
    ``network.delta_configs`` (``{method name: config}``).

    Args:
        network (Cell): the network, built and with its pretrained weights loaded (a checkpoint saved before the
            injection also loads after it: the base parameter names do not change).
        config (DeltaConfig): an injectable method's config: :class:`~mindpet.LoraConfig`,
            :class:`~mindpet.AdapterConfig` or :class:`~mindpet.LowRankAdapterConfig`.

    Returns:
        Cell, ``network`` changed in place.

    Raises:
        TypeError: `network` is not a Cell, or `config` no registered method's config.
        ValueError: the config matches no cell (the message names the closest paths); a matched cell already holds
            a delta method; a cell named by `target_modules` is not a Dense-like layer or cannot take the method
            (with ``"all-dense"`` such cells are skipped with a warning instead); and whatever the method's cell
            raises for the matched layer's sizes.

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet import LoraConfig, get_delta_model, trainable_summary
        >>> net = nn.SequentialCell([nn.Dense(16, 8), nn.ReLU(), nn.Dense(8, 2)])
        >>> x = ms.Tensor(np.ones((4, 16)), ms.float32)
        >>> before = net(x).asnumpy()
        >>> net = get_delta_model(net, LoraConfig(target_modules=["0"], lora_rank=2, lora_alpha=4))
        >>> type(net[0]).__name__, bool((net(x).asnumpy() == before).all())
        ('LoRADense', True)
        >>> print(trainable_summary(net))
        trainable params: 48 || all params: 203 || trainable%: 23.6453
    """
    owner = "get_delta_model"
    resolution = resolve_targets(network, config, owner)
    method = resolution.method
    for cell in resolution.unsupported:
        logger.warning("%s: skipped '%s' (%s): %s.", owner, cell.path, cell.cell_type, cell.reason)
    for entry in resolution.unmatched_entries:
        logger.warning("%s: the target_modules entry %r matches no cell.", owner, entry)
    if network.compile_cache:
        logger.warning("%s: the network was already compiled in GRAPH mode; that graph keeps the old layers. "
                       "Call the network again only through a new training or inference cell.", owner)
    replacements = {}
    for path, _, host in resolution.matched:
        cell = method.build(host, config, path)
        if host.split is not None and method.host_strategies is not None:
            cell.shard(**method.host_strategies(host, cell))
        replacements[path] = cell
    network = replace_cells(network, replacements)
    _freeze_all_but_delta(network, saved_parameters(network, resolution.saved_paths))
    configs = dict(getattr(network, CONFIGS_ATTR, None) or {})
    configs[method.name] = config
    setattr(network, CONFIGS_ATTR, configs)
    logger.info("%s: replaced %d cell(s) with %s.", owner, len(replacements), method.name)
    return network
