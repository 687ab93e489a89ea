"""Analysis of samples: importance weights and ESS, flow evaluation, free-energy surfaces, plots."""

from .fes import BasinFreeEnergy, FreeEnergySurface, basin_free_energy_difference, fes_error, free_energy_surface
from .evaluation import FlowEvaluation, backbone_dihedrals, evaluate_flow
from .weights import effective_sample_size, importance_weights, pareto_k, pareto_k_threshold, weighted_fraction

__all__ = [
    "importance_weights",
    "effective_sample_size",
    "pareto_k",
    "pareto_k_threshold",
    "weighted_fraction",
    "evaluate_flow",
    "FlowEvaluation",
    "backbone_dihedrals",
    "free_energy_surface",
    "basin_free_energy_difference",
    "fes_error",
    "FreeEnergySurface",
    "BasinFreeEnergy",
]
