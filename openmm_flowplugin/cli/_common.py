"""What every command shares: the user-error wrapper, the system options, counts, trajectories."""

import functools
import math
import os
import sys
import time
from pathlib import Path

import click

from ..errors import InvalidInputError, UserInputError

# The package's own user-error types (bad values, names, files) and the environment's file errors print as one
# line; anything else is a bug or a broken setup and keeps its traceback.
USER_ERRORS = (UserInputError, OSError)
#: How long a rank other than 0 waits before printing a user error under MPI (rank 0's abort usually comes first).
_MPI_ERROR_GRACE_SECONDS = 3.0

#: Counts that must be integers >= 1 (steps, batch sizes, samples...).
POSITIVE_INT = click.IntRange(min=1)


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which pass any bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


#: Temperatures, time steps: finite and > 0.
FINITE_POSITIVE = _FiniteFloat(min=0, min_open=True)
#: Friction: finite and >= 0.
FINITE_NON_NEGATIVE = _FiniteFloat(min=0)


def _user_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message
            rank, size = _mpi_rank_and_size()
            mpi = sys.modules.get("mpi4py.MPI")  # under mpirun the other ranks would wait forever for this one
            if rank > 0 and mpi is None:
                sys.exit(2)  # before MPI starts every rank runs the same code on the same input: rank 0 says it
            if rank > 0:
                # Bad input usually fails on every rank alike: rank 0 prints it and aborts the job first; a
                # rank that fails alone still gets to say why after this pause.
                time.sleep(_MPI_ERROR_GRACE_SECONDS)
            click.echo(f"error: {message}", err=True)
            if mpi is not None and size > 1:
                sys.stderr.flush()
                time.sleep(0.5)  # let mpirun relay the line: Abort tears down its output forwarding (lost 1 run in ~5)
                mpi.COMM_WORLD.Abort(2)
            sys.exit(2)

    return wrapper


