"""An OpenMM integrator that interleaves Langevin dynamics with learned Metropolis-Hastings jumps.

:class:`FlowMCIntegrator` replaces ``LangevinMiddleIntegrator`` in an unmodified OpenMM script: every
``jump_interval`` steps it attempts Metropolis-Hastings jumps to configurations drawn from a learned
``proposal`` (the protocol of :mod:`openmm_flowplugin.proposals`), with the energies and the
accept/reject evaluated on the device by a ``CustomIntegrator`` program.
"""

__all__ = ["FlowMCIntegrator"]


import numpy as np
import openmm

from ..proposals.protocol import check_proposal_fingerprint, check_proposal_methods, checked_count, proposal_n_atoms
from ..proposals.conditional import is_conditional_proposal
from ._draws import ConditionalDraws, IndependentDraws, conditional_n_atoms
from ..units import friction_per_ps, kelvin, kT, timestep_ps
from .programs import GHMCProgram, add_ghmc_step, add_ghmc_variables
from ..errors import InvalidInputError, InvalidTypeError


def _add_guard(integrator):
    """Begin a program with a guard: unless Python armed it for this step, positions and velocities become NaN.

    A deserialized copy (XML) is a plain ``CompoundIntegrator`` whose current integrator is this program;
    nothing arms it, so it fails loudly instead of silently running MD without jumps.
    """
    integrator.beginIfBlock("fmc_armed < 0.5")
    integrator.addComputePerDof("x", "sqrt(fmc_armed - 1)")  # NaN, computed on the device (no NaN literal)
    integrator.addComputePerDof("v", "sqrt(fmc_armed - 1)")
    integrator.endBlock()
    integrator.addComputeGlobal("fmc_armed", "0")


#: Velocities after an accepted jump. Langevin mode carries the velocity of the step boundary across the
#: jump, ``v + dt/2 (f(x) - f(x')) / m`` (``fmc_v_b`` is LangevinMiddle's full-step velocity at x): measured to
#: add no bias on harmonic wells at 1-4 fs, where a Maxwell-Boltzmann redraw added up to +174 standard errors
#: (docs/integrator_exactness.md). Exact mode redraws: GHMC leaves the velocities exactly Maxwell-Boltzmann.
VELOCITY_AFTER_JUMP = {"langevin": "fmc_v_b - 0.5*dt*f/m", "exact": "sqrt(fmc_kT/m)*gaussian"}


