"""Collective variables in torch that equal OpenMM's, differentiable, each with its OpenMM ``Force``.

Each CV is a :class:`torch.nn.Module` mapping positions ``x`` of shape (batch, n_atoms, 3) in nm
(float64 or float32, any device) to values of shape (batch,) in the input's dtype. Its
:meth:`~CollectiveVariable.to_openmm_force` builds an OpenMM ``Force`` whose energy is the CV value,
and :func:`custom_cv_force` puts several in one ``CustomCVForce`` (e.g. a bias on the CVs).

Periodic CVs (``periodic=True``) use the minimum image in a *rectangular* box: lengths ``(Lx, Ly, Lz)``
given at construction (the default) or at call time (``cv(x, box=...)``, shape (3,) or (batch, 3),
which wins). Their OpenMM forces use the Context's box, so keep the two equal.
"""

__all__ = [
    "CollectiveVariable",
    "Torsion",
    "Distance",
    "Angle",
    "CoordinationNumber",
    "CartesianComponent",
    "LinearCombination",
    "custom_cv_force",
]

import abc
import copy
import math

import numpy as np
import openmm
import torch
from openmm import unit

from ..errors import InvalidInputError, InvalidTypeError
from ..units import (
    check_position_dtype,
    in_unit,
    integer_array,
    nanometers,
    to_atom_indices,
)


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


class Torsion(CollectiveVariable):
    """Torsion a-b-c-d in radians in (-pi, pi], as ``openmm.CustomTorsionForce("theta")`` (IUPAC sign).

    Parameters
    ----------
    a, b, c, d : int
        Four distinct atom indices.

    Examples
    --------
    >>> x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]]], dtype=torch.float64)
    >>> Torsion(0, 1, 2, 3)(x)
    tensor([-1.5708], dtype=torch.float64)
    """

    def __init__(self, a, b, c, d):
        super().__init__()
        self.atoms = _distinct_atoms((a, b, c, d), "Torsion")

    def _compute(self, x, box):
        a, b, c, d = self.atoms
        b1, b2, b3 = x[:, b] - x[:, a], x[:, c] - x[:, b], x[:, d] - x[:, c]
        n1, n2 = torch.linalg.cross(b1, b2, dim=-1), torch.linalg.cross(b2, b3, dim=-1)
        theta = torch.atan2(torch.linalg.norm(b2, dim=-1) * (b1 * n2).sum(-1), (n1 * n2).sum(-1))
        return torch.where(theta <= -math.pi, theta + 2 * math.pi, theta)  # atan2 gives -pi for y = -0.0

    def to_openmm_force(self):
        force = openmm.CustomTorsionForce("theta")
        force.addTorsion(*self.atoms, [])
        return force

    def extra_repr(self):
        return ", ".join(map(str, self.atoms))


class Angle(CollectiveVariable):
    """Angle a-b-c (vertex ``b``) in radians in [0, pi], as ``openmm.CustomAngleForce("theta")``.

    The gradient is singular at 0 and pi (collinear atoms), as in OpenMM.

    Examples
    --------
    >>> x = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0]]])
    >>> Angle(0, 1, 2)(x)
    tensor([1.5708])
    """

    def __init__(self, a, b, c):
        super().__init__()
        self.atoms = _distinct_atoms((a, b, c), "Angle")

    def _compute(self, x, box):
        a, b, c = self.atoms
        u, v = x[:, a] - x[:, b], x[:, c] - x[:, b]
        return torch.atan2(torch.linalg.norm(torch.linalg.cross(u, v, dim=-1), dim=-1), (u * v).sum(-1))  # exact near 0, pi

    def to_openmm_force(self):
        force = openmm.CustomAngleForce("theta")
        force.addAngle(*self.atoms, [])
        return force

    def extra_repr(self):
        return ", ".join(map(str, self.atoms))


class _Periodic(CollectiveVariable):
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


class Distance(_Periodic):
    """Distance between atoms ``a`` and ``b`` in nm, as ``openmm.CustomBondForce("r")``.

    Parameters
    ----------
    a, b : int
        Two distinct atom indices.
    periodic : bool
        Minimum image in a rectangular box (the OpenMM force then uses periodic boundary conditions).
    box : array_like or Quantity, shape=(3,), optional
        Default box lengths (nm if bare); a ``box`` passed at call time wins.

    Examples
    --------
    >>> x = torch.tensor([[[0.1, 0.0, 0.0], [1.9, 0.0, 0.0]]], dtype=torch.float64)
    >>> Distance(0, 1)(x), Distance(0, 1, periodic=True, box=(2.0, 2.0, 2.0))(x)
    (tensor([1.8000], dtype=torch.float64), tensor([0.2000], dtype=torch.float64))
    """

    def __init__(self, a, b, periodic=False, box=None):
        super().__init__()
        self.atoms = _distinct_atoms((a, b), "Distance")
        self._init_periodic(periodic, box)

    def _compute(self, x, box):
        return torch.linalg.norm(self._displacement(x, self.atoms[0], self.atoms[1], box), dim=-1)

    def to_openmm_force(self):
        force = openmm.CustomBondForce("r")
        force.addBond(*self.atoms, [])
        force.setUsesPeriodicBoundaryConditions(self.uses_periodic_box)
        return force

    def extra_repr(self):
        return f"{self.atoms[0]}, {self.atoms[1]}, periodic={self.uses_periodic_box}, box={self.box}"


