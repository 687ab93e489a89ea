"""The OpenMM <-> torch energy bridge: batched reduced energies and forces, autograd, worker processes."""

from .energy import EnergyEvaluationError, OpenMMEnergy

__all__ = ["OpenMMEnergy", "EnergyEvaluationError"]
