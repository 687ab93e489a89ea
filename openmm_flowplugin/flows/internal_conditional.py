"""A conditional proposal on internal coordinates: bonds and angles stay near their lengths, torsions jump.

Cartesian conditional flows propose displacements of every atom; on alanine dipeptide they stretch bonds
by 0.01-0.05 nm and the energy rejects everything (docs/timewarp.md). Here the proposal lives on the
molecule's internal coordinates (``geometry.internal``: bonds, angles, torsions from its bond graph):

    ic' = ic + mu_theta(ic) + sigma_theta(ic) * eps,   eps ~ N(0, I),

torsions wrapped to [-pi, pi) (a wrapped normal, its density summed over the images k = -4..4, exact in
float64 for sigma <= 2 rad, the cap), and the rigid frame of the root atoms (origin and rotation) kept.
mu_theta and log sigma_theta are an MLP of (bonds, angles, sin/cos torsions), trained by likelihood on MD
pairs like the other conditional flows; there are no auxiliary velocities.

Exactness. With the frame kept, the chain moves on the set of configurations with the current frame;
there dx = J(ic) d(frame) d(ic) with J = prod b^2 prod sin(theta) (``InternalCoordinateTransform``), so
the Metropolis-Hastings ratio of the Boltzmann density on that set is

    exp(-u(x') + u(x)) * J(ic') / J(ic) * p(ic | ic') / p(ic' | ic),

and ``propose`` returns the log of everything but the energies as the Hastings term. The energy of a
molecule in vacuum or implicit solvent does not depend on the frame, so internal coordinates keep their
exact Boltzmann distribution (as for ``ConditionalFlow``, which keeps the centre; combine with MD where
external forces act on the frame). Proposals outside the domain (a bond <= 0, an angle outside (0, pi))
get a Hastings term of -inf: rejections, counted as invalid by the moves.
"""

__all__ = ["InternalCoordinateProposal"]

import math

import numpy as np
import torch
from torch import nn

from .._threads import package_threads
from ..errors import InvalidInputError
from ..geometry.internal import InternalCoordinates, InternalCoordinateTransform
from .conditional import _mlp, system_metadata

_MAX_TORSION_SCALE = 2.0  # rad: wrapped-normal images beyond |k| = 4 are below float64 resolution
_IMAGES = torch.arange(-4, 5, dtype=torch.float64) * 2.0 * math.pi
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _wrap(angle):
    return torch.remainder(angle + math.pi, 2.0 * math.pi) - math.pi


