"""Molecular dynamics through ``openmm.app.Simulation``: data for training, with checkpoints and resume."""

from .md import simulate
from .reporters import SimulationUnstableError
from .trajectory_files import TRAJECTORY_FORMATS

__all__ = ["simulate", "SimulationUnstableError", "TRAJECTORY_FORMATS"]
