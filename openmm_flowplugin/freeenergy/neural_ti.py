"""Neural thermodynamic integration for a solute in a Lennard-Jones solvent (Máté, Fleuret, Bereau).

A time-dependent potential with exact end states,

    U_θ(x, t) = U_phys(x; λ_sterics = t) + t (1 - t) Σ_j φ_θ(r_j, t),

with r_j the distance of solvent particle j to the solute, t = 0 the decoupled solute, t = 1 the coupled one (openmmtools' soft-core alchemical path in between),
is trained by target score matching on endpoint samples only (OpenMM MD at t = 0 and t = 1): along the
interpolant x_t = x_0 + t (x_1 - x_0) between paired samples, ∇U_θ(x_t, t) regresses onto
∇U_0(x_0) / (1 - t) for t < 1/2 and onto ∇U_1(x_1) / t above (reduced units; arXiv 2406.02313 and
2410.15815, whose JAX code we read; ours is torch and OpenMM). Estimators of
ΔF = f(decoupled) - f(coupled):

- :func:`amortized_delta_f` — the papers' estimator, ΔF ≈ -E_t,pairs[∂_t u_θ(x_t, t)]: **approximate**,
  exact only if the interpolant's marginals are the Boltzmann distributions of U_θ;
- :func:`exact_path_leg` — U_θ(·, t) becomes an OpenMM force (the pair term as a tabulated
  ``CustomNonbondedForce`` with a global ``neural_ti_t``), sampled by replica exchange at t nodes and
  estimated by MBAR (:func:`~openmm_flowplugin.freeenergy.mbar_route.analyze_leg`): consistent for any θ,
  since both end states are exact, given overlap between the nodes (reported). The result;
- :func:`path_ti` — thermodynamic integration over the same samples, ΔF = -∫₀¹ ⟨∂_t u_θ⟩_t dt by the
  trapezoid rule over the nodes, with its statistical and quadrature errors: a second estimate beside MBAR.

The pair term φ_θ is a small MLP of radial basis functions of the solute-solvent distance and of t,
multiplied by a smooth cutoff; it is permutation and translation invariant, like the system. The model
lives in ``_neural_ti_model.py``, sampling and training in ``_neural_ti_training.py``; everything public is
imported from here.
"""

__all__ = ["PairPotential", "NeuralTIState", "EndpointSamples", "sample_endpoints", "train_neural_ti",
           "amortized_delta_f", "learned_force", "exact_path_leg", "path_ti", "neural_ti_free_energy"]

import json

import numpy as np
import openmm
import torch

from .._quiet import quiet_banners
from ..errors import InvalidInputError, NoOverlapError
from ._neural_ti_model import _TABLE_R, _TABLE_T, T_PARAMETER, PairPotential, learned_force  # noqa: F401 - re-exported
from ._neural_ti_training import (EndpointSamples, _charges, _context, _cutoff, _interpolate, _pair,  # noqa: F401
                                  _physical_reduced, _set_lambda, amortized_delta_f, sample_endpoints, train_neural_ti)

with quiet_banners():
    from openmmtools.states import GlobalParameterState


class NeuralTIState(GlobalParameterState):
    """openmmtools composable state of the neural-TI time ``neural_ti_t`` (1: coupled)."""

    neural_ti_t = GlobalParameterState.GlobalParameter(T_PARAMETER, standard_value=1.0)


def parse_nodes(text):
    """``"11"`` -> 11 equally spaced nodes; ``"1,0.5,0.2,0"`` -> those values of t; ``"schedule"`` -> the MBAR route's λ_sterics.

    Examples
    --------
    >>> parse_nodes("5"), parse_nodes("1, 0.3, 0")
    (5, [1.0, 0.3, 0.0])
    >>> len(parse_nodes("schedule"))
    15
    """
    from .alchemical import DEFAULT_STERICS

    text = str(text).strip()
    if text == "schedule":
        return [float(v) for v in DEFAULT_STERICS]
    try:
        if "," not in text:
            return int(text)
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidInputError(f"nodes: give a count (11), values of t from 1 to 0 (1,0.5,0.2,0) or 'schedule', got {text!r}.") from None
    if len(values) < 2 or values[0] != 1.0 or values[-1] != 0.0 or any(b >= a for a, b in zip(values, values[1:])):
        raise InvalidInputError(f"nodes must decrease from t = 1 to t = 0 (e.g. 1,0.5,0.2,0), got {text!r}.")
    return values


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




