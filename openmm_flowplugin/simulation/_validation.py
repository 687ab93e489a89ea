"""Checks on a run's arguments, made before any long work; each error names the value and the fix."""

__all__ = ["count", "positive_time", "MAX_TIMESTEP_UNCONSTRAINED_H_FS", "timestep_limit", "check_timestep"]

import math
import numbers

from openmm import app, unit

from ..units import in_unit
from ..errors import InvalidInputError

#: Largest sensible timestep (fs) when bonds to hydrogen are not constrained: they vibrate with a
#: period of about 10 fs, and Verlet-type integrators are unstable above period / pi (~3.5 fs).
MAX_TIMESTEP_UNCONSTRAINED_H_FS = 4.0


def count(name, value, minimum=1):
    """``value`` as an int >= ``minimum``; a one-line ValueError naming ``name`` otherwise.

    Examples
    --------
    >>> count("n_steps", 100.0)
    100
    >>> count("n_steps", 0.5)
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: n_steps must be an integer >= 1, got 0.5.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value) or int(value) < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def positive_time(name, value, target_unit, zero_ok=False):
    """A finite float in ``target_unit``, > 0 (or >= 0 when ``zero_ok``); one-line ValueError otherwise."""
    number = float(in_unit(value, target_unit, name))
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        raise InvalidInputError(f"{name} must be a finite number {'>=' if zero_ok else '>'} 0 ({target_unit}), got {value}.")
    return number


def _unconstrained_hydrogens(system, topology):
    constrained = set()
    for i in range(system.getNumConstraints()):
        a, b, _ = system.getConstraintParameters(i)
        constrained.update((a, b))
    return sum(1 for atom in topology.atoms()
               if atom.element is app.element.hydrogen and atom.index not in constrained
               and system.getParticleMass(atom.index).value_in_unit(unit.dalton) > 0)


def timestep_limit(molecular_system):
    """``(limit_fs, reason)``: the largest sensible timestep, or ``(None, "")`` when none applies."""
    n = _unconstrained_hydrogens(molecular_system.system, molecular_system.topology)
    if n == 0:
        return None, ""
    return MAX_TIMESTEP_UNCONSTRAINED_H_FS, f"{molecular_system.name} has {n} hydrogens without bond constraints"


def check_timestep(molecular_system, timestep_fs):
    """A one-line message if ``timestep_fs`` is surely too large for ``molecular_system``, else ``None``."""
    limit, reason = timestep_limit(molecular_system)
    if limit is None or timestep_fs <= limit:
        return None
    return (f"timestep {timestep_fs:g} fs is too large: {reason}, whose bonds vibrate with a ~10 fs period; "
            f"use --timestep 1 (at most {limit:g}), or constrain bonds to hydrogen (constraints=HBonds) for 2 fs.")
