"""Neural thermodynamic integration for a solute in a Lennard-Jones solvent (Máté, Fleuret, Bereau).

A time-dependent potential with exact end states,

    U_θ(x, t) = U_phys(x; λ_sterics = t) + t (1 - t) Σ_j φ_θ(r_j, t),

with r_j the distance of solvent particle j to the solute, t = 0 the decoupled solute, t = 1 the coupled one (openmmtools' soft-core alchemical path in between),
is trained by target score matching on endpoint samples only (OpenMM MD at t = 0 and t = 1): along the
interpolant x_t = x_0 + t (x_1 - x_0) between paired samples, ∇U_θ(x_t, t) regresses onto
∇U_0(x_0) / (1 - t) for t < 1/2 and onto ∇U_1(x_1) / t above (reduced units; arXiv 2406.02313 and
2410.15815, whose JAX code we read; ours is torch and OpenMM). Two estimators of
ΔF = f(decoupled) - f(coupled):

- :func:`amortized_delta_f` — the papers' estimator, ΔF ≈ -E_t,pairs[∂_t u_θ(x_t, t)]: **approximate**,
  exact only if the interpolant's marginals are the Boltzmann distributions of U_θ;
- :func:`exact_path_leg` — U_θ(·, t) becomes an OpenMM force (the pair term as a tabulated
  ``CustomNonbondedForce`` with a global ``neural_ti_t``), sampled by replica exchange at t nodes and
  estimated by MBAR (:func:`~openmm_flowplugin.freeenergy.mbar_route.analyze_leg`): consistent for any θ,
  since both end states are exact, given overlap between the nodes (reported).

The pair term φ_θ is a small MLP of radial basis functions of the solute-solvent distance and of t,
multiplied by a smooth cutoff; it is permutation and translation invariant, like the system.
"""

__all__ = ["PairPotential", "NeuralTIState", "EndpointSamples", "sample_endpoints", "train_neural_ti",
           "amortized_delta_f", "learned_force", "exact_path_leg", "neural_ti_free_energy"]

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import openmm
import torch
from openmm import unit
from torch import nn

from .._quiet import quiet_banners
from ..errors import InvalidInputError

with quiet_banners():
    from openmmtools.states import GlobalParameterState

T_PARAMETER = "neural_ti_t"
_TABLE_R, _TABLE_T = 200, 41  # grid of the OpenMM table of φ: r in [0, cutoff], t in [0, 1]


class NeuralTIState(GlobalParameterState):
    """openmmtools composable state of the neural-TI time ``neural_ti_t`` (1: coupled)."""

    neural_ti_t = GlobalParameterState.GlobalParameter(T_PARAMETER, standard_value=1.0)


class PairPotential(nn.Module):
    """φ_θ(r, t) in kJ/mol: an MLP of Gaussian radial basis functions of r and of t, times a smooth cutoff.

    Parameters
    ----------
    cutoff : float
        nm; φ and its r-derivative vanish at and beyond it.
    n_basis : int
    hidden : tuple of int

    Examples
    --------
    >>> phi = PairPotential(cutoff=0.8)
    >>> phi(torch.tensor([0.3, 0.8]), torch.tensor(0.5)).shape
    torch.Size([2])
    """

    def __init__(self, cutoff, n_basis=16, hidden=(32, 32)):
        super().__init__()
        if not cutoff > 0:
            raise InvalidInputError(f"cutoff must be > 0 nm, got {cutoff}.")
        self.cutoff = float(cutoff)
        self.register_buffer("centres", torch.linspace(0.0, self.cutoff, n_basis, dtype=torch.float64))
        self.width = self.cutoff / n_basis
        layers, n_in = [], n_basis + 1
        for width in hidden:
            layers += [nn.Linear(n_in, width, dtype=torch.float64), nn.SiLU()]
            n_in = width
        layers.append(nn.Linear(n_in, 1, dtype=torch.float64))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)  # start at φ = 0: U_θ = U_phys
        nn.init.zeros_(self.net[-1].bias)
        self.config = {"cutoff": self.cutoff, "n_basis": int(n_basis), "hidden": [int(h) for h in hidden]}

    def forward(self, r, t):
        r = r.to(torch.float64)
        basis = torch.exp(-(((r[..., None] - self.centres) / self.width) ** 2))
        t_column = torch.broadcast_to(torch.as_tensor(t, dtype=torch.float64), r.shape)[..., None]
        value = self.net(torch.cat((basis, t_column), dim=-1))[..., 0]
        switch = torch.where(r < self.cutoff, 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0), torch.zeros_like(r))
        return value * switch

    def learned_energy(self, x, t, solute, box):
        """``t (1 - t) Σ_j φ(r_j, t)`` in kJ/mol (r_j: solute-solvent distances, minimum image) for ``x`` (batch, n, 3) nm, cubic ``box`` (nm)."""
        d = x - x[:, solute : solute + 1]
        d = d - box * torch.round(d / box)
        mask = torch.ones(x.shape[1], dtype=torch.bool)
        mask[solute] = False
        r = torch.sqrt((d[:, mask] ** 2).sum(-1))
        t = torch.as_tensor(t, dtype=torch.float64)
        per_configuration = t[:, None] if t.ndim == 1 else t  # one t per configuration, or one for all
        return t * (1 - t) * self(r, per_configuration).sum(-1)

    def fingerprint(self):
        """sha256 of the configuration and weights (recorded with the exact-path storage)."""
        digest = hashlib.sha256(repr(self.config).encode())
        for tensor in self.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()


