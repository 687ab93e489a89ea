"""Molecular geometry in torch and numpy: internal coordinates with exact Jacobians, rigid alignment,
collective variables that equal OpenMM's."""

from .alignment import kabsch_align
from .collective_variables import (
    Angle,
    CartesianComponent,
    CollectiveVariable,
    CoordinationNumber,
    Distance,
    LinearCombination,
    Torsion,
    custom_cv_force,
)
from .internal import InternalCoordinates, InternalCoordinateTransform, dihedral

__all__ = [
    "InternalCoordinateTransform",
    "InternalCoordinates",
    "dihedral",
    "kabsch_align",
    # collective variables
    "CollectiveVariable",
    "Torsion",
    "Distance",
    "Angle",
    "CoordinationNumber",
    "CartesianComponent",
    "LinearCombination",
    "custom_cv_force",
]