def _mpi_rank_and_size():
    """This process's MPI rank and the job size: from mpi4py if it is loaded, else from the launcher's environment."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()
    for rank_name, size_name in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):  # MPICH, Open MPI
        if rank_name in os.environ:
            try:
                return int(os.environ[rank_name]), int(os.environ.get(size_name, "1"))
            except ValueError:
                break
    return 0, 1


_FILE = click.Path(dir_okay=False)

_SYSTEM_OPTIONS = (
    click.argument("system", required=False, default=None),
    click.option("--system", "system_name", default=None, help="A registered system (see `openmm-flowplugin systems`)."),
    click.option("--pdb", type=_FILE, default=None, help="PDB file: with --forcefield, or the coordinates for --system-xml."),
    click.option("--forcefield", multiple=True, help="OpenMM ForceField XML for --pdb (repeatable), e.g. amber14-all.xml."),
    click.option("--prmtop", type=_FILE, default=None, help="AMBER topology (with --inpcrd)."),
    click.option("--inpcrd", type=_FILE, default=None, help="AMBER coordinates (with --prmtop)."),
    click.option("--top", "gromacs_top", type=_FILE, default=None, help="GROMACS topology (with --gro)."),
    click.option("--gro", type=_FILE, default=None, help="GROMACS coordinates (with --top)."),
    click.option("--system-xml", type=_FILE, default=None, help="Serialized openmm.System (with --pdb for topology and positions)."),
)

_SYSTEM_KEYS = ("system", "system_name", "pdb", "forcefield", "prmtop", "inpcrd", "gromacs_top", "gro", "system_xml")


def _system_options(command, positional):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        options = {key: kwargs.pop(key, None) for key in _SYSTEM_KEYS}
        return command(*args, molecular_system_options=options, **kwargs)

    for decorator in reversed(_SYSTEM_OPTIONS if positional else _SYSTEM_OPTIONS[1:]):
        wrapper = decorator(wrapper)
    return wrapper


def system_options(command):
    """Add ``[SYSTEM] | --system NAME | --pdb FILE --forcefield XML... | --prmtop --inpcrd | --top --gro | --system-xml --pdb``.

    The wrapped command receives one keyword, ``molecular_system_options``: a dict for :func:`load_system`.
    """
    return _system_options(command, positional=True)


def named_system_options(command):
    """As :func:`system_options`, without the positional SYSTEM (for commands whose argument is something else)."""
    return _system_options(command, positional=False)


def load_system(options, temperature=None, default_name=None):
    """The :class:`~openmm_flowplugin.systems.MolecularSystem` the system options describe.

    ``default_name`` (e.g. the system stored in a checkpoint) is used when no option names a system.
    """
    from .. import systems

    options = dict(options)
    positional, named = options.pop("system", None), options.pop("system_name", None)
    if positional and named and positional != named:
        raise InvalidInputError(f"the system is given twice: SYSTEM {positional!r} and --system {named!r}; give one.")
    name = positional or named
    files = {key: value for key, value in options.items() if value}
    if name and files:
        raise InvalidInputError(f"give either a registered system ({name!r}) or input files ({', '.join('--' + k.replace('_', '-') for k in files)}), not both.")
    kwargs = {} if temperature is None else {"temperature": temperature}
    if name or not files:
        name = name or default_name
        if name is None:
            raise InvalidInputError(
                "no system given: name a registered system (`openmm-flowplugin systems`) or pass files: "
                "--pdb FILE --forcefield XML..., --prmtop FILE --inpcrd FILE, --top FILE --gro FILE, or --system-xml FILE --pdb FILE."
            )
        return systems.get(name, **kwargs)
    from ..systems.from_files import from_files

    return from_files(
        pdb=files.get("pdb"),
        forcefield=tuple(files.get("forcefield", ())) or None,
        prmtop=files.get("prmtop"),
        inpcrd=files.get("inpcrd"),
        top=files.get("gromacs_top"),
        gro=files.get("gro"),
        system_xml=files.get("system_xml"),
        **kwargs,
    )


def _element_symbols(topology):
    return [getattr(atom.element, "symbol", None) for atom in topology.atoms]


def _load_trajectories(paths, molecular_system):
    """Frames (n, n_atoms, 3) nm of mdtraj-readable trajectories; one-line errors for missing, unreadable or empty files."""
    import mdtraj
    import numpy as np

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"trajectory {path} not found.")
        try:
            if str(path).endswith(".h5"):
                trajectory = mdtraj.load(path)
            else:
                trajectory = mdtraj.load(path, top=molecular_system.mdtraj_topology)
        except Exception as error:  # mdtraj raises many types for unreadable files
            raise InvalidInputError(f"cannot read trajectory {path}: {type(error).__name__}: {error}") from None
        if trajectory.n_frames == 0:
            raise InvalidInputError(f"trajectory {path} has no frames.")
        if trajectory.n_atoms != molecular_system.n_atoms:
            raise InvalidInputError(f"{path} has {trajectory.n_atoms} atoms but {molecular_system.name} has {molecular_system.n_atoms}.")
        elements, expected = (_element_symbols(t) for t in (trajectory.topology, molecular_system.mdtraj_topology))
        if elements != expected:  # a file with its own topology (.h5) of another molecule with as many atoms
            i = next(i for i, (a, b) in enumerate(zip(elements, expected)) if a != b)
            raise InvalidInputError(f"{path} holds another molecule: its atom {i} is {elements[i]}, {molecular_system.name}'s is {expected[i]}.")
        broken = np.flatnonzero(~np.isfinite(trajectory.xyz).all(axis=(1, 2)))
        if len(broken):
            raise InvalidInputError(f"{path} has {len(broken)} frames with non-finite coordinates (the first: frame {broken[0]}); "
                                    "drop them or use another trajectory.")
        frames.append(trajectory.xyz)
    return np.concatenate(frames)
