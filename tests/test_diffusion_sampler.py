"""The CV-biased diffusion sampler on 2D systems with exact free energies (quadrature), resume and bad input."""

import dataclasses
import math

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from openmm_flowplugin import systems
from openmm_flowplugin.analysis import basin_free_energy_difference, free_energy_surface
from openmm_flowplugin.diffusion import DiffusionSampler, NoiseSchedule, WellTemperedBias
from openmm_flowplugin.diffusion import sampler as sampler_module
from openmm_flowplugin.diffusion.chain import run_chains
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.proposals.streams import torch_generator
from openmm_flowplugin.geometry import CartesianComponent
from openmm_flowplugin.systems import MolecularSystem

# name: (grid lower, grid upper, basins A and B as (x range, y range))
CASES = {
    "mueller_brown": ((-2.0, -1.0), (1.5, 2.5), [(-1.5, -0.2), (1.0, 2.0)], [(0.2, 1.2), (-0.4, 0.4)]),
    "double_well_2d": ((-2.0, -1.5), (2.0, 1.5), [(-2.0, 0.0), (-2.0, 2.0)], [(0.6, 1.4), (-0.3, 0.3)]),
}


def _xy_bias(molecular_system, lower, upper, **overrides):
    settings = dict(n_nodes=(36, 41), hill_width=0.25, hill_height=0.02, bias_factor=6.0)
    settings.update(overrides)
    return WellTemperedBias([CartesianComponent(0, "x"), CartesianComponent(0, "y")], lower=lower, upper=upper,
                            temperature=molecular_system.temperature, **settings)


def _sampler(molecular_system, bias, seed=0, **overrides):
    settings = dict(schedule=NoiseSchedule(1.5, 0.02, 50), hidden=64, n_layers=2, batch_size=128, n_adjoint_steps=40,
                    training_batch_size=128, max_gradient_norm=20.0, seed=seed)
    settings.update(overrides)
    return DiffusionSampler(molecular_system, bias=bias, **settings)


def _exact_basin_delta_f(reference, box_a, box_b):
    def probability(box):
        (x0, x1), (y0, y1) = box
        return reference.probability(lambda x, y: (x >= x0) & (x < x1) & (y >= y0) & (y < y1))

    return -reference.kT * math.log(probability(box_b) / probability(box_a))


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request):
    name = request.param
    molecular_system = systems.get(name)
    lower, upper, box_a, box_b = CASES[name]
    sampler = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper))
    sampler.train(150)
    return name, molecular_system, sampler, sampler.sample(8000)


def test_reweighted_basin_free_energy_difference_equals_quadrature(trained):
    name, molecular_system, sampler, samples = trained
    _, _, box_a, box_b = CASES[name]
    basins = {"A": box_a, "B": box_b}
    exact = _exact_basin_delta_f(molecular_system.reference, box_a, box_b)
    estimate = basin_free_energy_difference(samples.cv_values, samples.log_weights, basins, "A", "B", molecular_system.temperature)
    assert abs(estimate.value - exact) < 4 * estimate.error, (estimate, exact)
    assert samples.n_effective > 5  # the weights are not degenerate (one sample carrying everything)
    # control: the same samples without their weights (what the biased sampler visits) are far off
    unweighted = basin_free_energy_difference(samples.cv_values, np.zeros(len(samples.log_weights)), basins, "A", "B",
                                              molecular_system.temperature)
    assert abs(unweighted.value - exact) > 4 * unweighted.error


