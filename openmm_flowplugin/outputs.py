"""One overwrite policy for every file the package writes (trajectories, checkpoints, plots, tables).

- An existing file is never replaced unless ``overwrite=True`` (``--overwrite`` on the command line).
- The location is checked before long work starts: the parent must be a writable directory (created
  if missing), and the path must not be a directory (:func:`check_output_path`).
- Files are written to a temporary name beside the target and moved into place when complete
  (:func:`atomic_output_path`). Without ``overwrite`` the move is an exclusive create (a hard link,
  or ``O_EXCL`` where links are not supported), so of two processes writing the same path only one
  succeeds; the other gets ``FileExistsError``.
- Temporary files are named ``.<name>.partial-<pid>-<random><suffix>``. A run that was killed leaves
  one behind; the next run that writes the same path removes it if its process is gone and says so
  (a warning naming the file).
"""

__all__ = ["check_output_path", "atomic_output_path", "partial_files", "OutputExistsError"]

import contextlib
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The output file exists and overwriting was not asked for."""


def _partial_pattern(path):
    return re.compile(rf"^\.{re.escape(path.stem)}\.partial-(\d+)-[0-9a-f]+{re.escape(path.suffix)}$")


def partial_files(path):
    """``[(temporary path, pid, alive)]``: temporary files left beside ``path`` by runs writing it."""
    path = Path(path)
    pattern = _partial_pattern(path)
    found = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            match = pattern.match(candidate.name)
            if match:
                pid = int(match.group(1))
                found.append((candidate, pid, _alive(pid)))
    return found


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_partials(path):
    for candidate, pid, alive in partial_files(path):
        if not alive:
            with contextlib.suppress(OSError):
                candidate.unlink()
            warnings.warn(f"removed {candidate}, left by an interrupted run (process {pid}) writing {path}.", stacklevel=3)


def check_output_path(path, overwrite=False):
    """Check, before long work, that ``path`` can be written; return it as a :class:`~pathlib.Path`.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    IsADirectoryError, NotADirectoryError, PermissionError
        ``path`` is a directory, its parent is a file, or the parent is not writable.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_output_path(folder / "new.h5").name
    'new.h5'
    >>> (folder / "old.h5").write_text("data") and None
    >>> check_output_path(folder / "old.h5")
    Traceback (most recent call last):
    ...
    openmm_flowplugin.outputs.OutputExistsError: ...old.h5 already exists; choose another output name or pass overwrite=True (--overwrite).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a directory; give a file name inside it.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another output name or pass overwrite=True (--overwrite).")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {ancestor} is a file, not a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: directory {ancestor} is not writable; choose another output location.")
    _clean_stale_partials(path)
    return path


@contextlib.contextmanager
def atomic_output_path(path, overwrite=False):
    """Yield a temporary path beside ``path``; move it to ``path`` if the block succeeds.

    The temporary name keeps ``path``'s suffix (writers such as mdtraj dispatch on it). Without
    ``overwrite`` the final move is an exclusive create: if another process wrote ``path`` in the
    meantime, :class:`OutputExistsError` is raised and its file is kept.
    """
    path = check_output_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _exclusive_move(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _exclusive_move(tmp, path):
    try:
        os.link(tmp, path)  # fails if path exists: exclusive on POSIX filesystems
    except FileExistsError:
        raise OutputExistsError(f"{path} was created by another process while this one was writing it; kept that file.") from None
    except OSError:  # filesystems without hard links
        try:
            with open(path, "xb") as target, open(tmp, "rb") as source:
                shutil.copyfileobj(source, target)
        except FileExistsError:
            raise OutputExistsError(f"{path} was created by another process while this one was writing it; kept that file.") from None
    tmp.unlink()
