"""Saving and loading a delta as an adapter directory: :func:`save_delta` and :func:`load_delta`.

:func:`save_delta` finds the one delta method a network holds (its cells, tensors and the other trained parameters
saved as modules to save) and writes it with its config; :func:`load_delta` reads an adapter directory (mindpet's or
Hugging Face PEFT's), checks it against the network, injects the method's cells into a bare base when needed, and
sets every tensor only once all of them fit, undoing the injection when anything fails. The files themselves are
written and read by :mod:`mindpet.checkpoint.adapter_dir`; file keys, path maps and the base fingerprint live in
:mod:`mindpet.checkpoint.adapter_keys`.
"""
import os
from typing import NamedTuple

import numpy as np
from mindspore import Tensor, nn
from mindspore import dtype as mstype

from mindpet.checkpoint.adapter_dir import (
    CONFIG_FILE,
    _check_replaceable,
    adapter_metadata,
    check_fields,
    method_of_peft_type,
    read_adapter_directory,
    write_adapter_directory,
)
from mindpet.checkpoint.adapter_keys import base_fingerprint, check_fingerprint, join_path, path_mapper, place_entries
from mindpet.checkpoint.loader import DeltaLoadResult
from mindpet.checkpoint.selection import trained_parameters
from mindpet.delta.base.mergeable import merged_cells
from mindpet.injection.inject import CONFIGS_ATTR, get_delta_model
from mindpet.injection.targeting import entry_matches
from mindpet.injection.tree import replace_cells
from mindpet.registry import METHODS, get_method, method_of_cell
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error, check_bool, check_str, quote_names, quote_value


class DeltaTensor(NamedTuple):
    """One tensor of a delta: the module that holds it (cell path), its name there, and the Parameter."""
    module: str
    local: str
    param: object


class NetworkDelta(NamedTuple):
    """What :func:`find_delta` found in a network: the method, its config (None for cells written in the source),
    the adapted cells by path (None values for BitFit, which has no cells), its tensors and the saved modules'."""
    method: object
    config: object
    cells: dict
    tensors: list
    saved: list


def _split_param(param):
    """A parameter as a :class:`DeltaTensor` of the module its name's last ``'.'`` separates."""
    module, _, local = param.name.rpartition(".")
    return DeltaTensor(module, local, param)


def _warn_unasked(saved, config, method, owner):
    """Say which saved parameters nobody listed in ``modules_to_save``: an unfrozen base would be saved whole."""
    wanted = (config.modules_to_save if config is not None else None) or []
    unasked = [t.param.name for t in saved if not any(entry_matches(entry, t.module) for entry in wanted)]
    if unasked:
        logger.warning("%s: %d trained parameters outside the %s delta are saved with it as modules to save: %s. "
                       "Freeze them (freeze_delta) if they should not be.", owner, len(unasked), method.name,
                       quote_names(unasked))


def _bitfit_delta(network, owner):
    """BitFit: the trained biases, except those of modules whose other parameters train too (saved whole)."""
    bitfit = get_method("bitfit")
    trained = [_split_param(param) for param in trained_parameters(network)]
    saved_modules = {t.module for t in trained if not bitfit.owns_parameter(t.param.name)}
    tensors = [t for t in trained if bitfit.owns_parameter(t.param.name) and t.module not in saved_modules]
    if not tensors:
        raise ValueError(f"For '{owner}', the network holds no delta cell of any method "
                         f"({[m.name for m in METHODS if m.cell_types]}) and "
                         + ("trains no bias (BitFit)" if trained else "trains no parameter")
                         + ": there is no delta to save. Apply a method first (get_delta_model or freeze_delta).")
    saved = [t for t in trained if t.module in saved_modules]
    _warn_unasked(saved, None, bitfit, owner)
    return NetworkDelta(bitfit, None, {tensor.module: None for tensor in tensors}, tensors, saved)


