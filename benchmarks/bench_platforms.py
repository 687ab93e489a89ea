"""Platform choice: is the automatically chosen platform the fastest one? Same run, same machine.

    python benchmarks/bench_platforms.py [--seconds 2] [--evaluations 2000]

For alanine dipeptide in vacuum and in OBC implicit solvent, measures Langevin MD throughput
(ns/day, 1 fs steps, as ``simulate`` runs it) and single-configuration energy+force evaluations/s
(through :class:`OpenMMEnergy`) on Reference, CPU and, where present, CUDA and OpenCL, and reports
what :func:`select_platform` chose for each purpose (``"md"``, ``"energy"``) with the cost of
choosing. Goal: the chosen platform is within 10 % of the best. Blocks of the candidates are
interleaved and the median block counts, so a busy machine slows all candidates alike. Prints a
markdown table.

``--systems`` takes registry names and ``openmmtools:NAME`` for an openmmtools test system, e.g.
``openmmtools:AlanineDipeptideExplicit`` (2,269 atoms, TIP3P, PME) or ``openmmtools:WaterBox``.
"""

import argparse
import os
import statistics
import time

import numpy as np
import openmm
import torch

from openmm_flowplugin import OpenMMEnergy, systems
from openmm_flowplugin.platforms import (
    PLATFORM_ENV_VAR,
    clear_platform_cache,
    platform_choice,
)

TIMESTEP_PS = 0.001


def available_candidates():
    """Reference and CPU, then the GPU platforms this OpenMM build has (those that can make a Context)."""
    names = ["Reference", "CPU"]
    for name in ("CUDA", "OpenCL"):
        try:
            platform = openmm.Platform.getPlatformByName(name)
            one_particle = openmm.System()
            one_particle.addParticle(1.0)
            openmm.Context(one_particle, openmm.VerletIntegrator(0.001), platform)
        except Exception:
            continue
        names.append(name)
    return tuple(names)


CANDIDATES = available_candidates()


def get_system(name):
    """A registry system, or an openmmtools test system for ``openmmtools:NAME`` (at 300 K)."""
    if not name.startswith("openmmtools:"):
        return systems.get(name)
    from openmmtools import testsystems

    test_system = getattr(testsystems, name.split(":", 1)[1])()
    return systems.MolecularSystem(name, test_system.system, test_system.topology, test_system.positions, 300.0 * openmm.unit.kelvin)


def md_contexts(molecular_system):
    contexts = {}
    for name in CANDIDATES:
        integrator = openmm.LangevinMiddleIntegrator(molecular_system.temperature, 1.0, TIMESTEP_PS)
        integrator.setRandomNumberSeed(1)
        context = openmm.Context(molecular_system.system, integrator, openmm.Platform.getPlatformByName(name))
        context.setPositions(molecular_system.positions)
        openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
        context.setVelocitiesToTemperature(molecular_system.temperature, 1)
        integrator.step(200)  # warm-up
        contexts[name] = context
    return contexts


def ns_per_day(molecular_system, seconds):
    """Median-block ns/day per candidate, blocks interleaved for about ``seconds`` in all."""
    contexts = md_contexts(molecular_system)
    steps = {}
    for name, context in contexts.items():  # block length: ~0.1 s per block
        t0 = time.perf_counter()
        context.getIntegrator().step(20)
        steps[name] = max(20, int(0.1 / ((time.perf_counter() - t0) / 20)))
    blocks = {name: [] for name in contexts}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(b) for b in blocks.values()) < 3:
        for name, context in contexts.items():
            t0 = time.perf_counter()
            context.getIntegrator().step(steps[name])
            context.getState(energy=True)
            blocks[name].append(steps[name] * TIMESTEP_PS * 1e-3 / (time.perf_counter() - t0) * 86400)
    return {name: statistics.median(values) for name, values in blocks.items()}


def evaluations_per_second(molecular_system, n_evaluations, repeats=3):
    rng = np.random.default_rng(0)
    x = torch.as_tensor(molecular_system.positions_nm + 0.005 * rng.standard_normal((n_evaluations, molecular_system.n_atoms, 3)))
    energies = {name: OpenMMEnergy(molecular_system.system, molecular_system.temperature, platform=name) for name in CANDIDATES}
    for energy in energies.values():
        energy.energy_and_forces(x[:20])  # Context creation and warm-up outside the timing
    rates = {name: [] for name in CANDIDATES}
    for _ in range(repeats):
        for name, energy in energies.items():
            t0 = time.perf_counter()
            energy.energy_and_forces(x)
            rates[name].append(n_evaluations / (time.perf_counter() - t0))
    return {name: statistics.median(values) for name, values in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="MD timing per system (all candidates)")
    parser.add_argument("--evaluations", type=int, default=2000, help="configurations per energy timing")
    parser.add_argument("--systems", nargs="+", default=["alanine_dipeptide_vacuum", "alanine_dipeptide_implicit"])
    args = parser.parse_args()
    if os.environ.get(PLATFORM_ENV_VAR):
        parser.error(f"unset {PLATFORM_ENV_VAR}: this benchmark checks the automatic choice.")
    print(f"{time.strftime('%Y-%m-%d')}, OpenMM {openmm.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print(f"| system | measure | {' | '.join(CANDIDATES)} | chosen (cost of choosing) | chosen / best |")
    print("|---|---|" + "---|" * len(CANDIDATES) + "---|---|")
    misses = []
    for system_name in args.systems:
        molecular_system = get_system(system_name)
        for purpose, label, measure, amount in (
            ("md", "MD ns/day", ns_per_day, args.seconds),
            ("energy", "energy+forces /s", evaluations_per_second, args.evaluations),
        ):
            clear_platform_cache()
            choice = platform_choice(molecular_system.system, purpose=purpose, positions=molecular_system.positions)
            values = measure(molecular_system, amount)
            ratio = values[choice.name] / max(values.values())
            cells = " | ".join(f"{values[name]:,.0f}" for name in CANDIDATES)
            print(f"| {system_name} | {label} | {cells} | {choice.name} ({choice.cost:.2f} s) | {ratio:.2f} |", flush=True)
            if ratio < 0.9:
                misses.append(f"{system_name}, {purpose}: {choice.reason}")
    for miss in misses:
        print(f"\nmissed the best platform: {miss}")


if __name__ == "__main__":
    main()
