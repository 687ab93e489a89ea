"""TransferableConditionalFlow: atom features, exact densities, weights shared across molecules, exact moves.

Exactness toy: three particles in independent isotropic harmonic wells (sigma = 0.05 nm). This flow
moves the centre too (a density over all 3N coordinates), so the chain must sample the full
Gaussian: E[x_i] = r0_i, Var(x_ik) = sigma^2, Cov(x_0k, x_1k) = 0 (a centred flow gives
sigma^2 (N-1)/N and -sigma^2/N instead: the check tells the two apart). Averages within 6 standard
errors; the control (the proposal treated as symmetric) fails the same check.
"""

import math

import numpy as np
import pytest
import torch
from test_moves import mean_and_error
from test_timewarp_move import chain

from openmm_flowplugin import systems
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.flows import (TransferableConditionalFlow, load_conditional_flow, save_conditional_flow, train_timewarp,
                                     trajectory_pairs)
from openmm_flowplugin.flows.atom_features import atom_features
from openmm_flowplugin.flows.conditional_training import fine_tune_acceptance
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.mcmc import TimewarpMove
from openmm_flowplugin.proposals.storage import ProposalStateError, proposal_state

N_SIGMA = 6.0
HO = systems.get("harmonic_oscillator", n_particles=3)
SIGMA = math.sqrt(float(np.mean(np.asarray(HO.reference.std) ** 2)))  # 0.05 nm


def random_flow(molecular_system=HO, scale=0.1, step=0.5, seed=0):
    """Random weights: a poor, asymmetric proposal (its Hastings term far from 0)."""
    torch.manual_seed(seed)
    flow = TransferableConditionalFlow.for_system(molecular_system, n_layers=4, hidden=16, n_rounds=1, step_scale=step * SIGMA)
    with torch.no_grad():
        for name, parameter in flow.named_parameters():
            if not name.endswith("log_step"):
                parameter.add_(scale * torch.randn_like(parameter))
    return flow


class Symmetric(TransferableConditionalFlow):
    """Control: the proposal treated as symmetric (Hastings term 0)."""

    def propose(self, x, n, generator=None):
        x_new, log_hastings = super().propose(x, n, generator)
        return x_new, np.zeros_like(log_hastings)


def full_space_z_scores(x):
    d = x - HO.positions_nm
    series = [(d[:, i, k], 0.0) for i in range(3) for k in range(3)]
    series += [(d[:, i, k] ** 2, SIGMA**2) for i in range(3) for k in range(3)]
    series += [(d[:, 0, 0] * d[:, 1, 0], 0.0), (d[:, 1, 2] * d[:, 2, 2], 0.0)]
    z = []
    for values, exact in series:
        mean, error = mean_and_error(values)
        z.append((mean - exact) / error)
    return np.array(z)


# ---------------------------------------------------------------------------- features
def test_features_describe_the_bonded_environment_the_same_in_every_molecule():
    alanine, serine = systems.get("alanine_dipeptide_vacuum"), systems.get("dipeptide_ser_vacuum")
    ala, ser = atom_features(alanine.topology), atom_features(serine.topology)
    names = {(r.name, a.name): a.index for r in alanine.topology.residues() for a in r.atoms()}
    assert not np.array_equal(ala[names["ALA", "CA"]], ala[names["ALA", "C"]])  # alpha vs carbonyl carbon
    assert not np.array_equal(ala[names["ALA", "CA"]], ala[names["ALA", "CB"]])
    ser_names = {(r.name, a.name): a.index for r in serine.topology.residues() for a in r.atoms()}
    np.testing.assert_array_equal(ala[names["ACE", "C"]], ser[ser_names["ACE", "C"]])  # same cap environment
    assert ala[names["ALA", "CA"]][11:22].tolist()[:4] == [1.0, 2.0, 1.0, 0.0]  # CA bonded to H, C, C, N


