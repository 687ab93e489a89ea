"""The spaces a diffusion sampler can run in: Cartesian coordinates, or standardized internal coordinates.

A space maps the sampler's variables z (batch, d) to positions (batch, n_atoms, 3) in nm and gives the
log volume factor, so that the sampler's target in z, π_z(z) ∝ π(x(z)) · J(z), J the volume factor of x(z), has the Boltzmann
distribution as its image. Weights computed in z are then exact for positions.

:class:`InternalCoordinateSpace` is made for molecules: z are bond lengths, angles and torsions of
the package's Z-matrix (:class:`~openmm_flowplugin.geometry.InternalCoordinateTransform`), each
standardized by its mean and spread in reference configurations (e.g. a short MD run), so one noise
scale suits stiff bonds and floppy torsions. The rigid motions are left out (the target is the
rotation- and translation-invariant density; positions come out in the Z-matrix's standard frame).
Torsions are periodic but z is a real line: the target on z extends each torsion's density to the
line with image weights g(τ̃) = N(τ̃ − μ; 0, w²) / Σ_n N(τ̃ − μ + 2πn; 0, w²), which sum to one over the
images of each angle, so the wrapped torsions follow the Boltzmann distribution exactly.

Examples
--------
>>> import torch
>>> from openmm_flowplugin import systems
>>> ala2 = systems.get("alanine_dipeptide_vacuum")
>>> space = InternalCoordinateSpace.from_positions(ala2.topology, ala2.positions_nm[None].repeat(4, 0) + 0.001 * torch.randn(4, 22, 3).numpy())
>>> space.dimension
60
>>> x, log_volume = space.to_positions(torch.zeros(2, 60, dtype=torch.float64))
>>> x.shape, log_volume.shape
(torch.Size([2, 22, 3]), torch.Size([2]))
"""

__all__ = ["CartesianSpace", "InternalCoordinateSpace", "rotor_torsions", "why_not_a_rotor"]

import math
import operator

import numpy as np
import torch

from ..errors import InvalidInputError
from ..geometry import InternalCoordinateTransform
from ..geometry.internal import InternalCoordinates

_N_IMAGES = 3  # images on each side: with w <= pi the neglected terms are below exp(-(2*pi*4)^2 / (2 pi^2)) ~ 1e-14


def rotor_torsions(transform, rotors):
    """Indices of the Z-matrix torsions that turn the molecule about the central bond of any of ``rotors``.

    A Z-matrix row (a, b, c, d) places atom a by a torsion about the bond b–c; it is a proper torsion
    (a rotation about that bond) when d is bonded to c, and a relative one (a second substituent of b
    placed against the first, a stiff improper-like angle) when d is bonded to b.

    Raises
    ------
    InvalidInputError
        For a rotor whose central atoms are not bonded, or bonded within a ring (a ring bond does not
        rotate; widening its torsion would strain the ring): :func:`why_not_a_rotor` says which.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> transform = InternalCoordinateTransform.from_topology(ala2.topology)
    >>> [transform.zmatrix[i].tolist() for i in rotor_torsions(transform, [(4, 6, 8, 14), (6, 8, 14, 16)])]
    [[4, 6, 8, 10], [15, 14, 8, 6]]
    """
    bonds = _bonds(transform)
    axes = set()
    for rotor in rotors:
        reason = why_not_a_rotor(transform, rotor)
        if reason:
            raise InvalidInputError(f"the rotor {tuple(rotor)!r} {reason}.")
        axes.add(frozenset(operator.index(a) for a in tuple(rotor)[1:3]))
    rows = np.asarray(transform.zmatrix).tolist()  # one row per torsion, in the transform's torsion order
    return [i for i, (a, b, c, d) in enumerate(rows) if frozenset((b, c)) in axes and frozenset((c, d)) in bonds]


def why_not_a_rotor(transform, torsion):
    """Why the torsion (four atom indices) turns about no free bond, or ``None`` if it does."""
    try:
        atoms = [operator.index(a) for a in torsion]
    except TypeError:
        atoms = []
    if len(atoms) != 4 or max(atoms) >= transform.n_atoms or min(atoms) < 0:
        return f"is not four atom indices in 0..{transform.n_atoms - 1}"
    bonds, (b, c) = _bonds(transform), atoms[1:3]
    if frozenset((b, c)) not in bonds:
        return f"turns about atoms {b}-{c}, which are not bonded"
    neighbours = {}
    for bond in bonds:
        i, j = tuple(bond)
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    seen, frontier = {b}, [b]
    while frontier:  # is c reachable from b without the bond b-c?
        atom = frontier.pop()
        for other in neighbours[atom]:
            if {atom, other} != {b, c} and other not in seen:
                seen.add(other)
                frontier.append(other)
    return f"turns about the bond {b}-{c}, which is in a ring" if c in seen else None


