"""Argument checks shared by every public API.

Every check raises the error type the API contract names, with one message shape:
``For 'Owner', the argument 'name' must be <expected>, but got <value>.`` It returns the value, so callers
can validate and assign in one line.

A value quoted in a message goes through :func:`quote_value`, which bounds its length: a message never grows with the
input (a huge list, a string of megabytes, a YAML alias bomb).
"""
import math
import numbers
import reprlib

# The longest quotation of a value in a message, in characters.
MAX_QUOTED_CHARS = 200
# The most names listed in a message; the rest are counted.
MAX_QUOTED_NAMES = 10
# The largest int accepted as a size (channels, ranks, counts): the int32 range MindSpore's shapes and kernels use.
MAX_SIZE = 2 ** 31 - 1

_QUOTER = reprlib.Repr()
_QUOTER.maxlevel = 3
_QUOTER.maxlist = _QUOTER.maxtuple = _QUOTER.maxset = _QUOTER.maxfrozenset = _QUOTER.maxdeque = 10
_QUOTER.maxdict = 10
_QUOTER.maxstring = _QUOTER.maxother = _QUOTER.maxlong = MAX_QUOTED_CHARS


def quote_value(value):
    """The ``repr`` of ``value`` for an error message, at most about ``MAX_QUOTED_CHARS`` characters long.

    Nested containers are shown to a depth of 3 and 10 items per level, so even a structure whose full ``repr``
    would take gigabytes is quoted in bounded time.

    Args:
        value (object): Any value.

    Returns:
        str, the bounded ``repr``; a shortened one shows ``...`` where it was cut.

    Examples:
        >>> from mindpet.utils.validation import quote_value
        >>> quote_value('head')
        "'head'"
        >>> len(quote_value('x' * 10 ** 6)) <= 210
        True
    """
    text = _QUOTER.repr(value)
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "..."
    return text


def quote_names(names):
    """A list of names for a message: the first ``MAX_QUOTED_NAMES`` quoted, then how many more there are.

    Args:
        names (Iterable[str]): The names, in the order to show.

    Returns:
        str, e.g. ``"['a', 'b'] and 3 more"``.

    Examples:
        >>> from mindpet.utils.validation import quote_names
        >>> quote_names([f"layer{index}.weight" for index in range(12)]).endswith("'layer9.weight'] and 2 more")
        True
    """
    names = list(names)
    text = "[" + ", ".join(quote_value(name) for name in names[:MAX_QUOTED_NAMES]) + "]"
    if len(names) > MAX_QUOTED_NAMES:
        text += f" and {len(names) - MAX_QUOTED_NAMES} more"
    return text


def argument_error(error_type, owner, arg_name, expected, value):
    """Build an error of ``error_type`` that names the owner, the argument, what was expected and what came.

    The value is quoted with :func:`quote_value`, so the message stays short whatever the value.
    """
    return error_type(f"For '{owner}', the argument '{arg_name}' must be {expected}, but got {quote_value(value)}"
                      f" (type {type(value).__name__}).")


def _is_int(value):
    # bool subclasses int, but True is never a sensible channel count or rank.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(value, arg_name, owner):
    """Return ``value`` if it is an int in ``[1, MAX_SIZE]``: TypeError for a non-int (bool included), ValueError
    for <= 0 or > ``MAX_SIZE`` (2**31 - 1, beyond which no shape or kernel index fits)."""
    if not _is_int(value):
        raise argument_error(TypeError, owner, arg_name, "an int", value)
    if value <= 0:
        raise argument_error(ValueError, owner, arg_name, "a positive int", value)
    if value > MAX_SIZE:
        raise argument_error(ValueError, owner, arg_name, f"at most {MAX_SIZE} (2**31 - 1)", value)
    return int(value)


def check_bool(value, arg_name, owner):
    """Return ``value`` if it is a bool, else raise TypeError."""
    if not isinstance(value, bool):
        raise argument_error(TypeError, owner, arg_name, "a bool", value)
    return value


def check_finite_number(value, arg_name, owner):
    """Return ``value`` as a float if it is a finite int or float: TypeError for other types, ValueError for NaN
    and +-inf (which would turn every output they touch into NaN or inf)."""
    if not _is_real(value):
        raise argument_error(TypeError, owner, arg_name, "an int or a float", value)
    try:
        number = float(value)
    except OverflowError:
        # An int beyond the float range.
        number = math.inf
    if not math.isfinite(number):
        raise argument_error(ValueError, owner, arg_name, "a finite number (not NaN or infinite)", value)
    return number


def check_nonzero_number(value, arg_name, owner):
    """Return ``value`` as a float if it is a finite nonzero int or float: TypeError for other types, ValueError
    for 0, NaN and +-inf."""
    value = check_finite_number(value, arg_name, owner)
    if value == 0:
        raise argument_error(ValueError, owner, arg_name, "nonzero", value)
    return value


def check_rate(value, arg_name, owner):
    """Return a probability in [0, 1) as a float. Accepts int 0 and floats; TypeError or ValueError otherwise."""
    if not (isinstance(value, float) or (_is_int(value) and value == 0)):
        raise argument_error(TypeError, owner, arg_name, "a float in [0, 1)", value)
    if not 0.0 <= value < 1.0:
        raise argument_error(ValueError, owner, arg_name, "in the range [0, 1)", value)
    return float(value)


def check_str(value, arg_name, owner):
    """Return ``value`` if it is a str, else raise TypeError."""
    if not isinstance(value, str):
        raise argument_error(TypeError, owner, arg_name, "a str", value)
    return value


def check_str_list(value, arg_name, owner, allow_none=True):
    """Return a list of str patterns: TypeError for other types, ValueError for an empty list."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) \
            or not all(isinstance(item, str) for item in value):
        raise argument_error(TypeError, owner, arg_name, "a list of str", value)
    if not value:
        raise argument_error(ValueError, owner, arg_name, "a non-empty list", value)
    return list(value)
