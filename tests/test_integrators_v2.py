"""FlowMCIntegrator v2: copies that jump, XML copies that fail loudly, temperatures set by openmmtools,
barostats, invalid-proposal counts, seeded proposal streams stored in the Context."""

import copy
import functools
import io
import math
import warnings

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit
from openmmtools import cache, mcmc, states

from openmm_flowplugin import systems
from openmm_flowplugin.integrators import FlowMCIntegrator, FlowMCReporter
from openmm_flowplugin.proposals import GaussianProposal

N_SIGMA = 6.0
REFERENCE = openmm.Platform.getPlatformByName("Reference")


def batch_z(values, exact, n_batches=20):
    """(mean - exact) / batch-means standard error."""
    values = np.asarray(values, dtype=np.float64)
    batches = values[: len(values) // n_batches * n_batches].reshape(n_batches, -1).mean(axis=1)
    error = batches.std(ddof=1) / np.sqrt(n_batches)
    assert error > 0, "zero standard error: the chain did not move"
    return (values.mean() - exact) / error


def oscillator_integrator(seed=0, **options):
    ho = systems.get("harmonic_oscillator")
    proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=0)
    options = {"jump_interval": 5, **options}
    return ho, FlowMCIntegrator(300, 1.0, 0.002, proposal, seed=seed, **options)


def simulation_for(molecular_system, integrator, device_seed=1):
    integrator.setRandomNumberSeed(device_seed)
    simulation = app.Simulation(molecular_system.topology, molecular_system.system, integrator, REFERENCE)
    simulation.context.setPositions(molecular_system.positions)
    simulation.context.setVelocitiesToTemperature(300, device_seed)
    return simulation


def positions(simulation):
    return simulation.context.getState(positions=True).getPositions(asNumpy=True)._value


# --- 1. copies jump ----------------------------------------------------------------------------------

def test_deep_copy_jumps_shares_the_proposal_and_keeps_settings_statistics_and_phase():
    ho, integrator = oscillator_integrator(jump_interval=4)
    integrator.setTemperature(320)
    integrator.setFriction(2.0)
    integrator.setStepSize(0.001)
    simulation = simulation_for(ho, integrator)
    simulation.step(10)  # 2 jumps, phase: 2 steps to the next one
    duplicate = copy.deepcopy(integrator)
    assert type(duplicate) is FlowMCIntegrator and duplicate.proposal is integrator.proposal
    assert duplicate.statistics == integrator.statistics and duplicate.statistics["n_proposed"] == 2
    assert duplicate.getTemperature() == 320 * unit.kelvin
    assert duplicate.getFriction() == 2.0 / unit.picosecond and duplicate.getStepSize() == 0.001 * unit.picosecond
    assert duplicate.seed == integrator.seed and duplicate.stream == (0,) and copy.deepcopy(integrator).stream == (1,)
    copied = simulation_for(ho, duplicate)
    copied.step(2)  # the phase came along: the next jump is 2 steps away (snapshot, then jump)
    assert duplicate.n_proposed == 3
    copied.step(4)
    assert duplicate.n_proposed == 4 and integrator.n_proposed == 2  # the copy counts its own jumps


def test_copies_draw_from_their_own_stream():
    ho, integrator = oscillator_integrator(jump_interval=1)
    duplicate = copy.deepcopy(integrator)
    original_draws = integrator._draws._buffer.draws(0, 3)[0]
    assert not np.array_equal(duplicate._draws._buffer.draws(0, 3)[0], original_draws)
    assert np.array_equal(copy.deepcopy(integrator)._draws._buffer.stream, (1,))


def test_integrator_move_and_mcmc_sampler_jump():
    """openmmtools' IntegratorMove deep-copies its integrator for every apply: the copy must jump."""
    ho, integrator = oscillator_integrator(jump_interval=5)
    thermodynamic_state = states.ThermodynamicState(ho.system, 300 * unit.kelvin)
    sampler_state = states.SamplerState(ho.positions)
    move = mcmc.IntegratorMove(integrator, n_steps=20)
    context_cache = cache.ContextCache(platform=REFERENCE)
    sampler = mcmc.MCMCSampler(thermodynamic_state, sampler_state, move)
    sampler.run(3, context_cache=context_cache)
    context, used = context_cache.get_context(thermodynamic_state, copy.deepcopy(integrator))
    assert isinstance(used, FlowMCIntegrator) and used is not integrator
    assert used.n_proposed == 12 and used.n_accepted > 0  # a jump every 5 of the 60 steps: the phase runs on across applies
    assert integrator.n_proposed == 0  # the move's own integrator is a template, never stepped
    assert np.isfinite(sampler.sampler_state.positions._value).all()


