"""TorchANI models as OpenMM forces: whole molecules, ML/MM mixed systems, local weights only."""

import copy
import os

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")  # optional CUDA extensions
pytest.importorskip("torchani", reason="torchani (extra openmm_flowplugin[ani]) is not installed")

from openmm_flowplugin import systems  # noqa: E402
from openmm_flowplugin.forces.ani import (  # noqa: E402
    ANI_DIR_ENV_VAR,
    ANIPotential,
    _build_named,
    ani_force,
    create_mixed_system,
    load_ani_model,
    small_ani_model,
)
from openmm_flowplugin.forces import parameter_derivative  # noqa: E402
from openmm_flowplugin.units import kT  # noqa: E402

RTOL = 1e-5
ML_ATOMS = list(range(10, 22))  # alanine residue and the N-methyl cap (atoms 10-21)


@pytest.fixture(scope="module")
def alanine():
    return systems.get("alanine_dipeptide_vacuum")


@pytest.fixture(scope="module")
def model():
    return small_ani_model(seed=0)


def _context(system):
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))


def _state(context, positions=None, groups=-1):
    if positions is not None:
        context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, getParameterDerivatives=True, groups=groups)
    return (
        state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
        state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
        dict(state.getEnergyParameterDerivatives()),
    )


def _atomic_numbers(topology):
    return [atom.element.atomic_number for atom in topology.atoms()]


def _torch(potential, x):
    xt = torch.tensor(x, requires_grad=True)
    energy = potential(xt)
    (grad,) = torch.autograd.grad(energy, xt)
    return float(energy.detach()), -grad.numpy()


def _internal_mm(system, atoms, x):
    """MM energy and forces of ``atoms`` alone: other atoms' charges, epsilons and bonded terms switched off."""
    system = copy.deepcopy(system)
    ml = set(atoms)
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            for i in range(force.getNumParticles()):
                if i not in ml:
                    q, sigma, _ = force.getParticleParameters(i)
                    force.setParticleParameters(i, 0.0, sigma, 0.0)
            for k in range(force.getNumExceptions()):
                i, j, q, sigma, eps = force.getExceptionParameters(k)
                if not {i, j} <= ml:
                    force.setExceptionParameters(k, i, j, 0.0, sigma, 0.0)
        elif isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, r0, kb = force.getBondParameters(k)
                force.setBondParameters(k, i, j, r0, kb if {i, j} <= ml else 0.0)
        elif isinstance(force, openmm.HarmonicAngleForce):
            for k in range(force.getNumAngles()):
                i, j, m, t0, ka = force.getAngleParameters(k)
                force.setAngleParameters(k, i, j, m, t0, ka if {i, j, m} <= ml else 0.0)
        elif isinstance(force, openmm.PeriodicTorsionForce):
            for k in range(force.getNumTorsions()):
                i, j, m, n, per, phase, kt = force.getTorsionParameters(k)
                force.setTorsionParameters(k, i, j, m, n, per, phase, kt if {i, j, m, n} <= ml else 0.0)
    return _state(_context(system), x)[:2]


