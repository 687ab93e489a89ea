"""The object returned by :func:`openmm_flowplugin.systems.get`."""

__all__ = ["MolecularSystem", "system_fingerprint", "system_bond_graph", "fingerprint_matches"]

import hashlib
from dataclasses import dataclass, field

import numpy as np
import openmm
from openmm import app, unit

from ..units import kelvin


@dataclass
class MolecularSystem:
    """A ready-made molecular system: OpenMM System, Topology, positions and temperature.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"alanine_dipeptide_vacuum"``.
    system : openmm.System
    topology : openmm.app.Topology
    positions : openmm.unit.Quantity, shape=(n_atoms, 3)
        A valid starting configuration (nm).
    temperature : openmm.unit.Quantity
        The temperature references and pretrained models were made for.
    description : str
    reference : object or None
        Exact reference density for the toy systems (:class:`~openmm_flowplugin.references.GaussianReference`
        or :class:`~openmm_flowplugin.references.PlanarReference`), ``None`` for molecules.
    options : dict
        The builder options this instance was made with.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> ho = systems.get("harmonic_oscillator")
    >>> ho.n_atoms
    1
    """

    name: str
    system: openmm.System
    topology: app.Topology
    positions: unit.Quantity
    temperature: unit.Quantity
    description: str = ""
    reference: object = None
    options: dict = field(default_factory=dict)

    @property
    def n_atoms(self):
        """Number of particles."""
        return self.system.getNumParticles()

    @property
    def kT(self):
        """Thermal energy at :attr:`temperature` in kJ/mol."""
        return unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * kelvin(self.temperature)

    @property
    def positions_nm(self):
        """Starting positions as a float64 array of shape (n_atoms, 3) in nm."""
        return np.asarray(self.positions.value_in_unit(unit.nanometer), dtype=np.float64)

    @property
    def mdtraj_topology(self):
        """The topology as an :class:`mdtraj.Topology`."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.topology)

    @property
    def n_constraints(self):
        """Number of holonomic constraints in the System."""
        return self.system.getNumConstraints()

    @property
    def fingerprint(self):
        """sha256 of atom count, elements, masses and bond graph: identifies the molecule in checkpoints."""
        return system_fingerprint(self.system, self.topology)

    def thermodynamic_state(self, temperature=None, pressure=None):
        """An openmmtools ``ThermodynamicState`` for this system (default: :attr:`temperature`)."""
        from .._quiet import quiet_banners

        with quiet_banners():
            from openmmtools import states

        temperature = self.temperature if temperature is None else temperature
        if not unit.is_quantity(temperature):
            temperature = temperature * unit.kelvin
        return states.ThermodynamicState(self.system, temperature=temperature, pressure=pressure)

    def sampler_state(self, positions=None):
        """An openmmtools ``SamplerState`` at ``positions`` (default: the starting positions)."""
        from .._quiet import quiet_banners

        with quiet_banners():
            from openmmtools import states

        positions = self.positions if positions is None else positions
        if not unit.is_quantity(positions):
            positions = unit.Quantity(np.asarray(positions, dtype=np.float64), unit.nanometer)
        return states.SamplerState(positions, box_vectors=self.system.getDefaultPeriodicBoxVectors())


def system_bond_graph(system):
    """Bonds of ``system`` as a sorted list of (i, j), i < j: every bond of its bond forces, and its constraints.

    Taken from the System, not the Topology, so a PDB without CONECT records or a System XML gives the
    same graph as the force field that made it.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> len(system_bond_graph(systems.get("alanine_dipeptide_vacuum").system))
    21
    """
    bonds = set()
    for force in system.getForces():
        if hasattr(force, "getNumBonds") and hasattr(force, "getBondParameters"):
            for k in range(force.getNumBonds()):
                i, j = force.getBondParameters(k)[:2]
                bonds.add((min(i, j), max(i, j)))
    for k in range(system.getNumConstraints()):
        i, j, _ = system.getConstraintParameters(k)
        bonds.add((min(i, j), max(i, j)))
    return sorted(bonds)


def system_fingerprint(system, topology=None):
    """``"v2:"`` + sha256 hex digest of particle count, elements (if a topology is given), masses and bond graph."""
    digest = hashlib.sha256(b"v2")
    _digest_atoms(digest, system, topology)
    digest.update(repr(system_bond_graph(system)).encode())
    return "v2:" + digest.hexdigest()


def _fingerprint_v1(system, topology=None):
    """The fingerprint of version 0.1 (no bonds), which checkpoints written then carry."""
    digest = hashlib.sha256()
    _digest_atoms(digest, system, topology)
    return digest.hexdigest()


def _digest_atoms(digest, system, topology):
    digest.update(str(system.getNumParticles()).encode())
    if topology is not None:
        for atom in topology.atoms():
            digest.update((atom.element.symbol if atom.element is not None else "X").encode())
    for i in range(system.getNumParticles()):
        digest.update(f"{system.getParticleMass(i).value_in_unit(unit.dalton):.4f}".encode())


def fingerprint_matches(fingerprint, system, topology=None, bonds=None):
    """Whether a stored ``fingerprint`` (and, if given, a model's ``bonds``) fit ``system``.

    A 0.1 fingerprint (no ``"v2:"`` prefix) covers atoms only, so the bonds a flow was built on are
    compared with the System's bond graph as well whenever they are known.
    """
    if bonds is not None and sorted((min(i, j), max(i, j)) for i, j in bonds) != system_bond_graph(system):
        return False
    if fingerprint is None:
        return True
    if fingerprint.startswith("v2:"):
        return fingerprint == system_fingerprint(system, topology)
    return fingerprint == _fingerprint_v1(system, topology)