def path_ti(path, storage, n_equilibration=0):
    """Thermodynamic integration along the learned path, from the exact path's stored samples.

    ``ΔF = f(decoupled) - f(coupled) = -∫₀¹ ⟨∂_t u_θ⟩_t dt``. At each node, ∂_t u_θ of the sampled
    potential (the physical part and the learned table together: ``lambda_sterics`` and ``neural_ti_t``
    moved by the same step) is a finite difference of reduced potentials at each stored checkpoint
    configuration after the equilibration; its mean has the standard error ``std · sqrt(g / n)`` with
    pymbar's statistical inefficiency g (``_dudl.derivative_profiles``). The integral is the
    trapezoid rule over the nodes with the errors propagated, and the quadrature error is estimated as
    the absolute difference between the trapezoid and Simpson's rule on the same nodes
    (``_dudl.trapezoid_ti``).

    .. warning:: MBAR over the nodes (:func:`~.mbar_route.analyze_leg`) remains the result: it uses every
       stored iteration's energies, where TI uses only the checkpointed configurations (one in
       ``checkpoint_interval`` iterations), and TI adds a quadrature error that MBAR does not have. The
       two agreeing within their errors is a check of the run.

    Parameters
    ----------
    path : AlchemicalLeg
        From :func:`exact_path_leg`, the leg ``storage`` was run with.
    storage : str or Path
    n_equilibration : int
        Iterations to skip after the minimized start (e.g. the MBAR analysis' ``n_equilibration``).

    Returns
    -------
    dict
        ``delta_f_kT`` (trapezoid), ``statistical_error_kT``, ``quadrature_error_kT``, ``simpson_delta_f_kT``,
        ``quadrature_error_method`` and ``profile`` (``_dudl.DerivativeProfile`` as a dict: nodes t,
        ⟨∂_t u_θ⟩ in kT with its standard error, samples and statistical inefficiency per node).
    """
    from ._dudl import derivative_profiles, trapezoid_ti

    (profile,) = derivative_profiles(path, storage, n_equilibration)
    return {**trapezoid_ti(profile.lambdas, profile.mean, profile.error), "profile": profile.to_dict()}


