"""Molecular geometry in torch and numpy: internal coordinates with exact Jacobians, rigid alignment."""

from .alignment import kabsch_align
from .internal import InternalCoordinates, InternalCoordinateTransform, dihedral

__all__ = ["InternalCoordinateTransform", "InternalCoordinates", "dihedral", "kabsch_align"]
