"""Capped dipeptides ACE-X-NME built from alanine dipeptide by residue mutation (PDBFixer), AMBER ff14SB.

As Timewarp's 2AA data set: the alanine of alanine dipeptide is mutated to X with PDBFixer, missing
heavy atoms and hydrogens (pH 7) are added, and the System is built with ``amber14-all.xml`` plus
``implicit/obc1.xml`` (OBC1 GB, no cutoff, no constraints, 310 K) or in vacuum. The positions are
energy-minimised (the mutated side chain starts from PDBFixer's template geometry).
"""

import io

import openmm
from openmm import app, unit

from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.systems.molecular_system import MolecularSystem
from openmm_flowplugin.systems.registry import DIPEPTIDE_RESIDUES as RESIDUES


def _mutated_topology(residue):
    from pdbfixer import PDBFixer

    from .alanine_dipeptide import alanine_dipeptide_vacuum

    alanine = alanine_dipeptide_vacuum()
    pdb = io.StringIO()
    app.PDBFile.writeFile(alanine.topology, alanine.positions, pdb)
    fixer = PDBFixer(pdbfile=io.StringIO(pdb.getvalue()))
    if residue != "ALA":
        fixer.applyMutations([f"ALA-2-{residue}"], next(fixer.topology.chains()).id)
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # the caps end the chain: nothing to add beyond them
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=0)
    fixer.addMissingHydrogens(7.0)
    return fixer.topology, fixer.positions


def dipeptide(residue="ALA", implicit_solvent=True, temperature=310.0 * unit.kelvin):
    """ACE-``residue``-NME, amber14 (ff14SB) with OBC1 implicit solvent (or vacuum), no constraints, minimised.

    Parameters
    ----------
    residue : str
        Three-letter (``"SER"``) or one-letter (``"S"``) code of a standard amino acid.
    implicit_solvent : bool
        OBC1 GB (default, as Timewarp's 2AA data) or vacuum.
    temperature : openmm.unit.Quantity or float
        Kelvin if a bare number (default 310 K).
    """
    name = RESIDUES.get(str(residue).upper(), str(residue).upper())
    if name not in RESIDUES.values():
        raise InvalidInputError(f"residue must be one of {', '.join(sorted(RESIDUES.values()))} (or their one-letter codes), got {residue!r}.")
    topology, positions = _mutated_topology(name)
    files = ["amber14-all.xml"] + (["implicit/obc1.xml"] if implicit_solvent else [])
    system = app.ForceField(*files).createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    if not unit.is_quantity(temperature):
        temperature = temperature * unit.kelvin
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
    positions = context.getState(getPositions=True).getPositions(asNumpy=True)
    solvent = "OBC1 implicit solvent" if implicit_solvent else "vacuum"
    return MolecularSystem(
        name=f"dipeptide_{name.lower()}" + ("" if implicit_solvent else "_vacuum"),
        system=system,
        topology=topology,
        positions=positions,
        temperature=temperature,
        description=f"ACE-{name}-NME (mutated from alanine dipeptide by PDBFixer), amber14, {solvent}, no constraints",
        options={"residue": name, "implicit_solvent": bool(implicit_solvent), "temperature": temperature},
    )