def test_named_model_fails_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv(ANI_DIR_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        load_ani_model("ANI-2x")
    message = str(error.value)
    assert str(tmp_path / "ani2x_state_dict.pt") in message and ANI_DIR_ENV_VAR in message and "state_dict=" in message
    with pytest.raises(ValueError, match="unknown ANI model"):
        load_ani_model("ANI-9z")


def test_named_model_from_local_state_dict(tmp_path, alanine):
    architecture = _build_named("ANI-2x")  # random weights standing in for the real file
    path = tmp_path / "ani2x_state_dict.pt"
    torch.save(architecture.state_dict(), path)
    loaded = load_ani_model("ANI-2x", state_dict=path, model_index=0)
    reference = architecture[0].double()
    species = torch.tensor([_atomic_numbers(alanine.topology)])
    x = torch.tensor(np.asarray(alanine.positions.value_in_unit(unit.angstrom)))[None]
    with torch.no_grad():
        assert float(loaded((species, x)).energies) == pytest.approx(float(reference((species, x)).energies), rel=1e-12)


def test_whole_molecule_force_matches_torch(alanine, model):
    system = copy.deepcopy(alanine.system)
    for i in reversed(range(system.getNumForces())):
        system.removeForce(i)
    system.addForce(ani_force(model, alanine.topology))
    x = np.asarray(alanine.positions.value_in_unit(unit.nanometer))
    energy, forces, _ = _state(_context(system), x)
    expected_energy, expected_forces = _torch(ANIPotential(model, _atomic_numbers(alanine.topology)), x)
    assert energy == pytest.approx(expected_energy, rel=RTOL)
    np.testing.assert_allclose(forces, expected_forces, rtol=RTOL, atol=RTOL * np.abs(expected_forces).max())


def test_mixed_system_endpoints_and_derivative(alanine, model):
    x = np.asarray(alanine.positions.value_in_unit(unit.nanometer))
    mm_energy, mm_forces, _ = _state(_context(copy.deepcopy(alanine.system)), x)
    mixed = create_mixed_system(alanine.system, alanine.topology, ML_ATOMS, model, lambda_value=0.0)
    context = _context(mixed)
    # lambda = 0: the original MM system, exactly (NoCutoff).
    energy0, forces0, derivatives = _state(context, x)
    assert energy0 == pytest.approx(mm_energy, rel=RTOL)
    np.testing.assert_allclose(forces0, mm_forces, rtol=RTOL, atol=RTOL * np.abs(mm_forces).max())
    # dU/dlambda = U_ML - U_MM,int, reported natively; energy is linear in lambda.
    potential = ANIPotential(model, [_atomic_numbers(alanine.topology)[i] for i in ML_ATOMS])
    u_ml, _ = _torch(potential, x[ML_ATOMS])
    context.setParameter("lambda_ml", 1.0)
    energy1, forces1, derivatives1 = _state(context)
    assert derivatives["lambda_ml"] == pytest.approx(energy1 - energy0, rel=RTOL)
    assert derivatives1["lambda_ml"] == pytest.approx(energy1 - energy0, rel=RTOL)
    assert parameter_derivative(context, "lambda_ml") == pytest.approx(energy1 - energy0, rel=RTOL)
    # lambda = 1: U_ML + the MM terms that involve at least one non-ML atom.
    context.setParameter("lambda_ml", 0.5)
    energy_half, _, _ = _state(context)
    assert energy_half == pytest.approx(0.5 * (energy0 + energy1), rel=RTOL)
    # Independently: U_MM,int is the original NonbondedForce and bonded terms restricted to the ML atoms.
    u_mm_int, f_mm_int = _internal_mm(alanine.system, ML_ATOMS, x)
    assert energy1 - energy0 == pytest.approx(u_ml - u_mm_int, rel=RTOL)
    # Forces at lambda = 1: MM forces of the rest (all MM forces minus the internal ones) plus the torch ML
    # forces on the ML atoms.
    _, f_ml = _torch(potential, x[ML_ATOMS])
    expected_forces1 = mm_forces - f_mm_int
    expected_forces1[ML_ATOMS] += f_ml
    assert np.abs(expected_forces1 - mm_forces).max() > 1e-2 * np.abs(mm_forces).max()  # control: lambda matters
    np.testing.assert_allclose(forces1, expected_forces1, rtol=RTOL, atol=RTOL * np.abs(mm_forces).max())


def test_mixed_system_serializes_and_composable_state(alanine, model):
    from openmmtools.states import CompoundThermodynamicState, GlobalParameterState, ThermodynamicState

    class MLState(GlobalParameterState):
        lambda_ml = GlobalParameterState.GlobalParameter("lambda_ml", standard_value=1.0)

    mixed = create_mixed_system(alanine.system, alanine.topology, ML_ATOMS, model)
    restored = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(mixed))
    compound = CompoundThermodynamicState(ThermodynamicState(restored, 300 * unit.kelvin), [MLState(lambda_ml=0.25)])
    context = compound.create_context(openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    assert context.getParameter("lambda_ml") == 0.25
    context.setPositions(alanine.positions)
    # U(0.25) = U_MM + 0.25 (U_ML - U_MM,int), from the original MM system and torch, reduced by kT(300 K).
    x = np.asarray(alanine.positions.value_in_unit(unit.nanometer))
    u_mm = _state(_context(copy.deepcopy(alanine.system)), x)[0]
    u_ml = _torch(ANIPotential(model, [_atomic_numbers(alanine.topology)[i] for i in ML_ATOMS]), x[ML_ATOMS])[0]
    u_mm_int = _internal_mm(alanine.system, ML_ATOMS, x)[0]
    beta = 1.0 / kT(300 * unit.kelvin)
    assert compound.reduced_potential(context) == pytest.approx(beta * (u_mm + 0.25 * (u_ml - u_mm_int)), rel=RTOL)


def test_unsupported_force_is_named(alanine, model):
    system = copy.deepcopy(alanine.system)
    system.addForce(openmm.CustomExternalForce("x"))
    with pytest.raises(ValueError, match="CustomExternalForce"):
        create_mixed_system(system, alanine.topology, ML_ATOMS, model)