def test_reweighted_fes_agrees_with_quadrature_within_its_errors(trained):
    name, molecular_system, sampler, samples = trained
    lower, upper, _, _ = CASES[name]
    reference = molecular_system.reference
    edges = [np.linspace(lower[0], upper[0], 8), np.linspace(lower[1], upper[1], 8)]
    fes = free_energy_surface(samples.cv_values, samples.log_weights, edges, molecular_system.temperature)
    exact_p = np.array([[reference.probability(lambda x, y: (x >= a) & (x < b) & (y >= c) & (y < d))
                         for c, d in zip(edges[1][:-1], edges[1][1:])] for a, b in zip(edges[0][:-1], edges[0][1:])])
    with np.errstate(divide="ignore"):
        exact_f = -reference.kT * np.log(exact_p / exact_p.sum())
    exact_f -= np.nanmin(exact_f)

    def mean_squared_z(estimate, error):
        mask = (exact_f < 8.0) & np.isfinite(estimate) & (error > 0)
        shift = np.average(estimate[mask] - exact_f[mask], weights=1 / error[mask] ** 2)
        return np.mean(((estimate[mask] - shift - exact_f[mask]) / error[mask]) ** 2), mask.sum()

    chi2, n_bins = mean_squared_z(fes.free_energy, fes.error)
    assert n_bins >= 6
    # mean of n_bins squared z-scores: expectation 1; 4 leaves room for the bootstrap's own uncertainty
    assert chi2 < 4.0, chi2
    # control: the unweighted histogram (the biased ensemble) fails the same test
    biased = free_energy_surface(samples.cv_values, np.zeros(len(samples.log_weights)), edges, molecular_system.temperature)
    assert mean_squared_z(biased.free_energy, biased.error)[0] > 4.0


def test_training_end_points_pooled_with_samples_reweight_to_quadrature(trained):
    name, molecular_system, sampler, samples = trained
    _, _, box_a, box_b = CASES[name]
    basins = {"A": box_a, "B": box_b}
    exact = _exact_basin_delta_f(molecular_system.reference, box_a, box_b)
    training = sampler.training_samples(discard=0.5)
    assert len(training.log_weights) == 75 * 128 and training.positions is None
    assert training.n_effective > 5
    pooled = samples.pooled(training)
    assert len(pooled.log_weights) == 8000 + 75 * 128
    for estimate_of in (training, pooled):
        estimate = basin_free_energy_difference(estimate_of.cv_values, estimate_of.log_weights, basins, "A", "B",
                                                molecular_system.temperature)
        assert abs(estimate.value - exact) < 4 * estimate.error, (estimate, exact)
    # control: the end points as the biased training drew them, unweighted, are far off
    unweighted = basin_free_energy_difference(training.cv_values, np.zeros(len(training.log_weights)), basins, "A", "B",
                                              molecular_system.temperature)
    assert abs(unweighted.value - exact) > 4 * unweighted.error


def test_training_end_points_carry_the_exact_weight_of_their_chain():
    molecular_system = systems.get("mueller_brown")
    lower, upper, _, _ = CASES["mueller_brown"]
    sampler = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=3, batch_size=32, n_adjoint_steps=3,
                       training_batch_size=32)
    sampler.train(2)
    # the next refill's chains, drawn again from its own random stream: the weight is log ∏B − log p₀ − log ∏F − u, as in sample()
    chains = run_chains(sampler.controller, sampler.schedule, 32, torch_generator(3, sampler_module._REFILL, sampler.iteration))
    u, _ = sampler._energies(chains.x_final)
    sampler.refill(deposit=False)
    recorded = sampler.training_samples(discard=0.0)
    assert len(recorded.log_weights) == 3 * 32
    assert np.array_equal(recorded.log_weights[-32:], (chains.log_path_ratio - u).numpy())
    assert np.allclose(recorded.cv_values[-32:], chains.x_final.reshape(32, -1)[:, :2].numpy(), atol=1e-12)
    assert len(sampler.training_samples(discard=0.5).log_weights) == 2 * 32  # iterations 1 and 2 (the refill above is 2)
    sampler.refill(deposit=False)  # repeated at the same iteration (a retry): replaced, not recorded twice
    again = sampler.training_samples(discard=np.float32(0.0))
    assert np.array_equal(again.log_weights, recorded.log_weights) and np.array_equal(again.cv_values, recorded.cv_values)


