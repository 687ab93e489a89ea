"""Bicubic interpolation of a tabulated grid exactly as OpenMM's ``Continuous2DFunction`` computes it.

OpenMM (``SplineFitter::create2DNaturalSpline``) takes the derivatives at the grid nodes from 1D cubic
splines — d/dx along each row, d/dy along each column, the cross derivative from splines along x of
d/dy — natural splines, or periodic ones for a periodic function, and then interpolates each cell by
the bicubic Hermite patch through the values and these derivatives. We build the same patches in
NumPy (float64) and evaluate them in torch, so a bias evaluated here and the exported force agree to
rounding, in value and gradient.
"""

__all__ = ["bicubic_coefficients", "evaluate_bicubic"]

import numpy as np
import torch
from scipy.interpolate import CubicSpline

# Hermite basis: a cubic with value/derivative (f0, f1, d0, d1) on [0, 1] has monomial coefficients _HERMITE @ (f0, f1, d0, d1).
_HERMITE = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [-3.0, 3.0, -2.0, -1.0], [2.0, -2.0, 1.0, 1.0]])


def _node_derivatives(values, spacing, axis, periodic):
    """First derivative at the nodes of the cubic spline through ``values`` along ``axis``."""
    n = values.shape[axis]
    nodes = np.arange(n) * spacing
    spline = CubicSpline(nodes, values, axis=axis, bc_type="periodic" if periodic else "natural")
    return spline(nodes, 1)


def bicubic_coefficients(values, spacing, periodic):
    """Monomial coefficients of each cell's patch, shape (nx - 1, ny - 1, 4, 4).

    Parameters
    ----------
    values : numpy.ndarray, shape=(nx, ny)
        ``values[i, j] = f(x_i, y_j)`` on a uniform grid (float64). A periodic grid repeats its first
        row and column as its last.
    spacing : tuple of float
        Grid spacings (hx, hy).
    periodic : bool

    Returns
    -------
    numpy.ndarray
        ``c[i, j, p, q]`` such that in cell (i, j), f = sum_pq c[p, q] a^p b^q with a, b in [0, 1]
        the fractional positions along x and y.
    """
    values = np.asarray(values, dtype=np.float64)
    hx, hy = spacing
    fx = _node_derivatives(values, hx, 0, periodic) * hx
    fy = _node_derivatives(values, hy, 1, periodic) * hy
    # OpenMM's cross derivative: splines along x of the y-derivatives.
    fxy = _node_derivatives(fy / hy, hx, 0, periodic) * hx * hy

    def cell_block(f, g, h, k):
        # 4x4 block [[f00, f01, fy00, fy01], [f10, f11, fy10, fy11], [fx00, fx01, fxy00, fxy01], [fx10, fx11, fxy10, fxy11]]
        return np.stack(
            [
                np.stack([f[:-1, :-1], f[:-1, 1:], g[:-1, :-1], g[:-1, 1:]], -1),
                np.stack([f[1:, :-1], f[1:, 1:], g[1:, :-1], g[1:, 1:]], -1),
                np.stack([h[:-1, :-1], h[:-1, 1:], k[:-1, :-1], k[:-1, 1:]], -1),
                np.stack([h[1:, :-1], h[1:, 1:], k[1:, :-1], k[1:, 1:]], -1),
            ],
            -2,
        )

    block = cell_block(values, fy, fx, fxy)
    return np.einsum("pa,ijab,qb->ijpq", _HERMITE, block, _HERMITE)


def evaluate_bicubic(coefficients, lower, spacing, periodic, points):
    """Interpolated values at ``points`` (batch, 2), differentiable in the points.

    Outside the grid a non-periodic function is 0, as in OpenMM; a periodic one wraps.

    Parameters
    ----------
    coefficients : torch.Tensor, shape=(nx - 1, ny - 1, 4, 4)
        From :func:`bicubic_coefficients`, in the points' dtype.
    lower : torch.Tensor, shape=(2,)
        Grid origin (x_min, y_min).
    spacing : torch.Tensor, shape=(2,)
    periodic : bool
    points : torch.Tensor, shape=(batch, 2)
    """
    n_cells = torch.tensor(coefficients.shape[:2], device=points.device)
    scaled = (points - lower) / spacing
    if periodic:
        scaled = torch.remainder(scaled, n_cells.to(scaled.dtype))
        inside = torch.ones(len(points), dtype=torch.bool, device=points.device)
    else:
        inside = ((scaled >= 0) & (scaled <= n_cells.to(scaled.dtype))).all(-1)
    cell = torch.clamp(torch.floor(scaled.detach()).long(), min=torch.zeros_like(n_cells), max=n_cells - 1)
    cell = torch.where(inside[:, None], cell, torch.zeros_like(cell))
    fraction = scaled - cell.to(scaled.dtype)
    c = coefficients[cell[:, 0], cell[:, 1]]  # (batch, 4, 4)
    a = _monomials(fraction[:, 0])  # (batch, 4)
    b = _monomials(fraction[:, 1])
    value = torch.einsum("np,npq,nq->n", a, c, b)
    return torch.where(inside, value, torch.zeros_like(value))


def _monomials(t):
    return torch.stack([torch.ones_like(t), t, t * t, t * t * t], -1)
