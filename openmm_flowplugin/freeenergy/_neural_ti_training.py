"""Neural TI before the exact path: endpoint MD, pairing, target score matching, the amortized estimate (:mod:`.neural_ti`)."""

__all__ = ["EndpointSamples", "sample_endpoints", "train_neural_ti", "amortized_delta_f"]

import math
from dataclasses import dataclass

import numpy as np
import openmm
import torch
from openmm import unit

from ..errors import InvalidInputError
from ._neural_ti_model import PairPotential


@dataclass
class EndpointSamples:
    """Configurations (nm) and reduced forces -β∇U at t = 0 (decoupled) and t = 1 (coupled)."""

    x0: np.ndarray
    f0: np.ndarray
    x1: np.ndarray
    f1: np.ndarray
    box: float
    solute: int


def _context(leg, platform):
    from ..platforms import select_platform

    integrator = openmm.LangevinMiddleIntegrator(leg.molecular_system.temperature, 5.0, 0.001)
    return openmm.Context(leg.alchemical_system, integrator, select_platform(leg.alchemical_system, platform)), integrator


def _set_lambda(context, value):
    context.setParameter("lambda_sterics", value)
    try:
        context.setParameter("lambda_electrostatics", value)
    except Exception:  # noqa: BLE001 - no alchemical electrostatics in an uncharged system
        pass


