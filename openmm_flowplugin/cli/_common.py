"""What every command shares: the user-error wrapper and trajectory loading."""

import functools
import sys
from pathlib import Path

import click

USER_ERRORS = (KeyError, FileNotFoundError, FileExistsError, ValueError, TypeError, OSError)


def _user_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            click.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper



def _load_trajectories(paths, molecular_system):
    import mdtraj
    import numpy as np

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"trajectory {path} not found.")
        trajectory = mdtraj.load(path, top=molecular_system.mdtraj_topology) if not str(path).endswith(".h5") else mdtraj.load(path)
        if trajectory.n_atoms != molecular_system.n_atoms:
            raise ValueError(f"{path} has {trajectory.n_atoms} atoms but {molecular_system.name} has {molecular_system.n_atoms}.")
        frames.append(trajectory.xyz)
    return np.concatenate(frames)
