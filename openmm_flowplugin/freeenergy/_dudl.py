"""⟨∂u/∂λ⟩ along an alchemical leg from its stored configurations, thermodynamic integration over it, the plot.

u = βU is the reduced potential (kT). At each stored configuration the derivative is a finite difference
in λ (step ``h``; central, or second-order one-sided at λ = 0 and 1) of the energy of only those forces
that depend on the moved parameters, in double precision on the Reference platform: openmmtools'
alchemical forces declare no parameter derivatives (OpenMM would report 0), and single precision would
drown a difference of 1e-4. The configurations are those of the storage's checkpoints (every
``checkpoint_interval`` iterations, one per state and checkpoint) after the equilibration that
:func:`~.mbar_route.analyze_leg` discards. Cost: two or three evaluations of those forces per state and
checkpoint (solute-solvent pairs for the sterics; the whole ``NonbondedForce`` with PME for the
electrostatics, the expensive case).
"""

__all__ = ["DerivativeProfile", "derivative_profiles", "trapezoid_ti", "write_dudl_plot"]

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openmm
from openmm import unit

from .._quiet import quiet_banners
from ._neural_ti_model import T_PARAMETER

QUADRATURE_METHOD = "abs(trapezoid - Simpson) on the same nodes (scipy.integrate.simpson)"


@dataclass
class DerivativeProfile:
    """⟨∂u/∂λ⟩ in kT at the states of one stage of a leg, λ increasing.

    Attributes
    ----------
    parameter : str
        The λ moved: ``"lambda_sterics"`` (on an uncharged solute's neural-TI path ``neural_ti_t`` moves with
        it: both are t) or ``"lambda_electrostatics"``; ``"neural_ti_t"`` on a charged solute's neural-TI
        path (one profile per stage, x = t, the physical λ moved at their rates dλ/dt).
    states : list of int
        The leg's states on this stage (index into its schedule).
    lambdas : list of float
        λ of each of them (the x-axis of ``dudl.png``).
    mean, error : list of float
        ⟨∂u/∂λ⟩ and its standard error, ``std · sqrt(g / n)`` (kT; ``None`` with fewer than 2 samples).
    n_samples : list of int
        Stored configurations used per state (checkpoints after the equilibration).
    statistical_inefficiency : list of float
        g of each state's series (pymbar's ``statistical_inefficiency``, in checkpoints).
    stage : str
        ``"electrostatics"`` (the charges are switched) or ``"sterics"``; on a charged solute's neural-TI
        path ``"sterics"`` for t ≤ 0.8 and ``"electrostatics"`` for t ≥ 0.8.
    """

    parameter: str
    states: list
    lambdas: list
    mean: list
    error: list
    n_samples: list
    statistical_inefficiency: list
    stage: str

    def to_dict(self):
        """Plain data (JSON: ``None`` for undefined values)."""
        return {key: [_finite_or_none(v) for v in value] if isinstance(value, list) else value
                for key, value in asdict(self).items()}


def profile_stage(profile):
    """The stage (``"electrostatics"`` or ``"sterics"``) of a profile dict, also one written before profiles
    recorded it (then: a neural-TI profile reaching t = 0 is the sterics stage)."""
    if profile.get("stage"):
        return profile["stage"]
    if profile["parameter"] == "lambda_electrostatics" or (profile["parameter"] == T_PARAMETER and min(profile["lambdas"]) > 0.0):
        return "electrostatics"
    return "sterics"


