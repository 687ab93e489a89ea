"""Molecular dynamics through ``openmm.app.Simulation``: data for training, with checkpoints and resume."""

from .md import simulate

__all__ = ["simulate"]
