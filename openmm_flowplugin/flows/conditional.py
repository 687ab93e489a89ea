"""Conditional flows p(x', v' | x) over centred positions and auxiliary velocities (Timewarp-style).

Centring is exact by a fixed basis. The geometric centre (mass-independent) is removed with an
orthonormal (Helmert) basis ``H`` of the vectors orthogonal to ``(1, ..., 1)``, shape
(n_atoms, n_atoms - 1), applied to each Cartesian axis: ``q(x) = H^T x`` has shape
(n_atoms - 1, 3) and ``x = H q + centre``. The flow models the 3N-3 numbers ``q(x') - q(x)`` (a
displacement, as Timewarp) and an auxiliary velocity ``v'`` of the same size, so its density is
w.r.t. Lebesgue measure on the centred subspace. A proposal keeps the current centre exactly.
The move then samples the Boltzmann distribution conditioned on the centre: exact for molecules
free in space (the centre is a free particle); combine with another move (MD) where external
forces act on the centre.

Architecture (sized for CPU, one molecule): a context MLP embeds the flattened centred current
positions ``q(x)`` (and the current ``v`` if ``condition_on_velocities``); ``n_layers`` affine
(RealNVP) couplings alternate between the position block (conditioned on the velocity block and
the context) and the velocity block (conditioned on positions and context), log-scales bounded
by ``2 tanh(./2)``; a learned global step length scales the position block. Not rotation
equivariant (training augments with random rotations), no atom types: one model per molecule
(its fingerprint is checked). For one model over several molecules (atom features and
distance-kernel attention, as Timewarp) see :class:`~openmm_flowplugin.flows.TransferableConditionalFlow`.

References
----------
Klein L, Foong AYK, Fjelde TE, et al. Timewarp: transferable acceleration of molecular dynamics by
learning time-coarsened dynamics. NeurIPS 2023. https://arxiv.org/abs/2302.01170
"""

__all__ = ["ConditionalFlow", "centred_basis"]

import math

import numpy as np
import torch
from torch import nn

from .._threads import package_threads
from ..errors import InvalidInputError
from ..proposals.conditional import auxiliary_log_hastings, standard_normal_log_prob

_SCALE_BOUND = 2.0  # |log scale| of one coupling stays below this


def centred_basis(n_atoms, dtype=torch.float64):
    """Orthonormal basis (Helmert) of the vectors orthogonal to ``(1, ..., 1)``: shape (n_atoms, n_atoms - 1).

    Examples
    --------
    >>> H = centred_basis(4)
    >>> bool(torch.allclose(H.T @ H, torch.eye(3, dtype=torch.float64))), bool(H.sum(0).abs().max() < 1e-12)
    (True, True)
    """
    basis = torch.zeros(n_atoms, n_atoms - 1, dtype=torch.float64)
    for k in range(1, n_atoms):
        basis[:k, k - 1] = 1.0 / math.sqrt(k * (k + 1))
        basis[k, k - 1] = -k / math.sqrt(k * (k + 1))
    return basis.to(dtype)


def _mlp(n_in, hidden, n_out, zero_last=True):
    layers, width = [], n_in
    for size in hidden:
        layers += [nn.Linear(width, size), nn.SiLU()]
        width = size
    last = nn.Linear(width, n_out)
    if zero_last:  # each coupling starts as the identity
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class _Coupling(nn.Module):
    """Affine coupling of one block: ``y = u * exp(s(other, h)) + t(other, h)``."""

    def __init__(self, dim, context_features, hidden):
        super().__init__()
        self.net = _mlp(dim + context_features, hidden, 2 * dim)

    def forward(self, other, context):
        shift, raw = self.net(torch.cat([other, context], -1)).chunk(2, -1)
        return shift, _SCALE_BOUND * torch.tanh(raw / _SCALE_BOUND)


