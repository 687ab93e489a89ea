"""The build's folders for :mod:`.small_molecules`: a scratch folder, and the ``workdir`` that keeps the files of
one molecule (recorded in ``<name>_build.json``) and refuses to overwrite another's."""

__all__ = ["build_identity", "default_name", "open_workdir", "keep_build"]

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from openmm_flowplugin.errors import InvalidInputError

_OUTPUT_SUFFIXES = ("rdkit.sdf", "input.mol2", "input.frcmod", "input.prmtop", "input.inpcrd", "gaff.mol2", "gaff2.mol2",
                    "gaff.frcmod", "gaff2.frcmod", "tleap_vacuum.in", "tleap_vacuum.log", "tleap_solvent.in",
                    "tleap_solvent.log", "solvated.pdb", "antechamber.log", "sqm.out", "parmchk2.log",
                    "cpptraj.in", "cpptraj.log", "solvent.prmtop", "solvent.inpcrd", "vacuum.prmtop", "vacuum.inpcrd",
                    "build.json")


def build_identity(source, inputs):
    if source == "smiles":
        return f"SMILES {inputs[0]}"
    if source == "water":
        return "TIP3P water"
    digest = hashlib.sha256(inputs[source].read_bytes()).hexdigest()[:16]
    return f"{source} {inputs[source].name} sha256:{digest}"


def default_name(source, inputs):
    if source == "smiles":
        return inputs[0] if re.fullmatch(r"[A-Za-z0-9]+", inputs[0]) else "molecule"
    return inputs[source].stem


def open_workdir(workdir, name, identity):
    """``(scratch folder, kept folder or None)``; refuses a folder holding other files with our names."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=f"openmm_flowplugin-{name}-")), None
    folder = Path(workdir).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"workdir {folder} is a file; give a folder (it is created if missing).")
    folder.mkdir(parents=True, exist_ok=True)
    existing = [f"{name}_{suffix}" for suffix in _OUTPUT_SUFFIXES if (folder / f"{name}_{suffix}").exists()]
    if existing:
        manifest = folder / f"{name}_build.json"
        try:
            previous = json.loads(manifest.read_text()).get("molecule") if manifest.is_file() else None
        except (ValueError, OSError):
            previous = None
        if previous != identity:
            origin = f"built from {previous}" if previous else "not written by small_molecule_solvation"
            raise InvalidInputError(f"workdir {folder} already holds {', '.join(existing[:3])} ({origin}), and this build "
                                    f"is {identity}: give another workdir or name=, or remove those files.")
    return Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=folder)), folder


def keep_build(scratch, folder, name, identity, settings):
    """Move this build's ``<name>_*`` files into ``folder`` and write its manifest (temp file, then rename)."""
    for path in scratch.iterdir():
        if path.name.startswith(f"{name}_") and path.is_file():
            os.replace(path, folder / path.name)
    manifest = folder / f"{name}_build.json"
    temporary = scratch / "build.json"
    temporary.write_text(json.dumps({"molecule": identity, "settings": settings}, indent=1, default=str))
    os.replace(temporary, manifest)
