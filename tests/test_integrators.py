"""FlowMCIntegrator: exactness against exact references, the OpenMM Simulation protocol, bad input."""

import copy
import io

import mdtraj
import numpy as np
import openmm
import pytest
import torch
from mdtraj.reporters import HDF5Reporter
from openmm import app, unit

from openmm_flowplugin import systems
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.proposals import GaussianProposal
from openmm_flowplugin.integrators import FlowMCReporter

N_SIGMA = 6.0
REFERENCE = openmm.Platform.getPlatformByName("Reference")


def batch_mean_and_error(values, n_batches=20):
    """Mean of a correlated series and its standard error from ``n_batches`` batch means."""
    values = np.asarray(values, dtype=np.float64)
    batches = values[: len(values) // n_batches * n_batches].reshape(n_batches, -1).mean(axis=1)
    return values.mean(), batches.std(ddof=1) / np.sqrt(n_batches)


def deviation_in_sigma(samples, exact, name):
    """(mean - exact) / standard error of the mean."""
    mean, error = batch_mean_and_error(samples)
    assert error > 0, f"{name}: zero standard error, the chain did not move"
    return (mean - exact) / error


def assert_within_sigma(samples, exact, name):
    z = deviation_in_sigma(samples, exact, name)
    assert abs(z) < N_SIGMA, f"{name}: mean deviates from exact {exact:.5g} by {z:.1f} standard errors"


def make_simulation(molecular_system, proposal, platform=REFERENCE, seed=1, **options):
    options = {"jump_interval": 1, "n_proposals": 1, "seed": seed, **options}  # the proposals' streams too
    friction = options.pop("friction", 1.0)
    timestep = options.pop("timestep", 0.002)
    integrator = FlowMCIntegrator(molecular_system.temperature, friction, timestep, proposal, **options)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(molecular_system.topology, molecular_system.system, integrator, platform)
    simulation.context.setPositions(molecular_system.positions)
    simulation.context.setVelocitiesToTemperature(molecular_system.temperature, seed)
    return simulation


def sample_positions(simulation, n_samples, stride):
    out = np.empty((n_samples, 3))
    for i in range(n_samples):
        simulation.step(stride)
        out[i] = simulation.context.getState(positions=True).getPositions(asNumpy=True)[0]._value
    return out


# --- exactness ----------------------------------------------------------------------------------------

def test_jump_kernel_alone_is_exact_on_double_well():
    """MD frozen (tiny timestep): a pure independence Metropolis-Hastings chain with batched proposals.

    With jump_interval=1 the first step only takes the snapshot, so 5999 jumps of 3 proposals.
    """
    dw = systems.get("double_well_2d")
    proposal = GaussianProposal([[0.0, 0.0, 0.0]], [[1.0, 0.35, 0.12]], seed=3)
    sim = make_simulation(dw, proposal, timestep=1e-9, n_proposals=3)
    x = sample_positions(sim, 6000, 1)
    ref = dw.reference
    assert_within_sigma(x[:, 0] > 0, ref.probability(lambda x, y: x > 0), "P(x > 0)")
    assert_within_sigma(x[:, 0] > 1.2, ref.probability(lambda x, y: x > 1.2), "P(x > 1.2)")
    assert_within_sigma((x[:, 0] - ref.mean()[0]) ** 2, ref.covariance()[0, 0], "var x")
    assert_within_sigma(x[:, 1] ** 2, ref.covariance()[1, 1] + ref.mean()[1] ** 2, "<y^2>")
    assert_within_sigma(x[:, 2] ** 2, ref.z_variance, "<z^2>")
    rate = sim.integrator.acceptance_rate
    assert sim.integrator.n_proposed == 3 * (6000 - 1) and 0.05 < rate < 0.95


def harmonic_oscillator_deviations(proposal):
    """Deviations (in standard errors) of <r_k> and var r_k from exact, MD + jumps on the harmonic oscillator."""
    ho = systems.get("harmonic_oscillator")
    ref = ho.reference
    sim = make_simulation(ho, proposal, timestep=0.01, jump_interval=3)
    x = sample_positions(sim, 6000, 3)
    deviations = {}
    for k in range(3):
        deviations[f"<r_{k}>"] = deviation_in_sigma(x[:, k], ref.mean[0, k], f"<r_{k}>")
        deviations[f"var r_{k}"] = deviation_in_sigma((x[:, k] - ref.mean[0, k]) ** 2, ref.variance[0, k], f"var r_{k}")
    return deviations, sim.integrator


def test_md_with_jumps_is_exact_on_harmonic_oscillator():
    """LangevinMiddle samples harmonic wells without time-step error, so MD + jumps must be exact."""
    ref = systems.get("harmonic_oscillator").reference
    # a biased, too-wide proposal: a missing Hastings term would pull the averages towards it (see the control)
    deviations, integrator = harmonic_oscillator_deviations(GaussianProposal(ref.mean + 0.03, 1.6 * ref.std, seed=5))
    assert all(abs(z) < N_SIGMA for z in deviations.values()), deviations
    assert integrator.n_proposed == 6000 and integrator.n_accepted > 1000


def test_harmonic_oscillator_check_detects_a_missing_hastings_term():
    """Control: the same proposal with log q dropped (a missing Hastings term) fails the exactness check.

    Measured over 5 seeds (this one included): the largest deviation is 9.8 to 11.8 standard errors (threshold 6).
    """

    class NoHastingsTerm(GaussianProposal):
        def sample(self, n, generator=None):
            x, log_q = super().sample(n, generator=generator)
            return x, torch.zeros_like(log_q)

        def log_prob(self, x):
            return torch.zeros(len(x), dtype=torch.float64)

    ref = systems.get("harmonic_oscillator").reference
    deviations, _ = harmonic_oscillator_deviations(NoHastingsTerm(ref.mean + 0.03, 1.6 * ref.std, seed=5))
    assert max(abs(z) for z in deviations.values()) > N_SIGMA, deviations


@pytest.mark.slow
def test_md_with_jumps_on_double_well_matches_reference_histogram():
    dw = systems.get("double_well_2d")
    proposal = GaussianProposal([[0.0, 0.0, 0.0]], [[1.0, 0.35, 0.12]], seed=7)
    sim = make_simulation(dw, proposal, timestep=0.005, jump_interval=10, n_proposals=2)
    x = sample_positions(sim, 20000, 5)
    edges = np.linspace(-1.5, 1.5, 7)
    exact = dw.reference.bin_probabilities(edges, axis=0)
    for i, p in enumerate(exact):
        assert_within_sigma((x[:, 0] >= edges[i]) & (x[:, 0] < edges[i + 1]), p, f"bin {i}")


# --- the OpenMM Simulation protocol --------------------------------------------------------------------

def test_simulation_step_reporters_and_step_count(tmp_path):
    ho = systems.get("harmonic_oscillator")
    proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=0)
    sim = make_simulation(ho, proposal, jump_interval=7, n_proposals=2)
    log, stats = io.StringIO(), io.StringIO()
    sim.reporters += [
        app.StateDataReporter(log, 10, step=True, potentialEnergy=True, temperature=True),
        app.DCDReporter(str(tmp_path / "t.dcd"), 10),
        HDF5Reporter(str(tmp_path / "t.h5"), 10),
        FlowMCReporter(stats, 10),
    ]
    sim.step(95)
    sim.step(3)
    sim.step(1)
    sim.reporters[2].close()
    assert sim.currentStep == 99
    assert sim.integrator.n_proposed == 2 * (99 // 7)  # a jump at steps 7, 14, ..., 98
    assert len(log.getvalue().splitlines()) == 1 + 9
    rows = [line.split(",") for line in stats.getvalue().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(10, 100, 10))
    assert int(rows[-1][2]) == 2 * (90 // 7)
    assert mdtraj.load_dcd(str(tmp_path / "t.dcd"), top=mdtraj.Topology.from_openmm(ho.topology)).n_frames == 9
    assert mdtraj.load(str(tmp_path / "t.h5")).n_frames == 9
    assert sim.integrator.getStepSize() == 0.002 * unit.picosecond


def test_checkpoint_and_state_round_trips(tmp_path):
    ho = systems.get("harmonic_oscillator")
    proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=0)
    sim = make_simulation(ho, proposal, jump_interval=4)
    sim.step(41)  # ends just after a snapshot: a proposal is loaded and pending
    stats = sim.integrator.statistics
    sim.saveCheckpoint(str(tmp_path / "c.chk"))
    sim.saveState(str(tmp_path / "s.xml"))
    positions = sim.context.getState(positions=True).getPositions(asNumpy=True)
    for load in ("loadCheckpoint", "loadState"):
        resumed = make_simulation(ho, copy.deepcopy(proposal), jump_interval=4)
        getattr(resumed, load)(str(tmp_path / ("c.chk" if load == "loadCheckpoint" else "s.xml")))
        assert resumed.integrator.statistics == stats
        assert np.array_equal(resumed.context.getState(positions=True).getPositions(asNumpy=True), positions)
        resumed.step(8)
        assert resumed.integrator.n_proposed == stats["n_proposed"] + 2
    # the same pending proposal made in both copies: the resumed run repeats the original
    sim.step(8)
    assert sim.integrator.n_proposed == stats["n_proposed"] + 2


def test_changed_positions_defer_the_jump_instead_of_using_a_stale_proposal():
    ho = systems.get("harmonic_oscillator")
    proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=0)
    sim = make_simulation(ho, proposal, jump_interval=5)
    sim.step(4)  # snapshot taken, proposal loaded for the current positions
    sim.context.setPositions(ho.positions + 0.1 * unit.nanometer)
    sim.step(1)
    assert sim.integrator.n_proposed == 0
    sim.step(2)
    assert sim.integrator.n_proposed == 1


