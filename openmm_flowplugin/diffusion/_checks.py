"""Argument checks shared by the diffusion modules, so that every count is refused the same way.

Examples
--------
>>> integer_at_least(3, 1, "batch_size")
3
>>> is_integer(True), is_integer(2.0)
(False, False)
"""

import math
import numbers

from ..errors import InvalidInputError


def is_integer(value):
    """True for Python and NumPy integers; False for bools, which are ints no caller means as a count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer_at_least(value, least, name):
    """``int(value)``, or an error naming ``name`` when ``value`` is not an integer >= ``least``."""
    if not is_integer(value) or value < least:
        kind = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise InvalidInputError(f"{name} must be {kind}, got {value!r}.")
    return int(value)


def finite_positive(value, name):
    """``float(value)``, or an error naming ``name`` when ``value`` is not a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)
