"""Exact Monte Carlo moves with learned (flow) proposals for openmmtools samplers."""

__all__ = ["FlowMCMove", "BrokenStateError"]

import math

import numpy as np
from openmm import unit

from .._openmm_fast import context_potential_energy
from .._quiet import quiet_banners
from ..proposals.buffer import ProposalBuffer
from ..proposals.protocol import (
    align_to_current,
    check_constraints,
    check_proposal_fingerprint,
    check_proposal_methods,
    checked_batch_size,
    checked_count,
    metropolis_hastings_log_ratio,
    proposal_n_atoms,
    single_log_prob,
)
from ..proposals.storage import proposal_from_state, proposal_state, share_proposal
from ..proposals.streams import ACCEPT, LOG_PROB, VELOCITIES, checked_root_seed, numpy_generator, torch_generator
from ..errors import InvalidInputError

with quiet_banners():  # openmmtools' import loads pymbar, which logs a banner
    from openmmtools import mcmc


class BrokenStateError(RuntimeError):
    """The current state has a non-finite energy: the setup is broken, not the proposal."""


class _Batch:
    """The proposals of one apply(): positions (n, n_atoms, 3) nm and log q (n,), used in order."""

    def __init__(self, x, log_q, proposal_key):
        self.x, self.log_q, self.next = x, log_q, 0
        self.proposal_key = proposal_key  # identity and parameter versions of the proposal that drew them


