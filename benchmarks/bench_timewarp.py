"""First measurement: TimewarpMove (exact MH with a learned conditional proposal) against plain MD, alanine dipeptide in vacuum.

One process, one torch thread, CPU time by ``time.process_time``:

1. training data: Langevin MD (1 fs, 1/ps, Reference platform), ``--md-ps`` ps, a frame every ``--stride`` fs;
2. training: a ConditionalFlow trained by likelihood on pairs ``--lag`` frames apart for ``--train-seconds`` CPU
   seconds (resumed through a checkpoint every 200 steps, so Adam's state is kept); then, if ``--finetune-seconds``,
   Timewarp's acceptance loss plus the likelihood through the energy bridge (``fine_tune_acceptance``);
2b. diagnosis: log alpha of 300 proposals from training frames split into -du, the velocity term
   log N(v') - log N(v) and the density term log p(x, v | x', v') - log p(x', v' | x, v) (median, 10-90 %), and the
   expected squared jump in (phi, psi) per proposal, E[min(1, alpha) (dphi^2 + dpsi^2)], against MD's over one training-frame interval (at least 10 fs);
3. sampling, each method given ``--budget`` CPU seconds from the last training frame:
   (a) plain MD as in 1, a frame every 10 fs; (b) TimewarpMove alone, ``--n-proposals`` MH steps per apply (state
   recorded after each apply), adaptive prefetch of at most ``--batch`` proposals; (c) with ``--jump-interval J``,
   FlowMCIntegrator: the MD of (a) with one proposal of the same model every J steps, a frame every 10 fs
   (``--integrator-mode exact``, the default: GHMC between jumps, exact; ``langevin``: LangevinMiddle).

Reported: acceptance; effective samples per CPU-second (N / g, g the statistical inefficiency from pymbar) of
sin/cos of phi and psi (the smallest of the four), of the slowest TICA component (deeptime, fitted on the training
MD's sin/cos phi, psi at a lag of 1 ps) and of the C7ax/alpha_L indicator 0 < phi < 2.5 rad; basin
transitions (changes of that indicator) per CPU-second; the phi > 0 population; the C5/beta population
(|psi| > 2 rad, about half) with its standard error from its own ESS, and its z against MD's. Costs of 1 and 2 are reported
separately. Prints a markdown table.

    python benchmarks/bench_timewarp.py [--md-ps 100] [--train-seconds 180] [--finetune-seconds 0] [--budget 90]

``--architecture internal-torsions --torsions backbone --components 16`` moves phi and psi only, by a learned
mixture that jumps between basins (docs/timewarp.md).
"""

import argparse
import tempfile
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import torch
from openmm import app, unit
from openmmtools import cache, mcmc
from pymbar import timeseries

from openmm_flowplugin import systems
from openmm_flowplugin.analysis.evaluation import backbone_dihedrals
from openmm_flowplugin.bridge.energy import OpenMMEnergy
from openmm_flowplugin.flows import ConditionalFlow, train_timewarp, trajectory_pairs
from openmm_flowplugin.flows.conditional_training import fine_tune_acceptance
from openmm_flowplugin.flows.internal_conditional import InternalCoordinateProposal
from openmm_flowplugin.integrators import FlowMCIntegrator
from openmm_flowplugin.mcmc import TimewarpMove
from openmm_flowplugin.proposals.conditional import standard_normal_log_prob

PHI_BASIN = (0.0, 2.5)
C5_PSI = 2.0  # |psi| above this (rad): the extended C5/beta basin; below: C7eq (and rarely alpha_R), about half each


def ess(series):
    series = np.asarray(series, dtype=np.float64)
    if len(series) < 3 or np.ptp(series) == 0:
        return float("nan")
    return len(series) / timeseries.statistical_inefficiency(series)


