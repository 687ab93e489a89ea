"""The discretized reference process of a diffusion sampler and its exact Gaussian kernels.

The sampler simulates dX = σ(t) u(t, X) dt + σ(t) dW on t in [0, 1] by Euler–Maruyama on ``n_steps``
uniform steps, from X_0 ~ N(0, s0² I) (``source_scale = s0``; 0 puts X_0 at the origin). The
*reference* process is the same chain without control: step k adds N(0, v_k I) noise,
v_k = ∫ σ(t)² dt over the step, so X_k ~ N(0, V_k I) with V_k = s0² + v_1 + … + v_k. Its backward kernels
B_k(x_{k-1} | x_k) = N(x_k V_{k-1}/V_k, V_{k-1} v_k / V_k) are known exactly; they give exact
importance weights on the discretized chain (:mod:`openmm_flowplugin.diffusion.chain`) and the
bridges X_k | (X_0, X_K) that adjoint matching trains on.

Examples
--------
>>> schedule = NoiseSchedule(sigma_max=2.0, sigma_min=0.01, n_steps=50)
>>> schedule.variances.shape, bool(schedule.variances[0] == 0.0)
((51,), True)
"""

__all__ = ["NoiseSchedule"]

import math

import numpy as np
import torch

from ..errors import InvalidInputError
from ._checks import integer_at_least

_LOG_2PI = math.log(2.0 * math.pi)


class NoiseSchedule:
    """Geometric noise σ(t) = σ_min (σ_max/σ_min)^(1-t) √(2 log(σ_max/σ_min)) on a uniform grid.

    With this σ(t) the reference variance accumulated over [0, 1] is σ_max² − σ_min² (in nm²): pick
    σ_max about the size of the region the target occupies, σ_min well below its narrowest feature.

    Parameters
    ----------
    sigma_max, sigma_min : float
        nm (bare numbers) or ``openmm.unit`` lengths; ``sigma_max > sigma_min > 0``.
    n_steps : int
        Euler–Maruyama steps K.
    source_scale : float
        s0: standard deviation (nm) of the Gaussian source; 0 (default) starts every chain at the
        origin (the memoryless case of Adjoint Sampling, where no corrector has to be learned).

    Attributes
    ----------
    times : numpy.ndarray, shape=(K + 1,)
    sigmas : numpy.ndarray, shape=(K,)
        σ_k, the root-mean-square of σ(t) over step k, used in its drift σ_k u Δt.
    step_variances : numpy.ndarray, shape=(K,)
        v_k = ∫ σ(t)² dt over step k = σ_k² Δt.
    variances : numpy.ndarray, shape=(K + 1,)
        V_k, the reference marginal variance per coordinate after k steps.
    """

    def __init__(self, sigma_max=2.0, sigma_min=0.01, n_steps=100, source_scale=0.0):
        from ..units import in_unit
        from openmm import unit

        self.sigma_max = float(in_unit(sigma_max, unit.nanometer, "sigma_max"))
        self.sigma_min = float(in_unit(sigma_min, unit.nanometer, "sigma_min"))
        self.source_scale = float(in_unit(source_scale, unit.nanometer, "source_scale"))
        if not (math.isfinite(self.sigma_max) and self.sigma_max > self.sigma_min > 0.0):
            raise InvalidInputError(f"need finite sigma_max > sigma_min > 0, got sigma_max={self.sigma_max}, sigma_min={self.sigma_min}.")
        if self.sigma_max > 1e6 or self.sigma_max / self.sigma_min > 1e12:  # beyond any molecule, and past float range below
            raise InvalidInputError(f"need sigma_max <= 1e6 and sigma_max/sigma_min <= 1e12 (nm, or standardized units), got "
                                    f"sigma_max={self.sigma_max}, sigma_min={self.sigma_min}.")
        if not (math.isfinite(self.source_scale) and self.source_scale >= 0.0):
            raise InvalidInputError(f"source_scale must be >= 0 nm, got {self.source_scale}.")
        self.n_steps = integer_at_least(n_steps, 2, "n_steps")
        self.times = np.linspace(0.0, 1.0, self.n_steps + 1)
        dt = 1.0 / self.n_steps
        ratio = self.sigma_max / self.sigma_min
        # v_k is the exact integral of σ(t)² over the step (σ_min² r^(2(1-t)) telescopes), so the reference's
        # total variance is σ_max² − σ_min² for any K; the drift of step k uses the step's RMS σ.
        accumulated = self.sigma_min**2 * (ratio**2 - ratio ** (2.0 * (1.0 - self.times)))
        self.step_variances = np.diff(accumulated)
        self.sigmas = np.sqrt(self.step_variances / dt)
        self.variances = self.source_scale**2 + np.concatenate([[0.0], np.cumsum(self.step_variances)])

    def as_dict(self):
        """The schedule's settings (plain data, for checkpoints)."""
        return dict(sigma_max=self.sigma_max, sigma_min=self.sigma_min, n_steps=self.n_steps, source_scale=self.source_scale)

    @property
    def memoryless(self):
        """True when X_0 is the origin (source_scale 0)."""
        return self.source_scale == 0.0

    # ------------------------------------------------------------------ kernels (float64, per sample)
    def log_source(self, x0):
        """log N(x0; 0, s0² I) summed over coordinates, shape (batch,); 0 for the memoryless source."""
        if self.memoryless:
            return torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
        return _log_normal(x0, torch.zeros_like(x0), self.source_scale**2)

    def log_forward(self, x_next, mean, k):
        """log N(x_k; mean, v_k I) of step k (1-based), shape (batch,)."""
        return _log_normal(x_next, mean, float(self.step_variances[k - 1]))

    def log_backward(self, x_prev, x_next, k):
        """log B_k(x_{k-1} | x_k) of the reference process, shape (batch,).

        For the memoryless source B_1 is a point mass at the origin, as is the source: both are left
        out of the weights (they cancel), so this returns 0 for k = 1.
        """
        previous, current = float(self.variances[k - 1]), float(self.variances[k])
        if previous == 0.0:
            return torch.zeros(len(x_next), dtype=torch.float64, device=x_next.device)
        return _log_normal(x_prev, x_next * (previous / current), previous * float(self.step_variances[k - 1]) / current)

    def sample_bridge(self, x0, x1, k, generator):
        """X_k of the reference process given X_0 = x0 and X_K = x1 (one k per row), shape of x0.

        Parameters
        ----------
        x0, x1 : torch.Tensor, shape=(batch, d)
        k : torch.Tensor of int, shape=(batch,)
            Grid indices in 0..K.
        generator : torch.Generator
        """
        variances = torch.as_tensor(self.variances, dtype=x0.dtype, device=x0.device)
        v0, vk, v1 = variances[0], variances[k][:, None], variances[-1]
        weight = (vk - v0) / (v1 - v0)
        std = torch.sqrt(torch.clamp((vk - v0) * (v1 - vk) / (v1 - v0), min=0.0))
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return x0 + weight * (x1 - x0) + std * noise

    def terminal_transition_score(self, x0, x1):
        """∇_{x1} log p_ref(x1 | x0), the corrector-matching target, shape of x1."""
        return -(x1 - x0) / float(self.variances[-1] - self.variances[0])

    def __repr__(self):
        return (f"NoiseSchedule(sigma_max={self.sigma_max}, sigma_min={self.sigma_min}, n_steps={self.n_steps}, "
                f"source_scale={self.source_scale})")


def _log_normal(x, mean, variance):
    d = x.shape[-1]
    return -0.5 * ((x - mean) ** 2).sum(-1).to(torch.float64) / variance - 0.5 * d * (_LOG_2PI + math.log(variance))
