"""The learned pair term of neural TI: φ_θ(r, t) in torch and its OpenMM table (:mod:`.neural_ti`)."""

__all__ = ["T_PARAMETER", "PairClasses", "pair_classes", "PairPotential", "learned_force"]

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import openmm
import torch
from openmm import unit
from torch import nn

from ..errors import InvalidInputError

T_PARAMETER = "neural_ti_t"
_TABLE_R, _TABLE_T = 200, 41  # grid of the OpenMM table of φ: r in [0, cutoff], t in [0, 1]


@dataclass(frozen=True)
class PairClasses:
    """Which learned function acts between each solute atom and each solvent atom.

    Atoms are classed by their nonbonded parameters (charge, σ, ε): solute class ``a`` and solvent class
    ``b`` give the pair class ``a * n_solvent_classes + b``, so pairs that interact alike in the physical
    potential (methane's four hydrogens with any water oxygen) share one φ. A Lennard-Jones solute in its
    own fluid has one class.

    Attributes
    ----------
    solute, solvent : tuple of int
        Atom indices.
    solute_class, solvent_class : tuple of int
        Class of each of them.
    n_solute_classes, n_solvent_classes : int
    """

    solute: tuple
    solvent: tuple
    solute_class: tuple
    solvent_class: tuple
    n_solute_classes: int
    n_solvent_classes: int

    @property
    def n_classes(self):
        return self.n_solute_classes * self.n_solvent_classes

    def matrix(self):
        """Pair class of every (solute atom, solvent atom), shape (n_solute, n_solvent)."""
        return torch.as_tensor(np.add.outer(np.asarray(self.solute_class) * self.n_solvent_classes, self.solvent_class))


def _classes(parameters):
    keys, labels = {}, []
    for charge, sigma, epsilon in parameters:
        key = (round(charge, 6), round(sigma, 6), round(epsilon, 6))
        labels.append(keys.setdefault(key, len(keys)))
    return tuple(labels), len(keys)


def pair_classes(system, solute_atoms):
    """:class:`PairClasses` of ``system`` (its ``NonbondedForce`` parameters) for the atoms ``solute_atoms``.

    Examples
    --------
    >>> from openmm_flowplugin.freeenergy import solvation_system
    >>> fluid = solvation_system("lj", n_particles=64, density=0.5)
    >>> pair_classes(fluid.solvent.system, [0]).n_classes
    1
    """
    force = next((f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)), None)
    if force is None:
        raise InvalidInputError("the system has no NonbondedForce.")
    parameters = [tuple(p.value_in_unit(u) for p, u in zip(force.getParticleParameters(i),
                                                             (unit.elementary_charge, unit.nanometer, unit.kilojoule_per_mole)))
                  for i in range(system.getNumParticles())]
    solute = tuple(int(i) for i in solute_atoms)
    solvent = tuple(i for i in range(system.getNumParticles()) if i not in set(solute))
    solute_class, n_a = _classes([parameters[i] for i in solute])
    solvent_class, n_b = _classes([parameters[i] for i in solvent])
    return PairClasses(solute, solvent, solute_class, solvent_class, n_a, n_b)


class PairPotential(nn.Module):
    """φ_θ(r, t) in kJ/mol: an MLP of Gaussian radial basis functions of r and of t, times a smooth cutoff.

    With ``n_classes > 1`` (a molecular solute, :class:`PairClasses`) the MLP also reads the pair class,
    one-hot: one learned function per class of solute-solvent pair.

    Parameters
    ----------
    cutoff : float
        nm; φ and its r-derivative vanish at and beyond it.
    n_basis : int
    hidden : tuple of int
    n_classes : int

    Examples
    --------
    >>> phi = PairPotential(cutoff=0.8)
    >>> phi(torch.tensor([0.3, 0.8]), torch.tensor(0.5)).shape
    torch.Size([2])
    """

    def __init__(self, cutoff, n_basis=16, hidden=(32, 32), n_classes=1):
        super().__init__()
        if not cutoff > 0:
            raise InvalidInputError(f"cutoff must be > 0 nm, got {cutoff}.")
        if int(n_classes) < 1:
            raise InvalidInputError(f"n_classes must be at least 1, got {n_classes}.")
        self.cutoff = float(cutoff)
        self.n_classes = int(n_classes)
        self.register_buffer("centres", torch.linspace(0.0, self.cutoff, n_basis, dtype=torch.float64))
        self.width = self.cutoff / n_basis
        layers, n_in = [], n_basis + 1 + (self.n_classes if self.n_classes > 1 else 0)
        for width in hidden:
            layers += [nn.Linear(n_in, width, dtype=torch.float64), nn.SiLU()]
            n_in = width
        layers.append(nn.Linear(n_in, 1, dtype=torch.float64))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)  # start at φ = 0: U_θ = U_phys
        nn.init.zeros_(self.net[-1].bias)
        self.config = {"cutoff": self.cutoff, "n_basis": int(n_basis), "hidden": [int(h) for h in hidden]}
        if self.n_classes > 1:  # absent for one class: the fingerprints of earlier single-class models stay valid
            self.config["n_classes"] = self.n_classes

    def forward(self, r, t, pair_class=None):
        r = r.to(torch.float64)
        basis = torch.exp(-(((r[..., None] - self.centres) / self.width) ** 2))
        t_column = torch.broadcast_to(torch.as_tensor(t, dtype=torch.float64), r.shape)[..., None]
        features = [basis, t_column]
        if self.n_classes > 1:
            if pair_class is None:
                raise InvalidInputError(f"this φ has {self.n_classes} pair classes: give pair_class.")
            classes = torch.broadcast_to(torch.as_tensor(pair_class), r.shape)
            features.append(nn.functional.one_hot(classes.long(), self.n_classes).to(torch.float64))
        value = self.net(torch.cat(features, dim=-1))[..., 0]
        switch = torch.where(r < self.cutoff, 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0), torch.zeros_like(r))
        return value * switch

    def learned_energy(self, x, t, solute, box, classes=None):
        """``t (1 - t) Σ_ij φ(r_ij, t, class_ij)`` in kJ/mol over solute atoms i and solvent atoms j (minimum
        image) for ``x`` (batch, n, 3) nm in a cubic ``box`` (nm); ``solute`` an atom index (one class) or
        ``classes`` a :class:`PairClasses`."""
        if classes is None:
            if self.n_classes > 1:
                raise InvalidInputError(f"this φ has {self.n_classes} pair classes: give classes (pair_classes(system, solute)).")
            solute = [int(solute)] if np.ndim(solute) == 0 else [int(i) for i in solute]
            solvent = [i for i in range(x.shape[1]) if i not in set(solute)]
            matrix = torch.zeros((len(solute), len(solvent)), dtype=torch.long)
        else:
            solute, solvent, matrix = list(classes.solute), list(classes.solvent), classes.matrix()
        d = x[:, None, solvent] - x[:, solute, None]  # (batch, solute, solvent, 3)
        d = d - box * torch.round(d / box)
        r = torch.sqrt((d**2).sum(-1))
        t = torch.as_tensor(t, dtype=torch.float64)
        per_configuration = t[:, None, None] if t.ndim == 1 else t  # one t per configuration, or one for all
        return t * (1 - t) * self(r, per_configuration, matrix).sum((-1, -2))

    def fingerprint(self):
        """sha256 of the configuration and weights (recorded with the exact-path storage)."""
        digest = hashlib.sha256(repr(self.config).encode())
        for tensor in self.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()


