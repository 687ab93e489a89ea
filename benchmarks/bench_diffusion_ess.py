"""What limits the effective sample size of the biased diffusion sampler on alanine dipeptide: production variants on one trained sampler.

Trains the sampler of ``bench_diffusion_alanine.py``'s row (a) at ``--budget`` (same settings and seed; the checkpoint
is kept in ``--output`` and reused), then draws ``--samples`` production samples in each of these ways and reports the
Kish ESS, each basin's effective samples and Pareto k (the tail diagnostic of ``basin_free_energy_difference``) and
Delta F(C7eq -> C7ax) against the reference value of the main benchmark:

- the uniform mixture of the controller snapshots (what ``DiffusionSampler.sample`` does) and the final controller alone;
- the final controller with other numbers of Euler-Maruyama steps (the same continuous SDE, finer or coarser);
- the final controller's samples weighted with M path estimates: one forward and M - 1 backward paths, log w =
  -u_z - log mean_j exp(-r_j), exact on the space extended by the M paths (no extra energy evaluations);
- the final controller after more training on the frozen bias (``train(deposit=False)``) at the training learning
  rate and at a tenth of it (those iterations cost energy evaluations: reported).

Within each basin it also splits the weights' spread into the part the bias explains (exp(+beta V), what a perfect
sampler of the biased target would give) and the rest (the controller's mismatch), as Kish sizes.

    python benchmarks/bench_diffusion_ess.py [--budget 1000000] [--samples 60000] [--output benchmarks/results/diffusion_ess]
"""

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from bench_diffusion import in_box
from bench_diffusion_alanine import BASINS, DIFFUSION, SCHEDULE, torsions, train_sampler
from scipy.special import logsumexp

from openmm_flowplugin import systems
from openmm_flowplugin.analysis import basin_free_energy_difference, effective_sample_size
from openmm_flowplugin.diffusion import NoiseSchedule, backward_log_path_ratio, run_chains
from openmm_flowplugin.proposals.streams import torch_generator

REFERENCE_DELTA_F = 11.66  # kJ/mol, the static-bias reference of bench_diffusion_alanine.py (vacuum, seed 2025)


def draw(sampler, controllers, schedule, n, seed, n_paths=1, batch=1000):
    """z, physical-target log weights for M = 1..n_paths paths, CV values and V (kJ/mol) of ``n`` chains."""
    parts = []
    for start in range(0, n, batch):
        generator = torch_generator(seed, 1, start)
        chains = run_chains(controllers, schedule, min(batch, n - start), generator)
        ratios = [chains.log_path_ratio] + [backward_log_path_ratio(controllers, schedule, chains.x_final, generator)
                                             for _ in range(n_paths - 1)]
        with torch.no_grad():
            x, log_volume = sampler.coordinates.to_positions(chains.x_final)
            u_z = sampler.energy(x).detach() - log_volume
        parts.append((x, u_z, torch.stack(ratios, -1)))
    x = torch.cat([p[0] for p in parts])
    u_z = torch.cat([p[1] for p in parts]).numpy()
    ratios = torch.cat([p[2] for p in parts]).numpy()
    log_w = {m: np.where(np.isfinite(u_z), -u_z - (logsumexp(-ratios[:, :m], axis=1) - math.log(m)), -np.inf) for m in range(1, n_paths + 1)}
    s = torsions(x.numpy())
    bias = sampler.bias.value_at(s)
    return s, log_w, bias


def report(label, s, log_w, bias, kT, temperature, extra=""):
    delta = basin_free_energy_difference(s, log_w, BASINS, "C7eq", "C7ax", temperature, n_bootstrap=200, seed=1)
    k = delta.pareto_k
    n_eff = delta.effective_samples
    z = (delta.value - REFERENCE_DELTA_F) / delta.error
    split = []
    for name in ("C7eq", "C7ax"):
        inside = in_box(s, BASINS[name])
        finite = inside & np.isfinite(log_w)
        from_bias = effective_sample_size(bias[finite] / kT) * finite.sum()
        rest = effective_sample_size(log_w[finite] - bias[finite] / kT) * finite.sum()
        split.append(f"{from_bias:.0f} / {rest:.0f}")
    print(f"| {label} | {effective_sample_size(log_w) * len(log_w):.0f} | {n_eff['C7eq']:.0f} / {n_eff['C7ax']:.0f} | "
          f"{k['C7eq']:.2f} / {k['C7ax']:.2f} | {delta.value:.2f} ± {delta.error:.2f} | {z:.1f} | {split[0]} | {split[1]} | {extra} |", flush=True)


