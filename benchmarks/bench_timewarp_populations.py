"""Populations and ESS of the phi/psi jump mixture in FlowMCIntegrator against plain MD, over several seeds, one model.

Alanine dipeptide in vacuum. As ``bench_timewarp.py --architecture internal-torsions --torsions backbone
--components 16 --lag 500``: 1 ns of training MD (a frame every 100 fs), one InternalCoordinateProposal trained
``--train-seconds`` CPU seconds on pairs 50 ps apart. Then for each seed, ``--budget`` CPU seconds each of plain
Langevin MD and of FlowMCIntegrator (a jump every ``--jump-interval`` steps) in both modes, all from the last
training frame. Prints, per run, the C5/beta population (|psi| > 2 rad) with its standard error from the
series' own statistical inefficiency, the ESS per CPU-second of sin/cos phi, psi (the smallest) and the jump
acceptance, and each chain's z against the same seed's MD.

    python benchmarks/bench_timewarp_populations.py [--budget 90] [--seeds 3 4]
"""

import argparse

import numpy as np
import torch
from openmm import unit

from bench_timewarp import backbone_torsions, md, summary, train_for
from openmm_flowplugin import systems
from openmm_flowplugin.flows import trajectory_pairs
from openmm_flowplugin.flows.internal_conditional import InternalCoordinateProposal
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.simulation.md import simulate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="CPU seconds per chain")
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--jump-interval", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    ala = systems.get("alanine_dipeptide_vacuum")
    trajectory = simulate(ala, 1_000_000, report_interval=100, equilibration_steps=5000, platform="Reference", seed=1, progress=False)
    flow = InternalCoordinateProposal.for_system(ala, hidden=(64, 64), components=16, moves="torsions",
                                                 torsions=backbone_torsions(ala.mdtraj_topology))
    train_for(args.train_seconds, flow, trajectory_pairs(trajectory.xyz.astype(np.float64), 500), batch_size=128, chunk=200, seed=1)
    start = trajectory.xyz[-1].astype(np.float64) * unit.nanometer
    print("| seed | chain | C5 population | z vs MD | ESS/CPU-s sin/cos phi, psi (min) | x MD | jump acceptance |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        frames, cpu = md(ala, start, args.budget, 10, seed)
        reference = summary("MD", frames, cpu, ala.mdtraj_topology)
        print(f"| {seed} | MD | {reference['c5']:.3f} ± {reference['c5_error']:.3f} | | {reference['ess_angles']:.3g} | 1 | |", flush=True)
        for mode in ("langevin", "exact"):
            integrator = FlowMCIntegrator(ala.temperature, 1.0 / unit.picosecond, 1.0 * unit.femtosecond, flow, jump_interval=args.jump_interval,
                                          system=ala.system, topology=ala.topology, seed=seed, mode=mode)
            frames, cpu = md(ala, start, args.budget, 10, seed, integrator=integrator)
            row = summary(mode, frames, cpu, ala.mdtraj_topology)
            z = (row["c5"] - reference["c5"]) / np.hypot(row["c5_error"], reference["c5_error"])
            print(f"| {seed} | FlowMCIntegrator, {mode} | {row['c5']:.3f} ± {row['c5_error']:.3f} | {z:.2f} | {row['ess_angles']:.3g} | "
                  f"{row['ess_angles'] / reference['ess_angles']:.2f} | {integrator.acceptance_rate:.3f} |", flush=True)


if __name__ == "__main__":
    main()
