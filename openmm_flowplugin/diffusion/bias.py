"""A well-tempered bias on two collective variables, tabulated on a grid, the same in torch and in OpenMM.

Hills are Gaussians deposited on the grid nodes; between nodes the bias is the bicubic spline OpenMM's
``Continuous2DFunction`` builds from the node values, evaluated by :mod:`._bicubic` in torch, so the
diffusion sampler and the exported ``CustomCVForce`` (:meth:`WellTemperedBias.to_openmm_force`) sample
one target, exp(−β[E + V(s)]). Well-tempered heights h·exp(−V(s)/(k_B ΔT)), ΔT = (γ − 1) T, make
−γ/(γ − 1) V(s) an estimate of the free energy F(s) — an approximate one, exact only at convergence; the
reweighted FES (:mod:`openmm_flowplugin.analysis.fes`) is the main result.

Examples
--------
>>> from openmm_flowplugin.geometry import CartesianComponent
>>> bias = WellTemperedBias([CartesianComponent(0, "x"), CartesianComponent(0, "y")],
...                         lower=(-2.0, -1.0), upper=(2.0, 3.0), n_nodes=(81, 81), hill_width=0.2,
...                         hill_height=1.0, bias_factor=8.0, temperature=300.0)
>>> bias.deposit([[0.0, 1.0]]); round(float(bias.value_at([[0.0, 1.0]])[0]), 3)
1.0
"""

__all__ = ["WellTemperedBias"]

import hashlib
import math

import numpy as np
import openmm
import torch
from openmm import unit

from ..errors import InvalidInputError
from ..geometry import CollectiveVariable, Torsion
from ..units import in_unit, kT as _kT
from ._bicubic import bicubic_coefficients, evaluate_bicubic
from ._checks import is_integer


