"""Internal coordinates: Cartesian <-> (bonds, angles, torsions) from a molecule's bond graph.

The Z-matrix is built automatically by breadth-first search over the bond graph. Three root atoms
``a0, a1, a2`` (``a1`` and ``a2`` bonded to ``a0``) fix the rigid frame; every other atom ``i`` is
placed from a bond to ``j``, an angle ``i-j-k`` and a torsion ``i-j-k-l`` (NeRF construction).
Where ``j`` already has another placed neighbour (a sibling of ``i``), that sibling is ``l``, so the
torsion measures ``i`` relative to its sibling (nearly constant, e.g. within methyl groups).

The 3N-6 internal degrees of freedom are ``N-1`` bond lengths (``|a1-a0|``, ``|a2-a0|`` and one per
placed atom), ``N-2`` angles (``a1-a0-a2`` and one per placed atom) and ``N-3`` torsions in
``[-pi, pi)``. With the rigid motions (translation, rotation with Haar measure) the Cartesian
volume element factorizes as

.. math:: dx = \\Big(\\prod_{\\text{bonds}} b^2 \\prod_{\\text{angles}} \\sin\\theta\\Big)\\, dt\\, dR\\, db\\, d\\theta\\, d\\phi,

so a density over internal coordinates ``q_ic`` corresponds to the rigid-motion-invariant
Cartesian density ``log q_x = log q_ic - log_det_jacobian(bonds, angles)``.
"""

__all__ = ["InternalCoordinateTransform", "InternalCoordinates", "dihedral"]

from collections import deque
from typing import NamedTuple

import numpy as np
import torch

from ..units import integer_array
from ..errors import InvalidInputError, InvalidTypeError


class InternalCoordinates(NamedTuple):
    """Bond lengths (nm), angles and torsions (radians), each of shape (batch, n)."""

    bonds: torch.Tensor
    angles: torch.Tensor
    torsions: torch.Tensor


def _normalize(v):
    return v / torch.linalg.norm(v, dim=-1, keepdim=True)


def _angle(a, b, c):
    """Angle a-b-c in radians, batched over leading dimensions."""
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / (torch.linalg.norm(u, dim=-1) * torch.linalg.norm(v, dim=-1))
    return torch.arccos(cos.clamp(-1.0, 1.0))


def dihedral(a, b, c, d):
    """Torsion a-b-c-d in radians in [-pi, pi] (IUPAC sign convention, as mdtraj), batched."""
    b1, b2, b3 = b - a, c - b, d - c
    n1 = torch.linalg.cross(b1, b2, dim=-1)
    n2 = torch.linalg.cross(b2, b3, dim=-1)
    m1 = torch.linalg.cross(n1, _normalize(b2), dim=-1)
    return torch.atan2(-(m1 * n2).sum(-1), (n1 * n2).sum(-1))


def _place(l, k, j, bond, angle, torsion):
    """NeRF: position of atom i with |i-j| = bond, angle i-j-k, torsion i-j-k-l."""
    bc = _normalize(j - k)
    n = _normalize(torch.linalg.cross(k - l, bc, dim=-1))
    m = torch.linalg.cross(n, bc, dim=-1)
    d2 = torch.stack(
        (-bond * torch.cos(angle), bond * torch.sin(angle) * torch.cos(torsion), bond * torch.sin(angle) * torch.sin(torsion)),
        dim=-1,
    )
    return j + d2[..., :1] * bc + d2[..., 1:2] * m + d2[..., 2:3] * n


