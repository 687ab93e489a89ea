"""Neural TI of a molecular solute with charges (methane, GAFF2/AM1-BCC, in a small TIP3P box): pair classes,
exact end states of the two-stage path for any θ, the OpenMM tables against torch per class, ∂u/∂t at the
stage boundary (one-sided on each side) against finite differences of the full path, and, slow-marked,
the exact-path ΔF of a water in water against the alchemical MBAR route."""

import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.freeenergy import _dudl, alchemical_leg, solvation_system
from openmm_flowplugin.freeenergy import neural_ti as nti
from openmm_flowplugin.freeenergy._neural_ti_training import _solvent_molecules, _superposition

from _ambertools import needs_ambertools

REFERENCE = openmm.Platform.getPlatformByName("Reference")
N_SIGMA = 4.0
pytestmark = needs_ambertools


def _small_methane(workdir):
    """Methane in 49 TIP3P waters (box 1.25 nm, cutoff 0.5 nm, NVT): seconds per evaluation on Reference."""
    return solvation_system("methane", padding=0.5, nonbonded_cutoff=0.5, pressure=None, workdir=workdir)


@pytest.fixture(scope="module")
def methane(tmp_path_factory):
    return _small_methane(tmp_path_factory.mktemp("methane"))


@pytest.fixture(scope="module")
def leg(methane):
    return alchemical_leg(methane.solvent, methane.solute_atoms)


@pytest.fixture(scope="module")
def random_phi(leg):
    classes = nti.pair_classes(leg.molecular_system.system, leg.solute_atoms)
    phi = nti.PairPotential(nti._cutoff(leg), n_classes=classes.n_classes)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in phi.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return phi


def _energy_and_forces(system, positions, parameters):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), REFERENCE)
    context.setPositions(positions)
    for name, value in parameters.items():
        context.setParameter(name, value)
    state = context.getState(energy=True, forces=True)
    return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), state.getForces(asNumpy=True)._value


def _path_parameters(t, boundary=nti.ELECTROSTATICS_FROM):
    electrostatics, sterics = nti.path_lambdas(t, boundary)
    return {"lambda_electrostatics": electrostatics, "lambda_sterics": sterics, nti.T_PARAMETER: t}


def _physical_parameters(t):
    parameters = _path_parameters(t)
    del parameters[nti.T_PARAMETER]
    return parameters


def test_pair_classes_follow_the_nonbonded_parameters(methane):
    classes = nti.pair_classes(methane.solvent.system, methane.solute_atoms)
    assert classes.n_solute_classes == 2 and classes.n_solvent_classes == 2  # C, H x O, H
    assert classes.solute_class == (0, 1, 1, 1, 1)  # the four hydrogens share one class
    assert len(set(classes.solvent_class[0::3])) == 1 and classes.solvent_class[:3] == (0, 1, 1)
    assert classes.matrix().shape == (5, methane.solvent.n_atoms - 5)


def test_two_stage_path_has_exact_end_states_for_any_weights(leg, random_phi):
    path = nti.exact_path_leg(leg, random_phi, nodes=3)
    assert [s.neural_ti_t for s in path.thermodynamic_states] == [1.0, 0.8, 0.5, 0.0]  # the boundary node is added
    assert [s.neural_ti_t for s in nti.exact_path_leg(leg, random_phi, nodes=11).thermodynamic_states][:3] == [1.0, 0.9, 0.8]
    assert path.schedule.electrostatics == (1.0, 0.0, 0.0, 0.0) and path.schedule.sterics == (1.0, 1.0, 0.625, 0.0)
    x = leg.molecular_system.positions_nm + 0.005 * np.random.default_rng(0).standard_normal((leg.molecular_system.n_atoms, 3))
    for t in (0.0, 1.0):
        energy, forces = _energy_and_forces(path.alchemical_system, x, _path_parameters(t))
        energy_phys, forces_phys = _energy_and_forces(leg.alchemical_system, x, _physical_parameters(t))
        assert energy == pytest.approx(energy_phys, rel=1e-12, abs=1e-8)
        np.testing.assert_allclose(forces, forces_phys, rtol=1e-9, atol=1e-7)
    # Control: between the ends the learned term is there, in both stages
    for t in (0.5, 0.9):
        learned = _energy_and_forces(path.alchemical_system, x, _path_parameters(t))[0] - \
            _energy_and_forces(leg.alchemical_system, x, _physical_parameters(t))[0]
        assert abs(learned) > 1e-2