def _finite_or_none(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def _global_parameters(force):
    count = getattr(force, "getNumGlobalParameters", lambda: 0)()
    return {force.getGlobalParameterName(j) for j in range(count)}


def _stages(leg):
    """(stage, parameter, {moved parameter: rate}, state indices, x parameter) for each stage of ``leg`` that moves something.

    The derivative is taken along the x parameter, every moved parameter changing at its rate per unit of it.
    """
    from .alchemical import _solute_charges

    schedule = leg.schedule
    boundary = leg.record.get("t_boundary")
    if boundary is not None:  # a charged solute's neural-TI path: the sterics below the boundary, the charges above
        t = [float(state.neural_ti_t) for state in leg.thermodynamic_states]
        return [("sterics", T_PARAMETER, {"lambda_sterics": 1.0 / boundary, T_PARAMETER: 1.0},
                 [k for k, v in enumerate(t) if v <= boundary], T_PARAMETER),
                ("electrostatics", T_PARAMETER, {"lambda_electrostatics": 1.0 / (1.0 - boundary), T_PARAMETER: 1.0},
                 [k for k, v in enumerate(t) if v >= boundary], T_PARAMETER)]
    present = set().union(*(_global_parameters(f) for f in leg.alchemical_system.getForces()))
    charged = bool(np.any(_solute_charges(leg.molecular_system.system, leg.solute_atoms) != 0.0))
    stages = []
    if charged and "lambda_electrostatics" in present:
        stages.append(("electrostatics", "lambda_electrostatics", {"lambda_electrostatics": 1.0},
                       [k for k, s in enumerate(schedule.sterics) if s == 1.0], "lambda_electrostatics"))
    sterics = [k for k, e in enumerate(schedule.electrostatics) if e == 0.0]
    if not charged and schedule.sterics[sterics[0]] < 1.0:
        sterics.insert(0, 0)  # no charges: the coupled state is λ_sterics = 1 whatever its λ_electrostatics
    stages.append(("sterics", "lambda_sterics", {p: 1.0 for p in ("lambda_sterics", T_PARAMETER) if p in present}, sterics,
                   "lambda_sterics"))
    return stages


def _derivative_context(system, parameters):
    """A Reference context of only the forces of ``system`` that depend on ``parameters`` (same particles and box)."""
    reduced = openmm.System()
    for i in range(system.getNumParticles()):
        reduced.addParticle(system.getParticleMass(i))
    reduced.setDefaultPeriodicBoxVectors(*system.getDefaultPeriodicBoxVectors())
    for force in system.getForces():
        if _global_parameters(force) & set(parameters):
            reduced.addForce(openmm.XmlSerializer.clone(force))
    return openmm.Context(reduced, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))


def _energy(context, values, rates, delta):
    for name, value in values.items():
        context.setParameter(name, value + rates.get(name, 0.0) * delta)
    return context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _derivative(context, values, rates, h):
    """dU/dx (kJ/mol) moving each parameter by ``rate * dx``; one-sided where a step would leave [0, 1]
    (forward at x = 0 or where a stage starts, backward at its end)."""
    if any(values[name] - rate * h < 0.0 for name, rate in rates.items()):
        e0, e1, e2 = (_energy(context, values, rates, d) for d in (0.0, h, 2 * h))
        return (-3 * e0 + 4 * e1 - e2) / (2 * h)
    if any(values[name] + rate * h > 1.0 for name, rate in rates.items()):
        e0, e1, e2 = (_energy(context, values, rates, d) for d in (0.0, -h, -2 * h))
        return (3 * e0 - 4 * e1 + e2) / (2 * h)
    return (_energy(context, values, rates, h) - _energy(context, values, rates, -h)) / (2 * h)


def _state_values(state, names):
    values = {}
    for name in names:
        value = getattr(state, name, None)
        if value is not None:
            values[name] = float(value)
    return values


def _mean_and_error(series):
    with quiet_banners():
        from pymbar import timeseries

    series = np.asarray(series, dtype=np.float64)
    n = len(series)
    if n < 2:
        return (float(series[0]) if n else math.nan), math.nan, n, math.nan
    g = 1.0 if np.ptp(series) == 0.0 else max(1.0, float(timeseries.statistical_inefficiency(series)))
    return float(series.mean()), float(series.std(ddof=1) * math.sqrt(g / n)), n, g