class InternalCoordinateProposal(nn.Module):
    """Conditional Gaussian ``p(ic' | ic)`` on a molecule's internal coordinates, the root frame kept.

    Parameters
    ----------
    n_atoms : int
    bonds : sequence of (int, int)
        The bond graph (connected), e.g. from the topology (:meth:`for_system`).
    hidden : sequence of int, optional
        Hidden widths of the MLP giving the mean step and log scale of every coordinate (default (128, 128)).
    initial_scales : tuple of float, optional
        Initial step scales of bonds (nm), angles and torsions (rad); learned (default 0.003, 0.05, 0.3).
    moves : {"all", "torsions"}, optional
        ``"all"`` (default) proposes new bonds, angles and torsions; ``"torsions"`` keeps bonds and angles
        (a block update, exact but not ergodic alone: use it beside MD).
    metadata : dict, optional
        Plain data stored with checkpoints.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> proposal = InternalCoordinateProposal.for_system(ala2, hidden=(16,))
    >>> x_new, log_h = proposal.propose(ala2.positions_nm, 4, generator=torch.Generator().manual_seed(0))
    >>> x_new.shape, log_h.shape
    ((4, 22, 3), (4,))
    """

    rigid_invariant = False
    respects_constraints = False
    #: No auxiliary velocities: training draws empty ones.
    dim = 0

    def __init__(self, n_atoms, bonds, hidden=(128, 128), initial_scales=(0.003, 0.05, 0.3), moves="all", metadata=None,
                 dtype=torch.float64):
        super().__init__()
        if moves not in ("all", "torsions"):
            raise InvalidInputError(f"moves must be 'all' or 'torsions', got {moves!r}.")
        if len(initial_scales) != 3 or not all(s > 0 for s in initial_scales):
            raise InvalidInputError(f"initial_scales must be three positive numbers (bonds nm, angles rad, torsions rad), got {initial_scales!r}.")
        if not initial_scales[2] < _MAX_TORSION_SCALE:
            raise InvalidInputError(f"the torsion scale must stay below {_MAX_TORSION_SCALE} rad, got {initial_scales[2]!r}.")
        self.transform = InternalCoordinateTransform(n_atoms, bonds)
        self.config = dict(architecture="internal", n_atoms=int(n_atoms), bonds=[list(b) for b in self.transform.bond_graph],
                           hidden=[int(h) for h in hidden], initial_scales=[float(s) for s in initial_scales], moves=moves)
        self.metadata = dict(metadata or {})
        t = self.transform
        self.sizes = (t.n_bonds, t.n_angles, t.n_torsions)
        self.net = _mlp(t.n_bonds + t.n_angles + 2 * t.n_torsions, list(hidden), 2 * t.dim)
        initial = torch.cat([torch.full((n,), math.log(s), dtype=torch.float64) for n, s in zip(self.sizes, initial_scales)])
        self.log_scale = nn.Parameter(initial)
        self.to(dtype)

    @classmethod
    def for_system(cls, molecular_system, **kwargs):
        """A proposal for a :class:`~openmm_flowplugin.systems.MolecularSystem` (bonds from its topology)."""
        metadata = dict(system_metadata(molecular_system), **kwargs.pop("metadata", {}))
        bonds = [(a.index, b.index) for a, b in molecular_system.topology.bonds()]
        return cls(molecular_system.n_atoms, bonds, metadata=metadata, **kwargs)

    @property
    def n_atoms(self):
        return self.config["n_atoms"]

    @property
    def fingerprint(self):
        return self.metadata.get("fingerprint")

    # ------------------------------------------------------------------ the conditional density
    def _positions(self, x):
        x = torch.as_tensor(x).to(self.log_scale)
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise InvalidInputError(f"positions must have shape (n, {self.n_atoms}, 3) in nm, got {tuple(x.shape)}.")
        return x

    def _step(self, ic):
        """Mean step and log scale (b, 3N-6) of the proposal from internal coordinates ``ic``."""
        bonds, angles, torsions = ic
        features = torch.cat([10.0 * bonds, angles, torch.sin(torsions), torch.cos(torsions)], -1)
        mean, raw = self.net(features).chunk(2, -1)
        log_scale = self.log_scale + 3.0 * torch.tanh(raw / 3.0)
        n_t = self.sizes[2]
        capped = math.log(_MAX_TORSION_SCALE) - nn.functional.softplus(math.log(_MAX_TORSION_SCALE) - log_scale[:, -n_t:])
        return mean, torch.cat([log_scale[:, :-n_t], capped], -1) if n_t else log_scale

    def internal_log_prob(self, ic_new, ic, step=None):
        """``log p(ic' | ic)`` (b,), float64: normal in bonds and angles, wrapped normal in torsions.

        ``step``: ``_step(ic)`` if the caller has it already (a proposal's forward density).
        """
        mean, log_scale = self._step(ic) if step is None else step
        delta = torch.cat(list(ic_new), -1) - torch.cat(list(ic), -1) - mean
        z = delta / log_scale.exp()
        n_t = self.sizes[2]
        log_p = torch.zeros(len(delta), dtype=delta.dtype, device=delta.device)
        if self.config["moves"] == "all":
            log_p = log_p + (-0.5 * z[:, : z.shape[1] - n_t].square() - log_scale[:, : z.shape[1] - n_t] - _LOG_SQRT_2PI).sum(-1)
        if n_t:
            scale_t = log_scale[:, -n_t:].exp()
            shifted = (_wrap(delta[:, -n_t:])[..., None] + _IMAGES.to(delta)) / scale_t[..., None]
            wrapped = torch.logsumexp(-0.5 * shifted.square(), -1) - log_scale[:, -n_t:] - _LOG_SQRT_2PI
            log_p = log_p + wrapped.sum(-1)
        return log_p.to(torch.float64)

    def log_prob(self, x_new, v_new, x, v=None):
        """``log p(x' | x)`` on the set of configurations with the frame of ``x``: ``log p(ic' | ic) - log J(ic')`` (b,).

        ``v_new`` and ``v`` (auxiliary velocities) are ignored: there are none (``dim = 0``).
        """
        x_new, x = self._positions(x_new), self._positions(x)
        ic_new, _, _ = self.transform.to_internal(x_new)
        ic, _, _ = self.transform.to_internal(x)
        return self.internal_log_prob(ic_new, ic) - self.transform.log_det_jacobian(ic_new.bonds, ic_new.angles).to(torch.float64)

    def _draw(self, ic, generator, step):
        """``ic'`` for each row of ``ic`` given its ``step = _step(ic)`` (broadcast over rows)."""
        mean, log_scale = step
        flat = torch.cat(list(ic), -1)
        eps = torch.randn(flat.shape, generator=generator, dtype=torch.float64).to(flat)
        new = flat + mean + log_scale.exp() * eps
        n_b, n_a, n_t = self.sizes
        if self.config["moves"] == "torsions":
            new = torch.cat([flat[:, : n_b + n_a], new[:, n_b + n_a :]], -1)
        bonds, angles, torsions = new[:, :n_b], new[:, n_b : n_b + n_a], _wrap(new[:, n_b + n_a :])
        return InternalCoordinates(bonds, angles, torsions)

    def sample(self, x, v=None, generator=None):
        """One draw ``x' ~ p(. | x)`` per row (frame kept): x' (b, n_atoms, 3) nm, empty velocities (b, 0), ``log p(x' | x)``."""
        x = self._positions(x)
        ic, origin, rotation = self.transform.to_internal(x)
        step = self._step(ic)
        ic_new = self._draw(ic, generator, step)
        x_new = self.transform.to_cartesian(ic_new, origin, rotation)
        log_p = self.internal_log_prob(ic_new, ic, step) - self.transform.log_det_jacobian(ic_new.bonds, ic_new.angles).to(torch.float64)
        return x_new, x_new.new_zeros(len(x), 0), log_p

    def propose(self, x, n, generator=None):
        """``n`` proposals from positions ``x`` (n_atoms, 3) nm and their log Hastings terms (numpy, float64)."""
        with torch.no_grad(), package_threads():
            x = self._positions(torch.as_tensor(np.asarray(x, dtype=np.float64))[None])
            ic, origin, rotation = self.transform.to_internal(x)
            step = tuple(part.expand(int(n), -1) for part in self._step(ic))  # one state: its step once, for all n
            ic = InternalCoordinates(*(part.expand(int(n), -1) for part in ic))
            ic_new = self._draw(ic, generator, step)
            x_new = self.transform.to_cartesian(ic_new, origin.expand(int(n), -1), rotation.expand(int(n), -1, -1))
            log_jacobian = self.transform.log_det_jacobian
            log_hastings = (self.internal_log_prob(ic, ic_new) - self.internal_log_prob(ic_new, ic, step)
                            + log_jacobian(ic_new.bonds, ic_new.angles) - log_jacobian(ic.bonds, ic.angles)).to(torch.float64)
            valid = (ic_new.bonds > 0).all(-1) & (ic_new.angles > 0).all(-1) & (ic_new.angles < math.pi).all(-1)
            log_hastings = torch.where(valid, log_hastings, torch.full_like(log_hastings, -math.inf))
        return x_new.to(torch.float64).numpy(), log_hastings.numpy()