class InternalCoordinateTransform:
    """Bijection between Cartesian positions and internal coordinates plus a rigid frame.

    Parameters
    ----------
    n_atoms : int
    bonds : sequence of (int, int)
        The molecule's bond graph (integer atom indices; floats and bools are refused); it must be connected.

    Attributes
    ----------
    roots : tuple of int
        ``(a0, a1, a2)``: frame atoms.
    zmatrix : numpy.ndarray, shape=(n_atoms - 3, 4)
        Rows ``(i, j, k, l)`` in placement order.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> ict = InternalCoordinateTransform.from_topology(ala2.topology)
    >>> x = torch.as_tensor(ala2.positions_nm)[None]
    >>> ic, origin, rotation = ict.to_internal(x)
    >>> [t.shape[-1] for t in ic]
    [21, 20, 19]
    >>> bool(torch.allclose(ict.to_cartesian(ic, origin, rotation), x, atol=1e-6))
    True
    """

    def __init__(self, n_atoms, bonds):
        if isinstance(n_atoms, (bool, np.bool_)) or not isinstance(n_atoms, (int, np.integer)):
            raise InvalidTypeError(f"n_atoms must be an integer, got {n_atoms!r}.")
        self.n_atoms = int(n_atoms)
        if self.n_atoms < 3:
            raise InvalidInputError(f"internal coordinates need at least 3 atoms, got {self.n_atoms}.")
        pairs = integer_array(bonds if hasattr(bonds, "dtype") else list(bonds), "bonds")  # floats refused, not truncated
        if pairs.size == 0:
            pairs = pairs.reshape(0, 2)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise InvalidInputError(f"bonds must be pairs of atom indices, shape (n_bonds, 2), got shape {pairs.shape}.")
        self.bond_graph = [tuple(sorted(map(int, b))) for b in pairs]
        self.roots, self.zmatrix = _build_zmatrix(self.n_atoms, self.bond_graph)

    @classmethod
    def from_topology(cls, topology):
        """Build from an OpenMM ``Topology`` or an mdtraj ``Topology`` (uses its bonds)."""
        bonds = [(a.index, b.index) for a, b in topology.bonds()]
        n_atoms = topology.getNumAtoms() if hasattr(topology, "getNumAtoms") else topology.n_atoms
        return cls(n_atoms, bonds)

    @property
    def n_bonds(self):
        return self.n_atoms - 1

    @property
    def n_angles(self):
        return self.n_atoms - 2

    @property
    def n_torsions(self):
        return self.n_atoms - 3

    @property
    def dim(self):
        """Number of internal degrees of freedom, 3N - 6."""
        return 3 * self.n_atoms - 6

    def to_internal(self, x):
        """Cartesian (B, N, 3) nm -> (InternalCoordinates, origin (B, 3), rotation (B, 3, 3)).

        Computed in float64; results have the input's dtype.
        """
        origin, rotation = self.frame(x.to(torch.float64))
        return self.internal_coordinates(x), origin.to(x.dtype), rotation.to(x.dtype)

    def internal_coordinates(self, x):
        """Cartesian (B, N, 3) nm -> InternalCoordinates, without the frame (computed in float64, returned in x's dtype)."""
        dtype = x.dtype
        x = x.to(torch.float64)
        a0, a1, a2 = self.roots
        i, j, k, l = (torch.as_tensor(self.zmatrix[:, c]) for c in range(4))
        bonds = torch.cat(
            (
                torch.linalg.norm(x[:, a1] - x[:, a0], dim=-1)[:, None],
                torch.linalg.norm(x[:, a2] - x[:, a0], dim=-1)[:, None],
                torch.linalg.norm(x[:, i] - x[:, j], dim=-1),
            ),
            dim=1,
        )
        angles = torch.cat((_angle(x[:, a1], x[:, a0], x[:, a2])[:, None], _angle(x[:, i], x[:, j], x[:, k])), dim=1)
        torsions = dihedral(x[:, l], x[:, k], x[:, j], x[:, i])
        return InternalCoordinates(bonds.to(dtype), angles.to(dtype), torsions.to(dtype))

    def frame(self, x):
        """Origin (position of ``a0``) and rotation matrix (columns e1, e2, e3) of the root frame."""
        a0, a1, a2 = self.roots
        e1 = _normalize(x[:, a1] - x[:, a0])
        v = x[:, a2] - x[:, a0]
        e2 = _normalize(v - (v * e1).sum(-1, keepdim=True) * e1)
        e3 = torch.linalg.cross(e1, e2, dim=-1)
        return x[:, a0], torch.stack((e1, e2, e3), dim=-1)

    def to_cartesian(self, ic, origin=None, rotation=None):
        """Internal coordinates -> Cartesian (B, N, 3) nm; default frame: ``a0`` at 0, ``a1`` on +x, ``a2`` in the xy plane."""
        bonds, angles, torsions = ic
        dtype = bonds.dtype
        bonds, angles, torsions = bonds.to(torch.float64), angles.to(torch.float64), torsions.to(torch.float64)
        batch = bonds.shape[0]
        a0, a1, a2 = self.roots
        positions = [None] * self.n_atoms
        zero = torch.zeros(batch, dtype=torch.float64, device=bonds.device)
        positions[a0] = torch.zeros(batch, 3, dtype=torch.float64, device=bonds.device)
        positions[a1] = torch.stack((bonds[:, 0], zero, zero), dim=-1)
        positions[a2] = torch.stack((bonds[:, 1] * torch.cos(angles[:, 0]), bonds[:, 1] * torch.sin(angles[:, 0]), zero), dim=-1)
        for row, (i, j, k, l) in enumerate(self.zmatrix):
            positions[i] = _place(positions[l], positions[k], positions[j], bonds[:, row + 2], angles[:, row + 1], torsions[:, row])
        x = torch.stack(positions, dim=1)
        if rotation is not None:
            x = x @ rotation.to(torch.float64).transpose(-1, -2)
        if origin is not None:
            x = x + origin.to(torch.float64)[:, None, :]
        return x.to(dtype)

    @staticmethod
    def log_det_jacobian(bonds, angles):
        """``log |dx / (dt dR d ic)|``: ``2 sum log b + sum log sin(theta)``, shape (B,)."""
        return 2.0 * torch.log(bonds).sum(-1) + torch.log(torch.sin(angles)).sum(-1)


