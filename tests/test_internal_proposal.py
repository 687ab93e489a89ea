"""InternalCoordinateProposal: exact Metropolis-Hastings on internal coordinates, against quadrature.

Toy: a four-atom chain 0-1-2-3 with harmonic bonds (k = 500 kJ/mol/nm^2, r0 = 0.15 nm), harmonic
angles (k = 20 kJ/mol/rad^2, theta0 = 1.9 rad) and a torsion k (1 + cos(phi - 0.5)), k = 3 kJ/mol, at
300 K, no other forces. The energy is separable in internal coordinates, so with the Jacobian
b^2 sin(theta) each bond is distributed as b^2 exp(-u(b)), each angle as sin(theta) exp(-u(theta)) and
the torsion as exp(-u(phi)): exact averages by one-dimensional quadrature. Averages within 6 standard
errors (statistical inefficiency from pymbar). Controls, failing the same check: the Jacobian left out of
the Hastings term (``moves="all"``), the reverse density left out (``moves="torsions"``, and the mixture of
wrapped normals that jumps between basins).
"""

import math

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit
from scipy import integrate
from test_moves import mean_and_error
from test_timewarp_move import reference_cache

from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.flows import load_conditional_flow, save_conditional_flow, train_timewarp, trajectory_pairs
from openmm_flowplugin.flows.internal_conditional import InternalCoordinateProposal
from openmm_flowplugin.geometry.internal import dihedral
from openmm_flowplugin.mcmc import TimewarpMove
from openmm_flowplugin.systems.molecular_system import MolecularSystem

N_SIGMA = 6.0
KT = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
K_BOND, R0, K_ANGLE, THETA0, K_TORSION, PHASE = 500.0, 0.15, 20.0, 1.9, 3.0, 0.5


def chain_system():
    system = openmm.System()
    topology = app.Topology()
    residue = topology.addResidue("CHN", topology.addChain())
    atoms = [topology.addAtom(f"C{i}", app.element.carbon, residue) for i in range(4)]
    for _ in range(4):
        system.addParticle(12.0)
    bonds, angles = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce()
    for i in range(3):
        bonds.addBond(i, i + 1, R0, K_BOND)
        topology.addBond(atoms[i], atoms[i + 1])
    for i in range(2):
        angles.addAngle(i, i + 1, i + 2, THETA0, K_ANGLE)
    torsion = openmm.PeriodicTorsionForce()
    torsion.addTorsion(0, 1, 2, 3, 1, math.pi + PHASE, K_TORSION)  # k (1 + cos(phi - pi - 0.5)) in OpenMM's convention
    for force in (bonds, angles, torsion):
        system.addForce(force)
    positions = np.array([[0.0, 0.15, 0.0], [0.0, 0.0, 0.0], [0.15, -0.05, 0.0], [0.2, -0.05, 0.14]])
    return MolecularSystem(name="chain4", system=system, topology=topology, positions=positions * unit.nanometer,
                           temperature=300 * unit.kelvin)


CHAIN = chain_system()


def exact_average(f, weight, a, b):
    return integrate.quad(lambda s: f(s) * weight(s), a, b, limit=200)[0] / integrate.quad(weight, a, b, limit=200)[0]


def bond_weight(b):
    return b**2 * math.exp(-0.5 * K_BOND * (b - R0) ** 2 / KT)


def angle_weight(t):
    return math.sin(t) * math.exp(-0.5 * K_ANGLE * (t - THETA0) ** 2 / KT)


def torsion_weight(p):
    return math.exp(-K_TORSION * (1 + math.cos(p - math.pi - PHASE)) / KT)


def observables(x):
    """Bond 2-3, angle 1-2-3 and the torsion 0-1-2-3 of each frame."""
    x = torch.as_tensor(x)
    bond = torch.linalg.norm(x[:, 3] - x[:, 2], dim=-1).numpy()
    u, v = x[:, 1] - x[:, 2], x[:, 3] - x[:, 2]
    angle = torch.arccos((u * v).sum(-1) / (torch.linalg.norm(u, dim=-1) * torch.linalg.norm(v, dim=-1))).numpy()
    torsion = dihedral(x[:, 0], x[:, 1], x[:, 2], x[:, 3]).numpy()
    return bond, angle, torsion


