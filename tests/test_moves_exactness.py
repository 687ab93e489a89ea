"""FlowMCMove is exact with a real Boltzmann generator, Kabsch placement and a changing box.

A four-atom chain (harmonic bonds and angles, a two-basin torsion, nothing else) has a
configurational density that factorizes over internal coordinates,

.. math:: p \\propto \\prod_{\\text{bonds}} b^2 e^{-\\beta k_b (b - b_0)^2 / 2}
          \\prod_{\\text{angles}} \\sin\\theta\\, e^{-\\beta k_\\theta (\\theta - \\theta_0)^2 / 2}\\; e^{-\\beta V(\\phi)},

so exact averages are 1D integrals (``scipy.integrate.quad``). A deliberately poor
``BoltzmannGenerator`` (standardized on a biased sample, random weights: acceptance ~30 %)
proposes; ``FlowMCMove`` aligns each proposal onto the current configuration (Kabsch), and the
sampled averages must match quadrature within 6 standard errors (statistical inefficiency from
pymbar). Controls show the checks fail for a move without the Hastings term and for an alignment
that may reflect (Kabsch without its determinant correction). No proper rigid placement can be a
control: acceptance depends only on internal coordinates, so where an accepted proposal is put
never changes their statistics; a reflection does, because it flips the torsion.

Under constant pressure FlowMCMove must use reduced potentials at the box the sampler state has
*now*; ``test_reduced_potentials_use_the_current_box`` checks that against an independent
computation after the box was changed (the ensemble check with a barostat is in
``tests/test_moves.py``: ``test_moves_respect_alchemical_and_npt_states[NPT]``).
"""

import importlib
import math

import mdtraj
import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit
from scipy import integrate
from test_moves import (
    N_SIGMA,
    NoHastingsMove,
    mean_and_error,
    put_in_ideal_gas_at_constant_pressure,
    reference_cache,
    sample_chain,
    sample_npt,
)

from openmm_flowplugin import systems
from openmm_flowplugin.flows import BoltzmannGenerator
from openmm_flowplugin.geometry.internal import InternalCoordinates, InternalCoordinateTransform
from openmm_flowplugin.mcmc import FlowMCMove
from openmm_flowplugin.proposals import GaussianProposal
from openmm_flowplugin.systems.molecular_system import MolecularSystem

BOND_LENGTH, BOND_K = 0.15, 2.0e5  # nm, kJ/mol/nm^2
ANGLE, ANGLE_K = 1.9, 400.0  # rad, kJ/mol/rad^2
TORSION_TERMS = ((1, 0.8, 3.0), (2, 0.0, 4.0))  # (periodicity, phase in rad, k in kJ/mol): two unequal basins
TEMPERATURE = 300.0  # K
N_PROPOSALS = 10  # Metropolis-Hastings steps per apply; averages are taken after each apply


# ---------------------------------------------------------------------------- the chain and its exact averages
def torsion_energy(phi):
    """V(phi) in kJ/mol, as OpenMM's PeriodicTorsionForce: sum k (1 + cos(n phi - phase))."""
    return sum(k * (1.0 + np.cos(n * phi - phase)) for n, phase, k in TORSION_TERMS)


def chain():
    """Atoms 0-1-2-3: three harmonic bonds, two harmonic angles, the torsion 0-1-2-3; no nonbonded terms."""
    system, topology = openmm.System(), app.Topology()
    residue = topology.addResidue("CHN", topology.addChain())
    atoms = []
    for i in range(4):
        system.addParticle(12.0)
        atoms.append(topology.addAtom(f"C{i}", app.element.carbon, residue))
    bonds, angles, torsion = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce(), openmm.PeriodicTorsionForce()
    for i in range(3):
        bonds.addBond(i, i + 1, BOND_LENGTH, BOND_K)
        topology.addBond(atoms[i], atoms[i + 1])
    for i in range(2):
        angles.addAngle(i, i + 1, i + 2, ANGLE, ANGLE_K)
    for periodicity, phase, k in TORSION_TERMS:
        torsion.addTorsion(0, 1, 2, 3, periodicity, phase, k)
    for force in (bonds, angles, torsion):
        system.addForce(force)
    positions = unit.Quantity(np.zeros((4, 3)), unit.nanometer)  # replaced by a sampled start below
    return MolecularSystem("chain4", system, topology, positions, TEMPERATURE * unit.kelvin)


