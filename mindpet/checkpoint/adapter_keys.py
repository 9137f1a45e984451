"""Adapter file keys and the base fingerprint: how the tensors of an adapter directory map onto a network.

Module paths in the file (a torch model's, say) are mapped to the network's cell paths by a ``key_map``
(:func:`path_mapper`); each file key is placed as a parameter of the network (:func:`place_entries`, also for the
path-less files of prompt methods), or rewritten with new module paths (:func:`remap_adapter`). The base fingerprint
records the shape and quantization of each adapted base weight (:func:`base_fingerprint`), and
:func:`check_fingerprint` refuses a base that differs from the one the delta was made on, warning when only the
quantization differs.
"""
import json
import re
from typing import NamedTuple

from mindpet.checkpoint.adapter_dir import META_FINGERPRINT
from mindpet.quantization.layer import base_quantization
from mindpet.utils.logger import logger
from mindpet.utils.naming import DELTA_PREFIX
from mindpet.utils.validation import argument_error, quote_value


def join_path(module, local):
    """``module.local``, or ``local`` for a parameter of the root cell."""
    return f"{module}.{local}" if module else local


def path_mapper(key_map, owner):
    """A function that maps a module path by ``key_map``: None (unchanged), a callable ``path -> path``, or a dict of
    path prefixes (the longest that matches whole components wins; ``''`` matches every path, so ``{'': 'bert'}``
    moves everything under ``bert``).

    Raises:
        TypeError: `key_map` is none of these, or the callable returns no str.
    """
    if key_map is None:
        return lambda path: path
    if callable(key_map):
        def mapped(path):
            result = key_map(path)
            if not isinstance(result, str):
                raise argument_error(TypeError, owner, "key_map", f"a callable returning a str for {path!r}", result)
            return result
        return mapped
    if not isinstance(key_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in key_map.items()):
        raise argument_error(TypeError, owner, "key_map", "None, a dict of str path prefixes to str, or a callable",
                             key_map)
    prefixes = sorted(key_map, key=len, reverse=True)

    def by_prefix(path):
        for old in prefixes:
            if not old or path == old or path.startswith(old + "."):
                rest = path[len(old):].lstrip(".") if old else path
                return ".".join(part for part in (key_map[old], rest) if part)
        return path
    return by_prefix


def base_fingerprint(cell):
    """What the delta assumes of the base weight of ``cell``: ``{'shape': [out, in]}``, with
    ``'quantization'`` (:func:`~mindpet.quantization.base_quantization`: ``quant_type``, ``block_size``,
    ``double_quant``, ...) when the base is quantized, or what the cell's own ``base_fingerprint()`` says. None for a
    cell without a ``weight``."""
    describe = getattr(cell, "base_fingerprint", None)
    if callable(describe):
        return describe()
    weight = getattr(cell, "weight", None)
    if weight is None:
        return None
    quantization = base_quantization(cell)
    return {"shape": list(weight.shape), **({"quantization": quantization} if quantization else {})}


class _Entry(NamedTuple):
    """A tensor of the file placed in the network: its file key, parameter name, module path in the file and in the
    network, its name in the cell, whether it is part of the delta (not a saved module), and whether it is a
    :class:`~mindpet.delta.base.file_format.DerivedTensor` (written for other readers, never loaded)."""
    key: str
    name: str
    file_module: str
    module: str
    local: str
    is_delta: bool
    derived: bool = False


def _split_key(rest, method, saved_modules=None):
    """``(module path, name in the file, is delta)`` of a file key without its prefix; ``saved_modules`` are the
    file's ``modules_to_save``."""
    fmt = method.adapter_format
    for entry in fmt.tensor_names:
        if rest == entry.file or rest.endswith("." + entry.file):
            return rest[:-len(entry.file)].rstrip("."), entry.file, True
    parts = rest.split(".")
    for index, part in enumerate(parts):
        if part.startswith(DELTA_PREFIX):
            return ".".join(parts[:index]), ".".join(parts[index:]), True
    module, _, local = rest.rpartition(".")
    # A parameter the method trains in place (BitFit's biases), unless it belongs to a saved module.
    is_delta = (method.trains_pattern is not None and method.owns_parameter(rest)
                and module not in (saved_modules or ()))
    return module, local, is_delta


def _pathless_entry(key, fmt, cell_path, cell):
    """The :class:`_Entry` of the key ``key`` of a path-less format if it names a delta tensor of ``cell`` (at
    ``cell_path`` in the network), else None."""
    derived = fmt.derived_tensor(key) is not None
    local = fmt.local_name(key)
    if not (derived or local != key or local.startswith(DELTA_PREFIX)):
        return None
    names = {name: param.name for name, param in cell.parameters_and_names()} if cell is not None else {}
    return _Entry(key, names.get(local, join_path(cell_path, local)), "", cell_path, local, True, derived)


