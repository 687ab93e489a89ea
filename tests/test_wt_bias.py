"""The well-tempered grid bias: torch values and gradients equal the exported OpenMM force, hills, bad input."""

import math

import numpy as np
import openmm
import pytest
import torch

from openmm_flowplugin.diffusion import WellTemperedBias
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.geometry import CartesianComponent, Distance, Torsion

KT300 = 2.494338785445972


def _cartesian_bias(**overrides):
    settings = dict(lower=(-1.0, -0.5), upper=(1.0, 1.5), n_nodes=(41, 41), hill_width=0.15, hill_height=1.5,
                    bias_factor=6.0, temperature=300.0)
    settings.update(overrides)
    return WellTemperedBias([CartesianComponent(0, "x"), CartesianComponent(0, "y")], **settings)


def _torsion_bias():
    return WellTemperedBias([Torsion(0, 1, 2, 3), Torsion(1, 2, 3, 4)], lower=(-math.pi, -math.pi), upper=(math.pi, math.pi),
                            n_nodes=(37, 37), hill_width=0.4, hill_height=2.0, bias_factor=8.0, temperature=300.0, periodic=True)


def _openmm_energy_and_forces(force, n_atoms, positions):
    system = openmm.System()
    for _ in range(n_atoms):
        system.addParticle(1.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for x in positions:
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer))
    return np.array(energies), np.array(forces)


def _torch_energy_and_forces(bias, positions):
    x = torch.tensor(positions, requires_grad=True)
    value = bias(x)
    (gradient,) = torch.autograd.grad(value.sum(), x)
    return value.detach().numpy(), -gradient.numpy()


def _compare(bias, n_atoms, positions):
    energies, forces = _openmm_energy_and_forces(bias.to_openmm_force(), n_atoms, positions)
    value, force = _torch_energy_and_forces(bias, positions)
    return np.abs(value - energies).max(), np.abs(force - forces).max(), np.abs(energies).max()


def test_exported_cartesian_bias_equals_torch_in_value_and_force_inside_and_outside_the_grid():
    rng = np.random.default_rng(0)
    bias = _cartesian_bias()
    bias.deposit(rng.uniform((-0.8, -0.3), (0.8, 1.3), size=(30, 2)))
    positions = np.concatenate([rng.uniform((-1.3, -0.8, -0.1), (1.3, 1.8, 0.1), size=(60, 3))], 0)[:, None, :]
    energy_error, force_error, scale = _compare(bias, 1, positions)
    assert scale > 1.0  # the bias is not trivially zero where we look
    assert energy_error < 1e-9 and force_error < 1e-8
    # control: the same comparison after changing one node of the torch side only fails
    force = bias.to_openmm_force()
    bias.values[20, 20] += 0.5
    bias._coefficients = None
    value, _ = _torch_energy_and_forces(bias, positions)
    energies, _ = _openmm_energy_and_forces(force, 1, positions)
    assert np.abs(value - energies).max() > 1e-3


def test_exported_periodic_torsion_bias_equals_torch_across_the_periodic_boundary():
    rng = np.random.default_rng(1)
    bias = _torsion_bias()
    bias.deposit(rng.uniform(-math.pi, math.pi, size=(40, 2)))
    assert np.array_equal(bias.values[0], bias.values[-1]) and np.array_equal(bias.values[:, 0], bias.values[:, -1])
    positions = rng.normal(scale=0.3, size=(50, 5, 3))
    energy_error, force_error, scale = _compare(bias, 5, positions)
    assert scale > 1.0
    assert energy_error < 1e-9 and force_error < 1e-8


def test_hills_are_well_tempered():
    bias = _cartesian_bias()
    bias.deposit([[0.0, 0.5]])
    assert bias.value_at([[0.0, 0.5]])[0] == pytest.approx(1.5, rel=1e-12)
    bias.deposit([[0.0, 0.5]])
    expected = 1.5 + 1.5 * math.exp(-1.5 / (5.0 * KT300))
    assert bias.value_at([[0.0, 0.5]])[0] == pytest.approx(expected, rel=1e-9)
    one_width = bias.value_at([[0.15, 0.5]])[0]
    assert one_width == pytest.approx(expected * math.exp(-0.5), rel=1e-3)  # Gaussian of the given width (spline error ~1e-4)
    assert bias.n_hills == 2
    f = bias.free_energy_estimate()
    assert f[20, 20] == 0.0 and f.max() == pytest.approx(6.0 / 5.0 * (bias.values.max() - bias.values.min()), rel=1e-12)


