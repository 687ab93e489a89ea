"""Hydration free energy of methane (GAFF2, AM1-BCC, TIP3P) by the alchemical MBAR route (and neural TI).

Builds methane from SMILES with RDKit and AmberTools (``pip install 'openmm_flowplugin[solvation]'``),
solvates it in a TIP3P box, and runs the solvent and vacuum legs: replica exchange over the λ states
(charges off first, then soft-core sterics), MBAR, ΔG_hyd = ΔF(vacuum) − ΔF(solvent) with its standard
error, the overlap matrices and forward/reverse convergence (in ``output_dir/results.md``). With
``--neural-ti`` neural thermodynamic integration of the solvent leg runs in the same folder (the vacuum
leg is shared) and the two ΔG are printed side by side.

Run: ``python examples/solvation_methane.py [output_dir]``: about 8 CPU-hours on 2 CPU cores at these
settings (500 iterations × 500 steps; run it again to resume); on a GPU machine add ``--platform CUDA``. ``--quick`` runs a few
iterations to show the workflow (minutes; not converged).
"""

import sys

from openmm_flowplugin.freeenergy import solvation_free_energy, solvation_system

quick = "--quick" in sys.argv
with_neural_ti = "--neural-ti" in sys.argv
platform = sys.argv[sys.argv.index("--platform") + 1] if "--platform" in sys.argv else None
arguments = [a for a in sys.argv[1:] if not a.startswith("--") and a != platform]
out = arguments[0] if arguments else "methane_hydration"

methane = solvation_system("methane")  # or solvation_system(smiles="CCO", name="ethanol"), mol2=..., prmtop=...
settings = dict(n_iterations=10, md_steps=5, equilibration_iterations=0, checkpoint_interval=5) if quick else dict(n_iterations=500, md_steps=500)
result = solvation_free_energy(methane, out, platform=platform, **settings)
print(result.to_markdown())
note = " (--quick: a few femtoseconds per state, NOT converged)" if quick else ""
print(f"ΔG_hyd(methane) = {result.delta_g_kcal:.2f} ± {result.error_kcal:.2f} kcal/mol{note}; experiment: +2.00 kcal/mol")
if with_neural_ti:
    from openmm_flowplugin.freeenergy.neural_ti import neural_ti_free_energy

    neural_settings = dict(n_samples=8, n_train_steps=5, nodes=3) if quick else dict(n_samples=200, n_train_steps=500, nodes=11)
    neural = neural_ti_free_energy(methane, out, platform=platform, **settings, **neural_settings)
    print(open(f"{out}/neural_ti.md").read())
    print(f"ΔG_hyd(methane), neural TI (exact path) = {neural['delta_g_kcal_mol']:.2f} ± {neural['delta_g_error_kcal_mol']:.2f} "
          f"kcal/mol{note}; MBAR route {result.delta_g_kcal:.2f} ± {result.error_kcal:.2f}")