def sample_endpoints(leg, n_samples, steps_between=100, equilibration_steps=2000, timestep=None, seed=0, platform=None):
    """OpenMM Langevin MD at the two end states of ``leg`` (an :class:`~.alchemical.AlchemicalLeg` of an
    uncharged solute): ``n_samples`` frames each, with reduced forces (β times OpenMM's forces)."""
    context, integrator = _context(leg, platform)
    step = timestep if timestep is not None else leg.molecular_system.options.get("timestep_ps", 0.001)
    integrator.setStepSize(step)
    integrator.setRandomNumberSeed(seed + 1)
    beta = 1.0 / leg.molecular_system.kT
    out = {}
    for value in (0.0, 1.0):
        _set_lambda(context, value)
        context.setPositions(leg.molecular_system.positions)
        openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
        context.setVelocitiesToTemperature(leg.molecular_system.temperature, seed + 2)
        integrator.step(equilibration_steps)
        xs, fs = [], []
        for _ in range(n_samples):
            integrator.step(steps_between)
            state = context.getState(positions=True, forces=True, enforcePeriodicBox=True)
            xs.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
            fs.append(beta * state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        out[value] = (np.array(xs), np.array(fs))
    box = leg.alchemical_system.getDefaultPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    return EndpointSamples(out[0.0][0], out[0.0][1], out[1.0][0], out[1.0][1], float(box), leg.solute_atoms[0])


def _pair(samples, rng):
    """Pairs (x0, x1): random partners, x1 shifted so that the solutes coincide, solvent matched by the
    Hungarian algorithm on minimum-image distances (short straight paths, as in the papers' code)."""
    from scipy.optimize import linear_sum_assignment

    box, s = samples.box, samples.solute
    partners = rng.permutation(len(samples.x1))
    x1, f1 = samples.x1[partners].copy(), samples.f1[partners].copy()
    solvent = np.array([i for i in range(x1.shape[1]) if i != s])
    for k in range(len(x1)):
        x1[k] = x1[k] - x1[k, s] + samples.x0[k, s]
        d = samples.x0[k, solvent][:, None] - x1[k, solvent][None]
        d -= box * np.round(d / box)
        _, columns = linear_sum_assignment((d**2).sum(-1))
        x1[k, solvent], f1[k, solvent] = x1[k, solvent[columns]], f1[k, solvent[columns]]
    return x1, f1


def _interpolate(x0, x1, t, box):
    dx = x1 - x0
    dx -= box * np.round(dx / box)
    return np.mod(x0 + t[:, None, None] * dx, box)


def _physical_reduced(context, x, t, beta, forces=True, derivative=True, h=1e-4):
    """β U_phys(x; λ = t), its x-gradient, and ∂_t of it by central differences (one-sided at the ends).

    openmmtools' alchemical forces declare no parameter derivatives (OpenMM would report 0), hence the differences.
    """
    _set_lambda(context, t)
    context.setPositions(x)
    state = context.getState(energy=True, forces=forces)
    u = beta * state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    grad = -beta * state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) if forces else None
    if not derivative:
        return u, grad, None
    lo, hi = max(t - h, 0.0), min(t + h, 1.0)
    values = []
    for value in (lo, hi):
        _set_lambda(context, value)
        values.append(beta * context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return u, grad, (values[1] - values[0]) / (hi - lo)


def train_neural_ti(leg, samples, pair_potential=None, n_steps=200, batch_size=8, learning_rate=1e-3, seed=0, platform=None,
                    progress=None):
    """Fit φ_θ by target score matching on ``samples`` (see the module docstring); returns (φ, loss history)."""
    from tqdm import tqdm

    from .._threads import package_threads

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if pair_potential is None:
        cutoff = _cutoff(leg)
        pair_potential = PairPotential(cutoff)
    context, _ = _context(leg, platform)
    beta = 1.0 / leg.molecular_system.kT
    x1, f1 = _pair(samples, rng)
    optimizer = torch.optim.Adam(pair_potential.parameters(), lr=learning_rate)
    box, solute = samples.box, samples.solute
    history = []
    with package_threads():
        for _ in tqdm(range(n_steps), disable=None if progress is None else not progress, desc="neural TI"):
            index = rng.integers(0, len(samples.x0), batch_size)
            t = rng.uniform(0.0, 1.0, batch_size)
            xt = _interpolate(samples.x0[index], x1[index], t, box)
            grad_phys = np.array([_physical_reduced(context, xt[k], float(t[k]), beta, derivative=False)[1]
                                  for k in range(batch_size)])
            left = -samples.f0[index] / np.clip(1 - t, 0.1, None)[:, None, None]  # ∇u_0(x_0) / (1 - t)
            right = -f1[index] / np.clip(t, 0.1, None)[:, None, None]  # ∇u_1(x_1) / t
            target = np.where((t < 0.5)[:, None, None], left, right)
            x = torch.tensor(xt, requires_grad=True)
            energy = beta * pair_potential.learned_energy(x, torch.tensor(t), solute, box)
            (grad_nn,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
            loss = ((torch.from_numpy(grad_phys) + grad_nn - torch.from_numpy(target)) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    return pair_potential, history


def amortized_delta_f(leg, samples, pair_potential, n_points=256, seed=1, platform=None):
    """The papers' estimator, **approximate**: ΔF ≈ -mean over t ~ U(0, 1) and pairs of ∂_t u_θ(x_t, t).

    Returns ``(delta_f, standard_error)`` in kT, ``delta_f = f(decoupled) - f(coupled)``. The standard
    error is statistical only; the estimator is biased unless the interpolant's marginals are the
    Boltzmann distributions of U_θ, which nothing enforces. Use :func:`~.neural_ti.exact_path_leg` for the result.
    """
    rng = np.random.default_rng(seed)
    context, _ = _context(leg, platform)
    beta = 1.0 / leg.molecular_system.kT
    x1, _ = _pair(samples, rng)
    index = rng.integers(0, len(samples.x0), n_points)
    t = rng.uniform(0.0, 1.0, n_points)
    xt = _interpolate(samples.x0[index], x1[index], t, samples.box)
    du_phys = np.array([_physical_reduced(context, xt[k], float(t[k]), beta, forces=False)[2] for k in range(n_points)])
    t_torch = torch.tensor(t, requires_grad=True)
    energy = beta * pair_potential.learned_energy(torch.tensor(xt), t_torch, samples.solute, samples.box)
    (du_nn,) = torch.autograd.grad(energy.sum(), t_torch)
    du = du_phys + du_nn.detach().numpy()  # ∂_t u_θ at each point; f(1) - f(0) = E[∂_t u]
    return float(-du.mean()), float(du.std(ddof=1) / math.sqrt(n_points))


def _charges(leg):
    from .alchemical import _solute_charges

    return _solute_charges(leg.molecular_system.system, leg.solute_atoms)


def _cutoff(leg):
    for force in leg.molecular_system.system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            return force.getCutoffDistance().value_in_unit(unit.nanometer)
    raise InvalidInputError("the system has no NonbondedForce.")