def main(args):
    torch.set_num_threads(1)
    molecular_system = systems.get("alanine_dipeptide_vacuum")
    temperature = molecular_system.temperature
    kT = 0.0083144626 * temperature.value_in_unit(temperature.unit)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.output) / f"checkpoint_{args.budget}_seed{args.seed}.pt"
    start = time.process_time()
    trained = train_sampler(molecular_system, args.budget, 0.25, True, args.seed, checkpoint=checkpoint)
    sampler = trained["sampler"]
    print(f"Sampler of bench_diffusion_alanine.py row (a) at {args.budget:,} evaluations: {trained['detail']} "
          f"({time.process_time() - start:.0f} CPU s here; resumed from {checkpoint} when it existed). {args.samples:,} samples per row.\n")
    print("| production | ESS | effective samples C7eq / C7ax | Pareto k C7eq / C7ax | ΔF(C7eq→C7ax), kJ/mol | z vs 11.66 | "
          "C7eq Kish: bias alone / mismatch alone | C7ax Kish: bias alone / mismatch alone | cost |")
    print("|---|---|---|---|---|---|---|---|---|")
    final, schedule = sampler.controller, sampler.schedule
    s, log_w, bias = draw(sampler, sampler.production_controllers(), schedule, args.samples, args.seed)
    report("snapshot mixture (sample())", s, log_w[1], bias, kT, temperature)
    s, log_w, bias = draw(sampler, final, schedule, args.samples, args.seed, n_paths=max(args.paths))
    for m in args.paths:
        report(f"final controller, {m} path{'s' if m > 1 else ''}", s, log_w[m], bias, kT, temperature,
               "" if m == 1 else f"{m - 1} backward path{'s' if m > 2 else ''} per sample")
    for n_steps in args.steps:
        s, log_w, bias = draw(sampler, final, NoiseSchedule(SCHEDULE[0], SCHEDULE[1], n_steps), args.samples, args.seed)
        report(f"final controller, {n_steps} steps", s, log_w[1], bias, kT, temperature, f"trained with {SCHEDULE[2]}")
    for learning_rate in (DIFFUSION.get("learning_rate", 3e-4), DIFFUSION.get("learning_rate", 3e-4) / 10):
        tuned = copy.deepcopy(sampler)
        for group in tuned.controller_optimizer.param_groups:
            group["lr"] = learning_rate
        before = tuned.n_energy_evaluations
        tuned.train(tuned.iteration + args.tune_iterations, deposit=False)
        cost = tuned.n_energy_evaluations - before
        s, log_w, bias = draw(tuned, tuned.controller, schedule, args.samples, args.seed)
        report(f"final controller after {args.tune_iterations} it. on the frozen bias, lr {learning_rate:g}", s, log_w[1], bias, kT, temperature,
               f"{cost:,} more evaluations")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=1000000, help="the benchmark budget whose sampler is examined")
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--paths", type=int, nargs="+", default=[1, 2, 4, 8], help="paths per sample (1 = the forward path only)")
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 100, 200], help="Euler-Maruyama steps at sampling")
    parser.add_argument("--tune-iterations", type=int, default=200)
    parser.add_argument("--output", default="benchmarks/results/diffusion_ess")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--quick", action="store_true", help="smoke run: budget 20000, 2000 samples")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.budget, arguments.samples, arguments.tune_iterations = 20000, 2000, 5
        arguments.output = str(Path(arguments.output) / "quick")
    main(arguments)
