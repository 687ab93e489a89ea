"""A diffusion sampler as an exact Metropolis–Hastings proposal (random log q estimates from backward paths)."""

import math

import numpy as np
import pytest
import torch
from openmm import app, unit
from openmmtools import cache, mcmc

from openmm_flowplugin import systems
from openmm_flowplugin._threads import package_threads
from openmm_flowplugin.diffusion import Controller, DiffusionProposal, DiffusionSampler, InternalCoordinateSpace, NoiseSchedule, backward_log_path_ratio
from openmm_flowplugin.errors import InvalidTypeError
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.mcmc import FlowMCMove
from openmm_flowplugin.proposals import GaussianProposal
from openmm_flowplugin.proposals.storage import ProposalStateError
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


def _grid_marginal(controller, schedule, grid):
    """The exact density of X_K of a 1-D Euler–Maruyama chain on ``grid`` (numerical convolution, memoryless or Gaussian source)."""
    dx = grid[1] - grid[0]
    with torch.no_grad():
        drift = lambda k, x: controller(torch.full((len(x),), float(schedule.times[k - 1])), torch.as_tensor(x)[:, None]).double().numpy()[:, 0]
        if schedule.memoryless:  # X_1 ~ N(σ_1 u(t_0, 0) Δt, v_1)
            mean = float(schedule.sigmas[0]) * drift(1, np.zeros(1))[0] / schedule.n_steps
            density, first = np.exp(-0.5 * (grid - mean) ** 2 / schedule.step_variances[0]) / math.sqrt(2 * math.pi * schedule.step_variances[0]), 2
        else:
            density, first = np.exp(-0.5 * grid**2 / schedule.source_scale**2) / math.sqrt(2 * math.pi * schedule.source_scale**2), 1
        for k in range(first, schedule.n_steps + 1):
            mean = grid + float(schedule.sigmas[k - 1]) * drift(k, grid) / schedule.n_steps
            variance = schedule.step_variances[k - 1]
            kernel = np.exp(-0.5 * (grid[:, None] - mean[None, :]) ** 2 / variance) / math.sqrt(2 * math.pi * variance)
            density = kernel @ (density * dx)
    return density


@pytest.mark.parametrize("source_scale", [0.0, 0.3])
def test_backward_paths_give_unbiased_estimates_of_a_controlled_chains_density(source_scale):
    torch.manual_seed(0)  # the layers' initialisers
    schedule = NoiseSchedule(1.0, 0.05, 8, source_scale=source_scale)
    controller = Controller(1, hidden=16, n_layers=2)
    with torch.no_grad():  # a strong, nonlinear control (the last layer starts at zero)
        controller.net[-1].weight.normal_(0.0, 1.5, generator=torch.Generator().manual_seed(1))
        controller.net[-1].bias.fill_(1.0)
    grid = np.linspace(-9.0, 9.0, 6001)
    exact = _grid_marginal(controller, schedule, grid)
    reference = np.exp(-0.5 * grid**2 / schedule.variances[-1]) / math.sqrt(2 * math.pi * schedule.variances[-1])
    for point in (-0.5, 0.4, 1.2):
        ratios = backward_log_path_ratio(controller, schedule, torch.full((40000, 1), point, dtype=torch.float64), torch.Generator().manual_seed(2))
        estimates = torch.exp(-ratios).numpy()
        error = estimates.std() / math.sqrt(len(estimates))
        q = np.interp(point, grid, exact)
        assert abs(estimates.mean() - q) < 4 * error, (point, estimates.mean(), q, error)
        # control: the uncontrolled reference's density is told apart
        assert abs(estimates.mean() - np.interp(point, grid, reference)) > 4 * error


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

    def log_prob(self, x, generator=None):
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


class _ReplayedBackwardNoise(DiffusionProposal):
    """Control: every estimate for a current state uses the same backward noise (a stream that never moves on)."""

    def log_prob(self, x, generator=None):
        return super().log_prob(x, generator=torch.Generator().manual_seed(0))


