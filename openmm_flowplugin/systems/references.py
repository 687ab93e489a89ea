"""Exact reference densities for the toy systems, used to test samplers for exactness.

Each reference knows the Boltzmann density of its system in closed form (Gaussians) or by
quadrature on a fine grid (planar potentials), so tests can compare sampled moments and
histograms against numbers that carry no sampling error of their own.
"""

__all__ = ["GaussianReference", "PlanarReference"]

import numpy as np

from ..units import kT as _kT


class GaussianReference:
    """Independent Gaussian coordinates: the Boltzmann density of harmonic restraints.

    Parameters
    ----------
    mean : array_like, shape=(n_atoms, 3)
        Equilibrium positions in nm.
    std : array_like, broadcastable to (n_atoms, 3)
        Standard deviation of each coordinate in nm (``sqrt(kT / K)`` for a spring constant K).
    """

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.broadcast_to(np.asarray(std, dtype=np.float64), self.mean.shape).copy()

    @property
    def variance(self):
        """Variance of each coordinate in nm^2, shape=(n_atoms, 3)."""
        return self.std**2

    def log_density(self, positions):
        """Normalized log density of positions, shape=(n, n_atoms, 3) in nm; returns shape=(n,)."""
        z = (np.asarray(positions, dtype=np.float64) - self.mean) / self.std
        log_norm = -0.5 * np.log(2 * np.pi) * z[0].size - np.log(self.std).sum()
        return -0.5 * (z**2).sum(axis=(-2, -1)) + log_norm


class PlanarReference:
    """Exact density of one particle in U(x, y) + k_z z^2 / 2, by quadrature over (x, y).

    Parameters
    ----------
    potential_xy : callable
        ``potential_xy(x, y)`` in kJ/mol for numpy arrays of x and y in nm.
    z_spring_constant : float
        k_z in kJ/mol/nm^2 of the harmonic restraint that holds z near 0.
    temperature : float or openmm.unit.Quantity
    bounds : tuple
        ``((x_min, x_max), (y_min, y_max))`` in nm; the density must be negligible outside.
    n_grid : int
        Quadrature points per axis.
    """

    def __init__(self, potential_xy, z_spring_constant, temperature, bounds, n_grid=1201):
        self.potential_xy = potential_xy
        self.kT = _kT(temperature)
        self.z_spring_constant = float(z_spring_constant)
        self.bounds = tuple(tuple(map(float, b)) for b in bounds)
        (x0, x1), (y0, y1) = self.bounds
        self.x = np.linspace(x0, x1, n_grid)
        self.y = np.linspace(y0, y1, n_grid)
        X, Y = np.meshgrid(self.x, self.y, indexing="ij")
        u = potential_xy(X, Y) / self.kT
        self._u_min = u.min()
        weights = np.exp(-(u - self._u_min))
        self._log_z = np.log(np.trapezoid(np.trapezoid(weights, self.y, axis=1), self.x)) - self._u_min
        self.density = np.exp(-u - self._log_z)
        self._X, self._Y = X, Y

    @property
    def z_variance(self):
        """Exact variance of z in nm^2 (kT / k_z)."""
        return self.kT / self.z_spring_constant

    def log_density_xy(self, x, y):
        """Normalized log density of the (x, y) marginal at x, y in nm."""
        return -self.potential_xy(np.asarray(x), np.asarray(y)) / self.kT - self._log_z

    def expectation(self, function):
        """Exact average of ``function(x, y)`` (vectorized over numpy arrays)."""
        integrand = function(self._X, self._Y) * self.density
        return float(np.trapezoid(np.trapezoid(integrand, self.y, axis=1), self.x))

    def mean(self):
        """Exact mean of (x, y) in nm."""
        return np.array([self.expectation(lambda x, y: x), self.expectation(lambda x, y: y)])

    def covariance(self):
        """Exact 2x2 covariance of (x, y) in nm^2."""
        mx, my = self.mean()
        return np.array(
            [
                [self.expectation(lambda x, y: (x - mx) ** 2), self.expectation(lambda x, y: (x - mx) * (y - my))],
                [self.expectation(lambda x, y: (x - mx) * (y - my)), self.expectation(lambda x, y: (y - my) ** 2)],
            ]
        )

    def probability(self, region):
        """Exact probability of ``region(x, y)`` (a boolean function), e.g. ``lambda x, y: x > 0``."""
        return self.expectation(lambda x, y: region(x, y).astype(np.float64))

    def bin_probabilities(self, edges, axis=0):
        """Exact probabilities of the bins ``edges`` of the x (axis=0) or y (axis=1) marginal.

        Mass outside the outermost edges is not included, so the result sums to at most 1.
        """
        edges = np.asarray(edges, dtype=np.float64)
        nodes, weights = np.polynomial.legendre.leggauss(24)
        other = self.y if axis == 0 else self.x
        probabilities = np.empty(len(edges) - 1)
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            t = 0.5 * (b - a) * nodes + 0.5 * (a + b)
            if axis == 0:
                X, Y = np.meshgrid(t, other, indexing="ij")
            else:
                Y, X = np.meshgrid(t, other, indexing="ij")
            marginal = np.trapezoid(np.exp(self.log_density_xy(X, Y)), other, axis=1)
            probabilities[i] = 0.5 * (b - a) * np.dot(weights, marginal)
        return probabilities
