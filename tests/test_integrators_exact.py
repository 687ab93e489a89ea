"""Exactness of the GHMC program and of FlowMCIntegrator(mode="exact") at a large time step.

System: 5 particles (1.008 amu) in 3D harmonic wells, K = 63,000 kJ/mol/nm^2, so omega = 250/ps and
omega*dt = 1 at 4 fs (a C-H stretch has omega ~ 565/ps, and flow jumps leave it unconstrained).
Exact <U>/kT = 15/2. Standard errors: pymbar's statistical inefficiency of 50-step block means.
Measured controls (seeds 0-4, 60,000 steps): Langevin + jumps with the Maxwell-Boltzmann redraw misses
by about +100 standard errors; GHMC without its Metropolis test by several hundred.
"""

import contextlib
import io

import numpy as np
import openmm
import pytest
from openmm import unit

from openmm_flowplugin import systems
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.integrators.programs import GHMCProgram, add_ghmc_step, add_ghmc_variables
from openmm_flowplugin.proposals import GaussianProposal

N_DOF = 15
EXACT_U = N_DOF / 2


@pytest.fixture(scope="module")
def stiff_array():
    return systems.get("harmonic_oscillator", n_particles=5, spring_constant=63000.0, mass=1.008)


def _run(integrator, ho, n_steps, seed, n_equilibration=2000):
    """Reduced potential and kinetic energies after every step, shape=(n_steps,) each."""
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(ho.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ho.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed + 1)
    integrator.step(n_equilibration)
    kT = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    u, k = np.empty(n_steps), np.empty(n_steps)
    for i in range(n_steps):
        integrator.step(1)
        state = context.getState(getEnergy=True)
        u[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT
        k[i] = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) / kT
    return u, k, context


def _z(series, exact, block=50):
    """(mean - exact) / standard error, the error from the statistical inefficiency of block means.

    Block means first: an underdamped oscillator's energy autocorrelation oscillates, and pymbar's
    integral up to its first zero crossing would miss the slow decay of the envelope.
    """
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from pymbar.timeseries import statistical_inefficiency
    blocks = series[: len(series) // block * block].reshape(-1, block).mean(axis=1)
    g = statistical_inefficiency(blocks)
    return (blocks.mean() - exact) / np.sqrt(g * blocks.var() / len(blocks))


def _flow_mc(ho, mode, timestep_fs=4.0, seed=0):
    proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=seed)
    return FlowMCIntegrator(300 * unit.kelvin, 1 / unit.picosecond, timestep_fs * unit.femtosecond, proposal,
                            jump_interval=5, system=ho.system, mode=mode, seed=seed)


class _AlwaysAccept:
    """Builds the GHMC step with its Metropolis test removed: velocity Verlet with partial refresh."""

    def __init__(self, integrator):
        self._integrator = integrator

    def addComputeGlobal(self, variable, expression):
        if variable == "fmc_md_accept" and expression.startswith("step("):
            expression = "1"
        self._integrator.addComputeGlobal(variable, expression)

    def __getattr__(self, name):
        return getattr(self._integrator, name)


def test_ghmc_program_is_exact_at_large_timestep(stiff_array):
    integrator = GHMCProgram(300 * unit.kelvin, 10 / unit.picosecond, 4 * unit.femtosecond)
    u, k, context = _run(integrator, stiff_array, 60000, seed=0)
    assert abs(_z(u, EXACT_U)) < 4 and abs(_z(k, EXACT_U)) < 4
    assert 0.4 < integrator.acceptance_rate < 0.9  # omega*dt = 1: many rejections, and the test still holds


def test_ghmc_control_without_metropolis_test_is_biased(stiff_array):
    integrator = openmm.CustomIntegrator(0.004)
    add_ghmc_variables(integrator, 300.0, 10.0)
    add_ghmc_step(_AlwaysAccept(integrator))
    u, _, context = _run(integrator, stiff_array, 20000, seed=0)
    assert _z(u, EXACT_U) > 5  # velocity Verlet inflates the variance by 1/(1 - (omega*dt/2)^2) = 4/3


def test_flow_mc_exact_mode_is_exact_at_large_timestep(stiff_array):
    integrator = _flow_mc(stiff_array, "exact")
    u, k, context = _run(integrator, stiff_array, 60000, seed=0)
    assert integrator.acceptance_rate == 1.0  # exact proposal: every jump accepted
    assert abs(_z(u, EXACT_U)) < 4 and abs(_z(k, EXACT_U)) < 4


def test_flow_mc_langevin_mode_carries_velocities_without_bias_on_harmonic_wells(stiff_array):
    """Langevin mode's velocity transfer after a jump adds no bias where LangevinMiddle has none (harmonic wells)."""
    integrator = _flow_mc(stiff_array, "langevin")
    u, _, context = _run(integrator, stiff_array, 60000, seed=0)
    assert abs(_z(u, EXACT_U)) < 4


def test_flow_mc_langevin_mode_control_is_biased(stiff_array, monkeypatch):
    """The control: Langevin + jumps that redraw v from Maxwell-Boltzmann (version 0.1), same set-up, fails the test above."""
    from openmm_flowplugin.integrators import flow_mc

    monkeypatch.setitem(flow_mc.VELOCITY_AFTER_JUMP, "langevin", flow_mc.VELOCITY_AFTER_JUMP["exact"])
    integrator = _flow_mc(stiff_array, "langevin")
    u, _, context = _run(integrator, stiff_array, 60000, seed=0)
    assert abs(_z(u, EXACT_U)) > 5


def test_exact_mode_mirrors_langevin_accessors(stiff_array):
    integrator = _flow_mc(stiff_array, "exact")
    integrator.setTemperature(310 * unit.kelvin)
    integrator.setFriction(2.0)
    assert integrator.getTemperature().value_in_unit(unit.kelvin) == pytest.approx(310)
    assert integrator.getFriction().value_in_unit(unit.picosecond**-1) == pytest.approx(2.0)
    assert integrator.getStepSize().value_in_unit(unit.femtosecond) == pytest.approx(4.0)


def test_unknown_mode_is_refused(stiff_array):
    with pytest.raises(InvalidInputError, match="mode"):
        _flow_mc(stiff_array, "metropolis")


@pytest.mark.slow
@pytest.mark.parametrize("timestep_fs", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_flow_mc_exact_mode_precise(stiff_array, timestep_fs, seed):
    integrator = _flow_mc(stiff_array, "exact", timestep_fs, seed)
    u, k, context = _run(integrator, stiff_array, 400000, seed=seed)
    assert abs(_z(u, EXACT_U)) < 4 and abs(_z(k, EXACT_U)) < 4
