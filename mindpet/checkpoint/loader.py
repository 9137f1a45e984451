"""Loading checkpoints into a network with delta cells: the pretrained base weights, then the delta."""
import os
from typing import NamedTuple

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from mindpet.checkpoint.formats import TRAINING_COUNTER_KEYS, check_encryption_mode, checkpoint_format
from mindpet.checkpoint.safetensors_file import METADATA_KEY, SafetensorsError, read_header
from mindpet.checkpoint.selection import trained_parameters
from mindpet.delta.base.mergeable import merged_cells
from mindpet.utils.logger import logger
from mindpet.utils.naming import is_added_by_delta
from mindpet.utils.validation import argument_error, check_bool, check_str, quote_names


class DeltaLoadResult(NamedTuple):
    """What :func:`load_delta_checkpoint` and :func:`~mindpet.load_delta` found: names they expected but missed, and
    names they could not place."""
    missing: list[str]
    unexpected: list[str]


class BaseLoadResult(NamedTuple):
    """What :func:`load_base_checkpoint` found: base parameters absent from the checkpoint, and checkpoint entries
    that are no parameter of the network."""
    missing: list[str]
    unexpected: list[str]


def _safetensors_is_empty(path):
    """Whether a safetensors file's header lists no tensor. A file that is no safetensors file at all is left for
    MindSpore to report."""
    try:
        header, _ = read_header(path)
    except SafetensorsError:
        return False
    return not any(key != METADATA_KEY for key in header)


def _read_checkpoint(ckpt_file_name, owner, dec_key=None, dec_mode="AES-GCM"):
    """The entries of a checkpoint file, refusing a missing or empty file with a message that names it."""
    if not os.path.isfile(ckpt_file_name):
        raise FileNotFoundError(f"For '{owner}', the checkpoint file '{ckpt_file_name}' does not exist.")
    file_format = checkpoint_format(ckpt_file_name, "ckpt_file_name", owner)
    empty = f"For '{owner}', the checkpoint file '{ckpt_file_name}' is empty"
    advice = "A save into it was probably interrupted, or the saved network had no trainable parameter."
    if os.path.getsize(ckpt_file_name) == 0:
        raise ValueError(f"{empty} (0 bytes): it holds no tensors. {advice}")
    if file_format == "safetensors" and _safetensors_is_empty(ckpt_file_name):
        raise ValueError(f"{empty}: its header lists no tensors. {advice}")
    checkpoint = ms.load_checkpoint(ckpt_file_name, dec_key=dec_key, dec_mode=dec_mode, format=file_format)
    if not any(name not in TRAINING_COUNTER_KEYS for name in checkpoint):
        raise ValueError(f"{empty}: it holds only the training counters {sorted(checkpoint)}, no parameter tensors. "
                         f"{advice}")
    return checkpoint


def _check_dec_key(dec_key, owner):
    # The value is never quoted: it is a secret.
    if dec_key is not None and not isinstance(dec_key, bytes):
        raise TypeError(f"For '{owner}', the argument 'dec_key' must be bytes or None, but got a "
                        f"{type(dec_key).__name__} (its value is not shown, it is a secret).")


def _check_compatible(param, value, source, owner, attributes=("shape", "dtype")):
    for attribute in attributes:
        expected, found = getattr(param, attribute), getattr(value, attribute)
        if expected != found:
            raise ValueError(f"For '{owner}', the parameter '{param.name}' has {attribute} {expected} in the "
                             f"network but {found} in '{source}'.")


