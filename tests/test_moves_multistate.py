"""FlowMCMove inside openmmtools.multistate: storage as plain data, resume, shared models, exactness."""

import gc
import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit
from openmmtools import cache, mcmc
from openmmtools.multistate import MultiStateReporter, ReplicaExchangeSampler

from openmm_flowplugin import systems
from openmm_flowplugin.flows import checkpoints
from openmm_flowplugin.proposals.storage import ProposalStateError
from openmm_flowplugin.flows import BoltzmannGenerator
from openmm_flowplugin.mcmc import FlowMCMove
from openmm_flowplugin.proposals import GaussianProposal

TEMPERATURES = (300.0, 600.0)


def _use_reference(sampler):
    sampler.energy_context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    sampler.sampler_context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))


def _replica_exchange(molecular_system, move, path, n_iterations):
    sampler = ReplicaExchangeSampler(mcmc_moves=move, number_of_iterations=n_iterations)
    _use_reference(sampler)
    states = [molecular_system.thermodynamic_state(temperature=t) for t in TEMPERATURES]
    reporter = MultiStateReporter(str(path), checkpoint_interval=1)
    sampler.create(states, [molecular_system.sampler_state() for _ in states], reporter)
    return sampler, reporter


def _flow_moves(sampler):
    moves = sampler._mcmc_moves
    return [m.move_list[-1] if hasattr(m, "move_list") else m for m in moves]


def test_stored_as_plain_data_and_resumed_with_statistics(tmp_path):
    ho = systems.get("harmonic_oscillator")
    proposal = GaussianProposal(ho.positions_nm, 1.2 * ho.reference.std, seed=5)  # acceptance ~ 90 %
    sampler, reporter = _replica_exchange(ho, FlowMCMove(proposal, n_proposals=4, seed=6), tmp_path / "run.nc", 3)
    sampler.run()
    moves = _flow_moves(sampler)
    assert all(m.proposal is proposal for m in moves)  # per-state copies share the proposal
    assert [m.n_proposed for m in moves] == [12, 12]
    assert len({m.stream for m in moves}) == len(moves)  # independent streams per state
    statistics = [m.statistics for m in moves]
    reporter.close()
    del sampler, moves

    stored = MultiStateReporter(str(tmp_path / "run.nc"), open_mode="r")
    stored_moves = stored.read_mcmc_moves()
    stored.close()
    assert [m.statistics for m in stored_moves] == statistics

    resumed = ReplicaExchangeSampler.from_storage(MultiStateReporter(str(tmp_path / "run.nc"), open_mode="a"))
    _use_reference(resumed)
    resumed.extend(2)
    moves = _flow_moves(resumed)
    assert moves[0].proposal is moves[1].proposal is proposal
    assert [m.n_proposed for m in moves] == [20, 20]
    assert sum(m.n_accepted for m in moves) > sum(s["n_accepted"] for s in statistics)
    resumed._reporter.close()


def _tiny_flow(ala, path, seed):
    torch.manual_seed(seed)
    flow = BoltzmannGenerator.for_system(ala, torch.as_tensor(ala.positions_nm)[None], n_blocks=1, hidden=(8,))
    checkpoints.save_flow(flow, path, overwrite=True)


def test_md_plus_flow_resume_finds_model_or_fails_clearly(tmp_path):
    ala = systems.get("alanine_dipeptide_vacuum")
    checkpoint = tmp_path / "flow.pt"
    _tiny_flow(ala, checkpoint, seed=0)
    flow = checkpoints.load_flow(checkpoint)
    move = mcmc.SequenceMove([mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond, n_steps=10), FlowMCMove(flow, n_proposals=2, seed=1)])
    sampler, reporter = _replica_exchange(ala, move, tmp_path / "ala.nc", 2)
    sampler.run()
    assert all(m.proposal is flow and m.n_proposed == 4 for m in _flow_moves(sampler))
    reporter.close()
    stored = MultiStateReporter(str(tmp_path / "ala.nc"), open_mode="r")
    stored_state = stored.read_dict("mcmc_moves/move0")["move_list"][1]["proposal"]
    stored.close()
    assert stored_state == {"checkpoint_path": str(checkpoint.resolve()), "checkpoint_sha256": flow.checkpoint_sha256}

    resumed = ReplicaExchangeSampler.from_storage(MultiStateReporter(str(tmp_path / "ala.nc"), open_mode="a"))
    assert all(m.proposal is flow for m in _flow_moves(resumed))
    resumed._reporter.close()

    del sampler, resumed, move, flow
    gc.collect()
    _tiny_flow(ala, checkpoint, seed=1)  # the checkpoint changes under the stored run
    with pytest.raises(ProposalStateError, match="changed since the move was stored"):
        ReplicaExchangeSampler.from_storage(MultiStateReporter(str(tmp_path / "ala.nc"), open_mode="r"))


@pytest.mark.slow
def test_replica_exchange_per_state_variances_are_exact(tmp_path):
    ho = systems.get("harmonic_oscillator")
    proposal = GaussianProposal(ho.positions_nm, 2.5 * ho.reference.std, seed=7)
    n_iterations = 1500
    sampler, reporter = _replica_exchange(ho, FlowMCMove(proposal, n_proposals=2, seed=8), tmp_path / "run.nc", n_iterations)
    sampler.run()
    states = reporter.read_replica_thermodynamic_states()  # (n_iterations + 1, n_replicas)
    x = np.array([[s.positions.value_in_unit(unit.nanometer)[0] for s in reporter.read_sampler_states(i)] for i in range(1, n_iterations + 1)])
    reporter.close()
    from pymbar import timeseries

    for k, temperature in enumerate(TEMPERATURES):
        r2 = ((x - ho.positions_nm[0]) ** 2).sum(-1)[states[1:] == k] / 3  # per-coordinate variance samples
        g = timeseries.statistical_inefficiency(r2)
        error = r2.std(ddof=1) * math.sqrt(g / len(r2))
        exact = ho.reference.std[0, 0] ** 2 * temperature / 300.0
        assert abs(r2.mean() - exact) < 6 * error, (temperature, r2.mean(), error, exact)
