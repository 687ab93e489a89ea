"""Independence proposals drawn ahead in batches and handed out once each."""

__all__ = ["ProposalBuffer"]

import numpy as np
import torch

from .._threads import package_threads
from .protocol import checked_batch_size, parameter_versions, proposal_n_atoms


class ProposalBuffer:
    """Proposals drawn ``batch_size`` at a time and handed out in order, each exactly once.

    An independence proposal does not depend on the sampler's state, so drawing ahead changes
    nothing in distribution, while a flow samples a batch for little more than the cost of one
    draw. The buffer is emptied when the proposal's parameters change in place (a training step,
    ``load_state_dict``), so every ``log_q`` handed out belongs to the proposal as it is now.

    Parameters
    ----------
    proposal : object
        ``sample(n) -> (x, log_q)`` (see the module docstring).
    batch_size : int
        Draws per ``proposal.sample`` call.
    n_atoms : int, optional
        Expected atoms per configuration (default: :func:`proposal_n_atoms`).

    Examples
    --------
    >>> from openmm_flowplugin.proposals import GaussianProposal
    >>> buffer = ProposalBuffer(GaussianProposal([[0.0, 0.0, 0.0]], 0.1, seed=0), batch_size=8)
    >>> x, log_q = buffer.take(3)
    >>> x.shape, log_q.shape, buffer.n_buffered
    ((3, 1, 3), (3,), 5)
    """

    def __init__(self, proposal, batch_size=512, n_atoms=None):
        self.proposal = proposal
        self.batch_size = checked_batch_size(batch_size)
        self.n_atoms = proposal_n_atoms(proposal) if n_atoms is None else int(n_atoms)
        self.clear()

    @property
    def proposal_version(self):
        """In-place modification counters of the proposal's tensors when the buffered draws were made."""
        return self._version

    @property
    def n_buffered(self):
        """Draws not yet handed out."""
        return len(self._log_q) - self._next

    def clear(self):
        """Discard the buffered draws."""
        self._x = np.empty((0, self.n_atoms, 3))
        self._log_q = np.empty(0)
        self._next = 0
        self._version = parameter_versions(self.proposal)

    def take(self, n):
        """The next ``n`` draws: positions (n, n_atoms, 3) nm and log_q (n,), float64 numpy arrays.

        If ``proposal.sample`` raises or returns wrong shapes, the error propagates and the buffer
        keeps what it had.
        """
        if parameter_versions(self.proposal) != self._version:
            self.clear()
        if self.n_buffered < n:
            x, log_q = self._draw(max(n - self.n_buffered, self.batch_size))
            self._x = np.concatenate((self._x[self._next :], x))
            self._log_q = np.concatenate((self._log_q[self._next :], log_q))
            self._next = 0
        i = self._next
        self._next += n
        return self._x[i : i + n], self._log_q[i : i + n]

    def _draw(self, n):
        with torch.no_grad(), package_threads():
            x, log_q = self.proposal.sample(n)
        x = np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float64)
        log_q = np.asarray(torch.as_tensor(log_q).detach().cpu(), dtype=np.float64)
        log_q = log_q.reshape(-1) if log_q.size == n else log_q
        if x.shape != (n, self.n_atoms, 3) or log_q.shape != (n,):
            raise ValueError(
                f"proposal.sample({n}) returned x of shape {x.shape} and log_q of shape {log_q.shape}; "
                f"expected {(n, self.n_atoms, 3)} (nm) and ({n},)."
            )
        return x, log_q
