"""The ``mindpet`` command (also ``python -m mindpet``): inspect, merge and convert delta files without model source.

- ``mindpet inspect PATH``: an adapter directory, a ``.ckpt`` or a ``.safetensors`` file: its config, tensors and
  counts.
- ``mindpet merge --base BASE --delta DIR --out FILE``: folds a mergeable adapter into a base checkpoint, in float32.
- ``mindpet convert SRC DST --method M [hyperparameters] [--key-map OLD=NEW]``: a MindPet 1.0.4 /
  ``TrainableParamsCheckPoint`` delta checkpoint to an adapter directory; or, SRC being an adapter directory, the
  same adapter under other module paths.

Exit status: 0 on success, 2 on bad usage, 1 on a failure, with one line on stderr naming the argument or file.
"""
import argparse
import dataclasses
import json
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import Tensor
from mindspore.train import CheckpointConfig

from mindpet.checkpoint.adapter_dir import (
    AdapterFiles,
    adapter_metadata,
    check_fields,
    method_of_peft_type,
    read_adapter_directory,
    write_adapter_directory,
)
from mindpet.checkpoint.adapter_keys import join_path, path_mapper, place_entries, remap_adapter
from mindpet.checkpoint.atomic import save_atomically
from mindpet.checkpoint.formats import CHECKPOINT_FORMATS, TRAINING_COUNTER_KEYS
from mindpet.checkpoint.safetensors_file import read_safetensors
from mindpet.registry import METHODS, get_method
from mindpet.utils.naming import DELTA_PREFIX

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_TARGETING_FIELDS = ("target_modules", "exclude_modules", "modules_to_save")


