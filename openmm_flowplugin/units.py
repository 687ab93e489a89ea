"""Unit handling and input checks at the edge of the package.

Public functions accept :mod:`openmm.unit` quantities or bare numbers. Bare numbers are taken
in OpenMM's unit system (nm, ps, kJ/mol, K, amu). Inside the package every energy is a
*reduced* energy ``u = U / kT`` (dimensionless) and every length is in nm.

Positions follow one dtype rule (:func:`to_numpy_positions`): numpy arrays and torch tensors
(bare or wrapped in a Quantity) must hold float64 or float32 numbers (float32 is converted to
float64); Python sequences (lists, tuples, ``Vec3``) of real numbers are converted to float64.
Anything else (integer, bool, complex, float16 arrays...) is refused with a ``TypeError`` rather
than silently truncated or cast. Atom indices (:func:`to_atom_indices`) must be integers.
"""

__all__ = [
    "in_unit",
    "kelvin",
    "timestep_ps",
    "friction_per_ps",
    "kT",
    "beta",
    "nanometers",
    "to_numpy_positions",
    "check_position_dtype",
    "to_atom_indices",
    "integer_array",
]

import sys

import numpy as np
from openmm import unit
from .errors import InvalidInputError, InvalidTypeError

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
            raise InvalidTypeError(f"{name} has unit {value.unit}, which cannot be converted to {target_unit}.")
        return value.value_in_unit(target_unit)
    return value


def kelvin(temperature):
    """Temperature as a float in K (accepts a Quantity or a bare number in K); finite and > 0.

    Examples
    --------
    >>> from openmm import unit
    >>> kelvin(300 * unit.kelvin)
    300.0
    >>> kelvin(float("inf"))
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: temperature must be a positive number of kelvin, got inf.
    """
    if isinstance(_raw_value(temperature), (bool, np.bool_)):
        raise InvalidInputError(f"temperature must be a positive number of kelvin, got {temperature!r}.")
    t = float(in_unit(temperature, unit.kelvin, "temperature"))
    if not np.isfinite(t) or t <= 0:
        raise InvalidInputError(f"temperature must be a positive number of kelvin, got {temperature}.")
    return t


def timestep_ps(timestep, name="timestep"):
    """Step size as a float in ps (Quantity or bare ps), finite and > 0.

    Examples
    --------
    >>> from openmm import unit
    >>> timestep_ps(2 * unit.femtoseconds)
    0.002
    """
    value = _real_scalar(timestep, unit.picosecond, name)
    if not (np.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name} must be a finite number > 0 ps, got {timestep}; e.g. 2*unit.femtoseconds.")
    return value


def friction_per_ps(friction, name="friction"):
    """Friction coefficient as a float in 1/ps (Quantity or bare 1/ps), finite and >= 0.

    Examples
    --------
    >>> from openmm import unit
    >>> friction_per_ps(1 / unit.picosecond)
    1.0
    """
    value = _real_scalar(friction, unit.picosecond**-1, name)
    if not (np.isfinite(value) and value >= 0):
        raise InvalidInputError(f"{name} must be a finite number >= 0 /ps, got {friction}; e.g. 1/unit.picosecond.")
    return value


def _real_scalar(value, target_unit, name):
    number = in_unit(value, target_unit, name)
    if isinstance(number, (bool, np.bool_)) or np.ndim(number) != 0 or np.asarray(number).dtype.kind not in "fiu":
        raise InvalidInputError(f"{name} must be a real number (or a Quantity), got {value!r}.")
    return float(number)


def kT(temperature):
    """Thermal energy k_B T in kJ/mol for a temperature (Quantity or K)."""
    return MOLAR_GAS_CONSTANT * kelvin(temperature)


def beta(temperature):
    """Inverse thermal energy 1/(k_B T) in mol/kJ."""
    return 1.0 / kT(temperature)


def nanometers(value, name="positions"):
    """A length or array of lengths in nm as a float64 numpy array.

    Real numbers only: bool, complex and non-numeric values are refused with a ``TypeError``.

    Examples
    --------
    >>> from openmm import unit
    >>> nanometers([1.0, 2.0] * unit.angstrom)
    array([0.1, 0.2])
    """
    _check_real(_raw_value(value), name, floating_only=False)
    return _float64_array(in_unit(value, unit.nanometer, name))


def to_numpy_positions(positions, n_atoms=None, name="positions"):
    """Positions as a float64 array of shape (n_atoms, 3) in nm, with a clear error otherwise.

    Parameters
    ----------
    positions : array_like, torch.Tensor or openmm.unit.Quantity, shape=(n_atoms, 3)
        nm if bare. Arrays and tensors must be float64 or float32 (converted to float64); Python
        sequences (lists, ``Vec3``) of real numbers are converted. Integer, bool, complex or
        float16 arrays raise ``TypeError``: integer coordinates are almost always indices or
        truncated data, and a cast would drop information silently.
    n_atoms : int, optional
        Required number of atoms.
    name : str
        Used in error messages.

    Examples
    --------
    >>> import numpy as np
    >>> to_numpy_positions(np.zeros((2, 3), dtype=np.float32)).dtype
    dtype('float64')
    >>> to_numpy_positions(np.zeros((2, 3), dtype=np.int64))
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidTypeError: positions have dtype int64: pass real floating-point coordinates in nm (float64; float32 is converted), e.g. np.asarray(positions, dtype=np.float64).
    """
    _check_real(_raw_value(positions), name, floating_only=True)
    array = _float64_array(in_unit(positions, unit.nanometer, name))
    if array.ndim != 2 or array.shape[1] != 3:
        raise InvalidInputError(f"{name} must have shape (n_atoms, 3), got {array.shape}.")
    if n_atoms is not None and array.shape[0] != n_atoms:
        raise InvalidInputError(f"{name} has {array.shape[0]} atoms but the system has {n_atoms}.")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{name} contain NaN or infinite coordinates.")
    return array


