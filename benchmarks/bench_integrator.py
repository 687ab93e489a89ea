"""FlowMCIntegrator: overhead with jumps off, and sampling of alanine dipeptide's phi > 0 basin.

1. Overhead: ``simulation.step`` CPU time of FlowMCIntegrator with ``jump_interval`` = 10**9 (jumps
   effectively off) over OpenMM's LangevinMiddleIntegrator, same system, platform and Simulation,
   runs interleaved, median of repeats. Goal: <= 5 %.
2. Alanine dipeptide in vacuum, 300 K, 1 fs, friction 1/ps: plain MD versus FlowMCIntegrator with the
   trained Boltzmann generator (``load_flow("alanine_dipeptide_vacuum")``) for a few jump intervals, each
   for the same CPU-time budget. Reported per CPU-second: phi-sign transitions (changes of the
   phi > 0 indicator between recorded frames; 0 < phi < 2.5 rad, so that beta-region fluctuations
   across phi = +-pi do not count) and effective samples of that indicator
   (variance / squared batch-means standard error, 20 batches), and their ratios to plain MD.

Run: ``python benchmarks/bench_integrator.py`` (about 3 minutes; ``--help`` for budgets).
"""

import argparse
import time

import numpy as np
import openmm
import torch
from openmm import app, unit

from openmm_flowplugin import systems
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.proposals import GaussianProposal

PHI_ATOMS = (4, 6, 8, 14)  # C(ACE) N CA C(ALA)
PHI_MAX = 2.5  # rad: "phi > 0" means the C7ax/alpha_L basin, not beta-region wiggles across phi = +-pi


def dihedral(x, atoms=PHI_ATOMS):
    """Dihedral angle in radians of frames x, shape=(n_frames, n_atoms, 3)."""
    p0, p1, p2, p3 = (x[:, i] for i in atoms)
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1, axis=1, keepdims=True)
    v = b0 - (b0 * b1).sum(1, keepdims=True) * b1
    w = b2 - (b2 * b1).sum(1, keepdims=True) * b1
    return np.arctan2((np.cross(b1, v) * w).sum(1), (v * w).sum(1))


