"""Neural thermodynamic integration of a solute in a solvent (Máté, Fleuret, Bereau).

A time-dependent potential with exact end states,

    U_θ(x, t) = U_phys(x; λ(t)) + t (1 - t) Σ_ij φ_θ(r_ij, t, class_ij),

with r_ij the distance of solute atom i to solvent atom j (one learned function per class of pair,
:class:`PairClasses`), t = 0 the decoupled solute, t = 1 the coupled one, and openmmtools' alchemical
path in between: λ_sterics = λ_electrostatics = t for an uncharged (Lennard-Jones) solute; for a solute
with charges the sterics over [0, 0.8] with the charges off, then the charges over [0.8, 1]
(:func:`path_lambdas`; a node always sits at 0.8),
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

__all__ = ["PairPotential", "PairClasses", "pair_classes", "path_lambdas", "NeuralTIState", "EndpointSamples", "sample_endpoints",
           "train_neural_ti", "amortized_delta_f", "learned_force", "exact_path_leg", "path_ti", "neural_ti_free_energy", "derived_seeds"]

import contextlib
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import unit

from .._quiet import quiet_banners
from ..errors import InvalidInputError, NoOverlapError
from ._dudl import profile_stage
from ._neural_ti_model import (_TABLE_R, _TABLE_T, T_PARAMETER, PairClasses, PairPotential, learned_force,  # noqa: F401
                               pair_classes)
from ._neural_ti_training import (ELECTROSTATICS_FROM, EndpointSamples, _charges, _context, _cutoff, _interpolate,  # noqa: F401
                                  _pair, _set_lambda, amortized_delta_f, path_boundary, path_lambdas, path_time_derivatives,
                                  read_training_checkpoint, sample_endpoints, train_neural_ti)
from .solvation import _plot_overlaps, recorded_system_settings

with quiet_banners():
    from openmmtools.states import GlobalParameterState

#: The files of a neural-TI run in its output folder.
_SAMPLES_FILE, _MODEL_FILE, _PATH_FILE = "neural_ti_samples.npz", "neural_ti_model.pt", "neural_ti_path.nc"
_TRAINING_FILE = "neural_ti_training.pt"  # the training's checkpoint (every 100 steps) until the model is written


class NeuralTIState(GlobalParameterState):
    """openmmtools composable state of the neural-TI time ``neural_ti_t`` (1: coupled)."""

    neural_ti_t = GlobalParameterState.GlobalParameter(T_PARAMETER, standard_value=1.0)


def parse_nodes(text):
    """``"11"`` -> 11 equally spaced nodes; ``"1,0.5,0.2,0"`` -> those values of t; ``"schedule"`` -> the
    MBAR route's states mapped onto t (:func:`exact_path_leg`).

    Examples
    --------
    >>> parse_nodes("5"), parse_nodes("1, 0.3, 0"), parse_nodes("schedule")
    (5, [1.0, 0.3, 0.0], 'schedule')
    """
    text = str(text).strip()
    if text == "schedule":
        return text
    try:
        if "," not in text:
            return int(text)
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidInputError(f"nodes: give a count (11), values of t from 1 to 0 (1,0.5,0.2,0) or 'schedule', got {text!r}.") from None
    if len(values) < 2 or values[0] != 1.0 or values[-1] != 0.0 or any(b >= a for a, b in zip(values, values[1:])):
        raise InvalidInputError(f"nodes must decrease from t = 1 to t = 0 (e.g. 1,0.5,0.2,0), got {text!r}.")
    return values


def _node_values(leg, nodes, boundary):
    """The values of t (1 first) for ``nodes``: a count, a list, or ``"schedule"``; with the stage boundary added."""
    if isinstance(nodes, str):
        if nodes != "schedule":
            raise InvalidInputError(f"nodes: give a count, values of t from 1 to 0, or 'schedule', got {nodes!r}.")
        nodes = [s if boundary is None else (boundary * s if s < 1.0 else boundary + (1.0 - boundary) * e)
                 for e, s in zip(leg.schedule.electrostatics, leg.schedule.sterics)]
    elif isinstance(nodes, (int, np.integer)):
        if nodes < 2:
            raise InvalidInputError(f"nodes must be at least 2, got {nodes}.")
        nodes = np.linspace(1.0, 0.0, nodes)
    nodes = [float(v) for v in nodes]
    if boundary is not None:  # ∂u/∂t jumps there: TI integrates each stage separately, both ending on this node
        nodes = [boundary if abs(t - boundary) < 1e-9 else t for t in nodes]  # linspace's 0.7999999999999999 is 0.8
        if boundary not in nodes:
            nodes = sorted(nodes + [boundary], reverse=True)
    return nodes


def exact_path_leg(leg, pair_potential, nodes=11):
    """An alchemical leg whose states are U_θ(·, t) at ``nodes`` values of t (1 first): run it with
    :func:`~.mbar_route.run_leg` and estimate with :func:`~.mbar_route.analyze_leg` (MBAR over the nodes).

    The System is ``leg``'s alchemical System plus :func:`learned_force`; each state sets ``neural_ti_t = t``
    and the physical λ of :func:`path_lambdas` (for a solute with charges, a node is added at the stage
    boundary 0.8 if missing). ``nodes``: a count (equally spaced), values of t from 1 to 0, or ``"schedule"``
    (``leg``'s own λ states mapped onto t). The storage record includes φ's fingerprint, so a run with
    other weights is never resumed into it.
    """
    with quiet_banners():
        from openmmtools import alchemy, states

    from .alchemical import AlchemicalLeg, LambdaSchedule

    boundary = path_boundary(leg)
    if boundary is None and leg.schedule.electrostatics[1] != 0.0:
        raise InvalidInputError("an uncharged solute's leg turns the sterics on from its second state: build it with "
                                "default_schedule(charged=False).")
    nodes = _node_values(leg, nodes, boundary)
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(leg.alchemical_system))
    classes = pair_classes(leg.molecular_system.system, leg.solute_atoms) if pair_potential.n_classes > 1 else None
    nonbonded = next(f for f in leg.molecular_system.system.getForces() if isinstance(f, openmm.NonbondedForce))
    exclusions = [nonbonded.getExceptionParameters(k)[:2] for k in range(nonbonded.getNumExceptions())]
    system.addForce(learned_force(pair_potential, system.getNumParticles(), leg.solute_atoms, classes, exclusions))
    if boundary is None:
        lambdas = [(1.0 if t == 1.0 else 0.0, t) for t in nodes]
    else:
        lambdas = [path_lambdas(t, boundary) for t in nodes]
    schedule = LambdaSchedule(electrostatics=[e for e, _ in lambdas], sterics=[s for _, s in lambdas])
    thermodynamic = states.ThermodynamicState(system, temperature=leg.molecular_system.temperature, pressure=leg.pressure)
    compound = []
    for t, (electrostatics, sterics) in zip(nodes, lambdas):
        alchemical_state = alchemy.AlchemicalState.from_system(system)
        alchemical_state.lambda_sterics = sterics
        if alchemical_state.lambda_electrostatics is not None:
            alchemical_state.lambda_electrostatics = electrostatics
        compound.append(states.CompoundThermodynamicState(thermodynamic, [alchemical_state, NeuralTIState(neural_ti_t=t)]))
    record = {"neural_ti": pair_potential.fingerprint()}
    if boundary is not None:
        record["t_boundary"] = boundary
    return AlchemicalLeg(f"{leg.name}-neural-ti", leg.molecular_system, system, leg.solute_atoms, schedule, compound, leg.pressure,
                         record=record)




def path_ti(path, storage, n_equilibration=0, progress=False):
    """Thermodynamic integration along the learned path, from the exact path's stored samples.

    ``ΔF = f(decoupled) - f(coupled) = -∫₀¹ ⟨∂_t u_θ⟩_t dt``. At each node, ∂_t u_θ of the sampled
    potential (the physical part and the learned table together: the physical λ moved at their rates
    dλ/dt with ``neural_ti_t``) is a finite difference of reduced potentials at each stored checkpoint
    configuration after the equilibration; its mean has the standard error ``std · sqrt(g / n)`` with
    pymbar's statistical inefficiency g (``_dudl.derivative_profiles``). The integral is the
    trapezoid rule over the nodes with the errors propagated, and the quadrature error is estimated as
    the absolute difference between the trapezoid and Simpson's rule on the same nodes
    (``_dudl.trapezoid_ti``). For a solute with charges ∂_t u_θ jumps at the stage boundary (t = 0.8):
    each stage is integrated on its own, with the one-sided derivative at the boundary node, and the
    parts are added (errors in quadrature, quadrature errors summed; the two one-sided derivatives at the
    boundary come from the same configurations, so the stages' errors are not quite independent).

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
    progress : bool or None
        A bar with ETA over the stored checkpoints (``None``: when stderr is a terminal).

    Returns
    -------
    dict
        ``delta_f_kT`` (trapezoid), ``statistical_error_kT``, ``quadrature_error_kT``, ``simpson_delta_f_kT``,
        ``quadrature_error_method`` and ``profiles`` (one ``_dudl.DerivativeProfile`` as a dict per stage: nodes
        t, ⟨∂_t u_θ⟩ in kT with its standard error, samples and statistical inefficiency per node); with one
        stage (uncharged solute) also ``profile``, that stage's.
    """
    from ._dudl import derivative_profiles, trapezoid_ti

    profiles = derivative_profiles(path, storage, n_equilibration, progress=progress, label="neural TI: ⟨∂u/∂t⟩ at the nodes")
    parts = [trapezoid_ti(p.lambdas, p.mean, p.error) for p in profiles]

    def total(key, combine=sum):
        values = [part[key] for part in parts]
        return None if any(v is None for v in values) else float(combine(values))

    result = {"delta_f_kT": total("delta_f_kT"),
              "statistical_error_kT": total("statistical_error_kT", lambda v: math.sqrt(sum(x * x for x in v))),
              "quadrature_error_kT": total("quadrature_error_kT"), "simpson_delta_f_kT": total("simpson_delta_f_kT"),
              "quadrature_error_method": parts[0]["quadrature_error_method"], "profiles": [p.to_dict() for p in profiles]}
    if len(profiles) == 1:
        result["profile"] = result["profiles"][0]
    return result


def neural_ti_free_energy(solvation_system, output_dir, n_samples=200, n_train_steps=500, nodes=11, n_iterations=300,
                          md_steps=200, timestep=None, equilibration_iterations=20, schedule=None, platform=None,
                          progress=None, checkpoint_interval=10, seed=None):
    """Neural TI of a solute's solvent leg: endpoint MD, training, the estimators; resumable in ``output_dir``.

    Endpoint samples (``neural_ti_samples.npz``) and the trained φ (``neural_ti_model.pt``) are kept (written
    atomically) and reused by a later call with the same ``n_samples`` and ``n_train_steps`` (other counts are
    refused: delete the file to redo it); an interrupted training continues from its checkpoint (``neural_ti_training.pt``,
    every 100 steps); the exact path's storage (``neural_ti_path.nc``) resumes like any leg. A
    molecule's vacuum leg (intramolecular terms only: no learned term) runs by the alchemical MBAR route
    into ``vacuum.nc``, the same storage :func:`~.solvation.solvation_free_energy` uses, so a run of both
    routes in one folder computes it once. The results go to ``neural_ti.json`` and ``neural_ti.md``, and
    ``dudl.png`` is redrawn with ⟨∂_t u_θ⟩ at the nodes beside the MBAR route's ⟨∂u/∂λ⟩ if that ran in
    the same folder.

    Parameters
    ----------
    checkpoint_interval : int
        Iterations between the stored configurations of the exact path: the samples of :func:`path_ti`
        (``n_iterations`` must be a multiple of it). The others as
        :func:`~openmm_flowplugin.freeenergy.solvation.solvation_free_energy` (``seed``: the root seed, recorded as
        ``seed`` in the result, with ``None`` the one stored with the path's run or a fresh one; the MD of the path
        and the vacuum leg, the endpoint MD, the training and the amortized estimate draw from seeds derived from
        it, :func:`derived_seeds`; stored samples and a stored φ keep the seeds they were made with, reported
        in the result's ``seeds``).

    Returns
    -------
    dict
        ``delta_g_kT``/``delta_g_error_kT`` (and in kcal/mol: the solvation free energy from the exact path
        and the vacuum leg), ``delta_f_kT``/``error_kT`` (the solvent leg's exact path, MBAR over the nodes:
        the result), ``vacuum`` (the vacuum leg's estimate as a dict, or ``None``), ``ti`` (thermodynamic
        integration over the same samples, :func:`path_ti`: ``delta_f_kT``, ``statistical_error_kT``,
        ``quadrature_error_kT``, the profile), ``amortized_delta_f_kT``/``amortized_error_kT``
        (approximate), the path's :class:`~.mbar_route.LegEstimate` as a dict, the training loss history
        and the costs (energy/force evaluations, CPU seconds of this process).
    """
    import time
    from pathlib import Path

    from ._dudl import write_dudl_plot
    from .alchemical import alchemical_leg
    from .mbar_route import analyze_leg, kT_in, on_root_rank, resolved_root_seed, run_leg

    output_dir = Path(output_dir)
    if seed is None and not (output_dir / "neural_ti_path.nc").exists():
        seed = _stored_root_seed(output_dir)  # the root that made the stored samples or φ (None if there are none)
    seed = resolved_root_seed(seed, output_dir / "neural_ti_path.nc")  # the path's and the vacuum leg's root, recorded
    output_dir.mkdir(parents=True, exist_ok=True)
    leg = alchemical_leg(solvation_system.solvent, solvation_system.solute_atoms, schedule=schedule, pressure=solvation_system.pressure)
    start = time.process_time()
    record = _training_record(solvation_system)
    seeds = derived_seeds(seed)
    shown = on_root_rank(progress)  # the bars of this function's own passes; run_leg gates its own
    reused = [what for what, name in (("endpoint samples", _SAMPLES_FILE), ("trained φ", _MODEL_FILE)) if (output_dir / name).exists()]
    samples, seeds["endpoints"] = _stored_or_new_samples(output_dir / "neural_ti_samples.npz", record, leg, n_samples, platform,
                                                         seeds["endpoints"], root_seed=seed, progress=shown)
    phi, history, seeds["training"] = _stored_or_new_model(output_dir / "neural_ti_model.pt", record, leg, samples, n_train_steps,
                                                           platform, shown, seeds["training"], root_seed=seed)
    amortized, amortized_error = amortized_delta_f(leg, samples, phi, seed=seeds["amortized"], platform=platform)
    path = exact_path_leg(leg, phi, nodes=nodes)
    if timestep is None:
        timestep = 1000.0 * solvation_system.settings.get("timestep_ps", 0.002)
    run_leg(path, output_dir / "neural_ti_path.nc", n_iterations, md_steps=md_steps, timestep=timestep,
            checkpoint_interval=checkpoint_interval, equilibration_iterations=equilibration_iterations, platform=platform,
            progress=progress, seed=seed)
    try:
        estimate = analyze_leg(output_dir / "neural_ti_path.nc")
    except NoOverlapError as error:
        raise NoOverlapError(f"neural TI's exact path over {path.schedule.n_states} nodes of t: {error} For neural TI: "
                             f"{_more_nodes_hint(path, error.weakest_pair, nodes != 'schedule')} or another training (--train-steps: more for LJ "
                             "solutes, fewer for molecules in water, see docs/solvation.md); delete neural_ti_path.nc (and "
                             "neural_ti_model.pt to retrain) in the output folder and run again, the endpoint samples are "
                             "reused.", weakest_pair=error.weakest_pair) from error
    ti = path_ti(path, output_dir / "neural_ti_path.nc", estimate.n_equilibration, progress=shown)
    vacuum = None
    if solvation_system.vacuum is not None:
        vacuum_leg = alchemical_leg(solvation_system.vacuum, list(range(solvation_system.n_solute_atoms)), schedule=leg.schedule,
                                    name="vacuum")
        run_leg(vacuum_leg, output_dir / "vacuum.nc", n_iterations, md_steps=md_steps, timestep=timestep,
                checkpoint_interval=checkpoint_interval, equilibration_iterations=equilibration_iterations, platform=platform,
                progress=progress, seed=seed)
        vacuum = analyze_leg(output_dir / "vacuum.nc")
    vacuum_delta_f, vacuum_error = (vacuum.delta_f, vacuum.error) if vacuum is not None else (0.0, 0.0)
    kcal = kT_in(solvation_system.temperature.value_in_unit(unit.kelvin))
    n_nodes = path.schedule.n_states
    n_checkpoints = sum(sum(p["n_samples"]) for p in ti["profiles"])
    result = {
        "delta_g_kT": vacuum_delta_f - estimate.delta_f, "delta_g_error_kT": math.hypot(estimate.error, vacuum_error),
        "delta_g_kcal_mol": (vacuum_delta_f - estimate.delta_f) * kcal,
        "delta_g_error_kcal_mol": math.hypot(estimate.error, vacuum_error) * kcal,
        "delta_f_kT": estimate.delta_f, "error_kT": estimate.error,
        "vacuum": None if vacuum is None else dict(vacuum.to_dict(), route="alchemical MBAR (no learned term in vacuum)"),
        "ti": dict(ti, note="thermodynamic integration over the exact path's checkpointed samples (trapezoid over the "
                            "nodes); a second estimate beside MBAR (delta_f_kT), which is the result"),
        "amortized_delta_f_kT": amortized, "amortized_error_kT": amortized_error,
        "amortized_note": "approximate: exact only if the interpolant's marginals are the Boltzmann distributions of U_theta",
        "path": estimate.to_dict(), "nodes": [float(state.neural_ti_t) for state in path.thermodynamic_states],
        "t_boundary": path.record.get("t_boundary"), "training_loss": history, "seed": seed, "seeds": seeds,
        "settings": dict(recorded_system_settings(solvation_system), n_samples=len(samples.x0), n_train_steps=len(history), n_iterations=n_iterations,
                         md_steps=md_steps, timestep_fs=timestep, equilibration_iterations=equilibration_iterations,
                         checkpoint_interval=checkpoint_interval, schedule=path.schedule.to_dict()),
        "costs": {"endpoint_md_steps": 2 * (2000 + len(samples.x0) * 100),
                  "training_evaluations": len(history) * 8, "amortized_evaluations": 256 * 2,  # two λ-dependent-force energies per point
                  "path_energy_evaluations": estimate.n_iterations * n_nodes * (md_steps + n_nodes),
                  "ti_energy_evaluations": 2 * n_checkpoints,
                  "vacuum_energy_evaluations": 0 if vacuum is None else vacuum.n_iterations * vacuum_leg.schedule.n_states * (
                      md_steps + vacuum_leg.schedule.n_states),
                  "cpu_seconds": time.process_time() - start,
                  "reused_from_the_folder": reused,
                  "note": "the counts are of the whole route; what reused_from_the_folder names was made by an earlier "
                          "process and is not in this process's cpu_seconds"},
    }
    (output_dir / "neural_ti.json").write_text(json.dumps(result, indent=2, default=str))
    (output_dir / "neural_ti.md").write_text(_markdown(result))
    _plot_overlaps({"neural-TI path": estimate, **({} if vacuum is None else {"vacuum": vacuum})}, output_dir / "neural_ti_overlap.png")
    write_dudl_plot(output_dir)
    return result


def _training_record(solvation_system):
    """Plain data naming what the endpoint samples and φ were made for (stored with them, compared on reuse)."""
    return json.dumps({"system": solvation_system.solvent.fingerprint, "solute_atoms": list(solvation_system.solute_atoms),
                       "temperature_K": solvation_system.temperature.value_in_unit(unit.kelvin),
                       "settings": solvation_system.settings}, sort_keys=True, default=str)


def _refuse_other(path, stored_record, record):
    if stored_record is not None and str(stored_record) != record:
        raise InvalidInputError(f"{path} was made for another system or settings; use another output folder or delete "
                                f"{path.name} (the model, its training checkpoint {_TRAINING_FILE} and the path's storage "
                                "depend on it too).")


#: The neural-TI workflow's own stream of the root seed (the path's and the vacuum leg's MD use the legs' streams).
_NEURAL_TI_STREAM = zlib.crc32(b"neural_ti")
_SEED_PURPOSES = ("endpoints", "training", "amortized")


def derived_seeds(root_seed):
    """The seeds of :func:`neural_ti_free_energy`'s endpoint MD, training and amortized estimate, from ``root_seed``.

    Each is drawn from ``SeedSequence(root_seed, spawn_key=(crc32("neural_ti"), purpose))`` (purpose 0, 1, 2), below
    ``2**31 - 3`` (OpenMM's integer seeds: :func:`sample_endpoints` uses the seed + 1 and + 2).

    Parameters
    ----------
    root_seed : int
        Non-negative.

    Returns
    -------
    dict
        ``{"endpoints": int, "training": int, "amortized": int}``.

    Examples
    --------
    >>> seeds = derived_seeds(7)
    >>> sorted(seeds), seeds == derived_seeds(7), seeds == derived_seeds(8)
    (['amortized', 'endpoints', 'training'], True, False)
    """
    from ..proposals.streams import checked_root_seed, numpy_generator

    if root_seed is None:
        raise InvalidInputError("derived_seeds needs a root seed (a non-negative integer), got None.")
    root_seed = checked_root_seed(root_seed)
    return {name: int(numpy_generator(root_seed, _NEURAL_TI_STREAM, purpose).integers(1, 2**31 - 3))
            for purpose, name in enumerate(_SEED_PURPOSES)}


def check_stored_counts(output_dir, n_samples, n_train_steps):
    """Refuse, before any work, stored endpoint samples or φ in ``output_dir`` made for another ``n_samples`` or
    ``n_train_steps`` (what :func:`neural_ti_free_energy` would refuse later; the command line calls it before the MBAR
    route of ``--method both``). Unreadable files are left to the loaders' own one-line errors."""
    counts = {}
    with contextlib.suppress(Exception):
        with np.load(Path(output_dir) / _SAMPLES_FILE) as data:
            counts["samples"] = len(data["x0"])
    with contextlib.suppress(Exception):
        counts["steps"] = len(torch.load(Path(output_dir) / _MODEL_FILE, weights_only=True)["history"])
    if counts.get("samples", n_samples) != n_samples:
        raise InvalidInputError(f"{Path(output_dir) / _SAMPLES_FILE} holds {counts['samples']} samples per end state, not {n_samples}: "
                                f"give --samples {counts['samples']} (n_samples=) to reuse them, or delete the file (and "
                                f"{_MODEL_FILE}, trained on them) to draw new ones.")
    if counts.get("steps", n_train_steps) != n_train_steps:
        raise InvalidInputError(f"{Path(output_dir) / _MODEL_FILE} was trained for {counts['steps']} steps, not {n_train_steps}: give "
                                f"--train-steps {counts['steps']} (n_train_steps=) to reuse it, or delete it (and {_PATH_FILE}, "
                                "run with it) to train anew.")
    training = Path(output_dir) / _TRAINING_FILE
    if "steps" not in counts and training.exists():
        _, history, _ = read_training_checkpoint(training)
        if len(history) > n_train_steps:
            raise InvalidInputError(f"{training} is a checkpoint at step {len(history)} of a training longer than the "
                                    f"{n_train_steps} steps asked for; give at least {len(history)} steps (--train-steps), or "
                                    "delete it.")


def _stored_root_seed(output_dir):
    """The root seed stored with ``output_dir``'s endpoint samples or φ, or ``None``."""
    samples, model = output_dir / _SAMPLES_FILE, output_dir / _MODEL_FILE
    try:
        if samples.exists():
            with np.load(samples) as data:
                if "root_seed" in data.files:
                    return int(data["root_seed"])
        if model.exists():
            return torch.load(model, weights_only=True).get("root_seed")
    except Exception:  # noqa: BLE001 - an unreadable file: its loader says so in one line
        return None
    return None


def _stored_or_new_samples(path, record, leg, n_samples, platform, seed=0, root_seed=None, progress=False):
    """Endpoint samples stored at ``path`` (refused if made for another ``record``) or new ones drawn with ``seed`` (stored
    with ``root_seed``, the root it derives from); returns them and the seed they were made with (``None`` for files
    written before seeds were stored)."""
    if path.exists():
        try:
            data = np.load(path)
            stored_record = data["record"][()] if "record" in data.files else None
            samples = EndpointSamples(data["x0"], data["f0"], data["x1"], data["f1"], float(data["box"]), data["solute"])
            stored_seed = int(data["seed"]) if "seed" in data.files else None
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file gets one line
            raise InvalidInputError(f"{path} is not readable endpoint samples ({type(error).__name__}: {error}); delete it to "
                                    "draw new ones.") from None
        _refuse_other(path, stored_record, record)
        if samples.x0.shape[1] != leg.molecular_system.n_atoms or samples.solute != list(leg.solute_atoms):
            _refuse_other(path, "another", record)
        if len(samples.x0) != n_samples:
            raise InvalidInputError(f"{path} holds {len(samples.x0)} samples per end state, not {n_samples}: give --samples "
                                    f"{len(samples.x0)} (n_samples=) to reuse them, or delete the file (and {_MODEL_FILE}, trained "
                                    "on them) to draw new ones.")
        return samples, stored_seed
    samples = sample_endpoints(leg, n_samples, seed=seed, platform=platform, progress=bool(progress))
    path.with_name(_TRAINING_FILE).unlink(missing_ok=True)  # a training checkpoint of earlier samples
    with _atomic(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, x0=samples.x0, f0=samples.f0, x1=samples.x1, f1=samples.f1, box=samples.box, solute=samples.solute,
                 record=np.array(record), seed=np.array(seed), **({} if root_seed is None else {"root_seed": np.array(root_seed)}))
    return samples, seed


@contextlib.contextmanager
def _atomic(path):
    """A temporary name beside ``path``, moved onto it when the block ends without an error (an interrupted write
    never leaves a truncated file under the name a resume reads)."""
    temporary = path.with_name(path.name + ".partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _stored_or_new_model(path, record, leg, samples, n_train_steps, platform, progress, seed=0, root_seed=None):
    """φ stored at ``path`` (refused if made for another ``record``) or trained anew with ``seed`` (stored with
    ``root_seed``); returns φ, its loss history and the seed it was trained with (``None`` for files written before
    seeds were stored)."""
    if path.exists():
        try:
            stored = torch.load(path, weights_only=True)
            stored_record, history = stored.get("record"), list(stored["history"])
            phi = PairPotential(**dict(stored["config"]))
            phi.load_state_dict(stored["state_dict"])
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file gets one line
            raise InvalidInputError(f"{path} is not a readable neural-TI model ({type(error).__name__}: {error}); delete it to "
                                    "train anew.") from None
        _refuse_other(path, stored_record, record)
        if phi.n_classes != pair_classes(leg.molecular_system.system, leg.solute_atoms).n_classes:
            _refuse_other(path, "another", record)
        if len(history) != n_train_steps:
            raise InvalidInputError(f"{path} was trained for {len(history)} steps, not {n_train_steps}: give --train-steps "
                                    f"{len(history)} (n_train_steps=) to reuse it, or delete it (and {_PATH_FILE}, run with it) "
                                    "to train anew.")
        return phi, history, stored.get("seed")
    training = path.with_name(_TRAINING_FILE)  # checkpoints within the training; gone once the model is stored
    phi, history = train_neural_ti(leg, samples, n_steps=n_train_steps, seed=seed, platform=platform, progress=progress,
                                   checkpoint=training)
    with _atomic(path) as temporary:
        torch.save({"config": phi.config, "state_dict": phi.state_dict(), "history": history, "record": record, "seed": seed,
                    "root_seed": root_seed}, temporary)
    training.unlink(missing_ok=True)
    training.with_name(training.name + ".partial").unlink(missing_ok=True)  # left by a kill during a checkpoint's write
    return phi, history, seed


def _more_nodes_hint(path, weakest_pair, offer_schedule=True):
    """What to pass to ``--nodes`` when the path's nodes ``weakest_pair`` (indices, t decreasing) overlap too little:
    the same nodes plus the midpoint of that pair; for the electrostatics stage also ``schedule`` (if
    ``offer_schedule``: not when the nodes are the schedule already)."""
    if weakest_pair is None:
        return "more nodes (--nodes)"
    t = [float(state.neural_ti_t) for state in path.thermodynamic_states]
    high, low = t[weakest_pair[0]], t[weakest_pair[1]]
    nodes = ",".join(f"{v:.6g}" for v in sorted(set(t) | {round((high + low) / 2, 6)}, reverse=True))
    hint = f"the weakest pair is t = {high:g} and {low:g}: add a node between them (--nodes {nodes})"
    boundary = path.record.get("t_boundary")
    if offer_schedule and boundary is not None and low >= boundary:
        hint += (", or --nodes schedule (the MBAR route's λ values: the electrostatics stage, t ≥ "
                 f"{boundary:g}, in steps of 0.25 of λ_electrostatics)")
    return hint


def _number(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def _markdown(result):
    """The estimates of :func:`neural_ti_free_energy`'s ``result`` as a markdown table (what ``neural_ti.md`` holds)."""
    ti, path = result["ti"], result["path"]
    vacuum = result.get("vacuum")
    shift, shift_error = (vacuum["delta_f_kT"], vacuum["error_kT"]) if vacuum else (0.0, 0.0)
    rows = [("exact path, MBAR over the nodes (**the result**)", result["delta_f_kT"], result["error_kT"], None,
             f"min. neighbour overlap {path['min_neighbour_overlap']:.3f}"),
            ("exact path, TI: trapezoid of ⟨∂u/∂t⟩ over the nodes", ti["delta_f_kT"], ti["statistical_error_kT"],
             ti["quadrature_error_kT"], f"same samples (checkpoints); Simpson: {_number(ti['simpson_delta_f_kT'])} kT"),
            ("amortized (approximate)", result["amortized_delta_f_kT"], result["amortized_error_kT"], None,
             "biased unless the interpolant's marginals are U_θ's Boltzmann distributions")]
    solvation = "ΔG_solv = ΔF(vacuum) − ΔF, kT" if vacuum else "ΔG_solv = −ΔF, kT"
    lines = [f"# Neural TI ({len(result['nodes'])} nodes of t)", "",
             f"| estimator | ΔF (decouple), kT | ± statistical | ± quadrature | {solvation} | note |",
             "|---|---:|---:|---:|---:|---|"]
    for name, delta_f, error, quadrature, note in rows:
        lines.append(f"| {name} | {_number(delta_f)} | {_number(error)} | {_number(quadrature)} | "
                     f"{_number(None if delta_f is None else shift - delta_f)} | {note} |")
    if vacuum:
        lines += ["", f"Vacuum leg (alchemical MBAR, vacuum.nc): ΔF = {shift:.3f} ± {shift_error:.3f} kT. "
                  f"ΔG_solv (exact path) = {result['delta_g_kT']:.3f} ± {result['delta_g_error_kT']:.3f} kT = "
                  f"{result['delta_g_kcal_mol']:.3f} ± {result['delta_g_error_kcal_mol']:.3f} kcal/mol "
                  f"(± {shift_error:.3f} kT of it from the vacuum leg)."]
    for profile in ti["profiles"]:
        stage = "" if len(ti["profiles"]) == 1 else (" (sterics, t ≤ boundary)" if profile_stage(profile) == "sterics"
                                                     else " (electrostatics, t ≥ boundary)")
        lines += ["", f"⟨∂u/∂t⟩ at the nodes{stage} (kT): " + ", ".join(
            f"t = {t:g}: {_number(m)} ± {_number(e)}" for t, m, e in zip(profile["lambdas"], profile["mean"], profile["error"]))]
    nodes, overlap = result["nodes"], path["overlap"]
    lines += ["", "MBAR overlap of neighbouring nodes (neural_ti_overlap.png): " + ", ".join(
        f"t = {nodes[k]:g} → {nodes[k + 1]:g}: {overlap[k][k + 1]:.3f}" for k in range(len(nodes) - 1))]
    costs = result["costs"]
    lines += ["", f"Costs: {costs['path_energy_evaluations']:,} energy evaluations on the path, CPU {costs['cpu_seconds']:.0f} s "
              "in this process (results.json of the MBAR route holds its own)."]
    return "\n".join(lines) + "\n"