def test_openmm_tables_match_torch_per_pair_class(leg, random_phi):
    path = nti.exact_path_leg(leg, random_phi, nodes=3)
    classes = nti.pair_classes(leg.molecular_system.system, leg.solute_atoms)
    x = leg.molecular_system.positions_nm
    box = leg.alchemical_system.getDefaultPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    t = 0.63
    learned_openmm = _energy_and_forces(path.alchemical_system, x, _path_parameters(t))[0] - \
        _energy_and_forces(leg.alchemical_system, x, _physical_parameters(t))[0]
    learned_torch = random_phi.learned_energy(torch.tensor(x)[None], torch.tensor(t), None, box, classes)[0].item()
    assert abs(learned_torch) > 0.1
    assert learned_openmm == pytest.approx(learned_torch, rel=2e-3)
    # Control: one class for every pair (the hydrogens' functions for the carbon) is resolved as different
    one_class = nti.PairClasses(classes.solute, classes.solvent, (1,) * 5, classes.solvent_class, 2, 2)
    wrong = random_phi.learned_energy(torch.tensor(x)[None], torch.tensor(t), None, box, one_class)[0].item()
    assert abs(wrong - learned_openmm) > 10 * 2e-3 * abs(learned_torch)


def test_du_dt_is_one_sided_at_the_stage_boundary(leg, random_phi):
    """∂u/∂t of each TI stage (physical λ moved at dλ/dt with t) equals a finite difference of the full path
    U_θ(x, t); at t = 0.8 the sterics stage takes the derivative from below, the charges stage from above."""
    path = nti.exact_path_leg(leg, random_phi, nodes=[1.0, 0.9, 0.8, 0.4, 0.0])
    stages = _dudl._stages(path)
    assert [s[3] for s in stages] == [[2, 3, 4], [0, 1, 2]]  # state indices: t <= 0.8, t >= 0.8
    assert [s[0] for s in stages] == ["sterics", "electrostatics"]
    context = _dudl._derivative_context(path.alchemical_system, {p for _, _, rates, _, _ in stages for p in rates})
    x = leg.molecular_system.positions_nm
    context.setPositions(x)
    names = list(context.getParameters().keys())

    def full(t):
        return _energy_and_forces(path.alchemical_system, x, _path_parameters(t))[0]

    h = 1e-4
    for (_, _, rates, states, _), side in zip(stages, (-1, +1)):
        for k in states:
            t = path.thermodynamic_states[k].neural_ti_t
            values = _dudl._state_values(path.thermodynamic_states[k], names)
            ours = _dudl._derivative(context, values, rates, h)
            if t == 0.8 or t in (0.0, 1.0):  # second-order one-sided, into the stage
                step = h if (t == 0.0 or (t == 0.8 and side > 0)) else -h
                expected = (-3 * full(t) + 4 * full(t + step) - full(t + 2 * step)) / (2 * step)
            else:
                expected = (full(t + h) - full(t - h)) / (2 * h)
            assert ours == pytest.approx(expected, rel=1e-4, abs=1e-3), (t, side)
    # Control: the two one-sided derivatives at the boundary differ (a central difference there would be neither)
    values = _dudl._state_values(path.thermodynamic_states[2], names)
    below, above = (_dudl._derivative(context, values, rates, h) for _, _, rates, _, _ in stages)
    assert abs(below - above) > 1.0