def test_training_samples_bad_input_is_refused():
    molecular_system = systems.get("mueller_brown")
    lower, upper, _, _ = CASES["mueller_brown"]
    unbiased = _sampler(molecular_system, None, batch_size=8, n_adjoint_steps=1, training_batch_size=8)
    with pytest.raises(InvalidInputError, match="no bias"):
        unbiased.training_samples()
    biased = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), batch_size=8, n_adjoint_steps=1, training_batch_size=8)
    biased.train(1)
    for discard in (1.0, -0.1, True, "half"):
        with pytest.raises(InvalidInputError, match="discard must be a fraction"):
            biased.training_samples(discard=discard)
    colder = dataclasses.replace(biased.training_samples(), kT=1.0)
    with pytest.raises(InvalidInputError, match="one temperature"):
        biased.training_samples().pooled(colder)
    with pytest.raises(InvalidInputError, match="same CVs"):
        biased.training_samples().pooled(dataclasses.replace(biased.training_samples(), cv_values=None))


def test_a_uniform_bias_changes_no_reweighted_average(trained):
    _, molecular_system, sampler, samples = trained
    approximate = samples.approximate_log_weights
    shifted = approximate + 7.5 / samples.kT  # V -> V + const
    normalised = np.exp(approximate - approximate.max()) / np.exp(approximate - approximate.max()).sum()
    normalised_shifted = np.exp(shifted - shifted.max()) / np.exp(shifted - shifted.max()).sum()
    assert np.allclose(normalised, normalised_shifted, rtol=1e-12, atol=0)
    # the exact weights do not involve the bias at all: a constant added to the grid changes none of them
    before = sampler.sample(64)
    sampler.n_sample_batches -= 1
    sampler.bias.values = sampler.bias.values + 3.0
    sampler.bias._coefficients = None
    after = sampler.sample(64)
    assert np.array_equal(before.log_weights, after.log_weights)
    inside = np.all((after.cv_values >= sampler.bias.lower) & (after.cv_values <= sampler.bias.upper), axis=1)
    assert inside.sum() > 32
    assert np.allclose(after.bias[inside] - before.bias[inside], 3.0, atol=1e-9)
    assert np.array_equal(after.bias[~inside], before.bias[~inside])  # zero outside the grid, as in OpenMM
    sampler.bias.values = sampler.bias.values - 3.0
    sampler.bias._coefficients = None


def test_training_statistics_and_energy_count(trained):
    _, _, sampler, _ = trained
    assert len(sampler.history) == 150 and sampler.n_invalid == 0
    assert sampler.n_energy_evaluations >= 150 * 128 + 8000
    assert sampler.history[-1]["bias_max_kJ"] > 5.0 and 0 < sampler.history[-1]["buffer_ess"] <= 1


