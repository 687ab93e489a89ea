"""The diffusion sampler in standardized internal coordinates: exact torsion free energies of a 5-atom chain."""

import math

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from openmm_flowplugin.analysis import basin_free_energy_difference
from openmm_flowplugin.diffusion import DiffusionSampler, NoiseSchedule, WellTemperedBias
from openmm_flowplugin.diffusion.coordinates import InternalCoordinateSpace
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.geometry import Torsion
from openmm_flowplugin.systems import MolecularSystem

TORSIONS = ((0, 1, 2, 3, 3, 3.0), (1, 2, 3, 4, 2, 4.0))  # atoms, periodicity, k (kJ/mol)
KT = 2.494338785445972


def _chain():
    """Five carbons in a chain: stiff bonds and angles, a 3-fold and a 2-fold torsion (exact torsion marginals)."""
    system = openmm.System()
    topology = app.Topology()
    residue = topology.addResidue("CHN", topology.addChain())
    atoms = [topology.addAtom(f"C{i}", app.element.carbon, residue) for i in range(5)]
    for _ in range(5):
        system.addParticle(12.0)
    bonds, angles, torsions = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce(), openmm.PeriodicTorsionForce()
    for i in range(4):
        bonds.addBond(i, i + 1, 0.15, 2.0e5)
        topology.addBond(atoms[i], atoms[i + 1])
    for i in range(3):
        angles.addAngle(i, i + 1, i + 2, 1.91, 400.0)
    for a, b, c, d, n, k in TORSIONS:
        torsions.addTorsion(a, b, c, d, n, 0.0, k)
    for force in (bonds, angles, torsions):
        system.addForce(force)
    x = np.zeros((5, 3))
    for i in range(1, 5):  # a zig-zag in the xy plane (trans)
        x[i] = x[i - 1] + 0.15 * np.array([math.sin(0.955), (-1) ** i * math.cos(0.955), 0.0])
    return MolecularSystem(name="chain5", system=system, topology=topology, positions=unit.Quantity(x, unit.nanometer),
                           temperature=300.0 * unit.kelvin)


def _reference_positions(chain, n=200, seed=0):
    integrator = openmm.LangevinMiddleIntegrator(300.0, 5.0, 0.0005)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(chain.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(chain.positions)
    context.setVelocitiesToTemperature(300.0, seed + 1)
    frames = []
    for _ in range(n):
        integrator.step(40)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames)


def _exact_probability(n, k, low, high):
    tau = np.linspace(-math.pi, math.pi, 20001)
    density = np.exp(-k * (1 + np.cos(n * tau)) / KT)
    inside = (tau >= low) & (tau < high)
    return np.trapezoid(density * inside, tau) / np.trapezoid(density, tau)


def test_image_weights_sum_to_one_over_the_images_and_positions_round_trip():
    chain = _chain()
    space = InternalCoordinateSpace.from_positions(chain.topology, _reference_positions(chain, n=50))
    tau = torch.linspace(-math.pi, math.pi, 7, dtype=torch.float64)[:, None].repeat(1, 2)
    total = sum(torch.exp(space.log_image_weight_terms(tau + 2 * math.pi * n)) for n in range(-6, 7))  # per torsion
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)
    assert not torch.allclose(torch.exp(space.log_image_weight_terms(tau)), torch.ones_like(total))  # each image alone is not 1
    x = torch.as_tensor(_reference_positions(chain, n=5, seed=3))
    z = space.from_positions_to_z(x)
    back, _ = space.to_positions(z)
    aligned_in, _ = space.to_positions(space.from_positions_to_z(back))
    assert torch.allclose(back, aligned_in, atol=1e-10)
    with pytest.raises(InvalidInputError, match="reference positions of shape"):
        InternalCoordinateSpace.from_positions(chain.topology, x[:1])