def z_scores(x, moves):
    bond, angle, torsion = observables(x)
    series = [(np.cos(torsion), exact_average(math.cos, torsion_weight, -math.pi, math.pi)),
              (np.sin(torsion), exact_average(math.sin, torsion_weight, -math.pi, math.pi))]
    if moves == "all":
        series += [(bond, exact_average(lambda b: b, bond_weight, 1e-6, 0.7)),
                   (angle, exact_average(lambda t: t, angle_weight, 1e-6, math.pi - 1e-6))]
    z = []
    for values, exact in series:
        mean, error = mean_and_error(values)
        z.append((mean - exact) / error)
    return np.array(z)


MIXTURE = dict(torsions=[(0, 1, 2, 3)], components=3)  # the chain's one torsion, by a state-dependent mixture


def random_proposal(moves, cls=InternalCoordinateProposal, seed=0, **options):
    """Random weights: the mean step, scale (and mixture) depend on the state, so the Hastings term matters."""
    torch.manual_seed(seed)
    proposal = cls.for_system(CHAIN, hidden=(16,), initial_scales=(0.06, 0.3, 1.0), moves=moves, **options)
    with torch.no_grad():
        for name, parameter in proposal.named_parameters():
            if name != "log_scale":
                parameter.add_((0.01 if moves == "all" else 0.1) * torch.randn_like(parameter))
    return proposal


def run_chain(proposal, n_apply=3000, seed=3):
    move = TimewarpMove(proposal, n_proposals=5, seed=seed)
    thermodynamic_state, sampler_state = CHAIN.thermodynamic_state(), CHAIN.sampler_state()
    context_cache = reference_cache()
    out = np.empty((n_apply, 4, 3))
    for i in range(n_apply):
        move.apply(thermodynamic_state, sampler_state, context_cache=context_cache)
        out[i] = sampler_state.positions.value_in_unit(unit.nanometer)
    return out, move


class NoJacobian(InternalCoordinateProposal):
    """Control: the Hastings term without J(ic') / J(ic)."""

    def propose(self, x, n, generator=None):
        x_new, log_h = super().propose(x, n, generator)
        ic, _, _ = self.transform.to_internal(torch.as_tensor(np.asarray(x, dtype=np.float64))[None])
        ic_new, _, _ = self.transform.to_internal(torch.as_tensor(x_new))
        jacobian = self.transform.log_det_jacobian
        return x_new, log_h - (jacobian(ic_new.bonds, ic_new.angles) - jacobian(ic.bonds, ic.angles)).numpy()


class NoReverse(InternalCoordinateProposal):
    """Control: the Hastings term without the reverse density p(ic | ic')."""

    def propose(self, x, n, generator=None):
        x_new, log_h = super().propose(x, n, generator)
        ic, _, _ = self.transform.to_internal(torch.as_tensor(np.asarray(x, dtype=np.float64))[None].expand(n, -1, -1))
        ic_new, _, _ = self.transform.to_internal(torch.as_tensor(x_new))
        with torch.no_grad():
            return x_new, log_h - self.internal_log_prob(ic, ic_new).numpy()


@pytest.mark.parametrize("moves, options", [("all", {}), ("torsions", {}), ("torsions", MIXTURE)], ids=["all", "torsions", "mixture"])
def test_internal_coordinate_averages_are_exact(moves, options):
    x, move = run_chain(random_proposal(moves, **options))
    assert 0.05 < move.fraction_accepted < 0.9, move.fraction_accepted
    z = z_scores(x, moves)
    assert np.abs(z).max() < N_SIGMA, np.round(z, 1)
    bond, angle, _ = observables(x)
    if moves == "torsions":  # bonds and angles stay as they were: this move needs MD (or another move) beside it
        np.testing.assert_allclose(bond, bond[0], atol=1e-9)
    else:
        assert np.ptp(bond) > 0.02


