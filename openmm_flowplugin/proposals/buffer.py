"""Independence proposals drawn ahead in batches, at fixed positions of a seeded stream."""

__all__ = ["ProposalBuffer"]

import numpy as np
import torch

from .._threads import package_threads
from .protocol import checked_batch_size, proposal_n_atoms, proposal_version, sample_with_generator
from .streams import DRAWS, checked_root_seed, torch_generator
from ..errors import InvalidInputError


class ProposalBuffer:
    """Proposals drawn ``batch_size`` at a time, addressed by their position in a seeded stream.

    An independence proposal does not depend on the sampler's state, so drawing ahead changes
    nothing in distribution, while a flow samples a batch for little more than the cost of one
    draw. Batch ``b`` of the stream (draws ``b * batch_size`` to ``(b + 1) * batch_size - 1``) is
    drawn with the generator of ``(seed, *stream, DRAWS, b)`` (:mod:`~openmm_flowplugin.proposals.streams`):
    draw ``k`` is the same whichever process or copy asks for it, and a caller that advances its
    position never sees a draw twice. The cached batch is dropped when the proposal's parameters
    change (:func:`~openmm_flowplugin.proposals.protocol.proposal_version`), so every ``log_q``
    handed out belongs to the proposal as it is now.

    Parameters
    ----------
    proposal : object
        ``sample(n, generator=None) -> (x, log_q)`` (see :mod:`openmm_flowplugin.proposals.protocol`).
    batch_size : int
        Draws per ``proposal.sample`` call.
    n_atoms : int, optional
        Expected atoms per configuration (default: :func:`proposal_n_atoms`).
    seed : int, optional
        Root seed of the stream (default: a fresh one).
    stream : tuple of int
        The stream's key below the root seed.

    Examples
    --------
    >>> from openmm_flowplugin.proposals import GaussianProposal
    >>> buffer = ProposalBuffer(GaussianProposal([[0.0, 0.0, 0.0]], 0.1), batch_size=8, seed=1)
    >>> x, log_q = buffer.take(3)
    >>> x.shape, log_q.shape, buffer.n_buffered
    ((3, 1, 3), (3,), 5)
    >>> bool(np.array_equal(buffer.draws(1, 2)[0], x[1:]))  # draws are addressed by position
    True
    """

    def __init__(self, proposal, batch_size=512, n_atoms=None, seed=None, stream=()):
        self.proposal = proposal
        self.batch_size = checked_batch_size(batch_size)
        self.n_atoms = proposal_n_atoms(proposal) if n_atoms is None else int(n_atoms)
        self.seed = checked_root_seed(seed)
        self.stream = tuple(int(k) for k in stream)
        self.position = 0  # next draw handed out by take()
        self._version = proposal_version(proposal)
        self.clear()

    @property
    def proposal_version(self):
        """:func:`~openmm_flowplugin.proposals.protocol.proposal_version` of the proposal when the cached batch was drawn."""
        return self._version

    @property
    def n_buffered(self):
        """Draws of the cached batch at or after :attr:`position`."""
        if self._batch_index is None:
            return 0
        return max(0, (self._batch_index + 1) * self.batch_size - self.position)

    def clear(self):
        """Discard the cached batch."""
        self._batch_index, self._x, self._log_q = None, None, None

    def take(self, n):
        """The next ``n`` draws after :attr:`position` (which advances): positions (n, n_atoms, 3) nm and log_q (n,)."""
        x, log_q = self.draws(self.position, n)
        self.position += n
        return x, log_q

    def draws(self, start, n):
        """Draws ``start`` to ``start + n - 1`` of the stream: positions (n, n_atoms, 3) nm and log_q (n,), float64.

        If ``proposal.sample`` raises or returns wrong shapes, the error propagates and the cache keeps what it had.
        """
        version = proposal_version(self.proposal)
        if version != self._version:
            self.clear()
            self._version = version
        first, last = start // self.batch_size, (start + n - 1) // self.batch_size
        xs, log_qs = [], []
        for index in range(first, last + 1):
            x, log_q = self._batch(index)
            lo = max(start - index * self.batch_size, 0)
            hi = min(start + n - index * self.batch_size, self.batch_size)
            xs.append(x[lo:hi])
            log_qs.append(log_q[lo:hi])
        return np.concatenate(xs), np.concatenate(log_qs)

    def _batch(self, index):
        if index != self._batch_index:
            x, log_q = self._draw(self.batch_size, torch_generator(self.seed, *self.stream, DRAWS, index))
            self._batch_index, self._x, self._log_q = index, x, log_q
        return self._x, self._log_q

    def _draw(self, n, generator):
        with torch.no_grad(), package_threads():
            x, log_q = sample_with_generator(self.proposal, n, generator)
        x = np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float64)
        log_q = np.asarray(torch.as_tensor(log_q).detach().cpu(), dtype=np.float64)
        log_q = log_q.reshape(-1) if log_q.size == n else log_q
        if x.shape != (n, self.n_atoms, 3) or log_q.shape != (n,):
            raise InvalidInputError(
                f"proposal.sample({n}) returned x of shape {x.shape} and log_q of shape {log_q.shape}; "
                f"expected {(n, self.n_atoms, 3)} (nm) and ({n},)."
            )
        return x, log_q