# --- 2. XML copies fail loudly ------------------------------------------------------------------------

def test_xml_copy_fails_loudly_while_the_python_integrator_runs():
    ho, integrator = oscillator_integrator()
    simulation = simulation_for(ho, integrator)
    simulation.step(12)
    xml = openmm.XmlSerializer.serialize(integrator)
    loaded = openmm.XmlSerializer.deserialize(xml)
    assert type(loaded) is openmm.CompoundIntegrator
    context = openmm.Context(ho.system, loaded, REFERENCE)
    context.setPositions(ho.positions)
    loaded.step(5)
    assert np.isnan(context.getState(positions=True).getPositions(asNumpy=True)._value).all()
    assert np.isnan(context.getState(energy=True).getPotentialEnergy()._value)
    simulation.step(12)  # the live integrator is unaffected
    assert np.isfinite(positions(simulation)).all() and integrator.n_proposed == 4


def test_xml_stored_integrator_move_raises_instead_of_running_md_only():
    ho, integrator = oscillator_integrator()
    move = mcmc.IntegratorMove(integrator, n_steps=10, n_restart_attempts=1)
    restored = mcmc.IntegratorMove.__new__(mcmc.IntegratorMove)
    restored.__setstate__(move.__getstate__())  # what openmmtools' storage does
    thermodynamic_state = states.ThermodynamicState(ho.system, 300 * unit.kelvin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(mcmc.IntegratorMoveError, match="NaN"):
            restored.apply(thermodynamic_state, states.SamplerState(ho.positions), context_cache=cache.ContextCache(platform=REFERENCE))
    move.apply(thermodynamic_state, states.SamplerState(ho.positions), context_cache=cache.ContextCache(platform=REFERENCE))


def test_kinetic_energy_is_reported_as_langevin_middle_reports_it():
    """At rest the guarded program is the current integrator; StateDataReporter's kinetic energy is unchanged."""
    ala = systems.get("alanine_dipeptide_vacuum")
    integrator = FlowMCIntegrator(300, 1.0, 0.002, GaussianProposal(ala.positions_nm, 0.01, seed=0), jump_interval=10**9)
    simulation = simulation_for(ala, integrator)
    simulation.step(20)
    at_rest = simulation.context.getState(energy=True).getKineticEnergy()
    integrator.setCurrentIntegrator(0)
    native = simulation.context.getState(energy=True).getKineticEnergy()
    assert native / at_rest == pytest.approx(1.0, abs=1e-13)  # the same formula; the two kernels round differently
    integrator.setCurrentIntegrator(1)


# --- 3. temperature and pressure ----------------------------------------------------------------------

def temperature_scan(integrator_class=FlowMCIntegrator, temperatures=(300, 400, 500)):
    """MD frozen (tiny step): an independence chain with a proposal exact at 300 K, in openmmtools states.

    ThermodynamicState.apply_to_context sets the MD sub-integrator's temperature. Returns, per state,
    the deviation of the sampled variance from kT/K (in standard errors) and the acceptance rate.
    """
    ho = systems.get("harmonic_oscillator")
    ref = ho.reference
    integrator = integrator_class(300, 1.0, 1e-9, GaussianProposal(ref.mean, ref.std), jump_interval=1, seed=11)
    integrator.setRandomNumberSeed(3)
    thermodynamic_states = [states.ThermodynamicState(ho.system, t * unit.kelvin) for t in temperatures]
    context = thermodynamic_states[0].create_context(integrator, REFERENCE)
    context.setPositions(ho.positions)
    deviations, rates = [], []
    for state in thermodynamic_states:
        state.apply_to_context(context)
        integrator.reset_statistics()
        x = np.empty((3000, 3))
        for i in range(len(x)):
            integrator.step(1)
            x[i] = context.getState(positions=True).getPositions(asNumpy=True)._value[0]
        squared = ((x - ref.mean[0]) ** 2).mean(axis=1)  # per-axis variance estimate; exact <.> = kT/K
        deviations.append(batch_z(squared, ref.variance[0, 0] * state.temperature / (300 * unit.kelvin)))
        rates.append(integrator.acceptance_rate)
    return deviations, rates


def test_jumps_use_the_temperature_openmmtools_sets():
    """The variance is kT/K in each state; acceptance is 1 at 300 K (exact proposal) and falls with T.

    Measured over seeds 11-15: |deviation| <= 2.7 standard errors; rates 1, 0.82-0.84, 0.67-0.72.
    """
    deviations, rates = temperature_scan()
    assert all(abs(z) < N_SIGMA for z in deviations), deviations
    assert rates[0] > 0.999 and rates[0] - 0.08 > rates[1] > rates[2] + 0.06, rates


def test_exact_mode_jumps_and_md_use_the_temperature_openmmtools_sets():
    """mode="exact": openmmtools finds the GHMC sub-integrator's temperature through getIntegrator(0)."""
    deviations, rates = temperature_scan(functools.partial(FlowMCIntegrator, mode="exact"))
    assert all(abs(z) < N_SIGMA for z in deviations), deviations
    assert rates[0] > 0.999 and rates[0] - 0.08 > rates[1] > rates[2] + 0.06, rates


def test_exact_mode_md_counts_add_both_programs():
    ho = systems.get("harmonic_oscillator")
    integrator = FlowMCIntegrator(300, 1.0, 0.004, GaussianProposal(ho.reference.mean, ho.reference.std), jump_interval=5,
                                  seed=1, mode="exact")
    simulation = simulation_for(ho, integrator)
    simulation.step(50)
    assert integrator.md_n_proposed == 50  # steps of the GHMC sub-integrator + those of the jump program
    in_md_program = integrator.getIntegrator(0).getGlobalVariableByName("fmc_md_n_proposed")
    assert 0 < in_md_program < 50
    assert 0.5 < integrator.md_acceptance_rate <= 1.0 and integrator.md_n_accepted <= 50
    state = states.ThermodynamicState(ho.system, 450 * unit.kelvin)
    state.apply_to_context(simulation.context)
    assert integrator.getTemperature().value_in_unit(unit.kelvin) == pytest.approx(450)
    integrator.reset_statistics()
    assert integrator.md_n_proposed == 0 and math.isnan(integrator.md_acceptance_rate)
    langevin = FlowMCIntegrator(300, 1.0, 0.004, GaussianProposal(ho.reference.mean, ho.reference.std))
    assert langevin.md_n_proposed == 0 and math.isnan(langevin.md_acceptance_rate)


def test_temperature_check_detects_jumps_at_the_constructor_temperature():
    """Control: jumps that keep the constructor's kT (the bug fixed here) fail the check at 500 K."""

    class StaleTemperature(FlowMCIntegrator):
        def _sync_md_settings(self):
            pass

    deviations, rates = temperature_scan(StaleTemperature, temperatures=(300, 500))
    assert abs(deviations[1]) > N_SIGMA and rates[1] > 0.999, (deviations, rates)


def test_set_temperature_of_the_md_sub_integrator_is_used_by_the_jumps():
    ho, integrator = oscillator_integrator(jump_interval=2)
    simulation = simulation_for(ho, integrator)
    integrator.getIntegrator(0).setTemperature(450)  # as openmmtools does
    simulation.step(4)
    kT_450 = (unit.MOLAR_GAS_CONSTANT_R * 450 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    assert integrator.getIntegrator(1).getGlobalVariableByName("fmc_kT") == pytest.approx(kT_450, rel=1e-12)


def restrained_gas(n=8, box=2.5):
    """Particles restrained to sites (periodic distance) with weak Lennard-Jones, in a periodic box with a barostat."""
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*(box * np.eye(3)[i])) for i in range(3)))
    sites = np.random.default_rng(0).uniform(0.3, box - 0.3, (n, 3))
    restraint = openmm.CustomExternalForce("0.5*200*periodicdistance(x, y, z, x0, y0, z0)^2")
    for name in ("x0", "y0", "z0"):
        restraint.addPerParticleParameter(name)
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nonbonded.setCutoffDistance(1.0)
    for i in range(n):
        system.addParticle(39.9)
        restraint.addParticle(i, [float(v) for v in sites[i]])
        nonbonded.addParticle(0.0, 0.3, 0.5)
    system.addForce(restraint)
    system.addForce(nonbonded)
    system.addForce(openmm.MonteCarloBarostat(1.0 * unit.bar, 300 * unit.kelvin, 2))
    return system, sites


