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


_GATHER_OFFSETS = {}  # bins -> offsets of (x_k, x_k+1, y_k, y_k+1) in a padded knot row pair


def rqs_forward_numpy(x, phi, bins, bound, slope=DEFAULT_SLOPE):
    """:func:`rqs_forward` on NumPy arrays (no gradients), in ``phi``'s dtype. Call under ``np.errstate(all="ignore")``.

    Written for a few configurations, where the cost is the number of NumPy calls, not their size: knots
    go straight into padded rows (``out=``), and one gather fetches each bin's four knot coordinates.
    """
    shape = x.shape
    rows = x.size
    x = x.reshape(rows)
    c = -2.0 / math.log(slope)  # soft bound u / (1 + |2 u / log slope|): |.| < |log slope| / 2, exp is safe
    u = phi[..., : 2 * bins].reshape(rows, 2, bins)
    u = np.exp(u / (1 + c * np.abs(u)))
    cumulative = np.cumsum(u, axis=-1)
    knots = np.empty((rows, 2, bins + 1), dtype=phi.dtype)  # x knots, y knots, from -bound to bound
    knots[:, :, 0] = -bound
    np.multiply(cumulative, (2 * bound) / cumulative[:, :, -1:], out=knots[:, :, 1:])
    knots[:, :, 1:] -= bound
    d = phi[..., 2 * bins :].reshape(rows, bins - 1)
    derivatives = np.ones((rows, bins + 1), dtype=phi.dtype)
    derivatives[:, 1:-1] = np.exp(d / (1 + np.abs(d) * (c / 2)))  # d / (1 + |d / log slope|)
    k = np.add.reduce(knots[:, 0, 1:-1] < x[:, None], axis=-1)  # bin of x if inside
    inside = np.abs(x) <= bound
    offsets = _GATHER_OFFSETS.get(bins)
    if offsets is None:
        offsets = _GATHER_OFFSETS.setdefault(bins, np.array([0, 1, bins + 1, bins + 2]))
    row = np.arange(rows)
    x0, x1, y0, y1 = knots.reshape(-1)[(row * (2 * bins + 2) + k)[:, None] + offsets].T
    d0, d1 = derivatives.reshape(-1)[(row * (bins + 1) + k)[:, None] + offsets[:2]].T
    width, height = x1 - x0, y1 - y0
    s = height / width
    t = inside * (x - x0) / width
    tt = t * (1 - t)
    denominator = s + (d0 + d1 - 2 * s) * tt
    y = y0 + height * (s * t * t + d0 * tt) / denominator
    jacobian = s * s * (2 * s * tt + d0 * (1 - t) ** 2 + d1 * t * t) / (denominator * denominator)
    log_jacobian = np.log(jacobian, where=inside, out=np.zeros_like(jacobian))
    return np.where(inside, y, x).reshape(shape), np.add.reduce(log_jacobian.reshape(shape), axis=-1)
