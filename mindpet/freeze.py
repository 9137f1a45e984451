"""Choosing which parameters train: freeze by name pattern, by delta method, or from a config file.

Freezing sets ``Parameter.requires_grad``, which decides what ``Cell.trainable_params()`` returns. It must happen
before the optimizer is built: an optimizer built earlier keeps updating every parameter it was given.
"""
import difflib
import fnmatch
import json
import os

from mindspore import nn

from mindpet.registry import get_method
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error, check_str_list, quote_names, quote_value

CONFIG_SECTION = "freeze"
CONFIG_KEYS = ("include", "exclude", "mode")
YAML_EXTENSIONS = (".yaml", ".yml")
JSON_EXTENSIONS = (".json",)
# A freeze config is a few lines; anything larger is refused before it is read.
MAX_CONFIG_BYTES = 1024 * 1024
# How many parameter names a warning about a pattern that matches nothing suggests.
CLOSE_MATCHES = 3


def _check_cell(model, owner):
    if not isinstance(model, nn.Cell):
        raise argument_error(TypeError, owner, "model", "a mindspore.nn.Cell", model)
    return model


def _matches_any(name, patterns):
    return patterns is not None and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _warn_unmatched_patterns(owner, params, include, exclude):
    """Warn about each pattern that matches no parameter name, naming the closest names.

    A pattern without a wildcard must equal a whole dotted name, so ``exclude=['head']`` matches nothing in a model
    whose head parameters are ``head.weight`` and ``head.bias``; the warning then suggests ``'*head*'``.
    """
    names = [param.name for param in params]
    for arg_name, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns or ():
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                continue
            closest = difflib.get_close_matches(pattern, names, n=CLOSE_MATCHES, cutoff=0.0)
            hint = ""
            wildcard = f"*{pattern}*"
            if not any(char in pattern for char in "*?[") and any(fnmatch.fnmatchcase(name, wildcard)
                                                                  for name in names):
                hint = f" Patterns match whole names: did you mean {quote_value(wildcard)}?"
            logger.warning("For '%s', the %s pattern %s matches no parameter name, so it changes nothing; the "
                           "closest names are %s.%s", owner, arg_name, quote_value(pattern), quote_names(closest),
                           hint)


def _storage_ids(model):
    """The ids of the parameters that are frozen storage (a quantized weight's codes and scales), never trained."""
    return {id(param) for _, cell in model.cells_and_names() if getattr(cell, "is_frozen_storage", False)
            for param in cell.get_parameters()}


def _apply_patterns(model, params, include, exclude, owner):
    """Freeze names matched by ``include`` only and unfreeze names matched by ``exclude`` only; frozen storage
    stays frozen (logged when a pattern asked otherwise)."""
    storage = _storage_ids(model)
    kept = []
    for param in params:
        included = _matches_any(param.name, include)
        excluded = _matches_any(param.name, exclude)
        # A name matched by both lists is ambiguous, so, like a name matched by neither, it keeps its state.
        if included != excluded:
            if excluded and id(param) in storage:
                kept.append(param.name)
                continue
            param.requires_grad = excluded
    if kept:
        logger.warning("For '%s', these parameters are quantized storage and stay frozen: %s.", owner,
                       quote_names(kept))


def _trainable_names(params):
    return sorted(param.name for param in params if param.requires_grad)


def _log_summary(owner, params):
    trainable_params = [param for param in params if param.requires_grad]
    trainable_size = sum(param.size for param in trainable_params)
    total_size = sum(param.size for param in params)
    percentage = 100.0 * trainable_size / total_size if total_size else 0.0
    logger.info("%s: %d of %d parameters trainable, %d of %d elements (%.4f%%).", owner, len(trainable_params),
                len(params), trainable_size, total_size, percentage)


