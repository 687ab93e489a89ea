"""Euler–Maruyama chains of the controlled SDE and their exact importance weights.

A chain X_0 → X_1 → … → X_K draws X_0 from the source p₀ and each step from the Gaussian kernel
F_k(x_k | x_{k-1}) = N(x_{k-1} + σ_k u_θ(t_{k-1}, x_{k-1}) Δt, v_k I) — the kernel actually
simulated, not its continuous-time limit. With the reference process's exact backward kernels B_k
(:class:`~openmm_flowplugin.diffusion.schedule.NoiseSchedule`), the weight

    w = π(X_K) ∏_k B_k(X_{k-1} | X_k) / [p₀(X₀) ∏_k F_k(X_k | X_{k-1})]

is an exact importance weight for the target π ∝ exp(−u) on X_K: the numerator is a normalised
backward path density times π, whose X_K marginal is π. No Girsanov sum, no time-discretisation bias,
whatever θ is; training only changes how many samples count (the effective sample size).

Examples
--------
>>> import torch
>>> from openmm_flowplugin.diffusion import Controller, NoiseSchedule
>>> schedule = NoiseSchedule(sigma_max=1.0, sigma_min=0.01, n_steps=20)
>>> chains = run_chains(Controller(3), schedule, 4, torch.Generator().manual_seed(0))
>>> chains.x_final.shape, chains.log_path_ratio.dtype
(torch.Size([4, 3]), torch.float64)
"""

__all__ = ["Chains", "run_chains", "backward_log_path_ratio", "DivergedTrainingError"]

import dataclasses
import math

import torch



class DivergedTrainingError(RuntimeError):
    """The controller or corrector returned non-finite values: its training diverged."""


@dataclasses.dataclass
class Chains:
    """Start and end points of a batch of chains.

    Attributes
    ----------
    x_initial, x_final : torch.Tensor, shape=(batch, d), float64
        X_0 and X_K (nm).
    log_path_ratio : torch.Tensor, shape=(batch,), float64
        log ∏ B_k − log p₀(X₀) − log ∏ F_k; the log importance weight is this minus u(X_K).
    """

    x_initial: torch.Tensor
    x_final: torch.Tensor
    log_path_ratio: torch.Tensor


@torch.no_grad()
def run_chains(controller, schedule, n_chains, generator):
    """Simulate ``n_chains`` chains of the controlled SDE (float64 state, no gradients).

    Parameters
    ----------
    controller : Controller or sequence of Controller
        u_θ(t, x) on flattened coordinates of dimension ``controller.dimension``. Several controllers
        (e.g. snapshots taken during training) define a mixture: chain i follows controller i mod J,
        and the weights use the path density of what was drawn, Σ_j (n_j/n) p₀ ∏ F_j with n_j the
        chains of component j in this call (the balance heuristic of multiple importance sampling) —
        every controller's drift is evaluated along every chain (J times the cost of one). Each call's
        weights are exact on their own, whatever n and J.
    schedule : NoiseSchedule
    n_chains : int
    generator : torch.Generator
        The only source of randomness (CPU generator).

    Returns
    -------
    Chains

    Raises
    ------
    DivergedTrainingError
        If a controller returns a non-finite drift (a diverged network: retrain or resume from an
        earlier checkpoint).
    """
    controllers = list(controller) if isinstance(controller, (list, tuple)) else [controller]
    n_components = len(controllers)
    d = controllers[0].dimension
    dt = 1.0 / schedule.n_steps
    component = torch.arange(n_chains) % n_components
    x = torch.randn((n_chains, d), generator=generator, dtype=torch.float64) * schedule.source_scale
    x_initial = x.clone()
    log_backward = -schedule.log_source(x)  # p0 is common to every component
    log_forward = torch.zeros((n_components, n_chains), dtype=torch.float64)
    for k in range(1, schedule.n_steps + 1):
        t = torch.full((n_chains,), float(schedule.times[k - 1]))
        means = torch.stack([x + float(schedule.sigmas[k - 1]) * _drift(c, t, x, schedule.times[k - 1]) * dt for c in controllers])
        mean = means[component, torch.arange(n_chains)]
        noise = torch.randn((n_chains, d), generator=generator, dtype=torch.float64)
        x_next = mean + math.sqrt(float(schedule.step_variances[k - 1])) * noise
        log_backward += schedule.log_backward(x, x_next, k)
        log_forward += torch.stack([schedule.log_forward(x_next, m, k) for m in means])
        x = x_next
    # The density the chains were drawn from: each component weighted by its share of this batch (the
    # balance heuristic), so every batch is exact on its own, also when n_chains is not a multiple of J.
    share = torch.bincount(component, minlength=n_components).to(torch.float64) / n_chains
    log_mixture = torch.logsumexp(log_forward + torch.log(share)[:, None], 0)
    return Chains(x_initial=x_initial, x_final=x, log_path_ratio=log_backward - log_mixture)


@torch.no_grad()
def backward_log_path_ratio(controller, schedule, x_final, generator):
    """log ∏ B_k − log p₀(X₀) − log ∏ F_k along a path drawn *backward* from ``x_final`` by the reference process.

    Given X_K = ``x_final``, the path X_{K−1}, …, X_0 is drawn from the reference's backward kernels B_k.
    Then exp(−ratio) = p₀ ∏ F_k / ∏ B_k is an unbiased estimate of the controlled chain's marginal
    density q(X_K) (the expectation over backward paths of the path density over the backward path
    density is the integral of the path density over paths ending at X_K). For the uncontrolled
    reference it is exact whatever the path: q is then the reference marginal N(0, V_K I).

    Parameters
    ----------
    controller : Controller
        One controller (a mixture's path density would need every component's forward densities).
    schedule : NoiseSchedule
    x_final : torch.Tensor, shape=(batch, d)
    generator : torch.Generator

    Returns
    -------
    torch.Tensor, shape=(batch,), float64
        The quantity :attr:`Chains.log_path_ratio` is for a forward path, for these backward paths.
    """
    x = x_final.to(torch.float64)
    path = [x]
    for k in range(schedule.n_steps, 0, -1):
        previous, current = float(schedule.variances[k - 1]), float(schedule.variances[k])
        mean = x * (previous / current)
        std = math.sqrt(previous * float(schedule.step_variances[k - 1]) / current)
        x = mean + std * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        path.append(x)
    path.reverse()
    log_ratio = -schedule.log_source(path[0])
    for k in range(1, schedule.n_steps + 1):
        t = torch.full((len(x),), float(schedule.times[k - 1]))
        mean = path[k - 1] + float(schedule.sigmas[k - 1]) * _drift(controller, t, path[k - 1], schedule.times[k - 1]) / schedule.n_steps
        log_ratio += schedule.log_backward(path[k - 1], path[k], k) - schedule.log_forward(path[k], mean, k)
    return log_ratio


def _drift(controller, t, x, time):
    drift = controller(t, x).to(torch.float64)
    if not torch.isfinite(drift).all():
        raise DivergedTrainingError(f"the controller returned a non-finite drift at t = {time:.3f}: "
                                    "its training diverged; resume from an earlier checkpoint or lower the learning rate.")
    return drift
