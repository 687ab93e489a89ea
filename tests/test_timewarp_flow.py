"""ConditionalFlow: exact log densities, centring, the log Hastings term, checkpoints and training that resumes.

Round trips: a sample's log density equals ``log_prob`` at it; inverse after forward is the
identity; each direction's log|det J| equals autograd's ``slogdet`` of its Jacobian (tiny model,
random weights, both with and without conditioning on the current velocity). The log Hastings term
of ``propose`` equals the formula recomputed from independent ``log_prob`` calls, and vanishes for a
flow that is a symmetric Gaussian random walk (identity couplings).
"""

import math

import numpy as np
import pytest
import torch

from openmm_flowplugin import systems
from openmm_flowplugin.flows import (
    CheckpointError,
    ConditionalFlow,
    load_conditional_flow,
    save_conditional_flow,
    train_timewarp,
    trajectory_pairs,
)
from openmm_flowplugin.flows.conditional import centred_basis
from openmm_flowplugin.flows.conditional_training import random_rotations
from openmm_flowplugin.proposals.conditional import auxiliary_log_hastings, standard_normal_log_prob


def random_flow(n_atoms=3, scale=0.2, seed=0, **kwargs):
    torch.manual_seed(seed)
    flow = ConditionalFlow(n_atoms, n_layers=4, hidden=(16,), context_features=8, step_scale=0.05, **kwargs)
    with torch.no_grad():
        for name, parameter in flow.named_parameters():
            if name != "log_step":
                parameter.add_(scale * torch.randn_like(parameter))
    return flow


def positions(n, n_atoms=3, seed=1):
    return torch.as_tensor(np.random.default_rng(seed).normal(scale=0.1, size=(n, n_atoms, 3)))


