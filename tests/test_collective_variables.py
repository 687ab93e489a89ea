"""Collective variables in torch equal OpenMM's: values to 1e-10, autograd gradients equal -forces.

The reference is a ``CustomCVForce`` holding each CV's own ``to_openmm_force()`` on the Reference
platform: ``getCollectiveVariableValues`` for values, the forces of a System whose energy is the CV for
gradients. Every comparison has a control that shows it can fail (a flipped sign, no minimum image,
the naive switching formula, a displaced atom).
"""

import copy
import math
import pickle

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from openmm_flowplugin import systems
from openmm_flowplugin.errors import InvalidInputError, InvalidTypeError
from openmm_flowplugin.geometry import (
    Angle,
    CartesianComponent,
    CoordinationNumber,
    Distance,
    LinearCombination,
    Torsion,
    custom_cv_force,
)

PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)
VALUE_TOL, GRAD_RTOL = 1e-10, 1e-8
KJ_PER_NM = unit.kilojoule_per_mole / unit.nanometer


@pytest.fixture(scope="module")
def ala():
    return systems.get("alanine_dipeptide_vacuum")


@pytest.fixture(scope="module")
def configurations(ala):
    """The starting configuration (phi, psi near +-pi), seeded perturbations, and phi, psi set inside (-pi, pi)."""
    x0 = ala.positions_nm
    rng = np.random.default_rng(13)
    perturbed = [x0 + rng.normal(scale=0.02, size=x0.shape) for _ in range(4)]
    turned = _set_torsion(_set_torsion(x0, PHI, -1.3), PSI, 2.1)
    return np.stack([x0, *perturbed, turned])


def _torsion_numpy(x, atoms):
    return Torsion(*atoms)(torch.as_tensor(x[None])).item()


def _set_torsion(x, atoms, target):
    """Copy of ``x`` with the last atom of ``atoms`` rotated about the b-c bond so the torsion is ``target``."""
    _, b, c, d = atoms
    axis = (x[c] - x[b]) / np.linalg.norm(x[c] - x[b])
    angle = target - _torsion_numpy(x, atoms)  # rotating d by +angle about b->c adds angle to the torsion
    v = x[d] - x[c]
    y = x.copy()
    y[d] = x[c] + v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))
    return y


def _openmm(cv, positions, boxes=None):
    """OpenMM's CV values (n,) and forces (n, n_atoms, 3) for each configuration (and box lengths)."""
    system = openmm.System()
    for _ in range(positions.shape[1]):
        system.addParticle(1.0)
    force = custom_cv_force("cv", cv=cv)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    values, forces = [], []
    for k, x in enumerate(positions):
        if boxes is not None:
            context.setPeriodicBoxVectors(*np.diag(boxes[k]))
        context.setPositions(x)
        values.append(force.getCollectiveVariableValues(context)[0])
        forces.append(context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ_PER_NM))
    return np.asarray(values), np.asarray(forces)


def _torch(cv, positions, dtype=torch.float64, **kwargs):
    x = torch.tensor(positions, dtype=dtype, requires_grad=True)
    values = cv(x, **kwargs)
    (gradient,) = torch.autograd.grad(values.sum(), x)
    return values.detach().double().numpy(), gradient.double().numpy()


def _angle_error(a, b):
    """|a - b| modulo 2 pi (torsions near +-pi are equal across the cut)."""
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


def _errors(values, gradient, reference_values, reference_forces, periodic_values=False):
    value_error = _angle_error(values, reference_values) if periodic_values else np.abs(values - reference_values)
    scale = max(np.abs(reference_forces).max(), 1.0)
    return value_error.max(), np.abs(gradient + reference_forces).max() / scale