def test_statistics_setter_and_reset():
    ho = systems.get("harmonic_oscillator")
    proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=0)
    sim = make_simulation(ho, proposal, jump_interval=2)
    assert np.isnan(sim.integrator.acceptance_rate)
    sim.step(10)
    assert sim.integrator.acceptance_rate == sim.integrator.n_accepted / sim.integrator.n_proposed
    sim.integrator.reset_statistics()
    assert sim.integrator.statistics == {"n_proposed": 0, "n_accepted": 0, "n_invalid": 0}


def test_rigid_invariant_proposals_are_aligned_onto_the_current_configuration():
    ala = systems.get("alanine_dipeptide_vacuum")

    class RotatedCopies:
        """Randomly rotated and shifted copies of one configuration, uniform density: always accepted
        when the energy does not change, i.e. only if aligned and re-placed by a rigid motion."""

        rigid_invariant = True
        n_atoms = 22
        version = 0  # no parameters: never changes

        def sample(self, n, generator=None):
            q, _ = torch.linalg.qr(torch.randn(n, 3, 3, dtype=torch.float64, generator=generator))
            x = torch.as_tensor(ala.positions_nm) @ q.transpose(1, 2) + 5.0
            return x, torch.zeros(n, dtype=torch.float64)

        def log_prob(self, x):
            return torch.zeros(x.shape[0], dtype=torch.float64)

    sim = make_simulation(ala, RotatedCopies(), timestep=1e-9, jump_interval=1)
    sim.step(6)
    x = sim.context.getState(positions=True).getPositions(asNumpy=True)._value
    assert sim.integrator.n_accepted == 5
    assert np.abs(x.mean(axis=0) - ala.positions_nm.mean(axis=0)).max() < 1e-6  # aligned, not at +5 nm