def place_entries(files, method, map_in, pathless_cell=(None, None)):
    """Every tensor key of ``files`` placed in the network's naming (``map_in`` maps file module paths). The delta
    tensors of a path-less format go to ``pathless_cell``, ``(path, cell)`` of the network's one cell of the method.
    """
    fmt = method.adapter_format
    saved_modules = set(files.fields.get("modules_to_save") or ())
    entries = []
    for key in files.tensors:
        if fmt.pathless:
            entry = _pathless_entry(key, fmt, *pathless_cell)
            if entry is not None:
                entries.append(entry)
                continue
        if not key.startswith(fmt.key_prefix):
            entries.append(_Entry(key, key, "", "", key, False))
            continue
        file_module, file_local, is_delta = _split_key(key[len(fmt.key_prefix):], method, saved_modules)
        module = map_in(file_module)
        local = fmt.local_name(file_local) if is_delta else file_local
        derived = is_delta and fmt.derived_tensor(file_local) is not None
        entries.append(_Entry(key, join_path(module, local), file_module, module, local, is_delta, derived))
    return entries


def _remap_pattern_key(key, mapper):
    """A pattern key that is an exact (escaped) path, mapped; any other regular expression as it is."""
    path = re.sub(r"\\(.)", r"\1", key)
    return re.escape(mapper(path)) if re.escape(path) == key else key


def remap_adapter(files, method, mapper, owner):
    """The fields, tensors and metadata of the adapter ``files`` with every module path mapped by ``mapper``: the
    tensor keys, ``target_modules`` and ``modules_to_save`` lists, exact-path keys of the pattern fields and the
    fingerprint.

    Raises:
        ValueError: two tensors map to one key.
    """
    fmt = method.adapter_format
    tensors = {}
    for key, value in files.tensors.items():
        new_key = key
        if key.startswith(fmt.key_prefix):
            module, local, _ = _split_key(key[len(fmt.key_prefix):], method)
            new_key = fmt.key_prefix + join_path(mapper(module), local)
        if new_key in tensors:
            raise ValueError(f"For '{owner}', two tensors map to the key {quote_value(new_key)}; check the key map.")
        tensors[new_key] = value
    fields = dict(files.fields)
    for name in ("target_modules", "modules_to_save"):
        if isinstance(fields.get(name), list):
            fields[name] = sorted(mapper(path) for path in fields[name])
    for name in fmt.pattern_fields:
        fields[name] = {_remap_pattern_key(key, mapper): value for key, value in (fields.get(name) or {}).items()}
    metadata = dict(files.metadata)
    fingerprint = json.loads(metadata.get(META_FINGERPRINT) or "{}")
    if fingerprint:
        metadata[META_FINGERPRINT] = json.dumps({join_path(mapper(path.rpartition(".")[0]), "weight"): value
                                                 for path, value in fingerprint.items()}, sort_keys=True)
    return fields, tensors, metadata


def check_fingerprint(files, cells_by_path, map_in, owner):
    """Refuse a base whose adapted weights differ from those the delta was made on, naming the first that does."""
    recorded = json.loads(files.metadata.get(META_FINGERPRINT, "{}") or "{}")
    requantized = []
    for weight_path in sorted(recorded):
        module, _, _ = weight_path.rpartition(".")
        cell_path = map_in(module)
        found = base_fingerprint(cells_by_path[cell_path]) if cell_path in cells_by_path else None
        if _only_quantization_differs(found, recorded[weight_path]):
            requantized.append((cell_path, recorded[weight_path].get("quantization"), found.get("quantization")))
        elif found != recorded[weight_path]:
            what = "no such layer (is 'key_map' right?)" if cell_path not in cells_by_path else found
            raise ValueError(f"For '{owner}', the base network does not match the one the delta in "
                             f"{quote_value(files.directory)} was made on: the first differing weight is "
                             f"{quote_value(join_path(cell_path, 'weight'))} (file: {quote_value(weight_path)}), "
                             f"recorded as {recorded[weight_path]}, found {what}.")
    if requantized:
        path, was, now = requantized[0]
        logger.warning("%s: the delta in %s was made on a base stored otherwise than this one at %d layer(s), e.g. "
                       "%s: made on %s, loaded onto %s. The shapes agree, so it loads (as PEFT loads a QLoRA adapter "
                       "onto a 16-bit base); outputs differ from training's by the quantization error.", owner,
                       quote_value(files.directory), len(requantized), quote_value(join_path(path, "weight")),
                       _describe_storage(was), _describe_storage(now))


def _only_quantization_differs(found, recorded):
    """Whether two fingerprints agree on everything but the base's quantization (which is set in one of them, or
    differs)."""
    if not isinstance(found, dict) or not isinstance(recorded, dict) or found == recorded:
        return False
    return _without_quantization(found) == _without_quantization(recorded)


def _without_quantization(fingerprint):
    return {key: value for key, value in fingerprint.items() if key != "quantization"}


def _describe_storage(quantization):
    if not quantization:
        return "an unquantized weight"
    return (f"{quantization.get('quant_type')} (block_size={quantization.get('block_size')}, "
            f"double_quant={quantization.get('double_quant')})")
