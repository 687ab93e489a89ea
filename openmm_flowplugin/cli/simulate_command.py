"""``openmm-flowplugin simulate``: molecular dynamics of a system, saved as a trajectory."""


import click

from ._common import POSITIVE_INT, _load_trajectories, _user_errors, load_system, system_options


@click.command()
@system_options
@click.option("--steps", default=1_000_000, show_default=True, type=POSITIVE_INT, help="Production MD steps.")
@click.option("--interval", default=100, show_default=True, type=POSITIVE_INT, help="Steps between saved frames.")
@click.option("--temperature", type=float, default=None, help="Kelvin (default: the system's).")
@click.option("--timestep", type=float, default=1.0, show_default=True, help="Femtoseconds.")
@click.option("--seed", type=int, default=None)
@click.option("--platform", default=None, help="OpenMM platform (default: automatic).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="mdtraj HDF5 file to write.")
@click.option("--start", type=click.Path(dir_okay=False), default=None, help="Start from a frame of this trajectory.")
@click.option("--start-frame", default=-1, show_default=True, help="Frame of --start to begin from.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@_user_errors
def simulate(molecular_system_options, steps, interval, temperature, timestep, seed, platform, output, start, start_frame, overwrite):
    """Run Langevin MD of SYSTEM and save an HDF5 trajectory."""
    from openmm import unit

    from ..simulation.md import simulate as run

    molecular_system = load_system(molecular_system_options)
    if start is not None:
        frames = _load_trajectories([start], molecular_system)
        if not -len(frames) <= start_frame < len(frames):
            raise ValueError(f"--start-frame {start_frame} is outside {start}, which has {len(frames)} frames.")
        molecular_system.positions = unit.Quantity(frames[start_frame].astype("float64"), unit.nanometer)
    trajectory = run(molecular_system, steps, report_interval=interval, temperature=temperature,
                     timestep=timestep * unit.femtosecond, seed=seed, platform=platform, output=output, overwrite=overwrite)
    click.echo(f"wrote {trajectory.n_frames} frames to {output}")