def _independence_chains(proposal, ho, n_chains=20000, n_steps=30, seed=0):
    """⟨x²⟩/exact of chains started from the exact distribution after ``n_steps`` MH steps with fresh estimates for the current states.

    If the kernel is exact, the Boltzmann distribution it starts from stays exactly so: every chain is a draw from it.
    """
    variance = float(ho.reference.variance[0, 0])
    rng = torch.Generator().manual_seed(seed)
    x = torch.randn((n_chains, 1, 3), generator=rng, dtype=torch.float64) * math.sqrt(variance)
    u = (x**2).sum((1, 2)) / (2 * variance)
    for step in range(n_steps):
        with package_threads():
            x_new, log_q_new = proposal.sample(n_chains, generator=torch.Generator().manual_seed(10_000 + step))
            log_q = proposal.log_prob(x, generator=torch.Generator().manual_seed(20_000 + step))
        u_new = (x_new**2).sum((1, 2)) / (2 * variance)
        log_alpha = -u_new + u + log_q - log_q_new
        accept = torch.log(torch.rand(n_chains, generator=rng, dtype=torch.float64)) < log_alpha
        x = torch.where(accept[:, None, None], x_new, x)
        u = torch.where(accept, u_new, u)
    values = ((x**2).sum((1, 2)) / (3 * variance)).numpy()
    return values.mean(), values.std(ddof=1) / math.sqrt(n_chains), float(accept.double().mean())


def test_the_kernel_with_fresh_estimates_keeps_the_boltzmann_distribution(trained_oscillator):
    ho, sampler = trained_oscillator
    mean, error, acceptance = _independence_chains(DiffusionProposal(sampler, seed=2), ho)
    assert abs(mean - 1.0) < 4 * error, (mean, error)
    assert acceptance > 0.05
    # control: the backward noise replayed for every current state (6.6-6.8 standard errors off for seeds 0-2)
    control_mean, control_error, _ = _independence_chains(_ReplayedBackwardNoise(sampler, seed=2), ho)
    assert abs(control_mean - 1.0) > 4 * control_error, (control_mean, control_error)


class _RecordingProposal(DiffusionProposal):
    """Records the first random number of each generator a move hands to log_prob."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = []

    def log_prob(self, x, generator=None):
        self.draws.append(float(torch.rand(1, generator=_copy_of(generator))))
        return super().log_prob(x, generator=generator)


def _copy_of(generator):
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def _move_draws(sampler, ho, seed, copy=False):
    proposal = _RecordingProposal(sampler, seed=1)
    move = FlowMCMove(proposal, n_proposals=3, seed=seed)
    if copy:
        move = move.__deepcopy__({})  # as openmmtools' MultiStateSampler does for each state
    chain = mcmc.MCMCSampler(ho.thermodynamic_state(), ho.sampler_state(), mcmc.SequenceMove([mcmc.LangevinDynamicsMove(n_steps=5), move]))
    chain.run(15, context_cache=cache.ContextCache(platform=None))  # MD moves the state: a fresh estimate per apply
    return proposal.draws


def _integrator_draws(sampler, ho, seed):
    proposal = _RecordingProposal(sampler, seed=1)
    integrator = FlowMCIntegrator(ho.temperature, 1 / unit.picosecond, 2 * unit.femtosecond, proposal, jump_interval=2, system=ho.system, seed=seed)
    simulation = app.Simulation(ho.topology, ho.system, integrator)
    simulation.context.setPositions(ho.positions)
    simulation.step(30)
    return proposal.draws


def test_moves_hand_a_new_generator_to_each_estimate(trained_oscillator):
    """Each estimate draws from the move's stream: distinct per apply or jump, repeated by an identical run, new in a copy."""
    ho, sampler = trained_oscillator
    for draws in (_move_draws, _integrator_draws):
        first, again, other = draws(sampler, ho, 5), draws(sampler, ho, 5), draws(sampler, ho, 6)
        assert len(first) >= 10 and len(set(first)) == len(first), first
        assert first == again
        assert not set(first) & set(other)
    assert not set(_move_draws(sampler, ho, 5)) & set(_move_draws(sampler, ho, 5, copy=True))


