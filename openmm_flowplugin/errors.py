"""The package's user-error types: bad input, named with the problem and the fix.

The command line prints these as one line (``error: ...``, exit status 2); anything else is a bug
or a broken environment and keeps its traceback. Each subclasses the built-in type it refines, so
``except ValueError`` and ``pytest.raises(ValueError)`` keep working.

Examples
--------
>>> try:
...     raise InvalidInputError("n_steps must be an integer >= 1, got 0.")
... except ValueError as error:
...     print(error)
n_steps must be an integer >= 1, got 0.
"""

__all__ = ["UserInputError", "InvalidInputError", "InvalidTypeError", "UnknownNameError", "ParametrizationError", "NoOverlapError",
           "MissingDependencyError"]


class UserInputError(Exception):
    """Base of the errors caused by the user's input (values, files, names), not by a bug."""


class InvalidInputError(UserInputError, ValueError):
    """A value, file content or combination of options that cannot be used."""


class InvalidTypeError(UserInputError, TypeError):
    """An argument of the wrong kind (e.g. a module where a Force is needed)."""


class UnknownNameError(UserInputError, KeyError):
    """A name (system, parameter, platform) that is not known; the message lists the known ones."""

    def __str__(self):  # KeyError quotes its message; print it as a sentence
        return str(self.args[0]) if self.args else ""


class ParametrizationError(UserInputError, RuntimeError):
    """A force-field tool (antechamber, parmchk2, tleap, cpptraj) could not parametrize the molecule given.

    The message names the tool, its last error lines and the log file kept for inspection.
    """


class MissingDependencyError(UserInputError, ImportError):
    """An optional package or program a feature needs is not installed; the message names what to install."""


class NoOverlapError(InvalidInputError):
    """Neighbouring states of a free-energy estimate share too few configurations for MBAR to be trusted.

    The message names the weakest pair of states and what to add (states, nodes, sampling).

    Attributes
    ----------
    weakest_pair : tuple of int or None
        Indices of the neighbouring states that overlap least (``None`` when MBAR found no solution at all).
    """

    def __init__(self, message, weakest_pair=None):
        super().__init__(message)
        self.weakest_pair = weakest_pair
