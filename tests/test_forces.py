"""Learned potentials as OpenMM forces: exactness against torch, contracts, round trips."""

import copy
import importlib
import pickle
import subprocess
import sys
import textwrap

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


class UnpicklableState(torch.nn.Module):
    """Pickles, but its bytes do not unpickle (a broken ``__setstate__``)."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.sum()

    def __setstate__(self, state):
        raise RuntimeError("this module cannot be restored")


def _foreign_computation(state):
    """A PythonForce callable not made by as_openmm_force: U = lambda_ml * x_0 (kJ/mol, nm)."""
    lam = state.getParameters()["lambda_ml"]
    x = state.getPositions(asNumpy=True)._value
    forces = np.zeros_like(x)
    forces[0, 0] = -lam
    return lam * x[0, 0], forces


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

    module = PairNet()
    system = copy.deepcopy(alanine.system)
    system.addForce(as_openmm_force(module, global_parameters={"lambda_ml": 1.0}, backend="python"))
    thermodynamic_state = ThermodynamicState(system, 300 * unit.kelvin)  # hashes the System through XML
    compound = CompoundThermodynamicState(thermodynamic_state, [MLState(lambda_ml=1.0)])
    context = compound.create_context(openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(alanine.positions)
    u1 = compound.reduced_potential(context)
    compound.lambda_ml = 0.0
    compound.apply_to_context(context)
    assert context.getParameter("lambda_ml") == 0.0
    # U(lambda) = U_MM + (1 + lambda^2) u_net, u_net the module at lambda = 0; reduced by kT(300 K).
    u_mm = _energy_forces(_context(copy.deepcopy(alanine.system)), _positions(alanine))[0]
    u_net = _torch_energy_forces(module, _positions(alanine), lambda_ml=torch.tensor(0.0, dtype=torch.float64))[0]
    beta = 1.0 / kT(300 * unit.kelvin)
    assert u1 == pytest.approx(beta * (u_mm + 2.0 * u_net), rel=RTOL)
    assert compound.reduced_potential(context) == pytest.approx(beta * (u_mm + u_net), rel=RTOL)


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
    restored = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    assert _energy_forces(_context(restored), x)[0] == pytest.approx(energy, rel=1e-12)


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
    # Bytes that would not unpickle are refused at creation (deserializing them crashes OpenMM 8.6).
    with pytest.raises(ValueError, match="pickles, but its bytes do not unpickle.*cannot be restored"):
        as_openmm_force(UnpicklableState(), backend="python")
    system = _empty_system(1)
    system.addForce(as_openmm_force(HarmonicRestraint([[0.0] * 3]), global_parameters={"k": 1.0}, backend="python"))
    context = _context(system)
    with pytest.raises(ValueError, match="undeclared must be one of"):
        parameter_derivative(context, "k", undeclared="ignore")
    with pytest.raises(ValueError, match="step must be a positive finite number"):
        parameter_derivative(context, "k", undeclared="finite_difference", step=0.0)


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


# --- One semantics: every copy of the force, and dU/dlambda, use the module as it was at creation ---


@pytest.mark.parametrize("with_parameter", [False, True], ids=["plain", "global_parameter"])
def test_force_evaluates_snapshot_taken_at_creation(alanine, with_parameter):
    """In-place weight changes after creation change neither the Context's energy nor dU/dlambda.

    Without the snapshot, a top-level PythonForce (no parameters) evaluated the live module while the
    CustomCVForce copy (parameters) kept the pickled weights, and parameter_derivative followed the
    live module in both cases.
    """
    module = PairNet() if with_parameter else PlainNet()
    original = copy.deepcopy(module)
    lam = {"lambda_ml": torch.tensor(0.5, dtype=torch.float64)} if with_parameter else {}
    system = _empty_system(22)
    system.addForce(as_openmm_force(module, global_parameters={name: 0.5 for name in lam}, backend="python"))
    x = _positions(alanine)
    expected_energy, expected_forces = _torch_energy_forces(original, x, **lam)

    def scale_weights(factor):
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.mul_(factor)
        changed = _torch_energy_forces(module, x, **lam)[0]
        assert abs(changed - expected_energy) > 1e-2 * abs(expected_energy)  # control: the module did change

    scale_weights(3.0)  # before the Context exists
    context = _context(system)
    for factor in (None, 0.5):  # and again while it exists
        if factor is not None:
            scale_weights(factor)
        energy, forces = _energy_forces(context, x)
        assert energy == pytest.approx(expected_energy, rel=RTOL)
        np.testing.assert_allclose(forces, expected_forces, rtol=RTOL, atol=RTOL * np.abs(expected_forces).max())
        if with_parameter:
            u_net = _torch_energy_forces(original, x, lambda_ml=torch.tensor(0.0, dtype=torch.float64))[0]
            assert parameter_derivative(context, "lambda_ml") == pytest.approx(2 * 0.5 * u_net, rel=RTOL)
    # New weights need a new force.
    fresh = _empty_system(22)
    fresh.addForce(as_openmm_force(module, global_parameters={name: 0.5 for name in lam}, backend="python"))
    assert _energy_forces(_context(fresh), x)[0] == pytest.approx(_torch_energy_forces(module, x, **lam)[0], rel=RTOL)


# --- dU/dlambda is complete or refused: OpenMM reports 0 for parameters a force does not declare ---


def _learned_lambda_context(alanine, extra_forces, lam=0.6):
    """PairNet (lambda_ml) on alanine positions plus ``extra_forces``; returns (context, d(learned)/dlambda)."""
    module = PairNet()
    system = _empty_system(22)
    system.addForce(as_openmm_force(module, global_parameters={"lambda_ml": 1.0}, backend="python"))
    for force in extra_forces:
        system.addForce(force)
    context = _context(system)
    context.setPositions(_positions(alanine))
    context.setParameter("lambda_ml", lam)
    u_net = _torch_energy_forces(module, _positions(alanine), lambda_ml=torch.tensor(0.0, dtype=torch.float64))[0]
    return context, 2 * lam * u_net


def _reported_derivative(context, name):
    return dict(context.getState(getParameterDerivatives=True).getEnergyParameterDerivatives())[name]


def test_undeclared_derivative_is_refused_or_finite_differenced(alanine):
    external = openmm.CustomExternalForce("lambda_ml^3 * (x + 1)")  # cannot declare derivatives in OpenMM 8.6
    external.addGlobalParameter("lambda_ml", 1.0)
    external.addParticle(0, [])
    context, learned = _learned_lambda_context(alanine, [external])
    expected = learned + 3 * 0.6**2 * (_positions(alanine)[0, 0] + 1)
    assert abs(expected - learned) > 1e-2 * abs(expected)  # control: the external force's share matters
    assert _reported_derivative(context, "lambda_ml") == 0.0  # what OpenMM gives for it
    with pytest.raises(ValueError, match=r"force 1 \(CustomExternalForce named 'CustomExternalForce'\) uses 'lambda_ml', "
                       r"but a CustomExternalForce cannot declare parameter derivatives.*undeclared='finite_difference'"):
        parameter_derivative(context, "lambda_ml")
    # Central difference, step 1e-4, float64 Reference: truncation ~1e-8 * d3U/dlambda3, rounding ~1e-12 |U|.
    assert parameter_derivative(context, "lambda_ml", undeclared="finite_difference") == pytest.approx(expected, rel=1e-7)
    assert context.getParameter("lambda_ml") == 0.6  # restored


def test_declared_derivative_takes_the_exact_path(alanine):
    compound = openmm.CustomCompoundBondForce(1, "lambda_ml^3 * (x1 + 1)")
    compound.addGlobalParameter("lambda_ml", 1.0)
    compound.addEnergyParameterDerivative("lambda_ml")
    compound.addBond([0], [])
    context, learned = _learned_lambda_context(alanine, [compound])
    expected = learned + 3 * 0.6**2 * (_positions(alanine)[0, 0] + 1)
    exact = parameter_derivative(context, "lambda_ml")
    assert exact == pytest.approx(expected, rel=1e-11)  # a finite difference would be off by ~1e-8 (d3U/dlambda3 != 0)
    assert parameter_derivative(context, "lambda_ml", undeclared="finite_difference") == exact


def test_nonbonded_parameter_offsets_are_refused():
    """OpenMM 8.6 reports dU/dlambda = 0 for a NonbondedForce parameter offset."""
    system = _empty_system(2)
    nonbonded = openmm.NonbondedForce()  # NoCutoff: plain Coulomb
    nonbonded.addParticle(1.0, 0.3, 0.0)
    nonbonded.addParticle(-1.0, 0.3, 0.0)
    nonbonded.addGlobalParameter("lambda_electrostatics", 0.5)
    nonbonded.addParticleParameterOffset("lambda_electrostatics", 0, 1.0, 0.0, 0.0)  # q0 = 1 + lambda
    system.addForce(nonbonded)
    context = _context(system)
    context.setPositions([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    assert _reported_derivative(context, "lambda_electrostatics") == 0.0
    with pytest.raises(ValueError, match=r"force 0 \(NonbondedForce .* cannot declare parameter derivatives"):
        parameter_derivative(context, "lambda_electrostatics")
    coulomb = 138.935456 * (-1.0) / 0.5  # dU/dq0 = q1 / (4 pi eps0 r), kJ/mol per e
    derivative = parameter_derivative(context, "lambda_electrostatics", undeclared="finite_difference")
    assert derivative == pytest.approx(coulomb, rel=1e-6)


@pytest.mark.parametrize(
    "outer_declares, inner_declares, error",
    [
        (False, True, r"force 0 \(CustomCVForce .* holds forces that use 'lambda_ml' but does not declare it"),
        (True, False, r"> inner force 0 \(CustomBondForce .* uses 'lambda_ml' without declaring it: call "
                      r"force.addEnergyParameterDerivative\('lambda_ml'\)"),
        (True, True, None),
    ],
)
def test_custom_cv_force_reports_derivatives_only_when_declared_throughout(outer_declares, inner_declares, error):
    """U = 3 lambda u with u = lambda r (outer_declares) or U = 3 u: dU/dlambda = 6 lambda r or 3 r."""
    lam, r = 0.7, 0.5
    bond = openmm.CustomBondForce("lambda_ml * r")
    bond.addGlobalParameter("lambda_ml", 1.0)
    bond.addBond(0, 1, [])
    if inner_declares:
        bond.addEnergyParameterDerivative("lambda_ml")
    cv = openmm.CustomCVForce("3 * u * lambda_ml" if outer_declares else "3 * u")
    cv.addCollectiveVariable("u", bond)
    if outer_declares:
        cv.addGlobalParameter("lambda_ml", 1.0)
        cv.addEnergyParameterDerivative("lambda_ml")
    system = _empty_system(2)
    system.addForce(cv)
    context = _context(system)
    context.setPositions([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
    context.setParameter("lambda_ml", lam)
    expected = 6 * lam * r if outer_declares else 3 * r
    if error is None:
        assert parameter_derivative(context, "lambda_ml") == pytest.approx(expected, rel=1e-12)
    else:
        assert _reported_derivative(context, "lambda_ml") != pytest.approx(expected)  # OpenMM's sum is short
        with pytest.raises(ValueError, match=error):
            parameter_derivative(context, "lambda_ml")
        assert parameter_derivative(context, "lambda_ml", undeclared="finite_difference") == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("layout", ["scaled_wrapper", "two_collective_variables"])
def test_learned_force_nested_in_a_larger_custom_cv_force_is_refused(alanine, layout):
    """Such a PythonForce used to contribute nothing to dU/dlambda, silently."""
    module = PairNet()
    wrapper = as_openmm_force(module, global_parameters={"lambda_ml": 1.0}, backend="python")
    if layout == "scaled_wrapper":
        wrapper.setEnergyFunction("2*u")
        force, factor = wrapper, 2.0
    else:
        force, factor = openmm.CustomCVForce("u + v"), 1.0
        force.addGlobalParameter("lambda_ml", 1.0)
        force.addCollectiveVariable("u", copy.deepcopy(wrapper.getCollectiveVariable(0)))
        bond = openmm.CustomBondForce("r")
        bond.addBond(0, 1, [])
        force.addCollectiveVariable("v", bond)
    system = _empty_system(22)
    system.addForce(force)
    context = _context(system)
    context.setPositions(_positions(alanine))
    context.setParameter("lambda_ml", 0.6)
    with pytest.raises(ValueError, match=r"force 0 \(CustomCVForce .*\) > inner force 0 \(PythonForce named "
                       r"'TorchComputation-[0-9a-f]+'\) is a PythonForce inside a CustomCVForce"):
        parameter_derivative(context, "lambda_ml")
    u_net = _torch_energy_forces(module, _positions(alanine), lambda_ml=torch.tensor(0.0, dtype=torch.float64))[0]
    derivative = parameter_derivative(context, "lambda_ml", undeclared="finite_difference")
    assert derivative == pytest.approx(factor * 2 * 0.6 * u_net, rel=1e-7)


def test_foreign_python_force_is_refused_only_if_it_takes_the_parameter(alanine):
    context, learned = _learned_lambda_context(alanine, [openmm.PythonForce(_foreign_computation, {})])
    assert parameter_derivative(context, "lambda_ml") == pytest.approx(learned, rel=1e-12)  # not ours, no lambda: skipped
    context, learned = _learned_lambda_context(alanine, [openmm.PythonForce(_foreign_computation, {"lambda_ml": 1.0})])
    with pytest.raises(ValueError, match=r"force 1 \(PythonForce .* not made by as_openmm_force"):
        parameter_derivative(context, "lambda_ml")
    expected = learned + _positions(alanine)[0, 0]
    assert parameter_derivative(context, "lambda_ml", undeclared="finite_difference") == pytest.approx(expected, rel=1e-7)


def test_openmmtools_alchemical_lambdas_need_declared_derivatives(alanine):
    alchemy = pytest.importorskip("openmmtools.alchemy")
    region = alchemy.AlchemicalRegion(alchemical_atoms=list(range(10, 22)))
    system = alchemy.AbsoluteAlchemicalFactory().create_alchemical_system(alanine.system, region)

    def context_at(lam):
        context = _context(system)
        context.setPositions(alanine.positions)
        context.setParameter("lambda_sterics", lam)
        return context

    with pytest.raises(ValueError, match=r"CustomNonbondedForce named .* uses 'lambda_sterics' without declaring it"):
        parameter_derivative(context_at(0.5), "lambda_sterics")
    finite = parameter_derivative(context_at(0.5), "lambda_sterics", undeclared="finite_difference")
    for force in system.getForces():
        if hasattr(force, "getNumGlobalParameters") and "lambda_sterics" in [
            force.getGlobalParameterName(i) for i in range(force.getNumGlobalParameters())
        ]:
            force.addEnergyParameterDerivative("lambda_sterics")
    exact = parameter_derivative(context_at(0.5), "lambda_sterics")
    assert abs(exact) > 1.0  # kJ/mol: a derivative worth checking
    assert finite == pytest.approx(exact, rel=1e-6)


# --- A force whose module cannot be loaded fails clearly instead of crashing the process ---


def test_missing_module_class_fails_clearly_in_a_fresh_process(tmp_path, monkeypatch):
    """Deserializing such a System used to crash OpenMM (segmentation fault in XmlSerializer.deserialize)."""
    name = "flowplugin_vanishing_energy"
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    (source_dir / f"{name}.py").write_text(textwrap.dedent("""
        import torch

        class Vanishing(torch.nn.Module):
            def forward(self, positions, lambda_ml=None):
                scale = 1.0 if lambda_ml is None else lambda_ml
                return scale * (positions ** 2).sum()
    """))
    monkeypatch.syspath_prepend(str(source_dir))
    try:
        vanishing = importlib.import_module(name)
        system = _empty_system(2)
        system.addForce(as_openmm_force(vanishing.Vanishing(), backend="python"))
        system.addForce(as_openmm_force(vanishing.Vanishing(), global_parameters={"lambda_ml": 1.0}, backend="python"))
    finally:
        sys.modules.pop(name, None)
    (tmp_path / "system.xml").write_text(openmm.XmlSerializer.serialize(system))
    code = """
        import openmm
        system = openmm.XmlSerializer.deserialize(open("system.xml").read())
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0]])
        try:
            context.getState(getEnergy=True)
        except openmm.OpenMMException as error:
            print("RESULT energy", " ".join(str(error).split()))
        from openmm_flowplugin.forces import parameter_derivative
        try:
            parameter_derivative(context, "lambda_ml")
        except ValueError as error:
            print("RESULT derivative", " ".join(str(error).split()))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 2, result.stdout
    for line, kind in zip(lines, ("energy", "derivative")):
        assert line.startswith(f"RESULT {kind}")
        assert f"No module named '{name}'" in line and "could not be loaded" in line
    assert "force 1 (CustomCVForce" in lines[1]
