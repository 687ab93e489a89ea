"""The geometric collective variables: torsion, angle, distance, coordination number, Cartesian component
(private: import them from :mod:`openmm_flowplugin.geometry.collective_variables`)."""

__all__ = ["Torsion", "Angle", "Distance", "CoordinationNumber", "CartesianComponent"]

import math

import numpy as np
import openmm
import torch

from ..errors import InvalidInputError, InvalidTypeError
from ..units import to_atom_indices
from ._cv_base import CollectiveVariable, PeriodicCV, distinct_atoms, positive_length


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
        self.atoms = distinct_atoms((a, b, c, d), "Torsion")

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
        self.atoms = distinct_atoms((a, b, c), "Angle")

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


class Distance(PeriodicCV):
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
        self.atoms = distinct_atoms((a, b), "Distance")
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


class CoordinationNumber(PeriodicCV):
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
        self.r0 = positive_length(r0, "r0")
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
        (self.atom,) = distinct_atoms((atom,), "CartesianComponent")
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


def _geometric_sum(q, k):
    """``1 + q + ... + q^(k-1)`` by Horner's rule."""
    total = torch.ones_like(q)
    for _ in range(k - 1):
        total = 1.0 + q * total
    return total