class ConditionalFlow(nn.Module):
    """Density ``p(x', v' | x[, v])`` of new positions and auxiliary velocities given the current state.

    Parameters
    ----------
    n_atoms : int
        Atoms the flow moves (>= 2).
    n_layers : int, optional
        Affine couplings, alternating positions and velocities (default 8, as Timewarp).
    hidden : sequence of int, optional
        Hidden widths of each coupling's MLP (default (64, 64)).
    context_features : int, optional
        Width of the embedding of the current state (default 64).
    step_scale : float, optional
        Initial length (nm) of a proposal's displacement per centred coordinate (default 0.02); learned.
    condition_on_velocities : bool, optional
        If True the density also depends on the current auxiliary velocity ``v``, ``p(x', v' | x, v)``;
        if False (default, as Timewarp's released configurations, ``ignore_conditional_velocity``), not.
    metadata : dict, optional
        Plain data stored with checkpoints (system name, fingerprint, temperature).
    dtype : torch.dtype, optional
        Default float64: log densities enter the acceptance in float64.

    Attributes
    ----------
    dim : int
        3 n_atoms - 3, the size of the position block and of the velocity block.

    Examples
    --------
    >>> flow = ConditionalFlow(3, n_layers=2, hidden=(16,), context_features=8)
    >>> x = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]], dtype=torch.float64)
    >>> x_new, log_h = flow.propose(x, 4, generator=torch.Generator().manual_seed(0))
    >>> x_new.shape, log_h.shape
    ((4, 3, 3), (4,))
    >>> bool(np.allclose(x_new.mean(1), x.numpy().mean(0)))  # the centre is kept
    True
    """

    rigid_invariant = False
    respects_constraints = False

    def __init__(self, n_atoms, n_layers=8, hidden=(64, 64), context_features=64, step_scale=0.02,
                 condition_on_velocities=False, metadata=None, dtype=torch.float64):
        super().__init__()
        if int(n_atoms) != n_atoms or n_atoms < 2:
            raise InvalidInputError(f"n_atoms must be an integer >= 2 (centred positions of one atom are empty), got {n_atoms!r}.")
        if int(n_layers) != n_layers or n_layers < 2:
            raise InvalidInputError(f"n_layers must be an integer >= 2 (positions and velocities both transformed), got {n_layers!r}.")
        if not step_scale > 0:
            raise InvalidInputError(f"step_scale must be a positive length in nm, got {step_scale!r}.")
        self.config = dict(n_atoms=int(n_atoms), n_layers=int(n_layers), hidden=[int(h) for h in hidden],
                           context_features=int(context_features), step_scale=float(step_scale),
                           condition_on_velocities=bool(condition_on_velocities))
        self.metadata = dict(metadata or {})
        self.dim = 3 * (int(n_atoms) - 1)
        self.register_buffer("basis", centred_basis(int(n_atoms)))
        n_context_in = self.dim * (2 if condition_on_velocities else 1)
        self.context_net = _mlp(n_context_in, list(hidden), int(context_features), zero_last=False)
        self.couplings = nn.ModuleList(_Coupling(self.dim, int(context_features), list(hidden)) for _ in range(int(n_layers)))
        self.log_step = nn.Parameter(torch.tensor(math.log(step_scale)))
        self.to(dtype)

    @classmethod
    def for_system(cls, molecular_system, **kwargs):
        """A flow for a :class:`~openmm_flowplugin.systems.MolecularSystem`, its name and fingerprint in ``metadata``."""
        metadata = dict(system_metadata(molecular_system), **kwargs.pop("metadata", {}))
        return cls(molecular_system.n_atoms, metadata=metadata, **kwargs)

    @property
    def n_atoms(self):
        return self.config["n_atoms"]

    @property
    def fingerprint(self):
        """sha256 of the molecule this flow was made for (``None`` if unknown)."""
        return self.metadata.get("fingerprint")

    # ------------------------------------------------------------------ coordinates
    def centred(self, x):
        """Centred coordinates ``q = H^T x``, shape (b, n_atoms - 1, 3), of positions (b, n_atoms, 3)."""
        return torch.einsum("ak,bai->bki", self.basis, x)

    def _positions(self, x):
        dtype = self.basis.dtype
        x = torch.as_tensor(x).to(dtype)
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise InvalidInputError(f"positions must have shape (n, {self.n_atoms}, 3) in nm, got {tuple(x.shape)}.")
        return x

    def _context(self, x, v):
        parts = [self.centred(x).flatten(1)]
        if self.config["condition_on_velocities"]:
            if v is None:
                raise InvalidInputError("this flow conditions on the current auxiliary velocity: pass v.")
            parts.append(torch.as_tensor(v).to(self.basis.dtype))
        return self.context_net(torch.cat(parts, -1))

    # ------------------------------------------------------------------ the flow
    def _to_data(self, u_pos, u_vel, context):
        """Latent -> (displacement, v'); returns them and log|det J| of this map."""
        ladj = torch.zeros(len(u_pos), dtype=u_pos.dtype, device=u_pos.device)
        for k, layer in enumerate(self.couplings):
            if k % 2 == 0:
                shift, log_scale = layer(u_vel, context)
                u_pos = u_pos * log_scale.exp() + shift
            else:
                shift, log_scale = layer(u_pos, context)
                u_vel = u_vel * log_scale.exp() + shift
            ladj = ladj + log_scale.sum(-1)
        return u_pos * self.log_step.exp(), u_vel, ladj + self.dim * self.log_step

    def _to_latent(self, displacement, v_new, context):
        """(displacement, v') -> latent; returns it and log|det J| of this (inverse) map."""
        u_pos, u_vel = displacement * (-self.log_step).exp(), v_new
        ladj = torch.full((len(u_pos),), 0.0, dtype=u_pos.dtype, device=u_pos.device) - self.dim * self.log_step
        for k in reversed(range(len(self.couplings))):
            layer = self.couplings[k]
            if k % 2 == 0:
                shift, log_scale = layer(u_vel, context)
                u_pos = (u_pos - shift) * (-log_scale).exp()
            else:
                shift, log_scale = layer(u_pos, context)
                u_vel = (u_vel - shift) * (-log_scale).exp()
            ladj = ladj - log_scale.sum(-1)
        return u_pos, u_vel, ladj

    def log_prob(self, x_new, v_new, x, v=None):
        """``log p(x', v' | x[, v])``, float64 shape (b,), w.r.t. Lebesgue measure on the centred subspace.

        Parameters
        ----------
        x_new, x : array_like, shape=(b, n_atoms, 3)
            Proposed and current positions, nm. Only their centred parts matter.
        v_new, v : array_like, shape=(b, 3 n_atoms - 3)
            Proposed and current auxiliary velocities (``v`` only if ``condition_on_velocities``).
        """
        x_new, x = self._positions(x_new), self._positions(x)
        displacement = (self.centred(x_new) - self.centred(x)).flatten(1)
        u_pos, u_vel, ladj = self._to_latent(displacement, torch.as_tensor(v_new).to(x.dtype), self._context(x, v))
        return standard_normal_log_prob(u_pos) + standard_normal_log_prob(u_vel) + ladj.to(torch.float64)

    def sample(self, x, v=None, generator=None):
        """One draw ``(x', v') ~ p(. | x[, v])`` per row of ``x``.

        Returns
        -------
        x_new : torch.Tensor, shape=(b, n_atoms, 3)
            nm, with the centre of each ``x``.
        v_new : torch.Tensor, shape=(b, 3 n_atoms - 3)
        log_p : torch.Tensor, shape=(b,)
            float64 ``log p(x', v' | x[, v])``.
        """
        x = self._positions(x)
        u = torch.randn(len(x), 2 * self.dim, generator=generator, dtype=torch.float64).to(x.dtype)
        u_pos, u_vel = u[:, : self.dim], u[:, self.dim :]
        displacement, v_new, ladj = self._to_data(u_pos, u_vel, self._context(x, v))
        q_new = self.centred(x) + displacement.reshape(len(x), self.n_atoms - 1, 3)
        x_new = torch.einsum("ak,bki->bai", self.basis, q_new) + x.mean(1, keepdim=True)
        log_p = standard_normal_log_prob(u_pos) + standard_normal_log_prob(u_vel) - ladj.to(torch.float64)
        return x_new, v_new, log_p

    def propose(self, x, n, generator=None):
        """``n`` Metropolis-Hastings proposals from positions ``x`` (n_atoms, 3), with their log Hastings terms.

        Draws ``v ~ N(0, I)`` afresh for each proposal, then ``(x', v') ~ p(. | x, v)``, and returns
        ``x'`` (numpy, (n, n_atoms, 3), nm) and
        :func:`~openmm_flowplugin.proposals.conditional.auxiliary_log_hastings` (numpy, (n,)).
        """
        return auxiliary_proposals(self, x, n, generator)


