"""Trajectory files a run writes and resumes: the formats by extension, counting and truncating frames.

A run killed between checkpoints leaves frames past its last checkpoint (and, at worst, half a
frame). Resuming cuts the file back to the checkpoint's frame count in place, so the reporters can
append: DCD frames have a fixed size (cut at ``header + k * frame``, then fix the header's frame
count); XTC frames are found through mdtraj's frame offsets; HDF5 arrays are truncated with
PyTables. Nothing is rewritten, so a resume costs the same for a 10 GB file as for a small one.
"""

__all__ = ["TRAJECTORY_FORMATS", "check_trajectory_format", "count_frames", "truncate_frames", "load_frames"]

import contextlib
import os
import struct
import sys
from pathlib import Path
from ..errors import InvalidInputError

#: Extensions a run can write, and the reporter that writes each.
TRAJECTORY_FORMATS = {
    ".dcd": "DCD (openmm.app.DCDReporter)",
    ".xtc": "XTC (openmm.app.XTCReporter)",
    ".h5": "HDF5 (mdtraj.reporters.HDF5Reporter)",
}


def check_trajectory_format(path):
    """The lower-case extension of ``path`` if a run can write it; a one-line ValueError otherwise.

    Examples
    --------
    >>> check_trajectory_format("run.DCD")
    '.dcd'
    >>> check_trajectory_format("run.pdb")
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: cannot write a trajectory to run.pdb: supported extensions are .dcd, .xtc, .h5.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in TRAJECTORY_FORMATS:
        raise InvalidInputError(f"cannot write a trajectory to {path}: supported extensions are {', '.join(TRAJECTORY_FORMATS)}.")
    return suffix


# --- DCD: 92-byte first block, a title block whose size is stored at byte 92, a 12-byte atom-count block;
# --- then per frame an optional 56-byte unit-cell block and three (4 + 4 n + 4)-byte coordinate blocks.


def _dcd_layout(handle):
    handle.seek(0)
    first = handle.read(92)
    if len(first) < 92 or first[4:8] != b"CORD" or struct.unpack("<i", first[:4])[0] != 84:
        raise InvalidInputError("not a DCD file written by OpenMM (bad header)")
    has_cell = struct.unpack("<i", first[48:52])[0] != 0
    (title_bytes,) = struct.unpack("<i", handle.read(4))
    handle.seek(104 + title_bytes)
    (n_atoms,) = struct.unpack("<i", handle.read(4))
    header = 112 + title_bytes
    frame = (56 if has_cell else 0) + 3 * (8 + 4 * n_atoms)
    return header, frame


def _dcd_count(path):
    with open(path, "rb") as handle:
        header, frame = _dcd_layout(handle)
    return max(0, (os.path.getsize(path) - header) // frame)


def _dcd_truncate(path, n_frames):
    with open(path, "r+b") as handle:
        header, frame = _dcd_layout(handle)
        handle.truncate(header + n_frames * frame)
        handle.seek(12)
        first_step, interval = struct.unpack("<ii", handle.read(8))
        handle.seek(8)
        handle.write(struct.pack("<i", n_frames))  # frame count, read back by DCDFile(append=True)
        handle.seek(20)
        handle.write(struct.pack("<i", first_step + (n_frames - 1) * interval if n_frames else 0))


def _xtc_offsets(path):
    """``(offsets, n_complete)``: byte offsets of the frames of an XTC file and how many are complete."""
    import mdtraj

    if os.path.getsize(path) == 0:  # DCDReporter and XTCReporter write nothing before the first frame
        return [], 0
    with mdtraj.formats.XTCTrajectoryFile(str(path)) as handle:
        offsets = [int(offset) for offset in handle.offsets]
        n_complete = len(offsets)
        if offsets:
            handle.seek(len(offsets) - 1)
            try:
                handle.read(n_frames=1)
            except (RuntimeError, OSError):  # the run was killed while writing this frame
                n_complete -= 1
    return offsets, n_complete


def _h5_count(path):
    import tables

    with tables.open_file(str(path), "r") as handle:
        return len(handle.root.coordinates) if "coordinates" in handle.root else 0


def _h5_truncate(path, n_frames):
    import tables

    with tables.open_file(str(path), "a") as handle:
        total = len(handle.root.coordinates) if "coordinates" in handle.root else 0
        for node in handle.root:
            if isinstance(node, tables.EArray) and node.shape and node.shape[0] == total:
                node.truncate(n_frames)


def count_frames(path):
    """Number of complete frames in a DCD, XTC or HDF5 trajectory (0 for an empty file)."""
    suffix = check_trajectory_format(path)
    if os.path.getsize(path) == 0:  # a run stopped before its first frame
        return 0
    try:
        if suffix == ".dcd":
            return _dcd_count(path)
        if suffix == ".xtc":
            return _xtc_offsets(path)[1]
        return _h5_count(path)
    except (OSError, ValueError, RuntimeError, struct.error) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        raise InvalidInputError(f"cannot read trajectory {path}: {lines[-1]}") from None  # HDF5 errors are a long trace


def truncate_frames(path, n_frames):
    """Cut the trajectory at ``path`` in place to its first ``n_frames`` frames (which must be complete)."""
    suffix = check_trajectory_format(path)
    if os.path.getsize(path) == 0:  # a run stopped before its first frame
        return
    if suffix == ".dcd":
        _dcd_truncate(path, n_frames)
    elif suffix == ".xtc":
        offsets, _ = _xtc_offsets(path)
        with open(path, "r+b") as handle:
            handle.truncate(offsets[n_frames] if n_frames < len(offsets) else os.path.getsize(path))
    else:
        _h5_truncate(path, n_frames)


def load_frames(path, topology):
    """The trajectory at ``path`` as an :class:`mdtraj.Trajectory` (``topology`` for DCD and XTC)."""
    import mdtraj

    suffix = check_trajectory_format(path)
    if suffix == ".h5":
        return mdtraj.load_hdf5(str(path))
    with _quiet_stdout() if suffix == ".dcd" else contextlib.nullcontext():
        return mdtraj.load(str(path), top=topology)


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (mdtraj's DCD plugin prints two lines from C on every read)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real descriptor 1 here: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