class UsageError(Exception):
    """Bad usage: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _fail(message):
    return RuntimeError(message)


def read_tensors(path, arg_name):
    """The float32-or-native NumPy tensors of a ``.ckpt`` or ``.safetensors`` file, with its safetensors metadata."""
    extension = os.path.splitext(path)[1].lstrip(".")
    if extension not in CHECKPOINT_FORMATS:
        raise UsageError(f"argument {arg_name}: '{path}' must end in .ckpt or .safetensors")
    if not os.path.isfile(path):
        raise UsageError(f"argument {arg_name}: '{path}' does not exist")
    if extension == "safetensors":
        return read_safetensors(path)
    try:
        checkpoint = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, TypeError) as err:
        raise _fail(f"'{path}' is not a readable MindSpore checkpoint ({type(err).__name__})") from err
    tensors = {}
    for name, param in checkpoint.items():
        if name in TRAINING_COUNTER_KEYS:
            continue
        tensors[name] = (param.astype(ms.float32) if param.dtype == ms.bfloat16 else param).asnumpy()
    return tensors, {}


def _parse_key_map(pairs):
    key_map = {}
    for pair in pairs or ():
        old, sep, new = pair.partition("=")
        if not sep:
            raise UsageError(f"argument --key-map: {pair!r} must be OLD=NEW (path prefixes)")
        key_map[old] = new
    return key_map or None


def _print_table(rows):
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def inspect(args):
    path = args.path
    if os.path.isdir(path):
        files = read_adapter_directory(path, "mindpet inspect")
        method = method_of_peft_type(files.fields["peft_type"], "mindpet inspect", f"'{path}'")
        print(f"adapter directory {path}: method {method.name} (peft_type {files.fields['peft_type']})")
        print("config:")
        _print_table([(key, json.dumps(value)) for key, value in sorted(files.fields.items())])
        tensors, metadata = files.tensors, files.metadata
    else:
        tensors, metadata = read_tensors(path, "PATH")
        print(f"checkpoint {path}")
    if metadata:
        print("metadata:")
        _print_table(sorted(metadata.items()))
    print("tensors:")
    _print_table([(name, f"{tuple(value.shape)} {value.dtype}") for name, value in tensors.items()])
    total = sum(int(np.prod(value.shape)) for value in tensors.values())
    print(f"{len(tensors)} tensors, {total:,} values")
    return EXIT_OK


def merge(args):
    owner = "mindpet merge"
    base, _ = read_tensors(args.base, "--base")
    if os.path.splitext(args.out)[1].lstrip(".") not in CHECKPOINT_FORMATS:
        raise UsageError(f"argument --out: '{args.out}' must end in .ckpt or .safetensors")
    files = read_adapter_directory(args.delta, owner)
    source = f"'{args.delta}'"
    method = method_of_peft_type(files.fields["peft_type"], owner, source)
    fmt = method.adapter_format
    if not fmt.foldable:
        foldable = [m.name for m in METHODS if m.adapter_format.foldable]
        raise _fail(f"the {method.name} adapter in {source} does not fold into base weights (only {foldable} do); "
                    f"load it with mindpet.load_delta instead")
    check_fields(files.fields, method, source, owner)
    map_in = path_mapper(_parse_key_map(args.key_map), owner)
    by_module, replaced = {}, {}
    for entry in place_entries(files, method, map_in):
        if entry.is_delta:
            by_module.setdefault(entry.module, (entry.file_module, {}))[1][entry.local] = files.tensors[entry.key]
        else:
            replaced[entry.name] = files.tensors[entry.key]
    merged = dict(base)
    largest = (0.0, None)
    for module, (file_module, tensors) in sorted(by_module.items()):
        weight_name, bias_name = join_path(module, "weight"), join_path(module, "bias")
        if weight_name not in base:
            raise _fail(f"the base '{args.base}' has no '{weight_name}' for the adapted module '{file_module}' of "
                        f"{source}; pass --key-map OLD=NEW to map the adapter's module paths to the base's names")
        originals = {weight_name: base[weight_name].astype(np.float32)}
        if bias_name in base:
            originals[bias_name] = base[bias_name].astype(np.float32)
        folded = fmt.fold(originals[weight_name], originals.get(bias_name),
                          {k: v.astype(np.float32) for k, v in tensors.items()},
                          fmt.target_settings(files.fields, file_module))
        for name, value in zip((weight_name, bias_name), folded):
            if name in originals:
                change = float(np.abs(value - originals[name]).max())
                largest = max(largest, (change, name), key=lambda item: item[0])
                merged[name] = value.astype(base[name].dtype)
    for name, value in replaced.items():
        if name not in base or base[name].shape != value.shape:
            raise _fail(f"the saved module tensor '{name}' of {source} has no parameter of shape {value.shape} in "
                        f"'{args.base}'")
        merged[name] = value.astype(base[name].dtype)
    entries = [{"name": name, "data": Tensor(value)} for name, value in merged.items()]
    save_atomically(entries, None, args.out, CheckpointConfig(format=os.path.splitext(args.out)[1].lstrip(".")))
    print(f"merged {len(by_module)} modules of {method.name} from '{args.delta}' into '{args.out}'"
          + (f" ({len(replaced)} saved module tensors replaced)" if replaced else ""))
    print(f"largest weight change: {largest[0]:.6g} in '{largest[1]}'")
    return EXIT_OK


def _config_fields(method):
    return [field for field in dataclasses.fields(method.config_class) if field.name not in _TARGETING_FIELDS]


def _parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _checkpoint_adapter(args, owner):
    """The adapter files of a MindPet delta checkpoint, with the hyperparameters given on the command line."""
    if args.method is None:
        raise UsageError("argument --method: required when SRC is a checkpoint file")
    try:
        method = get_method(args.method, "--method", owner)
    except ValueError as err:
        raise UsageError(f"argument --method: {err}") from err
    convertible = [m.name for m in METHODS if m.config_class and not m.adapter_format.pathless]
    if method.config_class is None:
        raise UsageError(f"argument --method: {method.name} has no config; convert takes {convertible}")
    if method.adapter_format.pathless:
        raise UsageError(f"argument --method: {method.name}'s cell is written in the model source, and its file is "
                         f"read from the cell itself; load the checkpoint into the network holding the cell and call "
                         f"mindpet.save_delta. convert takes {convertible}")
    tensors, _ = read_tensors(args.src, "SRC")
    modules, saved = {}, {}
    for name, value in tensors.items():
        parts = name.split(".")
        index = next((i for i, part in enumerate(parts) if part.startswith(DELTA_PREFIX)), None)
        if index is not None and method.owns_parameter(name):
            modules.setdefault(".".join(parts[:index]), {})[".".join(parts[index:])] = value
        else:
            saved[name] = value
    if not modules:
        raise _fail(f"'{args.src}' holds no {method.name} parameter (names with a 'mindpet_delta_{method.name}' "
                    f"component); is --method right?")
    values = {field.name: _parse_value(getattr(args, field.name)) for field in _config_fields(method)
              if getattr(args, field.name, None) is not None}
    try:
        config = method.config_class(target_modules=sorted(modules),
                                     modules_to_save=sorted({n.rpartition(".")[0] for n in saved}) or None, **values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"the hyperparameters: {err}") from err
    fmt = method.adapter_format
    fields = {"peft_type": fmt.peft_type, **(fmt.to_json(config, {m: None for m in modules}) if fmt.to_json else {}),
              "target_modules": sorted(modules), "modules_to_save": config.modules_to_save}
    file_tensors = {}
    for module, locals_ in modules.items():
        settings = fmt.target_settings(fields, module) if fmt.target_settings else {}
        for local, value in locals_.items():
            file_tensors[fmt.file_key(module, local)] = value.reshape(fmt.file_shape(local, value.shape, settings))
    for name, value in saved.items():
        file_tensors[fmt.file_key("", name, is_delta=False)] = value
    # No base network is at hand, so the file has no fingerprint; load_delta checks the tensor shapes.
    return method, AdapterFiles(args.src, fields, file_tensors, adapter_metadata(fingerprint=None))


def convert(args):
    owner = "mindpet convert"
    key_map = _parse_key_map(args.key_map)
    if os.path.exists(args.dst):
        raise UsageError(f"argument DST: '{args.dst}' already exists")
    if os.path.isdir(args.src):
        if key_map is None:
            raise UsageError("argument --key-map: required when SRC is an adapter directory (it is what changes)")
        files = read_adapter_directory(args.src, owner)
        method = method_of_peft_type(files.fields["peft_type"], owner, f"'{args.src}'")
    else:
        method, files = _checkpoint_adapter(args, owner)
    fields, tensors, metadata = files.fields, files.tensors, files.metadata
    if key_map is not None:
        fields, tensors, metadata = remap_adapter(files, method, path_mapper(key_map, owner), owner)
    write_adapter_directory(args.dst, fields, tensors, metadata)
    print(f"wrote {len(tensors)} tensors of {method.name} ({len(fields['target_modules'])} modules) to "
          f"'{args.dst}'")
    return EXIT_OK


def build_parser():
    parser = _Parser(prog="mindpet", description="Inspect, merge and convert mindpet delta files.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    inspect_parser = commands.add_parser("inspect", help="show an adapter directory, .ckpt or .safetensors file")
    inspect_parser.add_argument("path", metavar="PATH")
    inspect_parser.set_defaults(run=inspect)
    merge_parser = commands.add_parser("merge", help="fold an adapter into a base checkpoint")
    merge_parser.add_argument("--base", required=True, help="the base .ckpt or .safetensors")
    merge_parser.add_argument("--delta", required=True, help="the adapter directory")
    merge_parser.add_argument("--out", required=True, help="the merged .ckpt or .safetensors to write")
    merge_parser.add_argument("--key-map", action="append", metavar="OLD=NEW",
                              help="map the adapter's module path prefix OLD to the base's NEW (repeatable)")
    merge_parser.set_defaults(run=merge)
    convert_parser = commands.add_parser("convert", help="a MindPet delta checkpoint to an adapter directory, or an "
                                                         "adapter directory to another key map")
    convert_parser.add_argument("src", metavar="SRC", help="the delta .ckpt or .safetensors, or an adapter directory")
    convert_parser.add_argument("dst", metavar="DST", help="the adapter directory to create")
    convert_parser.add_argument("--method", help="the method that made SRC (a checkpoint), e.g. lora")
    convert_parser.add_argument("--key-map", action="append", metavar="OLD=NEW",
                                help="map module path prefix OLD to NEW in the output (repeatable)")
    seen = set()
    for method in METHODS:
        for field in _config_fields(method) if method.config_class else ():
            if field.name not in seen:
                seen.add(field.name)
                convert_parser.add_argument(f"--{field.name}", help=f"{field.name} of the config (JSON value)")
    convert_parser.set_defaults(run=convert)
    return parser


def main(argv=None):
    """Run the ``mindpet`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UsageError as err:
        print(f"mindpet: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, ValueError, OSError, KeyError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"mindpet: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