def _jump_program(integrator, n_proposals, exact=False):
    """Build the jump program: [probe], [MH jumps], one LangevinMiddle (``exact``: GHMC) step, [snapshot of x]."""
    add_global, add_dof = integrator.addComputeGlobal, integrator.addComputePerDof
    # Once per Context: does constraining move a perturbed configuration? (no handle on the System needed)
    integrator.beginIfBlock("fmc_probe_done < 0.5")
    add_dof("fmc_x_old", "x")
    add_dof("x", "x + 0.01*gaussian")
    add_dof("fmc_x1", "x")
    integrator.addConstrainPositions()
    integrator.addComputeSum("fmc_constraint_shift", "(x - fmc_x1)^2")
    add_dof("x", "fmc_x_old")
    add_global("fmc_probe_done", "1")
    integrator.endBlock()
    # Metropolis-Hastings over the proposals Python loaded for the configuration saved in x_snap.
    integrator.beginIfBlock("fmc_jump_ready > 0.5")
    integrator.addComputeSum("fmc_stale", "(x - fmc_x_snap)^2")
    integrator.beginIfBlock("fmc_stale = 0")
    add_global("fmc_u_cur", "energy/fmc_kT")
    if not exact:
        # f at the current x, kept: after a rejection the Langevin step needs it again, and restoring x
        # drops OpenMM's cached forces (one force evaluation saved per rejected jump)
        add_dof("fmc_f", "f")
        add_global("fmc_have_f", "1")
        add_dof("fmc_v_b", "v + 0.5*dt*fmc_f/m")  # LangevinMiddle's full-step velocity at the current x
    add_global("fmc_log_q_cur", "0")
    add_global("fmc_any_accepted", "0")
    for j in range(n_proposals):
        add_global("fmc_n_proposed", "fmc_n_proposed + 1")
        add_global("fmc_n_invalid", f"fmc_n_invalid + 1 - fmc_ok{j}")  # NaN/inf positions or log q (seen by Python)
        integrator.beginIfBlock(f"fmc_ok{j} > 0.5")
        add_dof("fmc_x_old", "x")
        add_dof("x", f"fmc_x_prop{j}")
        add_global("fmc_u_new", "energy/fmc_kT")
        add_global("fmc_n_invalid", "fmc_n_invalid + 1 - step(1e300 - abs(fmc_u_new))")  # NaN or infinite energy
        # accept iff log(uniform) < u - u' + log q(x) - log q(x'); NaN or +inf energies give 0
        add_global("fmc_accepted", f"step(fmc_u_cur - fmc_u_new + fmc_log_q_cur - fmc_log_q{j} - log(uniform))")
        integrator.beginIfBlock("fmc_accepted < 0.5")
        add_dof("x", "fmc_x_old")
        integrator.endBlock()
        add_global("fmc_u_cur", "select(fmc_accepted, fmc_u_new, fmc_u_cur)")
        add_global("fmc_log_q_cur", f"select(fmc_accepted, fmc_log_q{j}, fmc_log_q_cur)")
        add_global("fmc_n_accepted", "fmc_n_accepted + fmc_accepted")
        add_global("fmc_any_accepted", "max(fmc_any_accepted, fmc_accepted)")
        integrator.endBlock()
    integrator.beginIfBlock("fmc_any_accepted > 0.5")
    if not exact:
        add_dof("fmc_f", "f")  # at the accepted x'
    add_dof("v", VELOCITY_AFTER_JUMP["exact" if exact else "langevin"])
    integrator.addConstrainVelocities()
    integrator.endBlock()
    integrator.endBlock()
    add_global("fmc_jump_ready", "0")
    integrator.endBlock()
    if exact:
        add_ghmc_step(integrator)  # the MD step of mode="exact" (programs.py)
    else:
        # LangevinMiddle (V, R, O, R, V-by-constraint) exactly as OpenMM's own LangevinMiddleIntegrator
        add_global("fmc_a", "exp(-fmc_friction*dt)")
        add_global("fmc_b", "sqrt(1 - exp(-2*fmc_friction*dt))")
        add_dof("fmc_x1", "x")
        integrator.addUpdateContextState()
        integrator.addComputeSum("fmc_moved", "(x - fmc_x1)^2")  # e.g. a barostat move: the kept forces are stale
        integrator.beginIfBlock("fmc_moved != 0")
        add_global("fmc_have_f", "0")
        integrator.endBlock()
        integrator.beginIfBlock("fmc_have_f < 0.5")  # no jump in this step: forces at x as LangevinMiddle takes them
        add_dof("fmc_f", "f")
        integrator.endBlock()
        add_global("fmc_have_f", "0")
        add_dof("v", "v + dt*fmc_f/m")
        integrator.addConstrainVelocities()
        add_dof("x", "x + 0.5*dt*v")
        add_dof("v", "fmc_a*v + fmc_b*sqrt(fmc_kT/m)*gaussian")
        add_dof("x", "x + 0.5*dt*v")
        add_dof("fmc_x1", "x")
        integrator.addConstrainPositions()
        add_dof("v", "v + (x - fmc_x1)/dt")
    integrator.beginIfBlock("fmc_snap > 0.5")
    add_dof("fmc_x_snap", "x")
    integrator.endBlock()


