"""Energy bridge: accuracy and throughput against OpenMM's own single-context loop, same run.

    python benchmarks/bench_energy.py [--n 20000] [--system alanine_dipeptide_vacuum]

Prints a markdown table. Throughput is relative to the raw loop measured here (``setPositions`` +
``getState(energy, forces)`` through OpenMM's public Python API), because machines are noisy.
"""

import argparse
import time

import numpy as np
import openmm
import torch
from openmm import unit

from openmm_flowplugin import OpenMMEnergy, systems


def raw_loop(system, positions, platform):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    energies = np.empty(len(positions))
    start = time.perf_counter()
    for i, x in enumerate(positions):
        context.setPositions(x)
        state = context.getState(energy=True, forces=True)
        energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        state.getForces(asNumpy=True)
    return energies, time.perf_counter() - start


def bridge(system, temperature, positions, platform, n_workers):
    energy = OpenMMEnergy(system, temperature, platform=platform, n_workers=n_workers)
    x = torch.as_tensor(positions).requires_grad_()
    if n_workers > 1:
        energy(x[: 8 * n_workers])  # start the workers outside the timing
    start = time.perf_counter()
    u = energy(x)
    u.sum().backward()
    elapsed = time.perf_counter() - start
    energy.close()
    return u.detach().numpy() * energy.kT, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="alanine_dipeptide_vacuum")
    parser.add_argument("--n", type=int, default=20_000, help="configurations")
    parser.add_argument("--platform", default="Reference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    molecular_system = systems.get(args.system)
    rng = np.random.default_rng(0)
    positions = molecular_system.positions_nm + 0.005 * rng.standard_normal((args.n, molecular_system.n_atoms, 3))

    reference, raw_time = raw_loop(molecular_system.system, positions, args.platform)
    rows = [("raw OpenMM loop (baseline)", args.n / raw_time, 1.0, 0.0)]
    for n_workers in (1, 2):
        energies, elapsed = bridge(molecular_system.system, molecular_system.temperature, positions, args.platform, n_workers)
        error = np.max(np.abs(energies - reference) / np.maximum(np.abs(reference), 1.0))
        rows.append((f"OpenMMEnergy, n_workers={n_workers} (energy + autograd forces)", args.n / elapsed, raw_time / elapsed, error))
    print(f"\n{args.system}, {args.n} configurations, platform {args.platform}\n")
    print("| evaluator | evaluations/s | ratio to raw loop | max relative energy error |")
    print("|---|---|---|---|")
    for name, rate, ratio, error in rows:
        print(f"| {name} | {rate:,.0f} | {ratio:.2f} | {error:.1e} |")


if __name__ == "__main__":
    main()
