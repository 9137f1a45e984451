"""The base of every method's config: targeting fields, validation at construction, and a JSON-safe dict form."""
import copy
import dataclasses
from typing import ClassVar, List, Optional, Union

from mindpet.injection.targeting import check_name_list, check_target_spec
from mindpet.utils.logger import logger
from mindpet.utils.validation import argument_error


# The targeting fields in the Args of every method's config (``{targeting_arguments}`` in its docstring).
_TARGETING_ARGUMENTS = """\
        target_modules (Union[list[str], str]): the layers to adapt (see
            :class:`~mindpet.delta.base.config.DeltaConfig`).
        exclude_modules (Union[list[str], str], optional): layers never adapted. Default: ``None``.
        modules_to_save (list[str], optional): cells trained and saved beside the delta. Default: ``None``."""


@dataclasses.dataclass
class DeltaConfig:
    """What a delta method is applied to, and with which hyperparameters.

    Each method's config subclasses this one next to its cell, adds its own fields, and names its registry entry in
    ``method``. Every config validates when it is built (and again when it is applied), raising the errors its cell
    raises for the same values.

    Args:
        target_modules (Union[list[str], str]): the cells to adapt. A list entry matches a cell whose path equals it
            or ends with ``'.' + entry``; an entry holding ``*``, ``?`` or ``[`` is an ``fnmatch`` pattern on the
            full path. A str is a regular expression that must match the full path, except ``"all-dense"``, which
            matches every Dense-like layer.
        exclude_modules (Union[list[str], str], optional): cells never adapted, in the same forms; it wins over
            `target_modules`. Default: ``None``.
        modules_to_save (list[str], optional): cells (e.g. a classifier head) that stay trainable beside the delta
            and are saved with it, matched like list entries of `target_modules`; they are never adapted.
            Default: ``None``.

    Raises:
        TypeError: a targeting field is not a list of str or a str.
        ValueError: a targeting list is empty, holds an empty entry, or a regular expression does not compile.
    """

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        # Every method's config takes the targeting fields: their description is written once, here.
        super().__init_subclass__(**kwargs)
        if cls.__doc__:
            cls.__doc__ = cls.__doc__.replace("{targeting_arguments}", _TARGETING_ARGUMENTS)

    target_modules: Union[List[str], str, None] = None
    exclude_modules: Union[List[str], str, None] = None
    modules_to_save: Optional[List[str]] = None

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Check every field, normalising lists; called at construction and again before the config is applied.

        Returns:
            The config itself.
        """
        owner = type(self).__name__
        self.target_modules = check_target_spec(self.target_modules, "target_modules", owner, required=True)
        self.exclude_modules = check_target_spec(self.exclude_modules, "exclude_modules", owner, required=False)
        self.modules_to_save = check_name_list(self.modules_to_save, "modules_to_save", owner)
        return self

    def to_dict(self):
        """The config as a JSON-safe dict, with its method name under ``"method"``; :meth:`from_dict` reads it back.

        Returns:
            dict.
        """
        data = {"method": self.method}
        for field in dataclasses.fields(self):
            data[field.name] = copy.deepcopy(getattr(self, field.name))
        return data

    @classmethod
    def from_dict(cls, data):
        """Build the config from :meth:`to_dict`'s output.

        Keys this version does not know (written by a newer version, say) are skipped with a warning that names them.

        Args:
            data (dict): the fields, optionally with ``"method"``.

        Returns:
            The config.

        Raises:
            TypeError: `data` is not a dict.
            ValueError: ``data["method"]`` names another method; and whatever the fields' validation raises.
        """
        owner = f"{cls.__name__}.from_dict"
        if not isinstance(data, dict):
            raise argument_error(TypeError, owner, "data", "a dict", data)
        method = data.get("method", cls.method)
        if method != cls.method:
            raise argument_error(ValueError, owner, "data['method']", repr(cls.method), method)
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in data if key not in names and key != "method")
        if unknown:
            logger.warning("%s: ignoring keys this version of mindpet does not know: %s.", owner, unknown[:20])
        return cls(**{key: copy.deepcopy(value) for key, value in data.items() if key in names})