def find_delta(network, owner):
    """The one delta method ``network`` holds, its cells, its tensors and the other trained parameters.

    Delta parameters are those each method's cells own (trained or not); every other trained parameter (a head in
    ``modules_to_save``, say) is saved beside them. A network with no delta cell that trains biases holds BitFit.

    Raises:
        ValueError: the network holds no delta, or deltas of more than one method.
    """
    found = [(path, cell, method_of_cell(cell)) for path, cell in network.cells_and_names()]
    found = [(path, cell, method) for path, cell, method in found if method is not None]
    if not found:
        return _bitfit_delta(network, owner)
    methods = sorted({method.name for _, _, method in found})
    if len(methods) > 1:
        raise ValueError(f"For '{owner}', the network holds deltas of several methods {methods}; an adapter "
                         f"directory holds one method, as in PEFT.")
    method = found[0][2]
    tensors, cells = [], {}
    for path, cell, _ in found:
        owned = [(local, param) for local, param in cell.parameters_and_names() if method.owns_parameter(param.name)]
        # A parameter is named by its path in the user's network, also when `network` wraps it (a training cell).
        local, param = owned[0]
        module = param.name[:-len(local)].rstrip(".") if param.name.endswith(local) else path
        cells[module] = cell
        tensors.extend(DeltaTensor(module, local, param) for local, param in owned)
    delta_ids = {id(tensor.param) for tensor in tensors}
    saved = [_split_param(param) for param in trained_parameters(network) if id(param) not in delta_ids]
    configs = next((getattr(cell, CONFIGS_ATTR) for _, cell in network.cells_and_names()
                    if getattr(cell, CONFIGS_ATTR, None)), {})
    config = configs.get(method.name)
    _warn_unasked(saved, config, method, owner)
    return NetworkDelta(method, config, cells, tensors, saved)


def _numpy_of(param):
    """The parameter's values as NumPy, and whether they are bfloat16 (which NumPy lacks; written as BF16)."""
    # A copy: asnumpy() can alias the parameter, which the next training step updates in place.
    if param.dtype == mstype.bfloat16:
        return param.astype(mstype.float32).asnumpy().copy(), True
    return param.asnumpy().copy(), False


def delta_file_contents(network, key_map, owner):
    """The JSON fields, tensors and metadata :func:`save_delta` writes for ``network``.

    Returns:
        tuple(dict, dict[str, numpy.ndarray], dict[str, str], set[str]): the config, the tensors by file key, the
        safetensors metadata, and the keys to store as bfloat16.
    """
    delta = find_delta(network, owner)
    fmt = delta.method.adapter_format
    if fmt.pathless and len(delta.cells) > 1:
        raise ValueError(f"For '{owner}', the network holds {len(delta.cells)} {delta.method.name} cells "
                         f"({quote_names(sorted(delta.cells))}); its adapter file, as PEFT's, holds the tensors of "
                         f"one.")
    map_out = path_mapper(key_map, owner)
    tensors, bfloat16_keys, sources = {}, set(), {}
    for tensor, is_delta in [(t, True) for t in delta.tensors] + [(t, False) for t in delta.saved]:
        key = fmt.file_key(map_out(tensor.module), tensor.local, is_delta)
        if key in tensors:
            raise ValueError(f"For '{owner}', the parameters {sources[key]!r} and {tensor.param.name!r} both map to "
                             f"the file key {key!r}; check the argument 'key_map'.")
        values, is_bfloat16 = _numpy_of(tensor.param)
        if is_delta:
            cell = delta.cells[tensor.module]
            settings = fmt.cell_settings(cell) if fmt.cell_settings and cell is not None else {}
            if fmt.file_values is not None and cell is not None:
                values = fmt.file_values(cell, tensor.local, values)
            values = values.reshape(fmt.file_shape(tensor.local, values.shape, settings))
        tensors[key] = values
        sources[key] = tensor.param.name
        if is_bfloat16:
            bfloat16_keys.add(key)
    for module, cell in delta.cells.items():
        for derived in fmt.derived_tensors:
            tensors[fmt.file_key(map_out(module), derived.file)] = derived.compute(cell)
    file_cells = {map_out(path): cell for path, cell in delta.cells.items()}
    fields = {"peft_type": fmt.peft_type}
    if fmt.to_json is not None:
        fields.update(fmt.to_json(delta.config, file_cells))
    if not fmt.pathless:
        fields["target_modules"] = sorted(file_cells)
    fields["modules_to_save"] = sorted({map_out(tensor.module) for tensor in delta.saved}) or None
    fingerprint = {join_path(path, "weight"): base_fingerprint(cell) for path, cell in sorted(file_cells.items())
                   if base_fingerprint(cell) is not None}
    return fields, tensors, adapter_metadata(fingerprint), bfloat16_keys


