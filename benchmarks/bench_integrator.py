"""FlowMCIntegrator: overhead with jumps off, cost of one jump, and sampling of alanine dipeptide's phi > 0 basin.

1. Overhead: ``simulation.step`` CPU time of FlowMCIntegrator with ``jump_interval`` = 10**9 (jumps
   effectively off) over OpenMM's LangevinMiddleIntegrator, same system, platform and Simulation,
   runs interleaved, median of repeats. Goal: <= 5 %.
2. Alanine dipeptide in vacuum, 300 K, 1 fs, friction 1/ps: plain MD versus FlowMCIntegrator with the
   trained Boltzmann generator (``load_flow("alanine_dipeptide_vacuum")``) for a few jump intervals, each
   for the same CPU-time budget. Reported per CPU-second: phi-sign transitions (changes of the
   phi > 0 indicator between recorded frames; 0 < phi < 2.5 rad, so that beta-region fluctuations
   across phi = +-pi do not count) and effective samples of that indicator
   (variance / squared batch-means standard error, 20 batches), and their ratios to plain MD, for
   both ``mode="langevin"`` and ``mode="exact"`` (GHMC between jumps).
3. Cost of one jump and ns/day: alanine dipeptide in vacuum (Reference platform) and in OBC implicit
   solvent (CPU platform, ``--cpu-threads`` threads), each with the vacuum flow as proposal. Blocks of
   ``--cost-steps`` steps of plain LangevinMiddle and of FlowMCIntegrator at each jump interval run
   interleaved for ``--cost-rounds`` rounds (process CPU time). The time the proposal buffer spends in
   ``proposal.sample`` (one batch of ``sample_batch_size`` per 512 draws) is timed separately and
   amortized per draw, so a block that happens to draw a batch does not skew the medians. Cost of one
   jump = median over rounds of (flow block - its batch sampling - plain block) / jumps in the block,
   plus the amortized batch share; ns/day = 1 fs * 86400 s / (median CPU time per step incl. that share).

Run: ``python benchmarks/bench_integrator.py`` (about 4 minutes; ``--help`` for budgets;
``--sections cost`` for the jump cost only).
"""

import argparse
import os
import time

import numpy as np
import openmm
import torch
from openmm import app

from openmm_flowplugin import systems
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.proposals import GaussianProposal
from openmm_flowplugin.proposals.buffer import ProposalBuffer
from openmm_flowplugin.proposals.protocol import single_log_prob

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


def make_simulation(ala, integrator, platform, seed, properties=None):
    simulation = app.Simulation(ala.topology, ala.system, integrator, openmm.Platform.getPlatformByName(platform),
                                properties or {})
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
            "acceptance": getattr(simulation.integrator, "acceptance_rate", float("nan")),
            "md_acceptance": getattr(getattr(simulation.integrator, "_md", None), "acceptance_rate", float("nan"))}


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



def proposal_costs(flow, ala, batch_size=512, repeats=3):
    """CPU seconds of one buffered draw (a ``sample`` batch / its size) and of ``log q`` of one configuration.

    Both through the integrator's own code paths (``ProposalBuffer``, ``single_log_prob``), after a warm-up call.
    """
    buffer = ProposalBuffer(flow, batch_size, seed=0)
    x = np.asarray(ala.positions_nm, dtype=np.float64)
    draws, log_probs = [], []
    for k in range(repeats + 1):
        start = time.process_time()
        buffer.draws(k * batch_size, 1)
        draws.append((time.process_time() - start) / batch_size)
    for _ in range(51):
        start = time.process_time()
        single_log_prob(flow, x)
        log_probs.append(time.process_time() - start)
    return float(np.median(draws[1:])), float(np.median(log_probs[1:]))


def _timed(draw, record):
    """``draw`` that appends (CPU seconds, draws) to ``record``: batch sampling inside a block is taken out of it."""
    def timed(n, generator):
        start = time.process_time()
        result = draw(n, generator)
        record.append((time.process_time() - start, n))
        return result
    return timed


