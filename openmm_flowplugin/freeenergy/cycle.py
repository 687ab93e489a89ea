"""The two legs of a solvation free-energy cycle and the options that decide their Hamiltonian."""

__all__ = ["SolvationSystem"]

from dataclasses import dataclass, field

from openmm import unit

from ..errors import InvalidInputError
from ..systems.molecular_system import MolecularSystem


@dataclass
class SolvationSystem:
    """A solute in a solvent box and the same solute alone: the legs of ``ΔG_solv = ΔG_vacuum - ΔG_solvent``.

    In both legs the solute is decoupled from its surroundings (solvent leg) or has its intramolecular
    nonbonded interactions treated the same way (vacuum leg), so the cycle closes; the solvation free
    energy is the free energy of moving the solute from vacuum into the solvent.

    Attributes
    ----------
    name : str
        E.g. ``"methane"`` or ``"lj_solute"``.
    solvent : MolecularSystem
        Solute and solvent in a periodic box.
    vacuum : MolecularSystem or None
        The solute alone, its atoms in the order of :attr:`solute_atoms`; ``None`` where the vacuum leg
        contributes nothing (a single Lennard-Jones particle has no intramolecular interactions).
    solute_atoms : list of int
        Indices of the solute's atoms in :attr:`solvent`.
    pressure : openmm.unit.Quantity or None
        Pressure of the solvent leg (its System then holds a ``MonteCarloBarostat``); ``None``: NVT.
    settings : dict
        Plain data recording every option that decides the Hamiltonian and the sampling (force field,
        charges, water model, padding, cutoff, switch, dispersion correction, PME, constraints, time
        step, temperature...), stored with every result.
    reduced_units : dict or None
        For Lennard-Jones systems: ``{"sigma_nm": float, "epsilon_kJ_mol": float}``, so results can be
        reported in units of epsilon and sigma as well.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> ho = systems.get("harmonic_oscillator")
    >>> SolvationSystem("toy", solvent=ho, vacuum=None, solute_atoms=[0]).n_solute_atoms
    1
    """

    name: str
    solvent: MolecularSystem
    vacuum: MolecularSystem = None
    solute_atoms: list = field(default_factory=list)
    pressure: unit.Quantity = None
    settings: dict = field(default_factory=dict)
    reduced_units: dict = None

    def __post_init__(self):
        atoms = [int(i) for i in self.solute_atoms]
        n = self.solvent.n_atoms
        if not atoms or len(set(atoms)) != len(atoms) or min(atoms) < 0 or max(atoms) >= n:
            raise InvalidInputError(
                f"solute_atoms must be distinct indices of atoms of the solvent system (0 to {n - 1}), got {self.solute_atoms!r}.")
        if self.vacuum is not None and self.vacuum.n_atoms != len(atoms):
            raise InvalidInputError(
                f"the vacuum leg has {self.vacuum.n_atoms} atoms but the solute has {len(atoms)}: they must be the same molecule.")
        self.solute_atoms = atoms

    @property
    def n_solute_atoms(self):
        """Number of solute atoms."""
        return len(self.solute_atoms)

    @property
    def temperature(self):
        """The temperature of both legs (the solvent leg's :attr:`MolecularSystem.temperature`)."""
        return self.solvent.temperature
