"""Neural TI against training length: the amortized estimate and the exact path, on a small Lennard-Jones fluid.

Target score matching fits U_θ(·, t) to the marginals of straight-line interpolants between endpoint samples.
This script measures what that training does to both estimators of neural TI, against the alchemical MBAR
route on the same system (the reference): for each training length it prints the amortized estimate
(approximate; exact only if U_θ's Boltzmann distributions are the interpolant's marginals), and the exact
path (U_θ as an OpenMM force, replica exchange over ``--nodes`` values of t, MBAR) with its standard error,
smallest neighbour overlap and the range of ⟨∂u/∂t⟩ over the nodes (a steeper path needs more nodes for the
same error). 0 training steps is φ = 0: openmmtools' soft-core path.

Run: ``python benchmarks/bench_neural_ti_training.py`` (the tests' fluid: 36 particles, ρ* = 0.5, T* = 1.5,
cutoff 2σ; about 12 min on one core at the defaults, most of it the longest training).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from openmm_flowplugin._threads import package_threads
from openmm_flowplugin.errors import NoOverlapError
from openmm_flowplugin.freeenergy import LambdaSchedule, alchemical_leg, analyze_leg, run_leg, solvation_system
from openmm_flowplugin.freeenergy import neural_ti as nti


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 500, 6400, 25600], help="training lengths (batches of 8)")
    parser.add_argument("--nodes", type=int, default=6, help="values of t of the exact path (equally spaced)")
    parser.add_argument("--samples", type=int, default=128, help="endpoint samples per end state")
    parser.add_argument("--points", type=int, default=2048, help="interpolants of the amortized estimate")
    parser.add_argument("--iterations", type=int, default=200, help="replica-exchange iterations (MBAR route and each path)")
    parser.add_argument("--particles", type=int, default=36)
    parser.add_argument("--density", type=float, default=0.5)
    args = parser.parse_args()

    fluid = solvation_system("lj", n_particles=args.particles, density=args.density, reduced_temperature=1.5, cutoff=2.0)
    n = args.nodes
    schedule = LambdaSchedule(electrostatics=[1.0] + [0.0] * (n - 1), sterics=[1.0 - k / (n - 1) for k in range(n)])
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=schedule)
    run = dict(md_steps=50, timestep=20.0, checkpoint_interval=1, platform="Reference", progress=False, equilibration_iterations=5,
               seed=2)
    folder = Path(tempfile.mkdtemp(prefix="bench_nti_training_"))
    run_leg(leg, folder / "mbar.nc", args.iterations, **run)
    reference = analyze_leg(folder / "mbar.nc")
    print(f"MBAR route, {n} states of λ, {args.iterations} iterations: ΔF(decouple) = {reference.delta_f:.3f} ± {reference.error:.3f} kT, "
          f"min. overlap {reference.min_neighbour_overlap:.3f}", flush=True)
    samples = nti.sample_endpoints(leg, args.samples, steps_between=50, equilibration_steps=500, platform="Reference")
    rows = []
    for steps in args.steps:
        start = time.process_time()
        with package_threads():  # 0 steps: φ as initialised, zero
            phi, _ = nti.train_neural_ti(leg, samples, n_steps=steps, batch_size=8, platform="Reference", progress=False)
        training = time.process_time() - start
        amortized, amortized_error = nti.amortized_delta_f(leg, samples, phi, n_points=args.points, platform="Reference")
        path = nti.exact_path_leg(leg, phi, nodes=n)
        run_leg(path, folder / f"path_{steps}.nc", args.iterations, **run)
        try:
            exact = analyze_leg(folder / f"path_{steps}.nc")
        except NoOverlapError as error:
            rows.append(f"| {steps} | {training:.0f} | {amortized:.2f} ± {amortized_error:.2f} | refused: {error.weakest_pair} | – | – |")
        else:
            profile = nti.path_ti(path, folder / f"path_{steps}.nc", exact.n_equilibration)["profile"]["mean"]
            rows.append(f"| {steps} | {training:.0f} | {amortized:.2f} ± {amortized_error:.2f} | {exact.delta_f:.3f} ± {exact.error:.3f} | "
                        f"{exact.min_neighbour_overlap:.3f} | {min(profile):.1f} … {max(profile):.1f} |")
        print(rows[-1], flush=True)
    print(f"\nReference (MBAR route): {reference.delta_f:.3f} ± {reference.error:.3f} kT\n")
    print("| training steps | training CPU s | amortized ΔF, kT (approximate) | exact path ΔF, kT | min. overlap | ⟨∂u/∂t⟩ at the nodes, kT |")
    print("|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
