"""Normalizing flows: Boltzmann generators on internal coordinates, conditional (Timewarp) flows, training, checkpoints."""

from .._compat import package_getattr
from .boltzmann_generator import BoltzmannGenerator
from .checkpoints import CheckpointError, file_sha256, load_flow, save_flow
from .conditional import ConditionalFlow
from .conditional_io import load_conditional_flow, save_conditional_flow
from .internal_conditional import InternalCoordinateProposal
from .transferable import TransferableConditionalFlow
from .conditional_training import fine_tune_acceptance, train_timewarp, trajectory_pairs
from .training import ESSSelector, TrainingHistory, train_maximum_likelihood, train_reverse_kl

__all__ = [
    "BoltzmannGenerator",
    "load_flow",
    "save_flow",
    "file_sha256",
    "CheckpointError",
    "train_maximum_likelihood",
    "train_reverse_kl",
    "ESSSelector",
    "TrainingHistory",
    "ConditionalFlow",
    "TransferableConditionalFlow",
    "InternalCoordinateProposal",
    "save_conditional_flow",
    "load_conditional_flow",
    "train_timewarp",
    "fine_tune_acceptance",
    "trajectory_pairs",
]

# Private names of the flat layout's ``flows`` module, which stored data (pickles) may name.
__getattr__ = package_getattr(__name__, ('boltzmann_generator', 'checkpoints', 'training'))