# --- bad input ------------------------------------------------------------------------------------------

def constrained_alanine():
    ala = systems.get("alanine_dipeptide_vacuum")
    system = copy.deepcopy(ala.system)
    system.addConstraint(0, 1, 0.109)
    return ala, system


def test_constraints_are_refused_at_construction_and_in_the_context():
    ala, system = constrained_alanine()
    proposal = GaussianProposal(ala.positions_nm, 0.01, seed=0)
    with pytest.raises(ValueError, match="1 constraint.*constraints=None.*respects_constraints"):
        FlowMCIntegrator(300, 1.0, 0.001, proposal, system=system)
    integrator = FlowMCIntegrator(300, 1.0, 0.001, proposal, jump_interval=5)
    simulation = app.Simulation(ala.topology, system, integrator, REFERENCE)
    simulation.context.setPositions(ala.positions)
    with pytest.raises(ValueError, match="constraint"):
        simulation.step(10)
    assert integrator.n_proposed == 0


def test_proposal_declaring_respect_for_constraints_is_accepted():
    ala, system = constrained_alanine()
    proposal = GaussianProposal(ala.positions_nm, 0.01, seed=0)
    proposal.respects_constraints = True
    integrator = FlowMCIntegrator(300, 1.0, 0.001, proposal, jump_interval=5, system=system)
    simulation = app.Simulation(ala.topology, system, integrator, REFERENCE)
    simulation.context.setPositions(ala.positions)
    simulation.step(10)
    assert integrator.n_proposed == 2


