"""Transfer: one TransferableConditionalFlow trained on several dipeptides, exact TimewarpMove on a held-out one, against MD.

One process, one torch thread, CPU time by ``time.process_time`` (2 shared cores):

1. training data: Langevin MD (amber14, 310 K, 1 fs, 1/ps, Reference) of each ``--train`` dipeptide (built from
   alanine dipeptide by PDBFixer mutation; vacuum by default, OBC1 with ``--implicit``, ~15x slower here),
   ``--md-ps`` ps each, a frame every ``--stride`` fs;
2. training: one TransferableConditionalFlow (atom features from elements and bonds, distance-kernel attention)
   by likelihood on the pairs of all training molecules, ``--lag`` frames apart, for ``--train-seconds`` CPU s;
3. for the first training molecule and the held-out one: log alpha of 300 proposals from MD frames split into
   -du, the velocity term and the density term (median, 10-90 %), and the mean acceptance; then ``--budget`` CPU
   seconds each of plain MD and TimewarpMove (``--n-proposals`` MH steps per apply), with acceptance, ESS per
   CPU-second of sin/cos phi, psi (the smallest), of the slowest TICA component (deeptime; TICA fitted on the
   MD run of that molecule, features sin/cos of all backbone and side-chain torsions, lag 1 ps) and basin
   transitions per CPU-second.

Prints markdown tables.

    python benchmarks/bench_timewarp_transfer.py [--train ala,val,ser,leu] [--held-out thr] [--md-ps 200]
        [--train-seconds 600] [--budget 60]
"""

import argparse
import time

import numpy as np
import openmm
import torch
from bench_timewarp import fit_tica, log_alpha_terms, md, summary, train_for
from openmm import unit
from openmmtools import cache, mcmc

from openmm_flowplugin import systems
from openmm_flowplugin.bridge.energy import OpenMMEnergy
from openmm_flowplugin.flows import TransferableConditionalFlow, trajectory_pairs
from openmm_flowplugin.mcmc import TimewarpMove
from openmm_flowplugin.simulation.md import simulate


def build(code, implicit):
    return systems.get(f"dipeptide_{code}" + ("" if implicit else "_vacuum"))


def sample_timewarp(flow, molecular_system, start_positions, budget, n_proposals, batch, seed):
    move = TimewarpMove(flow, n_proposals=n_proposals, sample_batch_size=batch, adaptive_batch_size=True, seed=seed,
                        topology=molecular_system.topology)
    sampler = mcmc.MCMCSampler(molecular_system.thermodynamic_state(), molecular_system.sampler_state(start_positions), move)
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    frames, start = [], time.process_time()
    while time.process_time() - start < budget:
        sampler.run(1, context_cache=context_cache)
        frames.append(sampler.sampler_state.positions.value_in_unit(unit.nanometer))
    return np.array(frames), time.process_time() - start, move


def evaluate(label, flow, molecular_system, args):
    """Diagnosis and sampling rows for one molecule."""

    reference = simulate(molecular_system, int(args.md_ps * 1000), report_interval=args.stride, equilibration_steps=5000,
                         platform="Reference", seed=args.seed + 7, progress=False)
    xyz = reference.xyz.astype(np.float64)
    energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature, platform="Reference")
    terms, acceptance, jump = log_alpha_terms(flow, energy, xyz[:: max(1, len(xyz) // 300)][:300], molecular_system.mdtraj_topology,
                                              args.seed)
    print(f"\n{label}: log alpha over 300 proposals from MD frames, median [10 %, 90 %]; mean acceptance {acceptance:.3g}")
    for name, value in terms.items():
        value = value[np.isfinite(value)]
        print(f"  {name}: {np.median(value):.3g} [{np.quantile(value, 0.1):.3g}, {np.quantile(value, 0.9):.3g}]")

    tica = fit_tica(xyz, molecular_system.mdtraj_topology, 1000 // args.stride)
    start_positions = xyz[-1] * unit.nanometer
    frames, cpu = md(molecular_system, start_positions, args.budget, 10, args.seed)
    rows = [summary(f"{label}: MD (frame every 10 fs)", frames, cpu, molecular_system.mdtraj_topology, tica=tica)]
    frames, cpu, move = sample_timewarp(flow, molecular_system, start_positions, args.budget, args.n_proposals, args.batch, args.seed)
    rows.append(summary(f"{label}: TimewarpMove ({args.n_proposals} MH steps/apply)", frames, cpu, molecular_system.mdtraj_topology,
                        move.fraction_accepted, tica=tica))
    print(f"  TimewarpMove: {move.n_proposed} proposals, {move.n_accepted} accepted, {move.n_invalid} invalid")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="ala,val,ser,leu", help="comma-separated residues of the training dipeptides")
    parser.add_argument("--held-out", default="thr")
    parser.add_argument("--implicit", action="store_true", help="amber14 + OBC1 (Timewarp's 2AA set) instead of vacuum")
    parser.add_argument("--md-ps", type=float, default=200.0, help="training MD per molecule, ps")
    parser.add_argument("--stride", type=int, default=10, help="fs between training frames")
    parser.add_argument("--lag", type=int, default=1, help="tau in training frames")
    parser.add_argument("--train-seconds", type=float, default=600.0)
    parser.add_argument("--budget", type=float, default=60.0, help="CPU seconds per sampling method and molecule")
    parser.add_argument("--n-proposals", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    training, start = [], time.process_time()
    for code in args.train.split(","):
        molecular_system = build(code, args.implicit)
        trajectory = simulate(molecular_system, int(args.md_ps * 1000), report_interval=args.stride, equilibration_steps=5000,
                              platform="Reference", seed=args.seed, progress=False)
        training.append((molecular_system, trajectory_pairs(trajectory.xyz.astype(np.float64), args.lag)))
    data_cpu = time.process_time() - start
    n_pairs = sum(len(p[0]) for _, p in training)
    print(f"training MD: {len(training)} dipeptides x {args.md_ps:g} ps ({n_pairs} pairs, lag {args.lag * args.stride} fs) "
          f"in {data_cpu:.1f} CPU s")

    flow = TransferableConditionalFlow(n_layers=args.layers, hidden=args.hidden, n_rounds=args.rounds, step_scale=0.005,
                                       metadata=dict(training_molecules=[m.name for m, _ in training]))
    history, steps, train_cpu = train_for(args.train_seconds, flow, training, batch_size=64, chunk=100, seed=args.seed)
    print(f"training: {steps} steps in {train_cpu:.1f} CPU s; loss first/last 100: {np.mean(history[:100]):.1f} / "
          f"{np.mean(history[-100:]):.1f} nats per pair")

    rows = evaluate(f"{training[0][0].name} (trained on)", flow.bound_to(training[0][0]), training[0][0], args)
    held_out = build(args.held_out, args.implicit)
    rows += evaluate(f"{held_out.name} (held out)", flow.bound_to(held_out), held_out, args)

    print("\n| molecule: method | frames | CPU s | acceptance | ESS/CPU-s sin/cos phi,psi (min) | ESS/CPU-s slowest TICA "
          "| transitions/CPU-s | phi>0 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['n']} | {r['cpu']:.0f} | {r['acceptance']:.3g} | {r['ess_angles']:.3g} | {r['ess_tica']:.3g} | "
              f"{r['transitions']:.3g} | {r['phi_positive']:.3f} |")
    print(f"\ntraining data {data_cpu:.0f} CPU s and training {train_cpu:.0f} CPU s, not counted in the sampling rows")


if __name__ == "__main__":
    main()