@pytest.mark.parametrize("moves, control, options, n_apply", [("all", NoJacobian, {}, 3000), ("torsions", NoReverse, {}, 3000),
                                                             ("torsions", NoReverse, MIXTURE, 1000)],  # the mixture's misses by ~80 SE
                         ids=["all", "torsions", "mixture"])
def test_controls_with_a_wrong_hastings_term_fail_the_same_check(moves, control, options, n_apply):
    x, _ = run_chain(random_proposal(moves, cls=control, **options), n_apply=n_apply)
    z = z_scores(x, moves)
    assert np.abs(z).max() > 2 * N_SIGMA, np.round(z, 1)


@pytest.mark.parametrize("moves, options", [("all", {}), ("torsions", MIXTURE)], ids=["all", "mixture"])
def test_the_frame_is_kept_and_round_trips_are_exact(tmp_path, moves, options):
    proposal = random_proposal(moves, **options)
    x = np.asarray(CHAIN.positions_nm)
    x_new, log_h = proposal.propose(x, 6, generator=torch.Generator().manual_seed(1))
    assert np.isfinite(log_h).all()
    a0, a1, a2 = proposal.transform.roots
    np.testing.assert_allclose(x_new[:, a0], np.broadcast_to(x[a0], (6, 3)), atol=1e-12)  # origin of the frame kept
    # the Hastings term is log p(x | x') - log p(x' | x) with log_prob on the frame's set of configurations
    with torch.no_grad():
        xs = torch.as_tensor(x)[None].expand(6, -1, -1)
        forward = proposal.log_prob(torch.as_tensor(x_new), None, xs)
        reverse = proposal.log_prob(xs, None, torch.as_tensor(x_new))
    np.testing.assert_allclose(log_h, (reverse - forward).numpy(), atol=1e-8)
    save_conditional_flow(proposal, tmp_path / "ic.pt")
    loaded = load_conditional_flow(tmp_path / "ic.pt", system=CHAIN, cache=False)
    assert type(loaded) is InternalCoordinateProposal and loaded.config == proposal.config
    np.testing.assert_array_equal(loaded.propose(x, 6, generator=torch.Generator().manual_seed(1))[0], x_new)


@pytest.mark.parametrize("options", [{}, dict(moves="torsions", **MIXTURE)], ids=["gaussian", "mixture"])
def test_training_lowers_the_loss_and_bad_input_is_refused(options):
    rng = np.random.default_rng(0)
    frames = np.asarray(CHAIN.positions_nm) + rng.normal(scale=0.005, size=(60, 4, 3))
    proposal = InternalCoordinateProposal.for_system(CHAIN, hidden=(16,), **options)
    history = train_timewarp(proposal, trajectory_pairs(frames, 1), n_steps=60, batch_size=16, progress=False)
    assert np.mean(history[-10:]) < np.mean(history[:10])
    with pytest.raises(InvalidInputError, match="moves must be"):
        InternalCoordinateProposal.for_system(CHAIN, moves="bonds")
    with pytest.raises(InvalidInputError, match="torsion scale must stay below"):
        InternalCoordinateProposal.for_system(CHAIN, initial_scales=(0.01, 0.1, 3.0))
    with pytest.raises(InvalidInputError, match="shape"):
        proposal.propose(np.zeros((5, 3)), 1)


def test_the_mixture_density_is_normalized():
    proposal = random_proposal("torsions", **MIXTURE)
    x = torch.as_tensor(np.asarray(CHAIN.positions_nm))[None]
    with torch.no_grad():
        ic, _, _ = proposal.transform.to_internal(x)
        grid = torch.linspace(-math.pi, math.pi, 4001, dtype=torch.float64)[:, None]
        ic_new = type(ic)(ic.bonds.expand(len(grid), -1), ic.angles.expand(len(grid), -1), grid)
        density = proposal.internal_log_prob(ic_new, type(ic)(*(part.expand(len(grid), -1) for part in ic))).exp().numpy()
    assert integrate.trapezoid(density, grid[:, 0].numpy()) == pytest.approx(1.0, abs=1e-9)
    assert density.max() / density.min() > 5  # not uniform: the Hastings term matters


