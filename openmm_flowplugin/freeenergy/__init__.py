"""Solvation free energies: alchemical set-ups, the MBAR route, Lennard-Jones references.

A :class:`SolvationSystem` holds the two legs of a solvation cycle (solute in solvent, solute alone)
and the options that decide their Hamiltonian; :func:`solvation_system` builds presets and small
molecules (builders in the repository's ``systems/`` folder); :func:`solvation_free_energy` runs the
alchemical route (openmmtools replica exchange over λ, MBAR with pymbar), resumable in its output folder.
"""

__all__ = ["SolvationSystem", "solvation_system", "solvation_free_energy", "SolvationResult", "LambdaSchedule",
           "default_schedule", "alchemical_leg", "run_leg", "analyze_leg"]

from .alchemical import LambdaSchedule, alchemical_leg, default_schedule
from .mbar_route import analyze_leg, run_leg
from .presets import solvation_system
from .solvation import SolvationResult, solvation_free_energy
from .cycle import SolvationSystem