def derivative_profiles(leg, storage, n_equilibration=0, h=1e-4, progress=False, label="⟨∂u/∂λ⟩"):
    """⟨∂u/∂λ⟩ at the states of ``leg`` from the configurations stored in ``storage`` (see the module docstring).

    Parameters
    ----------
    leg : AlchemicalLeg
        The leg the storage was run with (its System gives the forces, its states the λ values).
    storage : str or Path
        The leg's openmmtools storage (``.nc``).
    n_equilibration : int
        Iterations after the minimized start to skip (:attr:`~.mbar_route.LegEstimate.n_equilibration`).
    h : float
        Finite-difference step in λ.
    progress : bool or None
        A tqdm bar with ETA over the stored checkpoints (``None``: when stderr is a terminal).
    label : str
        The bar's description.

    Returns
    -------
    list of DerivativeProfile
        One per stage: the electrostatics (charged solutes: the states with λ_sterics = 1) first, then the
        sterics (the states with λ_electrostatics = 0, and the coupled state for an uncharged solute). On a
        charged solute's neural-TI path: the sterics stage (t ≤ 0.8) first, then the charges (t ≥ 0.8).
    """
    from tqdm import tqdm

    with quiet_banners():
        from openmmtools.multistate import MultiStateReporter

    stages = _stages(leg)
    context = _derivative_context(leg.alchemical_system, {p for _, _, rates, _, _ in stages for p in rates})
    names = list(context.getParameters().keys())
    values = [_state_values(state, names) for state in leg.thermodynamic_states]
    beta = 1.0 / leg.molecular_system.kT
    series = [{k: [] for k in states} for _, _, _, states, _ in stages]
    with quiet_banners():
        reporter = MultiStateReporter(str(storage), open_mode="r")
    try:
        last = reporter.read_last_iteration(last_checkpoint=True)
        interval = reporter.checkpoint_interval
        replica_states = np.asarray(reporter.read_replica_thermodynamic_states())
        first = interval * math.ceil((1 + n_equilibration) / interval)
        checkpoints = range(first, last + 1, interval)
        for iteration in tqdm(checkpoints, desc=label, unit="checkpoint", file=sys.stderr,
                              disable=None if progress is None else not progress):
            sampler_states = reporter.read_sampler_states(iteration)
            for replica, sampler_state in enumerate(sampler_states or []):
                k = int(replica_states[iteration, replica])
                if sampler_state.box_vectors is not None and leg.pressure is not None:
                    # at constant volume the System's box is exact; the stored one is float32 and can round a
                    # box of exactly twice the cutoff below it (mbar_route._restore_fixed_box)
                    context.setPeriodicBoxVectors(*sampler_state.box_vectors)
                context.setPositions(sampler_state.positions)
                for (_, _, rates, _, _), per_state in zip(stages, series):
                    if k in per_state:
                        per_state[k].append(beta * _derivative(context, values[k], rates, h))
    finally:
        reporter.close()
    profiles = []
    for (stage, parameter, _, states, x), per_state in zip(stages, series):
        order = sorted(states, key=lambda k: values[k][x])
        mean, error, n_samples, inefficiency = map(list, zip(*(_mean_and_error(per_state[k]) for k in order)))
        profiles.append(DerivativeProfile(parameter, order, [values[k][x] for k in order], mean, error, n_samples, inefficiency,
                                          stage=stage))
    return profiles


def trapezoid_ti(lambdas, mean, error):
    """Thermodynamic integration ``ΔF = f(λ = 0) - f(λ = 1) = -∫ ⟨∂u/∂λ⟩ dλ`` over the given nodes (kT).

    The trapezoid rule over the nodes; its statistical error propagates the per-node standard errors as
    independent, ``sqrt(Σ w_k² σ_k²)`` with the trapezoid weights ``w_k`` (the replicas visit every node,
    so the node means are nearly but not exactly independent). The quadrature error is estimated as
    ``abs(trapezoid - Simpson)`` on the same nodes (``scipy.integrate.simpson``, which handles unequal
    spacing and an even number of intervals); for equally spaced nodes with an even number of intervals it
    is the Richardson estimate ``(T_h - T_2h) / 3`` of the trapezoid's error. It includes the noise of the
    means, and needs at least 3 nodes (``None`` otherwise).

    Parameters
    ----------
    lambdas : sequence of float
        Nodes, any order; the integral runs from the smallest to the largest (0 to 1 for a whole leg).
    mean, error : sequence of float
        ⟨∂u/∂λ⟩ and its standard error at each node (kT).

    Returns
    -------
    dict
        ``delta_f_kT`` (trapezoid), ``statistical_error_kT``, ``quadrature_error_kT``, ``simpson_delta_f_kT``,
        ``quadrature_error_method``; ``None`` values where a node has no mean (or no error).

    Examples
    --------
    >>> ti = trapezoid_ti([0.0, 0.5, 1.0], [0.0, 0.25, 1.0], [0.1, 0.1, 0.1])  # ⟨∂u/∂λ⟩ = λ², ∫ = 1/3
    >>> round(ti["delta_f_kT"], 4), round(ti["simpson_delta_f_kT"], 4), round(ti["quadrature_error_kT"], 4)
    (-0.375, -0.3333, 0.0417)
    """
    from scipy.integrate import simpson

    order = np.argsort(np.asarray(lambdas, dtype=np.float64), kind="stable")
    x = np.asarray(lambdas, dtype=np.float64)[order]
    y = np.array([math.nan if v is None else v for v in np.asarray(mean, dtype=object)[order]], dtype=np.float64)
    e = np.array([math.nan if v is None else v for v in np.asarray(error, dtype=object)[order]], dtype=np.float64)
    dx = np.diff(x)
    weights = np.concatenate(([0.0], dx / 2)) + np.concatenate((dx / 2, [0.0]))
    integral = float(weights @ y)
    statistical = float(math.sqrt(float((weights**2) @ (e**2))))
    simpson_value = float(simpson(y, x=x)) if len(x) >= 3 else math.nan
    return {"delta_f_kT": _finite_or_none(-integral), "statistical_error_kT": _finite_or_none(statistical),
            "quadrature_error_kT": _finite_or_none(abs(integral - simpson_value)),
            "simpson_delta_f_kT": _finite_or_none(-simpson_value), "quadrature_error_method": QUADRATURE_METHOD}


