"""Langevin MD of a system through :class:`openmm.app.Simulation`: reporters, checkpoints, resume, NaN detection."""

__all__ = ["simulate", "DEFAULT_CHECKPOINT_STEPS"]

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

from ..outputs import atomic_output_path, check_output_path
from ..platforms import select_platform
from ..units import kelvin
from ._validation import check_timestep, count, positive_time
from .checkpointing import check_resumable, read_record, record_path, save_checkpoint, truncate_log, write_record
from .reporters import (FrameCollector, NaNGuard, ProgressBar, SimulationUnstableError, close_reporter, log_reporter,
                        trajectory_reporter)
from .trajectory_files import check_trajectory_format, count_frames, load_frames, truncate_frames
from ..errors import InvalidInputError

#: Default steps between checkpoints (rounded to a multiple of the report interval).
DEFAULT_CHECKPOINT_STEPS = 10_000


def simulate(
    molecular_system,
    n_steps,
    report_interval=100,
    timestep=1.0 * unit.femtosecond,
    friction=1.0 / unit.picosecond,
    temperature=None,
    equilibration_steps=10_000,
    platform=None,
    seed=None,
    output=None,
    overwrite=False,
    progress=True,
    *,
    log=None,
    checkpoint=None,
    checkpoint_interval=None,
    resume=False,
):
    """Run Langevin MD (LangevinMiddleIntegrator) and return the frames as an :class:`mdtraj.Trajectory`.

    The system is minimized, given velocities at ``temperature``, equilibrated for
    ``equilibration_steps``, then run for ``n_steps`` production steps. Frame ``k`` (from 0) is the state
    at production step ``(k + 1) * report_interval``, time ``(k + 1) * report_interval * timestep``.

    Parameters
    ----------
    molecular_system : MolecularSystem
        From :func:`openmm_flowplugin.systems.get` (its ``positions`` are the starting structure).
    n_steps : int
        Production steps (the total, also when resuming); one frame every ``report_interval`` steps.
    report_interval : int
    timestep : Quantity or float
        Time step (ps if a bare number; default 1 fs). Above 4 fs with unconstrained bonds to hydrogen
        a warning is issued (the command line refuses).
    friction : Quantity or float
        Collision rate (1/ps if a bare number).
    temperature : Quantity or float, optional
        Default: the system's temperature.
    equilibration_steps : int
        Steps run (after energy minimization) before the first frame; not repeated on resume.
    platform : str, optional
        OpenMM platform name; default: automatic (Reference for tiny systems), or the checkpoint's on resume.
    seed : int, optional
        Integrator random seed (and velocities); an unseeded Monte Carlo barostat or Andersen thermostat in the
        System gets a seed derived from it (on a copy: the System passed in is unchanged). On resume the
        checkpoint's generator state is used.
    output : str or Path, optional
        Trajectory to write, format by extension: ``.dcd``, ``.xtc`` or ``.h5`` (HDF5, with energies).
        Without a checkpoint it is written under a temporary name and moved into place at the end.
    overwrite : bool
        Replace existing output, log, checkpoint and run record (otherwise they are refused before any work).
    progress : bool
        Show a progress bar (stderr).
    log : str, Path or text stream, optional
        StateDataReporter log, one row per frame: progress, step, time, potential energy,
        temperature, speed, remaining time. Pass ``sys.stdout`` (or ``"-"``) to print it.
    checkpoint : str or Path, optional
        Checkpoint file, rewritten atomically every ``checkpoint_interval`` steps and at the end (needs
        ``output``). A run record ``<checkpoint>.json`` is written beside it.
    checkpoint_interval : int, optional
        A multiple of ``report_interval``; default about 10,000 steps.
    resume : bool
        Continue the run of ``checkpoint`` to ``n_steps``: the trajectory (and log) are cut back to the
        checkpoint's step, then appended to. Refused if the checkpoint or its record is missing, was
        made for another system, output or settings, or the trajectory has fewer frames than it implies.

    Returns
    -------
    mdtraj.Trajectory
        All frames of the run, ``time`` in ps of production.

    Raises
    ------
    SimulationUnstableError
        (a ValueError) Energies or positions became NaN or infinite; names the step.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> traj = simulate(systems.get("alanine_dipeptide_vacuum"), 200, report_interval=100,
    ...                 equilibration_steps=0, seed=1, progress=False)
    >>> traj.n_frames, traj.n_atoms, traj.time.tolist()
    (2, 22, [0.1, 0.2])
    """
    n_steps, report_interval = count("n_steps", n_steps), count("report_interval", report_interval)
    equilibration_steps = count("equilibration_steps", equilibration_steps, minimum=0)
    if n_steps < report_interval:
        raise InvalidInputError(f"n_steps ({n_steps}) must be at least report_interval ({report_interval}).")
    timestep_ps = positive_time("timestep", timestep, unit.picosecond)
    friction_per_ps = positive_time("friction", friction, unit.picosecond**-1, zero_ok=True)
    temperature_k = kelvin(molecular_system.temperature if temperature is None else temperature)
    if (message := check_timestep(molecular_system, timestep_ps * 1000)) is not None:
        warnings.warn(message, stacklevel=2)
    if output is not None:
        check_trajectory_format(output)
    if checkpoint is None:
        if checkpoint_interval is not None or resume:
            raise InvalidInputError(f"{'resume' if resume else 'checkpoint_interval'} needs checkpoint= (--checkpoint FILE).")
    else:
        if output is None:
            raise InvalidInputError("checkpoint= needs output= (--output): resume appends to the trajectory file.")
        if checkpoint_interval is None:
            checkpoint_interval = report_interval * max(1, round(DEFAULT_CHECKPOINT_STEPS / report_interval))
        checkpoint_interval = count("checkpoint_interval", checkpoint_interval)
        if checkpoint_interval % report_interval:
            raise InvalidInputError(f"checkpoint_interval ({checkpoint_interval}) must be a multiple of report_interval "
                             f"({report_interval}), so that each checkpoint falls on a frame.")
    log = sys.stdout if isinstance(log, str) and log == "-" else log
    log_path = None if log is None or hasattr(log, "write") else Path(log)
    paths = [Path(p) for p in (output, log_path, checkpoint) if p is not None]
    paths += [record_path(checkpoint)] if checkpoint is not None else []
    if len({p.resolve() for p in paths}) < len(paths):
        raise InvalidInputError(f"output, log and checkpoint must be different files, got {', '.join(map(str, paths))}.")
    settings = {"report_interval": report_interval, "timestep_ps": timestep_ps, "temperature_K": temperature_k,
                "friction_per_ps": friction_per_ps}
    record = None
    if resume:
        record = read_record(checkpoint)
        check_resumable(record, checkpoint, molecular_system, output, settings)
        if not Path(output).is_file():
            raise FileNotFoundError(f"cannot resume: trajectory {output} not found.")
        if platform is not None and record.get("platform") not in (None, str(platform)):
            raise InvalidInputError(f"cannot resume: checkpoint {checkpoint} was written on platform {record['platform']}, "
                             f"not {platform}; checkpoints load only on the platform that wrote them.")
        platform = platform or record.get("platform")
    else:
        for path in paths:
            check_output_path(path, overwrite)

    from ..mcmc.seeded_runs import with_seeded_random_forces

    integrator = openmm.LangevinMiddleIntegrator(temperature_k, friction_per_ps, timestep_ps)
    if seed is not None:
        integrator.setRandomNumberSeed(int(seed))
    simulation = app.Simulation(molecular_system.topology, with_seeded_random_forces(molecular_system.system, seed, "simulate"), integrator,
                                select_platform(molecular_system.system, platform, purpose="md", positions=molecular_system.positions))
    timestep_fs = timestep_ps * 1000
    if resume:
        start = _load_checkpoint(simulation, checkpoint, output, log_path, n_steps, report_interval)
    else:
        simulation.context.setPositions(molecular_system.positions)
        simulation.minimizeEnergy()
        simulation.context.setVelocitiesToTemperature(temperature_k, *(() if seed is None else (int(seed),)))
        if equilibration_steps:
            bar = ProgressBar(report_interval, equilibration_steps, 0, "equilibration", progress)
            simulation.reporters[:] = [NaNGuard(report_interval, "equilibration", timestep_fs), bar]
            try:
                _advance(simulation, equilibration_steps, None, None, "equilibration", timestep_fs)
            finally:
                bar.close()
        simulation.currentStep, start = 0, 0
        simulation.context.setTime(0.0)
        if checkpoint is not None:
            record = dict(settings, system=molecular_system.name, n_atoms=molecular_system.n_atoms,
                          fingerprint=molecular_system.fingerprint, output=output, log=log_path,
                          equilibration_steps=equilibration_steps, seed=None if seed is None else int(seed), openmm_version=openmm.__version__,
                          platform=simulation.context.getPlatform().getName())
            write_record(checkpoint, record, overwrite)
            save_checkpoint(simulation, checkpoint)

    with contextlib.ExitStack() as stack:
        written = output
        if output is not None and checkpoint is None:
            written = stack.enter_context(atomic_output_path(output, overwrite))
        collector = FrameCollector(report_interval) if output is None else None
        reporters = [NaNGuard(report_interval, "production", timestep_fs),
                     collector or trajectory_reporter(written, report_interval, append=resume and start > 0)]
        if log is not None:
            append = resume and log_path is not None and log_path.is_file()
            reporters.append(log_reporter(log, report_interval, n_steps, append))
        reporters.append(ProgressBar(report_interval, n_steps, start, f"MD {molecular_system.name}", progress))
        simulation.reporters[:] = reporters
        try:
            _advance(simulation, n_steps, checkpoint, checkpoint_interval, "production", timestep_fs)
        finally:
            simulation.reporters.clear()
            for reporter in reporters:
                close_reporter(reporter)
        trajectory = _frames(collector, written, molecular_system)
    n_frames = n_steps // report_interval
    if trajectory.n_frames != n_frames:
        raise RuntimeError(f"{output} holds {trajectory.n_frames} frames after the run, expected {n_frames}.")
    trajectory.time = timestep_ps * report_interval * np.arange(1, n_frames + 1)
    return trajectory


