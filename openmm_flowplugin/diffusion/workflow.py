"""The ``diffuse`` workflow: train a CV-biased diffusion sampler, sample, reweight, write the results.

:func:`diffusion_free_energy_surface` is what ``openmm-flowplugin diffuse`` runs. Its output folder holds
``checkpoint.pt`` (training resumes from it), ``results.json`` / ``results.md`` (ESS, basin ΔF with
bootstrap errors, energy evaluations, CPU time), ``fes.png`` (the reweighted FES — the main result —
beside the well-tempered estimate −γ/(γ−1)V, labelled approximate), ``fes.npz`` (the reweighted F per
bin with its bootstrap error), ``samples.npz`` (CV values, exact
log weights, bias), ``training_end_points.npz`` (CV values and exact log weights of the second half of
training's chain end points, pooled into the estimate with ``pool_training``) and ``bias.xml`` (the frozen bias as a serialized OpenMM ``CustomCVForce``: add it
to the System to continue with MD or FlowMCMove on the same biased target).

Examples
--------
>>> parse_cv("phi:4,6,8,14")
('phi', Torsion(4, 6, 8, 14))
>>> parse_cv("x:x@0")
('x', CartesianComponent(atom=0, axis='x'))
"""

__all__ = ["parse_cv", "parse_basin", "diffusion_free_energy_surface"]

import json
import math
import time
from pathlib import Path

import numpy as np
import openmm

from ..errors import InvalidInputError
from ..geometry import Angle, CartesianComponent, Distance, Torsion
from ._checks import finite_positive, is_integer

_UNITS = {Torsion: "rad", Angle: "rad", Distance: "nm", CartesianComponent: "nm"}
# (sigma_max, sigma_min) per coordinate space. Standardized internal coordinates: the target is close to
# N(0, 1) in bonds and angles, and a reference whose terminal variance σ_max² is about 1 leaves the
# controller only the torsions to learn (alanine dipeptide, 300 iterations: ESS 7.8 % at σ_max = 1.2,
# 0.05 % at 3.0; benchmarks/bench_diffusion_alanine.py and docs/diffusion.md).
DEFAULT_SCHEDULES = {"cartesian": (1.5, 0.02), "internal": (1.2, 0.05)}


def resolved_coordinates(molecular_system, coordinates, cvs=()):
    """``coordinates`` checked; ``"auto"`` → ``"internal"`` where ``molecular_system`` is one bonded molecule of at least
    4 atoms (its Z-matrix exists) and no CV is a Cartesian component, else ``"cartesian"``. Molecules should not
    default to Cartesian coordinates: on alanine dipeptide the Cartesian controller's ESS was 0.0005 where the
    internal one's is several percent (docs/diffusion.md)."""
    if coordinates == "auto":
        from ..geometry import InternalCoordinateTransform

        if molecular_system.topology.getNumAtoms() < 4 or any(isinstance(cv, CartesianComponent) for cv in cvs):
            return "cartesian"
        try:
            InternalCoordinateTransform.from_topology(molecular_system.topology)
        except InvalidInputError:  # disconnected (several molecules, no bonds) or no frame
            return "cartesian"
        return "internal"
    if coordinates not in DEFAULT_SCHEDULES:
        raise InvalidInputError(f"coordinates must be 'auto', 'cartesian' or 'internal', got {coordinates!r}.")
    return coordinates


