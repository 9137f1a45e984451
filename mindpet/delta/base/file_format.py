"""How a method's delta is written to and read from an adapter directory (``adapter_config.json`` and
``adapter_model.safetensors``): the ``adapter_format`` field of its :class:`~mindpet.delta.base.method.DeltaMethod`.

:func:`mindpet.save_delta` and :func:`mindpet.load_delta` do the file work for every method; a record only says what
differs per method: its ``peft_type``, its JSON fields, its tensor names, and which hyperparameters of a cell must
agree with the file. Methods that Hugging Face PEFT also has use PEFT's names (LoRA's entry in
:mod:`mindpet.delta.lora`, IA3's in :mod:`mindpet.delta.ia3`, the prompt methods' in
:mod:`mindpet.delta.base.prompt_format`); the others write their mindpet config under a ``peft_type`` of their own,
which PEFT refuses. :func:`native_format` builds such a record in one line.
"""
import dataclasses
from typing import Callable, Mapping, NamedTuple, Optional

# The prefix PEFT puts before every module path in its tensor keys: PeftModel.base_model (a tuner) .model.
PEFT_KEY_PREFIX = "base_model.model."
# JSON keys every PEFT config has and that say nothing about the delta's values: read by nobody, never warned about.
PEFT_BOOKKEEPING_KEYS = frozenset({"auto_mapping", "base_model_name_or_path", "revision", "task_type",
                                   "inference_mode", "peft_version"})


class TensorName(NamedTuple):
    """One delta parameter of a cell, as the file names it.

    Args:
        local (str): its name inside the cell, e.g. ``'mindpet_delta_lora_a'``.
        file (str): its name after the module path in the file, e.g. ``'lora_A.weight'``.
        file_shape (Callable, optional): ``file_shape(shape, settings) -> tuple``, the file's shape of a parameter of
            ``shape`` when the two differ; ``settings`` are the module's hyperparameters (what the format's
            ``target_settings`` gives for it). PEFT stores IA3's vector ``(out,)`` as ``(out, 1)``, but a
            feed-forward module's ``(in,)`` as ``(1, in)``. Default: the same shape.
    """
    local: str
    file: str
    file_shape: Optional[Callable] = None


class DerivedTensor(NamedTuple):
    """A tensor the file holds that is computed from the cell instead of being one of its parameters, written for
    other readers and not loaded back: PEFT's P-tuning ``prompt_embeddings``, the output of the prompt encoder.

    Args:
        file (str): its name in the file (after the module path, or alone in a path-less format).
        compute (Callable): ``compute(cell) -> numpy.ndarray``, its value.
        alone (str): why a file holding this tensor but none of the cell's parameters cannot be loaded, and what to
            do instead; ``load_delta`` raises ValueError with it rather than load nothing.
    """
    file: str
    compute: Callable
    alone: str


