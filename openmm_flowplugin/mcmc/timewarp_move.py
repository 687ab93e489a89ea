"""Exact Metropolis-Hastings moves with Timewarp-style conditional proposals for openmmtools samplers."""

__all__ = ["TimewarpMove"]

import hashlib
import math

import numpy as np

from ..flows.conditional_io import register_loader
from ..proposals.conditional import check_conditional_proposal, draw_conditional
from ..proposals.protocol import proposal_version
from ..proposals.streams import DRAWS, torch_generator
from .flow_move import FlowMCMove

register_loader()  # stored moves find their conditional flow again through this loader


def _sha256(positions):
    """Digest of ``positions`` rounded to float32, the precision of openmmtools' stored positions: a run resumed
    from storage recognises the state a batch was drawn from (and draws that batch again, from its positions)."""
    return hashlib.sha256(np.ascontiguousarray(positions, dtype=np.float32).tobytes()).hexdigest()


def prefetch_size(n_accepted, n_proposed, maximum):
    """Timewarp's batch size ``ceil(log 0.1 / log(1 - p))`` (an acceptance within it with probability 0.9), at most ``maximum``.

    ``p = (n_accepted + 1) / (n_proposed + 2)`` is the acceptance so far (Laplace's rule: never 0 or 1).

    Examples
    --------
    >>> prefetch_size(0, 0, 100), prefetch_size(1, 98, 100), prefetch_size(5, 10, 100)
    (4, 100, 4)
    """
    p = (n_accepted + 1.0) / (n_proposed + 2.0)
    return int(min(maximum, max(1, math.ceil(math.log(0.1) / math.log1p(-p)))))


class _Prefetch:
    """Proposals drawn from one state: ``x`` (size, n_atoms, 3) nm and ``log_hastings`` (size,).

    ``start`` is the stream position (step counter) at which they were drawn; step ``k`` uses draw
    ``k - start``. ``record`` is the plain data from which a restored move draws them again.
    """

    def __init__(self, stream, start, size, origin, x=None, log_hastings=None, version=None):
        self.stream, self.start, self.size = tuple(stream), int(start), int(size)
        self.origin = None if origin is None else np.array(origin, dtype=np.float64)
        self.origin_sha256 = None if origin is None else _sha256(origin)
        self.x, self.log_hastings, self.version = x, log_hastings, version
        self.restored = False  # described by a stored or another rank's record: already drawn (and counted) once

    @classmethod
    def from_record(cls, record):
        """The batch described by ``record`` (see :attr:`record`), to be drawn again at its origin."""
        batch = cls(record["stream"], record["start"], record["size"], None)
        batch.origin_sha256, batch.restored = str(record["origin_sha256"]), True
        return batch

    @property
    def record(self):
        return dict(stream=list(self.stream), start=self.start, size=self.size, origin_sha256=self.origin_sha256)


