"""Where :class:`~openmm_flowplugin.integrators.FlowMCIntegrator` gets its proposals for one jump.

Both sources return what the jump program loads: proposed positions, each one's log proposal ratio
``r`` such that the device accepts with probability ``min(1, exp(u - u' - r))``, and whether it is
usable (finite). ``position`` is the stream position stored in the Context (``fmc_n_drawn``), so a
resumed run continues the stream instead of replaying it.

- :class:`IndependentDraws`: proposals that do not depend on the state (flows, Gaussians), drawn in
  batches by a :class:`~openmm_flowplugin.proposals.ProposalBuffer`; ``r = log q(x') - log q(x)``.
- :class:`ConditionalDraws`: Timewarp-style proposals ``propose(x, n, generator)``
  (:mod:`openmm_flowplugin.proposals.conditional`), one per jump, drawn from the snapshot itself;
  ``r = -h``, ``h`` the proposal's log Hastings term.
"""

import math

import numpy as np

from ..errors import InvalidTypeError
from ..proposals.buffer import ProposalBuffer
from ..proposals.conditional import draw_conditional
from ..proposals.protocol import align_to_current, single_log_prob
from ..proposals.streams import DRAWS, LOG_PROB, checked_root_seed, torch_generator


def conditional_n_atoms(proposal):
    """A conditional proposal's ``n_atoms`` (it cannot be sampled without a state to learn it from)."""
    n_atoms = getattr(proposal, "n_atoms", None)
    if n_atoms is None and callable(getattr(proposal, "bound_to", None)):
        raise InvalidTypeError(f"the {type(proposal).__name__} is not bound to a molecule: use flow.bound_to(molecular_system) "
                               "or load_conditional_flow(path, system=molecular_system).")
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 1:
        raise InvalidTypeError(f"the conditional proposal {type(proposal).__name__} needs an integer n_atoms attribute "
                               f"(the atoms it moves), got {n_atoms!r}.")
    return int(n_atoms)


class IndependentDraws:
    """Draws of a state-independent proposal, ``sample_batch_size`` per ``proposal.sample`` call."""

    def __init__(self, proposal, batch_size, n_atoms, seed, stream):
        self.proposal, self.n_atoms = proposal, n_atoms
        self._buffer = ProposalBuffer(proposal, batch_size, n_atoms=n_atoms, seed=seed, stream=stream)

    @property
    def seed(self):
        return self._buffer.seed

    @property
    def batch_size(self):
        return self._buffer.batch_size

    def for_stream(self, stream):
        """The same proposal and seed, drawing from another stream (a deep copy's)."""
        return IndependentDraws(self.proposal, self.batch_size, self.n_atoms, self.seed, stream)

    def draw(self, x, position, n):
        x_new, log_q_new = self._buffer.draws(position, n)
        log_q_cur = single_log_prob(self.proposal, x,
                                    lambda: torch_generator(self.seed, *self._buffer.stream, LOG_PROB, position))
        x_new = align_to_current(self.proposal, x_new, x)
        ok = np.isfinite(x_new).all(axis=(1, 2)) & np.isfinite(log_q_new) & math.isfinite(log_q_cur)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where not ok: replaced by 0
            # relative to log q(current): keeps the device's numbers small in any precision
            return x_new, np.where(ok, log_q_new - log_q_cur, 0.0), ok


class ConditionalDraws:
    """One draw per jump from ``proposal.propose(x_snapshot, 1, generator)``.

    Draw ``k`` of the stream uses ``torch_generator(seed, *stream, DRAWS, k)``. No batches are drawn
    ahead: MD moves the state between jumps, so a batch drawn at one jump is stale at the next.
    """

    batch_size = 1

    def __init__(self, proposal, n_atoms, seed, stream):
        self.proposal, self.n_atoms = proposal, n_atoms
        self.seed, self.stream = checked_root_seed(seed), tuple(stream)

    def for_stream(self, stream):
        return ConditionalDraws(self.proposal, self.n_atoms, self.seed, stream)

    def draw(self, x, position, n):
        x_new, log_hastings = draw_conditional(self.proposal, x, n, torch_generator(self.seed, *self.stream, DRAWS, position))
        ok = np.isfinite(x_new).all(axis=(1, 2)) & np.isfinite(log_hastings)
        return x_new, np.where(ok, -log_hastings, 0.0), ok
