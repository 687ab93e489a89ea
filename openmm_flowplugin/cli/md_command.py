"""``openmm-flowplugin md``: Langevin MD with exact flow Monte Carlo jumps (FlowMCIntegrator), checkpointed, resumable."""

import math
import sys
from pathlib import Path

import click

from ._common import FINITE_NON_NEGATIVE, FINITE_POSITIVE, POSITIVE_INT, _user_errors, load_system, system_options
from ..errors import InvalidInputError


_HELP = """Run MD of SYSTEM with FlowMCIntegrator: Langevin dynamics and, every --jump-interval steps, --proposals
exact Metropolis-Hastings jumps to configurations drawn from the flow (--flow).

Every --interval steps: a row of the log (--log FILE, default stdout), a trajectory frame (--trajectory: .dcd,
.xtc or .h5) and a row of jump statistics (--jump-log CSV). With --checkpoint FILE an OpenMM checkpoint is
written every --checkpoint-interval steps and at the end; it holds the jump counts. --resume loads it and
continues to --steps in total, cutting the trajectory and logs back to the checkpoint's step, then appending.
"""


@click.command(help=_HELP)
@system_options
@click.option("--flow", "flow_path", required=True, help="Flow checkpoint (.pt), or a system name that ships one; a conditional flow (train-timewarp) makes one proposal per jump.")
@click.option("--steps", required=True, type=POSITIVE_INT, help="Total MD steps (with --resume: the total to reach).")
@click.option("--interval", default=1000, show_default=True, type=POSITIVE_INT, help="Steps between log rows and frames.")
@click.option("--jump-interval", default=100, show_default=True, type=POSITIVE_INT, help="MD steps between jump attempts.")
@click.option("--proposals", default=1, show_default=True, type=POSITIVE_INT, help="Flow proposals per jump attempt.")
@click.option("--timestep", default=1.0, show_default=True, type=FINITE_POSITIVE, help="Femtoseconds.")
@click.option("--friction", default=1.0, show_default=True, type=FINITE_NON_NEGATIVE, help="Collision rate, 1/ps.")
@click.option("--temperature", default=None, type=FINITE_POSITIVE, help="Kelvin (default: the system's).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seeds the initial velocities, the integrator's noise and the flow proposals.")
@click.option("--platform", default=None, help="OpenMM platform (default: automatic, the faster of Reference and CPU timed on the system; see docs/performance.md).")
@click.option("--trajectory", "-o", default=None, type=click.Path(dir_okay=False), help="Trajectory to write: .dcd, .xtc or .h5.")
@click.option("--log", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="StateDataReporter CSV ('-': stdout).")
@click.option("--jump-log", default=None, type=click.Path(dir_okay=False), help="Jump statistics CSV (FlowMCReporter).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="OpenMM checkpoint to write (and --resume from).")
@click.option("--checkpoint-interval", default=10_000, show_default=True, type=POSITIVE_INT, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint to --steps, appending to the outputs.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when stderr is a terminal].")
@_user_errors
def md(molecular_system_options, flow_path, steps, interval, jump_interval, proposals, timestep, friction, temperature, seed,
       platform, trajectory, log, jump_log, checkpoint, checkpoint_interval, resume, overwrite, progress):
    from openmm import app, unit

    from ..flows.conditional_io import load_proposal_flow
    from ..integrators import FlowMCIntegrator
    from ..mcmc.seeded_runs import with_seeded_random_forces
    from ..outputs import check_output_path
    from ..platforms import select_platform
    from ..simulation._validation import check_timestep
    from ..simulation.trajectory_files import check_trajectory_format
    from ..units import kelvin

    if resume and checkpoint is None:
        raise InvalidInputError("--resume needs --checkpoint FILE, the checkpoint of the run to continue.")
    if resume and overwrite:
        raise InvalidInputError("--resume appends to the outputs of the run it continues; drop --overwrite.")
    if trajectory is not None:
        check_trajectory_format(trajectory)
    log = None if log == "-" else log
    outputs = [Path(p) for p in (trajectory, log, jump_log, checkpoint) if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise InvalidInputError("--trajectory, --log, --jump-log and --checkpoint must be different files.")
    if resume and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"cannot resume: checkpoint {checkpoint} not found (run without --resume to start a run).")
    if not resume:
        for path in outputs + ([_record_path(checkpoint)] if checkpoint is not None else []):
            check_output_path(path, overwrite)
    run = dict(interval=interval, timestep_fs=timestep, trajectory=trajectory, log=log, jump_log=jump_log)
    if resume:
        platform = _check_record(checkpoint, run, platform)
    molecular_system = load_system(molecular_system_options)
    problem = check_timestep(molecular_system, timestep)
    if problem:
        raise InvalidInputError(problem)
    temperature = kelvin(molecular_system.temperature) if temperature is None else float(temperature)
    flow = load_proposal_flow(flow_path, system=molecular_system)
    integrator = FlowMCIntegrator(temperature * unit.kelvin, friction / unit.picosecond, timestep * unit.femtosecond, flow,
                                  jump_interval=jump_interval, n_proposals=proposals, system=molecular_system.system,
                                  topology=molecular_system.topology, seed=seed)
    if seed is not None:
        integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(molecular_system.topology, with_seeded_random_forces(molecular_system.system, seed, "md"), integrator,
                                select_platform(molecular_system.system, platform, purpose="md", positions=molecular_system.positions))
    if resume:
        _load_checkpoint(simulation, checkpoint, temperature, friction)
        if simulation.currentStep >= steps:
            raise InvalidInputError(f"checkpoint {checkpoint} is at step {simulation.currentStep}; pass --steps above it to continue.")
    else:
        if checkpoint is not None:
            _write_record(checkpoint, dict(run, platform=simulation.context.getPlatform().getName()), overwrite)
        simulation.context.setPositions(molecular_system.positions)
        simulation.minimizeEnergy()
        simulation.context.setVelocitiesToTemperature(temperature * unit.kelvin, *(() if seed is None else (seed,)))
    reporters, streams = _reporters(simulation, trajectory, log, jump_log, interval, steps, timestep, resume)
    try:
        _run(simulation, steps, checkpoint, checkpoint_interval, interval, progress)
    finally:
        _close(reporters, streams)
    written = ", ".join(str(p) for p in outputs) or "no files"
    click.echo(f"{simulation.currentStep} steps; flow jumps accepted {integrator.n_accepted} of {integrator.n_proposed} "
               f"({integrator.acceptance_rate:.3f}); wrote {written}")


_RECORD_FORMAT = "openmm_flowplugin.md/1"


def _record_path(checkpoint):
    return Path(f"{checkpoint}.md.json")


def _write_record(checkpoint, run, overwrite):
    """What a resume must repeat (interval, time step, outputs, platform), as plain JSON beside the checkpoint."""
    import json

    from ..outputs import atomic_output_path

    record = {key: (str(Path(value).resolve()) if key in ("trajectory", "log", "jump_log") and value else value)
              for key, value in run.items()}
    with atomic_output_path(_record_path(checkpoint), overwrite) as tmp:
        tmp.write_text(json.dumps(dict(record, format=_RECORD_FORMAT), indent=1, sort_keys=True) + "\n")


def _check_record(checkpoint, run, platform):
    """Refuse a resume whose interval, time step or outputs differ from the run's; return the platform to use."""
    import json

    path = _record_path(checkpoint)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InvalidInputError(f"cannot resume: {path}, the run record written beside {checkpoint}, is missing or unreadable.") from None
    if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
        raise InvalidInputError(f"cannot resume: {path} is not a run record of openmm-flowplugin md.")
    for key, option in (("interval", "--interval"), ("timestep_fs", "--timestep"), ("trajectory", "--trajectory"),
                        ("log", "--log"), ("jump_log", "--jump-log")):
        value = run[key]
        if key in ("trajectory", "log", "jump_log") and value:
            value = str(Path(value).resolve())
        if record.get(key) != value:
            raise InvalidInputError(f"cannot resume: the run of {checkpoint} used {option} {record.get(key)}, this call has "
                                    f"{value}; resume with the same {option}.")
    if platform is not None and platform != record.get("platform"):
        raise InvalidInputError(f"cannot resume: the run of {checkpoint} ran on {record.get('platform')}; its checkpoint loads only there.")
    return record.get("platform")


def _load_checkpoint(simulation, path, temperature, friction):
    """Load an OpenMM checkpoint; refuse one run at another temperature or friction (its jump program stores them)."""
    import openmm
    from openmm import unit

    try:
        simulation.loadCheckpoint(str(path))
    except openmm.OpenMMException as error:
        raise InvalidInputError(f"cannot load checkpoint {path} (written for another system, integrator or platform?): {error}") from None
    jump = simulation.integrator.getIntegrator(1)  # FlowMCIntegrator's jump program; its kT and friction come from the file
    gas_constant = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    stored_kelvin, stored_friction = jump.getGlobalVariableByName("fmc_kT") / gas_constant, jump.getGlobalVariableByName("fmc_friction")
    if not math.isclose(stored_kelvin, temperature, rel_tol=1e-6):
        raise InvalidInputError(f"cannot resume: checkpoint {path} was run at {stored_kelvin:.6g} K; resume with --temperature {stored_kelvin:.6g}.")
    if not math.isclose(stored_friction, friction, rel_tol=1e-6, abs_tol=1e-12):
        raise InvalidInputError(f"cannot resume: checkpoint {path} was run with --friction {stored_friction:.6g}; resume with that value.")


def _reporters(simulation, trajectory, log, jump_log, interval, steps, timestep, resume):
    """NaN guard, log, trajectory and jump reporters; on resume, existing files are cut back to the checkpoint's step."""
    from ..integrators import FlowMCReporter
    from ..simulation.checkpointing import truncate_log
    from ..simulation.reporters import NaNGuard, log_reporter, trajectory_reporter
    from ..simulation.trajectory_files import count_frames, truncate_frames

    step = simulation.currentStep
    append = {path: resume and Path(path).is_file() for path in (trajectory, log, jump_log) if path is not None}
    reporters, streams = [NaNGuard(interval, timestep_fs=timestep)], []
    if log is not None and append[log]:
        truncate_log(log, step)
    reporters.append(log_reporter(sys.stdout if log is None else log, interval, steps, append=append.get(log, False)))
    if trajectory is not None:
        if append[trajectory]:
            expected, found = step // interval, count_frames(trajectory)
            if found < expected:
                raise InvalidInputError(f"cannot resume: {trajectory} has {found} frames but the checkpoint at step {step} expects "
                                 f"{expected} (one per --interval {interval}); resume with the first run's --interval.")
            truncate_frames(trajectory, expected)
        reporters.append(trajectory_reporter(trajectory, interval, append=append[trajectory]))
    if jump_log is not None:
        if append[jump_log]:
            truncate_log(jump_log, step)
        streams.append(open(jump_log, "a" if append[jump_log] else "w"))
        reporters.append(FlowMCReporter(streams[-1], interval, append=append[jump_log]))
    simulation.reporters.extend(reporters)
    return reporters, streams


def _run(simulation, steps, checkpoint, checkpoint_interval, interval, progress):
    """Step to ``steps`` in chunks: a progress bar with the jump acceptance, checkpoints written atomically."""
    from tqdm import tqdm

    from .._threads import package_threads
    from ..simulation.checkpointing import save_checkpoint

    integrator = simulation.integrator
    update = max(interval, (steps - simulation.currentStep) // 100)
    with tqdm(total=steps, initial=simulation.currentStep, unit="step", file=sys.stderr,
              disable=None if progress is None else not progress) as bar, package_threads():
        while simulation.currentStep < steps:
            now = simulation.currentStep
            targets = [steps, (now // update + 1) * update]
            if checkpoint is not None:
                targets.append((now // checkpoint_interval + 1) * checkpoint_interval)
            simulation.step(min(targets) - now)
            bar.set_postfix_str(f"jump acceptance {integrator.n_accepted}/{integrator.n_proposed}", refresh=False)
            bar.update(simulation.currentStep - now)
            if checkpoint is not None and (simulation.currentStep % checkpoint_interval == 0 or simulation.currentStep == steps):
                save_checkpoint(simulation, checkpoint)


def _close(reporters, streams):
    from ..integrators import FlowMCReporter
    from ..simulation.reporters import close_reporter

    for reporter in reporters:
        if not isinstance(reporter, FlowMCReporter):  # it writes to a stream opened here, closed below
            close_reporter(reporter)
    for stream in streams:
        stream.close()