def system_metadata(molecular_system):
    """Plain metadata naming the molecule a proposal is made for (name, atoms, fingerprint, temperature, version)."""
    from .._version import __version__
    from ..units import kelvin

    return dict(system=molecular_system.name, n_atoms=molecular_system.n_atoms, fingerprint=molecular_system.fingerprint,
                temperature_K=kelvin(molecular_system.temperature), package_version=__version__)


def auxiliary_proposals(flow, x, n, generator=None):
    """``n`` proposals of a flow over (x', v') from positions ``x`` and their log Hastings terms (numpy).

    Draws ``v ~ N(0, I)`` (``flow.dim`` numbers) afresh for each, then ``(x', v') ~ flow.sample(x, v)``, and
    returns ``x'`` (n, n_atoms, 3) nm and :func:`~openmm_flowplugin.proposals.conditional.auxiliary_log_hastings`.
    """
    with torch.no_grad(), package_threads():
        x = flow._positions(torch.as_tensor(np.asarray(x, dtype=np.float64))[None]).expand(int(n), -1, -1)
        v = torch.randn(int(n), flow.dim, generator=generator, dtype=torch.float64).to(x.dtype)
        x_new, v_new, log_forward = flow.sample(x, v, generator=generator)
        log_reverse = flow.log_prob(x, v, x_new, v_new)
        log_hastings = auxiliary_log_hastings(log_forward, log_reverse, v, v_new)
    return x_new.to(torch.float64).numpy(), log_hastings
