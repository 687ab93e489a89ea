"""Neural TI before the exact path: endpoint MD, pairing, target score matching, the amortized estimate (:mod:`.neural_ti`)."""

__all__ = ["ELECTROSTATICS_FROM", "path_lambdas", "EndpointSamples", "sample_endpoints", "train_neural_ti", "amortized_delta_f",
           "path_time_derivatives"]

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import unit

from ..errors import InvalidInputError
from ._neural_ti_model import PairPotential, pair_classes

#: t at which a charged solute's path has its Lennard-Jones fully on and starts to switch its charges on.
ELECTROSTATICS_FROM = 0.8


def path_lambdas(t, boundary=None):
    """``(lambda_electrostatics, lambda_sterics)`` of the physical part of the learned path at ``t``.

    Uncharged solutes (``boundary=None``): both are t. Charged solutes: the sterics come on over
    [0, boundary] with the charges off, then the charges over [boundary, 1] (openmmtools annihilates
    charges only on a fully interacting solute).

    Examples
    --------
    >>> path_lambdas(0.4, boundary=0.8), path_lambdas(0.9, boundary=0.8), path_lambdas(0.4)
    ((0.0, 0.5), (0.5, 1.0), (0.4, 0.4))
    """
    t = float(t)
    if boundary is None:
        return t, t
    return max(0.0, (t - boundary) / (1.0 - boundary)), min(1.0, t / boundary)


def path_boundary(leg):
    """:data:`ELECTROSTATICS_FROM` for a leg whose solute has charges, else ``None``."""
    return ELECTROSTATICS_FROM if any(_charges(leg)) else None


@dataclass
class EndpointSamples:
    """Configurations (nm) and reduced forces -β∇U at t = 0 (decoupled) and t = 1 (coupled).

    ``solute`` holds the solute's atom indices (a single index for earlier LJ samples is accepted).
    """

    x0: np.ndarray
    f0: np.ndarray
    x1: np.ndarray
    f1: np.ndarray
    box: float
    solute: list

    def __post_init__(self):
        self.solute = [int(i) for i in np.atleast_1d(self.solute)]


def _constant_volume(system):
    """A copy of ``system`` with any barostat switched off (frequency 0)."""
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    for force in system.getForces():
        if isinstance(force, openmm.MonteCarloBarostat):
            force.setFrequency(0)
    return system


def _context(leg, platform, seed=None):
    """A context of ``leg``'s System at constant volume; ``seed`` seeds its Langevin integrator (OpenMM reads the
    seed when the Context is created: set later, it is ignored)."""
    from ..platforms import select_platform

    system = _constant_volume(leg.alchemical_system)
    integrator = openmm.LangevinMiddleIntegrator(leg.molecular_system.temperature, 5.0, 0.001)
    if seed is not None:
        integrator.setRandomNumberSeed(seed)
    return openmm.Context(system, integrator, select_platform(system, platform)), integrator


def _set_lambda(context, value, boundary=None):
    electrostatics, sterics = path_lambdas(value, boundary)
    context.setParameter("lambda_sterics", sterics)
    try:
        context.setParameter("lambda_electrostatics", electrostatics)
    except Exception:  # noqa: BLE001 - no alchemical electrostatics in an uncharged system
        pass