def effective_samples(indicator, n_batches=20):
    values = np.asarray(indicator, dtype=np.float64)
    if values.var() == 0:
        return 0.0
    batches = values[: len(values) // n_batches * n_batches].reshape(n_batches, -1).mean(1)
    se2 = batches.var(ddof=1) / n_batches
    return float(min(len(values), values.var() / se2)) if se2 > 0 else float(len(values))


def make_simulation(ala, integrator, platform, seed):
    simulation = app.Simulation(ala.topology, ala.system, integrator, openmm.Platform.getPlatformByName(platform))
    simulation.context.setPositions(ala.positions)
    simulation.minimizeEnergy(maxIterations=200)
    simulation.context.setVelocitiesToTemperature(ala.temperature, seed)
    return simulation


def overhead(ala, args):
    proposal = GaussianProposal(ala.positions_nm, 0.01, seed=0)  # never used with jumps off
    runs = {
        "LangevinMiddleIntegrator": make_simulation(ala, openmm.LangevinMiddleIntegrator(ala.temperature, 1.0, 0.001), args.platform, 1),
        "FlowMCIntegrator (jumps off)": make_simulation(
            ala, FlowMCIntegrator(ala.temperature, 1.0, 0.001, proposal, jump_interval=10**9), args.platform, 1),
    }
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, simulation in runs.items():
            start = time.process_time()
            simulation.step(args.overhead_steps)
            times[name].append(time.process_time() - start)
    return {name: float(np.median(t)) / args.overhead_steps for name, t in times.items()}


def sample_phi(simulation, budget, stride):
    frames, start = [], time.process_time()
    while time.process_time() - start < budget:
        simulation.step(stride)
        frames.append(simulation.context.getState(positions=True).getPositions(asNumpy=True)._value)
    cpu = time.process_time() - start
    phi = dihedral(np.asarray(frames))
    positive = (phi > 0) & (phi < PHI_MAX)
    return {"cpu_s": cpu, "frames": len(phi), "ns": simulation.currentStep * 1e-6, "fraction": positive.mean(),
            "transitions": int(np.count_nonzero(np.diff(positive.astype(int)))), "ess": effective_samples(positive),
            "acceptance": getattr(simulation.integrator, "acceptance_rate", float("nan"))}


def load_trained_flow(name="alanine_dipeptide_vacuum"):
    """The shipped Boltzmann generator (``flows.load_flow`` or ``checkpoints.load_flow``), or exit saying why."""
    from openmm_flowplugin import flows
    from openmm_flowplugin.flows import checkpoints

    load_flow = getattr(flows, "load_flow", None) or getattr(checkpoints, "load_flow", None)
    try:
        return load_flow(name)
    except Exception as error:  # noqa: BLE001 - report any loader failure and how to proceed
        raise SystemExit(f"No trained flow for {name} ({error}). The sampling benchmark needs the shipped model; "
                         "rerun with --skip-sampling for the overhead only.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="Reference", help="OpenMM platform (default Reference: fastest for 22 atoms)")
    parser.add_argument("--overhead-steps", type=int, default=30000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--md-budget", type=float, default=40.0, help="CPU seconds of plain MD")
    parser.add_argument("--budget", type=float, default=25.0, help="CPU seconds per jump interval")
    parser.add_argument("--intervals", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--stride", type=int, default=20, help="steps between recorded frames")
    parser.add_argument("--flow", default="alanine_dipeptide_vacuum", help="registered name or .pt path of the flow")
    parser.add_argument("--skip-sampling", action="store_true", help="only measure the overhead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ala = systems.get("alanine_dipeptide_vacuum")

    per_step = overhead(ala, args)
    base = per_step["LangevinMiddleIntegrator"]
    print(f"\n### Overhead, alanine dipeptide vacuum, {args.platform} platform, median of {args.repeats} x {args.overhead_steps} steps\n")
    print("| integrator | CPU us/step | ratio |\n|---|---:|---:|")
    for name, value in per_step.items():
        print(f"| {name} | {value * 1e6:.2f} | {value / base:.3f} |")
    if args.skip_sampling:
        return

    flow = load_trained_flow(args.flow)
    results = {"plain MD (LangevinMiddle)": sample_phi(
        make_simulation(ala, openmm.LangevinMiddleIntegrator(ala.temperature, 1.0, 0.001), args.platform, 2), args.md_budget, args.stride)}
    for interval in args.intervals:
        integrator = FlowMCIntegrator(ala.temperature, 1.0, 0.001, flow, jump_interval=interval, system=ala.system, topology=ala.topology)
        results[f"FlowMC, jump every {interval} steps"] = sample_phi(make_simulation(ala, integrator, args.platform, 2), args.budget, args.stride)
    md = results["plain MD (LangevinMiddle)"]
    md_rate = {key: md[key] / md["cpu_s"] for key in ("transitions", "ess")}
    print(f"\n### Alanine dipeptide vacuum, 300 K, 1 fs, {args.platform}, frame every {args.stride} fs\n")
    print("| run | CPU s | ns | acc. rate | P(phi>0) | transitions | per CPU-s | ratio | ESS | per CPU-s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        t_rate, e_rate = r["transitions"] / r["cpu_s"], r["ess"] / r["cpu_s"]
        ratio = lambda a, b: f"{a / b:.3g}" if b > 0 else ("inf" if a > 0 else "n/a")  # noqa: E731
        print(f"| {name} | {r['cpu_s']:.1f} | {r['ns']:.3f} | {r['acceptance']:.3f} | {r['fraction']:.4f} | {r['transitions']} "
              f"| {t_rate:.3g} | {ratio(t_rate, md_rate['transitions'])} | {r['ess']:.0f} | {e_rate:.3g} | {ratio(e_rate, md_rate['ess'])} |")


if __name__ == "__main__":
    main()