def test_training_interrupted_mid_iteration_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    """A run killed inside an iteration, past its last checkpoint (leaving a stale ``.partial`` file, as a kill during a
    save would: it is ignored and replaced), resumes from that checkpoint and ends where an uninterrupted run does."""
    molecular_system = systems.get("mueller_brown")
    lower, upper, _, _ = CASES["mueller_brown"]
    small = dict(batch_size=32, n_adjoint_steps=3, training_batch_size=32, snapshot_interval=2)
    straight = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    straight.train(6)
    checkpoint = tmp_path / "sampler.pt"
    interrupted = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    optimise = DiffusionSampler._optimise

    def killed_in_iteration_4(self, *args, **kwargs):
        if self.iteration == 4:
            checkpoint.with_name(checkpoint.name + ".partial").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt
        return optimise(self, *args, **kwargs)

    monkeypatch.setattr(DiffusionSampler, "_optimise", killed_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(6, checkpoint=checkpoint, checkpoint_interval=3)
    monkeypatch.setattr(DiffusionSampler, "_optimise", optimise)
    resumed = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    resumed.train(6, checkpoint=checkpoint, checkpoint_interval=3)
    assert resumed.iteration == 6 and resumed.n_energy_evaluations == straight.n_energy_evaluations
    for a, b in zip(straight.controller.parameters(), resumed.controller.parameters()):
        assert torch.equal(a, b)
    assert np.array_equal(straight.bias.values, resumed.bias.values)
    # iteration 4 had deposited hills past the checkpoint (at 3): the resumed run does not keep them, nor its end points
    assert resumed.bias.n_hills == straight.bias.n_hills == 6 * 32
    for field in ("log_weights", "cv_values"):
        assert np.array_equal(getattr(resumed.training_samples(0.0), field), getattr(straight.training_samples(0.0), field))
    # in memory the interrupt undid iteration 4 (hills, buffer rows, end points, network steps): the same object goes on
    # to where the uninterrupted run ends
    assert interrupted.iteration == 4 and interrupted.bias.n_hills == 4 * 32 and len(interrupted.buffer) == 4 * 32
    interrupted.train(6)
    for a, b in zip(straight.controller.parameters(), interrupted.controller.parameters()):
        assert torch.equal(a, b)
    assert np.array_equal(straight.bias.values, interrupted.bias.values)
    assert np.array_equal(straight.training_samples(0.0).log_weights, interrupted.training_samples(0.0).log_weights)


def test_a_diverged_iteration_is_undone_and_says_how_to_go_on(monkeypatch):
    """A non-finite loss in the regression (after the refill deposited its hills) leaves the sampler as after the
    previous iteration, not with that iteration's hills and rows, which a retry would deposit again."""
    molecular_system = systems.get("mueller_brown")
    lower, upper, _, _ = CASES["mueller_brown"]
    small = dict(batch_size=32, n_adjoint_steps=3, training_batch_size=32)
    straight = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    straight.train(2)
    at_two = (straight.bias.values.copy(), straight.buffer.data["x_final"].clone(), [p.detach().clone() for p in straight.controller.parameters()])
    straight.train(3)
    failing = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    loss = DiffusionSampler._adjoint_loss
    calls = []

    def nan_on_the_third_step_of_iteration_2(self, generator):
        calls.append(self.iteration)
        value = loss(self, generator)
        return value * math.nan if calls.count(2) == 3 else value

    monkeypatch.setattr(DiffusionSampler, "_adjoint_loss", nan_on_the_third_step_of_iteration_2)
    with pytest.raises(sampler_module.DivergedTrainingError, match="iteration 2 \\(the iteration is undone\\).*new checkpoint path"):
        failing.train(3)
    assert failing.iteration == 2 and failing.bias.n_hills == 2 * 32 and 2 not in failing._training_end_points
    assert np.array_equal(failing.bias.values, at_two[0]) and torch.equal(failing.buffer.data["x_final"], at_two[1])
    assert all(torch.equal(a, b) for a, b in zip(failing.controller.parameters(), at_two[2]))  # two steps of iteration 2 undone
    monkeypatch.setattr(DiffusionSampler, "_adjoint_loss", loss)
    failing.train(3)  # retried: iteration 2 once, as in the uninterrupted run
    assert np.array_equal(failing.bias.values, straight.bias.values) and failing.bias.n_hills == 3 * 32
    assert all(torch.equal(a, b) for a, b in zip(failing.controller.parameters(), straight.controller.parameters()))


def test_a_checkpoint_of_a_bias_on_other_cvs_or_grid_is_refused_and_leaves_the_sampler_as_it_was(tmp_path):
    molecular_system = systems.get("mueller_brown")
    lower, upper, _, _ = CASES["mueller_brown"]
    small = dict(batch_size=16, n_adjoint_steps=1, training_batch_size=16)
    checkpoint = tmp_path / "run.pt"
    _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small).train(2, checkpoint=checkpoint)
    swapped = WellTemperedBias([CartesianComponent(0, "y"), CartesianComponent(0, "x")], lower=lower, upper=upper, n_nodes=(36, 41),
                               hill_width=0.25, hill_height=0.02, bias_factor=6.0, temperature=molecular_system.temperature)
    old = torch.load(checkpoint, weights_only=True)
    del old["settings"]["bias"]  # written before checkpoints named the bias: its grid settings are still checked
    torch.save(old, tmp_path / "old.pt")
    cases = [(swapped, checkpoint, "other settings \\(bias\\) \\(its bias: CVs CartesianComponent\\(atom=0, axis='x'\\)"),
             (_xy_bias(molecular_system, lower, upper, hill_height=0.05), checkpoint, "other settings \\(bias\\).*hill_height 0.02"),
             (_xy_bias(molecular_system, lower, upper, hill_height=0.05), tmp_path / "old.pt", "bias was built with other settings \\(hill_height\\)")]
    for bias, path, message in cases:
        fresh = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
        sampler = _sampler(molecular_system, bias, seed=5, **small)
        with pytest.raises(InvalidInputError, match=message):
            sampler.train(3, checkpoint=path)
        assert sampler.iteration == 0 and len(sampler.buffer) == 0 and sampler.bias.n_hills == 0 and not sampler.history
        assert all(torch.equal(a, b) for a, b in zip(sampler.controller.parameters(), fresh.controller.parameters()))
    _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small).train(3, checkpoint=tmp_path / "old.pt")


