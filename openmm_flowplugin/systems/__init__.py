"""Molecular systems: the registry of ready-made ones, your own from files, and exact references.

Examples
--------
>>> from openmm_flowplugin import systems
>>> "alanine_dipeptide_vacuum" in systems.list()
True
>>> systems.get("harmonic_oscillator").n_atoms
1

Your own molecule from input files (PDB + force field, AMBER, GROMACS, serialized System):
:func:`from_files`; :func:`check_flow_compatible` reports constraints and time steps a flow cannot use.
"""

from .molecular_system import MolecularSystem, system_fingerprint
from .compatibility import check_flow_compatible, check_md_timestep, max_unconstrained_timestep
from .from_files import from_files
from .registry import data_path, describe, get, list, register  # noqa: A004 (systems.list() is the API)

__all__ = ["list", "get", "register", "describe", "data_path", "MolecularSystem", "system_fingerprint", "from_files",
           "check_flow_compatible", "check_md_timestep", "max_unconstrained_timestep"]
