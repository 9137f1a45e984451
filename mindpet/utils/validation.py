"""Argument checks shared by every public API.

Every check raises the error type the API contract names, with one message shape:
``For 'Owner', the argument 'name' must be <expected>, but got <value>.`` It returns the value, so callers
can validate and assign in one line.
"""
import numbers


def argument_error(error_type, owner, arg_name, expected, value):
    """Build an error of ``error_type`` that names the owner, the argument, what was expected and what came."""
    return error_type(f"For '{owner}', the argument '{arg_name}' must be {expected}, but got {value!r}"
                      f" (type {type(value).__name__}).")


def _is_int(value):
    # bool subclasses int, but True is never a sensible channel count or rank.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(value, arg_name, owner):
    """Return ``value`` if it is an int > 0: TypeError for a non-int (bool included), ValueError for <= 0."""
    if not _is_int(value):
        raise argument_error(TypeError, owner, arg_name, "an int", value)
    if value <= 0:
        raise argument_error(ValueError, owner, arg_name, "a positive int", value)
    return int(value)


def check_bool(value, arg_name, owner):
    """Return ``value`` if it is a bool, else raise TypeError."""
    if not isinstance(value, bool):
        raise argument_error(TypeError, owner, arg_name, "a bool", value)
    return value


def check_nonzero_number(value, arg_name, owner):
    """Return ``value`` as a float if it is a nonzero int or float: TypeError for other types, ValueError for 0."""
    if not _is_real(value):
        raise argument_error(TypeError, owner, arg_name, "an int or a float", value)
    if value == 0:
        raise argument_error(ValueError, owner, arg_name, "nonzero", value)
    return float(value)


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