def test_barostat_changes_the_box_and_jumps_still_happen():
    system, sites = restrained_gas()
    std = np.sqrt((unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole) / 200)
    integrator = FlowMCIntegrator(300, 5.0, 0.004, GaussianProposal(sites, std, seed=0), jump_interval=5, seed=1)
    integrator.setRandomNumberSeed(2)
    context = openmm.Context(system, integrator, REFERENCE)
    context.setPositions(sites)
    context.setVelocitiesToTemperature(300, 2)
    box_before = context.getState().getPeriodicBoxVolume()
    integrator.step(400)
    state = context.getState(positions=True, energy=True)
    assert state.getPeriodicBoxVolume() != box_before  # the barostat acted
    assert integrator.n_proposed == 80 and integrator.n_accepted > 20 and integrator.n_invalid == 0
    assert np.isfinite(state.getPositions(asNumpy=True)._value).all() and np.isfinite(state.getPotentialEnergy()._value)


# --- 4. n_invalid and the reporter --------------------------------------------------------------------

class BrokenProposal(GaussianProposal):
    """Per group of 4 draws: NaN positions (draws 0, 2), NaN log q (1); draw 3 is valid, but every second one
    is 1e200 nm away (infinite energy)."""

    def sample(self, n, generator=None):
        x, log_q = super().sample(n, generator=generator)
        x[::2] = float("nan")
        log_q[1::4] = float("nan")
        x[3::8] = 1e200
        return x, log_q