CVS = {
    "phi": (lambda: Torsion(*PHI), True),
    "psi": (lambda: Torsion(*PSI), True),
    "angle": (lambda: Angle(4, 6, 8), False),
    "distance": (lambda: Distance(4, 14), False),
    "cartesian_z": (lambda: CartesianComponent(3, "z"), False),
    "coordination": (lambda: CoordinationNumber([5, 7, 11, 15], [0, 1, 2, 3, 9, 10, 17], r0=0.3 * unit.nanometer), False),
    "phi_minus_half_psi": (lambda: LinearCombination([Torsion(*PHI), Torsion(*PSI)], [1.0, -0.5], offset=0.3), True),
}


@pytest.mark.parametrize("name", list(CVS))
def test_values_and_gradients_equal_openmm(name, configurations):
    make, periodic_values = CVS[name]
    cv = make()
    values, gradient = _torch(cv, configurations)  # one batched call
    reference_values, reference_forces = _openmm(cv, configurations)
    value_error, gradient_error = _errors(values, gradient, reference_values, reference_forces, periodic_values)
    assert value_error < VALUE_TOL and gradient_error < GRAD_RTOL, (value_error, gradient_error)
    # Controls: forces with the wrong sign, or one atom moved by 1e-4 nm, fail the same comparison.
    assert _errors(values, -gradient, reference_values, reference_forces, periodic_values)[1] > 1e-3
    moved = configurations.copy()
    moved[:, cv.atoms[-1]] += 1e-4
    moved_values, moved_gradient = _torch(cv, moved)
    assert _errors(moved_values, moved_gradient, reference_values, reference_forces, periodic_values)[0] > 1e-6


def test_torsion_sign_convention_is_openmms(configurations):
    turned = configurations[-1:]  # phi = -1.3, psi = 2.1: far from 0 and pi, where a flipped sign shows
    for atoms, target in ((PHI, -1.3), (PSI, 2.1)):
        values, _ = _torch(Torsion(*atoms), turned)
        reference, _ = _openmm(Torsion(*atoms), turned)
        assert _angle_error(values, reference).max() < VALUE_TOL and abs(values[0] - target) < 1e-10
        assert _angle_error(-values, reference).max() > 1.0  # control: the opposite convention


@pytest.mark.parametrize("target", [math.pi, math.pi - 1e-9, -math.pi + 1e-9, math.pi - 1e-3, -math.pi + 1e-3])
def test_torsion_wraps_around_pi(target, ala):
    x = _set_torsion(ala.positions_nm, PHI, target)[None]
    values, gradient = _torch(Torsion(*PHI), x)
    reference_values, reference_forces = _openmm(Torsion(*PHI), x)
    assert -math.pi < values[0] <= math.pi
    assert _angle_error(values, target).max() < 1e-9  # the construction did what it says
    value_error, gradient_error = _errors(values, gradient, reference_values, reference_forces, periodic_values=True)
    assert value_error < VALUE_TOL and gradient_error < GRAD_RTOL
    assert _errors(values + 1e-6, gradient, reference_values, reference_forces, True)[0] > VALUE_TOL  # control


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torsion_within_rounding_of_minus_pi_is_reported_as_pi(dtype):
    # atan2(-1e-20, -1) rounds to -pi; the CV returns pi, the one representative in (-pi, pi].
    for z in (1e-20, -1e-20):
        x = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 1.0, z]]], dtype=dtype)
        value = Torsion(0, 1, 2, 3)(x)
        assert value.item() == torch.tensor(math.pi, dtype=dtype).item() and value.dtype == dtype
    raw = torch.atan2(torch.tensor(-1e-20, dtype=dtype), torch.tensor(-1.0, dtype=dtype))  # control: atan2 alone
    assert raw.item() == -torch.tensor(math.pi, dtype=dtype).item()


def _naive_switch(q, n=6, m=12):
    return (1 - q**n) / (1 - q**m)