def _average(f, density, lower, upper, peak):
    norm = integrate.quad(density, lower, upper, points=[peak], limit=200)[0]
    return integrate.quad(lambda s: f(s) * density(s), lower, upper, points=[peak], limit=200)[0] / norm


def exact_averages(kT):
    """Exact averages of the observables of :func:`observables`, by quadrature of the 1D marginals."""
    sd_b = math.sqrt(kT / BOND_K)
    bond = lambda b: b**2 * math.exp(-0.5 * BOND_K * (b - BOND_LENGTH) ** 2 / kT)  # noqa: E731
    angle = lambda t: math.sin(t) * math.exp(-0.5 * ANGLE_K * (t - ANGLE) ** 2 / kT)  # noqa: E731
    torsion = lambda p: math.exp(-torsion_energy(p) / kT)  # noqa: E731
    b_range, a_range = (BOND_LENGTH - 15 * sd_b, BOND_LENGTH + 15 * sd_b, BOND_LENGTH), (0.0, math.pi, ANGLE)
    mean_b, mean_a = _average(lambda b: b, bond, *b_range), _average(lambda t: t, angle, *a_range)
    var_b = _average(lambda b: (b - mean_b) ** 2, bond, *b_range)
    var_a = _average(lambda t: (t - mean_a) ** 2, angle, *a_range)
    exact = {
        "mean bond length": mean_b,
        "mean angle": mean_a,
        "cos phi": _average(math.cos, torsion, -math.pi, math.pi, 0.0),
        "P(phi > 0)": _average(lambda p: float(p > 0), torsion, -math.pi, math.pi, 0.0),
        "standardized fluctuation": 5.0,  # sum over 3 bonds and 2 angles of (s - <s>)^2 / var(s)
    }
    return exact, dict(mean_b=mean_b, mean_a=mean_a, var_b=var_b, var_a=var_a)


def observables(x, moments):
    """Per-configuration observables of positions (n, 4, 3) nm, measured with mdtraj (not the package)."""
    traj = mdtraj.Trajectory(np.asarray(x, dtype=np.float32), mdtraj.Topology.from_openmm(chain().topology))
    b = mdtraj.compute_distances(traj, [[0, 1], [1, 2], [2, 3]]).astype(np.float64)
    a = mdtraj.compute_angles(traj, [[0, 1, 2], [1, 2, 3]]).astype(np.float64)
    phi = mdtraj.compute_dihedrals(traj, [[0, 1, 2, 3]])[:, 0].astype(np.float64)
    fluctuation = ((b - moments["mean_b"]) ** 2 / moments["var_b"]).sum(1) + ((a - moments["mean_a"]) ** 2 / moments["var_a"]).sum(1)
    return {
        "mean bond length": b.mean(1),
        "mean angle": a.mean(1),
        "cos phi": np.cos(phi),
        "P(phi > 0)": (phi > 0).astype(np.float64),
        "standardized fluctuation": fluctuation,
    }


def imperfect_flow(molecular_system, seed=1):
    """A valid but poor proposal: standardized on bonds and angles 0.3 sd off-centre and 10 % too wide,
    uniform torsion (a circular feature), and random non-identity weights. Also returns a start configuration."""
    generator = torch.Generator().manual_seed(seed)
    kT, n = molecular_system.kT, 500
    sd_b, sd_a = math.sqrt(kT / BOND_K), math.sqrt(kT / ANGLE_K)
    bonds = BOND_LENGTH + 0.3 * sd_b + 1.1 * sd_b * torch.randn(n, 3, generator=generator, dtype=torch.float64)
    angles = ANGLE + 0.3 * sd_a + 1.1 * sd_a * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    torsions = (2 * torch.rand(n, 1, generator=generator, dtype=torch.float64) - 1) * math.pi
    ict = InternalCoordinateTransform.from_topology(molecular_system.topology)
    biased_sample = ict.to_cartesian(InternalCoordinates(bonds, angles, torsions))
    with torch.random.fork_rng(devices=[]):  # the layers' initial weights come from torch's global generator
        torch.manual_seed(seed)
        flow = BoltzmannGenerator.for_system(molecular_system, biased_sample, n_blocks=1, hidden=(16,), narrow_torsions=[])
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return flow, biased_sample[0].numpy()


