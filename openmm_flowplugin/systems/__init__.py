"""Molecular systems: the registry of ready-made ones, your own from files, and exact references.

Examples
--------
>>> from openmm_flowplugin import systems
>>> "alanine_dipeptide_vacuum" in systems.list()
True
>>> systems.get("harmonic_oscillator").n_atoms
1
"""

from .molecular_system import MolecularSystem, system_fingerprint
from .registry import data_path, describe, get, list, register  # noqa: A004 (systems.list() is the API)

__all__ = ["list", "get", "register", "describe", "data_path", "MolecularSystem", "system_fingerprint"]
