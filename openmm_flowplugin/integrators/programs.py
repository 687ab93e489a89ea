"""Exact molecular dynamics as an OpenMM ``CustomIntegrator`` program: generalized hybrid Monte Carlo.

:class:`GHMCProgram` is the MD part of ``FlowMCIntegrator(mode="exact")``: each step refreshes the
velocities partially, makes one velocity Verlet step and accepts it with the Metropolis criterion on
the total energy, flipping the velocities on rejection (Horowitz 1991). It leaves
``exp(-U(x)/kT) N(v)`` exactly invariant at any time step, so interleaved with Metropolis-Hastings
jumps that redraw ``v`` from Maxwell-Boltzmann the whole chain samples the Boltzmann distribution
without time-step bias. :func:`add_ghmc_step` appends the same step to another program (the jump
program of :class:`~openmm_flowplugin.integrators.FlowMCIntegrator` ends with one).
"""

__all__ = ["GHMCProgram", "add_ghmc_step", "add_ghmc_variables"]

import math

import openmm

from .._quiet import quiet_banners
from ..units import friction_per_ps, kelvin, kT, timestep_ps

with quiet_banners():  # openmmtools' import loads pymbar, which logs a banner
    from openmmtools.integrators import ThermostatedIntegrator

#: Global variables of the GHMC step; the thermal energy (``kT_name``) and ``fmc_friction`` are set by the caller.
_GLOBALS = ("fmc_friction", "fmc_md_a", "fmc_md_e_old", "fmc_md_e_new", "fmc_md_accept",
            "fmc_md_n_proposed", "fmc_md_n_accepted")
#: Per-DOF variables of the GHMC step.
_PER_DOF = ("fmc_md_x_old", "fmc_md_v_old", "fmc_x1")


def add_ghmc_variables(integrator, temperature, friction, kT_name="fmc_kT"):
    """Declare the variables :func:`add_ghmc_step` uses, skipping names ``integrator`` already has.

    Parameters
    ----------
    integrator : openmm.CustomIntegrator
    temperature : float
        K.
    friction : float
        1/ps; the velocity refresh keeps ``a = exp(-friction*dt)`` of the old velocity.
    kT_name : str
        The global variable holding kT (kJ/mol).
    """
    have = {integrator.getGlobalVariableName(i) for i in range(integrator.getNumGlobalVariables())}
    for name in (kT_name,) + _GLOBALS:
        if name not in have:
            integrator.addGlobalVariable(name, 0.0)
    integrator.setGlobalVariableByName(kT_name, kT(temperature))
    integrator.setGlobalVariableByName("fmc_friction", float(friction))
    have = {integrator.getPerDofVariableName(i) for i in range(integrator.getNumPerDofVariables())}
    for name in _PER_DOF:
        if name not in have:
            integrator.addPerDofVariable(name, 0.0)


def add_ghmc_step(integrator, kT_name="fmc_kT"):
    """Append one GHMC step (O, then velocity Verlet with Metropolis test and flip on rejection).

    The step is: ``v <- a v + sqrt(1 - a^2) sqrt(kT/m) xi`` with ``a = exp(-friction dt)``; ``E = K(v) + U(x)``;
    one velocity Verlet step (RATTLE-style with constraints) to ``(x', v')``; accept with probability
    ``min(1, exp(-(E' - E)/kT))``, otherwise restore ``x`` and set ``v <- -v``. Both parts leave
    ``exp(-U(x)/kT) N(v)`` invariant: the refresh exactly, the second by detailed balance for the involution
    "integrate then flip" (reference [1]_, [2]_). NaN or infinite energies reject. Counts go to
    ``fmc_md_n_proposed`` and ``fmc_md_n_accepted``.

    References
    ----------
    .. [1] A. M. Horowitz, "A generalized guided Monte Carlo algorithm", Phys. Lett. B 268, 247 (1991).
    .. [2] J. Sohl-Dickstein, M. Mudigonda, M. R. DeWeese, "Hamiltonian Monte Carlo without detailed
       balance", ICML 2014, https://arxiv.org/abs/1409.5191 (section 2: why the flip is needed).
    """
    add_global, add_dof = integrator.addComputeGlobal, integrator.addComputePerDof
    integrator.addUpdateContextState()
    add_global("fmc_md_a", "exp(-fmc_friction*dt)")
    add_dof("v", f"fmc_md_a*v + sqrt(1 - fmc_md_a*fmc_md_a)*sqrt({kT_name}/m)*gaussian")
    integrator.addConstrainVelocities()
    add_global("fmc_md_e_old", "energy")
    integrator.addComputeSum("fmc_md_e_new", "0.5*m*v*v")  # kinetic part first, reused as scratch
    add_global("fmc_md_e_old", "fmc_md_e_old + fmc_md_e_new")
    add_dof("fmc_md_x_old", "x")
    add_dof("fmc_md_v_old", "v")
    add_dof("v", "v + 0.5*dt*f/m")
    integrator.addConstrainVelocities()
    add_dof("x", "x + dt*v")
    add_dof("fmc_x1", "x")
    integrator.addConstrainPositions()
    add_dof("v", "v + 0.5*dt*f/m + (x - fmc_x1)/dt")
    integrator.addConstrainVelocities()
    add_global("fmc_md_e_new", "energy")
    integrator.addComputeSum("fmc_md_accept", "0.5*m*v*v")
    add_global("fmc_md_e_new", "fmc_md_e_new + fmc_md_accept")
    # accept iff log(uniform) < -(E' - E)/kT; NaN or +inf energies give 0
    add_global("fmc_md_accept", f"step(-(fmc_md_e_new - fmc_md_e_old)/{kT_name} - log(uniform))")
    integrator.beginIfBlock("fmc_md_accept < 0.5")  # an if, not select(): writing x (even unchanged) drops the cached forces
    add_dof("x", "fmc_md_x_old")
    add_dof("v", "-fmc_md_v_old")
    integrator.endBlock()
    add_global("fmc_md_n_proposed", "fmc_md_n_proposed + 1")
    add_global("fmc_md_n_accepted", "fmc_md_n_accepted + fmc_md_accept")


