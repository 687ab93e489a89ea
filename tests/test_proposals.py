"""Proposal helpers: rigid alignment, the Metropolis-Hastings ratio, and the proposal buffer."""

import copy

import numpy as np
import openmm
import pytest
import torch
from openmmtools import cache

from openmm_flowplugin import systems
from openmm_flowplugin.mcmc import FlowMCMove
from openmm_flowplugin.proposals import GaussianProposal, ProposalBuffer, kabsch_align, metropolis_hastings_log_ratio


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


# ---------------------------------------------------------------------------- kabsch_align
def test_kabsch_recovers_a_rigid_motion_single_and_batched():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(22, 3))
    moved = np.stack([reference @ random_rotation(rng).T + rng.normal(size=3) for _ in range(5)])
    np.testing.assert_allclose(kabsch_align(moved, reference), np.broadcast_to(reference, moved.shape), atol=1e-12)
    np.testing.assert_allclose(kabsch_align(moved[0], reference), reference, atol=1e-12)
    aligned = kabsch_align(torch.from_numpy(moved), torch.from_numpy(reference))
    assert torch.is_tensor(aligned) and aligned.dtype == torch.float64


def test_kabsch_never_reflects_and_both_paths_agree():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(10, 3))
    mirrored = reference * np.array([1.0, 1.0, -1.0])  # a chiral molecule's mirror image: no rotation overlays it
    for x in (mirrored, rng.normal(size=(10, 3))):
        single, batched = kabsch_align(x, reference), kabsch_align(x[None], reference)[0]
        np.testing.assert_allclose(single, batched, atol=1e-12)
        # aligned is a proper rigid motion of x: same internal distances, same handedness
        np.testing.assert_allclose(np.linalg.norm(single[:, None] - single, axis=-1), np.linalg.norm(x[:, None] - x, axis=-1), atol=1e-12)
        rotation = np.linalg.lstsq(x - x.mean(0), single - single.mean(0), rcond=None)[0]
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        np.testing.assert_allclose(single.mean(0), reference.mean(0), atol=1e-12)



@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex128, np.float16])
def test_kabsch_refuses_positions_that_are_not_real_floats(dtype):
    reference = np.random.default_rng(3).normal(size=(5, 3))
    with pytest.raises(TypeError, match=f"x have dtype {np.dtype(dtype).name}"):
        kabsch_align(reference.astype(dtype), reference)  # complex used to lose its imaginary part silently
    with pytest.raises(TypeError, match=f"reference have dtype {np.dtype(dtype).name}"):
        kabsch_align(torch.from_numpy(reference), reference.astype(dtype))
    aligned = kabsch_align(reference.astype(np.float32), reference)  # float32 is computed in float64
    assert aligned.dtype == np.float64
    np.testing.assert_allclose(aligned, reference, atol=1e-6)

# ---------------------------------------------------------------------------- metropolis_hastings_log_ratio
def test_scalar_and_array_log_ratio_agree_including_invalid_values():
    rng = np.random.default_rng(2)
    values = np.concatenate((rng.normal(size=40) * 10, [np.nan, np.inf, -np.inf, 0.0]))
    cases = rng.choice(values, size=(200, 4))
    arrays = metropolis_hastings_log_ratio(*cases.T)
    for row, expected in zip(cases, arrays):
        scalar = metropolis_hastings_log_ratio(*map(float, row))
        assert isinstance(scalar, float)
        assert scalar == expected or (np.isnan(scalar) and np.isnan(expected))
    assert not np.isnan(arrays).any()
    assert metropolis_hastings_log_ratio(0.0, np.nan, 0.0, 0.0) == -np.inf


