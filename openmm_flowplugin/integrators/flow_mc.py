"""An OpenMM integrator that interleaves Langevin dynamics with exact learned Monte Carlo jumps.

:class:`FlowMCIntegrator` replaces ``LangevinMiddleIntegrator`` in an unmodified OpenMM script: every
``jump_interval`` steps it attempts Metropolis-Hastings jumps to configurations drawn from a learned
``proposal`` (the protocol of :mod:`openmm_flowplugin.proposals`), with the energies and the
accept/reject evaluated on the device by a ``CustomIntegrator`` program.
"""

__all__ = ["FlowMCIntegrator"]

import math

import numpy as np
import openmm

from ..proposals.buffer import ProposalBuffer
from ..proposals.protocol import (
    align_to_current,
    check_proposal_fingerprint,
    check_proposal_methods,
    checked_count,
    proposal_n_atoms,
    single_log_prob,
)
from ..units import friction_per_ps, kelvin, kT, timestep_ps
from ..errors import InvalidInputError, InvalidTypeError


def _jump_program(integrator, n_proposals):
    """Build the jump program: [probe], [MH jumps], one LangevinMiddle step, [snapshot of x]."""
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
    add_global("fmc_log_q_cur", "0")
    add_global("fmc_any_accepted", "0")
    for j in range(n_proposals):
        add_global("fmc_n_proposed", "fmc_n_proposed + 1")
        integrator.beginIfBlock(f"fmc_ok{j} > 0.5")
        add_dof("fmc_x_old", "x")
        add_dof("x", f"fmc_x_prop{j}")
        add_global("fmc_u_new", "energy/fmc_kT")
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
    add_dof("v", "sqrt(fmc_kT/m)*gaussian")
    integrator.addConstrainVelocities()
    integrator.endBlock()
    integrator.endBlock()
    add_global("fmc_jump_ready", "0")
    integrator.endBlock()
    # LangevinMiddle (V, R, O, R, V-by-constraint) exactly as OpenMM's own LangevinMiddleIntegrator
    add_global("fmc_a", "exp(-fmc_friction*dt)")
    add_global("fmc_b", "sqrt(1 - exp(-2*fmc_friction*dt))")
    integrator.addUpdateContextState()
    add_dof("v", "v + dt*f/m")
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
    """Langevin dynamics interleaved with exact Metropolis-Hastings jumps from a learned proposal.

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
    jump_interval : int
        MD steps between jump attempts (default 100).
    n_proposals : int
        Proposals per jump attempt, applied as consecutive Metropolis-Hastings steps (default 1).
    system : openmm.System, optional
        If given, atom count, constraints and fingerprint are checked at construction; otherwise the
        atom count and constraints are checked on the first :meth:`step`, before any jump.
    topology : openmm.app.Topology, optional
        With ``system``, lets a proposal's ``fingerprint`` be checked.
    sample_batch_size : int
        Proposals drawn per ``proposal.sample`` call and used in turn (default 512): flows sample a
        batch for little more than the cost of one. Exact, since proposals do not depend on the state
        (see :class:`~openmm_flowplugin.proposals.ProposalBuffer`).

    Attributes
    ----------
    n_proposed, n_accepted : int
        Proposals evaluated and accepted (stored in the Context: in checkpoints and saved states).
    acceptance_rate : float
        ``n_accepted / n_proposed``, NaN before any proposal.

    Notes
    -----
    The integrator is a ``CompoundIntegrator``: OpenMM's own ``LangevinMiddleIntegrator`` does the MD
    steps, and a ``CustomIntegrator`` program does the steps around each jump: the step before a jump
    copies ``x`` into a per-DOF variable, Python draws ``x'`` and ``log q`` there, and the next step
    evaluates ``u = U/kT`` at ``x`` and ``x'`` on the device, accepts with probability
    ``min(1, exp(u - u' + log q(x) - log q(x')))``, then does one LangevinMiddle step. A proposal with NaN
    coordinates or ``log q`` is rejected; if the Context's positions were changed between the two steps
    the jump is deferred, not made against stale positions. The proposal is independent of the state, so
    consecutive MH steps over ``n_proposals`` draws are exact. On acceptance velocities are redrawn from
    Maxwell-Boltzmann: the acceptance does not depend on ``v`` and ``v`` is independent of ``x`` under
    the Boltzmann distribution, so the jump kernel preserves ``exp(-u(x)) N(v)``.

    .. warning:: The jumps are exact; the MD part has LangevinMiddle's O(dt^2) configurational
       time-step error, as ``LangevinMiddleIntegrator`` has (none for harmonic potentials).
       NVT only: ``u`` uses ``kT`` of this integrator. The proposal's random stream lives in Python,
       outside checkpoints: a resumed run is statistically, not bitwise, identical. A deserialized
       copy (XML) is a plain ``CompoundIntegrator`` that never jumps.

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
    """

    def __init__(self, temperature, friction, timestep, proposal, jump_interval=100, n_proposals=1,
                 system=None, topology=None, sample_batch_size=512):
        super().__init__()
        temperature = kelvin(temperature)
        friction, timestep = friction_per_ps(friction), timestep_ps(timestep)
        jump_interval, n_proposals = checked_count("jump_interval", jump_interval), checked_count("n_proposals", n_proposals)
        check_proposal_methods(proposal)
        self.proposal = proposal
        self.jump_interval, self.n_proposals = jump_interval, n_proposals
        self.n_atoms = proposal_n_atoms(proposal)
        self._respects_constraints = bool(getattr(proposal, "respects_constraints", False))
        self._validated = False
        self._until = None
        self._buffer = ProposalBuffer(proposal, sample_batch_size, n_atoms=self.n_atoms)
        self._md = openmm.LangevinMiddleIntegrator(temperature, friction, timestep)
        self._jump = openmm.CustomIntegrator(timestep)
        for name, value in (("fmc_kT", kT(temperature)), ("fmc_friction", friction), ("fmc_a", 0.0), ("fmc_b", 0.0),
                            ("fmc_probe_done", 0.0), ("fmc_constraint_shift", 0.0), ("fmc_jump_ready", 0.0), ("fmc_snap", 0.0),
                            ("fmc_stale", 0.0), ("fmc_until_jump", float(self.jump_interval - 1)), ("fmc_n_proposed", 0.0),
                            ("fmc_n_accepted", 0.0), ("fmc_u_cur", 0.0), ("fmc_u_new", 0.0), ("fmc_log_q_cur", 0.0),
                            ("fmc_accepted", 0.0), ("fmc_any_accepted", 0.0)):
            self._jump.addGlobalVariable(name, value)
        for j in range(self.n_proposals):
            self._jump.addGlobalVariable(f"fmc_log_q{j}", 0.0)
            self._jump.addGlobalVariable(f"fmc_ok{j}", 0.0)
            self._jump.addPerDofVariable(f"fmc_x_prop{j}", 0.0)
        for name in ("fmc_x_snap", "fmc_x_old", "fmc_x1"):
            self._jump.addPerDofVariable(name, 0.0)
        _jump_program(self._jump, self.n_proposals)
        self.addIntegrator(self._md)  # ownership passes to C++; the Python proxies stay valid with self
        self.addIntegrator(self._jump)
        self.setCurrentIntegrator(0)
        if system is not None:
            self._check_system(system.getNumParticles(), system.getNumConstraints())
            check_proposal_fingerprint(proposal, system, topology)

    # --- OpenMM protocol --------------------------------------------------------------------------
    def step(self, steps):
        """Advance by ``steps`` time steps, attempting a jump every ``jump_interval`` steps."""
        until = self._until  # MD steps before the next jump step, cached: no device read per call
        if until is not None and until > steps and type(steps) is int:
            openmm.CompoundIntegrator.step(self, steps)  # fast path: plain MD, as cheap as the native call
            self._until = until - steps
            return
        remaining = int(steps)
        if remaining != steps:
            raise InvalidTypeError(f"steps must be an integer, got {steps!r}.")
        get, put = self._jump.getGlobalVariableByName, self._jump.setGlobalVariableByName
        if until is None:  # a fresh Python object, e.g. on a loaded checkpoint: resume the stored phase
            until = int(get("fmc_until_jump"))
        while remaining > 0:
            if until >= 2 and self._validated:
                n = min(until - 1, remaining)
                openmm.CompoundIntegrator.step(self, n)
                until, remaining = until - n, remaining - n
                continue
            jump = until <= 0 and get("fmc_jump_ready") > 0.5
            next_until = self.jump_interval - 1 if jump else max(until - 1, 0)
            if not jump:
                put("fmc_jump_ready", 0.0)
            put("fmc_snap", float(next_until == 0))
            put("fmc_until_jump", float(next_until))  # the phase checkpoints store (exact up to MD-only steps)
            self.setCurrentIntegrator(1)
            try:
                openmm.CompoundIntegrator.step(self, 1)
            finally:
                self.setCurrentIntegrator(0)
            remaining -= 1
            if not self._validated:
                self._validate_in_context()
            if jump and next_until > 0 and get("fmc_stale") != 0:
                next_until = 1  # positions changed since the snapshot: jump deferred, snapshot next step
                put("fmc_until_jump", 1.0)
            if next_until == 0:
                self._load_proposals()
            until = next_until
        self._until = until

    # --- statistics -----------------------------------------------------------------------------------
    @property
    def sample_batch_size(self):
        """Proposals drawn per ``proposal.sample`` call."""
        return self._buffer.batch_size

    @property
    def n_proposed(self):
        """Number of proposals evaluated (rejected NaN proposals included)."""
        return int(self._jump.getGlobalVariableByName("fmc_n_proposed"))

    @property
    def n_accepted(self):
        """Number of accepted proposals."""
        return int(self._jump.getGlobalVariableByName("fmc_n_accepted"))

    @property
    def acceptance_rate(self):
        """``n_accepted / n_proposed``; NaN before any proposal."""
        n_proposed = self.n_proposed
        return self.n_accepted / n_proposed if n_proposed else float("nan")

    @property
    def statistics(self):
        """``{"n_proposed": int, "n_accepted": int}``; settable (e.g. to restore counts)."""
        return {"n_proposed": self.n_proposed, "n_accepted": self.n_accepted}

    @statistics.setter
    def statistics(self, value):
        for name in ("n_proposed", "n_accepted"):
            self._jump.setGlobalVariableByName("fmc_" + name, float(value[name]))

    def reset_statistics(self):
        """Set ``n_proposed`` and ``n_accepted`` to zero."""
        self.statistics = {"n_proposed": 0, "n_accepted": 0}

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

    def setConstraintTolerance(self, tol):
        self._md.setConstraintTolerance(tol)
        self._jump.setConstraintTolerance(tol)

    def setRandomNumberSeed(self, seed):
        """Seed both device random streams (the proposal keeps its own seed)."""
        self._md.setRandomNumberSeed(seed)
        self._jump.setRandomNumberSeed(seed + 1 if seed else 0)

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
        x_new, log_q_new = self._buffer.take(self.n_proposals)
        log_q_cur = single_log_prob(self.proposal, x)
        x_new = align_to_current(self.proposal, x_new, x)
        ok = np.isfinite(x_new).all(axis=(1, 2)) & np.isfinite(log_q_new) & math.isfinite(log_q_cur)
        for j in range(self.n_proposals):
            # log q relative to log q(current) keeps the device's numbers small in any precision
            self._jump.setGlobalVariableByName(f"fmc_ok{j}", float(ok[j]))
            self._jump.setGlobalVariableByName(f"fmc_log_q{j}", float(log_q_new[j] - log_q_cur) if ok[j] else 0.0)
            self._jump.setPerDofVariableByName(f"fmc_x_prop{j}", x_new[j] if ok[j] else x)
        self._jump.setGlobalVariableByName("fmc_jump_ready", 1.0)
