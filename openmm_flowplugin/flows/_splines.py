"""Rational-quadratic spline forward maps with log|det J|, evaluated directly (no transform objects).

The same map as zuko's ``MonotonicRQSTransform`` for the same unconstrained parameters, in a few fused
ops: :func:`rqs_forward` in torch (differentiable, any batch) and :func:`rqs_forward_numpy` in NumPy for
small no-grad batches, where the cost is per operation, not per element (a NumPy op on a few floats is
several times cheaper than a torch op). ``boltzmann_generator`` uses them for ``log_prob``.

With bin ``k`` from knot ``(x_k, y_k)`` to ``(x_k+1, y_k+1)``, slope ``s = (y_k+1 - y_k) / (x_k+1 - x_k)``,
knot derivatives ``d_k``, and ``t`` the position of ``x`` in the bin (Durkan et al. 2019, eq. 4 and 5,
https://arxiv.org/abs/1906.04032)::

    D     = s + (d_k + d_k+1 - 2 s) t (1 - t)
    y     = y_k + (y_k+1 - y_k) (s t^2 + d_k t (1 - t)) / D
    dy/dx = s^2 (2 s t (1 - t) + d_k (1 - t)^2 + d_k+1 t^2) / D^2

Outside ``[-bound, bound]`` the map is the identity (log-det 0). Parameters: ``bins`` widths and
``bins`` heights (softmax, after a soft bound that keeps slopes above ``slope``) and ``bins - 1``
interior derivatives (``exp`` of the soft-bounded values; 1 at both ends).
"""

__all__ = ["rqs_forward", "rqs_forward_numpy"]

import math

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_SLOPE = 1e-3  # zuko's default minimum slope


def rqs_forward(x, phi, bins, bound, slope=DEFAULT_SLOPE):
    """Spline ``y`` of ``x`` (..., m) with parameters ``phi`` (..., m, 3 bins - 1) and log|dy/dx| summed over m (...,).

    Infinite or NaN ``x`` give NaN log-dets, as zuko does.
    """
    log_slope = math.log(slope)  # zuko's arithmetic order, so that results agree to float32 rounding
    widths_heights = phi[..., : 2 * bins].unflatten(-1, (2, bins))
    widths_heights = widths_heights / (1 + torch.abs(2 * widths_heights / log_slope))
    knots = bound * (2 * F.pad(torch.cumsum(torch.softmax(widths_heights, dim=-1), dim=-1), (1, 0)) - 1)
    derivatives = phi[..., 2 * bins :]
    derivatives = torch.exp(F.pad(derivatives / (1 + torch.abs(derivatives / log_slope)), (1, 1)))
    table = torch.cat((knots, derivatives.unsqueeze(-2)), dim=-2)  # (..., m, 3, bins + 1): x knots, y knots, derivatives
    k = (knots[..., 0, :] < x.unsqueeze(-1)).sum(-1, keepdim=True) - 1  # bin; -1 or bins: outside
    k_in = k.clamp(0, bins - 1)
    inside = (k == k_in).squeeze(-1)
    ends = table.gather(-1, torch.cat((k_in, k_in + 1), dim=-1).unsqueeze(-2).expand(table.shape[:-1] + (2,)))
    (x0, y0, d0), (x1, y1, d1) = ends[..., 0].unbind(-1), ends[..., 1].unbind(-1)
    s = (y1 - y0) / (x1 - x0)
    t = inside * (x - x0) / (x1 - x0)
    tt = t * (1 - t)
    denominator = s + (d0 + d1 - 2 * s) * tt
    y = y0 + (y1 - y0) * (s * t**2 + d0 * tt) / denominator
    jacobian = s**2 * (2 * s * tt + d0 * (1 - t) ** 2 + d1 * t**2) / denominator**2
    return torch.where(inside, y, x), (inside * torch.log(jacobian)).sum(-1)


def rqs_forward_numpy(x, phi, bins, bound, slope=DEFAULT_SLOPE):
    """:func:`rqs_forward` on NumPy arrays (no gradients), in ``phi``'s dtype. Call under ``np.errstate(all="ignore")``."""
    log_slope = math.log(slope)
    widths_heights = phi[..., : 2 * bins].reshape(phi.shape[:-1] + (2, bins))
    widths_heights = widths_heights / (1 + np.abs(2 * widths_heights / log_slope))  # |.| < |log slope| / 2: exp is safe
    cumulative = np.cumsum(np.exp(widths_heights), axis=-1)
    table = np.empty(phi.shape[:-1] + (3, bins + 1), dtype=phi.dtype)  # x knots, y knots, derivatives
    table[..., :2, 0] = -bound
    table[..., :2, 1:] = bound * (2 * (cumulative / cumulative[..., -1:]) - 1)
    derivatives = phi[..., 2 * bins :]
    table[..., 2, 1:-1] = np.exp(derivatives / (1 + np.abs(derivatives / log_slope)))
    table[..., 2, ::bins] = 1
    k = np.add.reduce(table[..., 0, :] < x[..., None], axis=-1) - 1
    inside = (k >= 0) & (k < bins)
    start = np.arange(0, table.size, bins + 1).reshape(table.shape[:-1]) + (k % bins)[..., None]  # flat index of bin k
    flat = table.reshape(-1)
    low, high = flat[start], flat[start + 1]
    x0, y0, d0, x1, y1, d1 = low[..., 0], low[..., 1], low[..., 2], high[..., 0], high[..., 1], high[..., 2]
    s = (y1 - y0) / (x1 - x0)
    t = inside * (x - x0) / (x1 - x0)
    tt = t * (1 - t)
    denominator = s + (d0 + d1 - 2 * s) * tt
    y = y0 + (y1 - y0) * (s * t**2 + d0 * tt) / denominator
    jacobian = s**2 * (2 * s * tt + d0 * (1 - t) ** 2 + d1 * t**2) / denominator**2
    return np.where(inside, y, x), np.add.reduce(inside * np.log(jacobian), axis=-1)
