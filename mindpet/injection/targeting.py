"""Which cells a config names: list entries (a path, a path suffix or an ``fnmatch`` pattern), a full-match regular
expression, or ``"all-dense"``."""
import difflib
import fnmatch
import re

from mindpet.utils.validation import argument_error

ALL_DENSE = "all-dense"
_WILDCARDS = ("*", "?", "[")


def _is_pattern(entry):
    return any(char in entry for char in _WILDCARDS)


def entry_matches(entry, path):
    """Whether the list entry ``entry`` names the cell at ``path``: the path itself, a ``'.'``-separated suffix of
    it, or, for an entry holding ``*``, ``?`` or ``[``, an ``fnmatch`` pattern matching the whole path."""
    if _is_pattern(entry):
        return fnmatch.fnmatchcase(path, entry)
    return path == entry or path.endswith("." + entry)


def _check_regex(spec, arg_name, owner):
    try:
        re.compile(spec)
    except re.error as err:
        raise argument_error(ValueError, owner, arg_name, f"a valid regular expression ({err})", spec) from err


def check_name_list(value, arg_name, owner):
    """Return ``value`` as a list of non-empty str, or None; TypeError for another type, ValueError for an empty
    list or entry."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(item, str) for item in value):
        raise argument_error(TypeError, owner, arg_name, "a list of str", value)
    if not value or not all(value):
        raise argument_error(ValueError, owner, arg_name, "a non-empty list of non-empty str", value)
    return list(value)


def check_target_spec(value, arg_name, owner, required):
    """Validate a targeting field: a list of entries, a regular expression, ``"all-dense"`` or (unless
    ``required``) None. Returns it with a tuple turned into a list."""
    if value is None and not required:
        return None
    if isinstance(value, str):
        if not value:
            raise argument_error(ValueError, owner, arg_name, "a non-empty str", value)
        if value != ALL_DENSE:
            _check_regex(value, arg_name, owner)
        return value
    if value is None:
        raise argument_error(TypeError, owner, arg_name,
                             f"a list of cell names, a regular expression or {ALL_DENSE!r}", value)
    return check_name_list(value, arg_name, owner)


class TargetSpec:
    """A validated targeting field, matched against cell paths.

    Args:
        spec (Union[list[str], str, None]): the field's value (see :func:`check_target_spec`); None matches nothing.
    """

    def __init__(self, spec):
        self.spec = spec

    @property
    def is_all_dense(self):
        return self.spec == ALL_DENSE

    def matches(self, path, is_dense=False):
        """Whether the cell at ``path`` is named; ``is_dense`` tells ``"all-dense"`` whether it is Dense-like."""
        if self.spec is None:
            return False
        if self.is_all_dense:
            return is_dense
        if isinstance(self.spec, str):
            return re.fullmatch(self.spec, path) is not None
        return any(entry_matches(entry, path) for entry in self.spec)

    def unmatched_entries(self, paths):
        """The list entries that name none of ``paths`` (empty for a regular expression or ``"all-dense"``)."""
        if not isinstance(self.spec, list):
            return []
        return [entry for entry in self.spec if not any(entry_matches(entry, path) for path in paths)]


def pattern_value(patterns, path, default):
    """The value of the first key of ``patterns`` that names ``path`` (as a list entry, or as a full-match regular
    expression), else ``default``. This is how ``rank_pattern`` and ``alpha_pattern`` pick a per-cell value."""
    for key, value in (patterns or {}).items():
        if entry_matches(key, path) or re.fullmatch(key, path) is not None:
            return value
    return default


def closest_paths(wanted, paths, count=5):
    """The cell paths most like the entries in ``wanted`` (for "matched nothing" messages)."""
    entries = wanted if isinstance(wanted, list) else [str(wanted)]
    # A bare name is compared with the last component too, where the interesting part of a path is.
    tails = {path.rsplit(".", 1)[-1]: path for path in paths}
    suggestions = []
    for entry in entries:
        candidates = difflib.get_close_matches(entry, paths, n=count, cutoff=0.3)
        candidates += [tails[tail] for tail in difflib.get_close_matches(entry, list(tails), n=count, cutoff=0.5)]
        suggestions.extend(path for path in candidates if path not in suggestions)
    return suggestions[:count]