def run_chain(move_class, n_apply, seed=3):
    """Positions (n_apply, 4, 3) nm after each apply of ``move_class(flow, n_proposals=N_PROPOSALS)``, and the move."""
    molecular_system = chain()
    flow, start = imperfect_flow(molecular_system)
    molecular_system.positions = unit.Quantity(start, unit.nanometer)
    move = move_class(flow, n_proposals=N_PROPOSALS, seed=seed)
    return sample_chain(molecular_system, move, n_apply), move


def compare(x, kT):
    """{observable: (sampled mean, standard error, exact value)}."""
    exact, moments = exact_averages(kT)
    return {name: (*mean_and_error(series), exact[name]) for name, series in observables(x, moments).items()}


@pytest.fixture(scope="module")
def exact_chain():
    """The fast chain: 1000 applies of 10 steps, shared by the exactness test and the controls."""
    x, move = run_chain(FlowMCMove, 1000)
    return x, move, compare(x, chain().kT)


# ---------------------------------------------------------------------------- real flow + Kabsch
def _assert_exact(x, move, results):
    assert 0.15 < move.fraction_accepted < 0.7, move.fraction_accepted  # a poor proposal, so the Hastings term matters
    for name, (mean, error, exact) in results.items():
        assert abs(mean - exact) < N_SIGMA * error, f"{name}: sampled {mean:.5g} +- {error:.2g}, exact {exact:.5g}"
    phi_positive = results["P(phi > 0)"]
    assert 0 < phi_positive[0] < 1  # both torsion basins were visited
    # Kabsch placement: every accepted proposal is put on the current centroid, so it never moves.
    np.testing.assert_allclose(x.mean(1), np.broadcast_to(x[0].mean(0), (len(x), 3)), atol=1e-9)


def test_real_flow_with_kabsch_alignment_matches_quadrature(exact_chain):
    _assert_exact(*exact_chain)


@pytest.mark.slow
def test_real_flow_with_kabsch_alignment_matches_quadrature_long():
    x, move = run_chain(FlowMCMove, 10_000, seed=4)
    _assert_exact(x, move, compare(x, chain().kT))


def test_missing_hastings_term_is_detected_with_a_real_flow(exact_chain):
    """Control: without log q(x) - log q(x') the chain targets pi * q; the bond and angle fluctuations shrink."""
    x, move = run_chain(NoHastingsMove, 1000)
    mean, error, exact = compare(x, chain().kT)["standardized fluctuation"]
    reference_error = exact_chain[2]["standardized fluctuation"][1]
    assert abs(mean - exact) > N_SIGMA * max(error, reference_error), (mean, error, exact)


def improper_alignment(x, reference):
    """Least-squares superposition of ``x`` onto ``reference`` allowing reflections (Kabsch without the sign fix)."""
    centred = x - x.mean(0)
    u, _, vt = np.linalg.svd(centred.T @ (reference - reference.mean(0)))
    return centred @ (u @ vt) + reference.mean(0)


class ReflectingAlignmentMove(FlowMCMove):
    """Deliberately wrong: superposes proposals onto the current state allowing a mirror image."""

    def _propose_positions(self, positions):
        proposed, log_q_ratio = super()._propose_positions(positions)
        return improper_alignment(proposed, positions), log_q_ratio


def test_reflecting_alignment_is_detected(exact_chain):
    """Control: a mirror image flips the torsion; proposals then keep the current basin, and P(phi > 0) is lost."""
    x, move = run_chain(ReflectingAlignmentMove, 100)
    mean, error, exact = compare(x, chain().kT)["P(phi > 0)"]
    reference_error = exact_chain[2]["P(phi > 0)"][1]
    assert abs(mean - exact) > N_SIGMA * max(error, reference_error), (mean, error, exact)