def _stored_coordinates(checkpoint):
    """The coordinate space ("cartesian" or "internal") a stored checkpoint was trained in, or None (no or unreadable file)."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        kind = state["settings"]["coordinates"]["kind"]
    except Exception:  # noqa: BLE001 - missing or not a checkpoint: the sampler's loader says why, if it matters
        return None
    return kind if kind in DEFAULT_SCHEDULES else None


def parse_cv(spec):
    """``NAME:ATOMS`` → (name, CollectiveVariable): 4 atoms a torsion, 3 an angle, 2 a distance, ``AXIS@ATOM`` a Cartesian component.

    Atom indices are 0-based, as in OpenMM.
    """
    name, _, atoms = str(spec).partition(":")
    if not name or not atoms:
        raise InvalidInputError(f"a CV is NAME:ATOMS, e.g. phi:4,6,8,14 (torsion), d:0,5 (distance) or x:x@0; got {spec!r}.")
    if "@" in atoms:
        axis, _, atom = atoms.partition("@")
        return name, CartesianComponent(_index(atom, spec), axis)
    indices = [_index(a, spec) for a in atoms.split(",")]
    kinds = {4: Torsion, 3: Angle, 2: Distance}
    if len(indices) not in kinds:
        raise InvalidInputError(f"CV {spec!r} lists {len(indices)} atoms: give 4 (torsion), 3 (angle) or 2 (distance).")
    return name, kinds[len(indices)](*indices)


def _index(text, spec):
    try:
        index = int(text)
    except ValueError:
        raise InvalidInputError(f"CV {spec!r}: {text!r} is not an atom index.") from None
    if index < 0:
        raise InvalidInputError(f"CV {spec!r}: atom indices are >= 0.")
    return index


def parse_basin(spec):
    """``NAME:LO,HI:LO,HI`` → (name, ((lo, hi), (lo, hi))), one range per CV in the CVs' units."""
    name, *ranges = str(spec).split(":")
    try:
        box = tuple(tuple(float(v) for v in r.split(",")) for r in ranges)
    except ValueError:
        box = ()
    if not name or len(box) != 2 or any(len(r) != 2 or not r[0] < r[1] for r in box):
        raise InvalidInputError(f"a basin is NAME:LO,HI:LO,HI (one range per CV, LO < HI), e.g. C7eq:-3.0,-1.0:0.5,3.0; got {spec!r}.")
    return name, box


def _grid(cvs, grid_ranges, hill_width):
    """Grid settings for two CVs: periodic [-pi, pi] for two torsions, user ranges otherwise."""
    hill_width = finite_positive(hill_width, "hill_width")
    torsions = [isinstance(cv, Torsion) for cv in cvs.values()]
    if all(torsions):
        if grid_ranges:
            raise InvalidInputError(f"two torsions get the periodic grid [-pi, pi] on both axes; drop the grid range(s) (--grid) "
                                    f"given for {sorted(grid_ranges)}.")
        n = int(math.ceil(2 * math.pi / (hill_width / 4))) + 1
        return _checked_nodes(dict(lower=(-math.pi, -math.pi), upper=(math.pi, math.pi), n_nodes=(n, n), periodic=True), hill_width)
    if any(torsions):
        raise InvalidInputError("one torsion and one non-periodic CV: OpenMM's tabulated 2D functions are periodic on both axes or "
                                "neither; use two torsions or two non-periodic CVs.")
    missing = [name for name in cvs if name not in grid_ranges]
    if missing:
        raise InvalidInputError(f"non-periodic CVs need a grid range: --grid {missing[0]}:LO,HI (in the CV's units); missing for {missing}.")
    lower = tuple(float(grid_ranges[name][0]) for name in cvs)
    upper = tuple(float(grid_ranges[name][1]) for name in cvs)
    if not all(math.isfinite(v) for v in lower + upper):
        raise InvalidInputError(f"grid ranges must be finite numbers (--grid NAME:LO,HI), got {dict(grid_ranges)}.")
    n_nodes = tuple(int(math.ceil((hi - lo) / (hill_width / 4))) + 1 for lo, hi in zip(lower, upper))
    return _checked_nodes(dict(lower=lower, upper=upper, n_nodes=n_nodes, periodic=False), hill_width)


MAX_GRID_NODES = 1_000_000  # 8 MB of float64 per grid, and the bicubic coefficients 16 times that


def _checked_nodes(grid, hill_width):
    """The grid (four nodes per hill width) unless it is too small for a spline or too large for memory."""
    n_nodes = grid["n_nodes"]
    if min(n_nodes) < 4:
        raise InvalidInputError(f"the hill width {hill_width:g} (--hill-width) is too wide for the grid {grid['lower']}..{grid['upper']}: "
                                f"give a width below twice the smaller range.")
    if n_nodes[0] * n_nodes[1] > MAX_GRID_NODES:
        raise InvalidInputError(f"the hill width {hill_width:g} (--hill-width) on the grid {grid['lower']}..{grid['upper']} needs "
                                f"{n_nodes[0]} x {n_nodes[1]} nodes (four per width), more than {MAX_GRID_NODES:,}: give wider hills "
                                "or narrower grid ranges (--grid).")
    return grid