class TimewarpMove(FlowMCMove):
    """Metropolis-Hastings with a conditional proposal ``p(x', v' | x[, v])`` and auxiliary velocities.

    Each of ``n_proposals`` steps draws ``v ~ N(0, I)`` afresh, proposes ``(x', v')`` from the
    current positions and accepts ``x'`` with probability :math:`\\min(1, \\alpha)`,

    .. math:: \\log\\alpha = -u(x') + u(x) + \\log\\mathcal N(v') + \\log p(x, v \\mid x', v')
              - \\log\\mathcal N(v) - \\log p(x', v' \\mid x, v),

    ``u`` being ``thermodynamic_state.reduced_potential``. The Hastings term comes with each proposal
    from ``proposal.propose`` (:mod:`openmm_flowplugin.proposals.conditional`). Exact for any
    proposal; a poor one only lowers the acceptance.

    Prefetch: while the state does not move, proposals are drawn ``sample_batch_size`` at a time from
    it (one flow call) and used in order, one per step; a rejection is a step spent at the current
    state, and the rest of a batch is discarded after an acceptance. Each step thus uses a fresh,
    independent draw from the current state, exactly as drawing it then. (Keeping the states of a
    batch only up to its first acceptance as *one* output, as Timewarp's sampler does, would weight
    each state by its acceptance rate: not exact.)

    Parameters
    ----------
    proposal : ConditionalFlow or object
        Has ``propose(x, n, generator) -> (x_new, log_hastings)`` (see
        :mod:`openmm_flowplugin.proposals.conditional`) and ``n_atoms``; a
        :class:`~openmm_flowplugin.flows.ConditionalFlow` keeps the centre of the moved atoms fixed.
    n_proposals : int, optional
        Metropolis-Hastings steps per :meth:`apply` (default 1).
    atom_indices, redraw_velocities, topology, seed
        As :class:`~openmm_flowplugin.mcmc.FlowMCMove`: moved atoms, Maxwell-Boltzmann velocities after
        an accepting apply, the wrong-molecule check (atom count always; elements, masses and bonds
        against ``proposal.fingerprint`` when ``topology`` is given), and the root seed of every stream.
        Batch ``k`` of proposals comes from ``torch_generator(seed, *stream, DRAWS, k)``, ``k`` the step
        at which it was drawn, so copies, MPI ranks and resumed runs neither replay nor collide.
    sample_batch_size : int, optional
        Proposals drawn ahead per flow call (default 16); the most if ``adaptive_batch_size``.
    adaptive_batch_size : bool, optional
        Draw ``ceil(log 0.1 / log(1 - p))`` proposals (an acceptance within the batch with probability
        0.9, Timewarp's rule), ``p`` the acceptance rate so far, at most ``sample_batch_size``. The size
        depends on the past only, so the chain stays exact.

    Attributes
    ----------
    n_proposed, n_accepted, n_invalid, n_drawn
        As :class:`~openmm_flowplugin.mcmc.FlowMCMove` (``n_invalid``: non-finite positions, energy or
        Hastings term, each rejected).
    n_prefetched : int
        Proposals drawn ahead, used or discarded (the flow's cost in one process). A batch drawn again, by
        another MPI rank or after a resume, from the same stream key is not counted twice, so the count
        is the same for any number of ranks.

    Notes
    -----
    Costs per step: one energy evaluation; per batch, one ``propose`` call (sample and reverse log
    density of ``size`` proposals). A current state with a non-finite energy raises
    :class:`~openmm_flowplugin.mcmc.flow_move.BrokenStateError`.

    Examples
    --------
    >>> from openmmtools import cache, mcmc
    >>> from openmm_flowplugin import systems
    >>> from openmm_flowplugin.flows import ConditionalFlow
    >>> ho = systems.get("harmonic_oscillator", n_particles=3)
    >>> flow = ConditionalFlow.for_system(ho, n_layers=2, hidden=(16,), context_features=8)
    >>> move = TimewarpMove(flow, n_proposals=10, seed=1, topology=ho.topology)
    >>> sampler = mcmc.MCMCSampler(ho.thermodynamic_state(), ho.sampler_state(), move)
    >>> sampler.run(3, context_cache=cache.ContextCache(platform=None))
    >>> move.n_proposed, 0 < move.fraction_accepted < 1
    (30, True)
    """

    def __init__(self, proposal, n_proposals=1, atom_indices=None, redraw_velocities=True, seed=None, topology=None,
                 sample_batch_size=16, adaptive_batch_size=False, **kwargs):
        check_conditional_proposal(proposal)
        super().__init__(proposal, n_proposals=n_proposals, atom_indices=atom_indices, redraw_velocities=redraw_velocities,
                         seed=seed, topology=topology, sample_batch_size=sample_batch_size, **kwargs)
        self.adaptive_batch_size = bool(adaptive_batch_size)
        self.n_prefetched = 0
        self._prefetch = None

    # ------------------------------------------------------------------ statistics
    @property
    def statistics(self):
        """As :attr:`FlowMCMove.statistics <openmm_flowplugin.mcmc.FlowMCMove.statistics>`, plus ``n_prefetched``
        and ``prefetch`` (the current batch's stream key and origin digest, plain data, or None).

        Both ride along because openmmtools synchronises statistics between MPI ranks after each
        propagation: the rank that applies a state's move next knows which batch the last rank drew, and
        uses its own copy of it only if it is that batch; otherwise it draws the batch again from its
        stream key, so the chain is the single-process one whatever the number of ranks.
        """
        statistics = super().statistics
        prefetch = getattr(self, "_prefetch", None)
        statistics.update(n_prefetched=getattr(self, "n_prefetched", 0), prefetch=None if prefetch is None else prefetch.record)
        return statistics

    @statistics.setter
    def statistics(self, value):
        FlowMCMove.statistics.fset(self, value)
        self.n_prefetched = int(value.get("n_prefetched", getattr(self, "n_prefetched", 0)))
        if "prefetch" not in value:
            return
        record, local = value["prefetch"], getattr(self, "_prefetch", None)
        if record is None:
            self._prefetch = None
        elif local is None or local.record != _Prefetch.from_record(record).record:
            self._prefetch = _Prefetch.from_record(record)  # another rank's batch: drawn again here, from its stream key

    def _propose_positions(self, positions):
        """The next unused proposal drawn from ``positions``, and its log Hastings term."""
        self._pending = 0 if self._pending is None else self._pending + 1  # steps taken in this apply
        step = self.n_drawn + self._pending
        batch = self._prefetch
        if not self._usable(batch, positions, step):
            batch = self._prefetch = _Prefetch(self.stream, step, self._batch_size(), positions)
        if batch.x is None or batch.version != proposal_version(self.proposal):
            again = batch.x is None and batch.origin_sha256 is not None and batch.restored  # same key, same draws
            batch.x, batch.log_hastings = self._draw(positions, batch.start, batch.size)
            batch.version = proposal_version(self.proposal)
            self.n_prefetched += 0 if again else batch.size
        i = step - batch.start
        return batch.x[i], float(batch.log_hastings[i])

    def _usable(self, batch, positions, step):
        """Whether ``batch`` was drawn from ``positions`` by this stream and has a draw for ``step``."""
        if batch is None or batch.stream != tuple(self.stream) or not 0 <= step - batch.start < batch.size:
            return False
        if batch.origin is None:  # restored from storage: compare the stored digest
            if batch.origin_sha256 != _sha256(positions):
                return False
            batch.origin = np.array(positions, dtype=np.float64)
            return True
        return np.array_equal(batch.origin, positions)

    def _draw(self, positions, start, size):
        return draw_conditional(self.proposal, positions, size, torch_generator(self.seed, *self.stream, DRAWS, start))

    def _batch_size(self):
        if not self.adaptive_batch_size:
            return self.sample_batch_size
        return prefetch_size(self.n_accepted, self.n_proposed, self.sample_batch_size)

    # ------------------------------------------------------------------ copies and storage
    def __getstate__(self, _with_proposal=True, **kwargs):
        state = super().__getstate__(_with_proposal=_with_proposal, **kwargs)
        state.update(adaptive_batch_size=self.adaptive_batch_size, n_prefetched=self.n_prefetched,
                     prefetch=None if self._prefetch is None else self._prefetch.record)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.adaptive_batch_size = bool(state.get("adaptive_batch_size", False))
        self.n_prefetched = int(state.get("n_prefetched", 0))
        record = state.get("prefetch")
        # drawn again, from the same stream key, when the state is still its origin
        self._prefetch = None if record is None else _Prefetch.from_record(record)