def test_a_random_log_prob_gets_a_generator_and_others_never_see_it(trained_oscillator):
    _, sampler = trained_oscillator
    proposal = DiffusionProposal(sampler, seed=4)
    x = np.zeros((1, 3)) + 0.03
    same = [single_log_prob(proposal, x, lambda: torch.Generator().manual_seed(9)) for _ in range(2)]
    assert same[0] == same[1]
    assert single_log_prob(proposal, x, torch.Generator().manual_seed(10)) != same[0]
    own = [single_log_prob(proposal, x) for _ in range(2)]  # without one: its own stream, which moves on
    assert own[0] != own[1]

    def never_called():
        raise AssertionError("a proposal whose log_prob takes no generator must not cost one")

    gaussian = GaussianProposal(np.zeros((1, 3)), np.full((1, 3), 0.05), seed=0)
    assert math.isfinite(single_log_prob(gaussian, x, never_called))
    version = proposal.version
    with torch.no_grad():
        next(sampler.controller.parameters()).add_(0.1)
    assert proposal.version != version  # moves drop proposals drawn ahead
    with torch.no_grad():
        next(sampler.controller.parameters()).sub_(0.1)


def test_flow_mc_integrator_runs_md_with_diffusion_jumps(trained_oscillator):
    ho, sampler = trained_oscillator
    integrator = FlowMCIntegrator(ho.temperature, 1 / unit.picosecond, 2 * unit.femtosecond, DiffusionProposal(sampler, seed=2),
                                  jump_interval=5, system=ho.system, seed=6)
    simulation = app.Simulation(ho.topology, ho.system, integrator)
    simulation.context.setPositions(ho.positions)
    simulation.step(500)
    assert integrator.n_proposed == 100 and integrator.n_accepted > 0


def test_a_move_with_a_diffusion_proposal_says_why_it_cannot_be_stored(trained_oscillator):
    _, sampler = trained_oscillator
    with pytest.raises(ProposalStateError, match="MultiStateSampler stores its moves"):
        FlowMCMove(DiffusionProposal(sampler, seed=1), seed=2).__getstate__()


def test_a_diffusion_proposal_needs_a_sampler():
    with pytest.raises(InvalidTypeError, match="DiffusionSampler"):
        DiffusionProposal(object())


def _four_atom_chain():
    """A 4-atom chain with exact marginals: torsion ∝ exp(−k_t(1 + cos φ)/kT), angle ∝ sin θ exp(−k_a(θ − θ₀)²/2kT)."""
    import openmm

    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    topology = app.Topology()
    residue = topology.addResidue("X", topology.addChain())
    atoms = [topology.addAtom(f"C{i}", app.element.carbon, residue) for i in range(4)]
    for i in range(3):
        topology.addBond(atoms[i], atoms[i + 1])
    return system, topology


def _chain_proposal(proposal_class):
    import types

    from openmm_flowplugin.geometry import InternalCoordinateTransform

    _, topology = _four_atom_chain()
    transform = InternalCoordinateTransform.from_topology(topology)
    kT = CHAIN["kT"]
    space = InternalCoordinateSpace(transform, [CHAIN["b0"]] * 3 + [CHAIN["theta0"]] * 2 + [2.5],
                                    [math.sqrt(kT / CHAIN["kb"])] * 3 + [math.sqrt(kT / CHAIN["ka"])] * 2 + [1.5])
    torch.manual_seed(0)  # the layers' initialisers
    controller = Controller(6, hidden=8, n_layers=1)
    with torch.no_grad():  # a random, nonzero control: the estimates are random (sd of log q̂ ~0.7)
        controller.net[-1].weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
        controller.net[-1].bias.normal_(0.0, 0.25, generator=torch.Generator().manual_seed(2))
    sampler = types.SimpleNamespace(controller=controller, coordinates=space, schedule=NoiseSchedule(1.0, 0.05, 10), n_atoms=4,
                                    molecular_system=types.SimpleNamespace(fingerprint=None), iteration=0)
    return proposal_class(sampler, seed=1), transform


