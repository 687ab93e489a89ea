"""Registry of ready-made systems: ``list``, ``get``, ``register``, ``describe``, ``data_path``.

Builders and their input files live in the top-level ``systems/`` folder of the repository,
installed as the package ``openmm_flowplugin._systems``.

Examples
--------
>>> from openmm_flowplugin import systems
>>> "alanine_dipeptide_vacuum" in systems.list()
True
>>> ala2 = systems.get("alanine_dipeptide_vacuum")
>>> ala2.n_atoms, ala2.n_constraints
(22, 0)
"""

__all__ = ["list", "get", "register", "describe", "data_path"]

import importlib
from importlib import resources
from ..errors import InvalidInputError, UnknownNameError

_SYSTEMS_PACKAGE = "openmm_flowplugin._systems"

# name -> ("module:function", one-line description)
_REGISTRY = {
    "alanine_dipeptide_vacuum": (
        "alanine_dipeptide:alanine_dipeptide_vacuum",
        "Alanine dipeptide, AMBER ff96, vacuum, no constraints (22 atoms); = openmmtools AlanineDipeptideVacuum(constraints=None)",
    ),
    "alanine_dipeptide_implicit": (
        "alanine_dipeptide:alanine_dipeptide_implicit",
        "Alanine dipeptide, AMBER ff96, OBC implicit solvent, no constraints (22 atoms); = openmmtools AlanineDipeptideImplicit(constraints=None)",
    ),
    "harmonic_oscillator": (
        "toy_potentials:harmonic_oscillator",
        "Particles in an isotropic 3D harmonic well; exact Gaussian reference",
    ),
    "double_well_2d": (
        "toy_potentials:double_well_2d",
        "One particle in a double well along x, harmonic in y, z restrained; exact reference by quadrature",
    ),
    "mueller_brown": (
        "toy_potentials:mueller_brown",
        "One particle on the Mueller-Brown surface (x, y), z restrained; exact reference by quadrature",
    ),
}

#: One-letter code -> residue name of the 20 standard amino acids, the dipeptides' mutations (PDBFixer, amber14).
DIPEPTIDE_RESIDUES = {"A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS",
                      "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER", "T": "THR", "W": "TRP",
                      "Y": "TYR", "V": "VAL"}

# Capped dipeptides as Timewarp's 2AA set: dipeptide_ser (amber14 + OBC1, 310 K), dipeptide_ser_vacuum, ...
for _residue in sorted(DIPEPTIDE_RESIDUES.values()):
    _REGISTRY[f"dipeptide_{_residue.lower()}"] = (
        "dipeptides:dipeptide",
        f"ACE-{_residue}-NME mutated from alanine dipeptide (PDBFixer), amber14 + OBC1, 310 K, no constraints",
        {"residue": _residue},
    )
    _REGISTRY[f"dipeptide_{_residue.lower()}_vacuum"] = (
        "dipeptides:dipeptide",
        f"ACE-{_residue}-NME mutated from alanine dipeptide (PDBFixer), amber14, vacuum, 310 K, no constraints",
        {"residue": _residue, "implicit_solvent": False},
    )


def register(name, builder, description=""):
    """Register a builder ``builder(**options) -> MolecularSystem`` under ``name``.

    ``builder`` may be a callable or a ``"module:function"`` string relative to ``openmm_flowplugin._systems``.
    """
    _REGISTRY[name] = (builder, description)


def list():  # noqa: A001 - the registry API is systems.list(), like a user expects
    """Names of the registered systems, sorted."""
    return sorted(_REGISTRY)


def describe():
    """``{name: description}`` for every registered system."""
    return {name: _REGISTRY[name][1] for name in list()}


def _builder(name):
    if name not in _REGISTRY:
        raise UnknownNameError(f"Unknown system {name!r}. Registered systems: {', '.join(list())}.")
    builder = _REGISTRY[name][0]
    if isinstance(builder, str):
        module_name, function_name = builder.split(":")
        module = importlib.import_module(f"{_SYSTEMS_PACKAGE}.{module_name}")
        builder = getattr(module, function_name)
    return builder


def get(name, **options):
    """Build the registered system ``name``.

    Parameters
    ----------
    name : str
        One of :func:`list`.
    **options
        Builder options (e.g. ``temperature``, ``energy_scale``); see the builders in ``systems/``.

    Returns
    -------
    MolecularSystem
    """
    fixed = _REGISTRY[name][2] if name in _REGISTRY and len(_REGISTRY[name]) > 2 else {}
    clashes = sorted(key for key in fixed if key in options and options[key] != fixed[key])
    if clashes:
        raise InvalidInputError(f"system {name!r} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clashes)}; pick the registered name "
                                "for what you want instead (see systems.list()).")
    system = _builder(name)(**{**fixed, **options})
    system.name = name
    return system


def data_path(*parts):
    """Path of a file shipped in ``systems/`` (e.g. ``data_path("models", "x.pt")``)."""
    return resources.files(_SYSTEMS_PACKAGE).joinpath(*parts)