def check_position_dtype(positions, name="positions"):
    """Raise ``TypeError`` unless ``positions`` follow the dtype rule of :func:`to_numpy_positions`.

    Cheap (looks at the dtype only); for torch tensors that must stay tensors (autograd).

    Examples
    --------
    >>> import torch
    >>> check_position_dtype(torch.zeros(2, 3, dtype=torch.complex64))
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidTypeError: positions have dtype complex64: pass real floating-point coordinates in nm (float64; float32 is converted), e.g. np.asarray(positions, dtype=np.float64).
    """
    if type(positions) is np.ndarray and positions.dtype.type in (np.float64, np.float32):
        return  # the common case, on hot paths (one alignment per proposal)
    _check_real(_raw_value(positions), name, floating_only=True)


def to_atom_indices(indices, n_atoms=None, name="atom_indices"):
    """Distinct atom indices as an int64 array of shape (n,), with a clear error otherwise.

    Parameters
    ----------
    indices : sequence of int, numpy integer array or torch integer tensor
        Python ints or integer dtypes only: floats (``0.9`` would silently become atom 0) and
        bools are refused with a ``TypeError``.
    n_atoms : int, optional
        Indices must lie in ``[0, n_atoms)``.
    name : str
        Used in error messages.

    Examples
    --------
    >>> to_atom_indices([4, 6, 8], n_atoms=22)
    array([4, 6, 8])
    >>> to_atom_indices([0.9, 1.9], n_atoms=22)
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidTypeError: atom_indices must be integers (Python int or an integer dtype), got dtype float64: e.g. [0, 1, 2], not [0.0, 1.0, 2.0].
    """
    array = integer_array(indices, name)
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1D sequence of atom indices, got shape {array.shape}.")
    if array.size == 0:
        raise InvalidInputError(f"{name} is empty: list at least one atom, or pass None for all atoms.")
    if len(np.unique(array)) != len(array):
        raise InvalidInputError(f"{name} must be distinct, got {array.tolist()}.")
    if array.min() < 0 or (n_atoms is not None and array.max() >= n_atoms):
        bound = "" if n_atoms is None else f", {n_atoms}"
        raise InvalidInputError(f"{name} must lie in [0{bound}), got {array.tolist()}.")
    return array


def integer_array(values, name):
    """``values`` (any shape) as an int64 array; ``TypeError`` for floats, bools or non-numbers.

    Examples
    --------
    >>> integer_array([(0, 1), (1, 2)], "bonds").shape
    (2, 2)
    """
    dtype = _dtype_name(values)
    if dtype is None:  # a Python sequence
        if np.size(values) == 0:
            return np.zeros(np.shape(values), dtype=np.int64)
        dtype = _sequence_dtype(values)
    if dtype == "bool":
        raise InvalidTypeError(f"{name} must be integer atom indices, got booleans; for a mask use np.flatnonzero(mask).")
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise InvalidTypeError(
            f"{name} must be integers (Python int or an integer dtype), got dtype {dtype}: "
            "e.g. [0, 1, 2], not [0.0, 1.0, 2.0]."
        )
    if _is_tensor(values):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64)


# --------------------------------------------------------------------------------------- helpers
_FLOATING = ("float64", "float32")


def _is_tensor(value):
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and torch.is_tensor(value)


def _dtype_name(value):
    """numpy-style dtype name of an array, tensor or numpy scalar; None for Python objects and sequences."""
    if _is_tensor(value):
        return str(value.dtype).removeprefix("torch.")
    dtype = getattr(value, "dtype", None)
    return None if dtype is None else np.dtype(dtype).name


def _sequence_dtype(sequence):
    """dtype name of ``np.asarray(sequence)``, but "bool" if Python bools hide among ints (``[True, 2]`` is int64)."""
    array = np.asarray(sequence)
    if array.dtype.kind in "iu" and any(isinstance(v, (bool, np.bool_)) for v in np.asarray(sequence, dtype=object).reshape(-1)):
        return "bool"
    return array.dtype.name


def _raw_value(value):
    """The numbers inside a Quantity, before any conversion (which would hide an integer or bool dtype)."""
    return value._value if unit.is_quantity(value) else value


def _check_real(value, name, floating_only):
    dtype = _dtype_name(value)
    if dtype is None:  # Python numbers or sequences (lists, Vec3): Python ints and floats convert exactly
        dtype = _sequence_dtype(value)
        if dtype in _FLOATING or dtype.startswith("int") or dtype.startswith("uint"):
            return
    elif dtype in _FLOATING or (not floating_only and (dtype.startswith("int") or dtype.startswith("uint"))):
        return
    what = "real floating-point coordinates in nm (float64; float32 is converted)" if floating_only else "real lengths in nm"
    raise InvalidTypeError(f"{name} have dtype {dtype}: pass {what}, e.g. np.asarray({name}, dtype=np.float64).")


def _float64_array(value):
    if _is_tensor(value):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
