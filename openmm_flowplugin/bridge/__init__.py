"""The OpenMM <-> torch energy bridge: batched reduced energies and forces, autograd, worker processes."""

from .energy import OpenMMEnergy

__all__ = ["OpenMMEnergy"]
