"""The CV-biased diffusion sampler: a controlled SDE trained from energies by adjoint and corrector
matching, pushed by a well-tempered bias on collective variables, with exact importance weights on the
discretized chain (Adjoint Sampling; Adjoint Schrödinger Bridge Sampling; WT-ASBS)."""

from .bias import WellTemperedBias
from .chain import Chains, DivergedTrainingError, backward_log_path_ratio, run_chains
from .coordinates import CartesianSpace, InternalCoordinateSpace
from .networks import Controller, Corrector
from .proposal import DiffusionProposal
from .sampler import DiffusionSampler, DiffusionSamples
from .schedule import NoiseSchedule

__all__ = [
    "DiffusionSampler",
    "DiffusionSamples",
    "DiffusionProposal",
    "WellTemperedBias",
    "NoiseSchedule",
    "CartesianSpace",
    "InternalCoordinateSpace",
    "Controller",
    "Corrector",
    "Chains",
    "run_chains",
    "backward_log_path_ratio",
    "DivergedTrainingError",
]
