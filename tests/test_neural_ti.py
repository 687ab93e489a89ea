"""Neural TI: exact end states of U_θ for any θ, the OpenMM table of the learned term against torch, ∂U/∂t by
autograd against finite differences, the exact-path estimate against Widom insertion (tests/_widom.py), and
TI over the same samples against MBAR (more on TI in test_path_ti.py)."""

import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.freeenergy import LambdaSchedule, alchemical_leg, analyze_leg, run_leg, solvation_system
from openmm_flowplugin.freeenergy import neural_ti as nti

from _widom import widom_mu

N_SIGMA = 4.0
SCHEDULE = LambdaSchedule(electrostatics=[1, 0, 0, 0, 0, 0], sterics=[1, 0.8, 0.6, 0.4, 0.2, 0])
REFERENCE = openmm.Platform.getPlatformByName("Reference")


@pytest.fixture(scope="module")
def leg():
    fluid = solvation_system("lj", n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
    return alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=SCHEDULE)


@pytest.fixture(scope="module")
def random_phi(leg):
    phi = nti.PairPotential(nti._cutoff(leg))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in phi.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return phi


def _state(system, positions, t, lam=None):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), REFERENCE)
    context.setPositions(positions)
    context.setParameter("lambda_sterics", t if lam is None else lam)
    if nti.T_PARAMETER in [system.getForce(i).getGlobalParameterName(j) for i in range(system.getNumForces())
                           for j in range(getattr(system.getForce(i), "getNumGlobalParameters", lambda: 0)())]:
        context.setParameter(nti.T_PARAMETER, t)
    state = context.getState(energy=True, forces=True)
    return state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value