def test_wrong_molecule_is_refused():
    ala = systems.get("alanine_dipeptide_vacuum")
    ho = systems.get("harmonic_oscillator")
    wrong_count = GaussianProposal(ho.positions_nm, 0.05, seed=0)
    with pytest.raises(ValueError, match="moves 1 atoms but the System has 22"):
        FlowMCIntegrator(300, 1.0, 0.001, wrong_count, system=ala.system)
    simulation = app.Simulation(ala.topology, ala.system, FlowMCIntegrator(300, 1.0, 0.001, wrong_count), REFERENCE)
    simulation.context.setPositions(ala.positions)
    with pytest.raises(ValueError, match="moves 1 atoms"):
        simulation.step(1)
    wrong_molecule = GaussianProposal(ala.positions_nm, 0.05, seed=0)
    wrong_molecule.fingerprint = "0" * 64
    with pytest.raises(ValueError, match="another molecule"):
        FlowMCIntegrator(300, 1.0, 0.001, wrong_molecule, system=ala.system, topology=ala.topology)
    wrong_molecule.fingerprint = ala.fingerprint
    FlowMCIntegrator(300, 1.0, 0.001, wrong_molecule, system=ala.system, topology=ala.topology)


@pytest.mark.parametrize("options, match", [
    ({"jump_interval": 0}, "jump_interval must be an integer >= 1"),
    ({"n_proposals": 1.5}, "n_proposals must be an integer >= 1"),
    ({"timestep": -1.0}, "timestep must be a finite number > 0 ps, got -1.0"),
    ({"timestep": float("inf")}, "timestep must be a finite number > 0 ps, got inf"),  # used to be accepted
    ({"timestep": float("nan")}, "timestep must be a finite number > 0 ps, got nan"),
    ({"timestep": 0 * unit.femtosecond}, "timestep must be a finite number > 0 ps"),
    ({"timestep": True}, "timestep must be a real number"),
    ({"friction": float("inf")}, "friction must be a finite number >= 0 /ps, got inf"),  # used to be accepted
    ({"friction": float("nan")}, "friction must be a finite number >= 0 /ps, got nan"),
    ({"friction": -1.0 / unit.picosecond}, "friction must be a finite number >= 0 /ps"),
    ({"temperature": float("inf")}, "temperature must be a positive number of kelvin, got inf"),
    ({"temperature": float("nan")}, "temperature must be a positive number of kelvin, got nan"),
    ({"temperature": 0.0}, "temperature must be a positive number of kelvin"),
    ({"temperature": True}, "temperature must be a positive number of kelvin"),
])
def test_bad_arguments_name_the_value(options, match):
    ho = systems.get("harmonic_oscillator")
    arguments = {"temperature": 300, "friction": 1.0, "timestep": 0.001, "proposal": GaussianProposal(ho.positions_nm, 0.05)}
    with pytest.raises(ValueError, match=match):
        FlowMCIntegrator(**{**arguments, **options})


