"""A conditional flow over atoms that transfers between molecules: atom features and distance-kernel attention.

Unlike :class:`~openmm_flowplugin.flows.ConditionalFlow` (an MLP on one molecule's flattened
coordinates), every coupling here is a per-atom network: the input of atom ``i`` is its features
(:func:`~openmm_flowplugin.flows.atom_features.atom_features`: element and bonded environment), its
position relative to the molecule's centre in the current state ``x`` and its three numbers of the
other block; atoms exchange information by kernel self-attention, Timewarp's choice, with weights
``softmax_j(-|x_i - x_j|^2 / l^2)`` for a few length scales ``l`` (0.1-1.2 nm). The weights do not
depend on the number of atoms or their order, so one model runs on any molecule whose elements it
has seen: :meth:`TransferableConditionalFlow.bound_to` gives the same weights for another molecule.

The density is over all ``3 N`` displacements ``x' - x`` and ``3 N`` auxiliary velocities (no
centring), w.r.t. Lebesgue measure on R^(6N); the networks see only relative positions, so the
density is invariant under translating ``x`` and ``x'`` together and a proposal also moves the
centre (a random walk of a free molecule's centre, which the Metropolis-Hastings test keeps exact).
Not rotation equivariant: training augments with random rotations.

Periodic boxes: the networks use plain Cartesian differences, not minimum images, and openmmtools wraps
each molecule into the box separately. Use the flow on one molecule (``atom_indices`` of a solute in
vacuum, implicit solvent or a box): the density is then unchanged by that molecule's lattice shifts.
A flow over the atoms of several molecules of a periodic box is not covered by that argument.

References
----------
Klein L, Foong AYK, Fjelde TE, et al. Timewarp: transferable acceleration of molecular dynamics by
learning time-coarsened dynamics. NeurIPS 2023. https://arxiv.org/abs/2302.01170
"""

__all__ = ["TransferableConditionalFlow"]

import math
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from ..proposals.conditional import standard_normal_log_prob
from .atom_features import ELEMENTS, atom_features as features_of, n_atom_features
from .conditional import _SCALE_BOUND, _mlp, auxiliary_proposals, system_metadata

DEFAULT_LENGTH_SCALES = (0.1, 0.2, 0.4, 0.8, 1.2)  # nm, as Timewarp's kernel attention


def attention_kernels(x, length_scales):
    """Row-normalised Gaussian kernels ``softmax_j(-|x_i - x_j|^2 / l^2)``: shape (b, n_scales, n, n)."""
    squared = torch.cdist(x, x).square()
    inverse = torch.as_tensor([1.0 / s**2 for s in length_scales], dtype=x.dtype, device=x.device)
    return torch.softmax(-squared[:, None] * inverse[None, :, None, None], dim=-1)


class _AtomCoupling(nn.Module):
    """Per-atom shift and bounded log-scale, (b, n, 3) each, of one block given the other block and x."""

    def __init__(self, n_features, hidden, n_scales, n_rounds):
        super().__init__()
        self.embed = _mlp(n_features + 6, [hidden], hidden, zero_last=False)
        self.mix = nn.ModuleList(nn.Linear(hidden * n_scales, hidden) for _ in range(n_rounds))
        self.update = nn.ModuleList(_mlp(2 * hidden, [hidden], hidden, zero_last=False) for _ in range(n_rounds))
        self.out = nn.Linear(hidden, 6)
        nn.init.zeros_(self.out.weight)  # each coupling starts as the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, features, relative, other, kernels):
        b, n, _ = relative.shape
        features = features.to(relative)  # the weights' dtype and device (a model bound elsewhere may have moved them)
        h = self.embed(torch.cat([features.expand(b, n, -1), relative, other], -1))
        for mix, update in zip(self.mix, self.update):
            messages = torch.einsum("bkij,bjh->bikh", kernels, h).flatten(2)
            h = h + update(torch.cat([h, mix(messages)], -1))
        shift, raw = self.out(h).chunk(2, -1)
        return shift, _SCALE_BOUND * torch.tanh(raw / _SCALE_BOUND)


class _Core(nn.Module):
    """The weights: shared by every molecule a model is bound to."""

    def __init__(self, n_layers, hidden, n_rounds, length_scales, step_scale):
        super().__init__()
        self.couplings = nn.ModuleList(_AtomCoupling(n_atom_features(), hidden, len(length_scales), n_rounds) for _ in range(n_layers))
        self.log_step = nn.Parameter(torch.tensor(math.log(step_scale)))


def element_slots(features):
    """Sorted element slots (indices into ELEMENTS, or len(ELEMENTS) for others) present in atom features."""
    features = np.asarray(features)
    return sorted(int(i) for i in np.flatnonzero(features[:, : len(ELEMENTS) + 1].sum(0)))