@pytest.mark.parametrize("condition_on_velocities", [False, True])
def test_sample_log_density_equals_log_prob_and_keeps_the_centre(condition_on_velocities):
    flow = random_flow(condition_on_velocities=condition_on_velocities)
    x, v = positions(6), torch.randn(6, flow.dim, dtype=torch.float64)
    x_new, v_new, log_p = flow.sample(x, v, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(log_p.detach(), flow.log_prob(x_new, v_new, x, v).detach(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(x_new.mean(1).detach(), x.mean(1), rtol=0, atol=1e-14)
    assert log_p.dtype == torch.float64


@pytest.mark.parametrize("condition_on_velocities", [False, True])
def test_inverse_of_forward_is_identity_and_log_dets_match_autograd(condition_on_velocities):
    flow = random_flow(condition_on_velocities=condition_on_velocities)
    x, v = positions(1), torch.randn(1, flow.dim, dtype=torch.float64)
    context = flow._context(x, v)
    latent = torch.randn(2 * flow.dim, dtype=torch.float64)
    d = flow.dim

    def forward(u):
        a, b, _ = flow._to_data(u[None, :d], u[None, d:], context)
        return torch.cat([a, b], -1)[0]

    def inverse(y):
        a, b, _ = flow._to_latent(y[None, :d], y[None, d:], context)
        return torch.cat([a, b], -1)[0]

    data = forward(latent)
    np.testing.assert_allclose(inverse(data).detach(), latent, rtol=0, atol=1e-12)
    ladj_forward = flow._to_data(latent[None, :d], latent[None, d:], context)[2]
    ladj_inverse = flow._to_latent(data[None, :d], data[None, d:], context)[2]
    for function, point, ladj in ((forward, latent, ladj_forward), (inverse, data.detach(), ladj_inverse)):
        jacobian = torch.autograd.functional.jacobian(function, point)
        assert float(torch.linalg.slogdet(jacobian)[1]) == pytest.approx(float(ladj.detach()), abs=1e-10)


def test_centred_basis_is_orthonormal_and_positions_round_trip():
    basis = centred_basis(5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-14)
    np.testing.assert_allclose(basis.sum(0), 0.0, atol=1e-14)
    flow = ConditionalFlow(5, n_layers=2, hidden=(8,), context_features=4)
    x = positions(2, 5)
    rebuilt = torch.einsum("ak,bki->bai", flow.basis, flow.centred(x)) + x.mean(1, keepdim=True)
    np.testing.assert_allclose(rebuilt, x, atol=1e-14)


@pytest.mark.parametrize("condition_on_velocities", [False, True])
def test_log_hastings_of_propose_equals_the_formula_from_independent_log_probs(condition_on_velocities):
    flow = random_flow(condition_on_velocities=condition_on_velocities)
    x = positions(1)[0]
    x_new, log_h = flow.propose(x, 5, generator=torch.Generator().manual_seed(7))
    # Replay the draws: v first, then the flow's latents.
    generator = torch.Generator().manual_seed(7)
    v = torch.randn(5, flow.dim, generator=generator, dtype=torch.float64)
    xs = x[None].expand(5, -1, -1)
    with torch.no_grad():
        again, v_new, _ = flow.sample(xs, v, generator=generator)
        forward = flow.log_prob(again, v_new, xs, v)
        reverse = flow.log_prob(xs, v, again, v_new)
    np.testing.assert_array_equal(again.numpy(), x_new)
    expected = standard_normal_log_prob(v_new) + reverse - standard_normal_log_prob(v) - forward
    np.testing.assert_allclose(log_h, expected, rtol=0, atol=1e-10)
    assert np.isfinite(log_h).all() and np.ptp(log_h) > 0.1  # the term matters for this flow


def test_log_hastings_formula_by_hand_and_vanishes_for_a_symmetric_random_walk():
    v, w = np.array([[0.3, -1.0]]), np.array([[1.2, 0.4]])
    h = auxiliary_log_hastings([-2.0], [-1.5], v, w)
    assert float(h[0]) == pytest.approx(-0.5 * (1.2**2 + 0.4**2) + 0.5 * (0.3**2 + 1.0**2) - 1.5 + 2.0, abs=1e-14)
    assert np.isnan(auxiliary_log_hastings([np.nan], [0.0], v, w)[0])
    flow = ConditionalFlow(3, n_layers=2, hidden=(8,), context_features=4)  # couplings start as the identity
    _, log_h = flow.propose(positions(1)[0], 8, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(log_h, 0.0, atol=1e-12)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="n_atoms must be an integer >= 2"):
        ConditionalFlow(1)
    flow = ConditionalFlow(3, n_layers=2, hidden=(8,), context_features=4, condition_on_velocities=True)
    with pytest.raises(ValueError, match=r"shape \(n, 3, 3\)"):
        flow.log_prob(torch.zeros(1, 4, 3), torch.zeros(1, 6), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="pass v"):
        flow.sample(torch.zeros(1, 3, 3))


# ---------------------------------------------------------------------------- checkpoints and training
def test_checkpoint_round_trip_and_wrong_molecule_refusal(tmp_path):
    ho = systems.get("harmonic_oscillator", n_particles=3)
    flow = random_flow()
    flow.metadata.update(system="harmonic_oscillator", fingerprint=ho.fingerprint)
    sha = save_conditional_flow(flow, tmp_path / "tw.pt")
    loaded = load_conditional_flow(tmp_path / "tw.pt", system=ho)
    assert loaded.checkpoint_sha256 == sha and loaded is load_conditional_flow(tmp_path / "tw.pt")
    x, v = positions(3), torch.randn(3, flow.dim, dtype=torch.float64)
    x_new = positions(3, seed=5)
    np.testing.assert_array_equal(loaded.log_prob(x_new, v, x).detach(), flow.log_prob(x_new, v, x).detach())
    with pytest.raises(CheckpointError, match="made for 'harmonic_oscillator' \\(3 atoms\\)"):
        load_conditional_flow(tmp_path / "tw.pt", system=systems.get("harmonic_oscillator", n_particles=4))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_conditional_flow(tmp_path / "bad.pt")


def test_trajectory_pairs_and_rotations():
    a, b = np.arange(15.0).reshape(5, 1, 3), 100 + np.arange(9.0).reshape(3, 1, 3)
    x_t, x_lag = trajectory_pairs([a, b], lag=2)
    assert x_t[:, 0, 0].tolist() == [0.0, 3.0, 6.0, 100.0] and x_lag[:, 0, 0].tolist() == [6.0, 9.0, 12.0, 106.0]
    with pytest.raises(ValueError, match="no pairs"):
        trajectory_pairs(b, lag=3)
    rotations = random_rotations(500, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(rotations @ rotations.transpose(1, 2), np.broadcast_to(np.eye(3), (500, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(torch.linalg.det(rotations), 1.0, atol=1e-12)
    assert abs(float(rotations.mean())) < 0.05  # Haar: mean matrix zero


def correlated_walk(n_frames=400, seed=0):
    """Three atoms, a correlated random walk with drift toward a triangle: something learnable."""
    rng = np.random.default_rng(seed)
    target = np.array([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.0, 0.15, 0.0]])
    x = np.empty((n_frames, 3, 3))
    x[0] = target
    for t in range(1, n_frames):
        x[t] = x[t - 1] + 0.3 * (target - x[t - 1]) + 0.01 * rng.normal(size=(3, 3))
    return x


def test_training_lowers_the_loss_and_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    pairs = trajectory_pairs(correlated_walk(), lag=1)
    settings = dict(n_steps=40, batch_size=16, learning_rate=3e-3, seed=4, progress=False)

    def fresh():
        torch.manual_seed(0)
        return ConditionalFlow(3, n_layers=4, hidden=(16,), context_features=8)

    straight = fresh()
    history = train_timewarp(straight, pairs, **settings)
    assert np.mean(history[-10:]) < np.mean(history[:10]) - 1.0
    resumed = fresh()
    first = train_timewarp(resumed, pairs, **dict(settings, n_steps=15), checkpoint=tmp_path / "train.pt", checkpoint_every=5)
    assert len(first) == 15
    again = fresh()  # a new process would build the model anew, then resume from the file
    history_resumed = train_timewarp(again, pairs, **settings, checkpoint=tmp_path / "train.pt", checkpoint_every=5)
    np.testing.assert_allclose(history_resumed, history, rtol=0, atol=1e-10)
    for p, q in zip(again.parameters(), straight.parameters()):
        np.testing.assert_allclose(p.detach(), q.detach(), rtol=0, atol=1e-10)
    assert load_conditional_flow(tmp_path / "train.pt").config == again.config  # a training checkpoint is a model file
    with pytest.raises(CheckpointError, match="other seed"):
        train_timewarp(fresh(), pairs, **dict(settings, seed=5), checkpoint=tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match="at step 40, past n_steps = 30"):  # not silently a 40-step model
        train_timewarp(fresh(), pairs, **dict(settings, n_steps=30), checkpoint=tmp_path / "train.pt")


def test_training_refuses_pairs_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(n_pairs, 3, 3\)"):
        train_timewarp(ConditionalFlow(3, n_layers=2, hidden=(8,), context_features=4), (np.zeros((4, 2, 3)),) * 2, progress=False)


def test_training_refuses_non_finite_pairs_and_stops_at_a_non_finite_loss(monkeypatch):
    x_t, x_lag = trajectory_pairs(correlated_walk(), lag=1)
    broken = x_lag.copy()
    broken[3, 1, 2] = np.nan  # one coordinate of one frame: the model would come out all NaN
    flow = ConditionalFlow(3, n_layers=2, hidden=(8,), context_features=4)
    with pytest.raises(ValueError, match="1 pairs have non-finite coordinates \\(the first: pair 3\\)"):
        train_timewarp(flow, (x_t, broken), progress=False)
    before = [p.detach().clone() for p in flow.parameters()]
    monkeypatch.setattr(ConditionalFlow, "log_prob", lambda self, *args: torch.full((len(args[0]),), float("nan")))
    with pytest.raises(ValueError, match="non-finite training loss at step 0"):
        train_timewarp(flow, (x_t, x_lag), n_steps=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters()))  # no step taken on it


def test_centred_coordinates_rotate_with_the_frames():
    # q(x R) = q(x) R: for a symmetric random walk (identity couplings) the density of a pair rotated as a whole
    # (as the training augmentation rotates it) is unchanged.
    flow = ConditionalFlow(3, n_layers=2, hidden=(8,), context_features=4)
    x, y = positions(4), positions(4, seed=2)
    rotation = random_rotations(4, torch.Generator().manual_seed(1))
    v = torch.zeros(4, flow.dim, dtype=torch.float64)
    np.testing.assert_allclose(flow.log_prob(y @ rotation, v, x @ rotation).detach(), flow.log_prob(y, v, x).detach(), atol=1e-10)
    assert math.isfinite(float(flow.log_prob(y, v, x).detach().sum()))
