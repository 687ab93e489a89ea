"""Benchmark FlowMCMove against plain MD on alanine dipeptide in vacuum at 300 K, at equal CPU time.

Methods, each given the same CPU-time budget (``time.process_time`` of this process, one torch thread):

(a) plain MD: OpenMM LangevinMiddleIntegrator, 1 fs, 1/ps, Reference platform (fastest for 22 atoms);
    a frame every ``--md-stride`` steps;
(b) MD + FlowMCMove: openmmtools ``SequenceMove([IntegratorMove(same MD, --md-stride steps), FlowMCMove])``;
    a frame per iteration;
(c) FlowMCMove alone (``--n-proposals`` Metropolis-Hastings steps per iteration); a frame per iteration.

Reported per method: acceptance; the phi > 0 population with its standard error; effective samples per
CPU-second of the phi > 0 indicator (over the states below) and of the potential energy (over the
frames), N / g with g the statistical inefficiency (1 + 2 tau_int) from
``pymbar.timeseries.statistical_inefficiency``; and transitions per CPU-second,
counted between consecutive states of each chain: MD frames (every ``--md-stride`` fs), and for the
flow methods the state at every Metropolis-Hastings step (recorded through FlowMCMove's
``_propose_positions`` hook; the MD segments of (b) lie between two such states). Both are lower
bounds (recrossings within an MD stride are missed). Counted two ways:

- phi-sign flips: changes of the sign of phi. In the beta basin phi fluctuates across +-pi, so most of
  MD's flips are not conformational changes;
- basin transitions: changes of the indicator 0 < phi < 2.5 rad (the C7ax/alpha_L basin), the
  conformational change the goal is about.

A count k of MD transitions gives the one-sided 95 % Poisson upper bound chi2_0.95(2k + 2) / 2 on the
expected count (3.0 for k = 0), hence a 95 % lower bound on each flow method's rate ratio. The phi > 0
population is compared with the importance-reweighted estimate from independent flow samples
(weights exp(-u - log q), self-normalized, delta-method error), computed outside the budgets. Prints a
markdown table.

    python benchmarks/bench_flow_mcmove.py [--budget 150] [--flow alanine_dipeptide_vacuum]
"""

import argparse
import math
import time

import mdtraj
import numpy as np
import openmm
import torch
from openmm import unit
from openmmtools import cache, mcmc

from openmm_flowplugin import systems
from openmm_flowplugin.flows.checkpoints import load_flow
from openmm_flowplugin.mcmc import FlowMCMove

TIMESTEP, FRICTION = 1.0 * unit.femtosecond, 1.0 / unit.picosecond
PHI_BASIN = (0.0, 2.5)  # rad: the C7ax/alpha_L basin, excluding beta-basin fluctuations across phi = +-pi
PHI_ATOMS = [4, 6, 8, 14]  # C(ACE) N CA C(ALA)


def dihedral(p):
    """Dihedral angle (rad) of the four points p, shape=(4, 3)."""
    b0, b1, b2 = p[0] - p[1], p[2] - p[1], p[3] - p[2]
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - b0.dot(b1) * b1, b2 - b2.dot(b1) * b1
    return math.atan2(np.cross(b1, v).dot(w), v.dot(w))