def test_invalid_proposals_are_counted_and_reported():
    ho = systems.get("harmonic_oscillator")
    integrator = FlowMCIntegrator(300, 1.0, 0.002, BrokenProposal(ho.reference.mean, ho.reference.std, seed=0),
                                  jump_interval=1, n_proposals=4, seed=0)
    simulation = simulation_for(ho, integrator)
    out = io.StringIO()
    simulation.reporters.append(FlowMCReporter(out, 10))
    simulation.step(50)  # 49 jumps of 4 proposals: 3 invalid each, plus the infinite energy in 25 of them
    assert integrator.n_proposed == 4 * 49 and integrator.n_invalid == 3 * 49 + 25
    assert 0 < integrator.n_accepted <= 24 and np.isfinite(positions(simulation)).all()
    lines = out.getvalue().splitlines()
    assert lines[0].split(",")[-1] == '"Jumps invalid"' and lines[0].split(",")[2] == '"Jumps proposed"'
    assert lines[-1].split(",")[-1] == str(integrator.n_invalid)
    integrator.reset_statistics()
    assert integrator.statistics == {"n_proposed": 0, "n_accepted": 0, "n_invalid": 0}


def test_reporter_append_mode_writes_no_second_header(tmp_path):
    ho, integrator = oscillator_integrator()
    simulation = simulation_for(ho, integrator)
    path = tmp_path / "jumps.csv"
    simulation.reporters.append(FlowMCReporter(str(path), 10))
    simulation.step(20)
    simulation.reporters[0] = FlowMCReporter(str(path), 10, append=True)
    simulation.step(20)
    del simulation.reporters[0]
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and sum(line.startswith("#") for line in lines) == 1
    assert all(len(line.split(",")) == 7 for line in lines)


# --- 5. seeded streams, positions stored in the Context -----------------------------------------------

def test_seed_fixes_the_proposals_and_checkpoints_resume_the_stream_exactly(tmp_path):
    ho, integrator = oscillator_integrator(seed=5, jump_interval=3)
    simulation = simulation_for(ho, integrator)
    simulation.step(20)
    assert integrator.n_drawn == 7 and integrator.seed == 5
    simulation.saveCheckpoint(str(tmp_path / "c.chk"))
    integrator.reset_statistics()
    assert integrator.n_drawn == 7  # resetting statistics never replays draws
    simulation.step(30)
    _, resumed_integrator = oscillator_integrator(seed=5, jump_interval=3)
    resumed = simulation_for(ho, resumed_integrator, device_seed=9)
    resumed.loadCheckpoint(str(tmp_path / "c.chk"))
    resumed.step(30)
    assert resumed_integrator.n_drawn == integrator.n_drawn == 17
    assert np.array_equal(positions(resumed), positions(simulation))  # same draws, same device random state
    _, other_integrator = oscillator_integrator(seed=6, jump_interval=3)
    other = simulation_for(ho, other_integrator, device_seed=9)
    other.loadCheckpoint(str(tmp_path / "c.chk"))
    other.step(30)
    assert not np.array_equal(positions(other), positions(simulation))  # control: another seed, other proposals


