"""A diffusion sampler as an exact Metropolis–Hastings proposal (random log q estimates from backward paths)."""

import math

import numpy as np
import pytest
import torch
from openmm import app, unit
from openmmtools import cache, mcmc

from openmm_flowplugin import systems
from openmm_flowplugin.diffusion import DiffusionProposal, DiffusionSampler, InternalCoordinateSpace, NoiseSchedule
from openmm_flowplugin.errors import InvalidTypeError
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.mcmc import FlowMCMove
from openmm_flowplugin.proposals.protocol import single_log_prob


def _log_normal(z, variance):
    return -0.5 * (z**2).sum(-1) / variance - 0.5 * z.shape[-1] * math.log(2 * math.pi * variance)


def _oscillator_sampler(n_iterations, seed=3):
    ho = systems.get("harmonic_oscillator")
    sampler = DiffusionSampler(ho, schedule=NoiseSchedule(0.3, 0.005, 20), hidden=32, n_layers=2, batch_size=64, n_adjoint_steps=20,
                               training_batch_size=64, seed=seed)
    sampler.train(n_iterations)
    return ho, sampler


def test_for_the_reference_process_the_estimate_is_the_exact_marginal_density():
    ho, sampler = _oscillator_sampler(0)  # untrained: the controller is zero, q = N(0, V_K I)
    proposal = DiffusionProposal(sampler, seed=1)
    x, log_q = proposal.sample(50, generator=torch.Generator().manual_seed(0))
    exact = _log_normal(x.reshape(50, -1), sampler.schedule.variances[-1])
    np.testing.assert_allclose(log_q.numpy(), exact.numpy(), rtol=0, atol=1e-9)
    for seed in (1, 2):  # whatever backward path is drawn
        estimate = proposal.log_prob(x, generator=torch.Generator().manual_seed(seed))
        np.testing.assert_allclose(estimate.numpy(), exact.numpy(), rtol=0, atol=1e-9)


def test_in_internal_coordinates_the_moves_take_torsions_on_their_principal_range():
    """Untrained sampler on alanine dipeptide: q̂ is the reference density at the principal image, over J without g."""
    ala2 = systems.get("alanine_dipeptide_vacuum")
    rng = np.random.default_rng(0)
    frames = ala2.positions_nm[None] + 0.002 * rng.standard_normal((8, 22, 3))
    space = InternalCoordinateSpace.from_positions(ala2.topology, frames, rotors=[(4, 6, 8, 14)], rotor_scale=2.0)
    sampler = DiffusionSampler(ala2, schedule=NoiseSchedule(1.0, 0.05, 10), coordinates=space, hidden=16, n_layers=1, seed=0)
    proposal = DiffusionProposal(sampler, seed=1)
    assert proposal.rigid_invariant
    x, log_q = proposal.sample(400, generator=torch.Generator().manual_seed(3))

    def exact(positions):
        z = space.from_positions_to_z(positions)
        first = space.dimension - space.transform.n_torsions
        _, log_volume = space.to_positions(z)
        log_g = space.log_image_weight_terms(space.mean[first:] + space.scale[first:] * z[:, first:]).sum(-1)
        return (_log_normal(z, float(sampler.schedule.variances[-1])) - (log_volume - log_g)).numpy()

    inside = np.isfinite(log_q.numpy())
    assert 0 < (~inside).sum() < len(inside)  # the rotor's spread of 2 rad leaves mean ± pi now and then: rejected
    np.testing.assert_allclose(log_q.numpy()[inside], exact(x[inside]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(proposal.log_prob(x, generator=torch.Generator().manual_seed(4)).numpy(), exact(x), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def trained_oscillator():
    return _oscillator_sampler(100)


class _ReferenceDensity:
    """Control: the sampler's draws scored as if it were the untrained reference process (the controller ignored)."""

    def __init__(self, proposal):
        self.proposal, self.n_atoms = proposal, proposal.n_atoms
        self.variance = float(proposal.sampler.schedule.variances[-1])
        self.version = 0

    def sample(self, n, generator=None):
        x, _ = self.proposal.sample(n, generator)
        return x, self.log_prob(x)

    def log_prob(self, x):
        return _log_normal(torch.as_tensor(x).reshape(len(x), -1), self.variance)


def _second_moment(move, ho, n_applies):
    sampler = mcmc.MCMCSampler(ho.thermodynamic_state(), ho.sampler_state(), move)
    values = []
    for i in range(n_applies):
        sampler.run(1, context_cache=cache.ContextCache(platform=None)) if i == 0 else sampler.run(1)
        x = np.asarray(sampler.sampler_state.positions.value_in_unit(unit.nanometer))[0]
        values.append((x**2).sum() / (3 * ho.reference.variance[0, 0]))
    batches = np.asarray(values).reshape(20, -1).mean(1)
    return batches.mean(), batches.std(ddof=1) / math.sqrt(len(batches))


def test_flow_mc_move_with_a_diffusion_proposal_samples_the_boltzmann_distribution(trained_oscillator):
    ho, sampler = trained_oscillator
    proposal = DiffusionProposal(sampler, seed=4)
    move = FlowMCMove(proposal, n_proposals=10, seed=5)
    mean, error = _second_moment(move, ho, 6000)
    assert abs(mean - 1.0) < 4 * error, (mean, error)
    assert 0.05 < move.fraction_accepted < 0.95
    # control: the same draws with the controller left out of log q are far off
    control = FlowMCMove(_ReferenceDensity(proposal), n_proposals=10, seed=5)
    control_mean, control_error = _second_moment(control, ho, 4000)
    assert abs(control_mean - 1.0) > 4 * control_error, (control_mean, control_error)


def test_moves_pass_their_stream_to_a_random_log_prob(trained_oscillator):
    _, sampler = trained_oscillator
    proposal = DiffusionProposal(sampler, seed=4)
    x = np.zeros((1, 3)) + 0.03
    same = [single_log_prob(proposal, x, lambda: torch.Generator().manual_seed(9)) for _ in range(2)]
    assert same[0] == same[1]
    assert single_log_prob(proposal, x, torch.Generator().manual_seed(10)) != same[0]
    own = [single_log_prob(proposal, x) for _ in range(2)]  # its own stream moves on
    assert own[0] != own[1]
    version = proposal.version
    with torch.no_grad():
        next(sampler.controller.parameters()).add_(0.1)
    assert proposal.version != version  # moves drop proposals drawn ahead


def test_flow_mc_integrator_runs_md_with_diffusion_jumps(trained_oscillator):
    ho, sampler = trained_oscillator
    integrator = FlowMCIntegrator(ho.temperature, 1 / unit.picosecond, 2 * unit.femtosecond, DiffusionProposal(sampler, seed=2),
                                  jump_interval=5, system=ho.system, seed=6)
    simulation = app.Simulation(ho.topology, ho.system, integrator)
    simulation.context.setPositions(ho.positions)
    simulation.step(500)
    assert integrator.n_proposed == 100 and integrator.n_accepted > 0


def test_a_diffusion_proposal_needs_a_sampler():
    with pytest.raises(InvalidTypeError, match="DiffusionSampler"):
        DiffusionProposal(object())
