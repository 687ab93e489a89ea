"""Exact Monte Carlo moves with learned proposals for openmmtools samplers."""

from .flow_move import FlowMCMove
from .timewarp_explore import BiasedExploration, explore_biased
from .timewarp_move import TimewarpMove

__all__ = ["FlowMCMove", "TimewarpMove", "explore_biased", "BiasedExploration"]