def checked_rotor_scale(rotor_scale):
    """``rotor_scale`` as a float in (0, π] rad, or an InvalidInputError naming the range."""
    if isinstance(rotor_scale, bool) or not isinstance(rotor_scale, (int, float, np.integer, np.floating)) or not 0 < rotor_scale <= math.pi:
        raise InvalidInputError(f"rotor_scale must be in (0, pi] rad, got {rotor_scale!r}.")
    return float(rotor_scale)


def _bonds(transform):
    return {frozenset(map(int, bond)) for bond in transform.bond_graph}


class CartesianSpace:
    """z = flattened Cartesian positions (nm); no volume factor."""

    kind = "cartesian"

    def __init__(self, n_atoms):
        self.n_atoms = int(n_atoms)
        self.dimension = 3 * self.n_atoms

    def to_positions(self, z, image_weights=True):
        """Positions (batch, n_atoms, 3) and the log volume factor (zeros; no torsions, so ``image_weights`` changes nothing)."""
        return z.reshape(len(z), self.n_atoms, 3), torch.zeros(len(z), dtype=z.dtype, device=z.device)

    def describe(self):
        """Plain-data description (checkpoints compare it on resume)."""
        return dict(kind=self.kind, n_atoms=self.n_atoms)


class InternalCoordinateSpace:
    """Standardized bonds, angles and torsions of a molecule (dimension 3N − 6).

    Parameters
    ----------
    transform : InternalCoordinateTransform
    mean, scale : array_like, shape=(3N − 6,)
        Per-coordinate centre and spread (bonds nm, angles and torsions rad), bonds first, then angles,
        then torsions, in the transform's order.
    image_width : float
        w of the torsion image weights (rad); at most π.
    """

    kind = "internal"

    def __init__(self, transform, mean, scale, image_width=math.pi, rotors=(), rotor_scale=None):
        self.transform = transform
        self.n_atoms = transform.n_atoms
        self.dimension = transform.dim
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float64))
        if self.mean.shape != (self.dimension,) or self.scale.shape != (self.dimension,) or not torch.all(self.scale > 0):
            raise InvalidInputError(f"mean and scale need {self.dimension} entries, scale > 0.")
        if not 0 < image_width <= math.pi:
            raise InvalidInputError(f"image_width must be in (0, pi], got {image_width!r}.")
        self.image_width = float(image_width)
        self.rotors = [tuple(int(a) for a in rotor) for rotor in rotors]  # a record: from_positions applied them to scale
        self.rotor_scale = None if rotor_scale is None else float(rotor_scale)
        self._splits = (transform.n_bonds, transform.n_angles, transform.n_torsions)

    @classmethod
    def from_positions(cls, topology, positions, min_scale=(1e-3, 1e-2, 1e-2), rotors=(), rotor_scale=1.0):
        """Standardize with the mean and spread of reference configurations (circular statistics for torsions).

        Parameters
        ----------
        topology : openmm.app.Topology or mdtraj.Topology
            Its bonds define the Z-matrix.
        positions : array_like, shape=(n, n_atoms, 3)
            nm; at least two configurations.
        min_scale : tuple of float
            Lower bounds of the spreads of bonds (nm), angles and torsions (rad).
        rotors : sequence of (int, int, int, int)
            Torsions (0-based atom indices, e.g. the CVs of a bias) whose rotation the sampler must
            reach beyond the reference run's basin: the Z-matrix's proper torsions about the same bonds
            get a spread of at least ``rotor_scale``. A short MD run sees one rotamer (alanine
            dipeptide's φ spreads 0.23 rad in C7eq), and standardizing by that spread puts the other
            basins ten noise scales away (C7ax, 2.6 rad): measured on alanine dipeptide at 200,000
            evaluations, ΔF(C7eq → C7ax) came out 22.4 kJ/mol without and 15.3 with ``rotor_scale`` 1 rad
            (reference 11.7; ``benchmarks/bench_diffusion_alanine.py``).
        rotor_scale : float
            rad.

        Raises
        ------
        InvalidInputError
            For a rotor about atoms that are not bonded or about a ring bond (:func:`why_not_a_rotor`).
        """
        transform = InternalCoordinateTransform.from_topology(topology)
        x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        if x.ndim != 3 or len(x) < 2 or x.shape[1:] != (transform.n_atoms, 3):
            raise InvalidInputError(f"need reference positions of shape (n >= 2, {transform.n_atoms}, 3), got {tuple(x.shape)}.")
        ic, _, _ = transform.to_internal(x)
        means, scales = [], []
        for values, floor in ((ic.bonds, min_scale[0]), (ic.angles, min_scale[1])):
            means.append(values.mean(0))
            scales.append(torch.clamp(values.std(0), min=floor))
        sin, cos = torch.sin(ic.torsions).mean(0), torch.cos(ic.torsions).mean(0)
        means.append(torch.atan2(sin, cos))
        resultant = torch.clamp(torch.sqrt(sin**2 + cos**2), min=1e-12, max=1.0)
        torsion_scales = torch.clamp(torch.sqrt(-2.0 * torch.log(resultant)), min=min_scale[2], max=math.pi)
        widened = torch.as_tensor(rotor_torsions(transform, rotors), dtype=torch.long)
        if len(widened):
            torsion_scales[widened] = torch.clamp(torsion_scales[widened], min=checked_rotor_scale(rotor_scale))
        scales.append(torsion_scales)
        return cls(transform, torch.cat(means).numpy(), torch.cat(scales).numpy(), rotors=rotors if len(widened) else (),
                   rotor_scale=rotor_scale if len(widened) else None)

    def _unstandardize(self, z):
        q = self.mean.to(z) + self.scale.to(z) * z
        bonds, angles, torsions = torch.split(q, self._splits, dim=-1)
        return bonds, angles, torsions

    def to_positions(self, z, image_weights=True):
        """Positions (batch, n_atoms, 3) in the standard frame and log of the target's volume factor, differentiable.

        The factor is the Z-matrix volume element (bonds² and sin(angle)) · ∏ scale · ∏ g(torsion images)
        (without the g for ``image_weights=False``: the density of positions whose torsions are taken on their
        principal range). Bonds ≤ 0 or angles outside (0, π) give NaN positions (the energy bridge scores
        them +inf: weight 0).
        """
        bonds, angles, torsions = self._unstandardize(z)
        valid = (bonds > 0).all(-1) & (angles > 0).all(-1) & (angles < math.pi).all(-1)
        safe_bonds = torch.where(valid[:, None], bonds, torch.ones_like(bonds))
        safe_angles = torch.where(valid[:, None], angles, torch.full_like(angles, 0.5 * math.pi))
        x = self.transform.to_cartesian(InternalCoordinates(safe_bonds, safe_angles, torsions))
        x = torch.where(valid[:, None, None], x, torch.full_like(x, float("nan")))
        log_volume = InternalCoordinateTransform.log_det_jacobian(safe_bonds, safe_angles) + torch.log(self.scale.to(z)).sum()
        if image_weights:
            log_volume = log_volume + self._log_image_weights(torsions)
        return x, log_volume

    def _log_image_weights(self, torsions):
        return self.log_image_weight_terms(torsions).sum(-1)

    def log_image_weight_terms(self, torsions):
        """log g of each torsion (batch, n_torsions): over the images τ + 2πn of one angle the g sum to one."""
        n_b, n_a, _ = self._splits
        offset = torsions - self.mean[n_b + n_a:].to(torsions)
        shifts = 2.0 * math.pi * torch.arange(-_N_IMAGES, _N_IMAGES + 1, dtype=torsions.dtype, device=torsions.device)
        log_terms = -0.5 * ((offset[..., None] + shifts) / self.image_width) ** 2
        return -0.5 * (offset / self.image_width) ** 2 - torch.logsumexp(log_terms, -1)

    def from_positions_to_z(self, x):
        """z of positions (batch, n_atoms, 3), torsions on their principal branch around the mean."""
        ic, _, _ = self.transform.to_internal(torch.as_tensor(x, dtype=torch.float64))
        n_b, n_a, _ = self._splits
        torsions = ic.torsions
        mean_t = self.mean[n_b + n_a:]
        torsions = mean_t + torch.remainder(torsions - mean_t + math.pi, 2 * math.pi) - math.pi
        q = torch.cat([ic.bonds, ic.angles, torsions], -1)
        return (q - self.mean) / self.scale

    def describe(self):
        """Plain-data description (checkpoints compare it on resume)."""
        # the rotors are not listed: their widening is in scale, and the order of the CVs should not matter
        return dict(kind=self.kind, n_atoms=self.n_atoms, bonds=[list(b) for b in self.transform.bond_graph],
                    mean=self.mean.tolist(), scale=self.scale.tolist(), image_width=self.image_width)