def jump_cost(name, platform, flow, args):
    """Interleaved blocks of plain LangevinMiddle and FlowMCIntegrator; per-step times, jump costs, ns/day."""
    ala = systems.get(name)
    properties = {"Threads": str(args.cpu_threads)} if platform == "CPU" and args.cpu_threads else {}
    n_steps = args.cost_steps[name.rsplit("_", 1)[1]]
    runs = {"plain": make_simulation(ala, openmm.LangevinMiddleIntegrator(ala.temperature, 1.0, 0.001), platform, 3,
                                     properties)}
    batches = {}
    for mode in args.cost_modes:
        for interval in args.intervals:
            integrator = FlowMCIntegrator(ala.temperature, 1.0, 0.001, flow, jump_interval=interval, mode=mode, seed=interval,
                                          system=ala.system, topology=ala.topology)
            integrator._draws._buffer._draw = _timed(integrator._draws._buffer._draw, batches.setdefault((mode, interval), []))
            runs[mode, interval] = make_simulation(ala, integrator, platform, 3, properties)
    share, log_prob = proposal_costs(flow, ala)
    blocks = {key: [] for key in runs}  # (CPU s, CPU s in batch sampling, jumps) per round
    for round_ in range(args.cost_rounds + 1):  # round 0 warms up (first batch, validation) and is dropped
        for key, simulation in runs.items():
            integrator, record = simulation.integrator, batches.get(key, [])
            n_before, jumps_before = len(record), getattr(integrator, "n_proposed", 0)
            start = time.process_time()
            simulation.step(n_steps)
            spent = time.process_time() - start
            sampling = sum(seconds for seconds, _ in record[n_before:])
            jumps = (getattr(integrator, "n_proposed", 0) - jumps_before) / getattr(integrator, "n_proposals", 1)
            if round_:
                blocks[key].append((spent, sampling, jumps))
    plain = np.median([b[0] for b in blocks["plain"]]) / n_steps
    rows = [{"run": "plain LangevinMiddle", "step_s": plain, "ratio": 1.0, "jump_ms": None, "acceptance": float("nan")}]
    for key, block in blocks.items():
        if key == "plain":
            continue
        mode, interval = key
        n_proposals = runs[key].integrator.n_proposals
        paired = [(b[0] - b[1] - p[0]) / b[2] for b, p in zip(block, blocks["plain"]) if b[2] > 0]
        step_s = np.median([b[0] - b[1] for b in block]) / n_steps + share * n_proposals / interval
        jump_ms = (np.median(paired) + share * n_proposals) * 1e3 if paired else float("nan")
        rows.append({"run": f"FlowMC {mode}, jump every {interval}", "step_s": step_s, "ratio": step_s / plain,
                     "jump_ms": jump_ms if mode == "langevin" else None,  # exact: GHMC steps cost more than plain MD
                     "jumps": int(sum(b[2] for b in block)), "share_ms": share * n_proposals * 1e3, "log_prob_ms": log_prob * 1e3,
                     "acceptance": runs[key].integrator.acceptance_rate})
    return rows


