"""The CV-biased diffusion sampler: a controlled SDE trained from energies by adjoint and corrector
matching, pushed by a well-tempered bias on collective variables, with exact importance weights on the
discretized chain (Adjoint Sampling; Adjoint Schrödinger Bridge Sampling; WT-ASBS)."""

from .bias import WellTemperedBias
from .chain import Chains, DivergedTrainingError, run_chains
from .coordinates import CartesianSpace, InternalCoordinateSpace
from .networks import Controller, Corrector
from .sampler import DiffusionSampler, DiffusionSamples
from .schedule import NoiseSchedule

__all__ = [
    "DiffusionSampler",
    "DiffusionSamples",
    "WellTemperedBias",
    "NoiseSchedule",
    "CartesianSpace",
    "InternalCoordinateSpace",
    "Controller",
    "Corrector",
    "Chains",
    "run_chains",
    "DivergedTrainingError",
]