# ---------------------------------------------------------------------------- ProposalBuffer
class RecordingGaussian(GaussianProposal):
    """Keeps every configuration it draws, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn, self.calls = [], 0

    def sample(self, n, generator=None):
        x, log_q = super().sample(n, generator)
        self.drawn.extend(x.numpy())
        self.calls += 1
        return x, log_q


def test_buffer_hands_out_every_draw_once_in_order():
    proposal = RecordingGaussian([[0.0, 0.0, 0.0]], 0.1, seed=3)
    buffer = ProposalBuffer(proposal, batch_size=8)
    taken = [buffer.take(n)[0] for n in (3, 3, 3, 20, 1)]
    np.testing.assert_array_equal(np.concatenate(taken), np.array(proposal.drawn)[:30])
    assert proposal.calls == 4 and len(proposal.drawn) == 32 and buffer.n_buffered == 2  # batches 0-3, each drawn once
    x, log_q = buffer.take(2)
    np.testing.assert_allclose(log_q, proposal.log_prob(torch.from_numpy(x)).numpy())
    # draws are addressed by position: asking again for old positions gives the same draws
    np.testing.assert_array_equal(buffer.draws(0, 3)[0], taken[0])
    again = ProposalBuffer(RecordingGaussian([[0.0, 0.0, 0.0]], 0.1), batch_size=8, seed=buffer.seed)
    np.testing.assert_array_equal(again.draws(10, 5)[0], np.concatenate(taken)[10:15])
    other_stream = ProposalBuffer(RecordingGaussian([[0.0, 0.0, 0.0]], 0.1), batch_size=8, seed=buffer.seed, stream=(1,))
    assert not np.isin(other_stream.draws(0, 30)[0], np.concatenate(taken)).any()


def test_buffer_errors_keep_what_it_had():
    class SometimesWrongShape(RecordingGaussian):
        broken = False

        def sample(self, n, generator=None):
            x, log_q = super().sample(n, generator)
            return (x[:, :, :2], log_q) if self.broken else (x, log_q)

    proposal = SometimesWrongShape([[0.0, 0.0, 0.0]], 0.1, seed=4)
    buffer = ProposalBuffer(proposal, batch_size=4)
    buffer.take(3)
    proposal.broken = True
    with pytest.raises(ValueError, match=r"expected \(4, 1, 3\)"):
        buffer.take(2)
    assert buffer.n_buffered == 1
    np.testing.assert_array_equal(buffer.take(1)[0][0], proposal.drawn[3])
    with pytest.raises(ValueError, match="sample_batch_size"):
        ProposalBuffer(proposal, batch_size=0)


class ShiftedGaussian(torch.nn.Module):
    """A torch proposal with a trainable mean: in-place updates must empty the buffer."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(1, 3, dtype=torch.float64))
        self.scale = float(scale)

    n_atoms = 1

    def sample(self, n, generator=None):
        x = self.mean + self.scale * torch.randn(n, 1, 3, dtype=torch.float64, generator=generator)
        return x, self.log_prob(x)

    def log_prob(self, x):
        return -0.5 * (((x - self.mean) / self.scale) ** 2).sum((-2, -1))


def test_buffer_is_emptied_when_the_proposal_is_trained_in_place():
    proposal = ShiftedGaussian()
    buffer = ProposalBuffer(proposal, batch_size=64)
    buffer.take(1)
    with torch.no_grad():
        proposal.mean += 100.0  # as an optimizer step does
    x, log_q = buffer.take(10)
    assert np.all(x > 90.0), "draws from the old parameters were handed out"
    np.testing.assert_allclose(log_q, proposal.log_prob(torch.from_numpy(x)).detach().numpy())


def test_move_copies_draw_independent_streams_and_never_reuse_a_draw():
    ho = systems.get("harmonic_oscillator")
    proposal = RecordingGaussian(ho.positions_nm, ho.reference.std)
    move = FlowMCMove(proposal, n_proposals=3, seed=6, sample_batch_size=16)
    copies = [move] + [copy.deepcopy(move) for _ in range(2)]
    assert [c.stream for c in copies] == [(), (0,), (1,)]
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    used = {id(c): [] for c in copies}

    for c in copies:  # record which draws each copy proposes (the proposal is not rigid-invariant: used as drawn)
        original = c._propose_positions

        def spy(positions, original=original, c=c):
            proposed, ratio = original(positions)
            used[id(c)].append(proposed.copy())
            return proposed, ratio

        c._propose_positions = spy
    for _ in range(7):  # 21 draws per copy: crosses a batch boundary
        for c in copies:
            c.apply(ho.thermodynamic_state(), ho.sampler_state(), context_cache)
    everything = np.concatenate([np.array(u) for u in used.values()])
    assert len(np.unique(everything.reshape(len(everything), -1), axis=0)) == len(everything) == 63
    assert all(c.n_drawn == 21 for c in copies)
    # the same seed and stream give the same draws, in any process or copy: a fresh move replays copy 1's chain
    replay = FlowMCMove(RecordingGaussian(ho.positions_nm, ho.reference.std), n_proposals=3, seed=6, sample_batch_size=16)
    replay.stream = (1,)
    np.testing.assert_array_equal(replay._proposal_buffer().draws(0, 21)[0], np.array(used[id(copies[2])]))


def test_move_recomputes_log_q_of_the_current_state_after_in_place_training():
    ho = systems.get("harmonic_oscillator")

    class CountingShifted(ShiftedGaussian):
        log_prob_calls = 0

        def log_prob(self, x):
            if x.shape[0] == 1:
                CountingShifted.log_prob_calls += 1
            return super().log_prob(x)

    proposal = CountingShifted(scale=ho.reference.std[0, 0])
    with torch.no_grad():
        proposal.mean.copy_(torch.as_tensor(ho.positions_nm))
    move = FlowMCMove(proposal, n_proposals=5, seed=7)
    state, sampler_state = ho.thermodynamic_state(), ho.sampler_state()
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    move.apply(state, sampler_state, context_cache)
    assert move.n_accepted > 0
    calls = CountingShifted.log_prob_calls
    move.apply(state, sampler_state, context_cache)  # current state came from the proposal: memo hit
    assert CountingShifted.log_prob_calls == calls
    with torch.no_grad():
        proposal.mean += 0.0  # an in-place update, even a null one, makes cached log q values stale
    move.apply(state, sampler_state, context_cache)
    assert CountingShifted.log_prob_calls == calls + 1
