"""Exact Monte Carlo moves with learned proposals for openmmtools samplers."""

from .flow_move import FlowMCMove

__all__ = ["FlowMCMove"]
