"""Solvation free energies by the alchemical MBAR route: LJ excess chemical potentials, methane, ethanol.

Each case runs :func:`openmm_flowplugin.freeenergy.solvation_free_energy` in its own folder under
``--output`` (default ``benchmarks/results/solvation``); run the script again to resume or extend an
interrupted case (``--iterations`` is the total). Prints one table: ΔG ± standard error, CPU time and
energy evaluations of this process, and for the LJ fluids the comparison with the Johnson-Zollweg-Gubbins
equation of state (full LJ), using the analytic tail correction for the truncated potential.

``--method neural-ti`` runs neural TI instead: endpoint MD, training, the exact path over ``--nodes``
values of t with MBAR, and the amortized (approximate) estimate, in the same folder as the MBAR route's
storage, so both routes of a case can be compared in one table (a molecule's vacuum leg, ``vacuum.nc``,
is shared: it runs once).

Run: ``python benchmarks/bench_solvation.py --cases lj-0.6 lj-0.8`` (LJ, N = 500, about 15 min each on
2 cores at the defaults); ``--cases methane ethanol`` needs the ``solvation`` extra (AmberTools) and is an
hour-scale job per molecule on 2 CPU cores (use ``--platform CUDA`` on a GPU machine).

``--hydrogen-mass 3 --timestep 4`` builds the molecules with hydrogen mass repartitioning and runs them at 4 fs
(folder ``<case>-hmr3-4fs``): the same Hamiltonian, twice the simulated time per MD step. The table's g is the
statistical inefficiency of the solvent leg (in iterations: equal cost at equal ``--md-steps``), the measure of
what a longer step buys.
"""

import argparse
import time
from pathlib import Path

from openmm_flowplugin.freeenergy import solvation_free_energy, solvation_system
from openmm_flowplugin.freeenergy.lj_reference import jzg_excess_chemical_potential, lj_tail_correction_mu
from openmm_flowplugin.freeenergy.neural_ti import parse_nodes, neural_ti_free_energy

CASES = {
    "lj-0.6": ("lj", dict(density=0.6, reduced_temperature=1.2)),
    "lj-0.8": ("lj", dict(density=0.8, reduced_temperature=1.2)),
    "lj-paper": ("lj-paper", {}),
    "methane": ("methane", {}),
    "ethanol": (None, dict(smiles="CCO", name="ethanol")),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["lj-0.6", "lj-0.8"], choices=sorted(CASES))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--md-steps", type=int, default=250)
    parser.add_argument("--equilibration", type=int, default=20)
    parser.add_argument("--platform", default=None)
    parser.add_argument("--output", default="benchmarks/results/solvation")
    parser.add_argument("--method", choices=["mbar", "neural-ti"], default="mbar")
    parser.add_argument("--nodes", type=parse_nodes, default=11, help="a count, a list 1,...,0 of t, or 'schedule'")
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--hydrogen-mass", type=float, default=None, help="amu, molecules only (e.g. 3 with --timestep 4)")
    parser.add_argument("--timestep", type=float, default=None, help="fs, molecules only (default 2)")
    args = parser.parse_args()
    system_options = args.hydrogen_mass is not None or args.timestep is not None
    if system_options and any(CASES[case][0] in ("lj", "lj-paper") for case in args.cases):
        parser.error("--hydrogen-mass and --timestep apply to the molecules (methane, ethanol) only")
    if any(value is not None and not value > 0 for value in (args.hydrogen_mass, args.timestep)):
        parser.error("--hydrogen-mass and --timestep must be positive")
    rows = []
    for case in args.cases:
        preset, options = CASES[case]
        folder = case
        if system_options:
            options = dict(options, hydrogen_mass=args.hydrogen_mass, timestep=(args.timestep or 2.0) / 1000.0)
            folder = case + (f"-hmr{args.hydrogen_mass:g}" if args.hydrogen_mass else "") + f"-{args.timestep or 2.0:g}fs"
        system = solvation_system(preset, **options)
        start = time.process_time()
        extra = ""
        if args.method == "mbar":
            result = solvation_free_energy(system, Path(args.output) / folder, n_iterations=args.iterations, md_steps=args.md_steps,
                                           equilibration_iterations=args.equilibration, platform=args.platform)
            delta_g, error = result.delta_g, result.error
            evaluations = sum(cost["energy_evaluations"] for cost in result.costs.values())
            solvent = result.legs["solvent"]
            extra = f"solvent leg: {solvent.n_iterations} iterations, g = {solvent.statistical_inefficiency:.2f}; "
        else:
            neural = neural_ti_free_energy(system, Path(args.output) / folder, nodes=args.nodes, n_train_steps=args.train_steps,
                                           n_iterations=args.iterations, md_steps=args.md_steps,
                                           equilibration_iterations=args.equilibration, platform=args.platform)
            delta_g, error = neural["delta_g_kT"], neural["delta_g_error_kT"]
            evaluations = sum(v for k, v in neural["costs"].items() if k.endswith(("_evaluations", "_steps")))
            extra = (f"amortized (approximate, solvent leg) {-neural['amortized_delta_f_kT']:.3f} ± {neural['amortized_error_kT']:.3f} kT; "
                     f"min. overlap {neural['path']['min_neighbour_overlap']:.3f}; ")
        cpu = time.process_time() - start
        kT_kcal = system.solvent.kT / 4.184
        reference = extra
        if preset == "lj":
            density, temperature = options["density"], options["reduced_temperature"]
            full = delta_g * temperature + lj_tail_correction_mu(density, system.settings["cutoff_sigma"])
            jzg = jzg_excess_chemical_potential(density, temperature)
            reference += f"full LJ {full:.3f} ± {error * temperature:.3f} ε vs JZG {jzg:.3f} ε (z = {(full - jzg) / (error * temperature):.1f})"
        rows.append(f"| {case} | {args.method} | {delta_g * kT_kcal:.3f} ± {error * kT_kcal:.3f} | {delta_g:.3f} ± {error:.3f} | "
                    f"{cpu:.0f} | {evaluations:,} | {reference} |")
    print("| case | method | ΔG, kcal/mol | ΔG, kT | CPU s (this process) | energy evaluations | reference |")
    print("|---|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
