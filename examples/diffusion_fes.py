"""Free-energy surface of the Müller–Brown potential by the CV-biased diffusion sampler, against quadrature.

Trains a diffusion sampler from energies alone with a well-tempered bias on (x, y), draws samples with exact
importance weights for the Boltzmann distribution, and compares the reweighted ΔF between the two deep
basins, and the FES, with the exact values from numerical quadrature. Writes the run folder of
``openmm-flowplugin diffuse`` (fes.png, results.json, checkpoint.pt: run again to resume an interrupted run, with
``--overwrite`` to replace a finished run's results).

Alanine dipeptide (φ/ψ, internal coordinates): ``examples/diffusion_alanine_fes.py``.

Run: ``python examples/diffusion_fes.py [output_dir] [--overwrite] [--quick]`` (about 30 s on 2 CPU cores; ``--quick`` about
5 s, not converged).
"""

import argparse

import numpy as np

from openmm_flowplugin import systems
from openmm_flowplugin.analysis import fes_error, free_energy_surface
from openmm_flowplugin.diffusion.workflow import diffusion_free_energy_surface, parse_cv

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("output", nargs="?", default="diffusion_fes")
parser.add_argument("--quick", action="store_true")
parser.add_argument("--overwrite", action="store_true", help="replace the results of a finished run in output_dir")
args = parser.parse_args()

molecular_system = systems.get("mueller_brown")
run = dict(n_iterations=10, n_samples=1000) if args.quick else dict(n_iterations=150, n_samples=8000)
cvs = dict([parse_cv("x:x@0"), parse_cv("y:y@0")])
grid = {"x": (-2.0, 1.5), "y": (-1.0, 2.5)}
basins = {"A": ((-1.5, -0.2), (1.0, 2.0)), "B": ((0.2, 1.2), (-0.4, 0.4))}
results = diffusion_free_energy_surface(molecular_system, cvs, args.output, grid_ranges=grid, basins=basins, bias_factor=6.0,
                                        hill_width=0.25, overwrite=args.overwrite, **run)
reference = molecular_system.reference
pair = results["basins"]["A -> B"]


def probability(box):
    (x0, x1), (y0, y1) = box
    return reference.probability(lambda x, y: (x >= x0) & (x < x1) & (y >= y0) & (y < y1))


exact = -reference.kT * np.log(probability(basins["B"]) / probability(basins["A"]))
samples = np.load(f"{args.output}/samples.npz")
edges = [np.linspace(-2.0, 1.5, 15), np.linspace(-1.0, 2.5, 15)]
estimate = free_energy_surface(samples["cv_values"], samples["log_weights"], edges, molecular_system.temperature)
exact_p = np.array([[probability(((a, b), (c, d))) for c, d in zip(edges[1][:-1], edges[1][1:])]
                    for a, b in zip(edges[0][:-1], edges[0][1:])])
with np.errstate(divide="ignore"):
    exact_f = -reference.kT * np.log(exact_p)
print(f"Müller–Brown, {results['iterations']} iterations, {results['energy_evaluations']:,} energy evaluations, "
      f"ESS {results['ess_fraction']:.4f}")
if "delta_f_kJ_per_mol" in pair:
    print(f"ΔF(A → B) reweighted  {pair['delta_f_kJ_per_mol']:.2f} ± {pair['error_kJ_per_mol']:.2f} kJ/mol")
    print(f"  weights' tail: {pair['diagnosis']}")
else:
    print(f"ΔF(A → B) reweighted  not estimated: {pair['not_estimated']}")
print(f"ΔF(A → B) quadrature  {exact:.2f} kJ/mol")
print(f"FES error (population-weighted, bins within 20 kJ/mol): {fes_error(estimate.free_energy, exact_f, exact_p):.2f} kJ/mol")
print(f"results in {args.output}/")