def neural_ti_free_energy(solvation_system, output_dir, n_samples=200, n_train_steps=500, nodes=11, n_iterations=300,
                          md_steps=200, timestep=None, equilibration_iterations=20, schedule=None, platform=None,
                          progress=None, checkpoint_interval=10):
    """Neural TI of an uncharged (LJ) solute: endpoint MD, training, the estimators; resumable in ``output_dir``.

    Endpoint samples (``neural_ti_samples.npz``) and the trained φ (``neural_ti_model.pt``) are kept and
    reused by a later call; the exact path's storage (``neural_ti_path.nc``) resumes like any leg. The
    results go to ``neural_ti.json`` and ``neural_ti.md``, and ``dudl.png`` is redrawn with ⟨∂_t u_θ⟩ at
    the nodes beside the MBAR route's ⟨∂u/∂λ⟩ if that ran in the same folder.

    Parameters
    ----------
    checkpoint_interval : int
        Iterations between the stored configurations of the exact path: the samples of :func:`path_ti`
        (``n_iterations`` must be a multiple of it). The others as
        :func:`~openmm_flowplugin.freeenergy.solvation.solvation_free_energy`.

    Returns
    -------
    dict
        ``delta_f_kT``/``error_kT`` (exact path, MBAR over the nodes: the result), ``ti`` (thermodynamic
        integration over the same samples, :func:`path_ti`: ``delta_f_kT``, ``statistical_error_kT``,
        ``quadrature_error_kT``, the profile), ``amortized_delta_f_kT``/``amortized_error_kT``
        (approximate), the path's :class:`~.mbar_route.LegEstimate` as a dict, the training loss history
        and the costs (energy/force evaluations, CPU seconds of this process).
    """
    import time
    from pathlib import Path

    from ._dudl import write_dudl_plot
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
            checkpoint_interval=checkpoint_interval, equilibration_iterations=equilibration_iterations, platform=platform,
            progress=progress)
    try:
        estimate = analyze_leg(output_dir / "neural_ti_path.nc")
    except NoOverlapError as error:
        raise NoOverlapError(f"neural TI's exact path over {path.schedule.n_states} nodes of t: {error} For neural TI: more nodes (--nodes) or a "
                             "path closer to the physical one (more --train-steps); delete neural_ti_path.nc (and "
                             "neural_ti_model.pt to retrain) in the output folder and run again, the endpoint samples are "
                             "reused.") from error
    ti = path_ti(path, output_dir / "neural_ti_path.nc", estimate.n_equilibration)
    n_nodes = path.schedule.n_states
    n_checkpoints = sum(ti["profile"]["n_samples"])
    result = {
        "delta_f_kT": estimate.delta_f, "error_kT": estimate.error,
        "ti": dict(ti, note="thermodynamic integration over the exact path's checkpointed samples (trapezoid over the "
                            "nodes); a second estimate beside MBAR (delta_f_kT), which is the result"),
        "amortized_delta_f_kT": amortized, "amortized_error_kT": amortized_error,
        "amortized_note": "approximate: exact only if the interpolant's marginals are the Boltzmann distributions of U_theta",
        "path": estimate.to_dict(), "nodes": list(path.schedule.sterics), "training_loss": history,
        "costs": {"endpoint_md_steps": 2 * (2000 + len(samples.x0) * 100),
                  "training_evaluations": len(history) * 8, "amortized_evaluations": 256 * 3,
                  "path_energy_evaluations": n_iterations * n_nodes * (md_steps + n_nodes),
                  "ti_energy_evaluations": 2 * n_checkpoints, "cpu_seconds": time.process_time() - start},
    }
    (output_dir / "neural_ti.json").write_text(json.dumps(result, indent=2))
    (output_dir / "neural_ti.md").write_text(_markdown(result))
    write_dudl_plot(output_dir)
    return result


def _number(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def _markdown(result):
    """The estimates of :func:`neural_ti_free_energy`'s ``result`` as a markdown table (what ``neural_ti.md`` holds)."""
    ti, path = result["ti"], result["path"]
    rows = [("exact path, MBAR over the nodes (**the result**)", result["delta_f_kT"], result["error_kT"], None,
             f"min. neighbour overlap {path['min_neighbour_overlap']:.3f}"),
            ("exact path, TI: trapezoid of ⟨∂u/∂t⟩ over the nodes", ti["delta_f_kT"], ti["statistical_error_kT"],
             ti["quadrature_error_kT"], f"same samples (checkpoints); Simpson: {_number(ti['simpson_delta_f_kT'])} kT"),
            ("amortized (approximate)", result["amortized_delta_f_kT"], result["amortized_error_kT"], None,
             "biased unless the interpolant's marginals are U_θ's Boltzmann distributions")]
    lines = [f"# Neural TI ({len(result['nodes'])} nodes of t)", "",
             "| estimator | ΔF (decouple), kT | ± statistical | ± quadrature | ΔG_solv = −ΔF, kT | note |",
             "|---|---:|---:|---:|---:|---|"]
    for name, delta_f, error, quadrature, note in rows:
        lines.append(f"| {name} | {_number(delta_f)} | {_number(error)} | {_number(quadrature)} | "
                     f"{_number(None if delta_f is None else -delta_f)} | {note} |")
    profile = ti["profile"]
    lines += ["", "⟨∂u/∂t⟩ at the nodes (kT): " + ", ".join(
        f"t = {t:g}: {_number(m)} ± {_number(e)}" for t, m, e in zip(profile["lambdas"], profile["mean"], profile["error"]))]
    return "\n".join(lines) + "\n"
