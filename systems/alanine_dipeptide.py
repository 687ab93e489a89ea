"""Alanine dipeptide (AMBER ff96), exactly as openmmtools' test systems build it, without constraints.

The input files are the ones openmmtools ships (``alanine-dipeptide-gbsa``); building from them
here avoids importing all of openmmtools (slow, noisy) for a System it would build the same way.
``tests/test_systems.py`` checks that the energies equal openmmtools' own systems.
"""

from importlib import resources

from openmm import app, unit

from openmm_flowplugin.systems.molecular_system import MolecularSystem

_DATA = resources.files(__package__).joinpath("data")


def _build(name, implicit_solvent, temperature):
    with resources.as_file(_DATA / "alanine-dipeptide.prmtop") as prmtop_path:
        prmtop = app.AmberPrmtopFile(str(prmtop_path))
    with resources.as_file(_DATA / "alanine-dipeptide.crd") as crd_path:
        positions = app.AmberInpcrdFile(str(crd_path)).getPositions(asNumpy=True)
    system = prmtop.createSystem(implicitSolvent=implicit_solvent, constraints=None, nonbondedCutoff=None)
    if not unit.is_quantity(temperature):
        temperature = temperature * unit.kelvin
    solvent = "vacuum" if implicit_solvent is None else "OBC implicit solvent"
    return MolecularSystem(
        name=name,
        system=system,
        topology=prmtop.topology,
        positions=positions,
        temperature=temperature,
        description=f"Alanine dipeptide, AMBER ff96, {solvent}, no constraints",
        options={"temperature": temperature},
    )


def alanine_dipeptide_vacuum(temperature=300.0 * unit.kelvin):
    """openmmtools ``AlanineDipeptideVacuum(constraints=None)``: 22 atoms, no cutoff."""
    return _build("alanine_dipeptide_vacuum", None, temperature)


def alanine_dipeptide_implicit(temperature=300.0 * unit.kelvin):
    """openmmtools ``AlanineDipeptideImplicit(constraints=None)``: 22 atoms, OBC1 GBSA."""
    return _build("alanine_dipeptide_implicit", app.OBC1, temperature)