# ---------------------------------------------------------------------------- densities
@torch.no_grad()
def test_log_prob_inverts_sample_and_is_translation_and_permutation_invariant():
    alanine = systems.get("alanine_dipeptide_vacuum")
    flow = random_flow(alanine, scale=0.1)
    x = torch.as_tensor(alanine.positions_nm)[None].expand(4, -1, -1)
    x_new, v_new, log_p = flow.sample(x, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(flow.log_prob(x_new, v_new, x), log_p, atol=1e-9)
    shift = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(flow.log_prob(x_new + shift, v_new, x + shift), log_p, atol=1e-9)
    perm = torch.randperm(alanine.n_atoms, generator=torch.Generator().manual_seed(2))
    permuted = TransferableConditionalFlow(atom_features=flow.features[perm].numpy(), **{k: v for k, v in flow.config.items() if k != "atom_features"})
    permuted.core = flow.core
    v_perm = v_new.reshape(4, -1, 3)[:, perm].flatten(1)
    np.testing.assert_allclose(permuted.log_prob(x_new[:, perm], v_perm, x[:, perm]), log_p, atol=1e-9)
    with pytest.raises(InvalidInputError, match="shape"):
        flow.log_prob(x_new[:, :5], v_new, x[:, :5])
    with pytest.raises(InvalidInputError, match="v_new must have shape"):
        flow.log_prob(x_new, v_new[:, :-3], x)


def test_log_prob_equals_the_change_of_variables_with_an_explicit_jacobian():
    """Independent of the coupling code's own log-determinant: log N(u) - log|det d(x', v')/du| by autograd."""
    flow = random_flow(scale=0.3)
    x = torch.as_tensor(HO.positions_nm)[None] + 0.02
    u = torch.randn(1, 2, HO.n_atoms, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    context = flow._context(x)

    def to_data(latent):
        latent = latent.reshape(1, 2, HO.n_atoms, 3)
        displacement, v_new, _ = flow._to_data(latent[:, 0], latent[:, 1], context)
        return torch.cat([displacement.flatten(), v_new.flatten()])

    with torch.no_grad():
        out = to_data(u.flatten())
    jacobian = torch.autograd.functional.jacobian(to_data, u.flatten())
    expected = -0.5 * float(u.square().sum()) - u.numel() / 2 * math.log(2 * math.pi) - float(torch.linalg.slogdet(jacobian)[1])
    x_new, v_new = x + out[: 3 * HO.n_atoms].reshape(1, -1, 3), out[3 * HO.n_atoms:][None]
    with torch.no_grad():
        assert float(flow.log_prob(x_new, v_new, x)) == pytest.approx(expected, abs=1e-9)


def test_a_model_bound_to_another_molecule_shares_its_weights_and_files_rebind(tmp_path):
    alanine, serine = systems.get("alanine_dipeptide_vacuum"), systems.get("dipeptide_ser_vacuum")
    flow = random_flow(alanine, scale=0.1)
    other = flow.bound_to(serine)
    assert other.n_atoms == serine.n_atoms and other.fingerprint == serine.fingerprint and other.core is flow.core
    x_new, log_h = other.propose(serine.positions_nm, 3, generator=torch.Generator().manual_seed(0))
    assert x_new.shape == (3, serine.n_atoms, 3) and np.isfinite(log_h).all()
    save_conditional_flow(flow, tmp_path / "tw.pt")
    loaded = load_conditional_flow(tmp_path / "tw.pt", system=serine, cache=False)
    assert loaded.fingerprint == serine.fingerprint
    for a, b in zip(loaded.core.parameters(), flow.core.parameters()):
        assert torch.equal(a, b)
    unbound = TransferableConditionalFlow(n_layers=2, hidden=4, n_rounds=1)
    with pytest.raises(InvalidInputError, match="not bound to a molecule"):
        unbound.propose(alanine.positions_nm, 1)
    with pytest.raises(TypeError, match="not bound to a molecule"):
        FlowMCIntegrator(300, 1.0, 0.001, unbound)
    with pytest.raises(InvalidInputError, match="not bound to a molecule"):
        train_timewarp(unbound, _pairs(alanine), n_steps=1, progress=False)
    with pytest.raises(ProposalStateError, match="save it first"):  # a bound flow without a file cannot be stored
        proposal_state(other)
    save_conditional_flow(other, tmp_path / "ser.pt")
    assert proposal_state(other)["checkpoint_path"].endswith("ser.pt")
    restored = load_conditional_flow(tmp_path / "ser.pt", cache=False)
    assert restored.fingerprint == serine.fingerprint and restored.n_atoms == serine.n_atoms


def test_binding_to_a_molecule_with_elements_never_trained_on_warns(tmp_path):
    alanine = systems.get("alanine_dipeptide_vacuum")
    flow = TransferableConditionalFlow(n_layers=2, hidden=4, n_rounds=1)
    train_timewarp(flow, [(alanine, _pairs(alanine))], n_steps=1, batch_size=4, progress=False)
    assert flow.metadata["trained_element_slots"] == [0, 1, 2, 3]  # H, C, N, O
    with pytest.warns(UserWarning, match=r"never saw in training \(S\)"):
        flow.bound_to(systems.get("dipeptide_cys_vacuum"))


# ---------------------------------------------------------------------------- training
def _pairs(molecular_system, n=30, seed=0):
    rng = np.random.default_rng(seed)
    x = molecular_system.positions_nm + rng.normal(scale=0.01, size=(n, molecular_system.n_atoms, 3))
    return trajectory_pairs(x, 1)


def test_training_on_several_molecules_resumes_exactly(tmp_path):
    alanine, serine = systems.get("alanine_dipeptide_vacuum"), systems.get("dipeptide_ser_vacuum")
    data = [(alanine, _pairs(alanine)), (serine, _pairs(serine, seed=1))]

    def fresh():
        torch.manual_seed(0)
        return TransferableConditionalFlow(n_layers=2, hidden=8, n_rounds=1)

    straight = train_timewarp(fresh(), data, n_steps=6, batch_size=8, progress=False)
    checkpoint = tmp_path / "train.pt"
    train_timewarp(fresh(), data, n_steps=3, batch_size=8, checkpoint=checkpoint, checkpoint_every=3, progress=False)
    resumed_model = fresh()
    resumed = train_timewarp(resumed_model, data, n_steps=6, batch_size=8, checkpoint=checkpoint, checkpoint_every=3, progress=False)
    assert list(resumed) == list(straight) and straight[-1] < straight[0]
    with pytest.raises(Exception, match="other data_sha256"):
        train_timewarp(fresh(), data[:1] + [(serine, _pairs(serine, seed=2))], n_steps=7, batch_size=8, checkpoint=checkpoint,
                       progress=False)
    with pytest.raises(InvalidInputError, match="shape"):
        train_timewarp(fresh(), [(alanine, _pairs(serine))], n_steps=1, progress=False)
    with pytest.raises(InvalidInputError, match="one molecule"):
        fine_tune_acceptance(fresh(), data, energy=None, n_steps=1, progress=False)


# ---------------------------------------------------------------------------- exactness
def test_harmonic_averages_over_all_coordinates_are_exact():
    move = TimewarpMove(random_flow(), n_proposals=10, seed=3)
    x = chain(move, 2000)
    assert 0.03 < move.fraction_accepted < 0.6 and move.n_invalid == 0
    assert np.ptp(x.mean(1), axis=0).max() > SIGMA  # the centre moves
    z = full_space_z_scores(x)
    assert np.abs(z).max() < N_SIGMA, np.round(z, 1)


def test_control_treating_the_proposal_as_symmetric_fails_the_same_check():
    flow = random_flow()
    control = Symmetric(atom_features=flow.features.numpy(), **{k: v for k, v in flow.config.items() if k != "atom_features"},
                        metadata=flow.metadata)
    control.core = flow.core
    z = full_space_z_scores(chain(TimewarpMove(control, n_proposals=10, seed=3), 2000))
    assert np.abs(z).max() > 2 * N_SIGMA, np.round(z, 1)


# ---------------------------------------------------------------------------- dipeptides
def test_dipeptides_are_built_by_mutation_with_amber14():
    serine = systems.get("dipeptide_ser")
    assert [r.name for r in serine.topology.residues()] == ["ACE", "SER", "NME"] and serine.n_atoms == 23
    assert serine.n_constraints == 0 and abs(serine.temperature.value_in_unit(serine.temperature.unit) - 310.0) < 1e-9
    forces = {type(f).__name__ for f in serine.system.getForces()}
    assert "GBSAOBCForce" in forces or "CustomGBForce" in forces
    assert "GBSAOBCForce" not in {type(f).__name__ for f in systems.get("dipeptide_ser_vacuum").system.getForces()}
    with pytest.raises(InvalidInputError, match="fixes residue='SER'"):
        systems.get("dipeptide_ser", residue="GLY")
    from openmm_flowplugin._systems.dipeptides import dipeptide

    with pytest.raises(InvalidInputError, match="residue must be one of"):
        dipeptide(residue="XYZ")
