"""The OpenMM <-> torch energy bridge."""

import copy
import pickle

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from openmm_flowplugin import OpenMMEnergy, systems
from openmm_flowplugin._openmm_fast import context_energy_and_forces
from openmm_flowplugin.bridge._evaluator import is_bad_configuration_error
from openmm_flowplugin.bridge.energy import EnergyEvaluationError
from openmm_flowplugin.platforms import PLATFORM_ENV_VAR, select_platform


@pytest.fixture(scope="module")
def ala2():
    return systems.get("alanine_dipeptide_vacuum")


def _perturbed(ala2, n, scale=0.005, seed=0):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(ala2.positions_nm + scale * rng.standard_normal((n, 22, 3)))


def _independent_kT(temperature):
    """k_B T in kJ/mol straight from openmm.unit, not through the package's units module."""
    return (unit.MOLAR_GAS_CONSTANT_R * temperature).value_in_unit(unit.kilojoule_per_mole)


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
    kT = _independent_kT(ala2.temperature)
    assert u.dtype == np.float64
    np.testing.assert_allclose(u * kT, expected_u, rtol=1e-6)
    np.testing.assert_allclose(f * kT, expected_f, rtol=1e-6, atol=1e-6 * np.abs(expected_f).max())


def test_autograd_gradient_is_minus_force_over_kT(ala2):
    """backward gives grad_output * (-F / kT) with F from a separate OpenMM Context (public API) and kT from openmm.unit."""
    x = _perturbed(ala2, 4).requires_grad_()
    energy = OpenMMEnergy(ala2.system, 300 * unit.kelvin, platform="Reference")
    weights = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)  # per-sample grad_output must scale each sample
    (weights * energy(x)).sum().backward()
    _, forces = _context_energy_and_forces(ala2.system, x.detach().numpy(), "Reference")
    expected = -weights.numpy()[:, None, None] * forces / _independent_kT(300 * unit.kelvin)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


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


# ---------------------------------------------------------------------------- bad configuration vs broken setup
def _with_python_force(ala2, function):
    system = copy.deepcopy(ala2.system)
    system.addForce(openmm.PythonForce(function))
    return system


def _batch_with_one_far_atom(ala2):
    x = torch.as_tensor(ala2.positions_nm)[None].repeat(3, 1, 1)
    x[1, 0, 0] += 10.0  # configuration 1 has atom 0 far away
    return x


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_a_force_that_always_raises_is_an_error_not_an_infinite_energy(ala2, platform):
    def broken(state):
        raise RuntimeError("model weights missing")

    energy = OpenMMEnergy(_with_python_force(ala2, broken), ala2.temperature, platform=platform)
    with pytest.raises(EnergyEvaluationError, match=f"configuration 0 on the {platform} platform: model weights missing.*broken setup"):
        energy(_perturbed(ala2, 2))


def test_a_force_that_raises_for_one_configuration_is_an_error_naming_it(ala2):
    zero = np.zeros((22, 3))

    def fails_far_away(state):
        if state.getPositions(asNumpy=True)._value[0, 0] > 5.0:
            raise RuntimeError("outside the model's range")
        return 0.0, zero

    energy = OpenMMEnergy(_with_python_force(ala2, fails_far_away), ala2.temperature, platform="Reference")
    with pytest.raises(EnergyEvaluationError, match="configuration 1 .*outside the model's range.*still evaluates the previous"):
        energy(_batch_with_one_far_atom(ala2))


def test_a_context_that_breaks_after_good_evaluations_is_an_error(ala2):
    """Like a lost GPU context: evaluations succeed, then every call fails, the previous good configuration too."""
    zero, lost = np.zeros((22, 3)), []

    def device(state):
        if lost:
            raise RuntimeError("device lost")
        return 0.0, zero

    energy = OpenMMEnergy(_with_python_force(ala2, device), ala2.temperature, platform="Reference")
    assert torch.isfinite(energy(_perturbed(ala2, 2))).all()
    lost.append(True)
    with pytest.raises(EnergyEvaluationError, match="configuration 0 .*device lost.*fails on a configuration it evaluated before"):
        energy(_perturbed(ala2, 2, seed=1))


