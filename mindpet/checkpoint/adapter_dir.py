"""Adapter directories on disk: a delta with the config that made it, in Hugging Face PEFT's layout where PEFT has
the method.

An adapter directory holds ``adapter_config.json`` (``peft_type``, the method's hyperparameters, the adapted module
paths as ``target_modules`` and ``modules_to_save``) and ``adapter_model.safetensors`` (the delta tensors and the
saved modules). mindpet's own metadata (its version, MindSpore's, the format version and the base fingerprint: the
shape of every weight the delta adapts) goes into the safetensors header, which PEFT ignores, so that no PEFT
version meets a JSON key it does not know. This module holds the file names and metadata keys, and what writes,
reads and validates the two files (atomic replacement, the ``peft_type`` lookup, the check of the JSON fields); how
each method names its fields and tensors is its :class:`~mindpet.delta.base.file_format.AdapterFormat` in the
registry.
"""
import json
import os
import shutil
from typing import NamedTuple

import mindspore as ms

from mindpet.checkpoint.atomic import make_staging_dir
from mindpet.checkpoint.safetensors_file import read_safetensors, write_safetensors
from mindpet.delta.base.file_format import PEFT_BOOKKEEPING_KEYS
from mindpet.registry import METHODS
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error, quote_names, quote_value

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
FORMAT_NAME = "mindpet-adapter"
FORMAT_VERSION = "1"
# safetensors metadata keys.
META_FORMAT, META_FORMAT_VERSION, META_FINGERPRINT = "format", "mindpet_format_version", "base_fingerprint"
META_MINDPET_VERSION, META_MINDSPORE_VERSION = "mindpet_version", "mindspore_version"
# JSON fields written for every method.
_COMMON_KEYS = frozenset({"peft_type", "target_modules", "modules_to_save"})


def adapter_metadata(fingerprint):
    """The safetensors metadata of an adapter file: format and versions, and the base fingerprint when known."""
    import mindpet  # pylint: disable=import-outside-toplevel; the package imports this module
    metadata = {META_FORMAT: FORMAT_NAME, META_FORMAT_VERSION: FORMAT_VERSION,
                META_MINDPET_VERSION: mindpet.__version__, META_MINDSPORE_VERSION: ms.__version__}
    if fingerprint is not None:
        metadata[META_FINGERPRINT] = json.dumps(fingerprint, sort_keys=True)
    return metadata


def _check_replaceable(directory, owner):
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise argument_error(ValueError, owner, "directory", "a folder path (it names an existing file)", directory)
    if os.path.isdir(directory):
        others = sorted(set(os.listdir(directory)) - set(ADAPTER_FILES))
        if others:
            raise ValueError(f"For '{owner}', the folder {quote_value(directory)} exists and holds files other than "
                             f"an adapter's ({quote_names(others)}); it is not replaced. Choose a new or an adapter "
                             f"folder.")


def write_adapter_directory(directory, fields, tensors, metadata, bfloat16_keys=()):
    """Write an adapter directory so that ``directory`` holds either its old content or the complete new one.

    Both files are written into a staging folder beside ``directory``, which is then renamed onto it; an existing
    adapter directory is moved aside first and removed afterwards (or put back if the rename fails).
    """
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = make_staging_dir(parent)
    retired = None
    try:
        with open(os.path.join(staging, CONFIG_FILE), "w", encoding="utf-8") as config_file:
            json.dump(fields, config_file, indent=2, sort_keys=True)
            config_file.write("\n")
        write_safetensors(os.path.join(staging, WEIGHTS_FILE), tensors, metadata, bfloat16_keys)
        umask = os.umask(0)
        os.umask(umask)
        # mkdtemp makes the folder private; the adapter directory gets the usual permissions.
        os.chmod(staging, 0o777 & ~umask)
        if os.path.isdir(directory):
            retired = os.path.join(make_staging_dir(parent), "retired")
            os.rename(directory, retired)
        try:
            os.rename(staging, directory)
        except OSError:
            if retired is not None:
                os.rename(retired, directory)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(os.path.dirname(retired), ignore_errors=True)


class AdapterFiles(NamedTuple):
    """An adapter directory as read: the JSON fields, the tensors by file key and the safetensors metadata."""
    directory: str
    fields: dict
    tensors: dict
    metadata: dict


def read_adapter_directory(directory, owner):
    """Read both files of an adapter directory, refusing a missing or malformed one with a message naming it.

    Raises:
        FileNotFoundError: the folder or one of its two files does not exist.
        ValueError: the JSON is not an object with a str ``peft_type``, or the tensor file is malformed or empty.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"For '{owner}', the adapter directory {quote_value(directory)} does not exist.")
    for name in ADAPTER_FILES:
        if not os.path.isfile(os.path.join(directory, name)):
            raise FileNotFoundError(f"For '{owner}', the adapter directory {quote_value(directory)} has no '{name}' "
                                    f"(an adapter directory holds {list(ADAPTER_FILES)}).")
    config_path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(config_path, encoding="utf-8") as config_file:
            fields = json.load(config_file)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"For '{owner}', {quote_value(config_path)} is not valid JSON: {err}.") from err
    if not isinstance(fields, dict) or not isinstance(fields.get("peft_type"), str):
        raise ValueError(f"For '{owner}', {quote_value(config_path)} must be a JSON object with a str 'peft_type'.")
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    tensors, metadata = read_safetensors(weights_path)
    if not tensors:
        raise ValueError(f"For '{owner}', {quote_value(weights_path)} holds no tensors: loading it would change "
                         f"nothing.")
    return AdapterFiles(directory, fields, tensors, metadata)


def method_of_peft_type(peft_type, owner, source):
    """The registry record whose format has ``peft_type``.

    Raises:
        ValueError: no method has it (the message lists the known types).
    """
    for method in METHODS:
        if method.adapter_format.peft_type == peft_type:
            return method
    known = [method.adapter_format.peft_type for method in METHODS]
    raise ValueError(f"For '{owner}', {source} has peft_type {quote_value(peft_type)}, which mindpet cannot load; "
                     f"it loads {known}.")


def check_fields(fields, method, source, owner):
    """Refuse settings mindpet would misread; warn once about fields it does not know (those set to something)."""
    fmt = method.adapter_format
    for key, required in fmt.required_values.items():
        value = fields.get(key, required)
        if value != required and (value or required):
            raise ValueError(f"For '{owner}', {source} sets {key}={quote_value(value)}; mindpet computes {method.name} "
                             f"only with {key}={required!r}, so it refuses the file rather than misread it.")
    known = fmt.json_keys | PEFT_BOOKKEEPING_KEYS | _COMMON_KEYS | set(fmt.required_values)
    unknown = sorted(key for key, value in fields.items() if key not in known and value not in (None, False, {}, []))
    if unknown:
        logger.warning("%s: %s has fields this version of mindpet does not know; they are ignored: %s.", owner,
                       source, quote_names(unknown))