def _advance(simulation, end_step, checkpoint, checkpoint_interval, phase, timestep_fs):
    """Step to ``end_step``, saving a checkpoint at each multiple of ``checkpoint_interval`` and at the end."""
    try:
        while simulation.currentStep < end_step:
            target = end_step
            if checkpoint is not None:
                target = min(end_step, (simulation.currentStep // checkpoint_interval + 1) * checkpoint_interval)
            simulation.step(target - simulation.currentStep)
            if checkpoint is not None:
                save_checkpoint(simulation, checkpoint)
    except SimulationUnstableError:
        raise
    except (ValueError, openmm.OpenMMException) as error:  # StateDataReporter, DCDFile, XTCFile or a platform saw NaN
        text = str(error)
        if "nan" not in text.lower() and "infinite" not in text.lower():
            raise
        raise SimulationUnstableError(simulation.currentStep, phase, text.split(".")[0], timestep_fs) from None


def _load_checkpoint(simulation, checkpoint, output, log_path, n_steps, report_interval):
    """Load the checkpoint, cut the trajectory (and log) back to its step; return that step."""
    try:
        simulation.loadCheckpoint(str(checkpoint))
    except openmm.OpenMMException as error:
        raise InvalidInputError(f"cannot resume: checkpoint {checkpoint} does not load here ({str(error).strip()}); "
                         "checkpoints need the same System, platform and OpenMM version.") from None
    start = simulation.currentStep
    if start > n_steps:
        raise InvalidInputError(f"cannot resume: checkpoint {checkpoint} is at step {start}, past n_steps {n_steps} (--steps).")
    expected, found = start // report_interval, count_frames(output)
    if found < expected:
        raise InvalidInputError(f"cannot resume: {output} has {found} frames, but checkpoint {checkpoint} is at step {start}, "
                         f"which implies {expected} (one per {report_interval} steps).")
    truncate_frames(output, expected)
    if log_path is not None and log_path.is_file():
        truncate_log(log_path, start)
    return start


def _frames(collector, path, molecular_system):
    import mdtraj

    if collector is None:
        return load_frames(path, molecular_system.mdtraj_topology)
    xyz = np.asarray(collector.xyz, dtype=np.float32).reshape(-1, molecular_system.n_atoms, 3)
    trajectory = mdtraj.Trajectory(xyz, molecular_system.mdtraj_topology)
    if molecular_system.system.usesPeriodicBoundaryConditions() and collector.boxes:
        trajectory.unitcell_vectors = np.asarray(collector.boxes, dtype=np.float32)
    return trajectory