def test_openmm_nan_coordinate_exception_is_a_bad_configuration(ala2):
    """The CPU platform raises for NaN coordinates: that exception counts as a bad configuration, others do not."""
    context = openmm.Context(ala2.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    x = ala2.positions_nm.copy()
    x[3, 1] = np.nan
    with pytest.raises(openmm.OpenMMException) as raised:
        context_energy_and_forces(context, x, np.zeros((22, 3)))
    assert is_bad_configuration_error(raised.value)
    assert not is_bad_configuration_error(openmm.OpenMMException("Error launching CUDA kernel"))
    assert not is_bad_configuration_error(RuntimeError("Particle coordinate is NaN"))  # not from OpenMM


def test_bad_configuration_exception_gives_inf_and_evaluation_continues(ala2):
    """A force raising OpenMM's NaN-coordinate exception for one configuration (as GPU platforms do) gives u = +inf."""
    zero = np.zeros((22, 3))

    def nan_far_away(state):
        if state.getPositions(asNumpy=True)._value[0, 0] > 5.0:
            raise openmm.OpenMMException("Particle coordinate is NaN.  For more information, see ...")
        return 0.0, zero

    energy = OpenMMEnergy(_with_python_force(ala2, nan_far_away), ala2.temperature, platform="Reference")
    x = _batch_with_one_far_atom(ala2)
    u = energy(x)
    assert torch.isinf(u[1]) and u[1] > 0 and torch.isfinite(u[[0, 2]]).all()
    assert energy.n_failures == 1
    np.testing.assert_allclose(u[[0, 2]].numpy(), OpenMMEnergy(ala2.system, ala2.temperature)(x[[0, 2]]).numpy(), rtol=1e-12)


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_huge_coordinates_are_a_bad_configuration_not_an_error(ala2, platform):
    energy = OpenMMEnergy(ala2.system, ala2.temperature, platform=platform)
    x = _perturbed(ala2, 3)
    x[1] = 1e30 * torch.rand(22, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[2, 5] = 1e300
    u = energy(x)
    assert torch.isfinite(u[0])
    assert all(not torch.isfinite(u[i]) or u[i] > 1e6 for i in (1, 2))  # rejected either way: +inf or astronomically high
    assert energy.n_failures == int((~torch.isfinite(u)).sum())


# ---------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128, np.float16])
def test_positions_of_a_non_float_dtype_are_refused(ala2, dtype):
    energy = OpenMMEnergy(ala2.system, ala2.temperature)
    x = np.broadcast_to(ala2.positions_nm, (2, 22, 3)).astype(dtype)
    name = np.dtype(dtype).name
    for positions in (x, torch.from_numpy(x.copy()), unit.Quantity(x, unit.angstrom), x[0]):
        with pytest.raises(TypeError, match=f"positions have dtype {name}: pass real floating-point coordinates"):
            energy(positions)
        with pytest.raises(TypeError, match=f"dtype {name}"):
            energy.energy_and_forces(positions)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.complex64, torch.int16])
def test_tensors_of_a_non_float_dtype_are_refused(ala2, dtype):
    energy = OpenMMEnergy(ala2.system, ala2.temperature)
    with pytest.raises(TypeError, match=str(dtype).removeprefix("torch.")):
        energy(torch.as_tensor(ala2.positions_nm).to(dtype))


def test_float32_positions_are_converted_to_float64(ala2):
    energy = OpenMMEnergy(ala2.system, ala2.temperature)
    x32 = _perturbed(ala2, 3).numpy().astype(np.float32)
    expected = energy(torch.from_numpy(x32.astype(np.float64)))
    for positions in (x32, torch.from_numpy(x32), unit.Quantity(x32, unit.nanometer)):
        np.testing.assert_array_equal(energy(positions).numpy(), expected.numpy())


def test_integer_reference_positions_are_refused(ala2):
    with pytest.raises(TypeError, match="reference_positions have dtype int64"):
        OpenMMEnergy(ala2.system, ala2.temperature, atom_indices=[0, 1], reference_positions=np.zeros((22, 3), dtype=np.int64))


@pytest.mark.parametrize("atom_indices, error, match", [
    ([0.9, 1.9, 2.9], TypeError, "atom_indices must be integers.*float64"),  # used to move atoms 0, 1, 2
    (np.array([4.0, 6.0]), TypeError, "atom_indices must be integers.*float64"),
    (torch.tensor([4.0, 6.0]), TypeError, "atom_indices must be integers.*float32"),
    ([True, False, True], TypeError, "booleans.*np.flatnonzero"),
    (np.ones(22, dtype=bool), TypeError, "booleans"),
    ([], ValueError, "atom_indices is empty"),
    (np.array([], dtype=np.int64), ValueError, "atom_indices is empty"),
    ([4, 4], ValueError, "distinct"),
    ([0, 22], ValueError, r"lie in \[0, 22\)"),
])
def test_bad_atom_indices_are_refused(ala2, atom_indices, error, match):
    with pytest.raises(error, match=match):
        OpenMMEnergy(ala2.system, ala2.temperature, atom_indices=atom_indices, reference_positions=ala2.positions)


def test_integer_atom_indices_of_any_integer_type_are_accepted(ala2):
    x = _perturbed(ala2, 2)[:, [4, 6, 8]]
    results = [
        OpenMMEnergy(ala2.system, ala2.temperature, atom_indices=indices, reference_positions=ala2.positions)(x).numpy()
        for indices in ([4, 6, 8], np.array([4, 6, 8], dtype=np.int32), torch.tensor([4, 6, 8]), range(4, 9, 2))
    ]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


@pytest.mark.parametrize("n_workers", [0, 1.5, True, "2"])
def test_bad_n_workers_are_refused(ala2, n_workers):
    with pytest.raises(ValueError, match="n_workers must be an integer >= 1"):
        OpenMMEnergy(ala2.system, ala2.temperature, n_workers=n_workers)
