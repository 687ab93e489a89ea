"""Conditional proposals with auxiliary velocities: the protocol and its log Hastings term.

A *conditional proposal* (Timewarp-style) draws new positions from a density that depends on the
current ones. It has

- ``propose(x, n, generator=None) -> (x_new, log_hastings)``: ``x`` the current positions of the
  atoms it moves, shape (n_atoms, 3) in nm; ``x_new`` shape (n, n_atoms, 3), ``n`` independent
  proposals from ``x``; ``log_hastings`` shape (n,) float64, each proposal's log Hastings term
  (:func:`auxiliary_log_hastings`); random numbers from ``generator`` (a :class:`torch.Generator`);
- ``sample`` and ``log_prob`` (any signature; :class:`~openmm_flowplugin.flows.ConditionalFlow`'s
  take the conditioning state), ``n_atoms``, and optionally ``fingerprint``.

The marginal density :math:`p_\\theta(x' \\mid x)` of a flow over positions and auxiliary velocities
is intractable, so the Metropolis-Hastings chain runs on the extended space :math:`(x, v)` with
target :math:`\\mu(x)\\,\\mathcal N(v; 0, I)`: at every step ``v ~ N(0, I)`` is drawn afresh (a Gibbs
update of ``v``, which leaves the target invariant), then ``(x', v') ~ p(. | x, v)`` is accepted with
probability :math:`\\min(1, e^{-u(x') + u(x) + h})`, where ``h`` is the log Hastings term below.
Positions keep the target :math:`\\mu` exactly, for any proposal.
"""

__all__ = ["auxiliary_log_hastings", "standard_normal_log_prob", "check_conditional_proposal", "is_conditional_proposal",
           "draw_conditional"]

import math

import numpy as np
import torch

from ..errors import InvalidInputError, InvalidTypeError


def standard_normal_log_prob(v):
    """log N(v; 0, I) summed over the last axis, float64; ``v`` shape (..., d)."""
    v = torch.as_tensor(v).to(torch.float64)
    return -0.5 * (v * v).sum(-1) - 0.5 * v.shape[-1] * math.log(2.0 * math.pi)


def auxiliary_log_hastings(log_p_forward, log_p_reverse, v, v_proposed):
    """The log Hastings term of a proposal with auxiliary velocities, float64.

    .. math:: h = \\log \\mathcal N(v') + \\log p(x, v \\mid x', v')
                  - \\log \\mathcal N(v) - \\log p(x', v' \\mid x, v)

    so that ``log alpha = -u(x') + u(x) + h``. For a flow that ignores the current velocity (as
    Timewarp's released models do), ``p(x, v | x', v')`` is ``p(x, v | x')``: the formula is the same.

    Parameters
    ----------
    log_p_forward : array_like, shape=(n,)
        :math:`\\log p(x', v' \\mid x, v)`, the proposal's density at what it drew.
    log_p_reverse : array_like, shape=(n,)
        :math:`\\log p(x, v \\mid x', v')`, the density of the reverse move.
    v, v_proposed : array_like, shape=(n, d)
        The auxiliary velocities drawn before the step and proposed with ``x'`` (dimensionless).

    Returns
    -------
    numpy.ndarray, shape=(n,)
        NaN where any input is NaN (the move then rejects).

    Examples
    --------
    Equal forward and reverse densities leave the velocity terms:

    >>> v, w = np.array([[0.3, -1.0]]), np.array([[1.2, 0.4]])
    >>> h = auxiliary_log_hastings([-2.0], [-2.0], v, w)
    >>> bool(np.isclose(h[0], 0.5 * (v**2).sum() - 0.5 * (w**2).sum()))
    True
    """
    forward = torch.as_tensor(np.asarray(log_p_forward, dtype=np.float64))
    reverse = torch.as_tensor(np.asarray(log_p_reverse, dtype=np.float64))
    h = standard_normal_log_prob(v_proposed) + reverse - standard_normal_log_prob(v) - forward
    return h.numpy()


def is_conditional_proposal(proposal):
    """Whether ``proposal`` proposes from the current state: it has a callable ``propose(x, n, generator)``.

    A state-independent proposal must not define ``propose``: moves and integrators take this as the sign.
    """
    return callable(getattr(proposal, "propose", None))


def draw_conditional(proposal, positions, n, generator):
    """``proposal.propose(positions, n, generator)`` as float64 arrays, shapes checked.

    Returns ``x_new`` (n, n_atoms, 3) and ``log_hastings`` (n,); a proposal that returns other shapes is an
    error (a broken proposal, not a rejection).
    """
    x, log_hastings = proposal.propose(positions, n, generator=generator)
    x, log_hastings = np.asarray(x, dtype=np.float64), np.asarray(log_hastings, dtype=np.float64)
    if x.shape != (n, *np.shape(positions)) or log_hastings.shape != (n,):
        raise InvalidInputError(
            f"proposal.propose(x, {n}) returned positions {x.shape} and log Hastings terms {log_hastings.shape}; "
            f"expected {(n, *np.shape(positions))} and ({n},).")
    return x, log_hastings


def check_conditional_proposal(proposal):
    """Raise TypeError unless ``proposal`` has a callable ``propose(x, n, generator=None)``."""
    if not is_conditional_proposal(proposal):
        raise InvalidTypeError(
            f"{type(proposal).__name__} has no propose(x, n, generator) method: TimewarpMove needs a conditional proposal "
            "(e.g. openmm_flowplugin.flows.ConditionalFlow); independence proposals go to FlowMCMove."
        )