def sample_endpoints(leg, n_samples, steps_between=100, equilibration_steps=2000, timestep=None, seed=0, platform=None,
                     progress=False):
    """OpenMM Langevin MD at the two end states of ``leg`` (an :class:`~.alchemical.AlchemicalLeg`):
    ``n_samples`` frames each, with reduced forces (β times OpenMM's forces).

    The samples are training data only (any θ gives exact end states), so they are drawn at constant
    volume in the System's box even for an NPT leg, which keeps one box for all of them. The pairing and
    the torch side of training assume a cubic box: other boxes are refused. ``progress``: a bar with ETA per end state."""
    from tqdm.auto import tqdm

    vectors = np.array([v.value_in_unit(unit.nanometer) for v in leg.alchemical_system.getDefaultPeriodicBoxVectors()])
    if not np.allclose(vectors, vectors[0, 0] * np.eye(3), rtol=0.0, atol=1e-9):
        raise InvalidInputError(f"neural TI's training needs a cubic box; {leg.molecular_system.name} has box vectors "
                                f"{vectors.round(4).tolist()} nm: solvate it in a cube, or use --method mbar.")
    context, integrator = _context(leg, platform, seed=seed + 1)
    step = timestep if timestep is not None else leg.molecular_system.options.get("timestep_ps", 0.001)
    integrator.setStepSize(step)
    beta = 1.0 / leg.molecular_system.kT
    out = {}
    for value in (0.0, 1.0):
        _set_lambda(context, value)
        context.setPositions(leg.molecular_system.positions)
        openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
        context.setVelocitiesToTemperature(leg.molecular_system.temperature, seed + 2)
        integrator.step(equilibration_steps)
        xs, fs = [], []
        for _ in tqdm(range(n_samples), desc=f"neural TI: endpoint MD at t = {value:g}", disable=not progress):
            integrator.step(steps_between)
            state = context.getState(positions=True, forces=True, enforcePeriodicBox=True)
            xs.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
            fs.append(beta * state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
        out[value] = (np.array(xs), np.array(fs))
    box = leg.alchemical_system.getDefaultPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    return EndpointSamples(out[0.0][0], out[0.0][1], out[1.0][0], out[1.0][1], float(box), leg.solute_atoms)


def _solvent_molecules(leg):
    """The solvent's molecules (lists of atom indices, from OpenMM's bonds and constraints), each with its
    kind: the nonbonded classes of its atoms in order (only molecules of one kind are matched to each other)."""
    context, _ = _context(leg, "Reference")
    classes = pair_classes(leg.molecular_system.system, leg.solute_atoms)
    solvent_class = dict(zip(classes.solvent, classes.solvent_class))
    solute = set(leg.solute_atoms)
    molecules = [list(m) for m in context.getMolecules() if not solute & set(m)]
    return molecules, [tuple(solvent_class[i] for i in m) for m in molecules]


def _superposition(moving, target):
    """Rotation R (3, 3) minimizing |moving @ R.T - target| for centred point sets (Kabsch); identity for < 3 points."""
    if len(moving) < 3:
        return np.eye(3)
    u, _, vt = np.linalg.svd(moving.T @ target)
    sign = np.sign(np.linalg.det(u @ vt))
    return (u @ np.diag([1.0, 1.0, sign]) @ vt).T


def _pair(samples, rng, molecules=None, kinds=None):
    """Pairs (x0, x1): random partners; x1 (with its forces) translated and rotated so that its solute lies on
    x0's (Kabsch), solvent molecules of one kind matched by the Hungarian algorithm on the minimum-image
    distances of their first atoms and moved whole (short straight paths, as in the papers' code).
    ``molecules``: the solvent's molecules (default: each solvent atom alone); ``kinds``: one hashable per
    molecule (default: its size)."""
    from scipy.optimize import linear_sum_assignment

    box, solute = samples.box, list(samples.solute)
    partners = rng.permutation(len(samples.x1))
    x1, f1 = samples.x1[partners].copy(), samples.f1[partners].copy()
    if molecules is None:
        molecules = [[i] for i in range(x1.shape[1]) if i not in set(solute)]
    groups = {}
    for molecule, kind in zip(molecules, kinds if kinds is not None else [len(m) for m in molecules]):
        groups.setdefault(kind, []).append(molecule)
    for k in range(len(x1)):
        anchor0, anchor1 = samples.x0[k, solute[0]], x1[k, solute[0]]
        d0 = samples.x0[k, solute] - anchor0
        d0 -= box * np.round(d0 / box)
        d1 = x1[k] - anchor1
        d1 -= box * np.round(d1 / box)
        for group in groups.values():  # molecules whole before the rotation (a rotated box vector is no box vector)
            atoms = np.array(group)
            inner = d1[atoms[:, 1:]] - d1[atoms[:, :1]]
            d1[atoms[:, 1:]] = d1[atoms[:, :1]] + inner - box * np.round(inner / box)
        centre0, centre1 = d0.mean(0), d1[solute].mean(0)
        rotation = _superposition(d1[solute] - centre1, d0 - centre0)
        x1[k] = np.mod((d1 - centre1) @ rotation.T + centre0 + anchor0, box)
        f1[k] = f1[k] @ rotation.T
        for group in groups.values():
            atoms = np.array(group)  # (molecules, atoms per molecule)
            d = samples.x0[k, atoms[:, 0]][:, None] - x1[k, atoms[:, 0]][None]
            d -= box * np.round(d / box)
            _, columns = linear_sum_assignment((d**2).sum(-1))
            x1[k, atoms], f1[k, atoms] = x1[k, atoms[columns]], f1[k, atoms[columns]]
    return x1, f1


def _interpolate(x0, x1, t, box):
    dx = x1 - x0
    dx -= box * np.round(dx / box)
    return np.mod(x0 + t[:, None, None] * dx, box)


def _physical_gradient(context, x, t, beta, boundary=None):
    """∇_x β U_phys(x; λ(t)) in kT/nm."""
    _set_lambda(context, t, boundary)
    context.setPositions(x)
    forces = context.getState(forces=True).getForces(asNumpy=True)
    return -beta * forces.value_in_unit(unit.kilojoule_per_mole / unit.nanometer)


def _physical_time_derivative(context, x, t, beta, h=1e-4, boundary=None):
    """∂_t β U_phys(x; λ(t)) by a central difference (one-sided at the ends): two energies, none at t itself.

    openmmtools' alchemical forces declare no parameter derivatives (OpenMM would report 0), hence the difference.
    """
    context.setPositions(x)
    lo, hi = max(t - h, 0.0), min(t + h, 1.0)
    values = []
    for value in (lo, hi):
        _set_lambda(context, value, boundary)
        values.append(beta * context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return (values[1] - values[0]) / (hi - lo)


#: kT/nm: residuals beyond it count linearly in the loss of a molecular solute (Huber), see :func:`train_neural_ti`.
HUBER_DELTA = 100.0


def train_neural_ti(leg, samples, pair_potential=None, n_steps=200, batch_size=8, learning_rate=1e-3, seed=0, platform=None,
                    progress=None, robust=None, checkpoint=None, checkpoint_interval=100):
    """Fit φ_θ by target score matching on ``samples`` (see the module docstring); returns (φ, loss history).

    The loss is the mean squared residual of the reduced gradients. With ``robust`` (default: for
    molecular solutes, more than one pair class) it is the Huber loss with :data:`HUBER_DELTA` instead:
    straight-line interpolants of water clash (TIP3P hydrogens have no Lennard-Jones core), with
    gradients up to 1e8 kT/nm that φ cannot follow and that would otherwise steer the fit. Training only
    decides how good the path is: the exact-path estimate is exact for any θ. ``seed`` draws the pairing, the
    batches and t (NumPy) and φ's initial weights (torch, in a forked generator: torch's global one is left as it was).

    ``checkpoint`` (a path): every ``checkpoint_interval`` steps φ, the optimizer, the loss history and the
    generator's state are written there atomically, and a training that finds its own checkpoint there continues
    from it to the result of an uninterrupted run on the same platform (a checkpoint of other samples, settings,
    temperature or platform, or past ``n_steps``, is refused). The caller deletes it once the model is stored.
    """
    from tqdm import tqdm

    from .._threads import package_threads

    rng = np.random.default_rng(seed)
    classes = pair_classes(leg.molecular_system.system, leg.solute_atoms)
    if pair_potential is None:
        with torch.random.fork_rng(devices=[]):  # the initial weights from ``seed``; the CPU generator is restored after
            torch.default_generator.manual_seed(seed)  # not torch.manual_seed, which would reseed the GPUs' generators too
            pair_potential = PairPotential(_cutoff(leg), n_classes=classes.n_classes)
    context, _ = _context(leg, platform)
    beta = 1.0 / leg.molecular_system.kT
    boundary = path_boundary(leg)
    x1, f1 = _pair(samples, rng, *_solvent_molecules(leg))
    optimizer = torch.optim.Adam(pair_potential.parameters(), lr=learning_rate)
    box = samples.box
    if robust is None:
        robust = classes.n_classes > 1
    history = []
    if checkpoint is not None and (isinstance(checkpoint_interval, bool) or not isinstance(checkpoint_interval, int)
                                   or checkpoint_interval < 1):
        raise InvalidInputError(f"checkpoint_interval must be a positive number of steps, got {checkpoint_interval!r}.")
    settings = dict(seed=int(seed), batch_size=int(batch_size), learning_rate=float(learning_rate), robust=bool(robust),
                    config=dict(pair_potential.config), samples=_samples_digest(samples), beta=float(beta),
                    boundary=boundary, platform=str(platform))
    if checkpoint is not None and Path(checkpoint).exists():
        history = _resume_training(Path(checkpoint), settings, n_steps, pair_potential, optimizer, rng)
    with package_threads():
        for step in tqdm(range(len(history), n_steps), initial=len(history), total=n_steps,
                         disable=None if progress is None else not progress, desc="neural TI"):
            index = rng.integers(0, len(samples.x0), batch_size)
            t = rng.uniform(0.0, 1.0, batch_size)
            xt = _interpolate(samples.x0[index], x1[index], t, box)
            grad_phys = np.array([_physical_gradient(context, xt[k], float(t[k]), beta, boundary=boundary) for k in range(batch_size)])
            left = -samples.f0[index] / np.clip(1 - t, 0.1, None)[:, None, None]  # ∇u_0(x_0) / (1 - t)
            right = -f1[index] / np.clip(t, 0.1, None)[:, None, None]  # ∇u_1(x_1) / t
            target = np.where((t < 0.5)[:, None, None], left, right)
            x = torch.tensor(xt, requires_grad=True)
            energy = beta * pair_potential.learned_energy(x, torch.tensor(t), None, box, classes)
            (grad_nn,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
            residual = torch.from_numpy(grad_phys) + grad_nn - torch.from_numpy(target)
            if robust:
                loss = torch.nn.functional.huber_loss(residual, torch.zeros_like(residual), delta=HUBER_DELTA)
            else:
                loss = (residual**2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
            if checkpoint is not None and (step + 1) % checkpoint_interval == 0 and step + 1 < n_steps:
                _save_training(Path(checkpoint), settings, pair_potential, optimizer, rng, history)
    return pair_potential, history


def _samples_digest(samples):
    """sha256 of the endpoint samples a training fits (a checkpoint continues only on the very same samples)."""
    digest = hashlib.sha256()
    for array in (samples.x0, samples.f0, samples.x1, samples.f1, np.float64(samples.box), np.asarray(samples.solute)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _save_training(path, settings, pair_potential, optimizer, rng, history):
    temporary = path.with_name(path.name + ".partial")
    try:
        torch.save({"settings": settings, "state_dict": pair_potential.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": json.dumps(rng.bit_generator.state), "history": list(history)}, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_training_checkpoint(path):
    """``(settings, history, stored)`` of a training checkpoint; one line if it is not readable as one."""
    try:
        stored = torch.load(path, weights_only=True)
        stored_settings, history = dict(stored["settings"]), [float(v) for v in stored["history"]]
        if not isinstance(json.loads(stored["rng"]), dict):
            raise TypeError("its generator state is not a mapping")
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file gets one line
        raise InvalidInputError(f"{path} is not a readable neural-TI training checkpoint ({type(error).__name__}: {error}); "
                                "delete it to train from the start.") from None
    return stored_settings, history, stored


def _resume_training(path, settings, n_steps, pair_potential, optimizer, rng):
    """Load a training checkpoint into φ, the optimizer and ``rng``; its loss history (refused if of another training)."""
    stored_settings, history, stored = read_training_checkpoint(path)
    rng_state = json.loads(stored["rng"])
    if stored_settings != settings:
        differs = sorted(key for key in set(settings) | set(stored_settings) if stored_settings.get(key) != settings.get(key))
        raise InvalidInputError(f"{path} is the checkpoint of another training ({', '.join(differs)} differ); delete it to "
                                "train from the start.")
    if len(history) > n_steps:
        raise InvalidInputError(f"{path} is a checkpoint at step {len(history)} of a training longer than the {n_steps} steps "
                                f"asked for; give at least {len(history)} steps (--train-steps), or delete it.")
    if rng_state.get("bit_generator") != type(rng.bit_generator).__name__:  # the generator is ours; its state is data
        raise InvalidInputError(f"{path} stores a {rng_state.get('bit_generator')!r} generator state, not this training's.")
    try:
        pair_potential.load_state_dict(stored["state_dict"])
        optimizer.load_state_dict(stored["optimizer"])
        rng.bit_generator.state = rng_state
    except Exception as error:  # noqa: BLE001 - a foreign file with the right settings still gets one line
        raise InvalidInputError(f"{path} does not fit this training ({type(error).__name__}: {error}); delete it to train "
                                "from the start.") from None
    return history


def amortized_delta_f(leg, samples, pair_potential, n_points=256, seed=1, platform=None):
    """The papers' estimator, **approximate**: ΔF ≈ -mean over t ~ U(0, 1) and pairs of ∂_t u_θ(x_t, t).

    Returns ``(delta_f, standard_error)`` in kT, ``delta_f = f(decoupled) - f(coupled)``. The standard
    error is statistical only; the estimator is biased unless the interpolant's marginals are the
    Boltzmann distributions of U_θ, which nothing enforces. Use :func:`~.neural_ti.exact_path_leg` for the result.
    ∂_t u_θ is :func:`path_time_derivatives` (``platform`` is not used).
    """
    rng = np.random.default_rng(seed)
    x1, _ = _pair(samples, rng, *_solvent_molecules(leg))
    index = rng.integers(0, len(samples.x0), n_points)
    t = rng.uniform(0.0, 1.0, n_points)
    xt = _interpolate(samples.x0[index], x1[index], t, samples.box)
    du = path_time_derivatives(leg, pair_potential, xt, t, samples.box)  # f(1) - f(0) = E[∂_t u]
    return float(-du.mean()), float(du.std(ddof=1) / math.sqrt(n_points))


def path_time_derivatives(leg, pair_potential, positions, t, box):
    """∂_t u_θ(x, t) in kT at configurations ``positions`` (n, atoms, 3) nm and times ``t`` (n,) in a fixed ``box``.

    The physical part is a central finite difference (one-sided at the ends) of the energy of the forces that
    depend on λ, in double precision on the Reference platform (a difference of energies 1e-4 apart in λ; on a
    single-precision platform the whole box's energy would drown it); the learned part is exact (autograd).
    """
    from ._dudl import _derivative_context

    context = _derivative_context(_constant_volume(leg.alchemical_system), ("lambda_sterics", "lambda_electrostatics"))
    if leg.alchemical_system.usesPeriodicBoundaryConditions():  # the configurations' box, as the learned term's
        context.setPeriodicBoxVectors(*(openmm.Vec3(*(float(box) * row)) for row in np.eye(3)))
    beta = 1.0 / leg.molecular_system.kT
    boundary = path_boundary(leg)
    t = np.asarray(t, dtype=np.float64)
    du_phys = np.array([_physical_time_derivative(context, positions[k], float(t[k]), beta, boundary=boundary)
                        for k in range(len(t))])
    t_torch = torch.tensor(t, requires_grad=True)
    classes = pair_classes(leg.molecular_system.system, leg.solute_atoms)
    energy = beta * pair_potential.learned_energy(torch.as_tensor(np.asarray(positions)), t_torch, None, box, classes)
    (du_nn,) = torch.autograd.grad(energy.sum(), t_torch)
    return du_phys + du_nn.detach().numpy()


def _charges(leg):
    from .alchemical import _solute_charges

    return _solute_charges(leg.molecular_system.system, leg.solute_atoms)


def _cutoff(leg):
    for force in leg.molecular_system.system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            return force.getCutoffDistance().value_in_unit(unit.nanometer)
    raise InvalidInputError("the system has no NonbondedForce.")
