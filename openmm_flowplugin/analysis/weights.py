"""Importance weights of flow samples against a Boltzmann distribution, their effective sample size and tail."""

__all__ = ["importance_weights", "effective_sample_size", "weighted_fraction", "normalized_weights", "pareto_k", "pareto_k_threshold"]

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


def pareto_k(log_weights):
    """Shape k̂ of a generalized Pareto fit to the largest importance weights: how heavy their tail is.

    The diagnostic of Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao, Gabry, JMLR
    2024): the M = ⌈min(n/5, 3√n)⌉ largest of the n weights, less the next one, are fitted by maximum
    likelihood (``scipy.stats.genpareto``; the paper uses the Zhang–Stephens estimator, which is
    steadier for small M). A self-normalized estimate from n draws is trustworthy for
    k̂ < :func:`pareto_k_threshold` (0.7 from n = 2,155 on). Above it the estimate is dominated by
    weights not drawn yet: it is biased with high probability, and bootstrap or delta-method errors
    cannot show it. Weights with no finite variance have k ≥ 0.5; bounded weights k < 0.

    A weight of 0 (log weight ``-inf``: a failed sample, or a sample outside the region an estimate
    counts) is one of the n draws. For the probability of a region, pass the log weights with
    ``-inf`` outside it: that is the tail of h·w that decides the estimate of E[h], fitted with M of
    all n draws (fitting the region's own weights with a smaller M misses heavy tails).

    Returns ``nan`` for fewer than 25 draws, or fewer than 5 distinct exceedances (no tail to fit), and
    ``-inf`` when the top weights are all equal (a bounded tail). With fewer than M + 1 nonzero weights,
    those above the smallest nonzero one are fitted.

    Raises
    ------
    InvalidInputError
        For NaN or +inf log weights.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> heavy = np.log(rng.pareto(1 / 0.9, 20000) + 1)  # Pareto tail, k = 0.9
    >>> bool(pareto_k(heavy) > pareto_k_threshold(20000))
    True
    >>> bool(pareto_k(rng.normal(0, 0.1, 20000)) < 0.3)  # nearly equal weights
    True
    """
    from scipy import stats

    from ..errors import InvalidInputError

    log_w = np.sort(np.asarray(log_weights, dtype=np.float64).reshape(-1))
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise InvalidInputError("log weights must be finite or -inf (weight 0), not NaN or +inf.")
    n = len(log_w)
    if n < 25 or not np.isfinite(log_w[-1]):
        return math.nan
    m = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    top, threshold = log_w[-m:], log_w[-m - 1]
    if not np.isfinite(threshold):
        # fewer than M + 1 nonzero weights (a rare region): fit those above the smallest of them; fitted
        # over 0, their bulk would pull k̂ far below the tail's shape
        top = top[np.isfinite(top)]
        top, threshold = top[1:], top[0]
        if len(top) == 0:
            return math.nan
    # w − w_threshold, divided by the largest exceedance (the shape does not depend on the scale, and
    # near-equal top weights would otherwise leave the optimiser numbers of order 1e-13)
    exceedances = np.exp(top - top[-1]) - math.exp(threshold - top[-1])
    exceedances = exceedances[exceedances > 0]
    if len(np.unique(exceedances)) < 5:
        # all top weights equal (a bounded tail), or too few distinct ones to fit a shape
        return -math.inf if len(exceedances) == 0 and len(top) >= 5 else math.nan
    shape, _, _ = stats.genpareto.fit(exceedances / exceedances.max(), floc=0.0)
    return float(shape)


def pareto_k_threshold(n):
    """The largest k̂ for which n importance samples give a reliable estimate: min(1 − 1/log10 n, 0.7) (Vehtari et al. 2024).

    Examples
    --------
    >>> pareto_k_threshold(10000)
    0.7
    >>> round(pareto_k_threshold(100), 2)
    0.5
    """
    return min(1.0 - 1.0 / math.log10(max(n, 11)), 0.7)
