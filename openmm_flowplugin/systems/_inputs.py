"""Input checks and ``createSystem`` plumbing for :func:`~openmm_flowplugin.systems.from_files`."""

__all__ = ["choose_source", "option_name", "source_inputs", "checked_file", "read", "one_line", "method_name", "build_options",
           "create_system", "check_box",
           "nm_positions", "periodic_box", "set_box"]

import os
from pathlib import Path

import numpy as np
import openmm
from openmm import unit
from ..errors import InvalidInputError

_FLAGS = {"pdb": "--pdb", "forcefield": "--forcefield", "prmtop": "--prmtop", "inpcrd": "--inpcrd", "top": "--top",
          "gro": "--gro", "system_xml": "--system-xml"}

# source -> the inputs it needs (checked in this order)
_SOURCES = {"forcefield": ("pdb", "forcefield"), "amber": ("prmtop", "inpcrd"), "gromacs": ("top", "gro"),
            "system_xml": ("system_xml", "pdb")}

_NEEDS = {
    "prmtop": ("inpcrd", "pass the AMBER coordinates (.inpcrd, .rst7 or .crd) that go with it"),
    "inpcrd": ("prmtop", "pass the AMBER topology (.prmtop/.parm7) the coordinates belong to"),
    "top": ("gro", "pass the GROMACS coordinates (.gro) that go with it"),
    "gro": ("top", "pass the GROMACS topology (.top) the coordinates belong to"),
    "forcefield": ("pdb", "pass the structure to parametrize"),
    "system_xml": ("pdb", "pass a PDB of the same atoms for the topology and positions"),
}

_CHOICES = {
    "constraints": ("None", "HBonds", "AllBonds", "HAngles"),
    "nonbonded_method": ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME", "LJPME"),
    "implicit_solvent": ("OBC1", "OBC2", "GBn", "GBn2", "HCT"),
}
_PERIODIC_METHODS = ("CutoffPeriodic", "Ewald", "PME", "LJPME")

# snake_case spellings whose camelCase is not the plain conversion
_CAMEL = {"remove_cm_motion": "removeCMMotion"}
# bare numbers of these createSystem arguments are in these units
_UNITS = {"nonbondedCutoff": unit.nanometer, "switchDistance": unit.nanometer, "hydrogenMass": unit.dalton,
          "drudeMass": unit.dalton, "implicitSolventSaltConc": unit.molar, "implicitSolventKappa": unit.nanometer**-1,
          "temperature": unit.kelvin}
_NAMED = {"constraints": "constraints", "nonbondedMethod": "nonbonded_method", "implicitSolvent": "implicit_solvent"}


def option_name(key):
    """``"prmtop (--prmtop)"``: the Python and command-line names of an input."""
    return f"{key} ({_FLAGS[key]})"


def source_inputs(source):
    """``"prmtop (--prmtop) and inpcrd (--inpcrd)"``: the inputs of a source."""
    return " and ".join(option_name(key) for key in _SOURCES[source])


def choose_source(inputs):
    """The one source (``"forcefield"``, ``"amber"``, ``"gromacs"``, ``"system_xml"``) that ``inputs`` describe."""
    given = {key for key, value in inputs.items() if value is not None and not (isinstance(value, (tuple, list)) and not value)}
    if not given:
        raise InvalidInputError("no input files: pass " + ", or ".join(source_inputs(source) for source in _SOURCES) + ".")
    for key, (needed, fix) in _NEEDS.items():
        if key in given and needed not in given:
            raise InvalidInputError(f"{option_name(key)} needs {option_name(needed)}: {fix}.")
    if {"forcefield", "system_xml"} <= given:
        raise InvalidInputError("forcefield (--forcefield) and system_xml (--system-xml) both define the System of pdb (--pdb); give one.")
    sources = [source for source, keys in _SOURCES.items() if set(keys) <= given]
    if not sources:  # only pdb is left
        raise InvalidInputError("pdb (--pdb) needs forcefield (--forcefield XML ...) to build a System, "
                         "or system_xml (--system-xml) for a serialized one.")
    if len(sources) > 1:
        described = "; ".join(source_inputs(source) for source in sources)
        raise InvalidInputError(f"the inputs describe more than one system ({described}); give one source.")
    extra = sorted(given - set(_SOURCES[sources[0]]))
    if extra:
        raise InvalidInputError(f"{', '.join(option_name(key) for key in extra)} does not go with {source_inputs(sources[0])}; "
                         "give one source.")
    return sources[0]


def checked_file(path, key):
    """``path`` as an absolute :class:`~pathlib.Path`, or a one-line ``ValueError`` if it is not a readable file."""
    resolved = Path(path).expanduser().resolve()
    where = f"{option_name(key)} {path}"
    if not resolved.exists():
        raise InvalidInputError(f"{where} not found; check the path.")
    if not resolved.is_file():
        raise InvalidInputError(f"{where} is not a file; give the path of the file.")
    if not os.access(resolved, os.R_OK):
        raise InvalidInputError(f"{where} cannot be read (permission denied).")
    if resolved.stat().st_size == 0:
        raise InvalidInputError(f"{where} is empty.")
    return resolved


