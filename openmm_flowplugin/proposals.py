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

__all__ = ["GaussianProposal", "ProposalBuffer", "proposal_n_atoms", "kabsch_align", "metropolis_hastings_log_ratio"]

import itertools
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
    x : numpy.ndarray or torch.Tensor, shape=(n, n_atoms, 3) or (n_atoms, 3)
    reference : array_like, shape=(n_atoms, 3)

    Returns
    -------
    numpy.ndarray or torch.Tensor (as ``x``), float64, shape of ``x``
        ``x`` rotated (proper rotation, no reflection) and translated to best overlap ``reference``.

    Notes
    -----
    The optimal alignment is symmetric (aligning ``y`` onto ``x`` and ``x`` onto ``y`` give the
    same relative rotation), so a Metropolis-Hastings move that proposes the aligned
    configuration keeps detailed balance in the rigid degrees of freedom. A single configuration
    (2-D ``x``) takes a faster path than a batch of one.

    Examples
    --------
    >>> reference = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.1, 0.1, 0.0]])
    >>> turned = reference @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) + 1.0
    >>> bool(np.allclose(kabsch_align(turned, reference), reference))
    True
    """
    as_torch = torch.is_tensor(x)
    x = np.asarray(x.detach().cpu() if as_torch else x, dtype=np.float64)
    reference = np.asarray(reference.detach().cpu() if torch.is_tensor(reference) else reference, dtype=np.float64)
    ref_centre = reference.sum(axis=0) / len(reference)
    centred = x - x.sum(axis=-2, keepdims=True) / x.shape[-2]
    # H = X^T Y = U S V^T; the rotation taking X onto Y is U diag(1, 1, d) V^T, d = sign det H
    # (= det U det V^T, since S >= 0) removing reflections.
    h = np.swapaxes(centred, -1, -2) @ (reference - ref_centre)
    u, _, vt = np.linalg.svd(h)
    if x.ndim == 2:
        if _det3(h) < 0:
            u[:, 2] = -u[:, 2]
    else:
        u[..., :, 2] *= np.where(np.linalg.det(h) < 0, -1.0, 1.0)[..., None]
    aligned = centred @ (u @ vt) + ref_centre
    return torch.from_numpy(aligned) if as_torch else aligned


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
        self._version = _parameter_versions(self.proposal)

    def take(self, n):
        """The next ``n`` draws: positions (n, n_atoms, 3) nm and log_q (n,), float64 numpy arrays.

        If ``proposal.sample`` raises or returns wrong shapes, the error propagates and the buffer
        keeps what it had.
        """
        if _parameter_versions(self.proposal) != self._version:
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
        with torch.no_grad():
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


def checked_batch_size(batch_size):
    """``batch_size`` as an int, or ValueError naming ``sample_batch_size`` if it is not an integer >= 1."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"sample_batch_size must be an integer >= 1, got {batch_size!r}.")
    return int(batch_size)


def check_proposal_fingerprint(proposal, system, topology):
    """Raise ValueError if ``proposal.fingerprint`` exists and is not that of ``system`` + ``topology``.

    The fingerprint (:func:`~openmm_flowplugin.molecular_system.system_fingerprint`: atom count,
    elements, masses) tells a flow made for another molecule with the same atom count apart.
    Nothing is checked if either is missing.
    """
    from .molecular_system import system_fingerprint

    fingerprint = getattr(proposal, "fingerprint", None)
    if topology is None or fingerprint is None:
        return
    expected = system_fingerprint(system, topology)
    if fingerprint != expected:
        raise ValueError(
            f"proposal.fingerprint {fingerprint[:12]}... does not match the system's {expected[:12]}...: "
            "the proposal was made for another molecule. Load the proposal trained for this system."
        )


def _det3(m):
    """Determinant of one 3x3 matrix (cheaper than numpy's batched LU for a single matrix)."""
    return (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))


def _parameter_versions(proposal):
    """In-place modification counters of a torch proposal's tensors (None for other proposals)."""
    if not isinstance(proposal, torch.nn.Module):
        return None
    return tuple(t._version for t in itertools.chain(proposal.parameters(), proposal.buffers()))


def metropolis_hastings_log_ratio(u_current, u_proposed, log_q_current, log_q_proposed):
    """log acceptance ratio ``-u' + u + log q(x) - log q(x')`` in float64; NaN or +inf energy -> -inf.

    A proposal the proposal density itself rules out (``log q(x') = -inf``) or that the energy
    rejects (``u' = +inf`` or NaN) is never accepted. Scalars in, a float out; arrays in, an array out.

    Examples
    --------
    >>> metropolis_hastings_log_ratio(1.0, 2.0, -3.0, -3.5)
    -0.5
    >>> metropolis_hastings_log_ratio(1.0, float("nan"), 0.0, 0.0)
    -inf
    """
    if all(isinstance(v, (float, int)) for v in (u_current, u_proposed, log_q_current, log_q_proposed)):
        if not (math.isfinite(u_proposed) and math.isfinite(log_q_proposed)):
            return -math.inf
        log_ratio = -float(u_proposed) + u_current + log_q_current - log_q_proposed
        return -math.inf if math.isnan(log_ratio) else log_ratio
    u_current = np.asarray(u_current, dtype=np.float64)
    u_proposed = np.asarray(u_proposed, dtype=np.float64)
    log_q_current = np.asarray(log_q_current, dtype=np.float64)
    log_q_proposed = np.asarray(log_q_proposed, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        log_ratio = -u_proposed + u_current + log_q_current - log_q_proposed
    bad = ~np.isfinite(u_proposed) | ~np.isfinite(log_q_proposed) | np.isnan(log_ratio)
    return np.where(bad, -np.inf, log_ratio)
