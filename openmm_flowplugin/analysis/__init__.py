"""Analysis of samples: importance weights and ESS, flow evaluation, plots."""

from .evaluation import FlowEvaluation, backbone_dihedrals, evaluate_flow
from .weights import effective_sample_size, importance_weights, weighted_fraction

__all__ = [
    "importance_weights",
    "effective_sample_size",
    "weighted_fraction",
    "evaluate_flow",
    "FlowEvaluation",
    "backbone_dihedrals",
]