def save_delta(network, directory, key_map=None):
    """Save the delta of ``network`` with its config as an adapter directory.

    The directory gets ``adapter_config.json`` (the method's config: ``peft_type``, its hyperparameters, the adapted
    module paths as ``target_modules``, and ``modules_to_save``) and ``adapter_model.safetensors`` (the delta
    tensors and the other trained parameters, never optimizer state). LoRA (with rsLoRA and DoRA), IA3, prompt tuning
    and P-tuning v1 are written in Hugging Face PEFT's layout, so ``PeftModel.from_pretrained`` reads them (a prompt
    method's file holds PEFT's single ``prompt_embeddings``, without ``target_modules``); other methods use a
    ``peft_type`` of their own (see ``docs/adapter_files.md``). mindpet's version, MindSpore's, the format version and
    the base fingerprint (the shape of each adapted weight, and how it is quantized on an NF4 base) go into the
    safetensors metadata. The directory appears complete or not at all: the files are written into a staging folder
    that is renamed onto `directory`. An existing adapter directory there is replaced; a folder holding other files
    is refused.

    Args:
        network (mindspore.nn.Cell): the network with its delta: cells injected by
            :func:`~mindpet.get_delta_model` (whose config is recorded) or written in the model source, or BitFit
            (no delta cell, only biases train).
        directory (str): the adapter directory to create or replace; missing parent folders are created.
        key_map (Union[dict, Callable], optional): maps the network's module paths to the paths written in the file
            (e.g. the torch model's): a dict of path prefixes (``{'bert': ''}`` drops a leading ``bert.``) or a
            callable. Default: ``None`` (the network's paths).

    Returns:
        str, `directory`.

    Raises:
        TypeError: `network` is not a Cell, `directory` not a str, `key_map` not a dict of str or a callable.
        ValueError: the network holds no delta, deltas of several methods, or several cells of a prompt method;
            `key_map` maps two parameters to one key; `directory` names a file or a folder holding other files.

    Examples:
        >>> import os, tempfile
        >>> from mindspore import nn
        >>> from mindpet import LoraConfig, get_delta_model, save_delta
        >>> net = get_delta_model(nn.SequentialCell([nn.Dense(8, 4), nn.ReLU(), nn.Dense(4, 2)]),
        ...                       LoraConfig(target_modules=["0"], lora_rank=2, lora_alpha=4))
        >>> folder = save_delta(net, os.path.join(tempfile.mkdtemp(), "adapter"))
        >>> sorted(os.listdir(folder))
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    owner = "save_delta"
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, owner, "network", "a mindspore.nn.Cell", network)
    check_str(directory, "directory", owner)
    if not directory:
        raise argument_error(ValueError, owner, "directory", "a non-empty path", directory)
    fields, tensors, metadata, bfloat16_keys = delta_file_contents(network, key_map, owner)
    _check_replaceable(directory, owner)
    write_adapter_directory(directory, fields, tensors, metadata, bfloat16_keys)
    logger.info("%s: wrote %d tensors of %s to '%s'.", owner, len(tensors), fields["peft_type"], directory)
    return directory


class _InjectionUndo:
    """What :func:`get_delta_model` changes in a network, recorded so that a failed load can put it back."""

    _ABSENT = object()

    def __init__(self, network, paths):
        cells = dict(network.cells_and_names())
        self.originals = {path: cells[path] for path in paths}
        self.trainable = [(param, param.requires_grad) for param in network.get_parameters()]
        self.configs = getattr(network, CONFIGS_ATTR, self._ABSENT)

    def restore(self, network):
        replace_cells(network, self.originals)
        for param, requires_grad in self.trainable:
            param.requires_grad = requires_grad
        if self.configs is self._ABSENT:
            delattr(network, CONFIGS_ATTR)
        else:
            setattr(network, CONFIGS_ATTR, self.configs)


def _settings_mismatch(fmt, targets, cells_by_path):
    """The first ``(path, setting, network value, file value)`` where a held cell disagrees with the file."""
    for path, wanted in sorted(targets.items()):
        held = fmt.cell_settings(cells_by_path[path])
        for setting, value in wanted.items():
            if held.get(setting) != value:
                return path, setting, held.get(setting), value
    return None


def _prepare_cells(network, files, method, entries, owner):
    """Check that the network can take the delta, and inject the method's cells if it has none yet.

    Returns:
        _InjectionUndo or None: how to undo the injection, None when nothing was injected.
    """
    fmt = method.adapter_format
    source = quote_value(os.path.join(files.directory, CONFIG_FILE))
    cells_by_path = dict(network.cells_and_names())
    file_modules = {entry.module: entry.file_module for entry in entries if entry.is_delta}
    if not method.cell_types:
        return None
    holding = [path for path in file_modules if method_of_cell(cells_by_path.get(path)) is method]
    if not holding and (fmt.from_json is None or not method.injectable):
        raise ValueError(f"For '{owner}', the network holds no {method.name} cell at "
                         f"{quote_names(sorted(file_modules))}, and {method.name} is applied in the model source, not "
                         f"injected: build the network with its cells at those paths, then load.")
    absent = sorted(path for path in file_modules if path not in cells_by_path)
    if absent:
        raise ValueError(f"For '{owner}', the delta in {quote_value(files.directory)} adapts layers the network does "
                         f"not have: {quote_names(absent)}. Is 'key_map' right (it maps the file's module paths, "
                         f"e.g. torch's, to the network's cell paths)?")
    try:
        targets = {path: fmt.target_settings(files.fields, file_module) if fmt.target_settings else {}
                   for path, file_module in file_modules.items()}
    except KeyError as err:
        raise ValueError(f"For '{owner}', {source} lacks the field {err} that {method.name} needs.") from err
    if len(holding) == len(targets):
        mismatch = _settings_mismatch(fmt, targets, cells_by_path) if fmt.cell_settings else None
        if mismatch:
            path, setting, held, wanted = mismatch
            raise ValueError(f"For '{owner}', the cell {quote_value(path)} has {setting}={held!r} but {source} "
                             f"records {setting}={wanted!r}; the delta would compute something else than it was "
                             f"trained to. Load it into a base network (it is injected from the file's config) or "
                             f"build the cells with the file's settings.")
        return None
    if holding:
        lacking = sorted(set(targets) - set(holding))
        raise ValueError(f"For '{owner}', the network holds {method.name} cells at some of the layers the delta "
                         f"adapts but not at {quote_names(lacking)}; load into a base network with none of them, or "
                         f"one with all of them.")
    saved_modules = sorted({entry.module for entry in entries if not entry.is_delta and entry.module})
    try:
        config = fmt.from_json(files.fields, targets, saved_modules)
    except KeyError as err:
        raise ValueError(f"For '{owner}', {source} lacks the field {err}: it records no config to inject "
                         f"{method.name} from (it was saved from cells written in the model source). Build the "
                         f"network with those cells, then load.") from err
    undo = _InjectionUndo(network, sorted(targets))
    try:
        get_delta_model(network, config)
    except BaseException:
        undo.restore(network)
        raise
    return undo


def _assign(network, files, method, entries, strict, owner):
    """Check every tensor against the network and, when all fit, set them; return what was missing/unexpected."""
    fmt = method.adapter_format
    params = {param.name: param for param in network.get_parameters()}
    found = {entry.name for entry in entries}
    expected = [param.name for path, cell in network.cells_and_names() if method_of_cell(cell) is method
                for param in cell.get_parameters() if method.owns_parameter(param.name)]
    missing = [name for name in expected if name not in found]
    unexpected = [entry.key for entry in entries if entry.name not in params]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} delta parameters of the network are not in the file: "
                            f"{quote_names(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} tensors of the file have no parameter in the network: "
                            f"{quote_names(unexpected)}")
        message = f"For '{owner}', {quote_value(files.directory)} does not match the network: " + "; ".join(problems)
        if strict:
            raise ValueError(message + ". Check 'key_map', or pass strict=False to load the rest.")
        logger.warning("%s.", message)
    assignments = []
    for entry in entries:
        if entry.name not in params:
            continue
        param, values = params[entry.name], files.tensors[entry.key]
        if entry.is_delta:
            settings = fmt.target_settings(files.fields, entry.file_module) if fmt.target_settings else {}
            wanted = fmt.file_shape(entry.local, param.shape, settings)
        else:
            wanted = tuple(param.shape)
        if tuple(values.shape) != wanted:
            raise ValueError(f"For '{owner}', the tensor {quote_value(entry.key)} has shape {tuple(values.shape)} in "
                             f"{quote_value(files.directory)}, but the parameter {quote_value(entry.name)} needs "
                             f"{wanted}.")
        if np.issubdtype(values.dtype, np.floating) != (param.dtype in mstype.float_type):
            raise ValueError(f"For '{owner}', the tensor {quote_value(entry.key)} has dtype {values.dtype}, but the "
                             f"parameter {quote_value(entry.name)} is {param.dtype}.")
        if entry.is_delta and fmt.cell_values is not None:
            values = fmt.cell_values(entry.local, values, tuple(param.shape))
        assignments.append((param, values.reshape(param.shape)))
    for param, values in assignments:
        param.set_data(Tensor(values, param.dtype))
    return DeltaLoadResult(missing=missing, unexpected=unexpected)


def _pathless_cell(network, method, directory, owner):
    """``(path, cell)`` of the one cell of ``method`` in ``network``, which a path-less file loads into.

    Raises:
        ValueError: the network holds none of them, or several.
    """
    held = [(path, cell) for path, cell in network.cells_and_names() if method_of_cell(cell) is method]
    if len(held) != 1:
        kinds = " or ".join(cell_type.__name__ for cell_type in method.cell_types)
        found = f"{len(held)} ({quote_names([path for path, _ in held])})" if held else "none"
        raise ValueError(f"For '{owner}', the {method.name} delta in {quote_value(directory)} loads into the one "
                         f"{kinds} of the network, which holds {found}. {method.name} is applied in the model source: "
                         f"build the network with exactly one such cell (the example BERT: set_virtual_tokens), then "
                         f"load.")
    return held[0]


def _without_derived(entries, method, directory, owner):
    """The entries to load: derived tensors are dropped, after checking that the file holds more than them.

    Raises:
        ValueError: the delta tensors of the file are all derived (a PEFT P-tuning file: the encoder's output only),
            so no parameter of the cells could be set.
    """
    derived = [entry for entry in entries if entry.derived]
    if derived and not any(entry.is_delta and not entry.derived for entry in entries):
        reason = method.adapter_format.derived_tensor(derived[0].local).alone
        raise ValueError(f"For '{owner}', {quote_value(directory)} holds only {quote_names([e.key for e in derived])} "
                         f"of the {method.name} delta: {reason}")
    return [entry for entry in entries if not entry.derived]


def load_delta(network, directory, strict=True, key_map=None):
    """Load an adapter directory (written by :func:`save_delta` or by Hugging Face PEFT) into ``network``.

    A network with no cells of the directory's method gets them first, injected by
    :func:`~mindpet.get_delta_model` from the file's config at exactly the layers the file adapts (with the file's
    rank and alpha per layer); afterwards only the delta and the saved modules train. A network that already holds
    the cells is loaded directly, after their settings (LoRA's rank, alpha and variants, IA3's ``feedforward``, a
    prompt's length and width) are checked against the file's: a wrong ``lora_alpha`` is refused, never loaded
    silently. A prompt method's file loads into the network's one cell of that method, wherever it is. The base
    fingerprint saved by mindpet (the shape of each adapted weight) is checked first; a base quantized otherwise than
    the one the delta was made on (NF4 against float, or another block size), with the same shapes, is loaded with a
    warning naming the weight, as PEFT loads QLoRA adapters on 16-bit bases. Everything is checked before anything
    is set: when this raises, the network is as it was (an injection is undone). Fields of a PEFT config that mindpet
    does not know are reported in one warning and ignored; a setting that would change what the tensors mean
    (``fan_in_fan_out``, ``lora_bias``, ...) is refused.

    Args:
        network (mindspore.nn.Cell): the base network, or one holding the method's cells; not merged.
        directory (str): the adapter directory.
        strict (bool): whether delta parameters of the network missing from the file, or tensors of the file with no
            parameter, raise ValueError; when ``False`` they are logged as a warning and the rest is loaded.
            Default: ``True``.
        key_map (Union[dict, Callable], optional): maps the file's module paths (e.g. a torch model's
            ``encoder.layer.0.attention.self.query``) to the network's cell paths: a dict of path prefixes or a
            callable. Default: ``None`` (the same paths).

    Returns:
        DeltaLoadResult, with `missing` (delta parameters of the network absent from the file) and `unexpected` (file
        keys that name no parameter of the network).

    Raises:
        TypeError: `network` is not a Cell, `directory` not a str, `strict` not a bool, `key_map` not a dict of str or
            a callable.
        FileNotFoundError: `directory` or one of its two files does not exist.
        ValueError: a file is malformed or holds no tensor; the ``peft_type`` is not one mindpet loads; the config sets
            something mindpet would misread; the fingerprint differs (the message names the first differing weight);
            the file adapts layers the network lacks; held cells' settings differ from the file's; a method applied
            in the model source has no cells to load into (a prompt method: not exactly one); the file holds only a
            tensor derived from the cell (PEFT's P-tuning ``prompt_embeddings``); a shape differs; a cell is merged;
            or, with `strict`, parameters are missing or unexpected.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from mindspore import nn
        >>> from mindpet import LoraConfig, get_delta_model, load_delta, save_delta
        >>> def base():
        ...     ms.set_seed(0)
        ...     return nn.SequentialCell([nn.Dense(8, 4), nn.ReLU(), nn.Dense(4, 2)])
        >>> trained = get_delta_model(base(), LoraConfig(target_modules=["0"], lora_rank=2, lora_alpha=4))
        >>> _ = trained[0].mindpet_delta_lora_b.set_data(ms.Tensor(np.full((4, 2), 0.5), ms.float32))
        >>> folder = save_delta(trained, os.path.join(tempfile.mkdtemp(), "adapter"))
        >>> fresh = base()
        >>> load_delta(fresh, folder)
        DeltaLoadResult(missing=[], unexpected=[])
        >>> x = ms.Tensor(np.ones((3, 8)), ms.float32)
        >>> type(fresh[0]).__name__, bool(np.allclose(fresh(x).asnumpy(), trained(x).asnumpy()))
        ('LoRADense', True)
    """
    owner = "load_delta"
    if not isinstance(network, nn.Cell):
        raise argument_error(TypeError, owner, "network", "a mindspore.nn.Cell", network)
    check_str(directory, "directory", owner)
    check_bool(strict, "strict", owner)
    map_in = path_mapper(key_map, owner)
    files = read_adapter_directory(directory, owner)
    method = method_of_peft_type(files.fields["peft_type"], owner,
                                 quote_value(os.path.join(directory, CONFIG_FILE)))
    check_fields(files.fields, method, quote_value(os.path.join(directory, CONFIG_FILE)), owner)
    merged = merged_cells(network)
    if merged:
        raise ValueError(f"For '{owner}', the cells {quote_names(merged)} are merged; call unmerge() on them before "
                         f"loading a delta, or the old update stays folded into their weights.")
    check_fingerprint(files, dict(network.cells_and_names()), map_in, owner)
    pathless_cell = (None, None)
    if method.adapter_format.pathless:
        pathless_cell = _pathless_cell(network, method, directory, owner)
    entries = place_entries(files, method, map_in, pathless_cell)
    entries = _without_derived(entries, method, directory, owner)
    undo = _prepare_cells(network, files, method, entries, owner)
    try:
        return _assign(network, files, method, entries, strict, owner)
    except BaseException:
        if undo is not None:
            undo.restore(network)
        raise
