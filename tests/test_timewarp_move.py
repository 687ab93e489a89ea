"""TimewarpMove is exact: auxiliary-velocity Metropolis-Hastings on a multi-atom toy, prefetch, failures, storage.

Toy: three particles in independent isotropic harmonic wells (``harmonic_oscillator``,
``n_particles=3``, sigma = 0.05 nm per coordinate). A ConditionalFlow keeps the geometric centre
fixed, so the chain samples the Boltzmann distribution *given the centre*: started at the minima
(centre c0 = mean of the well centres r0), positions are Gaussian on the plane {mean x = c0},
with E[x_i] = r0_i, Var(x_ik) = sigma^2 (N-1)/N and Cov(x_0k, x_1k) = -sigma^2/N. The 1/N terms
exist only because positions live in the 3N-3 centred dimensions; a one-particle toy could not
check them. Averages must agree within 6 standard errors (statistical inefficiency from pymbar).

Controls, each failing the same check: dropping the reverse density ``p(x, v | x', v')`` from the
Hastings term; treating the proposal as symmetric; and, for the prefetch, keeping one state per
batch at its first acceptance (Timewarp's sampler as an ``apply``), which weights states by their
acceptance rate.
"""

import copy
import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit
from openmmtools import cache
from openmmtools.utils import deserialize, serialize
from test_moves import mean_and_error

from openmm_flowplugin import systems
from openmm_flowplugin.flows import ConditionalFlow, load_conditional_flow, save_conditional_flow
from openmm_flowplugin.mcmc import TimewarpMove
from openmm_flowplugin.mcmc.flow_move import BrokenStateError
from openmm_flowplugin.proposals.conditional import auxiliary_log_hastings

N_SIGMA = 6.0
HO = systems.get("harmonic_oscillator", n_particles=3)
SIGMA = math.sqrt(float(np.mean(np.asarray(HO.reference.std) ** 2)))  # 0.05 nm


def reference_cache():
    return cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))


def random_flow(cls=ConditionalFlow, scale=0.1, step=1.5, seed=0, **kwargs):
    """A deliberately poor, asymmetric flow (random weights): acceptance ~10 %, Hastings term far from 0."""
    torch.manual_seed(seed)
    flow = cls.for_system(HO, n_layers=4, hidden=(16,), context_features=8, step_scale=step * SIGMA, **kwargs)
    with torch.no_grad():
        for name, parameter in flow.named_parameters():
            if name != "log_step":
                parameter.add_(scale * torch.randn_like(parameter))
    return flow


def chain(move, n_apply, sampler_state=None):
    """Positions (n_apply, 3, 3) nm after each apply."""
    thermodynamic_state, sampler_state = HO.thermodynamic_state(), sampler_state or HO.sampler_state()
    context_cache = reference_cache()
    out = np.empty((n_apply, HO.n_atoms, 3))
    for i in range(n_apply):
        move.apply(thermodynamic_state, sampler_state, context_cache=context_cache)
        out[i] = sampler_state.positions.value_in_unit(unit.nanometer)
    return out


def z_scores(x):
    """(sampled - exact) / standard error for every mean, variance and one cross-covariance."""
    r0, n = HO.positions_nm, HO.n_atoms
    d = x - r0
    series = [(d[:, i, k], 0.0) for i in range(n) for k in range(3)]
    series += [(d[:, i, k] ** 2, SIGMA**2 * (n - 1) / n) for i in range(n) for k in range(3)]
    series += [(d[:, 0, 0] * d[:, 1, 0], -SIGMA**2 / n), (d[:, 1, 2] * d[:, 2, 2], -SIGMA**2 / n)]
    z = []
    for values, exact in series:
        mean, error = mean_and_error(values)
        z.append((mean - exact) / error)
    return np.array(z)


class NoReverseTerm(ConditionalFlow):
    """Control: the Hastings term without log p(x, v | x', v')."""

    def propose(self, x, n, generator=None):
        with torch.no_grad():
            xs = torch.as_tensor(np.asarray(x))[None].expand(n, -1, -1)
            v = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
            x_new, v_new, log_forward = self.sample(xs, v, generator=generator)
            return x_new.numpy(), auxiliary_log_hastings(log_forward, np.zeros(n), v, v_new)


class Symmetric(ConditionalFlow):
    """Control: the proposal treated as symmetric (Hastings term 0)."""

    def propose(self, x, n, generator=None):
        x_new, log_hastings = super().propose(x, n, generator)
        return x_new, np.zeros_like(log_hastings)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("condition_on_velocities", [False, True])