def _build_zmatrix(n_atoms, bonds):
    neighbours = [[] for _ in range(n_atoms)]
    for a, b in bonds:
        if a == b or not (0 <= a < n_atoms and 0 <= b < n_atoms):
            raise InvalidInputError(f"bond ({a}, {b}) is not between two distinct atoms of {n_atoms}.")
        neighbours[a].append(b)
        neighbours[b].append(a)
    for n in neighbours:
        n.sort()

    def bfs_depths(start):
        depth = {start: 0}
        queue = deque([start])
        while queue:
            a = queue.popleft()
            for b in neighbours[a]:
                if b not in depth:
                    depth[b] = depth[a] + 1
                    queue.append(b)
        return depth

    if len(bfs_depths(0)) != n_atoms:
        raise InvalidInputError("the bond graph is not connected: internal coordinates need one molecule (add the missing bonds).")
    # Root: a graph centre with at least two neighbours (shortest dependency chains, most stable NeRF).
    candidates = [a for a in range(n_atoms) if len(neighbours[a]) >= 2]
    if not candidates:
        raise InvalidInputError("no atom has two bonded neighbours: cannot define a frame.")
    a0 = min(candidates, key=lambda a: (max(bfs_depths(a).values()), -len(neighbours[a]), a))
    a1, a2 = sorted(neighbours[a0], key=lambda a: -len(neighbours[a]))[:2]

    placed = {a0, a1, a2}
    parent = {a1: a0, a2: a0}
    order = []
    queue = deque([a1, a2, a0])
    visited = set(placed)
    while queue:
        a = queue.popleft()
        for b in neighbours[a]:
            if b not in visited:
                visited.add(b)
                parent[b] = a
                order.append(b)
                queue.append(b)
    rows = []
    for i in order:
        j = parent[i]
        k = parent.get(j) if j != a0 else None
        if k is None or k not in placed:
            k = next(n for n in [a1, a2] + neighbours[j] if n in placed and n not in (i, j))
        # Prefer an already placed sibling (another neighbour of j) as the torsion reference: the torsion
        # i-j-k-sibling is then nearly constant (e.g. +-120 degrees within a methyl group) instead of
        # strongly correlated with the sibling's own torsion, which makes densities far easier to learn.
        l_candidates = [n for n in (neighbours[j] + [parent.get(k)] + neighbours[k] + [a0, a1, a2]) if n is not None]
        l = next(n for n in l_candidates if n in placed and n not in (i, j, k))
        rows.append((i, j, k, l))
        placed.add(i)
    return (a0, a1, a2), np.asarray(rows, dtype=np.int64).reshape(-1, 4)