def load_delta_checkpoint(net, ckpt_file_name, strict=True, dec_key=None, dec_mode='AES-GCM'):
    """
    Load a delta checkpoint onto a network that already holds its base weights.

    The expected keys are the trained parameters of `net`: ``requires_grad=True`` minus optimizer state. Freeze
    `net` exactly as in training (the same ``freeze_delta(...)`` call) before loading, so that this set matches what
    the delta holds. Every checkpoint entry named like a parameter of `net` is loaded, frozen ones included. All
    entries are checked before any is loaded, so on an error `net` is unchanged. Messages list at most ten names
    per problem, and never show `dec_key`.

    Args:
        net (mindspore.nn.Cell): The network to load into, with its base weights already in place.
        ckpt_file_name (str): A delta checkpoint, ``.ckpt`` or ``.safetensors`` (the extension picks the format).
        strict (bool): Whether missing or unexpected entries raise ValueError. When ``False``, they are logged as a
            warning and the rest is loaded. Default: ``True``.
        dec_key (Union[None, bytes]): The key of an encrypted ``.ckpt`` file. Default: ``None``.
        dec_mode (str): The encryption mode: ``'AES-GCM'``, ``'AES-CBC'`` or ``'SM4-CBC'``. Default: ``'AES-GCM'``.

    Returns:
        DeltaLoadResult, with `missing` (trained parameters of `net` absent from the file) and `unexpected` (file
        entries that are no parameter of `net`, such as extra values stored by ``CheckpointConfig(append_info=...)``).
        The training counters ``epoch_num`` and ``step_num`` are metadata, never unexpected.

    Raises:
        TypeError: If `net` is not a `mindspore.nn.Cell`, `ckpt_file_name` is not a str, `strict` is not a bool,
            `dec_key` is neither bytes nor None, or `dec_mode` is not a str.
        FileNotFoundError: If `ckpt_file_name` is not an existing file.
        ValueError: If the extension is neither ``.ckpt`` nor ``.safetensors``, `dec_mode` is not a known mode, the
            file is empty (0 bytes, or no parameter tensors), an entry's shape or dtype differs from the parameter
            of the same name, a cell of `net` is merged (a LoRA update folded into its weight would no longer match
            the loaded delta), or, with `strict`, any entry is missing or unexpected.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.checkpoint import load_delta_checkpoint
        >>> trained = nn.Dense(3, 2)
        >>> trained.bias.requires_grad = False
        >>> path = os.path.join(tempfile.mkdtemp(), "delta.ckpt")
        >>> ms.save_checkpoint(trained.trainable_params(), path)
        >>> fresh = nn.Dense(3, 2)
        >>> fresh.bias.requires_grad = False
        >>> load_delta_checkpoint(fresh, path)
        DeltaLoadResult(missing=[], unexpected=[])
        >>> bool((fresh.weight.asnumpy() == trained.weight.asnumpy()).all())
        True
    """
    owner = "load_delta_checkpoint"
    if not isinstance(net, nn.Cell):
        raise argument_error(TypeError, owner, "net", "a mindspore.nn.Cell", net)
    check_str(ckpt_file_name, "ckpt_file_name", owner)
    check_bool(strict, "strict", owner)
    _check_dec_key(dec_key, owner)
    check_encryption_mode(dec_mode, "dec_mode", owner)
    checkpoint = _read_checkpoint(ckpt_file_name, owner, dec_key, dec_mode)

    merged = merged_cells(net)
    if merged:
        raise ValueError(f"For '{owner}', the cells {quote_names(merged)} are merged; call unmerge() on them "
                         f"before loading a delta, or the old update stays folded into their weights.")
    params_by_name = {param.name: param for param in net.get_parameters()}
    missing = [param.name for param in trained_parameters(net) if param.name not in checkpoint]
    unexpected = [name for name in checkpoint
                  if name not in params_by_name and name not in TRAINING_COUNTER_KEYS]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} trained parameters of the network missing from the file: "
                            f"{quote_names(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} entries of the file that are no parameter of the network: "
                            f"{quote_names(unexpected)}")
        message = (f"For '{owner}', '{ckpt_file_name}' does not match the network's trainable parameters; "
                   + "; ".join(problems) + ". Freeze the network as in training before loading.")
        if strict:
            raise ValueError(message + " Pass strict=False to load the matching entries anyway.")
        logger.warning(message)

    matched = [(params_by_name[name], value) for name, value in checkpoint.items() if name in params_by_name]
    for param, value in matched:
        _check_compatible(param, value, ckpt_file_name, owner)
    for param, value in matched:
        param.set_data(value)
    return DeltaLoadResult(missing=missing, unexpected=unexpected)


def _base_values(ckpt_file_name_or_dict, owner):
    """Name -> Parameter from a checkpoint path or a dict of Tensors, and where they came from (for messages)."""
    if isinstance(ckpt_file_name_or_dict, str):
        return _read_checkpoint(ckpt_file_name_or_dict, owner), ckpt_file_name_or_dict
    if isinstance(ckpt_file_name_or_dict, dict) and all(
            isinstance(name, str) and isinstance(value, Tensor) for name, value in ckpt_file_name_or_dict.items()):
        values = {name: value if isinstance(value, Parameter) else Parameter(value, name=name)
                  for name, value in ckpt_file_name_or_dict.items()}
        return values, "the given dict"
    raise argument_error(TypeError, owner, "ckpt_file_name_or_dict",
                         "a checkpoint path (str) or a dict of parameter name to Tensor", ckpt_file_name_or_dict)