def test_centred_harmonic_averages_are_exact(condition_on_velocities):
    move = TimewarpMove(random_flow(condition_on_velocities=condition_on_velocities), n_proposals=10, seed=3)
    x = chain(move, 2000)
    assert 0.03 < move.fraction_accepted < 0.6 and move.n_invalid == 0
    np.testing.assert_allclose(x.mean(1), np.broadcast_to(HO.positions_nm.mean(0), (len(x), 3)), atol=1e-12)  # centre kept
    z = z_scores(x)
    assert np.abs(z).max() < N_SIGMA, np.round(z, 1)


@pytest.mark.parametrize("control", [NoReverseTerm, Symmetric])
def test_controls_with_a_wrong_hastings_term_fail_the_same_check(control):
    move = TimewarpMove(random_flow(control), n_proposals=10, seed=3)
    z = z_scores(chain(move, 2000))
    assert np.abs(z).max() > 2 * N_SIGMA, np.round(z, 1)


class FirstAcceptMove(TimewarpMove):
    """Control: an apply returns one state, the first accepted proposal of a batch (or the last rejection)."""

    def apply(self, thermodynamic_state, sampler_state, context_cache=None):
        n_accepted = self.n_accepted
        for _ in range(self.sample_batch_size):
            super().apply(thermodynamic_state, sampler_state, context_cache=context_cache)
            if self.n_accepted > n_accepted:
                return


def test_prefetch_is_exact_and_first_accept_is_not():
    # A symmetric random walk (identity couplings) twice too wide: acceptance ~5 %, much higher in the tails
    # than at the minimum, so first-accept (stationary density ~ mu(x) (1 - r(x)^B)) is visibly too wide.
    flow = random_flow(scale=0.0, step=2.0)
    prefetch = TimewarpMove(flow, n_proposals=1, seed=4, sample_batch_size=64)
    d2 = ((chain(prefetch, 16000) - HO.positions_nm) ** 2).sum((1, 2))
    exact = SIGMA**2 * 3 * (HO.n_atoms - 1)
    mean, error = mean_and_error(d2)
    assert abs(mean - exact) < N_SIGMA * error, (mean, error, exact)
    # A new batch only after an acceptance or when one is used up (not redrawn every step).
    assert prefetch.n_prefetched // 64 <= prefetch.n_accepted + prefetch.n_proposed // 64 + 1
    first_accept = FirstAcceptMove(flow, n_proposals=1, seed=4, sample_batch_size=64)
    mean_fa, error_fa = mean_and_error(((chain(first_accept, 2500) - HO.positions_nm) ** 2).sum((1, 2)))
    assert mean_fa - exact > N_SIGMA * error_fa, (mean_fa, error_fa, exact)


def test_adaptive_batch_size_follows_the_acceptance():
    move = TimewarpMove(random_flow(), n_proposals=20, seed=1, sample_batch_size=100, adaptive_batch_size=True)
    chain(move, 20)
    p = (move.n_accepted + 1) / (move.n_proposed + 2)
    assert move._prefetch.size <= 100 and move._batch_size() == min(100, math.ceil(math.log(0.1) / math.log(1 - p)))
    assert move._batch_size() > 5


# ---------------------------------------------------------------------------- failures
class NaNFlow(ConditionalFlow):
    def propose(self, x, n, generator=None):
        x_new, log_hastings = super().propose(x, n, generator)
        x_new[::2] = np.nan  # every other proposal is broken
        return x_new, log_hastings


def test_nan_proposals_are_rejected_and_counted():
    move = TimewarpMove(random_flow(NaNFlow, scale=0.0, step=0.5), n_proposals=40, seed=2, sample_batch_size=4)
    x = chain(move, 3)
    assert np.isfinite(x).all() and move.n_invalid > 0 and move.n_accepted > 0
    assert move.n_invalid + move.n_accepted <= move.n_proposed


def test_nan_current_state_is_an_error_not_a_rejection():
    move = TimewarpMove(random_flow(), n_proposals=3, seed=2)
    sampler_state = HO.sampler_state()
    sampler_state.positions = sampler_state.positions * float("nan")
    with pytest.raises(BrokenStateError, match="proposal is not at fault"):
        move.apply(HO.thermodynamic_state(), sampler_state, reference_cache())
    assert move.n_proposed == 0


def test_wrong_molecule_is_refused():
    four = systems.get("harmonic_oscillator", n_particles=4)
    with pytest.raises(ValueError, match="moves 3 atoms but the system has 4"):
        TimewarpMove(random_flow()).apply(four.thermodynamic_state(), four.sampler_state(), reference_cache())
    flow = random_flow()
    flow.metadata["fingerprint"] = "v2:" + "0" * 64  # another molecule with three atoms
    with pytest.raises(ValueError, match="made for another molecule"):
        TimewarpMove(flow, topology=HO.topology).apply(HO.thermodynamic_state(), HO.sampler_state(), reference_cache())
    TimewarpMove(random_flow(), topology=HO.topology).apply(HO.thermodynamic_state(), HO.sampler_state(), reference_cache())
    with pytest.raises(TypeError, match="propose"):
        TimewarpMove(object.__new__(type("Independence", (), {"sample": lambda s, n: 0, "log_prob": lambda s, x: 0})))