def test_internal_coordinate_sampler_gives_exact_torsion_free_energies():
    chain = _chain()
    frames = _reference_positions(chain)
    space = InternalCoordinateSpace.from_positions(chain.topology, frames)
    bias = WellTemperedBias([Torsion(0, 1, 2, 3), Torsion(1, 2, 3, 4)], lower=(-math.pi, -math.pi), upper=(math.pi, math.pi),
                            n_nodes=(64, 64), hill_width=0.3, hill_height=0.02, bias_factor=6.0, temperature=300.0, periodic=True)
    sampler = DiffusionSampler(chain, bias=bias, coordinates=space, schedule=NoiseSchedule(3.0, 0.05, 40), hidden=64, n_layers=2,
                               batch_size=128, n_adjoint_steps=40, training_batch_size=128, seed=0)
    sampler.warm_start(frames)
    sampler.train(80)
    samples = sampler.sample(6000)
    assert np.all(np.isfinite(samples.reduced_energies[np.isfinite(samples.log_weights)]))
    # the 3-fold torsion's gauche+ well against the whole plane, and the 2-fold torsion's wells against each other
    basins = {"all": [(-math.pi, math.pi), (-math.pi, math.pi)], "gauche": [(0.4, 1.7), (-math.pi, math.pi)]}
    exact_first = -KT * math.log(_exact_probability(3, 3.0, 0.4, 1.7))
    wells = {"minus": [(-math.pi, math.pi), (-math.pi, 0.0)], "plus_core": [(-math.pi, math.pi), (1.0, 2.2)]}
    exact_second = -KT * math.log(_exact_probability(2, 4.0, 1.0, 2.2) / _exact_probability(2, 4.0, -math.pi, 0.0))
    checks = ((basins, "all", "gauche", exact_first), (wells, "minus", "plus_core", exact_second))
    # training's end points carry the same internal-coordinate weights (volume term included): alone and pooled, the same values
    training = sampler.training_samples(discard=0.5)
    pooled = samples.pooled(training)
    assert len(training.log_weights) == 40 * 128
    assert samples.n_effective > 20 and pooled.n_effective > 20
    for estimated in (samples, training, pooled):
        for basin_set, reference, target, exact in checks:
            estimate = basin_free_energy_difference(estimated.cv_values, estimated.log_weights, basin_set, reference, target, 300.0)
            assert abs(estimate.value - exact) < 4 * estimate.error, (estimate, exact)

    def worst_z(cv_values, log_weights):
        estimates = [basin_free_energy_difference(cv_values, log_weights, basin_set, reference, target, 300.0)
                     for basin_set, reference, target, _ in checks]
        return max(abs(e.value - exact) / e.error for e, (*_, exact) in zip(estimates, checks))

    # control: unweighted (biased), the samples, training's end points and the pooled set each miss one of the two
    # values by more than twice the tolerance (28, 21 and 32 errors when written, in this order)
    for cv_values in (samples.cv_values, training.cv_values, pooled.cv_values):
        assert worst_z(cv_values, np.zeros(len(cv_values))) > 8


def test_cartesian_component_cvs_are_refused_in_internal_coordinates():
    from openmm_flowplugin.geometry import CartesianComponent

    chain = _chain()
    space = InternalCoordinateSpace.from_positions(chain.topology, _reference_positions(chain, n=20))
    bias = WellTemperedBias([CartesianComponent(0, "x"), CartesianComponent(4, "x")], lower=(-1.0, -1.0), upper=(1.0, 1.0),
                            n_nodes=(48, 48), hill_width=0.1, hill_height=0.02, bias_factor=6.0, temperature=300.0)
    with pytest.raises(InvalidInputError, match="orientation"):
        DiffusionSampler(chain, bias=bias, coordinates=space)
    DiffusionSampler(chain, bias=bias)  # in Cartesian coordinates they are fine


