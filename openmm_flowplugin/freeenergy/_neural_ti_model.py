"""The learned pair term of neural TI: φ_θ(r, t) in torch and its OpenMM table (:mod:`.neural_ti`)."""

__all__ = ["T_PARAMETER", "PairPotential", "learned_force"]

import hashlib
import math

import openmm
import torch
from torch import nn

from ..errors import InvalidInputError

T_PARAMETER = "neural_ti_t"
_TABLE_R, _TABLE_T = 200, 41  # grid of the OpenMM table of φ: r in [0, cutoff], t in [0, 1]


class PairPotential(nn.Module):
    """φ_θ(r, t) in kJ/mol: an MLP of Gaussian radial basis functions of r and of t, times a smooth cutoff.

    Parameters
    ----------
    cutoff : float
        nm; φ and its r-derivative vanish at and beyond it.
    n_basis : int
    hidden : tuple of int

    Examples
    --------
    >>> phi = PairPotential(cutoff=0.8)
    >>> phi(torch.tensor([0.3, 0.8]), torch.tensor(0.5)).shape
    torch.Size([2])
    """

    def __init__(self, cutoff, n_basis=16, hidden=(32, 32)):
        super().__init__()
        if not cutoff > 0:
            raise InvalidInputError(f"cutoff must be > 0 nm, got {cutoff}.")
        self.cutoff = float(cutoff)
        self.register_buffer("centres", torch.linspace(0.0, self.cutoff, n_basis, dtype=torch.float64))
        self.width = self.cutoff / n_basis
        layers, n_in = [], n_basis + 1
        for width in hidden:
            layers += [nn.Linear(n_in, width, dtype=torch.float64), nn.SiLU()]
            n_in = width
        layers.append(nn.Linear(n_in, 1, dtype=torch.float64))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)  # start at φ = 0: U_θ = U_phys
        nn.init.zeros_(self.net[-1].bias)
        self.config = {"cutoff": self.cutoff, "n_basis": int(n_basis), "hidden": [int(h) for h in hidden]}

    def forward(self, r, t):
        r = r.to(torch.float64)
        basis = torch.exp(-(((r[..., None] - self.centres) / self.width) ** 2))
        t_column = torch.broadcast_to(torch.as_tensor(t, dtype=torch.float64), r.shape)[..., None]
        value = self.net(torch.cat((basis, t_column), dim=-1))[..., 0]
        switch = torch.where(r < self.cutoff, 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0), torch.zeros_like(r))
        return value * switch

    def learned_energy(self, x, t, solute, box):
        """``t (1 - t) Σ_j φ(r_j, t)`` in kJ/mol (r_j: solute-solvent distances, minimum image) for ``x`` (batch, n, 3) nm, cubic ``box`` (nm)."""
        d = x - x[:, solute : solute + 1]
        d = d - box * torch.round(d / box)
        mask = torch.ones(x.shape[1], dtype=torch.bool)
        mask[solute] = False
        r = torch.sqrt((d[:, mask] ** 2).sum(-1))
        t = torch.as_tensor(t, dtype=torch.float64)
        per_configuration = t[:, None] if t.ndim == 1 else t  # one t per configuration, or one for all
        return t * (1 - t) * self(r, per_configuration).sum(-1)

    def fingerprint(self):
        """sha256 of the configuration and weights (recorded with the exact-path storage)."""
        digest = hashlib.sha256(repr(self.config).encode())
        for tensor in self.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()


def learned_force(pair_potential, n_particles, solute):
    """The learned term as an OpenMM ``CustomNonbondedForce``: ``t (1 - t) φ(r, t)`` over solute-solvent pairs.

    φ is tabulated on a (r, t) grid as a ``Continuous2DFunction`` (bicubic): OpenMM's U_θ between the end
    states is this interpolation of the torch φ, and exactly U_phys at t = 0 and t = 1 (the prefactor).
    """
    rc = pair_potential.cutoff
    r = torch.linspace(0.0, rc, _TABLE_R, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, _TABLE_T, dtype=torch.float64)
    with torch.no_grad():
        table = torch.stack([pair_potential(r, tk) for tk in t], dim=1)  # (r, t)
    values = table.T.reshape(-1).tolist()  # OpenMM order: x (r) fastest
    force = openmm.CustomNonbondedForce(f"{T_PARAMETER}*(1-{T_PARAMETER})*neural_ti_phi(r, {T_PARAMETER})")
    force.addTabulatedFunction("neural_ti_phi", openmm.Continuous2DFunction(_TABLE_R, _TABLE_T, values, 0.0, rc, 0.0, 1.0))
    force.addGlobalParameter(T_PARAMETER, 1.0)
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(rc)
    for _ in range(n_particles):
        force.addParticle([])
    force.addInteractionGroup([solute], [i for i in range(n_particles) if i != solute])
    force.setName("NeuralTILearnedTerm")
    return force