def torsion_features(xyz, topology):
    """sin/cos of every phi, psi and chi torsion (mdtraj), the TICA input."""
    trajectory = mdtraj.Trajectory(xyz, topology)
    angles = [f(trajectory)[1] for f in (mdtraj.compute_phi, mdtraj.compute_psi, mdtraj.compute_chi1, mdtraj.compute_chi2)]
    angles = np.concatenate([a for a in angles if a.size], axis=1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def fit_tica(xyz, topology, lag_frames):
    """The slowest TICA component (deeptime) of ``xyz``'s torsion features."""
    from deeptime.decomposition import TICA

    return TICA(lagtime=max(1, lag_frames), dim=1).fit(torsion_features(xyz, topology)).fetch_model()


def summary(name, positions, cpu, topology, acceptance=float("nan"), tica=None):
    phi, psi = backbone_dihedrals(positions, topology)
    smooth = min(ess(f(a)) for f in (np.sin, np.cos) for a in (phi, psi))
    basin = (phi > PHI_BASIN[0]) & (phi < PHI_BASIN[1])
    slowest = float("nan") if tica is None else ess(tica.transform(torsion_features(positions, topology))[:, 0]) / cpu
    c5 = (np.abs(psi) > C5_PSI).astype(np.float64)
    return dict(name=name, n=len(positions), cpu=cpu, acceptance=acceptance, ess_angles=smooth / cpu, ess_basin=ess(basin) / cpu,
                ess_tica=slowest, transitions=int(np.sum(basin[1:] != basin[:-1])) / cpu, phi_positive=float(np.mean(phi > 0)),
                c5=float(c5.mean()), c5_error=float(c5.std() / np.sqrt(ess(c5))))


def backbone_torsions(topology):
    """(C, N, CA, C) and (N, CA, C, N) atom quadruples of every phi and psi (mdtraj's definitions)."""
    trajectory = mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    return [tuple(int(a) for a in q) for f in (mdtraj.compute_phi, mdtraj.compute_psi) for q in f(trajectory)[0]]


def wrapped(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def log_alpha_terms(flow, energy, starts, topology, seed):
    """The three terms of log alpha for one proposal from each start, and E[min(1, alpha) (dphi^2 + dpsi^2)] (rad^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = torch.as_tensor(starts)
        v = torch.randn(len(x), flow.dim, generator=generator, dtype=torch.float64)
        x_new, v_new, log_forward = flow.sample(x, v, generator=generator)
        terms = {"-du": (energy(x) - energy(x_new)).numpy(),
                 "velocity": (standard_normal_log_prob(v_new) - standard_normal_log_prob(v)).numpy(),
                 "density": (flow.log_prob(x, v, x_new, v_new) - log_forward).numpy()}
    terms["log alpha"] = sum(terms.values())
    acceptance = np.exp(np.minimum(np.nan_to_num(terms["log alpha"], nan=-np.inf), 0.0))
    (phi, psi), (phi_new, psi_new) = backbone_dihedrals(starts, topology), backbone_dihedrals(x_new.numpy(), topology)
    jump = float(np.mean(acceptance * (wrapped(phi_new - phi) ** 2 + wrapped(psi_new - psi) ** 2)))
    return terms, float(np.mean(acceptance)), jump


def train_for(seconds, flow, pairs, batch_size, chunk, seed):
    """Likelihood training for ``seconds`` CPU seconds, ``chunk`` steps at a time through a checkpoint (Adam's state kept).

    Returns the loss history, the steps taken and the CPU seconds used.
    """
    checkpoint = Path(tempfile.mkdtemp()) / "train.pt"
    start, steps = time.process_time(), 0
    while time.process_time() - start < seconds:
        steps += chunk
        history = train_timewarp(flow, pairs, n_steps=steps, batch_size=batch_size, learning_rate=1e-3, seed=seed, checkpoint=checkpoint,
                                 checkpoint_every=chunk, progress=False)
    return history, steps, time.process_time() - start


def propose_seconds(propose, x, repeats=5, calls=200):
    """Median CPU seconds of one ``propose(x, 1, generator)`` over ``repeats`` blocks of ``calls``."""
    blocks = []
    for r in range(repeats):
        start = time.process_time()
        for k in range(calls):
            propose(x, 1, generator=torch.Generator().manual_seed(k))
        blocks.append((time.process_time() - start) / calls)
    return float(np.median(blocks))


def md(molecular_system, positions, budget, stride_steps, seed, integrator=None):
    """Frames every ``stride_steps`` of Langevin MD (1 fs, 1/ps; or ``integrator``) for ``budget`` CPU seconds, and the CPU time."""
    if integrator is None:
        integrator = openmm.LangevinMiddleIntegrator(molecular_system.temperature, 1.0 / unit.picosecond, 1.0 * unit.femtosecond)
        integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(molecular_system.topology, molecular_system.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(positions)
    simulation.context.setVelocitiesToTemperature(molecular_system.temperature, seed)
    frames, start = [], time.process_time()
    while time.process_time() - start < budget:
        simulation.step(stride_steps)
        frames.append(simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames), time.process_time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md-ps", type=float, default=100.0, help="training MD, ps")
    parser.add_argument("--stride", type=int, default=100, help="fs between training frames")
    parser.add_argument("--lag", type=int, default=10, help="tau in training frames")
    parser.add_argument("--train-seconds", type=float, default=180.0)
    parser.add_argument("--finetune-seconds", type=float, default=0.0, help="CPU seconds of acceptance fine-tuning after training")
    parser.add_argument("--likelihood-weight", type=float, default=1.0, help="weight of the likelihood in fine-tuning")
    parser.add_argument("--budget", type=float, default=90.0, help="CPU seconds per sampling method")
    parser.add_argument("--n-proposals", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--architecture", choices=["cartesian", "internal", "internal-torsions"], default="cartesian",
                        help="ConditionalFlow (Cartesian), or InternalCoordinateProposal moving all internal coordinates or torsions only")
    parser.add_argument("--torsions", choices=["all", "backbone"], default="all",
                        help="internal-torsions: move every torsion, or the phi/psi rotations only")
    parser.add_argument("--components", type=int, default=1, help="internal architectures: mixture components over the moved torsions")
    parser.add_argument("--md-steps-per-apply", type=int, default=0,
                        help="Langevin steps (1 fs) after each TimewarpMove apply (needed with internal-torsions: bonds and angles)")
    parser.add_argument("--jump-interval", type=int, default=0, help="also run FlowMCIntegrator with a jump every this many MD steps")
    parser.add_argument("--integrator-mode", choices=["exact", "langevin"], default="exact",
                        help="FlowMCIntegrator's mode: GHMC between jumps (exact) or LangevinMiddle (velocity carried across jumps)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.architecture == "internal-torsions" and args.md_steps_per_apply < 1:
        parser.error("internal-torsions keeps bonds and angles: give --md-steps-per-apply >= 1 so MD samples them")
    if args.torsions != "all" and args.architecture != "internal-torsions":
        parser.error("--torsions backbone selects torsions of --architecture internal-torsions")
    if args.components != 1 and args.architecture == "cartesian":
        parser.error("--components is a mixture over torsions: use an internal architecture")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    ala = systems.get("alanine_dipeptide_vacuum")
    from openmm_flowplugin.simulation.md import simulate

    start = time.process_time()
    trajectory = simulate(ala, int(args.md_ps * 1000), report_interval=args.stride, equilibration_steps=5000, platform="Reference",
                          seed=args.seed, progress=False)
    data_cpu = time.process_time() - start
    print(f"training MD: {trajectory.n_frames} frames ({args.md_ps:g} ps) in {data_cpu:.1f} CPU s")

    pairs = trajectory_pairs(trajectory.xyz.astype(np.float64), args.lag)
    if args.architecture == "cartesian":
        flow = ConditionalFlow.for_system(ala, n_layers=args.layers, hidden=(args.hidden, args.hidden), context_features=64, step_scale=0.01)
    else:
        torsions = backbone_torsions(ala.mdtraj_topology) if args.torsions == "backbone" else None
        flow = InternalCoordinateProposal.for_system(ala, hidden=(args.hidden, args.hidden), components=args.components, torsions=torsions,
                                                     moves="all" if args.architecture == "internal" else "torsions")
    history, steps, train_cpu = train_for(args.train_seconds, flow, pairs, batch_size=128, chunk=200, seed=args.seed)
    print(f"training: {steps} steps on {len(pairs[0])} pairs (lag {args.lag * args.stride} fs) in {train_cpu:.1f} CPU s; "
          f"loss first/last 100: {np.mean(history[:100]):.1f} / {np.mean(history[-100:]):.1f} nats")

    energy = OpenMMEnergy(ala.system, ala.temperature, platform="Reference")
    if args.finetune_seconds > 0:
        start = time.process_time()
        fine_tune_acceptance(flow, pairs, energy, n_steps=20, batch_size=64, likelihood_weight=args.likelihood_weight, seed=args.seed, progress=False)
        per_step = (time.process_time() - start) / 20
        n_more = max(1, int((args.finetune_seconds - (time.process_time() - start)) / per_step))
        accepted = fine_tune_acceptance(flow, pairs, energy, n_steps=n_more, batch_size=64, likelihood_weight=args.likelihood_weight,
                                        seed=args.seed + 1, progress=False)
        print(f"fine-tuning: {20 + n_more} steps in {time.process_time() - start:.1f} CPU s; training-start acceptance, "
              f"last 100 steps: {np.mean(accepted[-100:]):.3g}")
    xyz = trajectory.xyz.astype(np.float64)
    terms, acceptance, jump = log_alpha_terms(flow, energy, xyz[:: max(1, len(xyz) // 300)][:300], ala.mdtraj_topology, args.seed)
    print("log alpha = -du + velocity + density, over 300 proposals from training frames: median [10 %, 90 %]")
    for name, value in terms.items():
        value = value[np.isfinite(value)]
        print(f"  {name}: {np.median(value):.3g} [{np.quantile(value, 0.1):.3g}, {np.quantile(value, 0.9):.3g}]")
    phi, psi = backbone_dihedrals(xyz, ala.mdtraj_topology)
    k = max(1, 10 // args.stride)
    md_jump = np.mean(wrapped(phi[k:] - phi[:-k]) ** 2 + wrapped(psi[k:] - psi[:-k]) ** 2)
    print(f"mean acceptance {acceptance:.3g}; E[min(1, alpha) (dphi^2 + dpsi^2)] per proposal {jump:.3g} rad^2 "
          f"(MD per {k * args.stride} fs: {md_jump:.3g} rad^2)")

    tica = fit_tica(xyz, ala.mdtraj_topology, 1000 // args.stride)
    start_positions = trajectory.xyz[-1].astype(np.float64) * unit.nanometer
    frames, cpu = md(ala, start_positions, args.budget, 10, args.seed)
    rows = [summary("MD (1 fs, frame every 10 fs)", frames, cpu, ala.mdtraj_topology, tica=tica)]

    move = TimewarpMove(flow, n_proposals=args.n_proposals, sample_batch_size=args.batch, adaptive_batch_size=True, seed=args.seed,
                        topology=ala.topology)
    sampler_move = move
    if args.md_steps_per_apply > 0:
        sampler_move = mcmc.SequenceMove([move, mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond, collision_rate=1.0 / unit.picosecond,
                                                                          n_steps=args.md_steps_per_apply, reassign_velocities=False)])
    sampler = mcmc.MCMCSampler(ala.thermodynamic_state(), ala.sampler_state(start_positions), sampler_move)
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    frames, start = [], time.process_time()
    while time.process_time() - start < args.budget:
        sampler.run(1, context_cache=context_cache)
        frames.append(sampler.sampler_state.positions.value_in_unit(unit.nanometer))
    cpu = time.process_time() - start
    label = f"TimewarpMove, {args.architecture} ({args.n_proposals} MH steps/apply" + (
        f" + {args.md_steps_per_apply} MD steps)" if args.md_steps_per_apply else ")")
    rows.append(summary(label, np.array(frames), cpu, ala.mdtraj_topology, move.fraction_accepted, tica=tica))
    print(f"TimewarpMove: {move.n_proposed} proposals, {move.n_accepted} accepted, {move.n_invalid} invalid, {move.n_prefetched} drawn")

    if args.jump_interval > 0:
        integrator = FlowMCIntegrator(ala.temperature, 1.0 / unit.picosecond, 1.0 * unit.femtosecond, flow, jump_interval=args.jump_interval,
                                      system=ala.system, topology=ala.topology, seed=args.seed, mode=args.integrator_mode)
        frames, cpu = md(ala, start_positions, args.budget, 10, args.seed, integrator=integrator)
        rows.append(summary(f"FlowMCIntegrator ({args.integrator_mode}), a jump every {args.jump_interval} MD steps", frames, cpu, ala.mdtraj_topology,
                            integrator.acceptance_rate, tica=tica))
        print(f"FlowMCIntegrator: {integrator.n_proposed} proposals, {integrator.n_accepted} accepted, {integrator.n_invalid} invalid")
        md_step = rows[0]["cpu"] / (rows[0]["n"] * 10)
        per_jump = cpu / integrator.n_proposed - args.jump_interval * md_step
        print(f"cost: {md_step * 1e6:.1f} us per MD step (the MD row), so about {per_jump * 1e3:.3f} ms per jump beyond plain MD "
              f"({cpu / integrator.n_proposed * 1e3:.3f} ms per {args.jump_interval} steps with a jump)")
    if hasattr(flow, "_propose_torch"):
        x = xyz[0]
        fast, slow = (propose_seconds(f, x) for f in (flow.propose, flow._propose_torch))
        print(f"propose(x, 1), median of 5 x 200 calls: {fast * 1e3:.3f} ms; the torch path {slow * 1e3:.3f} ms ({slow / fast:.1f}x)")

    print("\n| method | frames | CPU s | acceptance | ESS/CPU-s sin/cos phi,psi (min) | ESS/CPU-s slowest TICA | ESS/CPU-s basin "
          "| transitions/CPU-s | phi>0 | C5 population |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['n']} | {r['cpu']:.0f} | {r['acceptance']:.3f} | {r['ess_angles']:.3g} | {r['ess_tica']:.3g} | "
              f"{r['ess_basin']:.3g} | {r['transitions']:.3g} | {r['phi_positive']:.3f} | {r['c5']:.3f} ± {r['c5_error']:.3f} |")
    for r in rows[1:]:
        print(f"\n{r['name']} / MD, ESS per CPU-second of phi/psi (sin, cos; min): {r['ess_angles'] / rows[0]['ess_angles']:.3g}, "
              f"of the slowest TICA component: {r['ess_tica'] / rows[0]['ess_tica']:.3g}; C5 population against MD's: "
              f"z = {(r['c5'] - rows[0]['c5']) / np.hypot(r['c5_error'], rows[0]['c5_error']):.2f}")
    print(f"(sampling only; training data {data_cpu:.0f} s and training {train_cpu:.0f} s not counted)")


if __name__ == "__main__":
    main()