def test_state_round_trip_and_refusal_of_other_settings():
    bias = _cartesian_bias()
    bias.deposit([[0.1, 0.2], [0.3, 0.4]])
    copy = _cartesian_bias()
    copy.load_state_dict(bias.state_dict())
    assert np.array_equal(copy.values, bias.values) and copy.n_hills == 2
    with pytest.raises(InvalidInputError, match="other settings.*bias_factor"):
        _cartesian_bias(bias_factor=4.0).load_state_dict(bias.state_dict())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: WellTemperedBias([Torsion(0, 1, 2, 3), Torsion(1, 2, 3, 4)], (-3.2, -3.2), (3.2, 3.2), (65, 65), 0.3, 1.0, 8.0, 300.0),
         "torsion is periodic but the grid is not"),
        (lambda: WellTemperedBias([CartesianComponent(0, "x"), Distance(0, 1)], (-math.pi,) * 2, (math.pi,) * 2, (65, 65), 0.3, 1.0, 8.0, 300.0,
                                  periodic=True), "periodic grid needs periodic CVs"),
        (lambda: _cartesian_bias(n_nodes=(11, 11)), "too coarse for the hill width.*n_nodes=\\(28, 28\\)"),
        (lambda: _cartesian_bias(bias_factor=1.0), "bias_factor must be a finite number > 1"),
        (lambda: _cartesian_bias(bias_factor=float("inf")), "bias_factor must be a finite number > 1"),
        (lambda: _cartesian_bias(n_nodes=(30.9, 30)), "n_nodes must be two integers"),  # not truncated to 30
        (lambda: _cartesian_bias(hill_width=(0.3, 0.3, 0.3)), "hill_width must be one number or one per CV"),
        (lambda: WellTemperedBias([CartesianComponent(0, "x")], (0,), (1,), (11,), 0.3, 1.0, 8.0, 300.0), "exactly two"),
    ],
)
def test_bad_bias_settings_are_refused(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


def test_hills_at_non_finite_cvs_are_refused():
    with pytest.raises(InvalidInputError, match="non-finite"):
        _cartesian_bias().deposit([[float("nan"), 0.0]])


def test_md_under_the_exported_bias_samples_the_torch_bias_target():
    """Langevin MD on U + the exported force (through its XML, as a user loads bias.xml) samples exp(−β[U + V_torch]).

    One particle in a harmonic well with hills deposited off centre; three averages of the MD samples against
    quadrature of the torch bias's target, tolerances from the samples' statistical inefficiency. Control: the same
    samples are far from the unbiased target, so the check sees the bias.
    """
    from pymbar.timeseries import statistical_inefficiency

    spring = 30.0  # kJ/mol/nm²
    bias = _cartesian_bias(lower=(-1.5, -1.5), upper=(1.5, 1.5), n_nodes=(61, 61), hill_width=0.2, hill_height=2.0)
    bias.deposit(np.array([[0.0, 0.0]] * 3 + [[0.3, -0.2]] * 2))
    system = openmm.System()
    system.addParticle(1.0)
    well = openmm.CustomExternalForce(f"0.5*{spring}*(x^2+y^2+z^2)")
    well.addParticle(0, [])
    system.addForce(well)
    system.addForce(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(bias.to_openmm_force())))
    integrator = openmm.LangevinMiddleIntegrator(300.0, 20.0, 0.005)
    integrator.setRandomNumberSeed(7)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions([[0.1, 0.1, 0.0]])
    context.setVelocitiesToTemperature(300.0, 7)
    integrator.step(1000)
    xy = []
    for _ in range(20000):
        integrator.step(20)
        xy.append(context.getState(getPositions=True).getPositions(asNumpy=True)._value[0, :2])
    xy = np.array(xy)
    observables = np.stack([xy[:, 0], xy[:, 0] ** 2 + xy[:, 1] ** 2, (xy ** 2).sum(1) < 0.3 ** 2], 1).astype(float)

    grid = np.linspace(-1.5, 1.5, 301)
    gx, gy = np.meshgrid(grid, grid, indexing="ij")
    grid_observables = np.stack([gx, gx ** 2 + gy ** 2, gx ** 2 + gy ** 2 < 0.3 ** 2], -1).astype(float).reshape(-1, 3)
    harmonic = 0.5 * spring * (gx ** 2 + gy ** 2).ravel()
    v = bias.value_at(np.stack([gx.ravel(), gy.ravel()], 1))

    def exact(potential):
        weights = np.exp(-(potential - potential.min()) / KT300)
        return weights @ grid_observables / weights.sum()

    errors = np.array([observables[:, i].std() * math.sqrt(statistical_inefficiency(observables[:, i]) / len(observables))
                       for i in range(3)])
    z_biased = (observables.mean(0) - exact(harmonic + v)) / errors
    z_unbiased = (observables.mean(0) - exact(harmonic)) / errors
    assert np.abs(z_biased).max() < 4.0, z_biased
    assert np.abs(z_unbiased).max() > 20.0, z_unbiased  # control