def freeze_modules(model, include=None, exclude=None):
    """Freeze or unfreeze the parameters of ``model`` whose names match ``fnmatch`` patterns.

    Patterns are matched case-sensitively (``fnmatch.fnmatchcase``) against each ``Parameter.name``, the dotted
    attribute path such as ``encoder.0.query.weight``; ``*`` also matches dots. A parameter matched by ``include``
    only is frozen (``requires_grad=False``); one matched by ``exclude`` only becomes trainable; one matched by
    both or by neither keeps its current state. A pattern that matches no parameter name changes nothing; it is
    logged as a WARNING naming the closest parameter names.

    Freeze before building the optimizer: an optimizer built earlier keeps updating every parameter it was given.

    Args:
        model (mindspore.nn.Cell): The network whose parameters are frozen in place.
        include (list[str], optional): Patterns of parameters to freeze. Default: ``None``.
        exclude (list[str], optional): Patterns of parameters to make trainable. Default: ``None``.

    Returns:
        list[str], the sorted names of the parameters of ``model`` that are trainable afterwards.

    Raises:
        TypeError: If `model` is not a `mindspore.nn.Cell`.
        TypeError: If `include` or `exclude` is neither ``None`` nor a list of str.
        ValueError: If `include` and `exclude` are both ``None``, or either is an empty list.

    Examples:
        >>> from mindspore import nn
        >>> from mindpet import freeze_modules
        >>> net = nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 2)])
        >>> freeze_modules(net, include=['*'], exclude=['2.*'])
        ['2.bias', '2.weight']
    """
    owner = "freeze_modules"
    _check_cell(model, owner)
    include = check_str_list(include, "include", owner)
    exclude = check_str_list(exclude, "exclude", owner)
    if include is None and exclude is None:
        raise ValueError(f"For '{owner}', at least one of the arguments 'include' and 'exclude' must be given, "
                         f"but both are None.")
    params = list(model.get_parameters())
    _warn_unmatched_patterns(owner, params, include, exclude)
    _apply_patterns(model, params, include, exclude, owner)
    _log_summary(owner, params)
    return _trainable_names(params)


def freeze_delta(model, mode, include=None, exclude=None):
    """Make the delta parameters of one method trainable and freeze every other parameter of ``model``.

    Delta parameters are found by the naming convention of :mod:`mindpet.utils.naming`: a dotted-name component
    equal to ``mindpet_delta_<mode>`` or starting with ``mindpet_delta_<mode>_``. The ``'bitfit'`` mode (BitFit)
    trains every parameter whose name matches ``'*bias'`` instead. Afterwards `include` and `exclude`, when given,
    apply as in :func:`freeze_modules`, e.g. ``exclude=['*head*']`` keeps a task head trainable.

    Freeze before building the optimizer: an optimizer built earlier keeps updating every parameter it was given.
    Logs one INFO line with the trainable share of the parameters, and a WARNING for each `include` or `exclude`
    pattern that matches no parameter name (with the closest names).

    Args:
        model (mindspore.nn.Cell): The network whose parameters are frozen in place.
        mode (str): The delta method, case-insensitive: ``'lora'``, ``'prefix'`` (alias ``'prefixtuning'``),
            ``'adapter'``, ``'low_rank_adapter'``, ``'ptuning2'`` or ``'bitfit'``.
        include (list[str], optional): Patterns of parameters to freeze afterwards. Default: ``None``.
        exclude (list[str], optional): Patterns of parameters to make trainable afterwards. Default: ``None``.

    Returns:
        list[str], the sorted names of the parameters of ``model`` that are trainable afterwards.

    Raises:
        TypeError: If `model` is not a `mindspore.nn.Cell`, `mode` is not a str, or `include` or `exclude` is
            neither ``None`` nor a list of str.
        ValueError: If `mode` is not a known mode, `include` or `exclude` is an empty list, or no parameter of
            `model` belongs to `mode` (training would then change nothing).

    Examples:
        >>> from mindspore import nn
        >>> from mindpet import freeze_delta
        >>> net = nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 2)])
        >>> freeze_delta(net, 'bitfit')
        ['0.bias', '2.bias']
        >>> freeze_delta(net, 'BitFit', exclude=['2.*'])
        ['0.bias', '2.bias', '2.weight']
    """
    owner = "freeze_delta"
    _check_cell(model, owner)
    method = get_method(mode, "mode", owner)
    include = check_str_list(include, "include", owner)
    exclude = check_str_list(exclude, "exclude", owner)
    params = list(model.get_parameters())
    selected = [method.owns_parameter(param.name) for param in params]
    if not any(selected):
        raise ValueError(f"For '{owner}', the mode {mode!r} matches no parameter of the model: expected "
                         f"{method.parameter_rule()}. Add the delta cells to the model before freezing.")
    for param, is_selected in zip(params, selected):
        param.requires_grad = is_selected
    _warn_unmatched_patterns(owner, params, include, exclude)
    _apply_patterns(model, params, include, exclude, owner)
    _log_summary(f"{owner}(mode='{method.name}')", params)
    return _trainable_names(params)