def test_coordination_number_exact_at_r0():
    r0, n, m = 0.25, 6, 12
    x = np.array([[[0.0, 0.0, 0.0], [r0, 0.0, 0.0], [0.1, 0.55, -0.2]]])
    cv = CoordinationNumber([0], [1, 2], r0=r0, n=n, m=m)
    values, gradient = _torch(cv, x)
    r02 = np.linalg.norm(x[0, 2])
    expected = n / m + _naive_switch(r02 / r0)
    assert np.all(np.isfinite(gradient)) and abs(values[0] - expected) < 1e-14
    # ds/dr at r0 is n (n - m) / (2 m r0): -6 nm^-1 on atom 1 along x.
    assert abs(gradient[0, 1, 0] - n * (n - m) / (2 * m * r0)) < 1e-12
    reference_values, reference_forces = _openmm(cv, x)
    value_error, gradient_error = _errors(values, gradient, reference_values, reference_forces)
    assert value_error < VALUE_TOL and gradient_error < GRAD_RTOL
    # Central differences agree with autograd at r = r0.
    h, numerical = 1e-6, np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numerical[index] = (_torch(cv, up)[0][0] - _torch(cv, down)[0][0]) / (2 * h)
    assert np.abs(numerical - gradient).max() < 1e-7
    assert np.abs(numerical + gradient).max() > 1.0  # control: a gradient of the wrong sign
    with np.errstate(invalid="ignore", divide="ignore"):  # control: the naive formula is 0/0 at r0
        assert np.isnan(_naive_switch(np.float64(1.0)))


def test_coordination_number_near_r0_matches_taylor_series():
    r0, n, m = 0.25, 6, 12
    # s(1 + t) = c0 + c1 t + c2 t^2 + O(t^3), from the quotient of the Taylor series of 1 - q^n and 1 - q^m.
    a = [n, n * (n - 1) / 2, n * (n - 1) * (n - 2) / 6]
    b = [m, m * (m - 1) / 2, m * (m - 1) * (m - 2) / 6]
    c0 = a[0] / b[0]
    c1 = (a[1] - c0 * b[1]) / b[0]
    c2 = (a[2] - c0 * b[2] - c1 * b[1]) / b[0]
    assert c0 == 0.5 and c1 == n * (n - m) / (2 * m)
    cv = CoordinationNumber([0], [1], r0=r0, n=n, m=m)
    for offset in (1e-12, -1e-9, 1e-7, -1e-5):
        x = torch.tensor([[[0.0, 0.0, 0.0], [(1.0 + offset) * r0, 0.0, 0.0]]], dtype=torch.float64)
        q = x[0, 1, 0].item() / r0  # q as the CV computes it
        t = q - 1.0
        taylor = c0 + c1 * t + c2 * t**2
        assert abs(cv(x).item() - taylor) < 1e-12, offset
        if abs(offset) <= 1e-9:  # control: the naive formula cancels catastrophically this close to r0
            assert abs(_naive_switch(q) - taylor) > 1e-12


def test_periodic_distance_across_the_box():
    box = np.array([2.0, 2.5, 3.0])
    x = np.array(
        [
            [[0.1, 0.2, 2.9], [1.95, 2.4, 0.05], [1.0, 1.0, 1.0]],  # neighbours across three faces
            [[0.1, 0.2, 2.9], [1.95 + 2 * 2.0, 2.4 - 2.5, 0.05 + 3.0], [1.0, 1.0, 1.0]],  # images far outside
        ]
    )
    boxes = np.stack([box, box])
    cv = Distance(0, 1, periodic=True, box=box)
    values, gradient = _torch(cv, x)
    reference_values, reference_forces = _openmm(cv, x, boxes)
    expected = np.linalg.norm([0.15, 0.3, 0.15])
    assert np.abs(values - expected).max() < 1e-12
    value_error, gradient_error = _errors(values, gradient, reference_values, reference_forces)
    assert value_error < VALUE_TOL and gradient_error < GRAD_RTOL
    plain_values, plain_gradient = _torch(Distance(0, 1), x)  # control: no minimum image
    assert _errors(plain_values, plain_gradient, reference_values, reference_forces)[0] > 1.0
    # A box at call time (per sample, as a Quantity) overrides the one given at construction.
    other = np.array([[2.0, 2.5, 3.0], [2.2, 2.5, 3.0]])
    called, _ = _torch(cv, x, box=torch.tensor(other))
    reference_called, _ = _openmm(cv, x, other)
    assert np.abs(called - reference_called).max() < VALUE_TOL
    quantity, _ = _torch(Distance(0, 1, periodic=True), x, box=(other * 10.0) * unit.angstrom)
    assert np.abs(quantity - reference_called).max() < VALUE_TOL
    assert np.abs(called[1] - values[1]) > 1e-3  # control: the second box really differs