def _table(pair_potential, pair_class=None):
    r = torch.linspace(0.0, pair_potential.cutoff, _TABLE_R, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, _TABLE_T, dtype=torch.float64)
    with torch.no_grad():
        table = torch.stack([pair_potential(r, tk, pair_class) for tk in t], dim=1)  # (r, t)
    values = table.T.reshape(-1).tolist()  # OpenMM order: x (r) fastest
    return openmm.Continuous2DFunction(_TABLE_R, _TABLE_T, values, 0.0, pair_potential.cutoff, 0.0, 1.0)


def learned_force(pair_potential, n_particles, solute, classes=None, exclusions=()):
    """The learned term as an OpenMM ``CustomNonbondedForce``: ``t (1 - t) φ(r, t)`` over solute-solvent pairs.

    φ is tabulated on a (r, t) grid as a ``Continuous2DFunction`` (bicubic), one table per pair class
    (``classes``, a :class:`PairClasses`; chosen in the energy expression from per-particle class indices):
    OpenMM's U_θ between the end states is this interpolation of the torch φ, and exactly U_phys at t = 0
    and t = 1 (the prefactor). ``solute`` is an atom index, or the solute's atoms when ``classes`` is given.
    ``exclusions``: the System's excluded pairs (its ``NonbondedForce`` exceptions), which OpenMM requires
    every nonbonded force to share; none of them is a solute-solvent pair, so they change no energy.
    """
    if classes is None:
        if pair_potential.n_classes > 1:
            raise InvalidInputError(f"this φ has {pair_potential.n_classes} pair classes: give classes.")
        solute_atoms = [int(solute)] if np.ndim(solute) == 0 else [int(i) for i in solute]
        force = openmm.CustomNonbondedForce(f"{T_PARAMETER}*(1-{T_PARAMETER})*neural_ti_phi(r, {T_PARAMETER})")
        force.addTabulatedFunction("neural_ti_phi", _table(pair_potential))
        for _ in range(n_particles):
            force.addParticle([])
    else:
        if classes.n_classes != pair_potential.n_classes:
            raise InvalidInputError(f"φ was made for {pair_potential.n_classes} pair classes, this system has {classes.n_classes}.")
        solute_atoms = list(classes.solute)
        terms = " + ".join(f"delta(neural_ti_k - {k})*neural_ti_phi{k}(r, {T_PARAMETER})" for k in range(classes.n_classes))
        force = openmm.CustomNonbondedForce(f"{T_PARAMETER}*(1-{T_PARAMETER})*({terms}); "
                                            f"neural_ti_k = (nti_a1 + nti_a2)*{classes.n_solvent_classes} + nti_b1 + nti_b2")
        for k in range(classes.n_classes):
            force.addTabulatedFunction(f"neural_ti_phi{k}", _table(pair_potential, k))
        force.addPerParticleParameter("nti_a")  # solute class (0 for solvent atoms)
        force.addPerParticleParameter("nti_b")  # solvent class (0 for solute atoms)
        a = dict(zip(classes.solute, classes.solute_class))
        b = dict(zip(classes.solvent, classes.solvent_class))
        for i in range(n_particles):
            force.addParticle([float(a.get(i, 0)), float(b.get(i, 0))])
    force.addGlobalParameter(T_PARAMETER, 1.0)
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(pair_potential.cutoff)
    force.addInteractionGroup(solute_atoms, [i for i in range(n_particles) if i not in set(solute_atoms)])
    for i, j in exclusions:
        force.addExclusion(int(i), int(j))
    force.setName("NeuralTILearnedTerm")
    return force