def diffusion_free_energy_surface(molecular_system, cvs, output_dir, grid_ranges=None, basins=None, n_iterations=200,
                                  n_samples=8000, bias_factor=8.0, hill_height=0.02, hill_width=0.2, sigma_max=None,
                                  sigma_min=None, n_steps=50, batch_size=128, seed=0, platform=None, progress=None,
                                  coordinates="auto", md_frames=None, md_interval=None, rotor_scale=1.0, pool_training=False,
                                  overwrite=False, **sampler_options):
    """Train (or resume) a CV-biased diffusion sampler, draw weighted samples, write the FES and basin ΔF.

    Parameters
    ----------
    molecular_system : MolecularSystem
    cvs : dict
        Two CVs, name → :class:`~openmm_flowplugin.geometry.CollectiveVariable` (see :func:`parse_cv`).
    output_dir : str or Path
        Run folder (created; resumed when it holds this run's checkpoint; another run's is refused).
        Result files already there (:data:`RESULT_FILES`: a finished run's, marked by ``results.json``,
        which is written last, or another command's) are refused before any work unless
        ``overwrite``; a run interrupted before it finished (``checkpoint.pt`` without
        ``results.json``) resumes without it and replaces its own partial files.
    grid_ranges : dict, optional
        name → (lo, hi) for non-periodic CVs. Two torsions use a periodic grid on [−π, π].
    basins : dict, optional
        name → ((lo, hi), (lo, hi)); ΔF between the first basin and each other one.
    n_iterations, n_samples, batch_size, n_steps : int
        Training iterations (total), production samples, chains per iteration, Euler–Maruyama steps.
    bias_factor, hill_height, hill_width : float
        γ, h (kJ/mol per hill, one hill per chain end point), width (CV units).
    sigma_max, sigma_min : float, optional
        Noise schedule: nm in Cartesian coordinates (default 1.5 and 0.02), standardized units in
        internal ones (default 1.2 and 0.05).
    seed : int
    coordinates : {"auto", "cartesian", "internal"}
        The sampler's variables; ``"auto"`` (default): the stored checkpoint's when resuming, else
        ``"internal"`` for a system that is one bonded molecule (its Z-matrix exists) unless a CV is a
        Cartesian component, and ``"cartesian"`` otherwise (the 2D model systems). ``"internal"`` standardizes the Z-matrix coordinates on
        ``md_frames`` frames of a Langevin run (1 fs steps, ``md_interval`` steps apart, from the
        system's positions), which also warm-start the replay buffer; its steps count as energy
        evaluations. ``sigma_max``/``sigma_min`` are then in standardized units.
    md_frames, md_interval : int, optional
        With ``"internal"`` only (given with Cartesian coordinates: an error). Default 200 frames, 50 steps
        apart (10 ps); ``md_frames * md_interval`` MD steps count in the run's energy evaluations, so a small
        budget may prefer a shorter run (``benchmarks/bench_diffusion_alanine.py --warm-start-steps``).
    rotor_scale : float or None
        With ``"internal"``: the proper torsions about the bonds of torsion CVs get a standardization
        spread of at least this (rad), so the noise reaches the CVs' other basins (see
        :meth:`~openmm_flowplugin.diffusion.InternalCoordinateSpace.from_positions`); ``None`` or 0: the
        MD run's spread (as runs made before this option; resume those with it). Torsion CVs about a ring
        bond, or about atoms that are not bonded, are skipped with a warning.
    overwrite : bool
        Replace the result files in ``output_dir`` (``--overwrite``): to extend or resample a finished
        run in its folder.
    pool_training : bool
        Estimate the FES and ΔF from the production samples pooled with the end points of the second half
        of the training chains (:meth:`~openmm_flowplugin.diffusion.DiffusionSampler.training_samples`),
        each with the exact weight of the controller that drew it: more of the run's energy evaluations
        count, at no extra cost. Off by default: adaptive importance sampling, consistent, with a bootstrap
        that treats the end points as independent. Those end points are written to
        ``training_end_points.npz`` either way (``results.json`` says whether they were pooled).
    platform : str, optional
    progress : bool, optional
    **sampler_options
        Passed to :class:`~openmm_flowplugin.diffusion.DiffusionSampler`.

    Returns
    -------
    dict
        What ``results.json`` holds.
    """
    from ..analysis.fes import basin_free_energy_difference, free_energy_surface
    from ..analysis.fes_plots import plot_free_energy_surfaces
    from .bias import WellTemperedBias
    from .sampler import DiffusionSampler
    from .schedule import NoiseSchedule

    if len(cvs) != 2:
        raise InvalidInputError(f"give exactly two CVs (--cv twice), got {len(cvs)}.")
    from .sampler import check_system_and_cvs

    check_system_and_cvs(molecular_system, cvs.values())  # before the standardization MD
    output_dir = Path(output_dir)
    existing = [name for name in RESULT_FILES if (output_dir / name).exists()]
    interrupted = (output_dir / "checkpoint.pt").exists() and not (output_dir / "results.json").exists()
    if existing and not overwrite and not interrupted:  # results.json, written last, marks a finished run
        raise InvalidInputError(f"{output_dir} already holds results ({', '.join(existing)}); this run would replace them. Give another "
                                "folder, or pass overwrite=True (--overwrite) to resume the run there and replace its results.")
    if coordinates == "auto":  # a stored run keeps the space it was trained in (runs made before "auto" were Cartesian)
        coordinates = _stored_coordinates(output_dir / "checkpoint.pt") or coordinates
    coordinates = resolved_coordinates(molecular_system, coordinates, cvs.values())
    md_frames, md_interval = _checked_md_run(coordinates, md_frames, md_interval)
    sigma_max = DEFAULT_SCHEDULES[coordinates][0] if sigma_max is None else sigma_max
    sigma_min = DEFAULT_SCHEDULES[coordinates][1] if sigma_min is None else sigma_min
    schedule = NoiseSchedule(sigma_max, sigma_min, n_steps)  # checked before the MD run
    grid = _grid(cvs, dict(grid_ranges or {}), hill_width)
    bias = WellTemperedBias(list(cvs.values()), hill_width=hill_width, hill_height=hill_height, bias_factor=bias_factor,
                            temperature=molecular_system.temperature, **grid)
    space, frames, md_evaluations = None, None, 0
    if coordinates == "internal":
        from .coordinates import InternalCoordinateSpace, checked_rotor_scale

        if rotor_scale:  # None or 0: the MD run's spread; checked before the MD run
            rotor_scale = checked_rotor_scale(rotor_scale)
        rotors = _cv_rotors(molecular_system, cvs) if rotor_scale else []
        frames = _md_frames(molecular_system, md_frames, md_interval, seed, platform)
        md_evaluations = md_frames * md_interval
        space = InternalCoordinateSpace.from_positions(molecular_system.topology, frames, rotors=rotors, rotor_scale=rotor_scale or 1.0)
    sampler = DiffusionSampler(molecular_system, bias=bias, schedule=schedule, batch_size=batch_size,
                               seed=seed, platform=platform, coordinates=space, **sampler_options)
    output_dir.mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves no folder behind
    if frames is not None and not (output_dir / "checkpoint.pt").exists():
        sampler.warm_start(frames)
    start = time.process_time()
    sampler.train(n_iterations, checkpoint=output_dir / "checkpoint.pt", progress=progress)
    if sampler.iteration > n_iterations:
        raise InvalidInputError(f"{output_dir / 'checkpoint.pt'} holds {sampler.iteration} training iterations and n_iterations "
                                f"(--iterations) is the total: give {sampler.iteration} or more, or another folder.")
    samples = sampler.sample(n_samples, checkpoint=output_dir / "checkpoint.pt")  # with the sample counter: a rerun draws new chains
    training = sampler.training_samples()  # written with every run, pooled or not: the file never lags the checkpoint
    for name in RESULT_FILES:  # refused above unless overwrite: none may outlive this run beside its new samples
        (output_dir / name).unlink(missing_ok=True)
    # the draws first: an analysis that fails (e.g. no sample inside the grid) loses none of them
    np.savez(output_dir / "samples.npz", cv_values=samples.cv_values, log_weights=samples.log_weights, bias_kJ_per_mol=samples.bias,
             reduced_energies=samples.reduced_energies)
    np.savez(output_dir / "training_end_points.npz", cv_values=training.cv_values, log_weights=training.log_weights)
    (output_dir / "bias.xml").write_text(openmm.XmlSerializer.serialize(bias.to_openmm_force()))
    names = list(cvs)
    units = [_UNITS.get(type(cv), "") for cv in cvs.values()]
    edges = [np.linspace(lo, hi, 51) for lo, hi in zip(grid["lower"], grid["upper"])]
    estimated = samples.pooled(training) if pool_training else samples
    n_pooled = len(estimated.log_weights) - int(n_samples)
    if pool_training and n_pooled == 0:
        import warnings

        warnings.warn(f"{output_dir / 'checkpoint.pt'} keeps no training end points (written before 2026-12-01, or trained no "
                      "further since): the estimate uses the production samples alone.", stacklevel=2)
    try:
        fes = free_energy_surface(estimated.cv_values, estimated.log_weights, edges, molecular_system.temperature, seed=seed)
    except InvalidInputError as error:
        where = f"the samples are in {output_dir / 'samples.npz'}"
        if np.isfinite(estimated.log_weights).any():  # weighted samples, none on the grid
            where += f"; the grid is {grid['lower']}..{grid['upper']}, and a wider one (--grid) needs another folder"
        raise InvalidInputError(f"{error} ({where})") from None
    basin_results = {}
    if basins:
        first, *others = list(basins)
        for other in others:
            try:
                delta = basin_free_energy_difference(estimated.cv_values, estimated.log_weights, basins, first, other,
                                                     molecular_system.temperature, seed=seed)
            except InvalidInputError as error:  # e.g. an empty basin: say so in the results, keep the rest of the run
                basin_results[f"{first} -> {other}"] = dict(not_estimated=str(error))
                continue
            basin_results[f"{first} -> {other}"] = dict(delta_f_kJ_per_mol=delta.value, error_kJ_per_mol=delta.error,
                                                        probabilities=delta.probabilities, reliable=delta.reliable,
                                                        diagnosis=delta.diagnosis(), samples=delta.samples,
                                                        effective_samples=delta.effective_samples, pareto_k=delta.pareto_k)
    results = dict(
        system=molecular_system.name, cvs={name: repr(cv) for name, cv in cvs.items()}, cv_units=dict(zip(names, units)),
        iterations=sampler.iteration, samples=int(n_samples), training_end_points_pooled=n_pooled,
        training_end_points_saved=len(training.log_weights),
        ess_fraction=estimated.ess_fraction, n_effective=estimated.n_effective,
        energy_evaluations=sampler.n_energy_evaluations + md_evaluations, md_steps_for_standardization=md_evaluations,
        coordinates=coordinates, rotors=[list(r) for r in getattr(space, 'rotors', [])], invalid_energies=sampler.n_invalid,
        invalid_sample_energies=samples.n_invalid,
        cpu_seconds_this_process=time.process_time() - start, bias_max_kJ_per_mol=bias.max_value, n_hills=bias.n_hills,
        basins=basin_results, estimator="exact importance weights on the discretized chain (main result)"
        + (f", production samples pooled with {n_pooled} end points of the second half of training" if n_pooled else ""),
        well_tempered_estimate="F = -gamma/(gamma-1) V: approximate (exact only at convergence), in fes.png and fes.npz",
        fes="fes.npz: the reweighted F per bin (edges_0, edges_1) with its bootstrap standard error, kJ/mol",
        settings={key: value for key, value in sampler.settings.items() if key != "hamiltonian"},
    )
    (output_dir / "results.md").write_text(_markdown(results))
    nodes = [np.linspace(lo, hi, n) for lo, hi, n in zip(grid["lower"], grid["upper"], grid["n_nodes"])]
    np.savez(output_dir / "fes.npz", cv_names=np.array(names), cv_units=np.array(units), edges_0=fes.edges[0], edges_1=fes.edges[1],
             free_energy_kJ_per_mol=fes.free_energy, error_kJ_per_mol=fes.error, probability=fes.probability,
             well_tempered_nodes_0=nodes[0], well_tempered_nodes_1=nodes[1],
             well_tempered_estimate_kJ_per_mol_approximate=bias.free_energy_estimate())
    plot_free_energy_surfaces(
        [("reweighted (exact weights)", fes.centres, fes.free_energy),
         (f"well-tempered −γ/(γ−1)V, γ = {bias_factor:g} (approximate)", nodes, bias.free_energy_estimate())],
        names, units, output_dir / "fes.png", overwrite=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))  # last: it marks a finished run
    return results


