"""Internal coordinates: round trips, torsion convention and the exact Jacobian."""

import math

import mdtraj
import numpy as np
import pytest
import torch

from openmm_flowplugin import systems
from openmm_flowplugin.geometry.internal import InternalCoordinates, InternalCoordinateTransform, dihedral


@pytest.fixture(scope="module")
def ala2():
    return systems.get("alanine_dipeptide_vacuum")


@pytest.fixture(scope="module")
def transform(ala2):
    return InternalCoordinateTransform.from_topology(ala2.topology)


def _random_rotations(n, generator):
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        (
            torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)), -1),
            torch.stack((2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)), -1),
            torch.stack((2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)), -1),
        ),
        -2,
    )


def _configurations(ala2, n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(ala2.positions_nm) + 0.01 * torch.randn(n, 22, 3, generator=generator, dtype=torch.float64)
    return x @ _random_rotations(n, generator).transpose(1, 2) + 3.0 * torch.randn(n, 1, 3, generator=generator, dtype=torch.float64)


def test_dimensions(transform):
    assert (transform.n_bonds, transform.n_angles, transform.n_torsions) == (21, 20, 19)
    assert transform.dim == 3 * 22 - 6
    assert len(set(transform.zmatrix[:, 0]) | set(transform.roots)) == 22


def test_float32_round_trip_within_1e_6_nm(ala2, transform):
    x = _configurations(ala2).float()
    ic, origin, rotation = transform.to_internal(x)
    assert ic.bonds.dtype == torch.float32
    back = transform.to_cartesian(ic, origin, rotation)
    # Computed in float64 inside: measured max error 1.2e-7 nm (float32 rounding of the output) over 6 seeds;
    # tolerance 1e-6 nm (~10x).
    assert (back - x).abs().max().item() <= 1e-6


def test_torsions_match_mdtraj(ala2):
    x = _configurations(ala2, 8)
    trajectory = mdtraj.Trajectory(x.numpy(), ala2.mdtraj_topology)
    indices, phi = mdtraj.compute_phi(trajectory)
    ours = dihedral(*(x[:, i] for i in indices[0]))
    np.testing.assert_allclose(ours.numpy(), phi[:, 0], atol=1e-5)


def test_internal_coordinates_are_invariant_to_rigid_motion(ala2, transform):
    x = _configurations(ala2, 4)
    generator = torch.Generator().manual_seed(5)
    moved = x @ _random_rotations(4, generator).transpose(1, 2) + 1.0
    for a, b in zip(transform.to_internal(x)[0], transform.to_internal(moved)[0]):
        torch.testing.assert_close(a, b)


def _rotation_from_parameters(alpha, beta, psi):
    """R with R e_x = u(alpha, beta) (spherical angles), then rotated by psi about u: Haar measure = sin(beta)."""
    u = torch.stack((torch.sin(beta) * torch.cos(alpha), torch.sin(beta) * torch.sin(alpha), torch.cos(beta)))
    helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if abs(float(u[2].detach())) < 0.9 else torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    v = torch.linalg.cross(u, helper)
    v = v / v.norm()
    w = torch.linalg.cross(u, v)
    v_rot = torch.cos(psi) * v + torch.sin(psi) * w
    w_rot = torch.linalg.cross(u, v_rot)
    return torch.stack((u, v_rot, w_rot), dim=-1)


def test_log_det_jacobian_matches_autograd(ala2, transform):
    """log|dx/d(t, alpha, beta, psi, ic)| = log_det_jacobian(ic) + log sin(beta) for the full 3N x 3N map."""
    ic, _, _ = transform.to_internal(_configurations(ala2, 1))
    alpha, beta, psi = 0.3, 1.1, -0.7
    n_b, n_a = transform.n_bonds, transform.n_angles

    def cartesian(parameters):
        t, rigid, flat = parameters[:3], parameters[3:6], parameters[6:]
        rotation = _rotation_from_parameters(*rigid)
        internal = InternalCoordinates(flat[None, :n_b], flat[None, n_b : n_b + n_a], flat[None, n_b + n_a :])
        return transform.to_cartesian(internal, t[None], rotation[None]).reshape(-1)

    parameters = torch.cat((torch.tensor([0.1, -0.2, 0.3, alpha, beta, psi], dtype=torch.float64), torch.cat(tuple(ic), dim=-1)[0]))
    jacobian = torch.autograd.functional.jacobian(cartesian, parameters)
    _, log_abs_det = torch.linalg.slogdet(jacobian)
    expected = transform.log_det_jacobian(ic.bonds, ic.angles)[0] + math.log(math.sin(beta))
    assert log_abs_det.item() == pytest.approx(expected.item(), abs=1e-8)


def test_disconnected_graph_is_refused():
    with pytest.raises(ValueError, match="not connected"):
        InternalCoordinateTransform(5, [(0, 1), (1, 2), (3, 4)])


@pytest.mark.parametrize("n_atoms, bonds, error, match", [
    (4, [(0, 1), (1, 2.9), (2, 3)], TypeError, "bonds must be integers.*float64"),  # 2.9 used to become atom 2
    (4, np.array([[0, 1], [1, 2], [2, 3]], dtype=float), TypeError, "bonds must be integers"),
    (4, [(0, True), (1, 2), (2, 3)], TypeError, "booleans"),
    (4.0, [(0, 1), (1, 2), (2, 3)], TypeError, "n_atoms must be an integer"),
    (4, [(0, 1, 2), (2, 3, 1)], ValueError, r"shape \(n_bonds, 2\)"),
])
def test_bad_bond_graphs_are_refused(n_atoms, bonds, error, match):
    with pytest.raises(error, match=match):
        InternalCoordinateTransform(n_atoms, bonds)


def test_integer_bonds_of_any_integer_type_are_accepted():
    bonds = [(0, 1), (1, 2), (2, 3)]
    expected = InternalCoordinateTransform(4, bonds).zmatrix
    for same in (np.array(bonds, dtype=np.int32), torch.tensor(bonds), (b for b in bonds)):
        np.testing.assert_array_equal(InternalCoordinateTransform(np.int64(4), same).zmatrix, expected)
