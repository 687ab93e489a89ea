"""Checkpoints of a run and what resuming it needs: the run record, written atomically beside the checkpoint.

A checkpoint is OpenMM's :meth:`openmm.Context.createCheckpoint`: the exact state (positions,
velocities, step count, time, random-number generator), loadable only with the same System,
platform and OpenMM version. The run record, ``<checkpoint>.json``, is plain data written once when
the run starts: the settings the frames depend on (interval, timestep, temperature, friction), the
system's atom count and fingerprint, and the trajectory and log paths (relative to the record). The
step reached is the checkpoint's own step count, so record and checkpoint can never disagree.
"""

__all__ = ["RECORD_FORMAT", "record_path", "write_record", "read_record", "save_checkpoint", "check_resumable", "truncate_log"]

import json
import math
import os
from pathlib import Path

from ..outputs import atomic_output_path
from ..errors import InvalidInputError

#: Stored in every run record; a record with another value is refused.
RECORD_FORMAT = "openmm_flowplugin.simulate/1"


def record_path(checkpoint):
    """The run record beside ``checkpoint``: ``<checkpoint>.json``.

    Examples
    --------
    >>> record_path("runs/ala2.chk").name
    'ala2.chk.json'
    """
    return Path(f"{checkpoint}.json")


def _relative(path, base):
    return os.path.relpath(Path(path).resolve(), Path(base).resolve().parent)


def write_record(checkpoint, record, overwrite=False):
    """Write the run record of ``checkpoint`` atomically; paths in ``record["output"]``/``["log"]`` become relative."""
    target = record_path(checkpoint)
    record = dict(record, format=RECORD_FORMAT)
    for key in ("output", "log"):
        if record.get(key) is not None:
            record[key] = _relative(record[key], target)
    with atomic_output_path(target, overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return target


def read_record(checkpoint):
    """The run record of ``checkpoint`` (paths made absolute again); one-line errors if it is missing or not ours."""
    checkpoint, target = Path(checkpoint), record_path(checkpoint)
    if not checkpoint.is_file():
        hint = (f" ({target} exists: the run stopped before its first checkpoint; start it again with --overwrite)"
                if target.is_file() else " (a run writes it when started with --checkpoint)")
        raise FileNotFoundError(f"cannot resume: checkpoint {checkpoint} not found{hint}.")
    if not target.is_file():
        raise FileNotFoundError(f"cannot resume: {target}, the run record written beside checkpoint {checkpoint}, is missing.")
    try:
        record = json.loads(target.read_text())
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"cannot resume: run record {target} is unreadable ({error}).") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise InvalidInputError(f"cannot resume: {target} is not a run record of openmm-flowplugin simulate ({RECORD_FORMAT}).")
    for key in ("output", "log"):
        if record.get(key) is not None:
            record[key] = str((target.resolve().parent / record[key]).resolve())
    return record


def save_checkpoint(simulation, checkpoint):
    """Write ``simulation``'s exact state to ``checkpoint`` (temporary file, then rename)."""
    data = simulation.context.createCheckpoint()
    with atomic_output_path(checkpoint, overwrite=True) as tmp:
        tmp.write_bytes(data)


def check_resumable(record, checkpoint, molecular_system, output, settings):
    """Refuse, in one line, a resume of ``record`` with another system, output or settings.

    ``settings`` maps record keys (``report_interval``, ``timestep_ps``, ``temperature_K``,
    ``friction_per_ps``) to the values of this call.
    """
    name = record.get("system") or "another system"
    if record.get("n_atoms") != molecular_system.n_atoms:
        raise InvalidInputError(f"cannot resume: checkpoint {checkpoint} belongs to {name} with {record.get('n_atoms')} atoms, "
                         f"but {molecular_system.name} has {molecular_system.n_atoms}.")
    if record.get("fingerprint") not in (None, molecular_system.fingerprint):
        raise InvalidInputError(f"cannot resume: checkpoint {checkpoint} belongs to {name}, whose atoms (elements, masses) "
                         f"differ from {molecular_system.name}'s.")
    if record.get("output") is None or Path(record["output"]) != Path(output).resolve():
        raise InvalidInputError(f"cannot resume: checkpoint {checkpoint} belongs to the run writing {record.get('output')}, "
                         f"not {output}; pass that output.")
    for key, value in settings.items():
        stored = record.get(key)
        if stored is None or (stored != value if isinstance(value, int) else not math.isclose(stored, value, rel_tol=1e-9)):
            option = {"report_interval": "--interval", "timestep_ps": "--timestep", "temperature_K": "--temperature",
                      "friction_per_ps": "friction"}.get(key, key)
            raise InvalidInputError(f"cannot resume: checkpoint {checkpoint} was written with {key}={stored}, "
                             f"this call has {value}; resume with the same {option}.")


def truncate_log(log, step):
    """Drop the rows of a StateDataReporter log written after ``step`` (and a half-written last row)."""
    log = Path(log)
    lines = log.read_text().splitlines(keepends=True)
    if not lines or not lines[0].startswith("#"):
        return
    names = [name.strip('"') for name in lines[0][1:].strip().split(",")]
    if "Step" not in names:
        raise InvalidInputError(f"cannot cut log {log} back to step {step}: its header has no \"Step\" column.")
    column = names.index("Step")
    kept = [lines[0]]
    for line in lines[1:]:
        fields = line.rstrip("\n").split(",")
        if not line.endswith("\n") or len(fields) <= column or not fields[column].isdigit() or int(fields[column]) > step:
            break
        kept.append(line)
    with atomic_output_path(log, overwrite=True) as tmp:
        tmp.write_text("".join(kept))