# ---------------------------------------------------------------------------- seeds, copies, storage
def test_same_seed_same_chain_and_copies_draw_independent_streams():
    flow = random_flow()
    a, b = chain(TimewarpMove(flow, n_proposals=5, seed=9), 20), chain(TimewarpMove(flow, n_proposals=5, seed=9), 20)
    np.testing.assert_array_equal(a, b)
    move = TimewarpMove(flow, n_proposals=5, seed=9)
    copies = [copy.deepcopy(move) for _ in range(2)]
    assert all(c.proposal is flow for c in copies) and [c.stream for c in copies] == [(0,), (1,)]
    first, second = chain(copies[0], 20), chain(copies[1], 20)
    assert not np.array_equal(first, second)


def test_a_move_restored_from_storage_continues_the_uninterrupted_chain(tmp_path):
    save_conditional_flow(random_flow(), tmp_path / "tw.pt")
    flow = load_conditional_flow(tmp_path / "tw.pt")
    move = TimewarpMove(flow, n_proposals=3, seed=6, sample_batch_size=16)
    sampler_state = HO.sampler_state()
    chain(move, 4, sampler_state)
    batch = move._prefetch  # stored mid-batch, at its origin: the restored move must draw the same batch again
    assert batch.start < move.n_drawn < batch.start + batch.size
    assert np.array_equal(batch.origin, sampler_state.positions.value_in_unit(unit.nanometer))
    stored = serialize(move)
    assert stored["proposal"] == {"checkpoint_path": str((tmp_path / "tw.pt").resolve()), "checkpoint_sha256": flow.checkpoint_sha256,
                                  "loader": "openmm_flowplugin.conditional_flow"}
    assert "tensor" not in repr(stored).lower()
    restored = copy.deepcopy(deserialize(stored))  # what openmmtools' from_storage does
    assert restored.proposal is flow and restored.stream == move.stream and restored.n_drawn == move.n_drawn
    other_state = copy.deepcopy(sampler_state)
    expected = chain(move, 6, sampler_state)
    np.testing.assert_array_equal(chain(restored, 6, other_state), expected)
    assert restored.statistics == move.statistics


def mean_acceptance(flow, energy, starts, seed=0):
    """Mean min(1, alpha) of one TimewarpMove proposal from each start (same formula as the move)."""
    generator = torch.Generator().manual_seed(seed)
    log_alpha = []
    for x in starts:
        x_new, log_hastings = flow.propose(x, 1, generator=generator)
        u = energy.energy_and_forces(np.concatenate([x[None], x_new]))[0]
        log_alpha.append(u[0] - u[1] + log_hastings[0])
    return float(np.mean(np.exp(np.minimum(np.array(log_alpha), 0.0))))


def test_fine_tuning_raises_the_acceptance_of_a_too_wide_proposal():
    """A symmetric random walk five wells wide (acceptance 0.4 %): the acceptance loss alone shrinks it."""
    from openmm_flowplugin.bridge.energy import OpenMMEnergy
    from openmm_flowplugin.flows.conditional_training import fine_tune_acceptance

    rng = np.random.default_rng(3)
    frames = np.asarray(HO.positions_nm) + SIGMA * rng.normal(size=(400, HO.n_atoms, 3))  # Boltzmann samples of the wells
    energy = OpenMMEnergy(HO.system, HO.temperature, platform="Reference")
    torch.manual_seed(0)
    flow = ConditionalFlow.for_system(HO, n_layers=2, hidden=(16,), context_features=8, step_scale=5 * SIGMA)
    before = mean_acceptance(flow, energy, frames[:100])
    history = fine_tune_acceptance(flow, (frames[:-1], frames[1:]), energy, n_steps=150, batch_size=32, likelihood_weight=0.0,
                                   learning_rate=3e-2, seed=1, progress=False, rotations=False)  # wells fixed in space
    after = mean_acceptance(flow, energy, frames[:100])
    assert len(history) == 150 and history.n_nonfinite_samples == 0
    assert before < 0.01 and after > 0.3, (before, after)  # measured 0.004 -> 0.59
    with pytest.raises(Exception, match="energy evaluates 22 atoms but the flow moves 3"):
        fine_tune_acceptance(flow, (frames[:-1], frames[1:]), OpenMMEnergy(systems.get("alanine_dipeptide_vacuum").system, 300.0,
                             platform="Reference"), n_steps=1, progress=False)