def test_pairing_superposes_the_solute_and_keeps_waters_whole(leg):
    samples = nti.sample_endpoints(leg, 3, steps_between=20, equilibration_steps=50, platform="Reference")
    molecules, kinds = _solvent_molecules(leg)
    assert len(molecules) == (leg.molecular_system.n_atoms - 5) // 3 and all(len(m) == 3 for m in molecules)
    assert len(set(kinds)) == 1 and kinds[0] == (0, 1, 1)  # waters: O, H, H
    x1, f1 = nti._pair(samples, np.random.default_rng(0), molecules, kinds)
    partners = np.random.default_rng(0).permutation(len(samples.x1))  # _pair's first draw
    box = samples.box
    for k in range(len(x1)):
        d = x1[k, :5] - samples.x0[k, :5]
        d -= box * np.round(d / box)
        assert np.abs(d).max() < 0.03  # methane's geometry varies little: superposed to within its vibrations
        for molecule in molecules:  # O-H distances of every water unchanged (moved whole)
            oh = x1[k, molecule[1:]] - x1[k, molecule[0]]
            oh -= box * np.round(oh / box)
            assert np.linalg.norm(oh, axis=-1) == pytest.approx([0.09572, 0.09572], abs=1e-4)
        # the solute's forces turned with it: the rotation taking the partner's solute to its new place
        before = samples.x1[partners[k], :5] - samples.x1[partners[k], 0]
        after = x1[k, :5] - x1[k, 0]
        before, after = (v - box * np.round(v / box) for v in (before, after))
        rotation = _superposition(before - before.mean(0), after - after.mean(0))
        np.testing.assert_allclose(f1[k, :5], samples.f1[partners[k], :5] @ rotation.T, rtol=1e-9, atol=1e-9)
        if not np.allclose(rotation, np.eye(3), atol=1e-3):  # Control: the unrotated forces differ
            assert not np.allclose(f1[k, :5], samples.f1[partners[k], :5], atol=1.0)


def test_npt_leg_keeps_its_pressure_and_non_cubic_boxes_are_refused(tmp_path):
    methane = solvation_system("methane", padding=0.5, nonbonded_cutoff=0.5, workdir=tmp_path)  # 1 atm by default
    leg = alchemical_leg(methane.solvent, methane.solute_atoms)
    assert leg.pressure is not None and leg.pressure.value_in_unit(unit.atmosphere) == pytest.approx(1.0)
    box = leg.alchemical_system.getDefaultPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    leg.alchemical_system.setDefaultPeriodicBoxVectors(openmm.Vec3(box, 0, 0), openmm.Vec3(0, box + 0.1, 0), openmm.Vec3(0, 0, box))
    with pytest.raises(InvalidInputError, match="cubic box"):
        nti.sample_endpoints(leg, 2, platform="Reference")


def test_refused_overlap_names_the_nodes_to_pass(leg, random_phi):
    """The error of a path without overlap gives a --nodes value: the same nodes plus the weakest pair's midpoint
    (and, in the electrostatics stage, the MBAR route's schedule)."""
    path = nti.exact_path_leg(leg, random_phi, nodes=[1.0, 0.9, 0.8, 0.4, 0.0])
    charges = nti._more_nodes_hint(path, (0, 1))
    assert "t = 1 and 0.9" in charges and "--nodes 1,0.95,0.9,0.8,0.4,0)" in charges and "--nodes schedule" in charges
    sterics = nti._more_nodes_hint(path, (3, 4))
    assert "--nodes 1,0.9,0.8,0.4,0.2,0)" in sterics and "schedule" not in sterics
    assert nti.parse_nodes("1,0.9,0.8,0.4,0.2,0") == [1.0, 0.9, 0.8, 0.4, 0.2, 0.0]  # what it proposes parses
    assert "schedule" not in nti._more_nodes_hint(path, (0, 1), offer_schedule=False)  # the nodes were the schedule
    assert nti._more_nodes_hint(path, None) == "more nodes (--nodes)"  # MBAR found no solution: no pair to name