class FlowMCMove(mcmc.MCMCMove):
    """Independence Metropolis-Hastings move whose proposals come from a flow (or any density).

    Each of ``n_proposals`` consecutive steps proposes ``x'`` from ``proposal`` for the atoms
    ``atom_indices`` (others stay put) and accepts it with probability :math:`\\min(1, \\alpha)`,

    .. math:: \\log\\alpha = -u(x') + u(x) + \\log q(x) - \\log q(x'),

    where ``u`` is ``thermodynamic_state.reduced_potential`` (so temperature, pressure and
    alchemical parameters are respected) and ``q`` the proposal density. The move leaves the
    Boltzmann distribution of ``thermodynamic_state`` exactly invariant, whatever the quality of
    ``proposal`` (a poor one only lowers the acceptance rate).

    Parameters
    ----------
    proposal : object
        Has ``sample(n) -> (x, log_q)`` with ``x`` of shape (n, n_atoms, 3) in nm and
        ``log_prob(x) -> log_q`` of shape (n,) (see :mod:`openmm_flowplugin.proposals`). If
        ``proposal.rigid_invariant`` is true (flows on internal coordinates), every proposal is
        rigidly aligned onto the current positions of the moved atoms with
        :func:`~openmm_flowplugin.proposals.kabsch_align`: centre and orientation are kept, so
        trajectories stay viewable, and detailed balance holds because that alignment is symmetric.
    n_proposals : int, optional
        Metropolis-Hastings steps per :meth:`apply` (default 1), each with its own proposal, taken
        in order from draws made ahead (see ``sample_batch_size``). This is exact because an
        independence proposal does not depend on the current state: drawing them first has the
        same distribution as drawing each when needed, and each step is a :math:`\\pi`-invariant kernel.
    atom_indices : sequence of int, optional
        The atoms the proposal moves, in the proposal's atom order (default: all atoms).
    redraw_velocities : bool, optional
        If True (default), velocities are redrawn from the Maxwell-Boltzmann distribution after an
        :meth:`apply` that accepted at least one jump (the old velocities belong to another basin);
        if False they are kept. Both are exact: the acceptance does not depend on velocities, so they
        stay Maxwell-Boltzmann distributed and independent of the positions.
    seed : int, optional
        Root seed of every random number the move uses: proposals (passed to ``proposal.sample`` as a
        ``generator``), acceptance uniforms and velocities, each from
        ``SeedSequence(seed, spawn_key=(*stream, purpose, counter))`` (see
        :mod:`~openmm_flowplugin.proposals.streams`). ``stream`` is ``()`` for this object and gains the
        copy number with each deep copy, so openmmtools' per-state copies draw independent streams;
        ``counter`` is the number of proposals this copy has used (``n_drawn``, kept across resumes
        and synchronised by openmmtools between MPI ranks). Same seed, same chain; a resumed run continues
        its streams instead of replaying them. Default: a fresh seed (stored with the move).
    topology : openmm.app.Topology, optional
        The system's topology. If given, and the proposal has a ``fingerprint`` (the package's flows
        do), the first :meth:`apply` checks that the system is the molecule the proposal was made for
        (elements and masses) and raises ``ValueError`` otherwise. Needs ``atom_indices=None``.
    sample_batch_size : int, optional
        Proposals drawn per ``proposal.sample`` call (default 512), cached and used in order across
        :meth:`apply` calls: a flow samples a batch for little more than the cost of one draw. Exact
        for the same reason as ``n_proposals``; each draw of a stream is used once. The cache is
        dropped if the proposal's parameters change (its version,
        :func:`~openmm_flowplugin.proposals.protocol.proposal_version`).

    Attributes
    ----------
    n_proposed, n_accepted : int
        Proposals made and accepted since the last :meth:`reset_statistics` (kept across resumes).
    n_invalid : int
        Proposals rejected because positions, energy or ``log_q`` were NaN or infinite.
    n_drawn : int
        Proposals this copy's stream has used (not reset by :meth:`reset_statistics`).

    Notes
    -----
    Costs per step: one energy evaluation through the cached Context, one alignment (for
    ``rigid_invariant`` proposals) and ``1 / sample_batch_size`` of a ``proposal.sample`` call. Per
    :meth:`apply`: ``proposal.log_prob`` of the current positions unless they came from the proposal
    (they do not after MD). ``u(x')`` is
    computed as ``u(x) + beta [U(x') - U(x)]``, which equals ``reduced_potential`` for moves that keep
    the box (its pV, mu N and surface terms do not change).
    The only inexactness is floating-point error in the proposal's ``log_q`` (float32 flows).
    Systems whose moved atoms carry constraints are refused unless ``proposal.respects_constraints``.
    Deep copies share ``proposal`` (weights are never copied) and receive an independent random stream,
    so the per-state copies made by ``MultiStateSampler`` share no draws. A current state with a
    non-finite energy raises :class:`BrokenStateError` (the state is broken, not the proposal).

    References
    ----------
    Noé F, Olsson S, Köhler J, Wu H. Boltzmann generators. Science 365, eaaw1147 (2019).
    https://arxiv.org/abs/1812.01729

    Examples
    --------
    A Gaussian proposal twice too wide for a harmonic well, corrected by the Hastings term:

    >>> from openmmtools import cache, mcmc
    >>> from openmm_flowplugin import systems
    >>> from openmm_flowplugin.proposals import GaussianProposal
    >>> ho = systems.get("harmonic_oscillator")
    >>> proposal = GaussianProposal(ho.positions_nm, 2 * ho.reference.std, seed=1)
    >>> move = FlowMCMove(proposal, n_proposals=10, seed=2)
    >>> sampler = mcmc.MCMCSampler(ho.thermodynamic_state(), ho.sampler_state(), move)
    >>> sampler.run(5, context_cache=cache.ContextCache(platform=None))
    >>> move.n_proposed, 0 < move.fraction_accepted < 1
    (50, True)
    """

    def __init__(self, proposal, n_proposals=1, atom_indices=None, redraw_velocities=True, seed=None,
                 topology=None, sample_batch_size=512, **kwargs):
        super().__init__(**kwargs)
        check_proposal_methods(proposal)
        n_proposals = checked_count("n_proposals", n_proposals)
        if atom_indices is not None:
            indices = np.asarray(atom_indices)
            if indices.size == 0 or indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) and indices.dtype != bool):
                raise InvalidInputError(
                    f"atom_indices must be a non-empty 1D sequence of integer atom indices, got {atom_indices!r} "
                    "(floats are not truncated: pass ints)."
                )
            atom_indices = [int(i) for i in indices]
            if len(set(atom_indices)) != len(atom_indices) or min(atom_indices) < 0:
                raise InvalidInputError(f"atom_indices must be distinct non-negative atom indices, got {atom_indices}.")
            n_atoms = proposal_n_atoms(proposal)
            if n_atoms != len(atom_indices):
                raise InvalidInputError(
                    f"the proposal moves {n_atoms} atoms but atom_indices lists {len(atom_indices)}; "
                    f"pass the {n_atoms} indices of the atoms the proposal was made for, in its atom order."
                )
        self.proposal = proposal
        self.n_proposals = int(n_proposals)
        self.atom_indices = atom_indices
        self.redraw_velocities = bool(redraw_velocities)
        self.sample_batch_size = checked_batch_size(sample_batch_size)
        if topology is not None and atom_indices is not None:
            raise InvalidInputError("topology checks the proposal against the whole system; pass it only with atom_indices=None.")
        self._topology = topology
        self.seed = checked_root_seed(seed)
        self.stream = ()
        self.n_drawn = 0
        self._n_copies = 0
        self._restored = False
        self._buffers = {}  # (id(proposal), stream, batch size) -> ProposalBuffer, shared by deep copies
        self._reset_transients()
        self.reset_statistics()
        share_proposal(proposal)

    # ------------------------------------------------------------------ statistics
    @property
    def statistics(self):
        """``dict(n_proposed=, n_accepted=, n_invalid=, n_drawn=)``; settable, as openmmtools' moves.

        ``n_drawn`` rides along because openmmtools synchronises statistics between MPI ranks: the rank
        that applies a state's move next continues its stream where the last one stopped.
        """
        return dict(n_proposed=self.n_proposed, n_accepted=self.n_accepted, n_invalid=self.n_invalid, n_drawn=self.n_drawn)

    @statistics.setter
    def statistics(self, value):
        self.n_proposed = int(value["n_proposed"])
        self.n_accepted = int(value["n_accepted"])
        self.n_invalid = int(value.get("n_invalid", 0))
        self.n_drawn = int(value.get("n_drawn", self.n_drawn))

    def reset_statistics(self):
        """Set ``n_proposed``, ``n_accepted`` and ``n_invalid`` to zero (the stream position ``n_drawn`` stays)."""
        self.n_proposed = self.n_accepted = self.n_invalid = 0

    @property
    def fraction_accepted(self):
        """Accepted / proposed; NaN before any proposal."""
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")

    # ------------------------------------------------------------------ the move
    def apply(self, thermodynamic_state, sampler_state, context_cache=None):
        """Apply ``n_proposals`` Metropolis-Hastings steps to ``sampler_state`` (modified in place).

        ``sampler_state`` (and the statistics) change only once the move has completed: if the
        proposal or the energy raises, the exception propagates and they are untouched.

        Parameters
        ----------
        thermodynamic_state : openmmtools.states.ThermodynamicState
        sampler_state : openmmtools.states.SamplerState
        context_cache : openmmtools.cache.ContextCache, optional
            Default: openmmtools' global context cache.
        """
        self._restored = False  # used as it is: later copies branch off as usual
        context, _ = self._get_context_cache(context_cache).get_context(thermodynamic_state)
        atoms = self._moved_atoms(context.getSystem())
        sampler_state.apply_to_context(context, ignore_velocities=True)
        positions = np.array(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        if not np.isfinite(positions).all():  # OpenMM would raise its own exception on them
            raise BrokenStateError("the current positions are not finite (NaN or inf): the state is broken (the proposal is not "
                                   "at fault). Check the starting positions and the system before this move.")
        u_current = thermodynamic_state.reduced_potential(context)
        if not math.isfinite(u_current):
            raise BrokenStateError(
                f"the current state has reduced potential {u_current}: the positions, box or Context are broken (the "
                "proposal is not at fault). Check the starting positions (minimize them) and the system before this move."
            )
        # Positions-only moves keep the box, so u(x') - u(x) = beta [U(x') - U(x)] exactly (pV, mu N, gamma A fixed).
        beta = 1.0 / thermodynamic_state.kT.value_in_unit(unit.kilojoule_per_mole)
        u_offset = u_current - beta * context_potential_energy(context)
        n_accepted = n_invalid = 0
        uniforms = numpy_generator(self.seed, *self.stream, ACCEPT, self.n_drawn)
        try:
            for _ in range(self.n_proposals):
                proposed, log_q_ratio = self._propose_positions(positions[atoms])
                trial = positions.copy()
                trial[atoms] = proposed
                u_proposed = math.nan
                if np.isfinite(proposed).all():
                    u_proposed = u_offset + beta * context_potential_energy(context, trial)
                log_alpha = metropolis_hastings_log_ratio(u_current, u_proposed, 0.0, -log_q_ratio)
                n_invalid += not np.isfinite(u_proposed) or not np.isfinite(log_q_ratio)
                if log_alpha >= 0.0 or uniforms.random() < math.exp(log_alpha):
                    positions, u_current = trial, u_proposed
                    n_accepted += 1
        finally:
            self._pending = None
        if n_accepted:
            context.setPositions(positions)
            if self.redraw_velocities:
                velocities = numpy_generator(self.seed, *self.stream, VELOCITIES, self.n_drawn)
                context.setVelocities(self._maxwell_boltzmann(context.getSystem(), thermodynamic_state.kT, velocities))
                if context.getSystem().getNumConstraints():  # atoms the move leaves alone may carry constraints:
                    context.applyVelocityConstraints(1e-6)  # the projection of a Maxwell-Boltzmann draw is the constrained one
            sampler_state.update_from_context(context, ignore_velocities=not self.redraw_velocities)
        self.n_proposed += self.n_proposals
        self.n_drawn += self.n_proposals
        self.n_accepted += n_accepted
        self.n_invalid += n_invalid

    def _propose_positions(self, positions):
        """Propose new positions for the moved atoms.

        Subclasses may override this hook (e.g. with a conditional proposal).

        Parameters
        ----------
        positions : numpy.ndarray, shape=(n_moved_atoms, 3)
            Current positions of the moved atoms in nm.

        Returns
        -------
        proposed_positions : numpy.ndarray, shape=(n_moved_atoms, 3)
            nm.
        log_q_ratio : float
            Hastings term :math:`\\log q(x \\mid x') - \\log q(x' \\mid x)`; NaN or +inf rejects.
        """
        if self._pending is None:
            buffer = self._proposal_buffer()
            x, log_q = buffer.draws(self.n_drawn, self.n_proposals)
            self._pending = _Batch(x, log_q, (id(self.proposal), buffer.proposal_version))
        batch = self._pending
        i = batch.next
        batch.next += 1
        proposed = align_to_current(self.proposal, batch.x[i], positions)
        log_q_current, log_q_proposed = self._log_q(positions, batch.proposal_key), float(batch.log_q[i])
        self._log_q_memo = (batch.proposal_key, [(positions.copy(), log_q_current), (proposed, log_q_proposed)])
        return proposed, log_q_current - log_q_proposed

    # ------------------------------------------------------------------ helpers
    def _log_q(self, positions, proposal_key):
        """log q of the current positions, reused when they are the last proposal (or last current)."""
        memo_key, memo = self._log_q_memo
        for memo_positions, memo_log_q in memo if memo_key == proposal_key else ():
            if np.array_equal(memo_positions, positions):
                return memo_log_q
        return single_log_prob(self.proposal, positions,
                               lambda: torch_generator(self.seed, *self.stream, LOG_PROB, self.n_drawn))

    def _proposal_buffer(self):
        key = (id(self.proposal), self.stream, self.sample_batch_size)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.proposal is not self.proposal or buffer.seed != self.seed:
            buffer = self._buffers[key] = ProposalBuffer(self.proposal, self.sample_batch_size, seed=self.seed, stream=self.stream)
        return buffer

    def _reset_transients(self):
        self._pending = None  # the batch of proposals being used by apply()
        self._log_q_memo = (None, [])  # (proposal key, [(positions, log q)]): log q of recent states

    def _moved_atoms(self, system):
        n_particles = system.getNumParticles()
        if self.atom_indices is None:
            n_atoms = proposal_n_atoms(self.proposal)
            if n_atoms != n_particles:
                raise InvalidInputError(
                    f"the proposal moves {n_atoms} atoms but the system has {n_particles}; "
                    "pass atom_indices listing the atoms it moves, or a proposal made for this system."
                )
            atoms = slice(None)
            moved = None
            if self._topology is not None:
                check_proposal_fingerprint(self.proposal, system, self._topology)
                self._topology = None  # checked once
        else:
            if max(self.atom_indices, default=-1) >= n_particles:
                raise InvalidInputError(f"atom_indices go up to {max(self.atom_indices)} but the system has {n_particles} atoms.")
            atoms = moved = np.asarray(self.atom_indices)
        pairs = (system.getConstraintParameters(k)[:2] for k in range(system.getNumConstraints()))
        check_constraints(self.proposal, pairs, None if moved is None else set(self.atom_indices))
        return atoms

    def _maxwell_boltzmann(self, system, kT, rng):
        """Velocities in nm/ps, shape (n_particles, 3), at thermal energy ``kT``; massless particles get 0."""
        masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
        kT = kT.value_in_unit(unit.kilojoule_per_mole)
        sigma = np.sqrt(np.divide(kT, masses, out=np.zeros_like(masses), where=masses > 0))
        return sigma[:, None] * rng.standard_normal((len(masses), 3))

    # ------------------------------------------------------------------ copies and storage
    def __deepcopy__(self, memo):
        copy = type(self).__new__(type(self))
        copy.__setstate__(self.__getstate__(_with_proposal=False))
        copy.proposal = self.proposal
        copy._topology = self._topology
        copy._buffers = self._buffers
        if self._restored:
            # A move just read from storage, deep-copied by openmmtools' from_storage before use: the copy continues
            # the stored stream (a resumed run draws what the uninterrupted run would have), and this object moves
            # to its next unused child stream, so no draw is ever used by two objects.
            copy.stream, copy.n_drawn, copy._n_copies = self.stream, self.n_drawn, self._n_copies + 1
            self.stream, self.n_drawn, self._n_copies = self.stream + (self._n_copies,), 0, 0
            self._restored = copy._restored = False
        else:
            copy.stream, copy.n_drawn, copy._n_copies = self.stream + (self._n_copies,), 0, 0
            copy._restored = False
            self._n_copies += 1
        memo[id(self)] = copy
        return copy

    def __getstate__(self, _with_proposal=True, **kwargs):
        state = dict(
            n_proposals=self.n_proposals,
            atom_indices=None if self.atom_indices is None else list(self.atom_indices),
            redraw_velocities=self.redraw_velocities,
            sample_batch_size=self.sample_batch_size,
            seed=self.seed,
            stream=list(self.stream),
            n_copies=self._n_copies,
        )
        state.update(self.statistics)
        if _with_proposal:
            state["proposal"] = proposal_state(self.proposal)
        return state

    def __setstate__(self, state):
        self.n_proposals = int(state["n_proposals"])
        self.atom_indices = None if state["atom_indices"] is None else [int(i) for i in state["atom_indices"]]
        self.redraw_velocities = bool(state["redraw_velocities"])
        self.sample_batch_size = int(state.get("sample_batch_size", 512))
        self._topology = None  # not stored: the check is made by the run that built the move
        self._buffers = {}
        if "seed" in state:
            self.seed, self.stream, self._n_copies = int(state["seed"]), tuple(int(k) for k in state["stream"]), int(state["n_copies"])
        else:  # stored by 0.1, which kept a numpy generator state: derive a root seed from it, continue after n_proposed
            self.seed, self.stream, self._n_copies = int(state["rng_state"]["state"]["state"]) % 2**63, (), 0
        self.n_drawn = int(state.get("n_drawn", state["n_proposed"]))
        self._restored = True  # read from storage: its first deep copy continues its stream (see __deepcopy__)
        self.statistics = state
        self._reset_transients()
        if "proposal" in state:
            self.proposal = proposal_from_state(state["proposal"])