def _warn_about_unseen_elements(trained, features, name):
    if trained is None:
        return
    unseen = sorted(set(element_slots(features)) - set(trained))
    if unseen:
        names = [ELEMENTS[i] if i < len(ELEMENTS) else "other" for i in unseen]
        warnings.warn(f"{name} has elements the model never saw in training ({', '.join(names)}): their input weights are "
                      "untrained. The move stays exact, but expect few acceptances.", stacklevel=3)


class TransferableConditionalFlow(nn.Module):
    """Density ``p(x', v' | x)`` over a molecule's atoms from atom features and kernel attention; transfers to other molecules.

    Parameters
    ----------
    atom_features : array_like, shape=(n_atoms, 33), optional
        The bound molecule's features (:func:`~openmm_flowplugin.flows.atom_features.atom_features`);
        ``None`` for a model not bound to a molecule yet (training on several molecules binds it to each
        with :meth:`bound_to`).
    n_layers : int, optional
        Affine couplings alternating displacements and velocities (default 8, as Timewarp).
    hidden : int, optional
        Width of the per-atom features inside a coupling (default 64).
    n_rounds : int, optional
        Attention rounds per coupling (default 2).
    length_scales : sequence of float, optional
        Kernel length scales, nm (default 0.1, 0.2, 0.4, 0.8, 1.2).
    step_scale : float, optional
        Initial displacement scale per coordinate, nm (default 0.02); learned.
    metadata : dict, optional
        Plain data stored with checkpoints (system, fingerprint, temperature, training molecules).
    dtype : torch.dtype, optional
        Default float64.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> flow = TransferableConditionalFlow.for_system(ala2, n_layers=2, hidden=8, n_rounds=1)
    >>> x_new, log_h = flow.propose(ala2.positions_nm, 3, generator=torch.Generator().manual_seed(0))
    >>> x_new.shape, log_h.shape
    ((3, 22, 3), (3,))
    """

    rigid_invariant = False
    respects_constraints = False
    #: Why a move cannot store this flow when it has no checkpoint file (see proposals.storage).
    storage_hint = ("a transferable flow bound to a molecule is stored by its checkpoint file: save it first "
                    "(openmm_flowplugin.flows.save_conditional_flow(flow, 'bound.pt')) and use the saved flow.")

    def __init__(self, atom_features=None, n_layers=8, hidden=64, n_rounds=2, length_scales=DEFAULT_LENGTH_SCALES,
                 step_scale=0.02, metadata=None, dtype=torch.float64):
        super().__init__()
        if int(n_layers) != n_layers or n_layers < 2:
            raise InvalidInputError(f"n_layers must be an integer >= 2 (displacements and velocities both transformed), got {n_layers!r}.")
        if int(hidden) != hidden or hidden < 1 or int(n_rounds) != n_rounds or n_rounds < 0:
            raise InvalidInputError(f"hidden must be an integer >= 1 and n_rounds >= 0, got {hidden!r} and {n_rounds!r}.")
        if not len(length_scales) or not all(s > 0 for s in length_scales):
            raise InvalidInputError(f"length_scales must be positive lengths in nm, got {length_scales!r}.")
        if not step_scale > 0:
            raise InvalidInputError(f"step_scale must be a positive length in nm, got {step_scale!r}.")
        self.config = dict(atom_features=None, n_layers=int(n_layers), hidden=int(hidden), n_rounds=int(n_rounds),
                           length_scales=[float(s) for s in length_scales], step_scale=float(step_scale))
        self.metadata = dict(metadata or {})
        self.core = _Core(int(n_layers), int(hidden), int(n_rounds), self.config["length_scales"], float(step_scale))
        self.to(dtype)
        self._bind(atom_features)

    def _bind(self, atom_features):
        dtype = self.core.log_step.dtype
        if atom_features is None:
            self.config["atom_features"] = None
            self.register_buffer("features", torch.zeros(0, n_atom_features(), dtype=dtype), persistent=False)
            return
        features = np.asarray(atom_features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != n_atom_features() or len(features) < 1:
            raise InvalidInputError(f"atom_features must have shape (n_atoms, {n_atom_features()}) (flows.atom_features.atom_features), "
                                    f"got {features.shape}.")
        self.config["atom_features"] = features.tolist()
        self.register_buffer("features", torch.from_numpy(features).to(dtype), persistent=False)

    @classmethod
    def for_system(cls, molecular_system, **kwargs):
        """A new model bound to a :class:`~openmm_flowplugin.systems.MolecularSystem` (features, name, fingerprint)."""
        flow = cls(**kwargs)
        return flow.bound_to(molecular_system, _inplace=True)

    def bound_to(self, molecular_system, _inplace=False):
        """This model's weights (shared, not copied) on another molecule.

        Training either instance trains both. Save the result with
        :func:`~openmm_flowplugin.flows.save_conditional_flow` before an openmmtools sampler stores a
        move that uses it (stored moves name checkpoint files).
        """
        flow = self
        if not _inplace:
            flow = type(self).__new__(type(self))
            nn.Module.__init__(flow)
            flow.config = dict(self.config)
            flow.core = self.core
            flow.__dict__["_shares_weights_with"] = self  # keeps a cached loaded model alive (not a submodule)
        flow.metadata = {key: value for key, value in self.metadata.items() if key not in ("training_command", "n_pairs", "n_trajectories")}
        flow.metadata.update(system_metadata(molecular_system))
        features = features_of(molecular_system.topology)
        flow._bind(features)
        _warn_about_unseen_elements(self.metadata.get("trained_element_slots"), features, molecular_system.name)
        flow.train(self.training)
        return flow

    @property
    def n_atoms(self):
        return len(self.features) if self.config["atom_features"] is not None else None

    @property
    def dim(self):
        """3 n_atoms: the size of the displacement block and of the velocity block."""
        return 3 * self._checked_n_atoms()

    @property
    def fingerprint(self):
        return self.metadata.get("fingerprint")

    @property
    def dtype(self):
        return self.core.log_step.dtype

    def _checked_n_atoms(self):
        if self.config["atom_features"] is None:
            raise InvalidInputError("this transferable flow is not bound to a molecule: use flow.bound_to(molecular_system).")
        return len(self.features)

    def _positions(self, x):
        x = torch.as_tensor(x).to(dtype=self.dtype, device=self.core.log_step.device)
        n_atoms = self._checked_n_atoms()
        if x.ndim != 3 or x.shape[1:] != (n_atoms, 3):
            raise InvalidInputError(f"positions must have shape (n, {n_atoms}, 3) in nm, got {tuple(x.shape)}.")
        return x

    def _context(self, x):
        return x - x.mean(1, keepdim=True), attention_kernels(x, self.config["length_scales"])

    # ------------------------------------------------------------------ the flow
    def _to_data(self, u_pos, u_vel, context):
        relative, kernels = context
        ladj = torch.zeros(len(u_pos), dtype=u_pos.dtype, device=u_pos.device)
        for k, layer in enumerate(self.core.couplings):
            if k % 2 == 0:
                shift, log_scale = layer(self.features, relative, u_vel, kernels)
                u_pos = u_pos * log_scale.exp() + shift
            else:
                shift, log_scale = layer(self.features, relative, u_pos, kernels)
                u_vel = u_vel * log_scale.exp() + shift
            ladj = ladj + log_scale.flatten(1).sum(-1)
        log_step = self.core.log_step
        return u_pos * log_step.exp(), u_vel, ladj + self.dim * log_step

    def _to_latent(self, displacement, v_new, context):
        relative, kernels = context
        log_step = self.core.log_step
        u_pos, u_vel = displacement * (-log_step).exp(), v_new
        ladj = torch.zeros(len(u_pos), dtype=u_pos.dtype, device=u_pos.device) - self.dim * log_step
        for k in reversed(range(len(self.core.couplings))):
            layer = self.core.couplings[k]
            if k % 2 == 0:
                shift, log_scale = layer(self.features, relative, u_vel, kernels)
                u_pos = (u_pos - shift) * (-log_scale).exp()
            else:
                shift, log_scale = layer(self.features, relative, u_pos, kernels)
                u_vel = (u_vel - shift) * (-log_scale).exp()
            ladj = ladj - log_scale.flatten(1).sum(-1)
        return u_pos, u_vel, ladj

    def log_prob(self, x_new, v_new, x, v=None):
        """``log p(x', v' | x)``, float64 shape (b,); ``v_new`` has shape (b, 3 n_atoms) (``v`` is not used)."""
        x_new, x = self._positions(x_new), self._positions(x)
        v_new = torch.as_tensor(v_new).to(x)
        if v_new.shape != (len(x), self.dim):
            raise InvalidInputError(f"v_new must have shape ({len(x)}, {self.dim}) (3 numbers per atom), got {tuple(v_new.shape)}.")
        v_new = v_new.reshape(len(x), -1, 3)
        u_pos, u_vel, ladj = self._to_latent(x_new - x, v_new, self._context(x))
        return (standard_normal_log_prob(u_pos.flatten(1)) + standard_normal_log_prob(u_vel.flatten(1))
                + ladj.to(torch.float64))

    def sample(self, x, v=None, generator=None):
        """One draw ``(x', v') ~ p(. | x)`` per row of ``x``: x' (b, n_atoms, 3) nm, v' (b, 3 n_atoms), float64 log p."""
        x = self._positions(x)
        u = torch.randn(len(x), 2, *x.shape[1:], generator=generator, dtype=torch.float64).to(x)
        displacement, v_new, ladj = self._to_data(u[:, 0], u[:, 1], self._context(x))
        log_p = standard_normal_log_prob(u[:, 0].flatten(1)) + standard_normal_log_prob(u[:, 1].flatten(1)) - ladj.to(torch.float64)
        return x + displacement, v_new.flatten(1), log_p

    def propose(self, x, n, generator=None):
        """``n`` proposals from positions ``x`` (n_atoms, 3) and their log Hastings terms (numpy), as ConditionalFlow.propose."""
        return auxiliary_proposals(self, x, n, generator)
