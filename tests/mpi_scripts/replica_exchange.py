"""Replica exchange with FlowMCMove, run by tests/test_mpi.py as ``[mpirun -n N] python replica_exchange.py ...``.

Starts (or, with ``--resume``, continues) an openmmtools ReplicaExchangeSampler whose only move is a
FlowMCMove, on the Reference platform, storing every iteration. On rank 0 it writes ``SUMMARY`` (JSON)
at the end. With ``--record DIR`` every rank appends, after each completed iteration, the proposals its
moves used to ``DIR/draws_<tag>_rank<r>.json`` as ``[stream, index in stream, proposed positions]``.
With ``--die-after K`` rank 0 kills itself (SIGKILL) in the middle of iteration K + 1, as a crash would.

Systems: ``harmonic`` (one particle in a well, a GaussianProposal, no MD: the run is a deterministic
function of the seeds, so different rank counts and resumes must store identical trajectories),
``timewarp`` (three particles in wells, a TimewarpMove with a random-weight ConditionalFlow saved to
``tw_flow.pt`` in the working directory, no MD: deterministic too) and ``alanine`` (the shipped flow,
Langevin MD + flow moves: a smoke run). For ``timewarp`` each recorded row gains the stream position at
which the proposal's batch was drawn (``[stream, step, positions, batch start]``). ``--no-prefetch-sync``
(a control) drops the prefetch record from the statistics openmmtools exchanges between ranks, as
TimewarpMove did before it sent it.
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np
import openmm
from openmm import unit
from openmmtools import cache, mcmc, multistate

from openmm_flowplugin import load_flow, systems
from openmm_flowplugin.mcmc import FlowMCMove, TimewarpMove
from openmm_flowplugin.proposals import GaussianProposal

HARMONIC_TEMPERATURES = (300.0, 400.0, 533.0)
TIMEWARP_FLOW = "tw_flow.pt"
ALANINE_TEMPERATURES = (300.0, 400.0, 500.0, 600.0)

_draws = []  # (stream, index, positions) used by this rank's moves since the last flush
_die = {"armed": False}


def _rank():
    import mpiplus

    comm = mpiplus.get_mpicomm()
    return (0, 1) if comm is None else (comm.rank, comm.size)


def _spy_on_proposals():
    """Record every proposal a FlowMCMove uses (and die there when armed)."""
    original = FlowMCMove._propose_positions

    def recording(self, positions):
        if _die["armed"]:
            os.kill(os.getpid(), signal.SIGKILL)
        proposed, log_q_ratio = original(self, positions)
        index = self.n_drawn + self._pending.next - 1
        _draws.append([list(self.stream), int(index), np.asarray(proposed).ravel().tolist()])
        return proposed, log_q_ratio

    FlowMCMove._propose_positions = recording

    timewarp_original = TimewarpMove._propose_positions

    def timewarp_recording(self, positions):
        if _die["armed"]:
            os.kill(os.getpid(), signal.SIGKILL)
        proposed, log_q_ratio = timewarp_original(self, positions)
        step = self.n_drawn + self._pending
        _draws.append([list(self.stream), int(step), np.asarray(proposed).ravel().tolist(), int(self._prefetch.start)])
        return proposed, log_q_ratio

    TimewarpMove._propose_positions = timewarp_recording


def _drop_prefetch_sync():
    """Control: the statistics openmmtools exchanges between ranks without the prefetch record."""
    prop = TimewarpMove.statistics
    TimewarpMove.statistics = property(prop.fget, lambda self, value: prop.fset(self, {k: v for k, v in value.items() if k != "prefetch"}))


def _timewarp_flow():
    """A deliberately poor random-weight ConditionalFlow for the 3-particle oscillator, written once, loaded."""
    import torch

    from openmm_flowplugin.flows import ConditionalFlow, load_conditional_flow, save_conditional_flow

    ho = systems.get("harmonic_oscillator", n_particles=3)
    if not os.path.exists(TIMEWARP_FLOW):
        torch.manual_seed(0)
        flow = ConditionalFlow.for_system(ho, n_layers=2, hidden=(16,), context_features=8, step_scale=0.05)
        with torch.no_grad():
            for name, parameter in flow.named_parameters():
                if name != "log_step":
                    parameter.add_(0.1 * torch.randn_like(parameter))
        save_conditional_flow(flow, TIMEWARP_FLOW + f".{os.getpid()}")
        os.replace(TIMEWARP_FLOW + f".{os.getpid()}", TIMEWARP_FLOW)  # atomic: both ranks may write it
    return ho, load_conditional_flow(TIMEWARP_FLOW, system=ho)


def _flush(record, tag, rank):
    if record is None:
        return
    os.makedirs(record, exist_ok=True)
    path = os.path.join(record, f"draws_{tag}_rank{rank}.json")
    old = json.load(open(path)) if os.path.exists(path) else []
    with open(path + ".tmp", "w") as f:
        json.dump(old + _draws, f)
    os.replace(path + ".tmp", path)
    _draws.clear()


def _use_reference(sampler):
    platform = openmm.Platform.getPlatformByName("Reference")
    sampler.energy_context_cache = cache.ContextCache(platform=platform)
    sampler.sampler_context_cache = cache.ContextCache(platform=platform)


def _new_sampler(args):
    if args.system == "harmonic":
        ho = systems.get("harmonic_oscillator")
        # Wider than the hottest state's well (std 0.073 nm at 533 K): acceptance ~ 50-80 %.
        proposal = GaussianProposal(ho.positions_nm, 0.1, seed=args.seed + 1)
        move = FlowMCMove(proposal, n_proposals=args.proposals, seed=args.seed, sample_batch_size=16)
        molecular_system, kelvins, scheme = ho, HARMONIC_TEMPERATURES, "swap-neighbors"
    elif args.system == "timewarp":
        ho, flow = _timewarp_flow()
        move = TimewarpMove(flow, n_proposals=args.proposals, seed=args.seed, topology=ho.topology, sample_batch_size=64)
        molecular_system, kelvins, scheme = ho, HARMONIC_TEMPERATURES, "swap-neighbors"
    else:
        ala = systems.get("alanine_dipeptide_vacuum")
        flow = load_flow("alanine_dipeptide_vacuum", system=ala)
        flow_move = FlowMCMove(flow, n_proposals=args.proposals, seed=args.seed, topology=ala.topology, sample_batch_size=64)
        langevin = mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond, n_steps=args.md_steps)
        move = mcmc.SequenceMove([langevin, flow_move])
        molecular_system, kelvins, scheme = ala, ALANINE_TEMPERATURES[: args.states], "swap-all"
    sampler = multistate.ReplicaExchangeSampler(mcmc_moves=move, number_of_iterations=args.iterations,
                                                replica_mixing_scheme=scheme, online_analysis_interval=None)
    _use_reference(sampler)
    states = [molecular_system.thermodynamic_state(temperature=t * unit.kelvin) for t in kelvins]
    reporter = multistate.MultiStateReporter(args.storage, checkpoint_interval=1)
    sampler.create(states, [molecular_system.sampler_state() for _ in states], reporter)
    return sampler


def _flow_moves(sampler):
    return [m.move_list[-1] if hasattr(m, "move_list") else m for m in sampler._mcmc_moves]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", choices=("harmonic", "timewarp", "alanine"), default="harmonic")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--iterations", type=int, required=True, help="total iterations (also when resuming)")
    parser.add_argument("--proposals", type=int, default=5)
    parser.add_argument("--md-steps", type=int, default=10)
    parser.add_argument("--states", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--record", default=None)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument("--summary", default=None)
    parser.add_argument("--no-prefetch-sync", action="store_true")
    args = parser.parse_args()

    rank, size = _rank()
    _spy_on_proposals()
    if args.no_prefetch_sync:
        _drop_prefetch_sync()
    if args.resume:
        # A closed reporter: from_storage reads it on every rank, then opens it for appending on rank 0 only.
        # (Opening it with open_mode="a" here would open it for writing on every rank: HDF error under MPI.)
        sampler = multistate.ReplicaExchangeSampler.from_storage(multistate.MultiStateReporter(args.storage))
        sampler.number_of_iterations = args.iterations
        _use_reference(sampler)
    else:
        sampler = _new_sampler(args)
    start_iteration, start = sampler.iteration, time.perf_counter()
    while sampler.iteration < args.iterations:
        # The replica swaps use numpy's global generator (rank 0 draws, then broadcasts): seed it by
        # iteration so that a resumed run makes the swaps the uninterrupted run made.
        np.random.seed([args.seed, sampler.iteration])
        if args.die_after is not None and sampler.iteration == args.die_after and rank == 0:
            _die["armed"] = True
        sampler.run(1)
        _flush(args.record, args.tag, rank)
    elapsed = time.perf_counter() - start
    if rank == 0 and args.summary:
        moves = _flow_moves(sampler)
        summary = dict(ranks=size, iterations=sampler.iteration, start_iteration=start_iteration, seconds=elapsed,
                       statistics=[m.statistics for m in moves], streams=[list(m.stream) for m in moves])
        with open(args.summary, "w") as f:
            json.dump(summary, f)
    sampler._reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
