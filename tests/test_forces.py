"""Learned potentials as OpenMM forces: exactness against torch, contracts, round trips."""

import copy
import pickle

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from openmm_flowplugin import systems
from openmm_flowplugin.forces import (
    HarmonicRestraint,
    TorchComputation,
    as_openmm_force,
    flow_potential,
    parameter_derivative,
)
from openmm_flowplugin.forces.python_force import _MODULE_CACHE
from openmm_flowplugin.forces.torch_force import script_adapter
from openmm_flowplugin.units import kT

RTOL = 1e-5  # energies and forces through a Context versus the module's own torch evaluation
FD_STEP = 1e-5  # nm, central finite differences (float64)


# Module-level (hence picklable) test modules following the calling convention.
class PairNet(torch.nn.Module):
    """A small smooth neural energy of all pair distances, scaled by lambda_ml**2 + 1 (nonlinear in lambda)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)).double()

    def forward(self, positions: torch.Tensor, lambda_ml: torch.Tensor) -> torch.Tensor:
        pairs = torch.triu_indices(positions.shape[0], positions.shape[0], 1)
        r = torch.sqrt(((positions[pairs[0]] - positions[pairs[1]]) ** 2).sum(-1, keepdim=True))
        return (1.0 + lambda_ml**2) * self.net(r).sum()


class PlainNet(PairNet):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return super().forward(positions, torch.tensor(0.0, dtype=torch.float64))


class PeriodicLJ(torch.nn.Module):
    """Lennard-Jones with minimum image in a rectangular box (all pairs)."""

    def __init__(self, sigma: float = 0.3, epsilon: float = 0.5):
        super().__init__()
        self.sigma, self.epsilon = sigma, epsilon

    def forward(self, positions: torch.Tensor, box_vectors: torch.Tensor) -> torch.Tensor:
        lengths = torch.diagonal(box_vectors)
        delta = positions.unsqueeze(0) - positions.unsqueeze(1)
        delta = delta - lengths * torch.round(delta / lengths)
        n = positions.shape[0]
        pairs = torch.triu_indices(n, n, 1)
        r2 = (delta[pairs[0], pairs[1]] ** 2).sum(-1)
        s6 = (self.sigma**2 / r2) ** 3
        return (4.0 * self.epsilon * (s6 * s6 - s6)).sum()


class Gaussian(torch.nn.Module):
    """Stand-in flow: isotropic Gaussian around a mean, ``log_prob`` over (n, n_atoms, 3)."""

    def __init__(self, mean, scale=0.05):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.scale = scale

    def log_prob(self, x):
        d = self.mean.numel()
        z = ((x - self.mean) / self.scale) ** 2
        return -0.5 * z.sum(dim=(-2, -1)) - d * np.log(self.scale * np.sqrt(2 * np.pi))


def _context(system, platform="Reference"):
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))


def _energy_forces(context, positions):
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return energy, state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)


def _torch_energy_forces(module, positions, **kwargs):
    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    energy = module(x, **kwargs)
    (grad,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -grad.numpy()


def _empty_system(n, periodic_box=None):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    if periodic_box is not None:
        system.setDefaultPeriodicBoxVectors(*periodic_box)
    return system


@pytest.fixture(scope="module")
def alanine():
    return systems.get("alanine_dipeptide_vacuum")


def _positions(molecule):
    return np.asarray(molecule.positions.value_in_unit(unit.nanometer))


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_energy_and_forces_match_torch(alanine, platform):
    module = PairNet()
    system = _empty_system(alanine.system.getNumParticles())
    system.addForce(as_openmm_force(module, global_parameters={"lambda_ml": 0.5}, backend="python"))
    context = _context(system, platform)
    x = _positions(alanine)
    energy, forces = _energy_forces(context, x)
    expected_energy, expected_forces = _torch_energy_forces(module, x, lambda_ml=torch.tensor(0.5, dtype=torch.float64))
    assert energy == pytest.approx(expected_energy, rel=RTOL)
    np.testing.assert_allclose(forces, expected_forces, rtol=RTOL, atol=RTOL * np.abs(expected_forces).max())


def test_forces_match_finite_differences(alanine):
    system = _empty_system(22)
    system.addForce(as_openmm_force(PlainNet(), backend="python"))
    context = _context(system)
    x = _positions(alanine)
    _, forces = _energy_forces(context, x)
    for atom, axis in [(0, 0), (7, 1), (21, 2)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += FD_STEP
        minus[atom, axis] -= FD_STEP
        derivative = (_energy_forces(context, plus)[0] - _energy_forces(context, minus)[0]) / (2 * FD_STEP)
        assert -derivative == pytest.approx(forces[atom, axis], rel=1e-4, abs=1e-4)


def test_particle_subset_scatters_forces(alanine):
    module, atoms = PlainNet(), [3, 5, 7, 11]
    system = copy.deepcopy(alanine.system)
    reference_context = _context(copy.deepcopy(system))
    system.addForce(as_openmm_force(module, particles=atoms, backend="python", system=system))
    x = _positions(alanine)
    energy, forces = _energy_forces(_context(system), x)
    mm_energy, mm_forces = _energy_forces(reference_context, x)
    expected_energy, expected_forces = _torch_energy_forces(module, x[atoms])
    assert energy - mm_energy == pytest.approx(expected_energy, rel=RTOL)
    learned = forces - mm_forces
    np.testing.assert_allclose(learned[atoms], expected_forces, rtol=1e-4, atol=1e-6 * np.abs(mm_forces).max())
    others = np.setdiff1d(np.arange(22), atoms)
    np.testing.assert_allclose(learned[others], 0.0, atol=1e-6 * np.abs(mm_forces).max())


def test_parameter_changes_and_derivative(alanine):
    module = PairNet()
    system = _empty_system(22)
    system.addForce(as_openmm_force(module, global_parameters={"lambda_ml": 1.0}, backend="python"))
    context = _context(system)
    x = _positions(alanine)
    context.setPositions(x)
    u_net = _torch_energy_forces(module, x, lambda_ml=torch.tensor(0.0, dtype=torch.float64))[0]
    for lam in (0.0, 0.3, 1.0):
        context.setParameter("lambda_ml", lam)
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        assert energy == pytest.approx((1 + lam**2) * u_net, rel=RTOL)
        assert parameter_derivative(context, "lambda_ml") == pytest.approx(2 * lam * u_net, rel=RTOL, abs=1e-12)
    with pytest.raises(KeyError, match="no global parameter 'nope'"):
        parameter_derivative(context, "nope")


def test_openmmtools_states_drive_parameter(alanine):
    from openmmtools.states import CompoundThermodynamicState, GlobalParameterState, ThermodynamicState

    class MLState(GlobalParameterState):
        lambda_ml = GlobalParameterState.GlobalParameter("lambda_ml", standard_value=1.0)

    system = copy.deepcopy(alanine.system)
    system.addForce(as_openmm_force(PairNet(), global_parameters={"lambda_ml": 1.0}, backend="python"))
    thermodynamic_state = ThermodynamicState(system, 300 * unit.kelvin)  # hashes the System through XML
    compound = CompoundThermodynamicState(thermodynamic_state, [MLState(lambda_ml=1.0)])
    context = compound.create_context(openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(alanine.positions)
    u1 = compound.reduced_potential(context)
    compound.lambda_ml = 0.0
    compound.apply_to_context(context)
    assert context.getParameter("lambda_ml") == 0.0
    assert compound.reduced_potential(context) != pytest.approx(u1)


def test_periodic_wrapping_and_box(tmp_path):
    box = [openmm.Vec3(2.0, 0, 0), openmm.Vec3(0, 2.0, 0), openmm.Vec3(0, 0, 2.0)]
    n = 27
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.66 + 0.1
    x = grid + np.random.uniform(-0.03, 0.03, grid.shape)
    module = PeriodicLJ()
    system = _empty_system(n, box)
    system.addForce(as_openmm_force(module, periodic=True, backend="python"))
    context = _context(system)
    energy, forces = _energy_forces(context, x)
    expected_energy, expected_forces = _torch_energy_forces(module, x, box_vectors=torch.eye(3, dtype=torch.float64) * 2.0)
    assert energy == pytest.approx(expected_energy, rel=RTOL)
    np.testing.assert_allclose(forces, expected_forces, rtol=RTOL, atol=RTOL * np.abs(expected_forces).max())
    shifted = x.copy()
    shifted[0] += [2.0, -4.0, 6.0]  # whole box vectors: same configuration
    energy_shifted, forces_shifted = _energy_forces(context, shifted)
    assert energy_shifted == pytest.approx(energy, rel=RTOL)
    np.testing.assert_allclose(forces_shifted, forces, rtol=RTOL, atol=RTOL * np.abs(forces).max())


def test_xml_round_trip_shares_module(alanine):
    module = PairNet()
    system = copy.deepcopy(alanine.system)
    system.addForce(as_openmm_force(module, global_parameters={"lambda_ml": 0.7}, backend="python"))
    xml = openmm.XmlSerializer.serialize(system)
    restored = openmm.XmlSerializer.deserialize(xml)
    x = _positions(alanine)
    e1, f1 = _energy_forces(_context(system), x)
    e2, f2 = _energy_forces(_context(restored), x)
    assert e2 == pytest.approx(e1, rel=1e-12)
    np.testing.assert_allclose(f2, f1, rtol=1e-12)
    assert openmm.XmlSerializer.serialize(restored) == xml
    # Copies made by pickling share one module through the sha256-keyed cache.
    computation = TorchComputation(module, ("lambda_ml",))
    a, b = pickle.loads(pickle.dumps(computation)), pickle.loads(pickle.dumps(computation))
    assert a.module is b.module
    assert a.module in _MODULE_CACHE.values()


def test_flow_potential_is_minus_kt_log_q(alanine):
    x = _positions(alanine)
    flow = Gaussian(x + 0.01)
    temperature = 300 * unit.kelvin
    system = _empty_system(22)
    system.addForce(flow_potential(flow, temperature))
    energy, forces = _energy_forces(_context(system), x)
    xt = torch.tensor(x, requires_grad=True)
    expected = -kT(temperature) * flow.log_prob(xt.unsqueeze(0))[0]
    (grad,) = torch.autograd.grad(expected, xt)
    assert energy == pytest.approx(float(expected.detach()), rel=RTOL)
    np.testing.assert_allclose(forces, -grad.numpy(), rtol=RTOL, atol=RTOL * grad.abs().max().item())
    assert openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system)).getNumForces() == 1


def test_input_errors():
    with pytest.raises(ValueError, match="cannot be passed as a keyword"):
        as_openmm_force(PlainNet(), global_parameters={"lambda-ml": 1.0})
    with pytest.raises(ValueError, match="backend must be one of"):
        as_openmm_force(PlainNet(), backend="jax")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        as_openmm_force(lambda x: x.sum())

    class Local(torch.nn.Module):  # defined in a function: cannot be pickled
        def forward(self, positions, k=torch.tensor(1.0)):
            return k * positions.sum()

    with pytest.raises(ValueError, match="could not be pickled"):
        as_openmm_force(Local(), global_parameters={"k": 1.0}, backend="python")
    with pytest.warns(UserWarning, match="could not be pickled"):
        as_openmm_force(Local(), backend="python")  # usable in a Context, not serializable


def test_torch_backend_missing_names_extra():
    try:
        import openmmtorch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"openmm_flowplugin\[torch-force\]"):
            as_openmm_force(HarmonicRestraint([[0.0] * 3]), global_parameters={"k": 1.0}, backend="torch")
    else:
        pytest.skip("openmmtorch is installed: the import guard cannot trigger")


def test_torchscript_adapter_matches_module():
    """The TorchForce adapter (scripted on CPU; TorchForce itself needs CUDA) restores the convention."""
    module = PairNet()
    n, atoms = 6, [1, 4, 5]
    x = torch.rand(n, 3, dtype=torch.float64)
    adapter = script_adapter(module, particles=atoms, parameter_names=["lambda_ml"])
    lam = torch.tensor(0.4, dtype=torch.float64)
    with torch.no_grad():
        assert float(adapter(x.float(), lam)) == pytest.approx(float(module(x.float().double()[atoms], lambda_ml=lam)), rel=1e-12)
    box = torch.eye(3, dtype=torch.float64) * 2.0
    periodic = script_adapter(PeriodicLJ(), periodic=True)
    with torch.no_grad():
        assert float(periodic(x, box)) == pytest.approx(float(PeriodicLJ()(x, box_vectors=box)), rel=1e-12)


@pytest.mark.gpu
def test_cuda_platform_python_backend(alanine):
    module = PairNet()
    system = _empty_system(22)
    system.addForce(as_openmm_force(module, global_parameters={"lambda_ml": 0.5}, backend="python"))
    x = _positions(alanine)
    energy, forces = _energy_forces(_context(system, "CUDA"), x)
    expected_energy, expected_forces = _torch_energy_forces(module, x, lambda_ml=torch.tensor(0.5, dtype=torch.float64))
    assert energy == pytest.approx(expected_energy, rel=1e-4)  # CUDA mixed precision
    np.testing.assert_allclose(forces, expected_forces, rtol=1e-3, atol=1e-3 * np.abs(expected_forces).max())


@pytest.mark.gpu
def test_torchforce_backend_on_cuda(alanine):
    pytest.importorskip("openmmtorch", reason="openmmtorch (extra openmm_flowplugin[torch-force]) is not installed")
    module = PairNet()
    system = _empty_system(22)
    force = as_openmm_force(module, particles=list(range(22)), global_parameters={"lambda_ml": 0.5}, backend="torch", system=system)
    assert type(force).__name__ == "TorchForce"
    system.addForce(force)
    context = _context(system, "CUDA")
    x = _positions(alanine)
    energy, forces = _energy_forces(context, x)
    lam = torch.tensor(0.5, dtype=torch.float64)
    expected_energy, expected_forces = _torch_energy_forces(module, x, lambda_ml=lam)
    assert energy == pytest.approx(expected_energy, rel=1e-4)
    np.testing.assert_allclose(forces, expected_forces, rtol=1e-3, atol=1e-3 * np.abs(expected_forces).max())
    derivative = dict(context.getState(getParameterDerivatives=True).getEnergyParameterDerivatives())["lambda_ml"]
    u_net = _torch_energy_forces(module, x, lambda_ml=torch.tensor(0.0, dtype=torch.float64))[0]
    assert derivative == pytest.approx(2 * 0.5 * u_net, rel=1e-4)