@pytest.mark.parametrize("setter, value, match", [
    ("setStepSize", float("inf"), "timestep must be a finite number > 0 ps"),
    ("setStepSize", -0.001, "timestep must be a finite number > 0 ps"),
    ("setFriction", float("inf"), "friction must be a finite number >= 0 /ps"),
    ("setFriction", -1.0, "friction must be a finite number >= 0 /ps"),
    ("setTemperature", float("nan"), "temperature must be a positive number of kelvin"),
])
def test_setters_refuse_bad_values_and_keep_the_old_ones(setter, value, match):
    ho = systems.get("harmonic_oscillator")
    integrator = FlowMCIntegrator(300, 1.0, 0.001, GaussianProposal(ho.positions_nm, 0.05))
    before = (integrator.getStepSize(), integrator.getFriction(), integrator.getTemperature())
    with pytest.raises(ValueError, match=match):
        getattr(integrator, setter)(value)
    assert (integrator.getStepSize(), integrator.getFriction(), integrator.getTemperature()) == before


def test_nan_proposals_are_rejections():
    ho = systems.get("harmonic_oscillator")

    class NaNProposal(GaussianProposal):
        def sample(self, n, generator=None):
            x, log_q = super().sample(n, generator=generator)
            x[::2] = float("nan")  # every other proposal has NaN coordinates
            log_q[1::4] = float("nan")  # and some have a NaN density
            return x, log_q

    proposal = NaNProposal(ho.reference.mean, ho.reference.std, seed=0)
    sim = make_simulation(ho, proposal, jump_interval=1, n_proposals=4)
    sim.step(50)
    x = sim.context.getState(positions=True).getPositions(asNumpy=True)._value
    assert np.isfinite(x).all()
    assert sim.integrator.n_proposed == 4 * 49
    assert 0 < sim.integrator.n_accepted <= 49  # only 1 of 4 proposals per jump is valid


# --- GPU -------------------------------------------------------------------------------------------------

def test_md_and_jump_programs_share_one_random_seed():
    """CUDA and OpenCL refuse a CompoundIntegrator whose integrators ask for different seeds."""
    ho = systems.get("harmonic_oscillator")
    integrator = FlowMCIntegrator(ho.temperature, 1.0, 0.01, GaussianProposal(ho.positions_nm, 0.1, seed=1))

    def seeds(compound):
        return {compound.getIntegrator(i).getRandomNumberSeed() for i in range(compound.getNumIntegrators())}

    assert len(seeds(integrator)) == 1  # by default
    integrator.setRandomNumberSeed(5)
    assert seeds(integrator) == {5} and seeds(copy.deepcopy(integrator)) == {5}


@pytest.mark.gpu
def test_cuda_platform_is_exact_on_harmonic_oscillator():
    ho = systems.get("harmonic_oscillator")
    ref = ho.reference
    proposal = GaussianProposal(ref.mean + 0.03, 1.6 * ref.std, seed=5)
    sim = make_simulation(ho, proposal, platform=openmm.Platform.getPlatformByName("CUDA"), timestep=0.01, jump_interval=3)
    x = sample_positions(sim, 6000, 3)
    for k in range(3):
        assert_within_sigma((x[:, k] - ref.mean[0, k]) ** 2, ref.variance[0, k], f"var r_{k}")
    assert sim.integrator.n_proposed == 6000


def test_example_differs_from_plain_md_in_exactly_the_integrator_line():
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    flow = (examples / "replace_integrator.py").read_text().splitlines()
    plain = (examples / "replace_integrator_plain.py").read_text().splitlines()
    differing = [(a, b) for a, b in zip(plain, flow) if a != b]
    assert len(flow) == len(plain) and len(differing) == 1
    assert differing[0][0].startswith("integrator = openmm.LangevinMiddleIntegrator(")
    assert differing[0][1].startswith("integrator = integrators.FlowMCIntegrator(")