_AXIS = {"lambda_sterics": r"$\lambda_\mathrm{sterics}$ (neural TI: $t$)", "lambda_electrostatics": r"$\lambda_\mathrm{electrostatics}$",
         T_PARAMETER: r"$t$ (learned path: sterics up to the boundary, then the charges)"}


def _curves(output_dir):
    """(label, profile dict) for every route whose results are in ``output_dir``."""
    curves = []
    results, neural = output_dir / "results.json", output_dir / "neural_ti.json"
    if results.is_file():
        for leg, profiles in (json.loads(results.read_text()).get("dudl") or {}).items():
            curves += [(f"{leg} leg, alchemical MBAR route", profile) for profile in profiles]
    if neural.is_file():
        ti = json.loads(neural.read_text()).get("ti") or {}
        profiles = ti.get("profiles") or ([ti["profile"]] if ti.get("profile") else [])
        for profile in profiles:
            stage = "" if len(profiles) == 1 else f", {profile_stage(profile)} stage"
            curves.append((f"learned path (neural TI), dU/dt{stage}", profile))
    return curves


def write_dudl_plot(output_dir, name="dudl.png"):
    """Plot ⟨∂u/∂λ⟩ vs λ of every route stored in ``output_dir`` into ``output_dir/name``.

    The MBAR route's profiles come from ``results.json`` (``"dudl"``), neural TI's ⟨∂u/∂t⟩ at its nodes
    from ``neural_ti.json`` (``"ti"``): one panel per λ, error bars one standard error. Like ``overlap.png``
    the file belongs to the run's output folder and is rewritten by every run (atomically: a temporary file,
    then a rename). Nothing is written if no route has a profile.

    Returns
    -------
    dict or None
        ``{label: (x, y, yerr)}`` as read back from the figure's artists (for tests), or ``None``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    curves = [(label, p) for label, p in _curves(output_dir) if any(v is not None for v in p["mean"])]
    if not curves:
        return None
    parameters = [p for p in _AXIS if any(profile["parameter"] == p for _, profile in curves)]
    figure, axes = plt.subplots(1, len(parameters), figsize=(5.5 * len(parameters), 4), squeeze=False)
    drawn = {}
    for axis, parameter in zip(axes[0], parameters):
        for label, profile in curves:
            if profile["parameter"] != parameter:
                continue
            nan = lambda values: np.array([math.nan if v is None else v for v in values], dtype=np.float64)  # noqa: E731
            container = axis.errorbar(profile["lambdas"], nan(profile["mean"]), yerr=nan(profile["error"]), marker="o",
                                      capsize=3, label=label)
            line = container.lines[0]
            segments = container.lines[2][0].get_segments() if container.lines[2] else []
            yerr = [float((s[1][1] - s[0][1]) / 2) for s in segments if len(s) == 2]  # no bar where the error is undefined
            drawn[f"{label} ({parameter})"] = (list(map(float, line.get_xdata())), list(map(float, line.get_ydata())), yerr)
        axis.axhline(0.0, color="0.7", lw=0.8)
        axis.set_xlabel(_AXIS[parameter])
        axis.set_ylabel(r"$\langle \partial u / \partial\lambda \rangle$ (kT)")
        axis.set_title("learned path (neural TI)" if parameter == T_PARAMETER else parameter.replace("lambda_", "") + " stage")
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = output_dir / name
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    os.replace(temporary, path)
    return drawn
