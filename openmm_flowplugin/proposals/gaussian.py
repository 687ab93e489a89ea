"""A Cartesian Gaussian independence proposal: the simplest proposal with an exact density."""

__all__ = ["GaussianProposal"]

import math

import numpy as np
import torch

from .streams import checked_root_seed, torch_generator
from ..errors import InvalidInputError


class GaussianProposal:
    """Independent isotropic (or per-coordinate) Gaussian proposal in Cartesian space.

    Parameters
    ----------
    mean : array_like, shape=(n_atoms, 3)
        nm.
    std : float or array_like broadcastable to (n_atoms, 3)
        nm.
    seed : int, optional
        Root seed of the proposal's own stream, used when ``sample`` gets no ``generator``: call ``k``
        draws from ``SeedSequence(seed, spawn_key=(k,))``, and the call count is part of the stored
        state, so a restored proposal continues the stream instead of replaying it. Moves pass their
        own generators (:mod:`~openmm_flowplugin.proposals.streams`). Default: a fresh seed.

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
            raise InvalidInputError(f"mean must have shape (n_atoms, 3), got {tuple(self.mean.shape)}.")
        self.std = torch.as_tensor(np.broadcast_to(np.asarray(std, dtype=np.float64), self.mean.shape).copy())
        if not torch.all(self.std > 0):
            raise InvalidInputError("std must be positive.")
        self.seed = checked_root_seed(seed)
        self.n_calls = 0

    @property
    def n_atoms(self):
        return self.mean.shape[0]

    def sample(self, n, generator=None):
        """Draw ``n`` configurations (n, n_atoms, 3) nm and their log densities (n,), float64."""
        if generator is None:
            generator = torch_generator(self.seed, self.n_calls)
            self.n_calls += 1
        z = torch.randn((n,) + tuple(self.mean.shape), generator=generator, dtype=torch.float64)
        x = self.mean + self.std * z
        return x, self._log_prob_standard(z)

    def log_prob(self, x):
        """Log density (n,) of positions ``x`` (n, n_atoms, 3) nm."""
        z = (torch.as_tensor(x, dtype=torch.float64) - self.mean) / self.std
        return self._log_prob_standard(z)

    def _log_prob_standard(self, z):
        return -0.5 * (z**2).sum((-2, -1)) - torch.log(self.std).sum() - 0.5 * z[0].numel() * math.log(2 * math.pi)

    def __getstate__(self):
        return {"mean": self.mean.numpy().tolist(), "std": self.std.numpy().tolist(), "seed": self.seed, "n_calls": self.n_calls}

    def __setstate__(self, state):
        self.__init__(state["mean"], state["std"], state["seed"])
        self.n_calls = int(state.get("n_calls", 0))
