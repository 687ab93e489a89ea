"""A trained diffusion sampler as a Metropolis–Hastings proposal: FlowMCMove and FlowMCIntegrator.

The sampler's marginal density q(x) is intractable, but each draw comes with its path, and for any
configuration a path ending there can be drawn backward by the reference process. The ratio of the
controlled path density to the backward path density, exp(−log_path_ratio), is an unbiased estimate
of q(x) (:func:`~openmm_flowplugin.diffusion.chain.backward_log_path_ratio`). Metropolis–Hastings
with these estimates in place of log q is exact: it is the independence sampler on configurations
extended by their paths, whose target π(x)·B(path | x) has π as its marginal; drawing a fresh
backward path for a state (after MD, say) is a Gibbs step on that extended space. With torsions on
the real line (:class:`~openmm_flowplugin.diffusion.InternalCoordinateSpace`) the moves' state space
takes each torsion on its principal range, mean ± π: a draw outside it is rejected (``log q`` = +inf;
it would be a copy of a configuration inside). Drawing the image from the sampler's image weights
instead would be exact too, but for stiff torsions it lands far from anything the sampler proposes
and the estimates become useless (standard deviation of log q̂ in the thousands on alanine dipeptide).

So the samples a trained sampler draws can be used inside MD (``FlowMCIntegrator``) or an
openmmtools sampler (``FlowMCMove``) with no reweighting at all; the moves stay exact whatever the
sampler's quality, which only sets the acceptance rate.

Examples
--------
>>> from openmm_flowplugin import systems
>>> from openmm_flowplugin.diffusion import DiffusionSampler, NoiseSchedule
>>> well = systems.get("double_well_2d")
>>> sampler = DiffusionSampler(well, schedule=NoiseSchedule(1.0, 0.02, 20), batch_size=16, seed=0)
>>> proposal = DiffusionProposal(sampler, seed=1)
>>> x, log_q = proposal.sample(3)
>>> x.shape, log_q.shape
(torch.Size([3, 1, 3]), torch.Size([3]))
"""

__all__ = ["DiffusionProposal"]

import math

import torch

from ..errors import InvalidTypeError
from ..proposals.streams import LOG_PROB, checked_root_seed, torch_generator
from .chain import backward_log_path_ratio, run_chains
from .coordinates import InternalCoordinateSpace


class DiffusionProposal:
    """Independence proposal from a :class:`~openmm_flowplugin.diffusion.DiffusionSampler`'s current controller.

    ``log_q`` is a random estimate (see the module's notes): exact Metropolis–Hastings, no weights.
    The bias the sampler was trained with plays no part: a move built on this proposal samples the
    Boltzmann distribution of the thermodynamic state it runs in.

    Parameters
    ----------
    sampler : DiffusionSampler
        Used as it is at each call (train it further and the proposal follows; moves see the change
        through :attr:`version`).
    seed : int, optional
        Root seed of the stream :meth:`sample` and :meth:`log_prob` draw from when no generator is given.
        Moves pass generators from their own streams (distinct per apply, jump, copy and resume); this
        fallback's counter is not stored, so a new process repeats its draws.

    Attributes
    ----------
    n_atoms : int
    rigid_invariant : bool
        True in internal coordinates (moves align each proposal onto the current state).
    fingerprint : str
        The sampler's molecule (moves refuse another one).

    Notes
    -----
    Uses the sampler's current controller, not the mixture of training snapshots that
    :meth:`DiffusionSampler.sample` draws from. Draws outside the principal torsion range count as
    invalid proposals in the moves' statistics. A move holding this proposal cannot be stored (the
    sampler is no plain data), so openmmtools' ``MultiStateSampler``, which stores its moves, refuses it;
    ``MCMCSampler`` and ``FlowMCIntegrator`` take it.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> from openmm_flowplugin.diffusion import DiffusionSampler, NoiseSchedule
    >>> from openmm_flowplugin.mcmc import FlowMCMove
    >>> sampler = DiffusionSampler(systems.get("double_well_2d"), schedule=NoiseSchedule(1.0, 0.02, 20), seed=0)
    >>> move = FlowMCMove(DiffusionProposal(sampler, seed=1), n_proposals=5, seed=2)
    >>> move.proposal.rigid_invariant  # Cartesian coordinates: proposals are used as drawn
    False
    """

    storage_hint = ("a DiffusionProposal holds a trained DiffusionSampler, which is not stored with the move; use it with "
                    "openmmtools' MCMCSampler or FlowMCIntegrator (a MultiStateSampler stores its moves and cannot take it).")

    def __init__(self, sampler, seed=None):
        if not hasattr(sampler, "controller") or not hasattr(sampler, "coordinates"):
            raise InvalidTypeError(f"DiffusionProposal needs a DiffusionSampler, got {type(sampler).__name__}.")
        self.sampler = sampler
        self.n_atoms = sampler.n_atoms
        self.rigid_invariant = isinstance(sampler.coordinates, InternalCoordinateSpace)
        self.fingerprint = sampler.molecular_system.fingerprint
        self.seed = checked_root_seed(seed)
        self._n_estimates = 0

    @property
    def version(self):
        """Changes whenever the controller's parameters do (or the sampler's controller is replaced)."""
        from ..proposals.protocol import proposal_version

        return (self.sampler.iteration, proposal_version(self.sampler.controller))

    def sample(self, n, generator=None):
        """``n`` configurations (n, n_atoms, 3) nm, float64, and the estimates of their log q (+inf: rejected)."""
        generator = generator if generator is not None else self._own_generator()
        chains = run_chains(self.sampler.controller, self.sampler.schedule, int(n), generator)
        x, log_q = self._positions_and_log_q(chains.x_final, chains.log_path_ratio)
        if self.rigid_invariant:  # outside the principal torsion range: not in the moves' state space
            principal = self.sampler.coordinates.from_positions_to_z(torch.nan_to_num(x))
            outside = ~torch.isclose(principal, chains.x_final, rtol=0.0, atol=1e-6).all(-1)
            log_q = torch.where(outside, torch.full_like(log_q, math.inf), log_q)
        return x, log_q

    def log_prob(self, x, generator=None):
        """A random estimate of log q at positions (n, n_atoms, 3) nm: one backward path per configuration."""
        generator = generator if generator is not None else self._own_generator()
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, self.n_atoms, 3)
        coordinates = self.sampler.coordinates
        z = coordinates.from_positions_to_z(x) if self.rigid_invariant else x.reshape(len(x), -1)
        return self._positions_and_log_q(z, backward_log_path_ratio(self.sampler.controller, self.sampler.schedule, z, generator))[1]

    def _positions_and_log_q(self, z, log_path_ratio):
        """log q̂_x = log q̂_z − log J: the volume factor without the torsion image weights (principal images only)."""
        x, log_volume = self.sampler.coordinates.to_positions(z, image_weights=False)
        return x, -log_path_ratio - log_volume

    def _own_generator(self):
        self._n_estimates += 1
        return torch_generator(self.seed, LOG_PROB, 1, self._n_estimates)  # a key no move's stream uses