#: The files a run writes into its folder besides ``checkpoint.pt``.
RESULT_FILES = ("results.json", "results.md", "fes.png", "fes.npz", "samples.npz", "training_end_points.npz", "bias.xml")


def _checked_md_run(coordinates, md_frames, md_interval):
    """The standardization MD run's (frames, interval): defaults 200 and 50; given with Cartesian coordinates, refused."""
    if coordinates != "internal":
        if md_frames is not None or md_interval is not None:
            raise InvalidInputError("the MD frames and interval (--md-frames, --md-interval) standardize internal coordinates, "
                                    f"and this run is in {coordinates} coordinates: drop them, or use --coordinates internal.")
        return None, None
    md_frames = 200 if md_frames is None else md_frames
    md_interval = 50 if md_interval is None else md_interval
    if not is_integer(md_frames) or md_frames < 2:
        raise InvalidInputError(f"md_frames = {md_frames!r}: the standardization needs an integer number of MD frames, at least 2.")
    if not is_integer(md_interval) or md_interval < 1:
        raise InvalidInputError(f"md_interval = {md_interval!r}: give a positive integer number of MD steps between frames.")
    return int(md_frames), int(md_interval)


def _cv_rotors(molecular_system, cvs):
    """The torsion CVs that turn about a free (bonded, not ring) bond; the others are skipped with a warning."""
    import warnings

    from ..geometry import InternalCoordinateTransform
    from .coordinates import why_not_a_rotor

    transform = InternalCoordinateTransform.from_topology(molecular_system.topology)
    rotors = []
    for name, cv in cvs.items():
        if isinstance(cv, Torsion):
            reason = why_not_a_rotor(transform, cv.atoms)
            if reason:
                warnings.warn(f"CV {name!r} {reason}: its torsions keep the MD run's spread (no rotor widening).", stacklevel=3)
            else:
                rotors.append(cv.atoms)
    return rotors