class RecordingFlowMCMove(FlowMCMove):
    """FlowMCMove recording phi of the chain's state at every Metropolis-Hastings step (through the subclass hook)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phi_trace = []

    def _propose_positions(self, positions):
        self.phi_trace.append(dihedral(positions[PHI_ATOMS]))
        return super()._propose_positions(positions)


def _md_integrator(temperature, seed):
    integrator = openmm.LangevinMiddleIntegrator(temperature, FRICTION, TIMESTEP)
    integrator.setRandomNumberSeed(seed)
    return integrator


def run_md(ala, budget, stride, seed):
    context = openmm.Context(ala.system, _md_integrator(ala.temperature, seed), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ala.positions)
    context.setVelocitiesToTemperature(ala.temperature, seed)
    frames, start = [], time.process_time()
    while time.process_time() - start < budget:
        context.getIntegrator().step(stride)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    frames = np.array(frames)
    return frames, time.process_time() - start, None, phi_of(ala, frames)


def run_sampler(ala, move, flow_move, budget):
    sampler = mcmc.MCMCSampler(ala.thermodynamic_state(), ala.sampler_state(), move)
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))
    frames, start = [], time.process_time()
    while time.process_time() - start < budget:
        sampler.run(1, context_cache=context_cache)
        frames.append(sampler.sampler_state.positions.value_in_unit(unit.nanometer))
    return np.array(frames), time.process_time() - start, flow_move.fraction_accepted, np.array(flow_move.phi_trace)


def reduced_energies(ala, frames):
    context = openmm.Context(ala.system, openmm.VerletIntegrator(1.0), openmm.Platform.getPlatformByName("Reference"))
    u = np.empty(len(frames))
    for i, x in enumerate(frames):
        context.setPositions(x)
        u[i] = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / ala.kT
    return u


def phi_of(ala, frames):
    return mdtraj.compute_phi(mdtraj.Trajectory(frames, ala.mdtraj_topology))[1][:, 0]


def transitions(indicator):
    return int(np.sum(indicator[1:] != indicator[:-1]))


def poisson_upper(k, confidence=0.95):
    """One-sided upper confidence bound on a Poisson mean after observing k events."""
    from scipy.stats import chi2

    return 0.5 * chi2.ppf(confidence, 2 * k + 2)


def ess(series):
    from pymbar import timeseries

    series = np.asarray(series, dtype=np.float64)
    if np.ptp(series) == 0:
        return float("nan"), float("nan")
    g = timeseries.statistical_inefficiency(series)
    return len(series) / g, series.std(ddof=1) * math.sqrt(g / len(series))


def importance_estimate(ala, flow, n, batch=1000):
    """Self-normalized importance-sampling estimate of P(phi > 0) with its delta-method standard error."""
    log_w, inside = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            x, log_q = flow.sample(min(batch, n - i))
            x = x.double().numpy()
            log_w.append(-reduced_energies(ala, x) - log_q.double().numpy())
            inside.append(phi_of(ala, x) > 0)
    log_w, inside = np.concatenate(log_w), np.concatenate(inside).astype(float)
    log_w[~np.isfinite(log_w)] = -np.inf
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    p = float(np.sum(w * inside))
    return p, float(np.sqrt(np.sum(w**2 * (inside - p) ** 2))), float(1.0 / np.sum(w**2)) / n


def main(budget=150.0, flow="alanine_dipeptide_vacuum", md_stride=100, n_proposals=100, n_importance=20000, seed=2024):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    ala = systems.get("alanine_dipeptide_vacuum")
    model = load_flow(flow, system=ala)
    flow_alone = RecordingFlowMCMove(model, n_proposals=n_proposals, seed=seed)
    flow_in_md = RecordingFlowMCMove(model, n_proposals=n_proposals, seed=seed + 1)
    md_move = mcmc.IntegratorMove(_md_integrator(ala.temperature, seed + 2), n_steps=md_stride)
    runs = {
        "(a) MD": run_md(ala, budget, md_stride, seed),
        "(b) MD + FlowMCMove": run_sampler(ala, mcmc.SequenceMove([md_move, flow_in_md]), flow_in_md, budget),
        "(c) FlowMCMove": run_sampler(ala, flow_alone, flow_alone, budget),
    }
    p_is, p_is_error, is_efficiency = importance_estimate(ala, model, n_importance)

    rows, md = [], None
    for name, (frames, cpu, acceptance, trace) in runs.items():
        positive = (trace > 0).astype(float)
        n_ess_phi, p_error = ess(positive)
        p_error = 0.0 if np.isnan(p_error) else p_error
        n_ess_u, _ = ess(reduced_energies(ala, frames))
        flips, basin = transitions(trace > 0), transitions((trace > PHI_BASIN[0]) & (trace < PHI_BASIN[1]))
        z = (positive.mean() - p_is) / math.hypot(p_error, p_is_error)
        if md is None:
            md = dict(flips=flips, basin=basin, cpu=cpu)
            gains = ("", f" (MD: {basin} in {cpu:.0f} s, rate < {poisson_upper(basin) / cpu:.3g}/s)")
        else:
            flip_gain = flips / cpu / (md["flips"] / md["cpu"]) if md["flips"] else float("inf")
            basin_bound = basin / cpu / (poisson_upper(md["basin"]) / md["cpu"])
            gains = (f" ({flip_gain:.0f}x)", f" (> {basin_bound:.0f}x)")
        rows.append(
            f"| {name} | {'' if acceptance is None else f'{acceptance:.1%}'} | {positive.mean():.4f} +- {p_error:.4f} "
            f"| {z:+.1f} | {n_ess_phi / cpu:.3g} | {n_ess_u / cpu:.3g} | {flips / cpu:.3g}{gains[0]} "
            f"| {basin} = {basin / cpu:.3g}/s{gains[1]} | {len(frames)} | {cpu:.1f} |"
        )
    print(f"Alanine dipeptide, vacuum, 300 K; {budget:.0f} CPU-s per method; MD frame every {md_stride} fs; "
          f"{n_proposals} MH steps per FlowMCMove; ESS from pymbar.timeseries.statistical_inefficiency; "
          f"basin = {PHI_BASIN[0]} < phi < {PHI_BASIN[1]} rad; (> Nx) = 95 % lower bound on the rate ratio to MD.\n")
    print("| method | acceptance | P(phi>0) +- s.e. | z vs IS | ESS/CPU-s phi>0 | ESS/CPU-s energy "
          "| phi-sign flips/CPU-s (vs MD) | basin transitions (vs MD) | frames | CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nImportance-reweighted flow estimate ({n_importance} samples, Kish ESS {is_efficiency:.1%}): "
          f"P(phi>0) = {p_is:.4f} +- {p_is_error:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=150.0, help="CPU seconds per method (default 150: ~9 min in all)")
    parser.add_argument("--flow", default="alanine_dipeptide_vacuum", help="registered system name or checkpoint path")
    parser.add_argument("--md-stride", type=int, default=100, help="MD steps (fs) between frames and per MD move")
    parser.add_argument("--n-proposals", type=int, default=100, help="Metropolis-Hastings steps per FlowMCMove")
    parser.add_argument("--n-importance", type=int, default=20000, help="flow samples for the reweighted estimate")
    parser.add_argument("--seed", type=int, default=2024)
    main(**{k.replace("-", "_"): v for k, v in vars(parser.parse_args()).items()})
