"""Importance weights of flow samples against a Boltzmann distribution, and their effective sample size."""

__all__ = ["importance_weights", "effective_sample_size", "weighted_fraction", "normalized_weights"]

import math

import numpy as np
import torch

from .._threads import package_threads


@torch.no_grad()
def importance_weights(flow, energy, n_samples, batch_size=2000):
    """Draw ``n_samples`` from ``flow``; return positions, reduced energies and log importance weights.

    ``log w = -u(x) - log q(x)`` (unnormalized, float64); failed energies and samples outside the
    flow's domain (``log q = -inf``) give ``log w = -inf``.

    Examples
    --------
    >>> from openmm_flowplugin import systems, load_flow, OpenMMEnergy
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> x, u, log_w = importance_weights(load_flow("alanine_dipeptide_vacuum"), OpenMMEnergy(ala2.system, 300), 10)
    >>> x.shape, log_w.dtype
    (torch.Size([10, 22, 3]), torch.float64)
    """
    xs, us, log_ws = [], [], []
    with package_threads():
        for start in range(0, n_samples, batch_size):
            x, log_q = flow.sample(min(batch_size, n_samples - start))
            u = energy(x)
            xs.append(x)
            us.append(u)
            valid = torch.isfinite(u) & torch.isfinite(log_q)  # log_q = -inf: a sample outside the flow's domain
            log_ws.append(torch.where(valid, -u - log_q, torch.full_like(u, -math.inf)))
    return torch.cat(xs), torch.cat(us), torch.cat(log_ws)


def effective_sample_size(log_weights):
    """Kish effective sample size fraction ``(sum w)^2 / (n sum w^2)`` in [0, 1], from log weights.

    Examples
    --------
    >>> effective_sample_size([0.0, 0.0, float("-inf"), 0.0])
    0.75
    """
    log_w = torch.as_tensor(log_weights, dtype=torch.float64)
    finite = torch.isfinite(log_w)
    if not finite.any():
        return 0.0
    log_w = log_w - log_w[finite].max()
    w = torch.exp(log_w)
    return float(w.sum() ** 2 / (w**2).sum() / len(w))


def normalized_weights(log_weights):
    """Weights ``w / sum(w)`` from log weights (float64); all zeros when no weight is finite (a failed sample).

    Examples
    --------
    >>> normalized_weights([0.0, float("-inf"), 0.0]).tolist()
    [0.5, 0.0, 0.5]
    >>> normalized_weights([float("-inf")] * 2).tolist()
    [0.0, 0.0]
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    finite = np.isfinite(log_weights)
    if not finite.any():
        return np.zeros_like(log_weights)
    w = np.where(finite, np.exp(log_weights - np.max(log_weights[finite])), 0.0)
    return w / w.sum()


def weighted_fraction(indicator, log_weights):
    """Self-normalized importance estimate of P(indicator) with its delta-method standard error (NaN without a finite weight).

    Examples
    --------
    >>> p, se = weighted_fraction([True, False, False, True], np.zeros(4))
    >>> p
    0.5
    """
    w = normalized_weights(log_weights)
    if not w.any():
        return math.nan, math.nan
    f = np.asarray(indicator, dtype=np.float64)
    p = float(np.sum(w * f))
    se = float(np.sqrt(np.sum(w**2 * (f - p) ** 2)))
    return p, se
