"""The proposal protocol shared by every learned Monte Carlo move, and simple proposals.

A *proposal* is any object with

- ``sample(n) -> (x, log_q)``: ``x`` a torch tensor of shape (n, n_atoms, 3) in nm, ``log_q`` shape (n,);
- ``log_prob(x) -> log_q``: shape (n,) for ``x`` of shape (n, n_atoms, 3).

``log_q`` is the log density with respect to Cartesian volume of the atoms it moves; for a
proposal that is invariant to rigid motions (``rigid_invariant = True``, e.g. flows on internal
coordinates) it is the density with respect to the internal degrees of freedom (see
:mod:`openmm_flowplugin.coordinates`) and moves re-align each proposal onto the current state.

Optional attributes a move consults: ``n_atoms`` (checked at construction), ``rigid_invariant``
(default False), ``respects_constraints`` (default False), ``fingerprint`` (sha256 of the
molecule it was made for, see :attr:`MolecularSystem.fingerprint`).
"""

__all__ = ["GaussianProposal", "proposal_n_atoms", "kabsch_align", "metropolis_hastings_log_ratio"]

import math

import numpy as np
import torch


class GaussianProposal:
    """Independent isotropic (or per-coordinate) Gaussian proposal in Cartesian space.

    Parameters
    ----------
    mean : array_like, shape=(n_atoms, 3)
        nm.
    std : float or array_like broadcastable to (n_atoms, 3)
        nm.
    seed : int, optional
        Seed of the proposal's own random generator.

    Examples
    --------
    >>> proposal = GaussianProposal([[0.0, 0.0, 0.0]], 0.1, seed=0)
    >>> x, log_q = proposal.sample(5)
    >>> x.shape, bool(torch.allclose(proposal.log_prob(x), log_q))
    (torch.Size([5, 1, 3]), True)
    """

    rigid_invariant = False

    def __init__(self, mean, std, seed=None):
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        if self.mean.ndim != 2 or self.mean.shape[1] != 3:
            raise ValueError(f"mean must have shape (n_atoms, 3), got {tuple(self.mean.shape)}.")
        self.std = torch.as_tensor(np.broadcast_to(np.asarray(std, dtype=np.float64), self.mean.shape).copy())
        if not torch.all(self.std > 0):
            raise ValueError("std must be positive.")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63))

    @property
    def n_atoms(self):
        return self.mean.shape[0]

    def sample(self, n):
        z = torch.randn((n,) + tuple(self.mean.shape), generator=self._generator, dtype=torch.float64)
        x = self.mean + self.std * z
        return x, self._log_prob_standard(z)

    def log_prob(self, x):
        z = (torch.as_tensor(x, dtype=torch.float64) - self.mean) / self.std
        return self._log_prob_standard(z)

    def _log_prob_standard(self, z):
        return -0.5 * (z**2).sum((-2, -1)) - torch.log(self.std).sum() - 0.5 * z[0].numel() * math.log(2 * math.pi)

    def __getstate__(self):
        return {"mean": self.mean.numpy().tolist(), "std": self.std.numpy().tolist(), "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(state["mean"], state["std"], state["seed"])


def proposal_n_atoms(proposal):
    """Number of atoms a proposal moves: its ``n_atoms`` attribute, else the shape of one sample."""
    n_atoms = getattr(proposal, "n_atoms", None)
    if n_atoms is None:
        x, _ = proposal.sample(1)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"proposal.sample(1) must return positions of shape (1, n_atoms, 3), got {tuple(x.shape)}.")
        n_atoms = x.shape[1]
    return int(n_atoms)


def kabsch_align(x, reference):
    """Rigidly move each configuration in ``x`` onto ``reference`` (least-squares, unit weights).

    Parameters
    ----------
    x : torch.Tensor, shape=(n, n_atoms, 3)
    reference : torch.Tensor, shape=(n_atoms, 3)

    Returns
    -------
    torch.Tensor, shape=(n, n_atoms, 3)
        ``x`` rotated (proper rotation, no reflection) and translated to best overlap ``reference``.

    Notes
    -----
    The optimal alignment is symmetric (aligning ``y`` onto ``x`` and ``x`` onto ``y`` give the
    same relative rotation), so a Metropolis-Hastings move that proposes the aligned
    configuration keeps detailed balance in the rigid degrees of freedom.
    """
    x = x.to(torch.float64)
    reference = reference.to(torch.float64)
    x_centre = x.mean(dim=1, keepdim=True)
    ref_centre = reference.mean(dim=0)
    h = (x - x_centre).transpose(1, 2) @ (reference - ref_centre)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
    correction = torch.diag_embed(torch.stack((torch.ones_like(d), torch.ones_like(d), d), dim=-1))
    rotation = vt.transpose(1, 2) @ correction @ u.transpose(1, 2)
    return (x - x_centre) @ rotation.transpose(1, 2) + ref_centre


def metropolis_hastings_log_ratio(u_current, u_proposed, log_q_current, log_q_proposed):
    """log acceptance ratio ``-u' + u + log q(x) - log q(x')`` in float64; NaN or +inf energy -> -inf.

    A proposal the proposal density itself rules out (``log q(x') = -inf``) or that the energy
    rejects (``u' = +inf`` or NaN) is never accepted.
    """
    u_current = np.asarray(u_current, dtype=np.float64)
    u_proposed = np.asarray(u_proposed, dtype=np.float64)
    log_q_current = np.asarray(log_q_current, dtype=np.float64)
    log_q_proposed = np.asarray(log_q_proposed, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        log_ratio = -u_proposed + u_current + log_q_current - log_q_proposed
    bad = ~np.isfinite(u_proposed) | ~np.isfinite(log_q_proposed) | np.isnan(log_ratio)
    return np.where(bad, -np.inf, log_ratio)
