"""Benchmark replica exchange with FlowMCMove over MPI ranks: iterations per second on 1 and on 2 ranks.

Alanine dipeptide in vacuum, the shipped flow, 4 temperatures (300-600 K, geometric), openmmtools'
ReplicaExchangeSampler; each iteration and state: ``--md-steps`` Langevin steps (1 fs) then a FlowMCMove
of ``--proposals`` proposals; Reference platform (the fastest for 22 atoms in vacuum), one OpenMM and one
torch thread per rank. The same workload runs twice in one invocation, as a plain process (1 rank) and
under ``mpirun -n 2``, each after ``--warmup`` untimed iterations; the ratio of their rates is the
speed-up (ideal: 2 on 2 free cores; openmmtools gives each rank whole replicas, so 4 replicas split 2 + 2).

Where the time goes, per rank (wall time of the timed iterations):

- work: inside openmmtools' per-replica tasks (``_propagate_replica``, ``_compute_replica_energies``);
- storage: rank 0's writes (``_report_iteration``);
- communication: inside ``mpiplus.distribute`` (propagation, energies, the gather of move statistics) but
  outside the tasks it ran: message passing *and* waiting for the slower rank;
- other: the rest: replica mixing on rank 0 and its broadcast (where ranks > 0 wait while rank 0 writes
  storage), Python overhead.

    python benchmarks/bench_mpi.py [--iterations 20] [--md-steps 50] [--proposals 10] [--ranks 2]

Needs the ``mpi`` extra (mpi4py and an ``mpirun``, e.g. ``pip install mpich mpi4py``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KELVINS = [300.0 * 2.0 ** (i / 3) for i in range(4)]  # 300, 378, 476, 600 K


def _worker(args):
    import mpiplus
    import numpy as np
    import openmm
    from openmm import unit
    from openmmtools import cache, mcmc, multistate

    from openmm_flowplugin import load_flow, systems
    from openmm_flowplugin._threads import package_threads
    from openmm_flowplugin.mcmc import FlowMCMove

    timers = {"work": 0.0, "storage": 0.0, "mpi": 0.0}
    depth = {"mpi": 0}

    def timed(name, function):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                elapsed = time.perf_counter() - start
                timers[name] += elapsed
                if name == "work" and depth["mpi"]:
                    timers["mpi"] -= elapsed  # work done inside a collective is not communication
        return wrapper

    def collective(function):
        def wrapper(*a, **k):
            depth["mpi"] += 1
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                depth["mpi"] -= 1
                if not depth["mpi"]:
                    timers["mpi"] += time.perf_counter() - start
        return wrapper

    sampler_class = multistate.ReplicaExchangeSampler
    for method in ("_propagate_replica", "_compute_replica_energies"):
        setattr(sampler_class, method, timed("work", getattr(sampler_class, method)))
    sampler_class._report_iteration = timed("storage", sampler_class._report_iteration)
    mpiplus.distribute = collective(mpiplus.distribute)
    # The samplers call mpiplus.distribute through the module, so the patch above reaches them.

    comm = mpiplus.get_mpicomm()
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    ala = systems.get("alanine_dipeptide_vacuum")
    flow = load_flow("alanine_dipeptide_vacuum", system=ala)
    moves = [mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond, n_steps=args.md_steps)] if args.md_steps else []
    move = mcmc.SequenceMove(moves + [FlowMCMove(flow, n_proposals=args.proposals, seed=1, topology=ala.topology)])
    sampler = sampler_class(mcmc_moves=move, number_of_iterations=args.warmup + args.iterations, online_analysis_interval=None)
    platform = openmm.Platform.getPlatformByName("Reference")
    sampler.energy_context_cache = cache.ContextCache(platform=platform)
    sampler.sampler_context_cache = cache.ContextCache(platform=platform)
    states = [ala.thermodynamic_state(temperature=t * unit.kelvin) for t in KELVINS]
    reporter = multistate.MultiStateReporter(args.storage, checkpoint_interval=args.checkpoint_interval)
    sampler.create(states, [ala.sampler_state() for _ in states], reporter)
    np.random.seed(0)
    with package_threads():
        sampler.run(args.warmup)
        for key in timers:
            timers[key] = 0.0
        if comm is not None:
            comm.barrier()
        start = time.perf_counter()
        sampler.run(args.iterations)
        if comm is not None:
            comm.barrier()
        wall = time.perf_counter() - start
    flow_moves = [m.move_list[-1] for m in sampler._mcmc_moves]
    result = dict(rank=rank, ranks=size, wall=wall, **timers,
                  acceptance=sum(m.n_accepted for m in flow_moves) / sum(m.n_proposed for m in flow_moves))
    results = [result] if comm is None else comm.gather(result, root=0)
    if rank == 0:
        Path(args.result).write_text(json.dumps(results))
    sampler._reporter.close()


def _launch(args, ranks, folder):
    bin_dir = Path(sys.executable).parent
    result = folder / f"ranks{ranks}.json"
    command = [sys.executable, __file__, "--worker", "--storage", str(folder / f"ranks{ranks}.nc"), "--result", str(result),
               "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--md-steps", str(args.md_steps),
               "--proposals", str(args.proposals), "--checkpoint-interval", str(args.checkpoint_interval)]
    if ranks > 1:
        mpirun = shutil.which("mpirun", path=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        if mpirun is None:
            raise SystemExit("error: no mpirun on PATH or next to this Python: pip install mpich mpi4py (the mpi extra).")
        command = [mpirun, "-n", str(ranks), *command]
    env = dict(os.environ, OPENMM_CPU_THREADS="1", OPENMM_FLOWPLUGIN_TORCH_THREADS="1", OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (Context creation, flow batch)")
    parser.add_argument("--md-steps", type=int, default=50, help="Langevin steps per iteration and state")
    parser.add_argument("--proposals", type=int, default=10, help="flow proposals per iteration and state")
    parser.add_argument("--checkpoint-interval", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2, help="rank count compared with 1")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    with tempfile.TemporaryDirectory() as folder:
        runs = {ranks: _launch(args, ranks, Path(folder)) for ranks in (1, args.ranks)}
    print(f"Replica exchange, alanine dipeptide (vacuum), {len(KELVINS)} temperatures, {args.md_steps} MD steps + "
          f"{args.proposals} flow proposals per state and iteration, {args.iterations} timed iterations\n")
    print("| ranks | rank | iterations/s | work | storage | communication | other | flow acceptance |")
    print("|---|---|---|---|---|---|---|---|")
    rates = {}
    for ranks, results in runs.items():
        rates[ranks] = args.iterations / max(r["wall"] for r in results)
        for r in results:
            other = r["wall"] - r["work"] - r["storage"] - r["mpi"]
            shares = " | ".join(f"{100 * t / r['wall']:.0f} %" for t in (r["work"], r["storage"], r["mpi"], other))
            print(f"| {ranks} | {r['rank']} | {rates[ranks]:.2f} | {shares} | {r['acceptance']:.2f} |")
    print(f"\nspeed-up on {args.ranks} ranks: {rates[args.ranks] / rates[1]:.2f}x (ideal {args.ranks}x on {args.ranks} free cores)")


if __name__ == "__main__":
    main()