def test_backbone_jumps_rotate_phi_and_psi_only():
    """On alanine dipeptide the phi/psi move is two rigid rotations, equal to rebuilding the molecule from the changed torsions."""
    import mdtraj

    from openmm_flowplugin import systems
    from openmm_flowplugin.flows.internal_conditional import _expand

    ala = systems.get("alanine_dipeptide_vacuum")
    phi_psi = [(4, 6, 8, 14), (6, 8, 14, 16)]
    torch.manual_seed(0)
    proposal = InternalCoordinateProposal.for_system(ala, hidden=(16,), moves="torsions", torsions=phi_psi, components=4)
    x = np.asarray(ala.positions_nm)
    x_new, log_h = proposal.propose(x, 8, generator=torch.Generator().manual_seed(2))
    assert np.isfinite(log_h).all()
    with torch.no_grad():  # the same draw, rebuilt by NeRF
        ic, origin, rotation = proposal.transform.to_internal(torch.as_tensor(x)[None])
        ic8 = type(ic)(*(part.expand(8, -1) for part in ic))
        ic_new = proposal._draw(ic8, torch.Generator().manual_seed(2), _expand(proposal._step(ic), 8))
        rebuilt = proposal.transform.to_cartesian(ic_new, origin.expand(8, -1), rotation.expand(8, -1, -1)).numpy()
    np.testing.assert_allclose(x_new, rebuilt, atol=1e-12)
    with torch.no_grad():  # float64: only the two rotated torsions change
        ic_after = proposal.transform.internal_coordinates(torch.as_tensor(x_new))
    np.testing.assert_allclose(ic_after.bonds.numpy(), ic8.bonds.numpy(), atol=1e-12)
    np.testing.assert_allclose(ic_after.angles.numpy(), ic8.angles.numpy(), atol=1e-10)
    change = np.angle(np.exp(1j * (ic_after.torsions - ic8.torsions).numpy()))
    assert sorted(np.flatnonzero(np.abs(change).max(0) > 1e-9)) == sorted(proposal.moved.tolist())
    # mdtraj's phi and psi (float32) change by those two torsions' changes
    before, after = (mdtraj.Trajectory(xyz, ala.mdtraj_topology) for xyz in (x[None], x_new))
    for compute, row in zip((mdtraj.compute_phi, mdtraj.compute_psi), proposal.moved.tolist()):
        measured = np.angle(np.exp(1j * (compute(after)[1][:, 0] - compute(before)[1][:, 0])))
        np.testing.assert_allclose(np.abs(measured), np.abs(change[:, row]), atol=1e-4)


def test_torsion_selection_refuses_bad_input():
    with pytest.raises(InvalidInputError, match="with moves='torsions'"):
        InternalCoordinateProposal.for_system(CHAIN, torsions=[(0, 1, 2, 3)])
    with pytest.raises(InvalidInputError, match="not bonded"):
        InternalCoordinateProposal.for_system(CHAIN, moves="torsions", torsions=[(0, 1, 3, 2)])
    with pytest.raises(InvalidInputError, match="quadruples of atom indices"):
        InternalCoordinateProposal.for_system(CHAIN, moves="torsions", torsions=[(0, 1, 2, 7)])
    with pytest.raises(InvalidInputError, match="same bond twice"):
        InternalCoordinateProposal.for_system(CHAIN, moves="torsions", torsions=[(0, 1, 2, 3), (3, 2, 1, 0)])
    with pytest.raises(InvalidInputError, match="no torsion of the Z-matrix rotates it about the bond"):
        InternalCoordinateProposal.for_system(CHAIN, moves="torsions", torsions=[(0, 1, 2, 0)])
    with pytest.raises(InvalidInputError, match="components must be a positive integer"):
        InternalCoordinateProposal.for_system(CHAIN, components=0)