def test_samples_stored_in_the_checkpoint_are_not_drawn_again_by_a_resumed_process(tmp_path):
    molecular_system = systems.get("double_well_2d")
    small = dict(batch_size=16, n_adjoint_steps=1, training_batch_size=16)
    checkpoint = tmp_path / "run.pt"

    def process(stored=True):
        sampler = _sampler(molecular_system, None, seed=3, **small)
        sampler.train(2, checkpoint=checkpoint)
        return sampler.sample(8, checkpoint=checkpoint if stored else None).positions

    first, second, third = process(), process(), process(stored=False)
    assert not np.array_equal(first, second)  # the counter came back with the checkpoint
    assert np.array_equal(process(stored=False), third)  # not stored: a rerun reproduces its draws
    other = _sampler(molecular_system, None, seed=4, **small)
    other.train(2)
    with pytest.raises(InvalidInputError, match="another run's checkpoint"):
        other.sample(8, checkpoint=checkpoint)
    assert other.n_sample_batches == 0


def test_training_resumes_from_a_checkpoint_exactly(tmp_path):
    molecular_system = systems.get("mueller_brown")
    lower, upper, _, _ = CASES["mueller_brown"]
    small = dict(batch_size=32, n_adjoint_steps=3, training_batch_size=32, snapshot_interval=2)
    straight = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    straight.train(4)
    checkpoint = tmp_path / "sampler.pt"
    first = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    first.train(2, checkpoint=checkpoint)
    resumed = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    resumed.train(4, checkpoint=checkpoint)
    for a, b in zip(straight.controller.parameters(), resumed.controller.parameters()):
        assert torch.equal(a, b)
    assert np.array_equal(straight.bias.values, resumed.bias.values)
    assert resumed.iteration == 4 and len(resumed.snapshots) == 2
    assert resumed.n_energy_evaluations == straight.n_energy_evaluations
    assert np.array_equal(straight.training_samples(0.0).log_weights, resumed.training_samples(0.0).log_weights)
    assert np.array_equal(straight.sample(16).log_weights, resumed.sample(16).log_weights)
    # a checkpoint written before the end points were kept resumes with none (from its iteration on)
    state = torch.load(checkpoint, weights_only=True)
    del state["training_end_points"]
    torch.save(state, tmp_path / "old.pt")
    old = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=5, **small)
    old.train(5, checkpoint=tmp_path / "old.pt")
    assert len(old.training_samples(0.0).log_weights) == 32
    # another system, or other settings, are refused
    other = systems.get("double_well_2d")
    with pytest.raises(InvalidInputError, match="another system"):
        _sampler(other, _xy_bias(other, lower, upper), seed=5, **small).load_checkpoint(checkpoint)
    with pytest.raises(InvalidInputError, match="other settings.*seed"):
        _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), seed=6, **small).load_checkpoint(checkpoint)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InvalidInputError, match="not a readable"):
        straight.load_checkpoint(tmp_path / "junk.pt")


