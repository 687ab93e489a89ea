"""Shipped Boltzmann generator: importance-sampling ESS at the system temperature and sampling speed.

    python benchmarks/bench_flow.py [--samples 10000] [--name alanine_dipeptide_vacuum]
"""

import argparse
import time

import torch

from openmm_flowplugin import OpenMMEnergy, load_flow, systems
from openmm_flowplugin.analysis.evaluation import weighted_fraction, backbone_dihedrals
from openmm_flowplugin.analysis import effective_sample_size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="alanine_dipeptide_vacuum")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="independent ESS estimates")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    molecular_system = systems.get(args.name)
    flow = load_flow(args.name, system=molecular_system)
    energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature)

    rows = []
    for repeat in range(args.repeats):
        with torch.no_grad():
            start = time.perf_counter()
            x, log_q = flow.sample(args.samples)
            sample_time = time.perf_counter() - start
            start = time.perf_counter()
            flow.log_prob(x)
            log_prob_time = time.perf_counter() - start
        start = time.perf_counter()
        u = energy(x)
        energy_time = time.perf_counter() - start
        log_w = torch.where(torch.isfinite(u), -u - log_q, torch.full_like(u, -float("inf")))
        phi, _ = backbone_dihedrals(x.numpy(), molecular_system.mdtraj_topology)
        p, se = weighted_fraction(phi > 0, log_w.numpy())
        rows.append((repeat, effective_sample_size(log_w), sample_time, log_prob_time, energy_time, p, se))

    print(f"\n{args.name}, {args.samples} samples per repeat, {args.threads} torch thread(s)\n")
    print("| repeat | ESS | sample (s) | log_prob (s) | energies (s) | phi>0 (reweighted) |")
    print("|---|---|---|---|---|---|")
    for repeat, ess, ts, tl, te, p, se in rows:
        print(f"| {repeat} | {ess * 100:.1f} % | {ts:.2f} | {tl:.2f} | {te:.2f} | {p:.4f} ± {se:.4f} |")


if __name__ == "__main__":
    main()