def test_stored_cv_jacobians_give_the_bias_gradient_through_the_coordinate_transform(tmp_path):
    chain = _chain()
    frames = _reference_positions(chain, n=40)
    space = InternalCoordinateSpace.from_positions(chain.topology, frames)
    bias = WellTemperedBias([Torsion(0, 1, 2, 3), Torsion(1, 2, 3, 4)], lower=(-math.pi, -math.pi), upper=(math.pi, math.pi),
                            n_nodes=(64, 64), hill_width=0.3, hill_height=0.5, bias_factor=6.0, temperature=300.0, periodic=True)
    sampler = DiffusionSampler(chain, bias=bias, coordinates=space, schedule=NoiseSchedule(3.0, 0.05, 10), hidden=16, n_layers=1,
                               batch_size=16, n_adjoint_steps=2, n_corrector_steps=2, training_batch_size=16, seed=3)
    sampler.warm_start(frames)
    sampler.train(3)  # hills deposited after the rows were stored: the gradient must follow the current bias
    batch = sampler.buffer.sample(32, torch.Generator().manual_seed(0))
    z = batch["x_final"].clone().requires_grad_(True)
    (direct,) = torch.autograd.grad((bias(sampler.positions(z)) / sampler.kT).sum(), z)
    assert direct.abs().max() > 0.1
    assert torch.allclose(sampler._bias_gradient(batch), direct, rtol=0, atol=1e-12)
    # a checkpoint without the stored CV rows (written before they were) gets them recomputed on loading
    sampler.save_checkpoint(tmp_path / "run.pt")
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    stored = {key: state["buffer"].pop(key) for key in ("cv_values", "cv_jacobian")}
    torch.save(state, tmp_path / "old.pt")
    resumed = DiffusionSampler(chain, bias=WellTemperedBias(bias.cvs, lower=bias.lower, upper=bias.upper, n_nodes=bias.n_nodes,
                                                            hill_width=0.3, hill_height=0.5, bias_factor=6.0, temperature=300.0,
                                                            periodic=True),
                               coordinates=space, schedule=NoiseSchedule(3.0, 0.05, 10), hidden=16, n_layers=1, batch_size=16,
                               n_adjoint_steps=2, n_corrector_steps=2, training_batch_size=16, seed=3)
    resumed.load_checkpoint(tmp_path / "old.pt")
    for key, value in stored.items():
        assert torch.allclose(resumed.buffer.data[key], value, rtol=0, atol=1e-12)


def test_rotors_widen_the_spread_of_the_torsions_about_the_cv_bonds_only():
    from openmm_flowplugin import systems
    from openmm_flowplugin.diffusion.coordinates import rotor_torsions

    ala2 = systems.get("alanine_dipeptide_vacuum")
    frames = ala2.positions_nm[None] + 0.01 * np.random.default_rng(0).normal(size=(20, 22, 3))
    phi, psi = (4, 6, 8, 14), (6, 8, 14, 16)
    plain = InternalCoordinateSpace.from_positions(ala2.topology, frames)
    wide = InternalCoordinateSpace.from_positions(ala2.topology, frames, rotors=[phi, psi], rotor_scale=1.0)
    rows = rotor_torsions(plain.transform, [phi, psi])
    assert [plain.transform.zmatrix[i].tolist() for i in rows] == [[4, 6, 8, 10], [15, 14, 8, 6]]  # proper torsions about 6-8 and 8-14
    first_torsion = plain.transform.n_bonds + plain.transform.n_angles
    widened = torch.zeros(plain.dimension, dtype=torch.bool)
    widened[[first_torsion + i for i in rows]] = True
    assert torch.all(plain.scale[widened] < 1.0) and torch.all(wide.scale[widened] == 1.0)
    assert torch.equal(wide.scale[~widened], plain.scale[~widened]) and torch.equal(wide.mean, plain.mean)
    for rotor, message in (((4, 6, 14, 16), "not bonded"), ((4, 6, 8, 99), "four atom indices")):
        with pytest.raises(InvalidInputError, match=message):
            InternalCoordinateSpace.from_positions(ala2.topology, frames, rotors=[rotor])
    with pytest.raises(InvalidInputError, match="rotor_scale"):
        InternalCoordinateSpace.from_positions(ala2.topology, frames, rotors=[phi], rotor_scale=4.0)


