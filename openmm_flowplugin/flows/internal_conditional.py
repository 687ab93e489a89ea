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

Jumps between basins. With ``moves="torsions"``, ``torsions=`` restricts the move to the Z-matrix torsions
that rotate about the central bonds of given dihedrals (e.g. a peptide's phi and psi): each rotates the
atoms on one side of its bond rigidly. ``components=K > 1`` makes the torsion density a mixture of K
wrapped normals whose weights, centres (absolute angles, not steps) and widths are functions of everything
the move keeps (bonds, angles, the other torsions), not of the moved torsions' current values: a learned
Gibbs-like block proposal q(t | rest) that jumps between basins. As the rest is the same before and after
the move, one evaluation gives both densities, and the Hastings term is q(t | rest) / q(t' | rest), exact.
With ``moves="all"`` the mixture conditions on all of ic.
"""

__all__ = ["InternalCoordinateProposal"]

import math
import warnings

import numpy as np
import torch
from torch import nn

from .._threads import package_threads
from ..errors import InvalidInputError
from ..geometry.internal import InternalCoordinates, InternalCoordinateTransform
from ._numpy_internal import NumpyTorsionMixture
from ._numpy_log_prob import cached_snapshot
from .conditional import _mlp, system_metadata

_MAX_TORSION_SCALE = 2.0  # rad: wrapped-normal images beyond |k| = 4 are below float64 resolution
_IMAGES = torch.arange(-4, 5, dtype=torch.float64) * 2.0 * math.pi
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _wrap(angle):
    return torch.remainder(angle + math.pi, 2.0 * math.pi) - math.pi


def _wrapped_normal_log_prob(delta, log_scale):
    """Elementwise log density of a wrapped normal of log width ``log_scale`` at angular distance ``delta``."""
    shifted = (_wrap(delta)[..., None] + _IMAGES.to(delta)) / log_scale.exp()[..., None]
    return torch.logsumexp(-0.5 * shifted.square(), -1) - log_scale - _LOG_SQRT_2PI


def _cap_torsion_scale(log_scale):
    return math.log(_MAX_TORSION_SCALE) - nn.functional.softplus(math.log(_MAX_TORSION_SCALE) - log_scale)


def _rotated_atoms(zmatrix, r):
    """The atoms placed from row ``r``'s atom: ``i`` and every later atom that refers to one of them."""
    moved = {zmatrix[r][0]}
    for i, *references in zmatrix[r + 1:]:
        if moved.intersection(references):
            moved.add(i)
    return moved


def _rigid_rotations(transform, rows):
    """``[(j, k, atoms), ...]`` if changing each row's torsion only rotates its atoms rigidly about the bond j-k, else None.

    That holds when every atom placed from the row's atom refers only to atoms that rotate with it or lie on the
    bond: then the rotation keeps every other internal coordinate, and rotating is the same as rebuilding the
    Cartesian positions from the changed torsions (NeRF), only much cheaper.
    """
    zmatrix = [tuple(int(a) for a in row) for row in transform.zmatrix]
    rotations = []
    for r in rows:
        i, j, k, _ = zmatrix[r]
        moved = _rotated_atoms(zmatrix, r)
        for m, *references in zmatrix[r + 1:]:
            if m in moved and not set(references) <= moved | {j, k}:
                return None
        rotations.append((j, k, torch.as_tensor(sorted(moved), dtype=torch.long)))
    return rotations


def _rotate(x, j, k, atoms, angle):
    """Rotate ``atoms`` of ``x`` (b, n, 3) about the bond axis from ``k`` to ``j`` by ``angle`` (b,), Rodrigues' formula."""
    axis = x[:, j] - x[:, k]
    axis = (axis / torch.linalg.norm(axis, dim=-1, keepdim=True))[:, None]
    v = x[:, atoms] - x[:, j, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    rotated = v * cos + torch.linalg.cross(axis.expand_as(v), v, dim=-1) * sin + axis * (axis * v).sum(-1, keepdim=True) * (1.0 - cos)
    x = x.clone()
    x[:, atoms] = x[:, j, None] + rotated
    return x


def _rotating_rows(transform, dihedrals):
    """Z-matrix rows whose torsions rotate the given dihedrals (a, b, c, d) about their central bonds b-c.

    A row ``(i, j, k, l)`` with ``{j, k} = {b, c}`` and ``l`` not bonded to ``j`` (not a sibling-relative
    torsion) rotates ``i`` and every atom placed from it rigidly about the bond; it changes the dihedral
    when exactly one of ``a`` and ``d`` is among those atoms.
    """
    bonded = set(transform.bond_graph)
    zmatrix = [tuple(int(a) for a in row) for row in transform.zmatrix]
    rows = []
    for dihedral in dihedrals:
        atoms = tuple(int(a) for a in dihedral)
        if len(atoms) != 4 or not all(0 <= a < transform.n_atoms for a in atoms):
            raise InvalidInputError(f"torsions must be quadruples of atom indices below {transform.n_atoms}, got {tuple(dihedral)!r}.")
        a, b, c, d = atoms
        if tuple(sorted((b, c))) not in bonded:
            raise InvalidInputError(f"dihedral {atoms}: atoms {b} and {c} are not bonded, so there is no bond to rotate about.")
        for r, (i, j, k, l) in enumerate(zmatrix):
            if {j, k} != {b, c} or tuple(sorted((j, l))) in bonded:
                continue
            moved = _rotated_atoms(zmatrix, r)
            if (a in moved) != (d in moved):
                rows.append(r)
                break
        else:
            raise InvalidInputError(f"dihedral {atoms}: no torsion of the Z-matrix rotates it about the bond {b}-{c} (a terminal or "
                                    "ring atom, or the frame's root atoms); choose another dihedral about a rotatable bond.")
    if len(set(rows)) != len(rows):
        raise InvalidInputError(f"torsions {[tuple(t) for t in dihedrals]} name the same bond twice.")
    return rows


def _expand(step, n):
    """The parameters of one state's proposal (:meth:`InternalCoordinateProposal._step`) broadcast to ``n`` rows."""
    return tuple(None if part is None else tuple(p.expand(n, *p.shape[1:]) for p in part) if isinstance(part, tuple)
                 else part.expand(n, -1) for part in step)


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
    torsions : sequence of (int, int, int, int), optional
        With ``moves="torsions"``: move only the torsions that rotate these dihedrals about their central
        bonds (e.g. phi and psi); the others are kept too. Default: all torsions.
    components : int, optional
        1 (default): a wrapped normal step for each torsion. K > 1: a mixture of K wrapped normals over the
        moved torsions with absolute centres, able to jump between basins; with ``moves="torsions"`` it
        conditions only on the coordinates the move keeps.
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

    Jumps of phi and psi only, between learned basins:

    >>> jumps = InternalCoordinateProposal.for_system(ala2, hidden=(16,), moves="torsions",
    ...                                               torsions=[(4, 6, 8, 14), (6, 8, 14, 16)], components=8)
    >>> jumps.propose(ala2.positions_nm, 4, generator=torch.Generator().manual_seed(0))[0].shape
    (4, 22, 3)
    """

    rigid_invariant = False
    respects_constraints = False
    #: No auxiliary velocities: training draws empty ones.
    dim = 0

    def __init__(self, n_atoms, bonds, hidden=(128, 128), initial_scales=(0.003, 0.05, 0.3), moves="all", torsions=None, components=1,
                 metadata=None, dtype=torch.float64):
        super().__init__()
        if moves not in ("all", "torsions"):
            raise InvalidInputError(f"moves must be 'all' or 'torsions', got {moves!r}.")
        if len(initial_scales) != 3 or not all(s > 0 for s in initial_scales):
            raise InvalidInputError(f"initial_scales must be three positive numbers (bonds nm, angles rad, torsions rad), got {initial_scales!r}.")
        if not initial_scales[2] < _MAX_TORSION_SCALE:
            raise InvalidInputError(f"the torsion scale must stay below {_MAX_TORSION_SCALE} rad, got {initial_scales[2]!r}.")
        if torsions is not None and moves != "torsions":
            raise InvalidInputError("torsions= selects which torsions move with moves='torsions'; with moves='all' every coordinate moves.")
        if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or components < 1:
            raise InvalidInputError(f"components must be a positive integer (1: one wrapped normal step), got {components!r}.")
        self.transform = InternalCoordinateTransform(n_atoms, bonds)
        rows = range(self.transform.n_torsions) if torsions is None else _rotating_rows(self.transform, torsions)
        self.config = dict(architecture="internal", n_atoms=int(n_atoms), bonds=[list(b) for b in self.transform.bond_graph],
                           hidden=[int(h) for h in hidden], initial_scales=[float(s) for s in initial_scales], moves=moves,
                           torsions=None if torsions is None else [[int(a) for a in t] for t in torsions], components=int(components))
        self.metadata = dict(metadata or {})
        t = self.transform
        self.sizes = (t.n_bonds, t.n_angles, t.n_torsions)
        self.register_buffer("moved", torch.as_tensor(list(rows), dtype=torch.long), persistent=False)
        self._rotations = _rigid_rotations(self.transform, rows) if moves == "torsions" else None
        if torsions is not None and self._rotations is None:
            warnings.warn("some of these torsions do not turn their atoms rigidly (e.g. in a ring): the molecule is rebuilt from its "
                          "internal coordinates, which stretches ring-closing bonds; exact, but such moves are mostly rejected.",
                          stacklevel=2)
        # a torsion-only mixture conditions on what the move keeps, so p(. | ic) = p(. | ic'): one evaluation serves both directions
        self._mixture_is_blind = moves == "torsions" and components > 1
        n_features = t.n_bonds + t.n_angles + 2 * t.n_torsions
        kept = torch.ones(t.n_torsions, dtype=torch.bool)
        kept[self.moved] = False
        self.register_buffer("kept_torsions", kept, persistent=False)
        visible = torch.ones(n_features, dtype=torch.float64)  # the mixture's input mask: the moved torsions' sin/cos hidden if blind
        if self._mixture_is_blind:
            visible[t.n_bonds + t.n_angles + self.moved] = 0.0
            visible[t.n_bonds + t.n_angles + t.n_torsions + self.moved] = 0.0
        self.register_buffer("mixture_inputs", visible, persistent=False)
        # the Gaussian steps; unused (not built) when a torsion-only mixture moves everything that moves
        self.net = _mlp(n_features, list(hidden), 2 * t.dim) if moves == "all" or components == 1 else None
        initial = torch.cat([torch.full((n,), math.log(s), dtype=torch.float64) for n, s in zip(self.sizes, initial_scales)])
        self.log_scale = nn.Parameter(initial)
        if components > 1:
            k, n = int(components), len(self.moved)
            self.mixture_net = _mlp(n_features, list(hidden), k + 3 * k * n)
            with torch.no_grad():  # start with equal weights and centres spread over the circle, the same for every state
                centres = 2.0 * math.pi * torch.rand(k, n, dtype=torch.float64) - math.pi
                self.mixture_net[-1].bias[k : k + 2 * k * n] = torch.stack((torch.sin(centres), torch.cos(centres)), -1).flatten()
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
        """The proposal's parameters at internal coordinates ``ic``: mean step and log scale (b, 3N-6), and the mixture.

        The mixture is None for one component, else log weights (b, K), centres (b, K, n) and log scales (b, K, n) of the
        n moved torsions; the step is None when the mixture moves everything that moves (torsions only).
        """
        bonds, angles, torsions = ic
        features = torch.cat([10.0 * bonds, angles, torch.sin(torsions), torch.cos(torsions)], -1)
        mean = log_scale = None
        if self.config["moves"] == "all" or self.config["components"] == 1:  # else the mixture alone moves anything
            mean, raw = self.net(features).chunk(2, -1)
            log_scale = self.log_scale + 3.0 * torch.tanh(raw / 3.0)
            n_t = self.sizes[2]
            log_scale = torch.cat([log_scale[:, :-n_t], _cap_torsion_scale(log_scale[:, -n_t:])], -1) if n_t else log_scale
        if self.config["components"] == 1:
            return mean, log_scale, None
        k, n = self.config["components"], len(self.moved)
        # blind (torsion moves): a density over the moved torsions given everything else, not their current values
        logits, sin_cos, raw = self.mixture_net(features * self.mixture_inputs).split([k, 2 * k * n, k * n], -1)
        sin_cos = sin_cos.unflatten(-1, (k, n, 2))
        base = self.log_scale[self.sizes[0] + self.sizes[1] + self.moved]
        mixture_log_scale = _cap_torsion_scale(base + 3.0 * torch.tanh(raw.unflatten(-1, (k, n)) / 3.0))
        return mean, log_scale, (logits.log_softmax(-1), torch.atan2(sin_cos[..., 0], sin_cos[..., 1]), mixture_log_scale)

    def internal_log_prob(self, ic_new, ic, step=None):
        """``log p(ic' | ic)`` (b,), float64: normal in bonds and angles, wrapped normal in torsions.

        ``step``: ``_step(ic)`` if the caller has it already (a proposal's forward density).
        """
        mean, log_scale, mixture = self._step(ic) if step is None else step
        n_t = self.sizes[2]
        log_p = torch.zeros(len(ic.torsions), dtype=ic.torsions.dtype, device=ic.torsions.device)
        if mean is not None:
            delta = torch.cat(list(ic_new), -1) - torch.cat(list(ic), -1) - mean
            n_bonded = delta.shape[1] - n_t
            if self.config["moves"] == "all":
                z = delta[:, :n_bonded] / log_scale[:, :n_bonded].exp()
                log_p = log_p + (-0.5 * z.square() - log_scale[:, :n_bonded] - _LOG_SQRT_2PI).sum(-1)
        if not n_t:
            return log_p.to(torch.float64)
        if mixture is None:
            moved = self.moved + n_bonded
            log_p = log_p + _wrapped_normal_log_prob(delta[:, moved], log_scale[:, moved]).sum(-1)
        else:
            log_weights, centres, mixture_log_scale = mixture
            per_component = _wrapped_normal_log_prob(ic_new.torsions[:, None, self.moved] - centres, mixture_log_scale).sum(-1)
            log_p = log_p + torch.logsumexp(log_weights + per_component, -1)
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
        mean, log_scale, mixture = step
        flat = torch.cat(list(ic), -1)
        new = flat
        if mean is not None:
            eps = torch.randn(flat.shape, generator=generator, dtype=torch.float64).to(flat)
            new = flat + mean + log_scale.exp() * eps
        n_b, n_a, n_t = self.sizes
        if self.config["moves"] == "torsions":
            new = torch.cat([flat[:, : n_b + n_a], new[:, n_b + n_a :]], -1)
        bonds, angles, torsions = new[:, :n_b], new[:, n_b : n_b + n_a], _wrap(new[:, n_b + n_a :])
        if mixture is not None:
            log_weights, centres, mixture_log_scale = mixture
            rows = torch.arange(len(flat), device=flat.device)
            # inverse-CDF draw of the component on the CPU, as every other draw here (a CPU generator), and as the NumPy path
            uniform = torch.rand(len(flat), generator=generator, dtype=torch.float64)
            cumulative = log_weights.exp().to(torch.float64).cpu().cumsum(-1)
            k = (cumulative <= uniform[:, None] * cumulative[:, -1:]).sum(-1).clamp(max=cumulative.shape[-1] - 1).to(flat.device)
            noise = torch.randn(centres[rows, k].shape, generator=generator, dtype=torch.float64).to(flat)
            torsions[:, self.moved] = _wrap(centres[rows, k] + mixture_log_scale[rows, k].exp() * noise)
        if len(self.moved) < n_t:
            torsions = torch.where(self.kept_torsions, ic.torsions, torsions)
        return InternalCoordinates(bonds, angles, torsions)

    def _to_cartesian(self, ic_new, ic, x, origin, rotation):
        """Positions of ``ic_new`` with the frame of ``x`` (whose internal coordinates are ``ic``): rigid torsion rotations where
        they are exact (:func:`_rigid_rotations`), else NeRF."""
        if self._rotations is None:
            return self.transform.to_cartesian(ic_new, origin, rotation)
        x = x.expand(len(ic_new.torsions), -1, -1)
        for r, (j, k, atoms) in zip(self.moved.tolist(), self._rotations):
            x = _rotate(x, j, k, atoms, ic_new.torsions[:, r] - ic.torsions[:, r])
        return x

    def sample(self, x, v=None, generator=None):
        """One draw ``x' ~ p(. | x)`` per row (frame kept): x' (b, n_atoms, 3) nm, empty velocities (b, 0), ``log p(x' | x)``."""
        x = self._positions(x)
        ic, origin, rotation = self.transform.to_internal(x)
        step = self._step(ic)
        ic_new = self._draw(ic, generator, step)
        x_new = self._to_cartesian(ic_new, ic, x, origin, rotation)
        log_p = self.internal_log_prob(ic_new, ic, step) - self.transform.log_det_jacobian(ic_new.bonds, ic_new.angles).to(torch.float64)
        return x_new, x_new.new_zeros(len(x), 0), log_p

    def propose(self, x, n, generator=None):
        """``n`` proposals from positions ``x`` (n_atoms, 3) nm and their log Hastings terms (numpy, float64).

        A float64 blind torsion mixture with rigid rotations runs in NumPy (:mod:`._numpy_internal`): the same
        draws from ``generator`` and the same arithmetic, several times faster for one configuration. Its
        snapshot of the weights follows every change :func:`~openmm_flowplugin.proposals.protocol.proposal_version`
        sees (optimizer steps, in-place changes under ``torch.no_grad()``, ``load_state_dict``, ``.to``).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"n must be a non-negative integer (proposals to draw), got {n!r}.")
        fast = cached_snapshot(self, NumpyTorsionMixture.build) if type(self) is InternalCoordinateProposal else None
        if fast is None:  # subclasses may override the density or the draw: torch, which calls them
            return self._propose_torch(x, n, generator)
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.n_atoms, 3):
            raise InvalidInputError(f"positions must have shape ({self.n_atoms}, 3) in nm, got {x.shape}.")
        return fast.propose(x, int(n), generator)

    def _propose_torch(self, x, n, generator=None):
        """:meth:`propose` in torch, for every architecture."""
        with torch.no_grad(), package_threads():
            x = self._positions(torch.as_tensor(np.asarray(x, dtype=np.float64))[None])
            if self._rotations is None:
                ic, origin, rotation = self.transform.to_internal(x)
                origin, rotation = origin.expand(int(n), -1), rotation.expand(int(n), -1, -1)
            else:  # rigid torsion rotations need no frame
                ic, origin, rotation = self.transform.internal_coordinates(x), None, None
            step = _expand(self._step(ic), int(n))  # one state: its step once, for all n
            ic = InternalCoordinates(*(part.expand(int(n), -1) for part in ic))
            ic_new = self._draw(ic, generator, step)
            x_new = self._to_cartesian(ic_new, ic, x, origin, rotation)
            reverse_step = step if self._mixture_is_blind else None
            log_hastings = (self.internal_log_prob(ic, ic_new, reverse_step) - self.internal_log_prob(ic_new, ic, step)).to(torch.float64)
            if self.config["moves"] == "all":  # with bonds and angles kept, J(ic') / J(ic) = 1
                log_jacobian = self.transform.log_det_jacobian
                log_hastings = log_hastings + (log_jacobian(ic_new.bonds, ic_new.angles) - log_jacobian(ic.bonds, ic.angles)).to(torch.float64)
            valid = (ic_new.bonds > 0).all(-1) & (ic_new.angles > 0).all(-1) & (ic_new.angles < math.pi).all(-1)
            log_hastings = torch.where(valid, log_hastings, torch.full_like(log_hastings, -math.inf))
        return x_new.to(torch.float64).numpy(), log_hastings.numpy()
