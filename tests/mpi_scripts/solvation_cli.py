"""The ``solvation`` command on a tiny Lennard-Jones fluid, run by tests/test_mpi_solvation.py as
``[mpirun -n N] python solvation_cli.py OUTPUT ITERATIONS``.

``--preset lj`` is replaced by a 36-particle fluid at rho* = 0.5, T* = 1.5 (the one tests/test_freeenergy_mbar.py
uses), sterics in 6 states, so that one leg of replica exchange takes seconds. Everything else is the command
as a user runs it: storage, MBAR, results.json/.md, what it prints.
"""

import sys

import openmm_flowplugin.freeenergy as freeenergy
from openmm_flowplugin._systems.lj_fluids import lj_fluid
from openmm_flowplugin.cli import main
from openmm_flowplugin.freeenergy import solvation as solvation_module
from openmm_flowplugin.freeenergy.alchemical import LambdaSchedule

FLUID = dict(n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
SCHEDULE = LambdaSchedule(electrostatics=[1, 0, 0, 0, 0, 0], sterics=[1, 0.8, 0.6, 0.4, 0.2, 0])


def _tiny(preset=None, **options):
    return lj_fluid(**FLUID)


def _with_schedule(function):
    def wrapped(*args, **kwargs):
        kwargs.setdefault("schedule", SCHEDULE)
        return function(*args, **kwargs)

    return wrapped


if __name__ == "__main__":
    output, iterations = sys.argv[1], sys.argv[2]
    freeenergy.solvation_system = _tiny
    freeenergy.solvation_free_energy = _with_schedule(solvation_module.solvation_free_energy)
    sys.exit(main(["solvation", "--preset", "lj", "-o", output, "--iterations", iterations, "--md-steps", "50",
                   "--timestep", "20", "--checkpoint-interval", "10", "--equilibration", "10", "--platform", "Reference",
                   "--no-progress"], standalone_mode=False))