class WellTemperedBias:
    """Well-tempered metadynamics bias V(s) on a 2D grid of collective variables.

    Parameters
    ----------
    cvs : sequence of two CollectiveVariable
        s = (s_1, s_2), torch modules that equal OpenMM's (:mod:`openmm_flowplugin.geometry`).
    lower, upper : sequence of two float
        Grid range per CV (the CVs' units: nm or rad). Outside it a non-periodic bias is 0 (as in
        OpenMM): cover the region the target can reach. Periodic grids span exactly [−π, π].
    n_nodes : sequence of two int
        Nodes per CV, both ends included.
    hill_width : float or sequence of two float
        Gaussian standard deviation per CV; the node spacing must not exceed half of it.
    hill_height : float or Quantity
        h, kJ/mol: the height of a hill deposited where V = 0.
    bias_factor : float
        γ > 1.
    temperature : float or Quantity
        T (K).
    periodic : bool
        Both CVs periodic (torsions) or neither; mixed periodicity is not supported by OpenMM's
        ``Continuous2DFunction``.

    Attributes
    ----------
    values : numpy.ndarray, shape=n_nodes
        V at the nodes, kJ/mol (float64).
    n_hills : int
        Hills deposited so far.
    """

    def __init__(self, cvs, lower, upper, n_nodes, hill_width, hill_height, bias_factor, temperature, periodic=False):
        self.cvs = list(cvs)
        if len(self.cvs) != 2 or not all(isinstance(cv, CollectiveVariable) for cv in self.cvs):
            raise InvalidInputError(f"a grid bias needs exactly two CollectiveVariable objects, got {cvs!r}.")
        self.periodic = bool(periodic)
        torsions = [isinstance(cv, Torsion) for cv in self.cvs]
        if any(torsions) and not self.periodic:
            raise InvalidInputError("a torsion is periodic but the grid is not: pass periodic=True with lower=(-pi, -pi), upper=(pi, pi).")
        if self.periodic and not all(torsions):
            raise InvalidInputError("a periodic grid needs periodic CVs (torsions) on both axes; use periodic=False for the others.")
        self.lower = np.asarray(lower, dtype=np.float64).reshape(-1)
        self.upper = np.asarray(upper, dtype=np.float64).reshape(-1)
        nodes = list(np.asarray(n_nodes, dtype=object).reshape(-1))
        if not all(is_integer(n) for n in nodes):
            raise InvalidInputError(f"n_nodes must be two integers, got {n_nodes!r}.")
        self.n_nodes = tuple(int(n) for n in nodes)
        if self.lower.shape != (2,) or self.upper.shape != (2,) or len(self.n_nodes) != 2:
            raise InvalidInputError("lower, upper and n_nodes need one entry per CV (two).")
        if not np.all(self.upper > self.lower) or min(self.n_nodes) < 4:
            raise InvalidInputError(f"need upper > lower and at least 4 nodes per CV, got lower={self.lower}, upper={self.upper}, n_nodes={self.n_nodes}.")
        if self.periodic and not (np.allclose(self.lower, -math.pi) and np.allclose(self.upper, math.pi)):
            raise InvalidInputError(f"a periodic grid must span [-pi, pi] on both axes, got lower={self.lower}, upper={self.upper}.")
        self.spacing = (self.upper - self.lower) / (np.asarray(self.n_nodes) - 1)
        width = np.asarray(hill_width, dtype=np.float64)
        if width.shape not in ((), (1,), (2,)):
            raise InvalidInputError(f"hill_width must be one number or one per CV (two), got {hill_width!r}.")
        self.hill_width = np.broadcast_to(width, (2,)).copy()
        if not np.all(np.isfinite(self.hill_width) & (self.hill_width > 0)):
            raise InvalidInputError(f"hill_width must be positive, got {hill_width!r}.")
        too_coarse = self.spacing > 0.5 * self.hill_width
        if too_coarse.any():
            needed = np.ceil((self.upper - self.lower) / (0.5 * self.hill_width)).astype(int) + 1
            raise InvalidInputError(f"the grid is too coarse for the hill width: spacing {self.spacing} > half the width "
                                    f"{0.5 * self.hill_width}; use at least n_nodes={tuple(int(n) for n in needed)}.")
        self.hill_height = float(in_unit(hill_height, unit.kilojoule_per_mole, "hill_height"))
        if not (math.isfinite(self.hill_height) and self.hill_height > 0):
            raise InvalidInputError(f"hill_height must be a finite energy > 0, got {hill_height!r}.")
        self.bias_factor = float(bias_factor)
        if not (math.isfinite(self.bias_factor) and self.bias_factor > 1.0):
            raise InvalidInputError(f"bias_factor must be a finite number > 1, got {bias_factor!r} (for an unbiased run, pass no bias).")
        self.kT = _kT(temperature)
        self.values = np.zeros(self.n_nodes)
        self.n_hills = 0
        self._coefficients = None
        self._nodes = [np.linspace(lo, hi, n) for lo, hi, n in zip(self.lower, self.upper, self.n_nodes)]

    # ------------------------------------------------------------------ deposits
    def deposit(self, cv_values):
        """Deposit one well-tempered hill at each row of ``cv_values`` (n, 2), heights from the bias before this call."""
        centres = np.asarray(cv_values, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(centres).all():
            raise InvalidInputError("cannot deposit hills at non-finite CV values.")
        heights = self.hill_height * np.exp(-self.value_at(centres) / ((self.bias_factor - 1.0) * self.kT))
        added = np.zeros(self.n_nodes)
        for centre, height in zip(centres, heights):
            dx = self._separation(self._nodes[0] - centre[0], 0)
            dy = self._separation(self._nodes[1] - centre[1], 1)
            added += height * np.exp(-0.5 * dx[:, None] ** 2) * np.exp(-0.5 * dy[None, :] ** 2)
        if self.periodic:  # the last node is the first one again
            added[-1, :] = added[0, :]
            added[:, -1] = added[:, 0]
        self.values = self.values + added
        self.n_hills += len(centres)
        self._coefficients = None

    def _separation(self, delta, axis):
        if self.periodic:
            delta = delta - 2.0 * math.pi * np.round(delta / (2.0 * math.pi))
        return delta / self.hill_width[axis]

    # ------------------------------------------------------------------ evaluation
    def _coefficient_tensor(self, dtype, device):
        if self._coefficients is None:
            self._coefficients = torch.from_numpy(bicubic_coefficients(self.values, self.spacing, self.periodic))
        return self._coefficients.to(dtype=dtype, device=device)

    def of_cvs(self, s):
        """V(s) in kJ/mol for CV values ``s`` (batch, 2) as a torch tensor, differentiable."""
        return evaluate_bicubic(self._coefficient_tensor(s.dtype, s.device), torch.as_tensor(self.lower, dtype=s.dtype, device=s.device),
                                torch.as_tensor(self.spacing, dtype=s.dtype, device=s.device), self.periodic, s)

    def cv_values(self, x):
        """s(x), shape (batch, 2), for positions ``x`` (batch, n_atoms, 3) in nm."""
        return torch.stack([cv(x) for cv in self.cvs], -1)

    def __call__(self, x):
        """V(s(x)) in kJ/mol for positions ``x`` (batch, n_atoms, 3), differentiable in ``x``."""
        return self.of_cvs(self.cv_values(x))

    def value_at(self, cv_values):
        """V at CV values (numpy, shape (n, 2)) in kJ/mol, as a numpy array."""
        s = torch.as_tensor(np.asarray(cv_values, dtype=np.float64).reshape(-1, 2))
        return self.of_cvs(s).numpy()

    def free_energy_estimate(self):
        """The well-tempered estimate F(s) = −γ/(γ−1) V(s) at the nodes, kJ/mol, minimum 0 — approximate."""
        f = -self.bias_factor / (self.bias_factor - 1.0) * self.values
        return f - f.min()

    @property
    def max_value(self):
        """Largest V on the grid, kJ/mol."""
        return float(self.values.max())

    # ------------------------------------------------------------------ OpenMM and storage
    def to_openmm_force(self, name="wt_bias"):
        """The bias as a ``CustomCVForce`` with a tabulated ``Continuous2DFunction`` (frozen: a copy of the current grid).

        Add it to a System to run MD, FlowMCMove or FlowMCIntegrator on exp(−β[E + V(s)]).
        """
        table = openmm.Continuous2DFunction(self.n_nodes[0], self.n_nodes[1], self.values.T.ravel().tolist(),
                                            float(self.lower[0]), float(self.upper[0]), float(self.lower[1]), float(self.upper[1]),
                                            self.periodic)
        force = openmm.CustomCVForce(f"{name}(s1, s2)")
        force.addTabulatedFunction(name, table)
        for label, cv in zip(("s1", "s2"), self.cvs):
            force.addCollectiveVariable(label, cv.to_openmm_force())
        force.setName(f"WellTemperedBias:{name}")
        return force

    def state_dict(self):
        """Plain-data state: settings, node values and the hill count."""
        return dict(lower=self.lower.tolist(), upper=self.upper.tolist(), n_nodes=list(self.n_nodes), hill_width=self.hill_width.tolist(),
                    hill_height=self.hill_height, bias_factor=self.bias_factor, kT=self.kT, periodic=self.periodic,
                    values=torch.from_numpy(self.values.copy()), n_hills=self.n_hills)

    def describe(self):
        """The bias's identity as plain data: each CV (its OpenMM force, hashed) and the grid and hill settings.

        A checkpoint keeps it, so training resumes only with the same CVs and grid.
        """
        cvs = [dict(cv=" ".join(repr(cv).split()),
                    openmm=hashlib.sha256(openmm.XmlSerializer.serialize(cv.to_openmm_force()).encode()).hexdigest())
               for cv in self.cvs]
        settings = self.state_dict()
        return dict(cvs=cvs, **{key: settings[key] for key in ("lower", "upper", "n_nodes", "hill_width", "hill_height", "bias_factor",
                                                               "periodic")})

    def load_state_dict(self, state):
        """Restore node values and hill count from :meth:`state_dict`; settings must match."""
        mine = self.state_dict()
        differs = [key for key in ("lower", "upper", "n_nodes", "hill_width", "hill_height", "bias_factor", "periodic")
                   if not np.allclose(np.asarray(state[key], dtype=float), np.asarray(mine[key], dtype=float))]
        if differs or not math.isclose(state["kT"], self.kT, rel_tol=1e-12):
            raise InvalidInputError(f"the stored bias was built with other settings ({', '.join(differs) or 'temperature'}).")
        self.values = np.asarray(state["values"], dtype=np.float64).copy()
        self.n_hills = int(state["n_hills"])
        self._coefficients = None

    def __repr__(self):
        return (f"WellTemperedBias(n_nodes={self.n_nodes}, hill_width={self.hill_width.tolist()}, hill_height={self.hill_height}, "
                f"bias_factor={self.bias_factor}, periodic={self.periodic}, n_hills={self.n_hills})")
