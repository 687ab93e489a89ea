"""The base of the collective variables and the checks they share (private: import the CVs from
:mod:`openmm_flowplugin.geometry.collective_variables`).

:class:`CollectiveVariable` checks the positions and calls its subclass's ``_compute``; :class:`PeriodicCV`
adds the rectangular minimum image for the CVs that may apply it.
"""

__all__ = ["CollectiveVariable", "PeriodicCV", "distinct_atoms", "real_number", "positive_length"]

import abc
import math

import numpy as np
import torch
from openmm import unit

from ..errors import InvalidInputError, InvalidTypeError
from ..units import check_position_dtype, in_unit, integer_array, nanometers


class CollectiveVariable(torch.nn.Module, abc.ABC):
    """Base class: ``cv(x, box=None)`` -> values of shape (batch,); subclasses write ``_compute`` and ``to_openmm_force``.

    Attributes
    ----------
    atoms : tuple of int
        Every atom the CV reads (``x`` must have more atoms than the largest).
    uses_periodic_box : bool
        Whether the CV applies the minimum image (and so accepts ``box``).
    """

    atoms = ()
    uses_periodic_box = False

    def forward(self, x, box=None):
        """CV values, shape (batch,), dtype and device of ``x``.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape=(batch, n_atoms, 3)
            Positions in nm (or an ``openmm.unit`` Quantity wrapping them); float64 or float32.
        box : array_like, torch.Tensor or Quantity, shape=(3,) or (batch, 3), optional
            Rectangular box lengths (nm) for periodic CVs; overrides the box given at construction.
        """
        if box is not None and not self.uses_periodic_box:
            raise InvalidInputError(f"a box was given but {type(self).__name__} is not periodic: construct it with periodic=True, or drop box.")
        return self._compute(_as_positions(x, self.atoms, type(self).__name__), box)

    @abc.abstractmethod
    def _compute(self, x, box):
        """CV values of checked positions ``x`` (batch, n_atoms, 3) as a tensor of shape (batch,)."""

    @abc.abstractmethod
    def to_openmm_force(self):
        """An OpenMM ``Force`` whose potential energy (kJ/mol, as a number) equals the CV value."""


class PeriodicCV(CollectiveVariable):
    """Shared by the CVs that may apply the minimum image."""

    def _init_periodic(self, periodic, box):
        if not isinstance(periodic, (bool, np.bool_)):
            raise InvalidTypeError(f"periodic must be True or False, got {periodic!r}.")
        if box is not None and not periodic:
            raise InvalidInputError("a box was given with periodic=False: pass periodic=True to use the minimum image, or drop box.")
        lengths = _box_lengths(box)
        if lengths is not None and lengths.shape != (3,):
            raise InvalidInputError(f"box at construction must be three lengths (Lx, Ly, Lz), got shape {lengths.shape}; pass per-sample boxes at call time.")
        self.uses_periodic_box = bool(periodic)
        self.box = None if lengths is None else tuple(lengths.tolist())

    def _displacement(self, x, i, j, box):
        """``x[:, j] - x[:, i]`` (minimum image if periodic); ``i``, ``j`` ints or index tensors."""
        d = x[:, j] - x[:, i]
        if not self.uses_periodic_box:
            return d
        lengths = _box_lengths(self.box if box is None else box, x)
        if lengths is None:
            raise InvalidInputError(f"{type(self).__name__} is periodic but has no box: give box=(Lx, Ly, Lz) at construction or call time (nm).")
        if lengths.shape[0] not in (1, x.shape[0]):
            raise InvalidInputError(f"box has {lengths.shape[0]} rows but x has a batch of {x.shape[0]}: pass shape (3,) or ({x.shape[0]}, 3).")
        lengths = lengths.reshape(lengths.shape[0], *([1] * (d.ndim - 2)), 3)
        return d - lengths * torch.floor(d / lengths + 0.5)  # as OpenMM's rectangular minimum image


# --------------------------------------------------------------------------------------- checks
def distinct_atoms(atoms, what):
    array = integer_array(list(atoms), f"{what} atom indices")
    if (array < 0).any():
        raise InvalidInputError(f"{what} atom indices must be >= 0, got {array.tolist()}.")
    if len(set(array.tolist())) != len(array):
        raise InvalidInputError(f"{what} needs distinct atoms, got {array.tolist()} (an atom is repeated).")
    return tuple(int(a) for a in array)


def real_number(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be finite real numbers, got {value!r}.")
    return float(value)


def positive_length(value, name):
    number = in_unit(value, unit.nanometer, name)
    if isinstance(number, (bool, np.bool_)) or np.ndim(number) != 0 or np.asarray(number).dtype.kind not in "fiu":
        raise InvalidInputError(f"{name} must be a length (nm if bare), got {value!r}.")
    if not (math.isfinite(number) and number > 0):
        raise InvalidInputError(f"{name} must be a finite length > 0 nm, got {value}; e.g. 0.25 or 2.5*unit.angstrom.")
    return float(number)


def _box_lengths(box, x=None):
    """Box lengths as a float64 numpy array (``x`` None) or a tensor of shape (rows, 3) like ``x``; None passes."""
    if box is None:
        return None
    box = in_unit(box, unit.nanometer, "box")
    if torch.is_tensor(box):
        if not box.is_floating_point():
            raise InvalidTypeError(f"box must hold real lengths in nm, got dtype {box.dtype}.")
        lengths = box.detach()
    else:
        lengths = torch.as_tensor(nanometers(box, "box"))
    if lengths.shape not in ((3,),) and not (lengths.ndim == 2 and lengths.shape[1] == 3):
        raise InvalidInputError(f"box must be rectangular box lengths of shape (3,) or (batch, 3) in nm, got shape {tuple(lengths.shape)}.")
    if not bool(torch.all(torch.isfinite(lengths) & (lengths > 0))):
        raise InvalidInputError(f"box lengths must be finite and > 0 nm, got {lengths.tolist()}.")
    if x is None:
        return lengths.numpy().astype(np.float64)
    return lengths.to(dtype=x.dtype, device=x.device).reshape(-1, 3)


def _as_positions(x, atoms, what):
    if unit.is_quantity(x):
        x = x.value_in_unit(unit.nanometer)
    check_position_dtype(x, "x")
    if not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, np.ndarray) else x)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise InvalidInputError(f"x must have shape (batch, n_atoms, 3) in nm, got {tuple(x.shape)}; for one configuration use x[None].")
    if atoms and max(atoms) >= x.shape[1]:
        raise InvalidInputError(f"{what} uses atom {max(atoms)} but x has only {x.shape[1]} atoms: check the atom indices (0-based).")
    return x
