"""Collective variables in torch that equal OpenMM's, differentiable, each with its OpenMM ``Force``.

Each CV is a :class:`torch.nn.Module` mapping positions ``x`` of shape (batch, n_atoms, 3) in nm
(float64 or float32, any device) to values of shape (batch,) in the input's dtype. Its
:meth:`~CollectiveVariable.to_openmm_force` builds an OpenMM ``Force`` whose energy is the CV value,
and :func:`custom_cv_force` puts several in one ``CustomCVForce`` (e.g. a bias on the CVs).

Periodic CVs (``periodic=True``) use the minimum image in a *rectangular* box: lengths ``(Lx, Ly, Lz)``
given at construction (the default) or at call time (``cv(x, box=...)``, shape (3,) or (batch, 3),
which wins). Their OpenMM forces use the Context's box, so keep the two equal.
"""

__all__ = [
    "CollectiveVariable",
    "Torsion",
    "Distance",
    "Angle",
    "CoordinationNumber",
    "CartesianComponent",
    "LinearCombination",
    "custom_cv_force",
]

import copy

import numpy as np
import openmm
import torch

from ..errors import InvalidInputError, InvalidTypeError
from ._cv_base import CollectiveVariable, real_number
from ._cv_geometric import (
    Angle,
    CartesianComponent,
    CoordinationNumber,
    Distance,
    Torsion,
)


class LinearCombination(CollectiveVariable):
    """``offset + sum_k coefficients[k] * cvs[k](x)``; its OpenMM force is a ``CustomCVForce``.

    Parameters
    ----------
    cvs : sequence of CollectiveVariable
    coefficients : sequence of float
        One real number per CV (written exactly into the OpenMM expression).
    offset : float

    Examples
    --------
    >>> x = torch.tensor([[[0.0, 0.0, 0.0], [0.3, 0.4, 0.0]]])
    >>> LinearCombination([Distance(0, 1), CartesianComponent(1, "x")], [2.0, -1.0], offset=0.5)(x)
    tensor([1.2000])
    """

    def __init__(self, cvs, coefficients, offset=0.0):
        super().__init__()
        cvs = list(cvs) if not isinstance(cvs, CollectiveVariable) else [cvs]
        if not cvs or not all(isinstance(cv, CollectiveVariable) for cv in cvs):
            raise InvalidTypeError(f"cvs must be a non-empty sequence of CollectiveVariable modules, got {cvs!r}.")
        coefficients = [real_number(c, "coefficients") for c in np.atleast_1d(np.asarray(coefficients, dtype=object))]
        if len(coefficients) != len(cvs):
            raise InvalidInputError(f"give one coefficient per CV: {len(cvs)} CVs but {len(coefficients)} coefficients.")
        self.cvs = torch.nn.ModuleList(cvs)
        self.coefficients = tuple(coefficients)
        self.offset = real_number(offset, "offset")
        self.atoms = tuple(sorted({a for cv in cvs for a in cv.atoms}))
        self.uses_periodic_box = any(cv.uses_periodic_box for cv in cvs)

    def _compute(self, x, box):
        total = sum(c * cv._compute(x, box) for c, cv in zip(self.coefficients, self.cvs))
        return total + self.offset

    def to_openmm_force(self):
        terms = [repr(self.offset)] + [f"({c!r})*cv{k}" for k, c in enumerate(self.coefficients)]
        return custom_cv_force("+".join(terms), **{f"cv{k}": cv for k, cv in enumerate(self.cvs)})

    def extra_repr(self):
        return f"coefficients={self.coefficients}, offset={self.offset}"


def custom_cv_force(expression, **cvs):
    """An ``openmm.CustomCVForce`` with energy ``expression`` of the named collective variables.

    Parameters
    ----------
    expression : str
        Lepton expression in the CV names (energy in kJ/mol), e.g. ``"0.5*k*(phi-1)^2"`` (global
        parameters such as ``k`` are added by the caller with ``addGlobalParameter``).
    **cvs : CollectiveVariable or openmm.Force
        Each becomes a collective variable of that name (a ``Force`` is copied).

    Returns
    -------
    openmm.CustomCVForce

    Examples
    --------
    >>> force = custom_cv_force("phi - psi", phi=Torsion(4, 6, 8, 14), psi=Torsion(6, 8, 14, 16))
    >>> [force.getCollectiveVariableName(k) for k in range(force.getNumCollectiveVariables())]
    ['phi', 'psi']
    """
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidInputError(f"expression must be a non-empty string in the CV names, got {expression!r}.")
    if not cvs:
        raise InvalidInputError("custom_cv_force needs at least one CV, e.g. custom_cv_force('phi', phi=Torsion(4, 6, 8, 14)).")
    force = openmm.CustomCVForce(expression)
    for name, cv in cvs.items():
        if isinstance(cv, CollectiveVariable):
            cv = cv.to_openmm_force()
        elif isinstance(cv, openmm.Force):
            cv = copy.deepcopy(cv)  # the CustomCVForce takes ownership of what it is given
        else:
            raise InvalidTypeError(f"CV {name!r} must be a CollectiveVariable or an openmm.Force, got {type(cv).__name__}.")
        force.addCollectiveVariable(name, cv)
    return force