class CoordinationNumber(_Periodic):
    """Coordination number ``sum over pairs s(r_ij)``, ``s(r) = (1 - (r/r0)^n) / (1 - (r/r0)^m)``.

    The pairs are the distinct unordered pairs ``{i, j}``, ``i`` in ``group_a``, ``j`` in ``group_b``,
    ``i != j`` (all pairs within ``group_a`` if ``group_b`` is None). With ``q = r / r0`` the switch is
    evaluated as ``(1 + q + ... + q^(n-1)) / (1 + q + ... + q^(m-1))``, the same function with its
    removable singularity at ``r = r0`` divided out: exact there (value ``n/m``, finite gradient) and
    free of cancellation nearby, in torch and in the OpenMM ``CustomBondForce`` (one bond per pair:
    cost grows as ``len(group_a) * len(group_b)``).

    Parameters
    ----------
    group_a, group_b : sequence of int
        Atom indices (``group_b`` may be None).
    r0 : float or Quantity
        Switching distance (nm if bare), > 0.
    n, m : int
        Exponents, ``0 < n < m``.
    periodic, box
        As for :class:`Distance`.

    Examples
    --------
    >>> x = torch.tensor([[[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.0, 0.5, 0.0]]], dtype=torch.float64)
    >>> CoordinationNumber([0], [1, 2], r0=0.25)(x)  # 6/12 + 1/(1 + 2**6)
    tensor([0.5154], dtype=torch.float64)
    """

    def __init__(self, group_a, group_b, r0, n=6, m=12, periodic=False, box=None):
        super().__init__()
        a = to_atom_indices(group_a, name="group_a")
        b = a if group_b is None else to_atom_indices(group_b, name="group_b")
        pairs = sorted({(min(i, j), max(i, j)) for i in a.tolist() for j in b.tolist() if i != j})
        if not pairs:
            raise InvalidInputError("CoordinationNumber has no pair of distinct atoms: give groups with at least two different atoms.")
        self.r0 = _positive_length(r0, "r0")
        for name, value in (("n", n), ("m", m)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise InvalidTypeError(f"{name} must be an integer exponent, got {value!r}.")
        if not 0 < n < m:
            raise InvalidInputError(f"exponents must satisfy 0 < n < m for a switch that decays from 1 to 0, got n={n}, m={m}.")
        self.n, self.m = int(n), int(m)
        self.pairs = tuple(pairs)
        self.atoms = tuple(sorted(set(a.tolist()) | set(b.tolist())))
        index = torch.as_tensor(pairs, dtype=torch.long)
        self.register_buffer("_first", index[:, 0].clone(), persistent=False)
        self.register_buffer("_second", index[:, 1].clone(), persistent=False)
        self._init_periodic(periodic, box)

    def _compute(self, x, box):
        i, j = self._first.to(x.device), self._second.to(x.device)
        q = torch.linalg.norm(self._displacement(x, i, j, box), dim=-1) / self.r0
        return (_geometric_sum(q, self.n) / _geometric_sum(q, self.m)).sum(-1)

    def to_openmm_force(self):
        def series(k):
            return "+".join(["1"] + ["q" if p == 1 else f"q^{p}" for p in range(1, k)])

        force = openmm.CustomBondForce(f"({series(self.n)})/({series(self.m)}); q=r/r0")
        force.addPerBondParameter("r0")  # per bond, so no global name can collide with another force's
        for i, j in self.pairs:
            force.addBond(i, j, [self.r0])
        force.setUsesPeriodicBoundaryConditions(self.uses_periodic_box)
        return force

    def extra_repr(self):
        return f"n_pairs={len(self.pairs)}, r0={self.r0}, n={self.n}, m={self.m}, periodic={self.uses_periodic_box}"


class CartesianComponent(CollectiveVariable):
    """One Cartesian coordinate of one atom in nm, as ``openmm.CustomExternalForce("x")`` (unwrapped).

    Parameters
    ----------
    atom : int
    axis : {0, 1, 2, "x", "y", "z"}

    Examples
    --------
    >>> CartesianComponent(1, "y")(torch.tensor([[[0.0, 0.0, 0.0], [0.3, -0.2, 0.1]]]))
    tensor([-0.2000])
    """

    def __init__(self, atom, axis):
        super().__init__()
        (self.atom,) = _distinct_atoms((atom,), "CartesianComponent")
        names = {"x": 0, "y": 1, "z": 2}
        if isinstance(axis, str) and axis.lower() in names:
            axis = names[axis.lower()]
        if isinstance(axis, (bool, np.bool_)) or axis not in (0, 1, 2):
            raise InvalidInputError(f"axis must be 0, 1, 2 or 'x', 'y', 'z', got {axis!r}.")
        self.axis = int(axis)
        self.atoms = (self.atom,)

    def _compute(self, x, box):
        return x[:, self.atom, self.axis]

    def to_openmm_force(self):
        force = openmm.CustomExternalForce("xyz"[self.axis])
        force.addParticle(self.atom, [])
        return force

    def extra_repr(self):
        return f"atom={self.atom}, axis={'xyz'[self.axis]!r}"


class LinearCombination(CollectiveVariable):
    """``offset + sum_k coefficients[k] * cvs[k](x)``; its OpenMM force is a ``CustomCVForce``.

    Parameters
    ----------
    cvs : sequence of CollectiveVariable
    coefficients : sequence of float
        One real number per CV (written exactly into the OpenMM expression).
    offset : float

    Examples
    --------
    >>> x = torch.tensor([[[0.0, 0.0, 0.0], [0.3, 0.4, 0.0]]])
    >>> LinearCombination([Distance(0, 1), CartesianComponent(1, "x")], [2.0, -1.0], offset=0.5)(x)
    tensor([1.2000])
    """

    def __init__(self, cvs, coefficients, offset=0.0):
        super().__init__()
        cvs = list(cvs) if not isinstance(cvs, CollectiveVariable) else [cvs]
        if not cvs or not all(isinstance(cv, CollectiveVariable) for cv in cvs):
            raise InvalidTypeError(f"cvs must be a non-empty sequence of CollectiveVariable modules, got {cvs!r}.")
        coefficients = [_real(c, "coefficients") for c in np.atleast_1d(np.asarray(coefficients, dtype=object))]
        if len(coefficients) != len(cvs):
            raise InvalidInputError(f"give one coefficient per CV: {len(cvs)} CVs but {len(coefficients)} coefficients.")
        self.cvs = torch.nn.ModuleList(cvs)
        self.coefficients = tuple(coefficients)
        self.offset = _real(offset, "offset")
        self.atoms = tuple(sorted({a for cv in cvs for a in cv.atoms}))
        self.uses_periodic_box = any(cv.uses_periodic_box for cv in cvs)

    def _compute(self, x, box):
        total = sum(c * cv._compute(x, box) for c, cv in zip(self.coefficients, self.cvs))
        return total + self.offset

    def to_openmm_force(self):
        terms = [repr(self.offset)] + [f"({c!r})*cv{k}" for k, c in enumerate(self.coefficients)]
        return custom_cv_force("+".join(terms), **{f"cv{k}": cv for k, cv in enumerate(self.cvs)})

    def extra_repr(self):
        return f"coefficients={self.coefficients}, offset={self.offset}"


def custom_cv_force(expression, **cvs):
    """An ``openmm.CustomCVForce`` with energy ``expression`` of the named collective variables.

    Parameters
    ----------
    expression : str
        Lepton expression in the CV names (energy in kJ/mol), e.g. ``"0.5*k*(phi-1)^2"`` (global
        parameters such as ``k`` are added by the caller with ``addGlobalParameter``).
    **cvs : CollectiveVariable or openmm.Force
        Each becomes a collective variable of that name (a ``Force`` is copied).

    Returns
    -------
    openmm.CustomCVForce

    Examples
    --------
    >>> force = custom_cv_force("phi - psi", phi=Torsion(4, 6, 8, 14), psi=Torsion(6, 8, 14, 16))
    >>> [force.getCollectiveVariableName(k) for k in range(force.getNumCollectiveVariables())]
    ['phi', 'psi']
    """
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidInputError(f"expression must be a non-empty string in the CV names, got {expression!r}.")
    if not cvs:
        raise InvalidInputError("custom_cv_force needs at least one CV, e.g. custom_cv_force('phi', phi=Torsion(4, 6, 8, 14)).")
    force = openmm.CustomCVForce(expression)
    for name, cv in cvs.items():
        if isinstance(cv, CollectiveVariable):
            cv = cv.to_openmm_force()
        elif isinstance(cv, openmm.Force):
            cv = copy.deepcopy(cv)  # the CustomCVForce takes ownership of what it is given
        else:
            raise InvalidTypeError(f"CV {name!r} must be a CollectiveVariable or an openmm.Force, got {type(cv).__name__}.")
        force.addCollectiveVariable(name, cv)
    return force


# --------------------------------------------------------------------------------------- helpers
def _geometric_sum(q, k):
    """``1 + q + ... + q^(k-1)`` by Horner's rule."""
    total = torch.ones_like(q)
    for _ in range(k - 1):
        total = 1.0 + q * total
    return total


def _distinct_atoms(atoms, what):
    array = integer_array(list(atoms), f"{what} atom indices")
    if (array < 0).any():
        raise InvalidInputError(f"{what} atom indices must be >= 0, got {array.tolist()}.")
    if len(set(array.tolist())) != len(array):
        raise InvalidInputError(f"{what} needs distinct atoms, got {array.tolist()} (an atom is repeated).")
    return tuple(int(a) for a in array)


def _real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be finite real numbers, got {value!r}.")
    return float(value)


def _positive_length(value, name):
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