CHAIN = dict(b0=0.15, kb=2e5, theta0=1.9, ka=400.0, kt=2.5, kT=300 * 0.0083144626)


class _ImageWeightsInTheJacobian(DiffusionProposal):
    """Control: the torsion image weights g left in the volume factor of the principal-range moves."""

    def _positions_and_log_q(self, z, log_path_ratio):
        x, log_volume = self.sampler.coordinates.to_positions(z)
        return x, -log_path_ratio - log_volume


def _chain_averages(proposal_class, n_chains=20000, n_steps=40):
    """⟨cos φ⟩ and ⟨θ⟩ over independence chains (fresh estimates every step) after ``n_steps``, with standard errors."""
    proposal, transform = _chain_proposal(proposal_class)
    c = CHAIN

    def reduced_energy(x):
        ic, _, _ = transform.to_internal(x)
        energy = (0.5 * c["kb"] * (ic.bonds - c["b0"]) ** 2).sum(-1) + (0.5 * c["ka"] * (ic.angles - c["theta0"]) ** 2).sum(-1)
        return (energy + c["kt"] * (1 + torch.cos(ic.torsions[:, 0]))) / c["kT"], ic

    rng = torch.Generator().manual_seed(3)
    x = proposal.sampler.coordinates.to_positions(torch.zeros(n_chains, 6, dtype=torch.float64))[0]
    u, _ = reduced_energy(x)
    for step in range(n_steps):
        with package_threads():
            x_new, log_q_new = proposal.sample(n_chains, generator=torch.Generator().manual_seed(10_000 + step))
            log_q = proposal.log_prob(x, generator=torch.Generator().manual_seed(20_000 + step))
        u_new, _ = reduced_energy(torch.nan_to_num(x_new))
        log_alpha = torch.where(torch.isfinite(log_q_new), -u_new + u + log_q - log_q_new, torch.full_like(u, -math.inf))
        accept = torch.log(torch.rand(n_chains, generator=rng, dtype=torch.float64)) < log_alpha
        x, u = torch.where(accept[:, None, None], x_new, x), torch.where(accept, u_new, u)
    _, ic = reduced_energy(x)
    values = {"cos phi": torch.cos(ic.torsions[:, 0]).numpy(), "theta": ic.angles[:, 0].numpy()}
    return {name: (v.mean(), v.std(ddof=1) / math.sqrt(n_chains)) for name, v in values.items()}


def test_in_internal_coordinates_the_kernel_samples_exact_torsion_and_angle_distributions():
    from scipy import integrate, special

    c = CHAIN
    weight = lambda t: math.sin(t) * math.exp(-0.5 * c["ka"] * (t - c["theta0"]) ** 2 / c["kT"])
    exact = {"cos phi": -special.i1(c["kt"] / c["kT"]) / special.i0(c["kt"] / c["kT"]),
             "theta": integrate.quad(lambda t: t * weight(t), 0, math.pi)[0] / integrate.quad(weight, 0, math.pi)[0]}
    averages = _chain_averages(DiffusionProposal)
    for name, (mean, error) in averages.items():
        assert abs(mean - exact[name]) < 4 * error, (name, mean, error, exact[name])
    # control: the image weights left in the Jacobian bias the torsion (11 standard errors off)
    mean, error = _chain_averages(_ImageWeightsInTheJacobian)["cos phi"]
    assert abs(mean - exact["cos phi"]) > 4 * error, (mean, error, exact["cos phi"])