def learned_force(pair_potential, n_particles, solute):
    """The learned term as an OpenMM ``CustomNonbondedForce``: ``t (1 - t) φ(r, t)`` over solute-solvent pairs.

    φ is tabulated on a (r, t) grid as a ``Continuous2DFunction`` (bicubic): OpenMM's U_θ between the end
    states is this interpolation of the torch φ, and exactly U_phys at t = 0 and t = 1 (the prefactor).
    """
    rc = pair_potential.cutoff
    r = torch.linspace(0.0, rc, _TABLE_R, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, _TABLE_T, dtype=torch.float64)
    with torch.no_grad():
        table = torch.stack([pair_potential(r, tk) for tk in t], dim=1)  # (r, t)
    values = table.T.reshape(-1).tolist()  # OpenMM order: x (r) fastest
    force = openmm.CustomNonbondedForce(f"{T_PARAMETER}*(1-{T_PARAMETER})*neural_ti_phi(r, {T_PARAMETER})")
    force.addTabulatedFunction("neural_ti_phi", openmm.Continuous2DFunction(_TABLE_R, _TABLE_T, values, 0.0, rc, 0.0, 1.0))
    force.addGlobalParameter(T_PARAMETER, 1.0)
    force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(rc)
    for _ in range(n_particles):
        force.addParticle([])
    force.addInteractionGroup([solute], [i for i in range(n_particles) if i != solute])
    force.setName("NeuralTILearnedTerm")
    return force


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
    Boltzmann distributions of U_θ, which nothing enforces. Use :func:`exact_path_leg` for the result.
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


def exact_path_leg(leg, pair_potential, nodes=11):
    """An alchemical leg whose states are U_θ(·, t) at ``nodes`` values of t (1 first): run it with
    :func:`~.mbar_route.run_leg` and estimate with :func:`~.mbar_route.analyze_leg` (MBAR over the nodes).

    The System is ``leg``'s alchemical System plus :func:`learned_force`; each state sets
    ``lambda_sterics = t`` and ``neural_ti_t = t``. The storage record includes φ's fingerprint, so a
    run with other weights is never resumed into it.
    """
    with quiet_banners():
        from openmmtools import alchemy, states

    from .alchemical import AlchemicalLeg, LambdaSchedule

    if leg.schedule.electrostatics[1] != 0.0 or any(_charges(leg)):
        raise InvalidInputError("neural TI here handles uncharged (Lennard-Jones) solutes only: the path turns the sterics on.")
    if isinstance(nodes, int):
        if nodes < 2:
            raise InvalidInputError(f"nodes must be at least 2, got {nodes}.")
        nodes = np.linspace(1.0, 0.0, nodes)
    nodes = [float(v) for v in nodes]
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(leg.alchemical_system))
    system.addForce(learned_force(pair_potential, system.getNumParticles(), leg.solute_atoms[0]))
    schedule = LambdaSchedule(electrostatics=[1.0] + [0.0] * (len(nodes) - 1), sterics=nodes)
    thermodynamic = states.ThermodynamicState(system, temperature=leg.molecular_system.temperature, pressure=leg.pressure)
    compound = []
    for t in nodes:
        alchemical_state = alchemy.AlchemicalState.from_system(system)
        alchemical_state.lambda_sterics = t
        if alchemical_state.lambda_electrostatics is not None:
            alchemical_state.lambda_electrostatics = 1.0 if t == 1.0 else 0.0
        compound.append(states.CompoundThermodynamicState(thermodynamic, [alchemical_state, NeuralTIState(neural_ti_t=t)]))
    return AlchemicalLeg(f"{leg.name}-neural-ti", leg.molecular_system, system, leg.solute_atoms, schedule, compound, leg.pressure,
                         record={"neural_ti": pair_potential.fingerprint()})


