"""Excess chemical potential of a Lennard-Jones fluid by two routes, against the JZG equation of state.

The solvation free energy of one particle of the fluid is its excess chemical potential mu_ex. This script
computes it by the alchemical MBAR route (openmmtools replica exchange over soft-core λ states, MBAR) and by
neural thermodynamic integration (a learned potential with exact end states, sampled at a few values of t,
MBAR over them), adds the analytic tail correction of the truncated potential and compares both with the
Johnson-Zollweg-Gubbins equation of state of the full Lennard-Jones fluid.

Run: ``python examples/lj_chemical_potential.py [output_dir]`` (N = 500, rho* = 0.6, T* = 1.2: about 25 min
on 2 CPU cores; run it again to resume), or ``--quick`` for a 36-particle fluid in about a minute (not
converged: it shows the workflow, not the number).
"""

import sys

from openmm_flowplugin.freeenergy import solvation_free_energy, solvation_system
from openmm_flowplugin.freeenergy.lj_reference import jzg_excess_chemical_potential, lj_tail_correction_mu
from openmm_flowplugin.freeenergy.neural_ti import neural_ti_free_energy

quick = "--quick" in sys.argv
arguments = [a for a in sys.argv[1:] if a != "--quick"]
out = arguments[0] if arguments else "lj_chemical_potential"

density, temperature, cutoff = (0.5, 1.5, 2.0) if quick else (0.6, 1.2, 2.5)
fluid = solvation_system("lj", n_particles=36 if quick else 500, density=density, reduced_temperature=temperature, cutoff=cutoff)
run = dict(n_iterations=20, md_steps=20, equilibration_iterations=2) if quick else dict(n_iterations=200, md_steps=200)

mbar = solvation_free_energy(fluid, out, **run)
neural = neural_ti_free_energy(fluid, out, n_samples=16 if quick else 200, n_train_steps=20 if quick else 500,
                               nodes=6 if quick else 11, **run)

tail = lj_tail_correction_mu(density, cutoff)  # units of epsilon
jzg = jzg_excess_chemical_potential(density, temperature)
print(f"LJ fluid, N = {fluid.solvent.n_atoms}, rho* = {density}, T* = {temperature}, truncated at {cutoff} sigma")
print(f"{'route':<36} {'mu_ex (kT)':>16} {'+ tail (epsilon)':>18}")
for name, mu, error in (("alchemical MBAR", mbar.delta_g, mbar.error),
                        ("neural TI, exact path", -neural["delta_f_kT"], neural["error_kT"]),
                        ("neural TI, amortized (approximate)", -neural["amortized_delta_f_kT"], neural["amortized_error_kT"])):
    print(f"{name:<36} {mu:>9.3f} ± {error:<5.3f} {mu * temperature + tail:>11.3f} ± {error * temperature:.3f}")
print(f"{'JZG equation of state (full LJ)':<36} {'':>16} {jzg:>11.3f}")