def _nan_region_system():
    """A particle in a harmonic well whose energy is NaN for x < -0.3 nm."""
    system = openmm.System()
    system.addParticle(12.0)
    force = openmm.CustomExternalForce("50*(x^2 + y^2 + z^2) + 0.001*sqrt(x + 0.3)")
    force.addParticle(0, [])
    system.addForce(force)
    topology = app.Topology()
    topology.addAtom("P", app.element.carbon, topology.addResidue("PRT", topology.addChain()))
    return MolecularSystem(name="nan_region", system=system, topology=topology,
                           positions=unit.Quantity(np.zeros((1, 3)), unit.nanometer), temperature=300.0 * unit.kelvin)


def test_nan_energies_are_counted_and_get_weight_zero():
    sampler = _sampler(_nan_region_system(), None, batch_size=64, n_adjoint_steps=2, training_batch_size=32)
    sampler.train(3)
    assert sampler.n_invalid > 0 and sum(h["n_invalid"] for h in sampler.history) == sampler.n_invalid
    samples = sampler.sample(256)
    bad = samples.positions[:, 0, 0] < -0.3
    assert bad.any() and np.all(np.isneginf(samples.log_weights[bad])) and np.all(np.isfinite(samples.log_weights[~bad]))
    assert samples.n_invalid == bad.sum()


def test_a_cv_on_missing_atoms_is_refused():
    molecular_system = systems.get("mueller_brown")
    bias = WellTemperedBias([CartesianComponent(0, "x"), CartesianComponent(3, "y")], (-2, -1), (1.5, 2.5), (36, 41), 0.25, 0.02, 6.0,
                            molecular_system.temperature)
    with pytest.raises(InvalidInputError, match="reads atom 3.*has 1 atoms"):
        _sampler(molecular_system, bias)


def test_the_exported_bias_samples_the_same_target_in_openmm(trained):
    _, molecular_system, sampler, samples = trained
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(molecular_system.system))
    system.addForce(sampler.bias.to_openmm_force())
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    for x, u, v in zip(samples.positions[:20], samples.reduced_energies[:20], samples.bias[:20]):
        context.setPositions(x)
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        assert energy == pytest.approx(u * samples.kT + v, rel=1e-9, abs=1e-8)


def test_corrector_matching_learns_the_reference_terminal_score():
    """With an untrained controller the chains are the reference process, whose corrector is exactly −x/V_K."""
    molecular_system = systems.get("harmonic_oscillator")
    schedule = NoiseSchedule(1.0, 0.02, 20, source_scale=0.5)
    sampler = _sampler(molecular_system, None, schedule=schedule, batch_size=512, n_adjoint_steps=0, n_corrector_steps=100,
                       training_batch_size=256)
    points = torch.tensor([[0.5, 0.0, 0.0], [-0.3, 0.4, 0.2], [0.0, -0.6, 0.5], [0.8, 0.8, -0.2]], dtype=torch.float64)
    exact = -points / schedule.variances[-1]

    def relative_error():
        with torch.no_grad():
            return float((sampler.corrector(points).double() - exact).norm() / exact.norm())

    assert relative_error() == 1.0  # control: the untrained corrector (zero) fails the check below
    sampler.train(8)
    assert all(param.abs().sum() == 0 for param in sampler.controller.net[-1].parameters())  # the chains stayed the reference
    assert relative_error() < 0.1, relative_error()


def test_warm_start_fills_the_buffer_with_md_configurations_and_counts_their_energies():
    molecular_system = systems.get("double_well_2d")
    sampler = _sampler(molecular_system, None, batch_size=16, n_adjoint_steps=2, training_batch_size=16)
    rng = np.random.default_rng(0)
    md = rng.normal([-1.0, 0.0, 0.0], 0.1, size=(40, 1, 3))
    md[0, 0, 0] = np.nan  # a broken frame: counted, kept out of the buffer
    sampler.warm_start(md)
    assert len(sampler.buffer) == 39 and sampler.n_invalid == 1 and sampler.n_energy_evaluations == 40
    assert torch.equal(sampler.buffer.data["x_final"], torch.as_tensor(md[1:].reshape(39, 3)))
    sampler.train(1)
    assert len(sampler.buffer) == 39 + 16 and sampler.n_energy_evaluations == 56