# ---------------------------------------------------------------------------- constant pressure
def test_reduced_potentials_use_the_current_box(monkeypatch):
    """After the box changes, u(x) and u(x') that enter the acceptance are beta [U + P V] at the new box.

    The energy depends on the box (a bond through the periodic boundary), so a stale box shows in U as
    well as in P V; the values at the old box are shown to differ, so the comparison can fail.
    """
    flow_move_module = importlib.import_module("openmm_flowplugin.mcmc.flow_move")
    system = openmm.System()
    for _ in range(2):
        system.addParticle(12.0)
    bond = openmm.CustomBondForce("0.5*1000*(r-0.3)^2")
    bond.addBond(0, 1, [])
    bond.setUsesPeriodicBoundaryConditions(True)  # r is the minimum-image distance
    system.addForce(bond)
    old_box, new_box = 1.0 * np.eye(3), 1.2 * np.eye(3)
    system.setDefaultPeriodicBoxVectors(*old_box)
    pressure = 1000.0 * unit.bar
    system.addForce(openmm.MonteCarloBarostat(pressure, TEMPERATURE * unit.kelvin))
    topology = app.Topology()
    residue = topology.addResidue("DIA", topology.addChain())
    for i in range(2):
        topology.addAtom(f"C{i}", app.element.carbon, residue)
    start = np.array([[0.1, 0.5, 0.5], [0.75, 0.5, 0.5]])  # 0.65 nm apart; 0.35 (box 1.0) or 0.55 (box 1.2) through the boundary
    molecular_system = MolecularSystem("periodic_dimer", system, topology, unit.Quantity(start, unit.nanometer), TEMPERATURE * unit.kelvin)
    state = molecular_system.thermodynamic_state(pressure=pressure)
    beta = 1.0 / molecular_system.kT
    p_kj = (pressure * unit.AVOGADRO_CONSTANT_NA).value_in_unit(unit.kilojoule_per_mole / unit.nanometer**3)
    reference_context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))

    def independent_u(positions, box):
        reference_context.setPeriodicBoxVectors(*box)
        reference_context.setPositions(positions)
        energy = reference_context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        return beta * (energy + p_kj * np.linalg.det(box))

    recorded, steps = [], []
    real_ratio = flow_move_module.metropolis_hastings_log_ratio

    def recording_ratio(u_current, u_proposed, log_q_current, log_q_proposed):
        recorded.append((u_current, u_proposed))
        return real_ratio(u_current, u_proposed, log_q_current, log_q_proposed)

    class RecordingMove(FlowMCMove):
        def _propose_positions(self, positions):
            proposed, log_q_ratio = super()._propose_positions(positions)
            steps.append((positions.copy(), proposed.copy()))
            return proposed, log_q_ratio

    monkeypatch.setattr(flow_move_module, "metropolis_hastings_log_ratio", recording_ratio)
    move = RecordingMove(GaussianProposal(start, 0.03, seed=5), n_proposals=5, seed=6)
    sampler_state, context_cache = molecular_system.sampler_state(), reference_cache()
    move.apply(state, sampler_state, context_cache)  # the Context now holds the old box
    sampler_state.box_vectors = unit.Quantity(new_box, unit.nanometer)  # as a barostat would
    recorded.clear()
    steps.clear()
    move.apply(state, sampler_state, context_cache)
    assert len(recorded) == len(steps) == 5 and 0 < move.n_accepted < move.n_proposed
    np.testing.assert_allclose(sampler_state.box_vectors.value_in_unit(unit.nanometer), new_box)  # the move keeps the box
    for (u_current, u_proposed), (current, proposed) in zip(recorded, steps):
        for u, positions in ((u_current, current), (u_proposed, proposed)):
            assert u == pytest.approx(independent_u(positions, new_box), abs=1e-8)
            assert abs(u - independent_u(positions, old_box)) > 1.0  # the old box would give another value


def test_npt_check_detects_missing_hastings_term():
    """Control for the constant-pressure ensemble check: without the Hastings term the oscillator's variance is off."""
    ho = systems.get("harmonic_oscillator")
    sigma = ho.reference.std[0, 0]
    state, _ = put_in_ideal_gas_at_constant_pressure(ho)
    move = NoHastingsMove(GaussianProposal(ho.positions_nm[:1], 1.5 * sigma, seed=15), atom_indices=[0], n_proposals=4, seed=16)
    x, volume = sample_npt(ho, state, move, 800)
    assert np.ptp(volume) > 0
    mean, error = mean_and_error(((x - ho.positions_nm[0]) ** 2).sum(1) / 3)
    assert abs(mean - sigma**2) > N_SIGMA * error, (mean, error, sigma**2)
