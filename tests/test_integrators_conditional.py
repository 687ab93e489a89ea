"""FlowMCIntegrator with a conditional (Timewarp-style) proposal: one exact Metropolis-Hastings jump per jump step.

Toy: the three-particle harmonic wells of ``test_timewarp_move`` (identical isotropic wells, equal
masses), so the Hamiltonian separates into the centre of mass and the centred coordinates: MD moves
both, a ConditionalFlow jump keeps the centre and moves the centred coordinates, and those have an
exact distribution whatever the centre does (means r0_i - mean(r0), variances sigma^2 (N-1)/N,
covariances -sigma^2/N). MD is GHMC (``mode="exact"``) with a small step, so the jumps, one per
step, do most of the mixing. Averages must agree within 6 standard errors; the control (the same
flow with its Hastings term dropped, i.e. treated as symmetric) must miss by more than 12.
"""

import numpy as np
import openmm
import pytest
from openmm import unit
from test_timewarp_move import HO, N_SIGMA, Symmetric, random_flow, z_scores

from openmm_flowplugin import systems
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.flows import ConditionalFlow
from openmm_flowplugin.integrators import FlowMCIntegrator


def integrator_for(flow, seed=3, **kwargs):
    options = dict(jump_interval=1, system=HO.system, mode="exact", seed=seed)
    options.update(kwargs)
    return FlowMCIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.2 * unit.femtosecond, flow, **options)


def run(integrator, n_steps, seed=3):
    """Centred positions after each step, shifted onto the centre of the wells, shape=(n_steps, 3, 3) nm."""
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(HO.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(HO.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed + 1)
    out = np.empty((n_steps, HO.n_atoms, 3))
    for i in range(n_steps):
        integrator.step(1)
        out[i] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return out - out.mean(axis=1, keepdims=True) + HO.positions_nm.mean(axis=0)


@pytest.mark.parametrize("jump_interval", [1, 3])
def test_conditional_jumps_are_exact(jump_interval):
    integrator = integrator_for(random_flow(), jump_interval=jump_interval)
    x = run(integrator, 20000)
    assert integrator.n_proposed == 20000 // jump_interval - (jump_interval == 1) and integrator.n_invalid == 0
    assert 0.03 < integrator.acceptance_rate < 0.6
    z = z_scores(x)
    assert np.abs(z).max() < N_SIGMA, np.round(z, 1)


def test_control_treating_the_proposal_as_symmetric_fails_the_same_check():
    z = z_scores(run(integrator_for(random_flow(Symmetric)), 20000))
    assert np.abs(z).max() > 2 * N_SIGMA, np.round(z, 1)


def test_stream_seeded_copies_independent_and_one_proposal_per_jump():
    flow = random_flow()
    first, again = run(integrator_for(flow, seed=5), 50), run(integrator_for(flow, seed=5), 50)
    np.testing.assert_array_equal(first, again)
    integrator = integrator_for(flow, seed=5)
    copy = integrator.__deepcopy__({})
    assert copy.seed == integrator.seed and copy.stream == (0,) and copy.sample_batch_size == 1
    assert not np.array_equal(run(copy, 50), first)
    with pytest.raises(InvalidInputError, match="one proposal per jump"):
        integrator_for(flow, n_proposals=2)


class NaNFlow(ConditionalFlow):
    def propose(self, x, n, generator=None):
        x_new, log_hastings = super().propose(x, n, generator)
        x_new[:, 0, 0] = np.nan
        return x_new, log_hastings


def test_nan_proposals_are_rejected_and_counted():
    integrator = integrator_for(random_flow(NaNFlow))
    x = run(integrator, 20)
    assert integrator.n_invalid == integrator.n_proposed == 19 and integrator.n_accepted == 0
    assert np.isfinite(x).all()


def test_wrong_molecule_is_refused():
    other = ConditionalFlow.for_system(systems.get("harmonic_oscillator", n_particles=4), n_layers=2, hidden=(4,))
    with pytest.raises(InvalidInputError, match="another molecule"):
        integrator_for(other)


def test_a_conditional_proposal_without_n_atoms_is_refused():
    class NoAtomCount:
        def propose(self, x, n, generator=None):
            return np.repeat(np.asarray(x)[None], n, axis=0), np.zeros(n)

    with pytest.raises(TypeError, match="n_atoms"):
        integrator_for(NoAtomCount())


def test_a_checkpoint_resumes_the_proposal_stream_and_a_moved_state_defers_the_jump():
    flow = random_flow()

    def simulation(integrator):
        integrator.setRandomNumberSeed(7)  # the same device noise: Reference checkpoints keep no random state
        context = openmm.Context(HO.system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(HO.positions)
        context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        return context

    first = integrator_for(flow, jump_interval=4, mode="langevin")
    context = simulation(first)
    first.step(203)  # ends on a jump step, so the run after the checkpoint is reproducible bit for bit
    checkpoint = context.createCheckpoint()
    first.step(200)
    expected = context.getState(getPositions=True).getPositions(asNumpy=True)
    assert first.n_proposed == 100 and first.n_drawn == 101 and first.n_accepted > 0  # the next jump is loaded
    resumed = integrator_for(flow, jump_interval=4, mode="langevin")
    context = simulation(resumed)
    context.loadCheckpoint(checkpoint)
    resumed.step(200)
    np.testing.assert_array_equal(context.getState(getPositions=True).getPositions(asNumpy=True), expected)
    assert resumed.n_drawn == 101  # the stream continued from draw 51, not replayed from 0

    # positions set between the snapshot and the jump: the jump is deferred, never made from stale positions
    moved = integrator_for(flow, jump_interval=4)
    context = simulation(moved)
    moved.step(3)  # the third step takes the snapshot
    context.setPositions(HO.positions)
    moved.step(2)  # deferred, then a new snapshot of the new positions
    assert moved.n_proposed == 0
    moved.step(1)
    assert moved.n_proposed == 1