def _init_dora_magnitudes(network, loaded_names, owner):
    """DoRA's magnitude starts at the row norms of its cell's weight: every unmerged DoRA cell whose weight was just
    loaded, and whose magnitude was not, computes it again from the loaded weight."""
    reset = []
    for path, cell in network.cells_and_names():
        if getattr(cell, "use_dora", False) and not cell.merged and cell.weight.name in loaded_names \
                and cell.mindpet_delta_lora_magnitude.name not in loaded_names:
            cell.init_dora_magnitude()
            reset.append(path or "<network>")
    if reset:
        logger.info("%s: DoRA magnitudes set to the row norms of the loaded weights in %d cell(s): %s.", owner,
                    len(reset), quote_names(reset))


def load_base_checkpoint(network, ckpt_file_name_or_dict, strict=True):
    """
    Load pretrained (base) weights into a network that holds delta cells, reporting only real misses.

    ``mindspore.load_param_into_net`` warns about every parameter of the network that the checkpoint lacks, and a
    pretrained checkpoint lacks every delta parameter, so its warning lists them all and hides the real problem.
    This function ignores what delta cells add (names with a component starting with ``mindpet_delta_``, and
    LoRADense's ``lora_branch_scale``): a base parameter of `network` that the checkpoint lacks is a real miss. All
    shapes are checked before anything is loaded, so on an error `network` is unchanged. Entries named like a delta
    parameter are loaded too, as ``load_param_into_net`` would. Float dtypes are converted to the parameter's, as
    ``load_param_into_net`` does. A DoRA cell (``LoRADense(use_dora=True)``) whose weight is loaded gets its
    magnitude recomputed from that weight, as :meth:`~mindpet.delta.LoRADense.init_dora_magnitude` does, unless the
    checkpoint holds the magnitude too.

    Args:
        network (mindspore.nn.Cell): The network with its delta cells, e.g. with ``LoRADense`` in place of
            ``nn.Dense``.
        ckpt_file_name_or_dict (Union[str, dict]): A ``.ckpt`` or ``.safetensors`` file of the unmodified model, or
            a dict of parameter name to Tensor (such as ``mindspore.load_checkpoint`` returns).
        strict (bool): Whether real misses raise ValueError. When ``False`` they are logged as one warning and the
            rest is loaded. Default: ``True``.

    Returns:
        BaseLoadResult, with `missing` (base parameters of `network` absent from the checkpoint) and `unexpected`
        (checkpoint entries that are no parameter of `network`, such as optimizer state in a full checkpoint).

    Raises:
        TypeError: If `network` is not a `mindspore.nn.Cell`, `ckpt_file_name_or_dict` is neither a str nor a dict of
            str to Tensor, or `strict` is not a bool.
        FileNotFoundError: If the file does not exist.
        ValueError: If the extension is neither ``.ckpt`` nor ``.safetensors``, the file is empty, an entry's shape
            differs from the parameter of the same name, or, with `strict`, a base parameter is missing.

    Examples:
        >>> import os
        >>> import tempfile
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet.checkpoint import load_base_checkpoint
        >>> from mindpet.delta import LoRADense
        >>> pretrained = nn.SequentialCell([nn.Dense(8, 4)])
        >>> path = os.path.join(tempfile.mkdtemp(), "pretrained.ckpt")
        >>> ms.save_checkpoint(pretrained, path)
        >>> net = nn.SequentialCell([LoRADense(8, 4, lora_rank=2, lora_alpha=4)])
        >>> load_base_checkpoint(net, path)
        BaseLoadResult(missing=[], unexpected=[])
        >>> bool((net[0].weight.asnumpy() == pretrained[0].weight.asnumpy()).all())
        True
    """
    owner = "load_base_checkpoint"
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, owner, "network", "a mindspore.nn.Cell", network)
    check_bool(strict, "strict", owner)
    values, source = _base_values(ckpt_file_name_or_dict, owner)

    params = list(network.get_parameters())
    missing = [param.name for param in params if param.name not in values and not is_added_by_delta(param.name)]
    param_names = {param.name for param in params}
    unexpected = [name for name in values if name not in param_names]
    if missing:
        message = (f"For '{owner}', {len(missing)} base parameters of the network are missing from {source}: "
                   f"{quote_names(missing)}. Is it the checkpoint of this model?")
        if strict:
            raise ValueError(message + " Pass strict=False to load the other parameters anyway.")
        logger.warning(message)
    for param in params:
        if param.name in values:
            _check_compatible(param, values[param.name], source, owner, attributes=("shape",))
    # Every parameter the checkpoint lacks is given its own value, so load_param_into_net has nothing to warn about:
    # the real misses were reported above.
    complete = {**{param.name: param for param in params if param.name not in values}, **values}
    ms.load_param_into_net(network, complete, strict_load=False)
    _init_dora_magnitudes(network, values, owner)
    return BaseLoadResult(missing=missing, unexpected=unexpected)