def test_periodic_coordination_number():
    box = np.array([1.5, 1.5, 1.5])
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.5, 2.0, size=(3, 6, 3))
    cv = CoordinationNumber([0, 1], [2, 3, 4, 5], r0=0.4, n=4, m=10, periodic=True, box=box)
    values, gradient = _torch(cv, x)
    reference_values, reference_forces = _openmm(cv, x, np.stack([box] * 3))
    value_error, gradient_error = _errors(values, gradient, reference_values, reference_forces)
    assert value_error < VALUE_TOL and gradient_error < GRAD_RTOL
    plain = CoordinationNumber([0, 1], [2, 3, 4, 5], r0=0.4, n=4, m=10)  # control: no minimum image
    assert _errors(*_torch(plain, x), reference_values, reference_forces)[0] > 1e-3


def test_linear_combination_and_custom_cv_force(configurations):
    phi, psi = Torsion(*PHI), Torsion(*PSI)
    combination = LinearCombination([phi, psi], [2.0, -1.0], offset=0.25)
    x = torch.tensor(configurations)
    assert torch.equal(combination(x), 2.0 * phi(x) - psi(x) + 0.25)
    # The same sum as a bias expression in OpenMM: energy of custom_cv_force equals the torch value.
    system = openmm.System()
    for _ in range(x.shape[1]):
        system.addParticle(1.0)
    system.addForce(custom_cv_force("2*phi - psi + 0.25", phi=phi, psi=psi.to_openmm_force()))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies = []
    for positions in configurations:
        context.setPositions(positions)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert np.abs(combination(x).numpy() - np.asarray(energies)).max() < VALUE_TOL
    swapped = LinearCombination([phi, psi], [-1.0, 2.0], offset=0.25)  # control
    assert np.abs(swapped(x).numpy() - np.asarray(energies)).max() > 1e-3


def test_batched_float32_quantity_and_numpy_inputs(configurations):
    cv = Torsion(*PSI)
    x64 = torch.tensor(configurations)
    batched = cv(x64)
    singles = torch.cat([cv(x64[k : k + 1]) for k in range(len(x64))])
    assert batched.shape == (len(x64),) and torch.equal(batched, singles)
    values32, gradient32 = _torch(cv, configurations, dtype=torch.float32)
    values64, gradient64 = _torch(cv, configurations)
    assert cv(x64.float()).dtype == torch.float32
    assert _angle_error(values32, values64).max() < 1e-5
    assert np.abs(gradient32 - gradient64).max() < 1e-4 * np.abs(gradient64).max()
    moved = configurations.copy()
    moved[:, PSI[-1]] += 1e-3  # control: a 1e-3 nm displacement is caught at the float32 tolerance
    assert _angle_error(_torch(cv, moved, dtype=torch.float32)[0], values64).max() > 1e-5
    in_angstrom = unit.Quantity(torch.tensor(configurations * 10.0), unit.angstrom)
    assert torch.allclose(cv(in_angstrom), batched, atol=1e-12, rtol=0)
    assert torch.equal(cv(configurations), batched)  # numpy float64 arrays are accepted