def one_line(error):
    """An exception's message on one line, with its type unless it is a ``ValueError``."""
    text = " ".join(str(error).split()).rstrip(".") or "no message"
    if len(text) > 400:
        text = text[:400] + " ..."
    return text if type(error) is ValueError else f"{type(error).__name__}: {text}"


def read(reader, path, key, what):
    """``reader(str(path))``; a one-line ``ValueError`` naming the option if it fails."""
    try:
        return reader(str(path))
    except Exception as error:  # OpenMM's readers raise IndexError, KeyError, TypeError... on bad files
        raise InvalidInputError(f"cannot read {option_name(key)} {path} as {what}: {one_line(error)}.") from None


def method_name(value, kind):
    """The OpenMM name (``"PME"``, ``"HBonds"``, ``"OBC1"``) of an ``openmm.app`` constant or a string; None for None."""
    if value is None:
        return None
    text = str(value)
    for choice in _CHOICES[kind]:
        if text.lower() == choice.lower():
            return None if choice == "None" else choice
    raise InvalidInputError(f"{kind}={value!r} is not one of {', '.join(_CHOICES[kind])}.")


def _camel(key):
    if key in _CAMEL:
        return _CAMEL[key]
    first, *rest = key.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def build_options(constraints, nonbonded_method, create_system_options):
    """``createSystem`` keyword arguments (camelCase, Quantities) and the settings to record."""
    from openmm import app

    kwargs = {}
    for key, value in create_system_options.items():
        camel = _camel(key)
        if camel in _NAMED:
            raise InvalidInputError(f"pass {_NAMED[camel]}=..., not {key}=....")
        if camel in kwargs:
            raise InvalidInputError(f"{key} is given twice (as {camel} and in snake_case); give it once.")
        if camel in _UNITS and value is not None and not unit.is_quantity(value) and not isinstance(value, bool):
            value = value * _UNITS[camel]
        kwargs[camel] = value
    constraints = method_name(constraints, "constraints")
    kwargs["constraints"] = None if constraints is None else getattr(app, constraints)
    if constraints is None:
        kwargs.setdefault("rigidWater", False)  # a flow moves every atom: no rigid water either
    return {"kwargs": kwargs, "nonbonded_method": method_name(nonbonded_method, "nonbonded_method"),
            "constraints": constraints, "given": dict(create_system_options)}


def create_system(create, options, periodic, label, *args):
    """Call ``create(*args, nonbondedMethod=..., **kwargs)``; return ``(system, settings)``."""
    from openmm import app

    method = options["nonbonded_method"] or ("PME" if periodic else "NoCutoff")
    if method in _PERIODIC_METHODS and not periodic:
        raise InvalidInputError(f"nonbonded_method={method} needs a periodic box, but {label} has none; use NoCutoff or "
                         "CutoffNonPeriodic, or give input with a box (PDB CRYST1 record, AMBER box, GROMACS box line).")
    try:
        system = create(*args, nonbondedMethod=getattr(app, method), **options["kwargs"])
    except TypeError as error:  # an argument this createSystem does not take
        raise InvalidInputError(f"cannot build a System from {label}: {one_line(error)}; see the createSystem arguments "
                         "of the OpenMM reader for this file type.") from None
    except Exception as error:  # e.g. no template for a residue, missing parameters
        raise InvalidInputError(f"cannot build a System from {label}: {one_line(error)}.") from None
    settings = {"nonbonded_method": method, "constraints": options["constraints"], **options["given"]}
    return system, settings


def check_box(system, files):
    """One-line ``ValueError`` if the periodic box is narrower than twice a periodic cutoff (OpenMM would fail later)."""
    if not system.usesPeriodicBoundaryConditions():
        return
    a, b, c = system.getDefaultPeriodicBoxVectors()
    width = min(a[0], b[1], c[2]).value_in_unit(unit.nanometer)
    for force in system.getForces():
        if hasattr(force, "getCutoffDistance") and force.usesPeriodicBoundaryConditions():
            cutoff = force.getCutoffDistance().value_in_unit(unit.nanometer)
            if 2 * cutoff > width:
                inputs = ", ".join(Path(path).name for path in files.values())
                raise InvalidInputError(
                    f"the periodic box of {inputs} is {width:.3g} nm wide, less than twice the {cutoff:.3g} nm cutoff of "
                    f"{type(force).__name__} (a placeholder CRYST1 or box line?). For a molecule in vacuum pass "
                    "nonbonded_method='NoCutoff' or remove the box; otherwise give the real box or a shorter "
                    "nonbonded_cutoff."
                )


def nm_positions(positions):
    """Positions as a float64 (n_atoms, 3) array Quantity in nm."""
    return unit.Quantity(np.asarray(positions.value_in_unit(unit.nanometer), dtype=np.float64).reshape(-1, 3), unit.nanometer)


def periodic_box(box):
    """Box vectors as a Quantity, or None for a missing or all-zero box."""
    if box is None:
        return None
    vectors = np.asarray([[float(x) for x in vector.value_in_unit(unit.nanometer)] for vector in box])
    return None if not np.any(vectors) else [openmm.Vec3(*row) for row in vectors] * unit.nanometer


def set_box(system, topology, box):
    """Make ``box`` the default box of a periodic ``system`` and of ``topology``."""
    if box is not None and system.usesPeriodicBoundaryConditions():
        system.setDefaultPeriodicBoxVectors(*box)
        topology.setPeriodicBoxVectors(box)