def _charges(leg):
    from .alchemical import _solute_charges

    return _solute_charges(leg.molecular_system.system, leg.solute_atoms)


def _cutoff(leg):
    for force in leg.molecular_system.system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            return force.getCutoffDistance().value_in_unit(unit.nanometer)
    raise InvalidInputError("the system has no NonbondedForce.")


def neural_ti_free_energy(solvation_system, output_dir, n_samples=200, n_train_steps=500, nodes=11, n_iterations=300,
                          md_steps=200, timestep=None, equilibration_iterations=20, schedule=None, platform=None, progress=None):
    """Neural TI of an uncharged (LJ) solute: endpoint MD, training, both estimators; resumable in ``output_dir``.

    Endpoint samples (``neural_ti_samples.npz``) and the trained φ (``neural_ti_model.pt``) are kept and
    reused by a later call; the exact path's storage (``neural_ti_path.nc``) resumes like any leg.

    Returns
    -------
    dict
        ``delta_f_kT``/``error_kT`` (exact path, MBAR over the nodes: the result), ``amortized_delta_f_kT``/
        ``amortized_error_kT`` (approximate), the path's :class:`~.mbar_route.LegEstimate` as a dict, the
        training loss history and the costs (energy/force evaluations, CPU seconds of this process).
    """
    import time
    from pathlib import Path

    from .alchemical import alchemical_leg
    from .mbar_route import analyze_leg, run_leg

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    leg = alchemical_leg(solvation_system.solvent, solvation_system.solute_atoms, schedule=schedule)
    if any(_charges(leg)):
        raise InvalidInputError("neural TI here handles uncharged (Lennard-Jones) solutes only; use --method mbar.")
    start = time.process_time()
    samples_file, model_file = output_dir / "neural_ti_samples.npz", output_dir / "neural_ti_model.pt"
    if samples_file.exists():
        data = np.load(samples_file)
        samples = EndpointSamples(data["x0"], data["f0"], data["x1"], data["f1"], float(data["box"]), int(data["solute"]))
    else:
        samples = sample_endpoints(leg, n_samples, platform=platform)
        np.savez(samples_file, x0=samples.x0, f0=samples.f0, x1=samples.x1, f1=samples.f1, box=samples.box, solute=samples.solute)
    history = []
    if model_file.exists():
        stored = torch.load(model_file, weights_only=True)
        phi = PairPotential(**{k: v for k, v in stored["config"].items()})
        phi.load_state_dict(stored["state_dict"])
        history = list(stored["history"])
    else:
        phi, history = train_neural_ti(leg, samples, n_steps=n_train_steps, platform=platform, progress=progress)
        torch.save({"config": phi.config, "state_dict": phi.state_dict(), "history": history}, model_file)
    amortized, amortized_error = amortized_delta_f(leg, samples, phi, platform=platform)
    path = exact_path_leg(leg, phi, nodes=nodes)
    if timestep is None:
        timestep = 1000.0 * solvation_system.settings.get("timestep_ps", 0.002)
    run_leg(path, output_dir / "neural_ti_path.nc", n_iterations, md_steps=md_steps, timestep=timestep,
            equilibration_iterations=equilibration_iterations, platform=platform, progress=progress)
    estimate = analyze_leg(output_dir / "neural_ti_path.nc")
    n_nodes = path.schedule.n_states
    return {
        "delta_f_kT": estimate.delta_f, "error_kT": estimate.error,
        "amortized_delta_f_kT": amortized, "amortized_error_kT": amortized_error,
        "amortized_note": "approximate: exact only if the interpolant's marginals are the Boltzmann distributions of U_theta",
        "path": estimate.to_dict(), "nodes": list(path.schedule.sterics), "training_loss": history,
        "costs": {"endpoint_md_steps": 2 * (2000 + len(samples.x0) * 100),
                  "training_evaluations": len(history) * 8, "amortized_evaluations": 256 * 3,
                  "path_energy_evaluations": n_iterations * n_nodes * (md_steps + n_nodes),
                  "cpu_seconds": time.process_time() - start},
    }