class FlowMCIntegrator(openmm.CompoundIntegrator):
    """Langevin dynamics interleaved with Metropolis-Hastings jumps from a learned proposal.

    A drop-in replacement for ``openmm.LangevinMiddleIntegrator``: an unmodified
    ``openmm.app.Simulation`` (reporters, ``saveCheckpoint``/``loadCheckpoint``,
    ``saveState``/``loadState``) on any platform drives it through :meth:`step`.

    Parameters
    ----------
    temperature : openmm.unit.Quantity or float
        Temperature (K if a bare number), finite and > 0.
    friction : openmm.unit.Quantity or float
        Friction coefficient (1/ps if a bare number), finite and >= 0.
    timestep : openmm.unit.Quantity or float
        MD step size (ps if a bare number), finite and > 0. The setters check the same ranges.
    proposal : object
        ``sample(n) -> (x, log_q)`` and ``log_prob(x) -> log_q`` with ``x`` of shape=(n, n_atoms, 3) in nm
        (see :mod:`openmm_flowplugin.proposals`). ``rigid_invariant = True`` proposals are aligned onto
        the current configuration with :func:`~openmm_flowplugin.proposals.kabsch_align`.
        Or a *conditional* (Timewarp-style) proposal with ``propose(x, n, generator) -> (x', h)`` and
        ``n_atoms``, e.g. a :class:`~openmm_flowplugin.flows.ConditionalFlow`
        (:mod:`openmm_flowplugin.proposals.conditional`): each jump draws one proposal from the
        configuration it starts from and accepts with probability ``min(1, exp(u - u' + h))``, ``h`` the
        proposal's log Hastings term (auxiliary velocities drawn afresh for every jump). A proposal with a
        ``propose`` method is taken as conditional, as by :class:`~openmm_flowplugin.mcmc.TimewarpMove`.
    jump_interval : int
        MD steps between jump attempts (default 100).
    n_proposals : int
        Proposals per jump attempt, applied as consecutive Metropolis-Hastings steps (default 1). A
        conditional proposal makes one per jump (others are refused: proposal 2 would have to come from
        the state after proposal 1, which only the device knows).
    system : openmm.System, optional
        If given, atom count, constraints and fingerprint are checked at construction; otherwise the
        atom count and constraints are checked on the first :meth:`step`, before any jump.
    topology : openmm.app.Topology, optional
        With ``system``, lets a proposal's ``fingerprint`` be checked.
    sample_batch_size : int
        Proposals drawn per ``proposal.sample`` call and used in turn (default 512): flows sample a
        batch for little more than the cost of one. Exact, since proposals do not depend on the state
        (see :class:`~openmm_flowplugin.proposals.ProposalBuffer`). Unused by a conditional proposal,
        which draws from the state of each jump (a batch drawn ahead would be stale after the MD between jumps).
    seed : int, optional
        Root seed of the proposal stream: draw ``k`` comes from batch ``k // sample_batch_size`` drawn
        with the generator of ``(seed, *stream, DRAWS, batch)`` (:mod:`~openmm_flowplugin.proposals.streams`);
        a conditional proposal draws jump ``k`` with the generator of ``(seed, *stream, DRAWS, k)``.
        Default: a fresh seed from the OS. The device's own random numbers (Langevin noise, acceptance
        uniforms) are seeded by :meth:`setRandomNumberSeed`, as in OpenMM.
    mode : {"langevin", "exact"}
        MD between jumps. ``"langevin"`` (default): OpenMM's ``LangevinMiddleIntegrator`` (see the
        warning). ``"exact"``: generalized hybrid Monte Carlo
        (:class:`~openmm_flowplugin.integrators.programs.GHMCProgram`: velocity Verlet steps, each
        Metropolized on the total energy, velocities reversed on rejection, partial refresh with
        ``exp(-friction*dt)``), so the whole chain samples ``exp(-U(x)/kT)`` exactly at any time step.
        Cost measured on alanine dipeptide in vacuum (Reference, 1 fs, jumps every 100 steps): 0.39x the
        steps per second of ``"langevin"`` (two force/energy evaluations per step instead of one, two
        kinetic-energy sums). Keep the MD acceptance (:attr:`md_acceptance_rate`) above ~90 % by the
        time step. Its temperature follows :meth:`setTemperature` and openmmtools' states (it is an
        openmmtools ``ThermostatedIntegrator``).

    Attributes
    ----------
    n_proposed, n_accepted : int
        Proposals evaluated and accepted (stored in the Context: in checkpoints and saved states).
    n_invalid : int
        Proposals rejected because positions or ``log q`` were NaN or infinite, or the energy was not
        finite (included in ``n_proposed``).
    n_drawn : int
        Position in the proposal stream: the draws used so far (stored in the Context, never reset).
    acceptance_rate : float
        ``n_accepted / n_proposed``, NaN before any proposal.
    md_n_proposed, md_n_accepted, md_acceptance_rate : int, int, float
        ``mode="exact"``: Metropolized MD steps proposed and accepted, and their ratio (all MD steps,
        also the one after each jump). ``mode="langevin"``: 0, 0 and NaN (Langevin steps are not
        Metropolized).
    statistics : dict
        ``n_proposed``, ``n_accepted``, ``n_invalid``; settable, reset by :meth:`reset_statistics`.
    seed : int
        Root seed of the proposal stream; ``stream`` (tuple) is ``()`` here and ``stream + (k,)`` for the
        k-th deep copy.

    Notes
    -----
    The integrator is a ``CompoundIntegrator``: OpenMM's own ``LangevinMiddleIntegrator`` does the MD
    steps, and a ``CustomIntegrator`` program does the steps around each jump: the step before a jump
    copies ``x`` into a per-DOF variable, Python draws ``x'`` and ``log q`` there, and the next step
    evaluates ``u = U/kT`` at ``x`` and ``x'`` on the device, accepts with probability
    ``min(1, exp(u - u' + log q(x) - log q(x')))``, then does one LangevinMiddle step. A proposal with NaN
    coordinates or ``log q`` is rejected; if the Context's positions were changed between the two steps
    the jump is deferred, not made against stale positions. The proposal is independent of the state, so
    consecutive MH steps over ``n_proposals`` draws leave the Boltzmann distribution of ``x``
    invariant. After an accepted jump, ``mode="langevin"`` carries LangevinMiddle's full-step velocity
    across it (``v <- v + dt/2 (f(x) - f(x')) / m``), which of the treatments measured adds the least
    bias (none measurable on harmonic wells at 1-4 fs); ``mode="exact"`` redraws velocities from
    Maxwell-Boltzmann at ``kT``, exact for GHMC. A conditional proposal is drawn from the snapshot
    (the jump's own starting configuration) and loaded with ``log q(x) - log q(x') = h``, its log Hastings
    term, so the device's test is ``min(1, exp(u - u' + h))``: one exact Metropolis-Hastings step on
    positions and the proposal's auxiliary velocities (:mod:`openmm_flowplugin.proposals.conditional`).

    *Temperature.* ``kT`` and the friction of the jump program are read from the MD integrator
    (``getIntegrator(0)``) before every program step, so a temperature set by anyone, e.g. openmmtools'
    ``ThermodynamicState.apply_to_context`` (which sets each sub-integrator's temperature) under replica
    exchange, is the one the jumps use. *Pressure.* With a ``MonteCarloBarostat`` the jumps keep the box
    and evaluate energies in the current box (a move at fixed volume: ``pV`` does not change).

    *Proposal stream.* Jump ``i`` uses draws ``n_drawn`` to ``n_drawn + n_proposals - 1``; ``n_drawn`` is
    a global variable of the Context, so checkpoints and saved states carry it: a run resumed with the
    same ``seed`` continues the stream instead of replaying it (with the device's random state from a
    checkpoint, on the Reference platform the resumed run repeats the original bit for bit, wherever the
    checkpoint was taken: the jump phase, steps to the next jump, is a global variable as well).

    *Copies.* ``copy.deepcopy`` (openmmtools' ``IntegratorMove`` copies its integrator at every apply)
    builds a new FlowMCIntegrator with the current settings, statistics and jump phase, sharing
    ``proposal`` (weights are never copied) and drawing from its own stream (``stream + (k,)``).

    *XML.* ``XmlSerializer.serialize`` keeps only the C++ part: a deserialized integrator (an
    ``integrator.xml``, openmmtools' stored ``IntegratorMove``) is a plain ``CompoundIntegrator``, which
    cannot jump. So that it cannot silently run MD without jumps, its current integrator is the jump
    program, which sets positions and velocities to NaN unless this class's :meth:`step` armed it
    (openmmtools then raises ``IntegratorMoveError``; reporters report NaN energies). To restore the
    hybrid, construct a FlowMCIntegrator again with the proposal and the same arguments and load the
    saved state into its Simulation: ``simulation.loadCheckpoint(...)`` or ``simulation.loadState(...)``
    (statistics, jump phase and stream position come back from the file).

    .. warning:: ``mode="langevin"`` is not exact. Each jump is an exact Metropolis-Hastings step for
       ``exp(-U(x)/kT)``, but the MD part has LangevinMiddle's O(dt^2) configurational time-step error
       (none for harmonic potentials), and no velocity treatment after a jump is exactly invariant for
       the discretized dynamics' stationary (x, v) distribution of an anharmonic potential: the one used
       here measured no bias on harmonic wells and about 1 % of ``<U>`` at 2 fs on a strongly quartic one,
       where redrawing from Maxwell-Boltzmann (version 0.1) was 5-37 standard errors off
       (``docs/integrator_exactness.md``). ``mode="exact"`` is exact at any time step.

    Examples
    --------
    >>> from openmm import app, unit
    >>> from openmm_flowplugin import systems
    >>> from openmm_flowplugin.proposals import GaussianProposal
    >>> ho = systems.get("harmonic_oscillator")
    >>> proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=0)
    >>> integrator = FlowMCIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 2 * unit.femtosecond,
    ...                               proposal, jump_interval=10, system=ho.system)
    >>> simulation = app.Simulation(ho.topology, ho.system, integrator)
    >>> simulation.context.setPositions(ho.positions)
    >>> simulation.step(100)
    >>> integrator.n_proposed, simulation.currentStep
    (10, 100)

    An XML copy is C++ only (stepping it sets the positions to NaN); restore the hybrid by building the
    integrator again and loading the state (``Simulation.loadState``/``loadCheckpoint`` do the same from files):

    >>> import openmm
    >>> type(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(integrator))).__name__
    'CompoundIntegrator'
    >>> state = simulation.context.getState(positions=True, velocities=True, integratorParameters=True)
    >>> restored = FlowMCIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 2 * unit.femtosecond, proposal, jump_interval=10)
    >>> resumed = app.Simulation(ho.topology, ho.system, restored)
    >>> resumed.context.setState(state)
    >>> restored.n_proposed, restored.n_drawn  # statistics, jump phase and stream position come with the state
    (10, 10)
    """

    def __init__(self, temperature, friction, timestep, proposal, jump_interval=100, n_proposals=1,
                 system=None, topology=None, sample_batch_size=512, seed=None, mode="langevin"):
        arguments = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__()
        self._arguments = arguments  # rebuilds deep copies (never with system/topology: checked here once)
        if mode not in ("langevin", "exact"):
            raise InvalidInputError(f"mode must be 'langevin' or 'exact', got {mode!r}.")
        self.mode = mode
        temperature = kelvin(temperature)
        friction, timestep = friction_per_ps(friction), timestep_ps(timestep)
        jump_interval, n_proposals = checked_count("jump_interval", jump_interval), checked_count("n_proposals", n_proposals)
        self.proposal = proposal
        self.jump_interval, self.n_proposals = jump_interval, n_proposals
        self.conditional = is_conditional_proposal(proposal)
        if self.conditional and n_proposals != 1:
            raise InvalidInputError(
                f"A conditional proposal makes one proposal per jump (n_proposals=1), got n_proposals={n_proposals}: a "
                "second proposal would have to come from the state after the first, which only the device knows. Use "
                "a shorter jump_interval for more jumps.")
        if not self.conditional:
            check_proposal_methods(proposal)  # before proposal_n_atoms, which may call sample(1)
        self.n_atoms = conditional_n_atoms(proposal) if self.conditional else proposal_n_atoms(proposal)
        sample_batch_size = checked_count("sample_batch_size", sample_batch_size)
        self._respects_constraints = bool(getattr(proposal, "respects_constraints", False))
        self._validated = False
        self.stream, self._n_copies = (), 0  # a deep copy draws from stream + (copy number,)
        if self.conditional:
            self._draws = ConditionalDraws(proposal, self.n_atoms, seed, self.stream)
        else:
            self._draws = IndependentDraws(proposal, sample_batch_size, self.n_atoms, seed, self.stream)
        if mode == "exact":
            self._md = GHMCProgram(temperature, friction, timestep)
        else:
            self._md = openmm.LangevinMiddleIntegrator(temperature, friction, timestep)
        self._jump = openmm.CustomIntegrator(timestep)
        self._jump.setRandomNumberSeed(self._md.getRandomNumberSeed())  # see setRandomNumberSeed
        for name, value in (("fmc_kT", kT(temperature)), ("fmc_friction", friction), ("fmc_a", 0.0), ("fmc_b", 0.0),
                            ("fmc_probe_done", 0.0), ("fmc_constraint_shift", 0.0), ("fmc_jump_ready", 0.0), ("fmc_snap", 0.0),
                            ("fmc_stale", 0.0), ("fmc_until_jump", float(self.jump_interval - 1)), ("fmc_n_proposed", 0.0),
                            ("fmc_n_accepted", 0.0), ("fmc_u_cur", 0.0), ("fmc_u_new", 0.0), ("fmc_log_q_cur", 0.0),
                            ("fmc_accepted", 0.0), ("fmc_any_accepted", 0.0), ("fmc_armed", 0.0), ("fmc_n_invalid", 0.0),
                            ("fmc_n_drawn", 0.0), ("fmc_have_f", 0.0), ("fmc_moved", 0.0)):
            self._jump.addGlobalVariable(name, value)
        for j in range(self.n_proposals):
            self._jump.addGlobalVariable(f"fmc_log_q{j}", 0.0)
            self._jump.addGlobalVariable(f"fmc_ok{j}", 0.0)
            self._jump.addPerDofVariable(f"fmc_x_prop{j}", 0.0)
        for name in ("fmc_x_snap", "fmc_x_old", "fmc_x1", "fmc_v_b", "fmc_f"):
            self._jump.addPerDofVariable(name, 0.0)
        if mode == "exact":
            add_ghmc_variables(self._jump, temperature, friction)
        _add_guard(self._jump)
        _jump_program(self._jump, self.n_proposals, exact=mode == "exact")
        self.addIntegrator(self._md)  # ownership passes to C++; the Python proxies stay valid with self
        self.addIntegrator(self._jump)
        self.setCurrentIntegrator(1)  # at rest the guarded program is current: what a deserialized copy would step
        if system is not None:
            self._check_system(system.getNumParticles(), system.getNumConstraints())
            check_proposal_fingerprint(proposal, system, topology)

    # --- OpenMM protocol --------------------------------------------------------------------------
    def step(self, steps):
        """Advance by ``steps`` time steps, attempting a jump every ``jump_interval`` steps."""
        # MD steps before the next jump step, read from the Context: a checkpoint or state loaded into it sets the phase
        until = int(self._jump.getGlobalVariableByName("fmc_until_jump"))
        if self._validated and until > steps and type(steps) is int:
            self.setCurrentIntegrator(0)  # fast path: plain MD, as cheap as the native call
            try:
                openmm.CompoundIntegrator.step(self, steps)
            finally:
                self.setCurrentIntegrator(1)  # at rest the guarded program is current (see _add_guard)
            self._jump.setGlobalVariableByName("fmc_until_jump", float(until - steps))  # the phase checkpoints store
            return
        remaining = int(steps)
        if remaining != steps:
            raise InvalidTypeError(f"steps must be an integer, got {steps!r}.")
        get, put = self._jump.getGlobalVariableByName, self._jump.setGlobalVariableByName
        if not self._validated and get("fmc_probe_done") > 0.5:
            self._validate_in_context()  # a loaded checkpoint/state: the probe ran already, no extra program step
        while remaining > 0:
            if until >= 2 and self._validated:
                n = min(until - 1, remaining)
                self.setCurrentIntegrator(0)
                try:
                    openmm.CompoundIntegrator.step(self, n)
                finally:
                    self.setCurrentIntegrator(1)
                until, remaining = until - n, remaining - n
                put("fmc_until_jump", float(until))  # the phase checkpoints store, also after MD-only steps
                continue
            jump = until <= 0 and get("fmc_jump_ready") > 0.5
            next_until = self.jump_interval - 1 if jump else max(until - 1, 0)
            if not jump:
                put("fmc_jump_ready", 0.0)
            put("fmc_snap", float(next_until == 0))
            put("fmc_until_jump", float(next_until))  # the phase checkpoints store
            self._sync_md_settings()
            put("fmc_armed", 1.0)  # this one step runs the program instead of the guard's NaN
            self.setCurrentIntegrator(1)
            openmm.CompoundIntegrator.step(self, 1)
            remaining -= 1
            if not self._validated:
                self._validate_in_context()
            if jump and next_until > 0 and get("fmc_stale") != 0:
                next_until = 1  # positions changed since the snapshot: jump deferred, snapshot next step
                put("fmc_until_jump", 1.0)
            if next_until == 0:
                self._load_proposals()
            until = next_until

    # --- statistics -----------------------------------------------------------------------------------
    @property
    def sample_batch_size(self):
        """Proposals drawn per ``proposal.sample`` call (1 for a conditional proposal)."""
        return self._draws.batch_size

    @property
    def n_proposed(self):
        """Number of proposals evaluated (rejected NaN proposals included)."""
        return int(self._jump.getGlobalVariableByName("fmc_n_proposed"))

    @property
    def n_accepted(self):
        """Number of accepted proposals."""
        return int(self._jump.getGlobalVariableByName("fmc_n_accepted"))

    @property
    def n_invalid(self):
        """Number of proposals rejected because positions or ``log q`` were NaN/inf, or the energy was not finite."""
        return int(self._jump.getGlobalVariableByName("fmc_n_invalid"))

    @property
    def n_drawn(self):
        """Draws of this integrator's proposal stream used so far: the next jump uses draws from here on.

        Stored in the Context (checkpoints and saved states), so a resumed run continues the stream
        instead of replaying it; :meth:`reset_statistics` leaves it alone.
        """
        return int(self._jump.getGlobalVariableByName("fmc_n_drawn"))

    @property
    def seed(self):
        """Root seed of the proposal stream (given, or drawn from the OS at construction)."""
        return self._draws.seed

    @property
    def acceptance_rate(self):
        """``n_accepted / n_proposed``; NaN before any proposal."""
        n_proposed = self.n_proposed
        return self.n_accepted / n_proposed if n_proposed else float("nan")

    @property
    def md_n_proposed(self):
        """MD steps Metropolized so far (``mode="exact"``; 0 in ``mode="langevin"``)."""
        return self._md_count("fmc_md_n_proposed")

    @property
    def md_n_accepted(self):
        """Metropolized MD steps accepted (``mode="exact"``; 0 in ``mode="langevin"``)."""
        return self._md_count("fmc_md_n_accepted")

    @property
    def md_acceptance_rate(self):
        """``md_n_accepted / md_n_proposed``; NaN before any step and in ``mode="langevin"``."""
        n_proposed = self.md_n_proposed
        return self.md_n_accepted / n_proposed if n_proposed else float("nan")

    def _md_count(self, name):
        if self.mode != "exact":
            return 0
        return int(self._md.getGlobalVariableByName(name) + self._jump.getGlobalVariableByName(name))

    @property
    def statistics(self):
        """``{"n_proposed": int, "n_accepted": int, "n_invalid": int}``; settable (e.g. to restore counts)."""
        return {"n_proposed": self.n_proposed, "n_accepted": self.n_accepted, "n_invalid": self.n_invalid}

    @statistics.setter
    def statistics(self, value):
        for name in ("n_proposed", "n_accepted", "n_invalid"):
            self._jump.setGlobalVariableByName("fmc_" + name, float(value.get(name, 0)))

    def reset_statistics(self):
        """Set ``n_proposed``, ``n_accepted``, ``n_invalid`` and the MD counts to zero (:attr:`n_drawn` stays)."""
        self.statistics = {"n_proposed": 0, "n_accepted": 0, "n_invalid": 0}
        if self.mode == "exact":
            for program in (self._md, self._jump):
                for name in ("fmc_md_n_proposed", "fmc_md_n_accepted"):
                    program.setGlobalVariableByName(name, 0.0)

    # --- copies -----------------------------------------------------------------------------------------
    def __deepcopy__(self, memo):
        """A new integrator with this one's settings and statistics, sharing ``proposal`` (weights are never copied).

        The copy draws from its own stream (``stream + (copy number,)``), so copies never share draws.
        OpenMM's own copy (an XML clone) would detach the sub-integrators from this class's handles.
        """
        arguments = dict(self._arguments, temperature=self.getTemperature(), friction=self.getFriction(),
                         timestep=self.getStepSize(), proposal=self.proposal, system=None, topology=None, seed=self.seed)
        copy = type(self)(**arguments)
        copy.stream, copy._n_copies = self.stream + (self._n_copies,), 0
        self._n_copies += 1
        copy._draws = self._draws.for_stream(copy.stream)
        copy.statistics = self.statistics
        put = copy._jump.setGlobalVariableByName
        put("fmc_until_jump", self._jump.getGlobalVariableByName("fmc_until_jump"))  # the jump phase
        copy.setConstraintTolerance(self.getConstraintTolerance())
        copy.setIntegrationForceGroups(self.getIntegrationForceGroups())
        copy._md.setRandomNumberSeed(self._md.getRandomNumberSeed())
        copy._jump.setRandomNumberSeed(self._jump.getRandomNumberSeed())
        memo[id(self)] = copy
        return copy

    def __copy__(self):
        """Same as :meth:`__deepcopy__`: an integrator is bound to one Context, so a copy is a new one."""
        return self.__deepcopy__({})

    # --- LangevinMiddleIntegrator look-alikes -------------------------------------------------------
    def getTemperature(self):
        return self._md.getTemperature()

    def setTemperature(self, temperature):
        temperature = kelvin(temperature)
        self._md.setTemperature(temperature)
        self._jump.setGlobalVariableByName("fmc_kT", kT(temperature))

    def getFriction(self):
        return self._md.getFriction()

    def setFriction(self, friction):
        friction = friction_per_ps(friction)
        self._md.setFriction(friction)
        self._jump.setGlobalVariableByName("fmc_friction", friction)

    def getStepSize(self):
        return self._md.getStepSize()

    def setStepSize(self, size):
        size = timestep_ps(size)
        self._md.setStepSize(size)
        self._jump.setStepSize(size)

    def _sync_md_settings(self):
        """Give the jump program the MD integrator's temperature and friction, whoever set them.

        openmmtools' ``ThermodynamicState`` sets the temperature of each sub-integrator
        (``getIntegrator(i).setTemperature``), bypassing :meth:`setTemperature`; reading the MD
        integrator before every program step makes the jumps use the temperature the MD uses.
        """
        put = self._jump.setGlobalVariableByName
        put("fmc_kT", kT(self._md.getTemperature()))
        put("fmc_friction", friction_per_ps(self._md.getFriction()))

    def setConstraintTolerance(self, tol):
        self._md.setConstraintTolerance(tol)
        self._jump.setConstraintTolerance(tol)

    def setRandomNumberSeed(self, seed):
        """Seed the device's random numbers for the MD and the jumps (the proposal keeps its own seed).

        Both integrators get the same seed: the CUDA and OpenCL platforms keep one random stream per
        Context, shared by the integrators of a ``CompoundIntegrator``, and refuse a Context whose
        integrators ask for different seeds. On Reference the stream is shared too; on CPU the Langevin
        kernel derives its own per-thread seeds from this one.
        """
        self._md.setRandomNumberSeed(seed)
        self._jump.setRandomNumberSeed(seed)

    # --- internals ------------------------------------------------------------------------------------
    def _check_system(self, n_particles, n_constraints):
        if n_particles != self.n_atoms:
            raise InvalidInputError(
                f"The proposal moves {self.n_atoms} atoms but the System has {n_particles} particles: "
                "it was made for another molecule. Use a proposal trained for this system.")
        if n_constraints and not self._respects_constraints:
            raise InvalidInputError(
                f"The System has {n_constraints} constraint(s), but a flow jump moves every atom and would break "
                "them. Build the System with constraints=None (and a ~1 fs timestep), or use a proposal that "
                "declares respects_constraints = True.")

    def _validate_in_context(self):
        n_particles = len(self._jump.getPerDofVariableByName("fmc_x_snap"))
        has_constraints = self._jump.getGlobalVariableByName("fmc_constraint_shift") > 0
        self._check_system(n_particles, "at least one" if has_constraints else 0)  # the probe sees no count
        self._validated = True

    def _load_proposals(self):
        x = np.array(self._jump.getPerDofVariableByName("fmc_x_snap"), dtype=np.float64)
        position = int(self._jump.getGlobalVariableByName("fmc_n_drawn"))  # in the Context: resumes never replay
        x_new, log_ratio, ok = self._draws.draw(x, position, self.n_proposals)
        self._jump.setGlobalVariableByName("fmc_n_drawn", float(position + self.n_proposals))
        for j in range(self.n_proposals):
            self._jump.setGlobalVariableByName(f"fmc_ok{j}", float(ok[j]))
            self._jump.setGlobalVariableByName(f"fmc_log_q{j}", float(log_ratio[j]))
            self._jump.setPerDofVariableByName(f"fmc_x_prop{j}", x_new[j] if ok[j] else x)
        self._jump.setGlobalVariableByName("fmc_jump_ready", 1.0)
