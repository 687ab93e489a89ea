"""The OpenMM <-> torch energy bridge."""

import pickle

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from openmm_flowplugin import OpenMMEnergy, systems
from openmm_flowplugin.platforms import PLATFORM_ENV_VAR, select_platform


@pytest.fixture(scope="module")
def ala2():
    return systems.get("alanine_dipeptide_vacuum")


def _perturbed(ala2, n, scale=0.005, seed=0):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(ala2.positions_nm + scale * rng.standard_normal((n, 22, 3)))


def _context_energy_and_forces(system, x, platform="Reference"):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    energies, forces = [], []
    for xi in x:
        context.setPositions(xi)
        state = context.getState(energy=True, forces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_energies_and_forces_equal_openmm_context(ala2, platform):
    x = _perturbed(ala2, 8)
    energy = OpenMMEnergy(ala2.system, ala2.temperature, platform=platform)
    u, f = energy.energy_and_forces(x)
    expected_u, expected_f = _context_energy_and_forces(ala2.system, x.numpy(), platform)
    kT = ala2.kT
    assert u.dtype == np.float64
    np.testing.assert_allclose(u * kT, expected_u, rtol=1e-6)
    np.testing.assert_allclose(f * kT, expected_f, rtol=1e-6, atol=1e-6 * np.abs(expected_f).max())


def test_autograd_gradient_is_minus_force_over_kT(ala2):
    x = _perturbed(ala2, 4).requires_grad_()
    energy = OpenMMEnergy(ala2.system, 300 * unit.kelvin)
    u = energy(x)
    (2.0 * u).sum().backward()
    _, f = energy.energy_and_forces(x.detach())
    np.testing.assert_allclose(x.grad.numpy(), -2.0 * f, rtol=1e-10)


def test_gradient_matches_finite_differences(ala2):
    energy = OpenMMEnergy(ala2.system, ala2.temperature, platform_properties=None)
    x = _perturbed(ala2, 1)[0]
    x.requires_grad_()
    energy(x).backward()
    h = 1e-5
    rng = np.random.default_rng(3)
    for atom, axis in zip(rng.integers(0, 22, 5), rng.integers(0, 3, 5)):
        plus, minus = x.detach().clone(), x.detach().clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        numeric = (energy(plus) - energy(minus)).item() / (2 * h)
        assert x.grad[atom, axis].item() == pytest.approx(numeric, rel=1e-4, abs=1e-3)


def test_float32_input_gets_float64_energy_and_float32_gradient(ala2):
    x = _perturbed(ala2, 2).float().requires_grad_()
    u = OpenMMEnergy(ala2.system, ala2.temperature)(x)
    assert u.dtype == torch.float64
    u.sum().backward()
    assert x.grad.dtype == torch.float32


def test_failed_evaluations_are_inf_and_counted(ala2):
    energy = OpenMMEnergy(ala2.system, ala2.temperature)
    x = _perturbed(ala2, 3).requires_grad_()
    with torch.no_grad():
        x[1, 4, 0] = float("nan")
    u = energy(x)
    assert torch.isinf(u[1]) and u[1] > 0
    assert torch.isfinite(u[[0, 2]]).all()
    assert energy.n_failures == 1 and energy.n_evaluations == 3
    u[[0, 2]].sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1] == 0).all()


def test_bad_shapes_are_refused_with_a_clear_message(ala2):
    energy = OpenMMEnergy(ala2.system, ala2.temperature)
    with pytest.raises(ValueError, match=r"shape \(batch, 22, 3\)"):
        energy(torch.zeros(2, 21, 3))


def test_atom_subset_holds_other_atoms_fixed(ala2):
    subset = [4, 6, 8, 14]
    energy = OpenMMEnergy(ala2.system, ala2.temperature, atom_indices=subset, reference_positions=ala2.positions)
    full = OpenMMEnergy(ala2.system, ala2.temperature)
    x = _perturbed(ala2, 3)
    u_subset, f_subset = energy.energy_and_forces(x[:, subset])
    expected = np.broadcast_to(ala2.positions_nm, x.shape).copy()
    expected[:, subset] = x[:, subset].numpy()
    u_full, f_full = full.energy_and_forces(expected)
    np.testing.assert_allclose(u_subset, u_full, rtol=1e-12)
    np.testing.assert_allclose(f_subset, f_full[:, subset], rtol=1e-12)
    with pytest.raises(ValueError, match="reference_positions"):
        OpenMMEnergy(ala2.system, ala2.temperature, atom_indices=subset)


def test_platform_selection(ala2, monkeypatch):
    assert select_platform(ala2.system).getName() == "Reference"  # tiny system
    monkeypatch.setenv(PLATFORM_ENV_VAR, "CPU")
    assert OpenMMEnergy(ala2.system, ala2.temperature).platform.getName() == "CPU"
    assert OpenMMEnergy(ala2.system, ala2.temperature, platform="Reference").platform.getName() == "Reference"
    monkeypatch.setenv(PLATFORM_ENV_VAR, "NoSuchPlatform")
    with pytest.raises(ValueError, match="NoSuchPlatform.*not available"):
        OpenMMEnergy(ala2.system, ala2.temperature)


def test_worker_processes_agree_with_serial(ala2):
    x = _perturbed(ala2, 40)
    serial = OpenMMEnergy(ala2.system, ala2.temperature)
    parallel = OpenMMEnergy(ala2.system, ala2.temperature, n_workers=2)
    try:
        np.testing.assert_array_equal(parallel(x).numpy(), serial(x).numpy())
    finally:
        parallel.close()


def test_pickle_round_trip(ala2):
    energy = OpenMMEnergy(ala2.system, ala2.temperature)
    x = _perturbed(ala2, 2)
    restored = pickle.loads(pickle.dumps(energy))
    np.testing.assert_array_equal(restored(x).numpy(), energy(x).numpy())