def test_ring_bonds_and_unbonded_atoms_are_not_rotors_and_the_workflow_skips_such_cvs(tmp_path):
    from openmm_flowplugin import systems
    from openmm_flowplugin.diffusion.coordinates import why_not_a_rotor
    from openmm_flowplugin.diffusion.workflow import _cv_rotors
    from openmm_flowplugin.geometry import InternalCoordinateTransform

    topology = app.Topology()  # a four-membered ring 0-1-2-3 with a two-atom tail 0-4-5
    residue = topology.addResidue("RNG", topology.addChain())
    atoms = [topology.addAtom(f"C{i}", app.element.carbon, residue) for i in range(6)]
    for i, j in ((0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (4, 5)):
        topology.addBond(atoms[i], atoms[j])
    ring = InternalCoordinateTransform.from_topology(topology)
    assert "in a ring" in why_not_a_rotor(ring, (3, 0, 1, 2))
    assert why_not_a_rotor(ring, (1, 0, 4, 5)) is None
    assert "not bonded" in why_not_a_rotor(ring, (1, 0, 5, 4))
    assert "four atom indices" in why_not_a_rotor(ring, (1.5, 0, 4, 5))

    ala2 = systems.get("alanine_dipeptide_vacuum")
    cvs = {"phi": Torsion(4, 6, 8, 14), "pseudo": Torsion(4, 6, 14, 16)}  # 6 and 14 are not bonded
    with pytest.warns(UserWarning, match="'pseudo' turns about atoms 6-14, which are not bonded"):
        assert _cv_rotors(ala2, cvs) == [(4, 6, 8, 14)]


def test_a_run_standardized_without_rotors_says_how_to_resume(tmp_path):
    from openmm_flowplugin import systems

    ala2 = systems.get("alanine_dipeptide_vacuum")
    frames = ala2.positions_nm[None] + 0.01 * np.random.default_rng(0).normal(size=(20, 22, 3))
    options = dict(schedule=NoiseSchedule(1.2, 0.05, 5), hidden=8, n_layers=1, batch_size=4, seed=0)
    plain = InternalCoordinateSpace.from_positions(ala2.topology, frames)
    DiffusionSampler(ala2, coordinates=plain, **options).save_checkpoint(tmp_path / "old.pt")
    wide = InternalCoordinateSpace.from_positions(ala2.topology, frames, rotors=[(4, 6, 8, 14)])
    assert wide.rotors == [(4, 6, 8, 14)] and plain.rotors == [] and wide.describe()["scale"] != plain.describe()["scale"]
    with pytest.raises(InvalidInputError, match="another rotor spread.*--rotor-scale 0"):
        DiffusionSampler(ala2, coordinates=wide, **options).load_checkpoint(tmp_path / "old.pt")


def test_a_bad_rotor_scale_is_refused_before_the_md_run(tmp_path, monkeypatch):
    from openmm_flowplugin import systems
    from openmm_flowplugin.diffusion import workflow

    def no_md(*args, **kwargs):
        raise AssertionError("the MD run started before the rotor scale was checked")

    monkeypatch.setattr(workflow, "_md_frames", no_md)
    cvs = {"phi": Torsion(4, 6, 8, 14), "psi": Torsion(6, 8, 14, 16)}
    with pytest.raises(InvalidInputError, match="rotor_scale must be in"):
        workflow.diffusion_free_energy_surface(systems.get("alanine_dipeptide_vacuum"), cvs, tmp_path, coordinates="internal", rotor_scale=4.0)


@pytest.mark.parametrize("options, message", [
    (dict(md_frames=1), "at least 2"),
    (dict(md_frames=20.5), "integer number of MD frames"),
    (dict(md_interval=0), "positive integer number of MD steps"),
    (dict(md_interval=True), "positive integer number of MD steps"),
    (dict(coordinates="cartesian", md_frames=20), "--coordinates internal"),
])
def test_a_bad_standardization_run_is_refused_before_the_md_run(tmp_path, monkeypatch, options, message):
    from openmm_flowplugin import systems
    from openmm_flowplugin.diffusion import workflow

    def no_md(*args, **kwargs):
        raise AssertionError("the MD run started before its frames and interval were checked")

    monkeypatch.setattr(workflow, "_md_frames", no_md)
    cvs = {"phi": Torsion(4, 6, 8, 14), "psi": Torsion(6, 8, 14, 16)}
    with pytest.raises(InvalidInputError, match=message):
        workflow.diffusion_free_energy_surface(systems.get("alanine_dipeptide_vacuum"), cvs, tmp_path,
                                               **{"coordinates": "internal", **options})