def test_modules_copy_and_pickle():
    cv = LinearCombination([CoordinationNumber([0, 1], [2], r0=0.3), Distance(0, 2, periodic=True, box=(1.0, 1.0, 1.0))], [1.0, 2.0])
    x = torch.rand(4, 3, 3, dtype=torch.float64)
    for other in (copy.deepcopy(cv), pickle.loads(pickle.dumps(cv))):
        assert torch.equal(other(x), cv(x))
    moved = x.clone()
    moved[:, 0] += 0.01
    assert not torch.equal(cv(moved), cv(x))  # control (a translation of all atoms would not change the CVs)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Torsion(4, 6, 6, 14), InvalidInputError, "distinct"),
        (lambda: Torsion(4, 6, 8, -1), InvalidInputError, ">= 0"),
        (lambda: Torsion(4, 6, 8, 14.0), InvalidTypeError, "integers"),
        (lambda: Angle(1, 1, 2), InvalidInputError, "distinct"),
        (lambda: Distance(0, 1, box=(1.0, 1.0, 1.0)), InvalidInputError, "periodic=True"),
        (lambda: Distance(0, 1, periodic=True, box=(1.0, 0.0, 1.0)), InvalidInputError, "> 0"),
        (lambda: Distance(0, 1, periodic=True, box=(1.0, 1.0)), InvalidInputError, "shape"),
        (lambda: CoordinationNumber([0], [1], r0=0.0), InvalidInputError, "r0"),
        (lambda: CoordinationNumber([0], [1], r0=-0.3), InvalidInputError, "r0"),
        (lambda: CoordinationNumber([0], [1], r0=0.3 * unit.kelvin), InvalidTypeError, "r0"),
        (lambda: CoordinationNumber([0], [1], r0=0.3, n=12, m=6), InvalidInputError, "0 < n < m"),
        (lambda: CoordinationNumber([0], [1], r0=0.3, n=6.0), InvalidTypeError, "integer"),
        (lambda: CoordinationNumber([0], [0], r0=0.3), InvalidInputError, "no pair"),
        (lambda: CartesianComponent(0, "w"), InvalidInputError, "axis"),
        (lambda: LinearCombination([Torsion(*PHI)], [1.0, 2.0]), InvalidInputError, "one coefficient per CV"),
        (lambda: LinearCombination([Torsion(*PHI)], [float("nan")]), InvalidInputError, "finite"),
        (lambda: LinearCombination(["phi"], [1.0]), InvalidTypeError, "CollectiveVariable"),
        (lambda: custom_cv_force("phi", phi="4-6-8-14"), InvalidTypeError, "CollectiveVariable"),
        (lambda: custom_cv_force("", phi=Torsion(*PHI)), InvalidInputError, "expression"),
    ],
)
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_call_input(ala):
    x = torch.tensor(ala.positions_nm[None])
    with pytest.raises(InvalidInputError, match="atom 30 but x has only 22 atoms"):
        Torsion(4, 6, 8, 30)(x)
    with pytest.raises(InvalidInputError, match=r"x\[None\]"):
        Torsion(*PHI)(x[0])
    with pytest.raises(InvalidInputError, match=r"\(batch, n_atoms, 3\)"):
        Distance(0, 1)(torch.zeros(1, 22, 4, dtype=torch.float64))
    with pytest.raises(InvalidTypeError, match="dtype"):
        Distance(0, 1)(torch.zeros(1, 22, 3, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="not periodic"):
        Distance(0, 1)(x, box=(2.0, 2.0, 2.0))
    with pytest.raises(InvalidInputError, match="no box"):
        Distance(0, 1, periodic=True)(x)
    with pytest.raises(InvalidInputError, match="batch of 1"):
        Distance(0, 1, periodic=True)(x, box=torch.ones(2, 3, dtype=torch.float64))
    assert Torsion(*PHI)(x).shape == (1,)  # control: the same input, well formed, passes
