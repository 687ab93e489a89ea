"""Unit handling at the edge of the package.

Public functions accept :mod:`openmm.unit` quantities or bare numbers. Bare numbers are taken
in OpenMM's unit system (nm, ps, kJ/mol, K, amu). Inside the package every energy is a
*reduced* energy ``u = U / kT`` (dimensionless) and every length is in nm.
"""

__all__ = ["in_unit", "kelvin", "kT", "beta", "nanometers", "to_numpy_positions"]

import numpy as np
from openmm import unit

#: Molar gas constant R = k_B N_A in kJ/(mol K), from :mod:`openmm.unit` (CODATA as shipped by OpenMM).
MOLAR_GAS_CONSTANT = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


def in_unit(value, target_unit, name="value"):
    """Return ``value`` as a plain float (or array) in ``target_unit``.

    Parameters
    ----------
    value : float, array_like or openmm.unit.Quantity
        A bare number is assumed to be in ``target_unit`` already.
    target_unit : openmm.unit.Unit
    name : str
        Used in the error message if the units are incompatible.

    Examples
    --------
    >>> from openmm import unit
    >>> in_unit(2.0 * unit.angstrom, unit.nanometer)
    0.2
    """
    if unit.is_quantity(value):
        if not value.unit.is_compatible(target_unit):
            raise TypeError(f"{name} has unit {value.unit}, which cannot be converted to {target_unit}.")
        return value.value_in_unit(target_unit)
    return value


def kelvin(temperature):
    """Temperature as a float in K (accepts a Quantity or a bare number in K)."""
    t = float(in_unit(temperature, unit.kelvin, "temperature"))
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive number of kelvin, got {temperature}.")
    return t


def kT(temperature):
    """Thermal energy k_B T in kJ/mol for a temperature (Quantity or K)."""
    return MOLAR_GAS_CONSTANT * kelvin(temperature)


def beta(temperature):
    """Inverse thermal energy 1/(k_B T) in mol/kJ."""
    return 1.0 / kT(temperature)


def nanometers(value, name="positions"):
    """A length or array of lengths in nm as a float64 numpy array."""
    return np.asarray(in_unit(value, unit.nanometer, name), dtype=np.float64)


def to_numpy_positions(positions, n_atoms=None, name="positions"):
    """Positions as a float64 array of shape (n_atoms, 3) in nm, with a clear error otherwise."""
    array = nanometers(positions, name)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n_atoms, 3), got {array.shape}.")
    if n_atoms is not None and array.shape[0] != n_atoms:
        raise ValueError(f"{name} has {array.shape[0]} atoms but the system has {n_atoms}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contain NaN or infinite coordinates.")
    return array