def _parse_yaml(text, path):
    try:
        # PyYAML is optional, so it is imported only when a YAML file is read.
        import yaml  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(f"For 'freeze_from_config', reading the YAML file '{path}' needs PyYAML: "
                          f"pip install pyyaml (or pip install -e \".[yaml]\" in the mindpet clone).") from err

    class NoAliasSafeLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
        """SafeLoader refusing aliases (``*name``): a few hundred bytes of nested aliases expand to gigabytes."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                alias = self.peek_event()
                raise ValueError(f"For 'freeze_from_config', the config file '{path}' uses the YAML alias "
                                 f"{quote_value('*' + alias.anchor)} at line {alias.start_mark.line + 1}, column "
                                 f"{alias.start_mark.column + 1}; freeze configs may not use aliases, which can "
                                 f"expand a small file into gigabytes. Write the patterns out.")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasSafeLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"For 'freeze_from_config', the config file '{path}' is not valid YAML "
                         f"(quote patterns that start with '*'): {err}") from err


def _parse_json(text, path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"For 'freeze_from_config', the config file '{path}' is not valid JSON: {err}") from err


def _read_config(path):
    """Return the parsed content of the YAML or JSON file at ``path``."""
    owner = "freeze_from_config"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"For '{owner}', the config file '{path}' does not exist or is not a file.")
    extension = os.path.splitext(path)[1].lower()
    if extension in YAML_EXTENSIONS:
        parse = _parse_yaml
    elif extension in JSON_EXTENSIONS:
        parse = _parse_json
    else:
        raise ValueError(f"For '{owner}', the config file '{path}' must end in "
                         f"{', '.join(YAML_EXTENSIONS + JSON_EXTENSIONS)}, but ends in {extension!r}.")
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"For '{owner}', the config file '{path}' is {size:,} bytes; a freeze config may be at most "
                         f"{MAX_CONFIG_BYTES:,} bytes (1 MiB), so it is not read.")
    try:
        with open(path, encoding="utf-8") as config_file:
            text = config_file.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"For '{owner}', the config file '{path}' is not UTF-8 text: {err}") from err
    return parse(text, path)


def _read_freeze_settings(path):
    """Return the validated ``freeze`` section of the config file at ``path`` as a dict of its given keys."""
    owner = "freeze_from_config"
    content = _read_config(path)
    if not isinstance(content, dict):
        raise ValueError(f"For '{owner}', the config file '{path}' must hold a mapping at the top level, "
                         f"but holds {type(content).__name__}.")
    if CONFIG_SECTION not in content:
        raise ValueError(f"For '{owner}', the config file '{path}' has no '{CONFIG_SECTION}' key; "
                         f"its top-level keys are {quote_names(sorted(map(str, content)))}.")
    section = content[CONFIG_SECTION]
    if not isinstance(section, dict):
        raise ValueError(f"For '{owner}', the key '{CONFIG_SECTION}' in the config file '{path}' must hold a "
                         f"mapping with keys {list(CONFIG_KEYS)}, but holds {quote_value(section)}.")
    unknown_keys = sorted(str(key) for key in section if key not in CONFIG_KEYS)
    if unknown_keys:
        raise ValueError(f"For '{owner}', the key '{CONFIG_SECTION}' in the config file '{path}' has unknown "
                         f"keys {quote_names(unknown_keys)}; the allowed keys are {list(CONFIG_KEYS)}.")
    if not section:
        raise ValueError(f"For '{owner}', the key '{CONFIG_SECTION}' in the config file '{path}' is empty; "
                         f"give at least one of {list(CONFIG_KEYS)}.")
    settings = {}
    try:
        for key in ("include", "exclude"):
            if key in section:
                settings[key] = check_str_list(section[key], f"{CONFIG_SECTION}.{key}", owner, allow_none=False)
        if "mode" in section:
            settings["mode"] = get_method(section["mode"], f"{CONFIG_SECTION}.mode", owner).name
    except (TypeError, ValueError) as err:
        raise type(err)(f"In the config file '{path}': {err}") from err
    return settings


def freeze_from_config(model, config_path):
    """Freeze the parameters of ``model`` as the ``freeze`` section of a YAML or JSON file says.

    The file (``.yaml``, ``.yml`` or ``.json``) holds a top-level ``freeze`` mapping with ``include`` and/or
    ``exclude`` pattern lists, and optionally a ``mode``. With a mode the settings go to :func:`freeze_delta`,
    otherwise to :func:`freeze_modules`. Other top-level keys are ignored, so the section can live in a larger
    training config. Reading YAML needs PyYAML (``pip install pyyaml``). The file may be at most 1 MiB, and
    YAML aliases (``*name``) are refused: nested aliases expand a few hundred bytes into gigabytes.

    Freeze before building the optimizer: an optimizer built earlier keeps updating every parameter it was given.

    Args:
        model (mindspore.nn.Cell): The network whose parameters are frozen in place.
        config_path (Union[str, os.PathLike]): Path of the config file.

    Returns:
        list[str], the sorted names of the parameters of ``model`` that are trainable afterwards.

    Raises:
        TypeError: If `model` is not a `mindspore.nn.Cell` or `config_path` is not a str or os.PathLike.
        TypeError: If ``include`` or ``exclude`` in the file is not a list of str, or ``mode`` is not a str.
        FileNotFoundError: If `config_path` does not name an existing file.
        ImportError: If the file is YAML and PyYAML is not installed.
        ValueError: If the extension is not ``.yaml``, ``.yml`` or ``.json``, the file is larger than 1 MiB or uses
            a YAML alias, the file does not parse, it has no ``freeze`` mapping, the mapping is empty or has unknown
            keys, a pattern list is empty or ``mode`` is unknown; and for the reasons :func:`freeze_modules` or
            :func:`freeze_delta` raise it.

    Examples:
        >>> import json, os, tempfile
        >>> from mindspore import nn
        >>> from mindpet import freeze_from_config
        >>> net = nn.SequentialCell([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 2)])
        >>> config_path = os.path.join(tempfile.mkdtemp(), 'freeze.json')
        >>> with open(config_path, 'w') as config_file:
        ...     json.dump({'freeze': {'mode': 'bitfit', 'exclude': ['2.*']}}, config_file)
        >>> freeze_from_config(net, config_path)
        ['0.bias', '2.bias', '2.weight']
    """
    owner = "freeze_from_config"
    _check_cell(model, owner)
    if not isinstance(config_path, (str, os.PathLike)):
        raise argument_error(TypeError, owner, "config_path", "a str or os.PathLike", config_path)
    settings = _read_freeze_settings(os.fspath(config_path))
    if "mode" in settings:
        return freeze_delta(model, settings["mode"], settings.get("include"), settings.get("exclude"))
    return freeze_modules(model, settings.get("include"), settings.get("exclude"))