def print_cost(name, platform, rows, args):
    threads = f", {args.cpu_threads} thread(s)" if platform == "CPU" else ""
    print(f"\n### Cost of jumps, {name}, {platform}{threads}, 1 fs, median of {args.cost_rounds} interleaved rounds of "
          f"{args.cost_steps[name.rsplit('_', 1)[1]]} steps\n")
    print("| run | CPU ms / 100 steps | ns/day (1 core) | ratio to plain | jumps timed | ms per jump | of which batch share "
          "| of which log q(x) | acc. rate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        jump = "–" if r["jump_ms"] is None else f"{r['jump_ms']:.2f}"
        if r["jump_ms"] is not None and r["jumps"] < 20 * args.cost_rounds:
            jump = f"({jump})"  # under 20 jumps per block: within the noise of the block times
        share = "–" if "share_ms" not in r else f"{r['share_ms']:.2f}"
        log_prob = "–" if "log_prob_ms" not in r else f"{r['log_prob_ms']:.2f}"
        print(f"| {r['run']} | {r['step_s'] * 1e5:.2f} | {86400 * 1e-6 / r['step_s']:.1f} | {r['ratio']:.3f} | "
              f"{r.get('jumps', '–')} | {jump} | {share} | {log_prob} | {r['acceptance']:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=["overhead", "cost", "sampling"], default=["overhead", "cost", "sampling"])
    parser.add_argument("--platform", default="Reference", help="OpenMM platform in vacuum (default Reference: fastest for 22 atoms)")
    parser.add_argument("--overhead-steps", type=int, default=30000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--md-budget", type=float, default=40.0, help="CPU seconds of plain MD")
    parser.add_argument("--budget", type=float, default=25.0, help="CPU seconds per jump interval and mode")
    parser.add_argument("--intervals", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--modes", nargs="+", choices=["langevin", "exact"], default=["langevin", "exact"],
                        help="FlowMCIntegrator modes in the sampling section")
    parser.add_argument("--stride", type=int, default=20, help="steps between recorded frames")
    parser.add_argument("--flow", default="alanine_dipeptide_vacuum", help="registered name or .pt path of the flow")
    parser.add_argument("--cost-systems", nargs="+", choices=["vacuum", "implicit"], default=["vacuum", "implicit"])
    parser.add_argument("--implicit-platform", default="CPU", help="OpenMM platform in implicit solvent")
    parser.add_argument("--cpu-threads", type=int, default=1, help="threads of the CPU platform (0: OpenMM's default)")
    parser.add_argument("--cost-modes", nargs="+", choices=["langevin", "exact"], default=["langevin"])
    parser.add_argument("--cost-rounds", type=int, default=9, help="timed rounds of interleaved blocks")
    parser.add_argument("--cost-steps-vacuum", type=int, default=2000, help="steps per block in vacuum")
    parser.add_argument("--cost-steps-implicit", type=int, default=2000, help="steps per block in implicit solvent")
    parser.add_argument("--skip-sampling", action="store_true", help="leave out the sampling section")
    args = parser.parse_args()
    args.cost_steps = {"vacuum": args.cost_steps_vacuum, "implicit": args.cost_steps_implicit}
    torch.set_num_threads(1)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, OpenMM {openmm.__version__}, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ala = systems.get("alanine_dipeptide_vacuum")

    if "overhead" in args.sections:
        per_step = overhead(ala, args)
        base = per_step["LangevinMiddleIntegrator"]
        print(f"\n### Overhead, alanine dipeptide vacuum, {args.platform} platform, median of {args.repeats} x {args.overhead_steps} steps\n")
        print("| integrator | CPU us/step | ratio |\n|---|---:|---:|")
        for name, value in per_step.items():
            print(f"| {name} | {value * 1e6:.2f} | {value / base:.3f} |")
    if "cost" in args.sections or ("sampling" in args.sections and not args.skip_sampling):
        flow = load_trained_flow(args.flow)
    if "cost" in args.sections:
        for kind in args.cost_systems:
            platform = args.platform if kind == "vacuum" else args.implicit_platform
            name = f"alanine_dipeptide_{kind}"
            print_cost(name, platform, jump_cost(name, platform, flow, args), args)
            print(f"\nload average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if "sampling" in args.sections and not args.skip_sampling:
        sampling(ala, flow, args)
        print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def sampling(ala, flow, args):
    results = {"plain MD (LangevinMiddle)": sample_phi(
        make_simulation(ala, openmm.LangevinMiddleIntegrator(ala.temperature, 1.0, 0.001), args.platform, 2), args.md_budget, args.stride)}
    for mode in args.modes:
        for interval in args.intervals:
            integrator = FlowMCIntegrator(ala.temperature, 1.0, 0.001, flow, jump_interval=interval, system=ala.system,
                                          topology=ala.topology, mode=mode, seed=interval)
            results[f"FlowMC {mode}, jump every {interval} steps"] = sample_phi(
                make_simulation(ala, integrator, args.platform, 2), args.budget, args.stride)
    md = results["plain MD (LangevinMiddle)"]
    md_rate = {key: md[key] / md["cpu_s"] for key in ("transitions", "ess")}
    print(f"\n### Alanine dipeptide vacuum, 300 K, 1 fs, {args.platform}, frame every {args.stride} fs\n")
    print("| run | CPU s | ns | acc. rate | MD acc. | P(phi>0) | transitions | per CPU-s | ratio | ESS | per CPU-s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        t_rate, e_rate = r["transitions"] / r["cpu_s"], r["ess"] / r["cpu_s"]
        ratio = lambda a, b: f"{a / b:.3g}" if b > 0 else ("inf" if a > 0 else "n/a")  # noqa: E731
        md_acc = "–" if np.isnan(r["md_acceptance"]) else f"{r['md_acceptance']:.3f}"
        print(f"| {name} | {r['cpu_s']:.1f} | {r['ns']:.3f} | {r['acceptance']:.3f} | {md_acc} | {r['fraction']:.4f} | {r['transitions']} "
              f"| {t_rate:.3g} | {ratio(t_rate, md_rate['transitions'])} | {r['ess']:.0f} | {e_rate:.3g} | {ratio(e_rate, md_rate['ess'])} |")


if __name__ == "__main__":
    main()