def _markdown(results):
    lines = [f"# Diffusion sampler: {results['system']}", "",
             f"- iterations {results['iterations']}, samples {results['samples']}"
             + (f" + {results['training_end_points_pooled']} training end points" if results.get("training_end_points_pooled") else "")
             + f", ESS {results['ess_fraction']:.4f} "
             f"({results['n_effective']:.0f} effective samples)",
             f"- energy evaluations {results['energy_evaluations']:,} (non-finite, weight 0: {results['invalid_energies']} in training, "
             f"{results['invalid_sample_energies']} of the samples); "
             f"CPU {results['cpu_seconds_this_process']:.0f} s in this process",
             f"- bias: {results['n_hills']} hills, max {results['bias_max_kJ_per_mol']:.2f} kJ/mol",
             f"- estimator: {results['estimator']}; {results['well_tempered_estimate']}",
             f"- FES: {results['fes']}", ""]
    if results["basins"]:
        lines += ["| basins | ΔF, kJ/mol | probabilities | weights' tail |", "|---|---:|---|---|"]
        for pair, value in results["basins"].items():
            if "not_estimated" in value:
                lines.append(f"| {pair} | not estimated: {value['not_estimated']} | | |")
                continue
            probabilities = ", ".join(f"{k} {v:.4f}" for k, v in value["probabilities"].items())
            lines.append(f"| {pair} | {value['delta_f_kJ_per_mol']:.3f} ± {value['error_kJ_per_mol']:.3f} | {probabilities} | {value['diagnosis']} |")
        lines += ["", "ΔF errors are bootstrap standard errors over the independent samples. They are trustworthy only where the "
                  "row says reliable: a basin whose weights have a heavy tail (Pareto k̂ above the threshold) or fewer than 100 "
                  "effective samples has an estimate biased with high probability and an error bar that cannot show it; train "
                  "longer or draw more samples."]
    return "\n".join(lines) + "\n"


def _md_frames(molecular_system, n_frames, interval, seed, platform):
    """Positions (n_frames, n_atoms, 3) nm of a Langevin run at the system's temperature (1 fs, friction 1/ps)."""
    from openmm import unit

    from ..mcmc.seeded_runs import with_seeded_random_forces
    from ..platforms import select_platform

    integrator = openmm.LangevinMiddleIntegrator(molecular_system.temperature, 1.0 / unit.picosecond, 0.001 * unit.picoseconds)
    integrator.setRandomNumberSeed(int(seed) % 2**31 + 1)
    system = with_seeded_random_forces(molecular_system.system, seed, "diffusion warm start")
    context = openmm.Context(system, integrator, select_platform(system, platform, purpose="md"))
    context.setPositions(molecular_system.positions)
    context.setVelocitiesToTemperature(molecular_system.temperature, int(seed) % 2**31 + 1)
    frames = []
    for _ in range(n_frames):
        integrator.step(interval)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames)