def test_the_schedule_nodes_map_the_mbar_states_onto_t(leg, random_phi):
    path = nti.exact_path_leg(leg, random_phi, nodes="schedule")
    t = [s.neural_ti_t for s in path.thermodynamic_states]
    assert t[:5] == pytest.approx([1.0, 0.95, 0.9, 0.85, 0.8]) and t[5:8] == pytest.approx([0.72, 0.64, 0.56]) and t[-1] == 0.0
    # the same physical states as the MBAR route
    assert path.schedule.electrostatics == pytest.approx(leg.schedule.electrostatics)
    assert path.schedule.sterics == pytest.approx(leg.schedule.sterics)


def test_samples_of_other_settings_are_refused(leg, tmp_path):
    from openmm_flowplugin.freeenergy.neural_ti import _stored_or_new_samples

    path = tmp_path / "neural_ti_samples.npz"
    x = np.zeros((1, leg.molecular_system.n_atoms, 3))
    np.savez(path, x0=x, f0=x, x1=x, f1=x, box=1.0, solute=leg.solute_atoms, record=np.array('{"other": 1}'))
    with pytest.raises(InvalidInputError, match="another system or settings"):
        _stored_or_new_samples(path, '{"this": 1}', leg, 2, "Reference")
    samples, seed = _stored_or_new_samples(path, '{"other": 1}', leg, 1, "Reference")  # Control: its own record
    assert samples.x0.shape == x.shape and seed is None  # a file from before seeds were stored
    with pytest.raises(InvalidInputError, match=r"holds 1 samples per end state, not 2: give --samples 1"):
        _stored_or_new_samples(path, '{"other": 1}', leg, 2, "Reference")  # another count is not silently reused
    path.write_bytes(b"PK\x03\x04 half an npz")  # what an interrupted write would have left before writes were atomic
    with pytest.raises(InvalidInputError, match="not readable endpoint samples"):
        _stored_or_new_samples(path, '{"other": 1}', leg, 1, "Reference")


@pytest.mark.slow
def test_exact_path_agrees_with_the_mbar_route_for_a_water_in_water(tmp_path):
    """A TIP3P water as the solute (4 pair classes; its charges give most of the ~10 kT, so the sign is resolved)."""
    from openmm_flowplugin.freeenergy import solvation_free_energy

    water = solvation_system("water", padding=0.5, nonbonded_cutoff=0.5, pressure=None, workdir=tmp_path / "build")
    settings = dict(n_iterations=100, md_steps=100, equilibration_iterations=5, platform="CPU", progress=False)
    mbar = solvation_free_energy(water, tmp_path / "run", **settings)
    neural = nti.neural_ti_free_energy(water, tmp_path / "run", n_samples=32, n_train_steps=50, nodes="schedule", **settings)
    assert neural["vacuum"]["delta_f_kT"] == pytest.approx(mbar.legs["vacuum"].delta_f)  # one vacuum leg, shared
    combined = math.hypot(neural["error_kT"], mbar.legs["solvent"].error)
    assert abs(neural["delta_f_kT"] - mbar.legs["solvent"].delta_f) < N_SIGMA * combined, (neural["delta_f_kT"], mbar.legs)
    # Control: the sign convention is resolved
    assert abs(-neural["delta_f_kT"] - mbar.legs["solvent"].delta_f) > N_SIGMA * combined
    ti = neural["ti"]
    assert len(ti["profiles"]) == 2 and ti["profiles"][0]["lambdas"][-1] == ti["profiles"][1]["lambdas"][0] == 0.8
    tolerance = N_SIGMA * math.hypot(ti["statistical_error_kT"], neural["error_kT"]) + ti["quadrature_error_kT"]
    assert abs(ti["delta_f_kT"] - neural["delta_f_kT"]) < tolerance, (ti, neural["delta_f_kT"])