@pytest.mark.parametrize("overrides, message", [
    (dict(max_gradient_norm=-1.0), "max_gradient_norm must be a finite number > 0"),
    (dict(learning_rate=float("nan")), "learning_rate must be a finite number > 0"),
    (dict(n_adjoint_steps=-1), "n_adjoint_steps must be an integer >= 0"),
    (dict(hidden=2.5), "hidden must be a positive integer"),  # not rounded to 2
    (dict(n_layers=True), "n_layers must be a positive integer"),
    (dict(batch_size=np.int64(0)), "batch_size must be a positive integer"),
])
def test_bad_sampler_settings_are_refused(overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        _sampler(systems.get("double_well_2d"), None, **overrides)


def test_a_seedless_sampler_resumes_the_stored_seed_and_never_overwrites_another_run(tmp_path):
    molecular_system = systems.get("double_well_2d")
    small = dict(batch_size=16, n_adjoint_steps=1, training_batch_size=16)
    checkpoint = tmp_path / "run.pt"
    first = _sampler(molecular_system, None, seed=None, **small)
    first.train(2, checkpoint=checkpoint)
    resumed = _sampler(molecular_system, None, seed=None, **small)
    resumed.train(3, checkpoint=checkpoint)  # seed=None adopts the stored seed instead of refusing "other settings"
    assert resumed.settings["seed"] == first.settings["seed"] and resumed.iteration == 3
    other = _sampler(molecular_system, None, seed=11, **small)
    other.train(1)
    with pytest.raises(InvalidInputError, match="another run's checkpoint"):
        other.train(2, checkpoint=checkpoint)
    with pytest.raises(InvalidInputError, match="batch_size must be a positive integer"):
        other.sample(8, batch_size=-1)
    with pytest.raises(InvalidInputError, match="checkpoint_interval must be a positive integer"):
        other.train(3, checkpoint=tmp_path / "new.pt", checkpoint_interval=0)
    assert other.iteration == 1
    with pytest.raises(InvalidInputError, match="warm_start needs positions of shape \\(n, 1, 3\\).*got \\(3, 2, 3\\)"):
        other.warm_start(np.zeros((3, 2, 3)))


def test_bootstrap_settings_and_sparse_basins():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(500, 2))
    edges = [np.linspace(-3, 3, 7)] * 2
    assert np.isnan(free_energy_surface(s, np.zeros(500), edges, 300.0, n_bootstrap=0).error).all()
    with pytest.raises(InvalidInputError, match="n_bootstrap must be 0"):
        free_energy_surface(s, np.zeros(500), edges, 300.0, n_bootstrap=1)
    # a basin holding two samples: some replicas leave it empty, so its error bar is infinite, not small
    basins = {"A": [(-9, 9), (-9, 9)], "B": [(2.6, 9), (-9, 9)]}
    assert ((s[:, 0] >= 2.6).sum()) <= 3
    sparse = basin_free_energy_difference(s, np.zeros(500), basins, "A", "B", 300.0, seed=1)
    assert np.isfinite(sparse.value) and sparse.error == math.inf


def test_the_progress_bar_shows_loss_buffer_ess_bias_height_and_invalid_energies(capsys):
    molecular_system = systems.get("mueller_brown")
    lower, upper, _, _ = CASES["mueller_brown"]
    sampler = _sampler(molecular_system, _xy_bias(molecular_system, lower, upper), batch_size=16, n_adjoint_steps=1,
                       training_batch_size=16)
    sampler.train(2, progress=True)
    shown = capsys.readouterr().err
    assert "diffusion sampler" in shown and "2/2" in shown
    for field in ("loss=", "ess=", "bias=", "kJ/mol", "invalid=0"):
        assert field in shown, (field, shown)