def test_a_torsion_in_a_ring_warns_that_its_moves_are_not_rigid():
    """Proline's phi turns part of its ring: exact by NeRF, but ring-closing bonds stretch, so the user is told."""
    from openmm_flowplugin import systems

    proline = systems.get("dipeptide_pro_vacuum")
    with pytest.warns(UserWarning, match="do not turn their atoms rigidly"):
        proposal = InternalCoordinateProposal.for_system(proline, hidden=(4,), moves="torsions", torsions=[(4, 6, 7, 12)])
    assert proposal._rotations is None


def test_the_numpy_path_of_a_torsion_mixture_equals_the_torch_path():
    """propose() of a float64 blind torsion mixture runs in NumPy: the same draws, positions and Hastings terms."""
    from openmm_flowplugin import systems
    from openmm_flowplugin.flows._numpy_internal import NumpyTorsionMixture

    ala = systems.get("alanine_dipeptide_vacuum")
    torch.manual_seed(0)
    proposal = InternalCoordinateProposal.for_system(ala, hidden=(16, 16), moves="torsions", torsions=[(4, 6, 8, 14), (6, 8, 14, 16)],
                                                     components=5)
    with torch.no_grad():
        for parameter in proposal.mixture_net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    x = np.asarray(ala.positions_nm)
    assert NumpyTorsionMixture.build(proposal) is not None

    def both(n, seed):
        fast = proposal.propose(x, n, generator=torch.Generator().manual_seed(seed))
        slow = proposal._propose_torch(x, n, generator=torch.Generator().manual_seed(seed))
        return fast, slow

    for n, seed in ((1, 0), (1, 1), (1, 3), (16, 2)):
        (x_fast, log_fast), (x_slow, log_slow) = both(n, seed)
        np.testing.assert_allclose(x_fast, x_slow, atol=1e-12)
        np.testing.assert_allclose(log_fast, log_slow, rtol=1e-10, atol=1e-10)
    assert np.ptp(log_fast) > 0.1 and np.abs(x_fast - x).max() > 0.05  # real moves with varying Hastings terms
    with torch.no_grad():  # a parameter change is seen: the snapshot is rebuilt
        proposal.mixture_net[0].bias.add_(1.0)
    (x_fast, log_fast), (x_slow, log_slow) = both(16, 2)
    np.testing.assert_allclose(log_fast, log_slow, rtol=1e-10, atol=1e-10)
    # Control: the comparison sees a stale snapshot (the weights before the change).
    with torch.no_grad():
        proposal.mixture_net[0].bias.sub_(1.0)
    _, log_before = both(16, 2)[0]
    assert np.abs(log_before - log_slow).max() > 1e-3
    # Only float64 CPU blind mixtures with rigid rotations take this path.
    assert NumpyTorsionMixture.build(proposal.to(torch.float32)) is None
    assert NumpyTorsionMixture.build(InternalCoordinateProposal.for_system(ala, hidden=(8,), moves="torsions")) is None


def test_propose_rejects_degenerate_states_and_refuses_a_bad_count():
    from openmm_flowplugin import systems

    ala = systems.get("alanine_dipeptide_vacuum")
    proposal = InternalCoordinateProposal.for_system(ala, hidden=(8,), moves="torsions", torsions=[(4, 6, 8, 14), (6, 8, 14, 16)],
                                                     components=3)
    collapsed = np.zeros((22, 3))  # a Context's positions before setPositions: no rotation axis
    for propose in (proposal.propose, proposal._propose_torch):
        x_new, log_h = propose(collapsed, 2, generator=torch.Generator().manual_seed(0))
        assert x_new.shape == (2, 22, 3) and np.all(log_h == -np.inf)
    for bad in (-1, 2.7, True):
        with pytest.raises(InvalidInputError, match="n must be a non-negative integer"):
            proposal.propose(ala.positions_nm, bad)