def test_end_states_are_exact_for_any_weights(leg, random_phi):
    path = nti.exact_path_leg(leg, random_phi, nodes=3)
    x = leg.molecular_system.positions_nm + 0.01 * np.random.default_rng(0).standard_normal((leg.molecular_system.n_atoms, 3))
    for t in (0.0, 1.0):
        energy, forces = _state(path.alchemical_system, x, t)
        energy_phys, forces_phys = _state(leg.alchemical_system, x, t)
        assert energy == pytest.approx(energy_phys, rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(forces, forces_phys, rtol=1e-10, atol=1e-8)
    # Control: between the ends the learned term is there
    assert abs(_state(path.alchemical_system, x, 0.5)[0] - _state(leg.alchemical_system, x, 0.5)[0]) > 1e-3


def test_openmm_table_and_dU_dt_match_torch(leg, random_phi):
    path = nti.exact_path_leg(leg, random_phi, nodes=3)
    x = leg.molecular_system.positions_nm
    box = leg.alchemical_system.getDefaultPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    t = 0.37
    learned_openmm = _state(path.alchemical_system, x, t)[0] - _state(leg.alchemical_system, x, t)[0]
    t_torch = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    learned_torch = random_phi.learned_energy(torch.tensor(x)[None], t_torch, 0, box)[0]
    (dudt_torch,) = torch.autograd.grad(learned_torch, t_torch)
    assert abs(learned_torch.item()) > 0.1  # a non-trivial learned term
    assert learned_openmm == pytest.approx(learned_torch.item(), rel=2e-3)  # bicubic table of φ(r, t)
    h = 1e-4  # ∂/∂t of the learned term in OpenMM (neural_ti_t only; λ fixed) by central differences
    up = _state(path.alchemical_system, x, t + h, lam=t)[0] - _state(leg.alchemical_system, x, t)[0]
    down = _state(path.alchemical_system, x, t - h, lam=t)[0] - _state(leg.alchemical_system, x, t)[0]
    assert (up - down) / (2 * h) == pytest.approx(dudt_torch.item(), rel=5e-3)
    # Control: without the t (1 - t) factor's derivative the comparison fails
    assert abs(random_phi(torch.tensor([0.3]), torch.tensor(t)).item()) > 0
    assert abs((up - down) / (2 * h) - t * (1 - t) * dudt_torch.item()) > 0.05 * abs(dudt_torch.item())


def test_amortized_time_derivative_equals_openmms_path(leg, random_phi):
    """∂_t u_θ as the amortized estimator computes it (physical part by differences on Reference, learned part by
    autograd) equals a finite difference in t of the exact path's whole OpenMM energy."""
    path = nti.exact_path_leg(leg, random_phi, nodes=3)
    box = leg.alchemical_system.getDefaultPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    rng = np.random.default_rng(3)
    x = leg.molecular_system.positions_nm + 0.02 * rng.standard_normal((3, leg.molecular_system.n_atoms, 3))
    t = np.array([0.25, 0.5, 0.8])
    du = nti.path_time_derivatives(leg, random_phi, x, t, box)
    beta, h = 1.0 / leg.molecular_system.kT, 1e-4
    openmm_du = np.array([beta * (_state(path.alchemical_system, x[k], t[k] + h)[0] - _state(path.alchemical_system, x[k], t[k] - h)[0])
                          / (2 * h) for k in range(3)])
    np.testing.assert_allclose(du, openmm_du, rtol=5e-3)
    # Control: the learned part alone (the physical λ held fixed) differs
    learned_only = np.array([beta * (_state(path.alchemical_system, x[k], t[k] + h, lam=t[k])[0]
                                     - _state(path.alchemical_system, x[k], t[k] - h, lam=t[k])[0]) / (2 * h) for k in range(3)])
    assert not np.allclose(learned_only, openmm_du, rtol=5e-2)


def test_endpoint_samples_repeat_for_a_seed(leg):
    """The integrator's seed reaches OpenMM (it is read when the Context is made); control: another seed."""
    def draw(seed):
        return nti.sample_endpoints(leg, 2, steps_between=10, equilibration_steps=20, seed=seed, platform="Reference")

    first, again, other = draw(0), draw(0), draw(1)
    assert np.array_equal(first.x0, again.x0) and np.array_equal(first.f1, again.f1)
    assert not np.allclose(first.x0, other.x0)


def test_training_repeats_for_a_seed_and_leaves_torchs_generator_alone(leg):
    samples = nti.sample_endpoints(leg, 4, steps_between=10, equilibration_steps=20, seed=0, platform="Reference")

    def train(seed):
        phi, history = nti.train_neural_ti(leg, samples, n_steps=2, batch_size=2, seed=seed, platform="Reference", progress=False)
        return torch.cat([p.detach().reshape(-1) for p in phi.parameters()]), history

    torch.manual_seed(123)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(123)
    (first, history), (again, history_again), (other, _) = train(0), train(0), train(1)
    assert torch.equal(torch.rand(3), expected_next_draw)  # the caller's stream is where it was
    assert torch.equal(first, again) and history == history_again
    assert not torch.allclose(first, other)  # control: the seed reaches the initial weights and the batches


def test_an_interrupted_training_continues_from_its_checkpoint_to_the_uninterrupted_model(leg, tmp_path, monkeypatch):
    """Killed at step 5 of 6 with checkpoints every 2 steps (and a stale .partial, as a kill during a save leaves):
    the next call continues from step 4 and ends bit for bit where an uninterrupted training does."""
    from openmm_flowplugin.freeenergy import _neural_ti_training as training

    samples = nti.sample_endpoints(leg, 4, steps_between=10, equilibration_steps=20, seed=0, platform="Reference")
    options = dict(n_steps=6, batch_size=2, seed=3, platform="Reference", progress=False)
    straight, straight_history = nti.train_neural_ti(leg, samples, **options)
    checkpoint = tmp_path / "neural_ti_training.pt"
    gradient = training._physical_gradient
    calls = []

    def killed_in_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4 * 2 + 1:  # the first configuration of step 5 (two per step)
            checkpoint.with_name(checkpoint.name + ".partial").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt
        return gradient(*args, **kwargs)

    monkeypatch.setattr(training, "_physical_gradient", killed_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        nti.train_neural_ti(leg, samples, checkpoint=checkpoint, checkpoint_interval=2, **options)
    assert len(torch.load(checkpoint, weights_only=True)["history"]) == 4
    calls.clear()
    monkeypatch.setattr(training, "_physical_gradient", lambda *args, **kwargs: (calls.append(1), gradient(*args, **kwargs))[1])
    resumed, history = nti.train_neural_ti(leg, samples, checkpoint=checkpoint, checkpoint_interval=2, **options)
    assert len(calls) == 2 * 2  # steps 5 and 6 only: it continued (a restart would repeat the same result from 12 calls)
    assert history == straight_history
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    # a checkpoint of other settings, past the steps asked for, or unreadable is refused rather than continued
    with pytest.raises(InvalidInputError, match=r"checkpoint of another training \(seed differ\)"):
        nti.train_neural_ti(leg, samples, checkpoint=checkpoint, **dict(options, seed=4))
    other_samples = nti.sample_endpoints(leg, 4, steps_between=10, equilibration_steps=20, seed=1, platform="Reference")
    with pytest.raises(InvalidInputError, match=r"checkpoint of another training \(samples differ\)"):
        nti.train_neural_ti(leg, other_samples, checkpoint=checkpoint, **options)
    with pytest.raises(InvalidInputError, match="checkpoint_interval must be a positive number of steps, got 0"):
        nti.train_neural_ti(leg, samples, checkpoint=checkpoint, checkpoint_interval=0, **options)
    with pytest.raises(InvalidInputError, match="at step 4 of a training longer than the 3 steps"):
        nti.train_neural_ti(leg, samples, checkpoint=checkpoint, **dict(options, n_steps=3))
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match="not a readable neural-TI training checkpoint"):
        nti.train_neural_ti(leg, samples, checkpoint=checkpoint, **options)


def test_exact_path_estimate_agrees_with_widom_insertion(leg, tmp_path):
    samples = nti.sample_endpoints(leg, 32, steps_between=50, equilibration_steps=500, platform="Reference")
    phi, history = nti.train_neural_ti(leg, samples, n_steps=30, batch_size=8, platform="Reference", progress=False)
    assert all(math.isfinite(v) for v in history)
    amortized, amortized_error = nti.amortized_delta_f(leg, samples, phi, n_points=64, platform="Reference")
    assert math.isfinite(amortized) and amortized_error > 0
    path = nti.exact_path_leg(leg, phi, nodes=6)
    run_leg(path, tmp_path / "path.nc", 200, md_steps=50, timestep=20.0, checkpoint_interval=1, platform="Reference",
            progress=False, equilibration_iterations=5, seed=2)
    exact = analyze_leg(tmp_path / "path.nc")
    mu_widom, se_widom = widom_mu(solvation_system("lj", n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0))
    assert exact.min_neighbour_overlap > 0.03
    z = (-exact.delta_f - mu_widom) / math.hypot(exact.error, se_widom)  # mu_ex = f(coupled) - f(decoupled)
    assert abs(z) < N_SIGMA, (exact.delta_f, exact.error, mu_widom, se_widom)
    # Control: the comparison resolves the sign of the free energy (decoupling vs insertion)
    assert abs((exact.delta_f - mu_widom) / math.hypot(exact.error, se_widom)) > N_SIGMA
    # TI over the same samples (trapezoid over the 6 nodes) agrees with MBAR within the combined statistical
    # errors plus its quadrature error estimate, and with Widom insertion
    ti = nti.path_ti(path, tmp_path / "path.nc", exact.n_equilibration)
    assert ti["profile"]["lambdas"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) and min(ti["profile"]["n_samples"]) > 50
    tolerance = N_SIGMA * math.hypot(ti["statistical_error_kT"], exact.error) + ti["quadrature_error_kT"]
    assert abs(ti["delta_f_kT"] - exact.delta_f) < tolerance, (ti, exact.delta_f, exact.error)
    tolerance = N_SIGMA * math.hypot(ti["statistical_error_kT"], se_widom) + ti["quadrature_error_kT"]
    assert abs(-ti["delta_f_kT"] - mu_widom) < tolerance, (ti, mu_widom, se_widom)
    # Control: TI with the sign of ⟨∂u/∂t⟩ flipped is resolved as wrong by the same comparison
    assert abs(ti["delta_f_kT"] - mu_widom) > tolerance, (ti, mu_widom, se_widom)
    # Storage made with other weights is never resumed into this run
    other = nti.exact_path_leg(leg, nti.PairPotential(nti._cutoff(leg)), nodes=6)
    with pytest.raises(Exception, match="another run"):
        run_leg(other, tmp_path / "path.nc", 70, md_steps=50, timestep=20.0, platform="Reference", progress=False,
                equilibration_iterations=5)


def test_a_run_without_a_seed_takes_the_root_stored_with_its_samples(tmp_path, monkeypatch):
    """Without the path's storage (deleted, or a run stopped before it), seed=None reuses the root the samples were made from."""
    roots = []

    def stop(root_seed):
        roots.append(root_seed)
        raise RuntimeError("stop after resolving the root")

    monkeypatch.setattr(nti, "derived_seeds", stop)
    fluid = solvation_system("lj", n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
    for folder, stored in ((tmp_path / "stored", 42), (tmp_path / "new", None)):
        folder.mkdir()
        if stored is not None:
            np.savez(folder / "neural_ti_samples.npz", root_seed=np.array(stored))
        with pytest.raises(RuntimeError, match="stop after"):
            nti.neural_ti_free_energy(fluid, folder, seed=None)
    assert roots[0] == 42 and roots[1] != 42  # control: nothing stored, a fresh root


def test_a_stored_model_is_reused_only_for_its_training_length_and_a_broken_one_is_one_line(leg, random_phi, tmp_path):
    from openmm_flowplugin.errors import InvalidInputError

    path = tmp_path / "neural_ti_model.pt"
    torch.save({"config": random_phi.config, "state_dict": random_phi.state_dict(), "history": [1.0, 0.5, 0.25], "record": "r",
                "seed": 7}, path)
    phi, history, seed = nti._stored_or_new_model(path, "r", leg, None, 3, "Reference", False)
    assert history == [1.0, 0.5, 0.25] and seed == 7
    assert all(torch.equal(a, b) for a, b in zip(phi.state_dict().values(), random_phi.state_dict().values()))
    with pytest.raises(InvalidInputError, match=r"trained for 3 steps, not 500: give --train-steps 3"):
        nti._stored_or_new_model(path, "r", leg, None, 500, "Reference", False)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(InvalidInputError, match="not a readable neural-TI model"):
        nti._stored_or_new_model(path, "r", leg, None, 3, "Reference", False)


def test_a_truncated_samples_file_is_one_line_also_without_a_seed(tmp_path):
    from openmm_flowplugin.errors import InvalidInputError

    fluid = solvation_system("lj", n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
    (tmp_path / "neural_ti_samples.npz").write_bytes(b"PK\x03\x04 half an npz")  # seed=None reads it for its root first
    with pytest.raises(InvalidInputError, match="not readable endpoint samples"):
        nti.neural_ti_free_energy(fluid, tmp_path, seed=None, platform="Reference", progress=False)