class GHMCProgram(ThermostatedIntegrator):
    """Generalized hybrid Monte Carlo: velocity Verlet steps, each Metropolized, with partial velocity refresh.

    Exact for ``exp(-U(x)/kT)`` at any time step (the time step changes only the acceptance rate and
    the correlation time), unlike ``LangevinMiddleIntegrator``, whose configurational error is
    O(dt^2). It mirrors ``LangevinMiddleIntegrator``'s temperature and friction methods, so it can
    replace it as the MD part of a ``CompoundIntegrator``. It is an openmmtools ``ThermostatedIntegrator``
    (the thermal energy is the global ``kT``): openmmtools' states find and set its temperature, also
    through ``CompoundIntegrator.getIntegrator(i)`` or after XML serialization. Other variables are
    named ``fmc_...``.

    Parameters
    ----------
    temperature : openmm.unit.Quantity or float
        K if a bare number, finite and > 0.
    friction : openmm.unit.Quantity or float
        1/ps if a bare number, finite and >= 0; each step keeps ``exp(-friction*dt)`` of the velocity
        (0: plain HMC with one step per trajectory and no refresh, which is not ergodic; use > 0).
    timestep : openmm.unit.Quantity or float
        ps if a bare number, finite and > 0.

    Attributes
    ----------
    n_proposed, n_accepted : int
        MD steps proposed and accepted (device variables ``fmc_md_n_proposed``, ``fmc_md_n_accepted``).
    acceptance_rate : float
        ``n_accepted / n_proposed``; NaN before any step.

    Notes
    -----
    Cost: two force/energy evaluations per step (measured by counting them), one more than Langevin:
    OpenMM does not keep the energy from one step to the next, so the energy at the start of a step is
    computed again, as in openmmtools' ``GHMCIntegrator``; plus two global reductions (kinetic energies). A rejection reverses
    the velocities, so a low acceptance rate slows diffusion: keep it above ~90 % by the time step.

    Examples
    --------
    >>> from openmm import unit
    >>> from openmm_flowplugin import systems
    >>> ho = systems.get("harmonic_oscillator")
    >>> integrator = GHMCProgram(300 * unit.kelvin, 1 / unit.picosecond, 4 * unit.femtosecond)
    >>> context = openmm.Context(ho.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    >>> context.setPositions(ho.positions)
    >>> integrator.step(100)
    >>> integrator.n_proposed, integrator.acceptance_rate > 0.9
    (100, True)
    """

    def __init__(self, temperature, friction, timestep):
        temperature, friction = kelvin(temperature), friction_per_ps(friction)
        super().__init__(temperature * openmm.unit.kelvin, timestep_ps(timestep))
        add_ghmc_variables(self, temperature, friction, kT_name="kT")
        add_ghmc_step(self, kT_name="kT")
        self.setKineticEnergyExpression("0.5*m*v*v")

    @property
    def n_proposed(self):
        """MD steps proposed."""
        return int(self.getGlobalVariableByName("fmc_md_n_proposed"))

    @property
    def n_accepted(self):
        """MD steps accepted."""
        return int(self.getGlobalVariableByName("fmc_md_n_accepted"))

    @property
    def acceptance_rate(self):
        """``n_accepted / n_proposed``; NaN before any step."""
        n = self.n_proposed
        return self.n_accepted / n if n else math.nan

    def getTemperature(self):
        """Temperature as a Quantity in K."""
        return self.getGlobalVariableByName("kT") / kT(1.0) * openmm.unit.kelvin

    def setTemperature(self, temperature):
        """Set the temperature (K if a bare number)."""
        self.setGlobalVariableByName("kT", kT(kelvin(temperature)))

    def getFriction(self):
        """Friction as a Quantity in 1/ps."""
        return self.getGlobalVariableByName("fmc_friction") / openmm.unit.picosecond

    def setFriction(self, friction):
        """Set the friction (1/ps if a bare number)."""
        self.setGlobalVariableByName("fmc_friction", friction_per_ps(friction))
