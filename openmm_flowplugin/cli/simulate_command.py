"""``openmm-flowplugin simulate``: molecular dynamics of a system, saved as a trajectory, with checkpoints and resume."""

import math
import sys

import click

from ._common import POSITIVE_INT, _load_trajectories, _user_errors, load_system, system_options
from ..errors import InvalidInputError


@click.command()
@system_options
@click.option("--steps", default=1_000_000, show_default=True, type=POSITIVE_INT, help="Production MD steps (the total, also with --resume).")
@click.option("--interval", default=100, show_default=True, type=POSITIVE_INT, help="Steps between saved frames.")
@click.option("--equilibration-steps", default=10_000, show_default=True, type=click.IntRange(min=0),
              help="Steps after minimization, before the first frame (not repeated by --resume).")
@click.option("--temperature", type=float, default=None, help="Kelvin (default: the system's).")
@click.option("--timestep", type=float, default=1.0, show_default=True, help="Femtoseconds.")
@click.option("--seed", type=int, default=None)
@click.option("--platform", default=None, help="OpenMM platform (default: automatic; with --resume, the checkpoint's).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Trajectory to write, format by extension: .dcd, .xtc or .h5 (HDF5, with energies).")
@click.option("--log", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write step, time, potential energy, temperature, speed, progress and remaining time every --interval steps to FILE ('-': standard output).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint FILE, rewritten atomically every --checkpoint-interval steps (and a run record FILE.json).")
@click.option("--checkpoint-interval", type=POSITIVE_INT, default=None,
              help="Steps between checkpoints, a multiple of --interval [default: about 10000].")
@click.option("--resume", is_flag=True, help="Continue the run of --checkpoint to --steps: the trajectory and log are cut back to the checkpoint, then appended to.")
@click.option("--start", type=click.Path(dir_okay=False), default=None, help="Start from a frame of this trajectory.")
@click.option("--start-frame", default=-1, show_default=True, help="Frame of --start to begin from.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output, log or checkpoint.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when stderr is a terminal].")
@_user_errors
def simulate(molecular_system_options, steps, interval, equilibration_steps, temperature, timestep, seed, platform, output,
             log, checkpoint, checkpoint_interval, resume, start, start_frame, overwrite, progress):
    """Run Langevin MD of SYSTEM and save its trajectory (DCD, XTC or HDF5)."""
    from openmm import unit

    from ..simulation._validation import check_timestep
    from ..simulation.md import simulate as run
    from ..simulation.trajectory_files import check_trajectory_format

    if not math.isfinite(timestep) or timestep <= 0:
        raise InvalidInputError(f"--timestep must be a finite number of femtoseconds > 0, got {timestep}.")
    if temperature is not None and (not math.isfinite(temperature) or temperature <= 0):
        raise InvalidInputError(f"--temperature must be a finite number of kelvin > 0, got {temperature}.")
    if steps < interval:
        raise InvalidInputError(f"--steps ({steps}) must be at least --interval ({interval}).")
    check_trajectory_format(output)
    if (checkpoint_interval is not None or resume) and checkpoint is None:
        raise InvalidInputError(f"{'--resume' if resume else '--checkpoint-interval'} needs --checkpoint FILE.")
    if checkpoint_interval is not None and checkpoint_interval % interval:
        raise InvalidInputError(f"--checkpoint-interval ({checkpoint_interval}) must be a multiple of --interval ({interval}).")
    if resume and overwrite:
        raise InvalidInputError("--resume continues the run in the existing files, --overwrite starts it again: give one.")
    if resume and start is not None:
        raise InvalidInputError("--start chooses where a new run begins; --resume continues from the checkpoint: give one.")

    molecular_system = load_system(molecular_system_options)
    if (message := check_timestep(molecular_system, timestep)) is not None:
        raise InvalidInputError(message)
    if start is not None:
        frames = _load_trajectories([start], molecular_system)
        if not -len(frames) <= start_frame < len(frames):
            raise InvalidInputError(f"--start-frame {start_frame} is outside {start}, which has {len(frames)} frames.")
        molecular_system.positions = unit.Quantity(frames[start_frame].astype("float64"), unit.nanometer)
    if progress is None:
        progress = sys.stderr.isatty() and log != "-"
    trajectory = run(molecular_system, steps, report_interval=interval, temperature=temperature,
                     timestep=timestep * unit.femtosecond, equilibration_steps=equilibration_steps, seed=seed,
                     platform=platform, output=output, overwrite=overwrite, progress=progress, log=log,
                     checkpoint=checkpoint, checkpoint_interval=checkpoint_interval, resume=resume)
    click.echo(f"wrote {trajectory.n_frames} frames to {output}")