def test_bad_seed_is_refused():
    ho = systems.get("harmonic_oscillator")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        FlowMCIntegrator(300, 1.0, 0.002, GaussianProposal(ho.positions_nm, 0.05), seed=-1)


def test_proposal_weights_are_shared_not_copied():
    ho = systems.get("harmonic_oscillator")

    class Weighted(GaussianProposal, torch.nn.Module):
        def __init__(self, *args, **kwargs):
            torch.nn.Module.__init__(self)
            GaussianProposal.__init__(self, *args, **kwargs)
            self.weight = torch.nn.Parameter(torch.zeros(3))

    proposal = Weighted(ho.positions_nm, 0.05, seed=0)
    integrator = FlowMCIntegrator(300, 1.0, 0.002, proposal)
    assert copy.deepcopy(integrator).proposal.weight is proposal.weight


def test_a_jump_costs_one_extra_force_evaluation():
    """Evaluations counted by a zero PythonForce: plain MD does one per step; a jump adds only the energy at
    x' (forces at x are kept for a rejection, and those at an accepted x' come with its energy)."""
    ala = systems.get("alanine_dipeptide_vacuum")
    calls = [0]

    def counting_force(state):
        calls[0] += 1
        return 0.0, np.zeros((ala.n_atoms, 3))

    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(ala.system))
    system.addForce(openmm.PythonForce(counting_force))
    proposal = GaussianProposal(ala.positions_nm, 0.002, seed=0)
    integrator = FlowMCIntegrator(300, 1.0, 0.0005, proposal, jump_interval=10, seed=1)
    context = openmm.Context(system, integrator, REFERENCE)
    context.setPositions(ala.positions)
    integrator.step(20)
    calls[0], before = 0, integrator.n_proposed
    integrator.step(1000)
    jumps = integrator.n_proposed - before
    assert jumps == 100 and 0 < integrator.n_accepted < integrator.n_proposed  # both branches taken
    assert calls[0] == 1000 + jumps


def _reference_context(molecular_system, mode, jump_interval):
    proposal = GaussianProposal(molecular_system.reference.mean, molecular_system.reference.std, seed=0)
    integrator = FlowMCIntegrator(300, 1.0, 0.002, proposal, jump_interval=jump_interval, seed=1, mode=mode)
    integrator.setRandomNumberSeed(1234)
    return integrator, openmm.Context(molecular_system.system, integrator, openmm.Platform.getPlatformByName("Reference"))


@pytest.mark.parametrize("mode", ["langevin", "exact"])
@pytest.mark.parametrize("jump_interval, n_before", [(10, 25), (10, 20), (1000, 25), (1000, 1)])
def test_a_checkpoint_after_md_only_steps_resumes_bit_for_bit(mode, jump_interval, n_before):
    """Not only at a snapshot step: the jump phase lives in the Context, so a resumed run schedules the same steps.

    Control: before the phase was written after MD-only steps (and a fresh integrator ran its first step
    as a program step), every case here drifted by 4e-3 to 0.1 nm.
    """
    ho = systems.get("harmonic_oscillator", n_particles=3)
    integrator, context = _reference_context(ho, mode, jump_interval)
    context.setPositions(ho.positions)
    context.setVelocitiesToTemperature(300, 7)
    integrator.step(n_before)
    checkpoint = context.createCheckpoint()
    integrator.step(37)
    expected, n_proposed = context.getState(getPositions=True).getPositions(asNumpy=True), integrator.n_proposed
    resumed, other = _reference_context(ho, mode, jump_interval)
    other.loadCheckpoint(checkpoint)
    resumed.step(37)
    np.testing.assert_array_equal(other.getState(getPositions=True).getPositions(asNumpy=True), expected)
    assert resumed.n_proposed == n_proposed
    context.loadCheckpoint(checkpoint)  # into the same Context (Simulation.loadCheckpoint): its phase, not a cached one
    integrator.step(37)
    np.testing.assert_array_equal(context.getState(getPositions=True).getPositions(asNumpy=True), expected)