@dataclasses.dataclass(frozen=True)
class AdapterFormat:
    """A method's layout in an adapter directory.

    Adding a method's entry takes a few lines: a method PEFT lacks passes :func:`native_format` (``peft_type`` of
    its own, its config's fields as JSON, parameters under their mindpet names); a method PEFT has gives PEFT's
    ``peft_type``, ``key_prefix`` :data:`PEFT_KEY_PREFIX`, its tensor names, and the JSON conversion both ways.

    Args:
        peft_type (str): the ``peft_type`` written to and recognised in ``adapter_config.json``.
        key_prefix (str): what precedes the module path in every tensor key. Default: ``''``.
        pathless (bool): the delta lives in ONE cell of the network, found by its type, and its tensors are keyed by
            their names in that cell alone, with neither ``key_prefix`` nor module path (PEFT's prompt-learning files:
            a single ``prompt_embeddings``); ``key_prefix`` then precedes only the saved modules' keys, and
            ``target_modules`` is not written. Default: ``False``.
        derived_tensors (tuple[DerivedTensor]): tensors computed from each cell and written beside its parameters.
            Default: ``()``.
        tensor_names (tuple[TensorName]): parameters whose file names differ from their names in the cell; any
            other parameter keeps its name. Default: ``()``.
        to_json (Callable, optional): ``to_json(config, cells) -> dict``, the method's hyperparameters as JSON
            fields (without ``peft_type``, ``target_modules`` and ``modules_to_save``, which are written for every
            method). ``config`` is the config the network was injected with, or None for cells written in the model
            source; ``cells`` is ``{file path: cell}`` of the adapted modules. None: no fields.
        from_json (Callable, optional): ``from_json(fields, targets, modules_to_save) -> config``, the config that
            injects exactly the cells ``targets`` (``{cell path: settings}``, settings from `target_settings`) and
            keeps ``modules_to_save`` (cell paths) trainable. None when the method cannot be injected.
        target_settings (Callable, optional): ``target_settings(fields, file_path) -> dict``, the hyperparameters
            the cell adapting ``file_path`` must have, by field name. Default: none to check.
        cell_settings (Callable, optional): ``cell_settings(cell) -> dict``, the same hyperparameters read from a
            cell; a network that already holds the method's cells is refused when the two disagree (a wrong
            ``lora_alpha`` would otherwise load silently).
        json_keys (frozenset[str]): the JSON fields the method reads. Any other field, except PEFT's bookkeeping
            fields, is reported once in a warning.
        required_values (Mapping[str, object]): JSON fields that mindpet cannot honour unless they hold this value
            (e.g. PEFT's ``fan_in_fan_out``: ``False``); another value is refused rather than misread.
        fold (Callable, optional): ``fold(weight, bias, tensors, settings) -> (weight, bias)``, the base ``weight``
            (float32 NumPy, ``(out, in)``) and ``bias`` (float32 ``(out,)``, None when the base has none) of one module
            with its delta folded in; ``tensors`` are its delta tensors by cell name in the file's shapes,
            ``settings`` what `target_settings` gave. ``mindpet merge`` uses it; None: not mergeable from files.
        pattern_fields (tuple[str]): JSON fields that map a module path (or a regular expression) to a value, such
            as LoRA's ``rank_pattern``; ``mindpet convert --key-map`` maps their exact-path keys with the tensors'.
        file_values (Callable, optional): ``file_values(cell, local, values) -> values``, what the file stores of the
            cell's parameter ``local`` (NumPy ``values``) when that is not the whole parameter: AdaLoRA writes only
            the triplets its rank mask kept, as PEFT does. Default: the values as they are.
        cell_values (Callable, optional): ``cell_values(local, values, shape) -> values``, the reverse on loading:
            the parameter's values of ``shape`` from the file's, when the file holds fewer (AdaLoRA: a module PEFT
            pruned to rank 0 becomes one zero triplet). Default: ``values`` reshaped to ``shape``.
    """

    peft_type: str
    key_prefix: str = ""
    pathless: bool = False
    derived_tensors: tuple = ()
    tensor_names: tuple = ()
    to_json: Optional[Callable] = None
    from_json: Optional[Callable] = None
    target_settings: Optional[Callable] = None
    cell_settings: Optional[Callable] = None
    json_keys: frozenset = frozenset()
    required_values: Mapping = dataclasses.field(default_factory=dict)
    fold: Optional[Callable] = None
    pattern_fields: tuple = ()
    file_values: Optional[Callable] = None
    cell_values: Optional[Callable] = None

    @property
    def foldable(self):
        """Whether ``mindpet merge`` can fold the delta into a base checkpoint without the model source."""
        return self.fold is not None

    def file_name(self, local):
        """The file's name of the cell parameter ``local``."""
        return next((entry.file for entry in self.tensor_names if entry.local == local), local)

    def local_name(self, file_name):
        """The cell's name of the file's parameter name ``file_name``."""
        return next((entry.local for entry in self.tensor_names if entry.file == file_name), file_name)

    def file_shape(self, local, shape, settings):
        """The shape the file stores the cell parameter ``local`` of ``shape`` in, for a module of ``settings``."""
        entry = next((entry for entry in self.tensor_names if entry.local == local), None)
        return tuple(entry.file_shape(tuple(shape), settings)) if entry and entry.file_shape else tuple(shape)

    def file_key(self, module, local, is_delta=True):
        """The file key of the parameter ``local`` of the module at ``module`` (a path in the file's naming): the
        delta's under its file name, a saved module's under its own."""
        name = self.file_name(local) if is_delta else local
        if is_delta and self.pathless:
            return name
        return self.key_prefix + (f"{module}.{name}" if module else name)

    def derived_tensor(self, file_name):
        """The :class:`DerivedTensor` written as ``file_name``, or None."""
        return next((entry for entry in self.derived_tensors if entry.file == file_name), None)


_TARGETING_FIELDS = ("method", "target_modules", "exclude_modules", "modules_to_save")


def native_format(peft_type, config_class=None):
    """The record of a method PEFT lacks: its config's own fields as JSON, its parameters under their mindpet names.

    Args:
        peft_type (str): the method's ``peft_type``, e.g. ``'MINDPET_ADAPTER'``; PEFT knows no such type and refuses
            the directory instead of misreading it.
        config_class (type, optional): the method's config; None for a method applied in the model source.

    Returns:
        AdapterFormat.
    """
    if config_class is None:
        return AdapterFormat(peft_type=peft_type)
    fields = tuple(field.name for field in dataclasses.fields(config_class) if field.name not in _TARGETING_FIELDS)

    def to_json(config, cells):
        # Cells written in the model source have no config; such a file loads only into a network holding them.
        return {} if config is None else {name: value for name, value in config.to_dict().items() if name in fields}

    def from_json(json_fields, targets, modules_to_save):
        # A missing field raises KeyError, which the loader reports with the file's name.
        values = {name: json_fields[name] for name in fields}
        return config_class(target_modules=sorted(targets), modules_to_save=modules_to_save or None, **values)

    return AdapterFormat(peft_type=peft_type, to_json=to_json, from_json=from_json, json_keys=frozenset(fields))
