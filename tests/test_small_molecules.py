"""Small molecules in TIP3P water (GAFF2/AM1-BCC through AmberTools): the legs of a hydration free energy.

Builds need AmberTools and RDKit (extra ``openmm_flowplugin[solvation]``); without them those tests skip
with the reason. Each build takes about half a second.
"""

import doctest
import re
import sys
import time
from pathlib import Path

import numpy as np
import openmm
import pytest
from openmm import app, unit

from openmm_flowplugin.errors import InvalidInputError, ParametrizationError
from openmm_flowplugin.systems import from_files

sm = pytest.importorskip("openmm_flowplugin._systems.small_molecules")

from _ambertools import missing_tools as _missing_tools, needs_ambertools  # noqa: E402

try:
    import rdkit  # noqa: F401

    needs_rdkit = pytest.mark.skipif(False, reason="RDKit is installed")
except ImportError:
    needs_rdkit = pytest.mark.skip(reason="needs RDKit: pip install openmm_flowplugin[solvation]")

# Ethanol in FreeSolv (Mobley & Guthrie, J. Comput.-Aided Mol. Des. 28, 711 (2014), doi:10.1007/s10822-014-9747-x),
# entry mobley_2310185, file mol2files_gaff/mobley_2310185.mol2: its geometry (hydroxyl trans to the methyl) and its
# GAFF/AM1-BCC charges (e).
FREESOLV_ETHANOL = [  # name, x, y, z (Angstrom), GAFF type, charge
    ("C1", 1.0620, -0.2680, -0.0010, "c3", -0.096900), ("C2", 1.9100, 0.9130, -0.4220, "c3", 0.129800),
    ("O1", 1.5170, 1.3240, -1.7230, "oh", -0.599500), ("H1", 1.3390, -0.6110, 1.0000, "hc", 0.044800),
    ("H2", -0.0000, -0.0000, -0.0010, "hc", 0.044800), ("H3", 1.1800, -1.0990, -0.7040, "hc", 0.044800),
    ("H4", 2.9680, 0.6360, -0.4450, "h1", 0.017100), ("H5", 1.7730, 1.7500, 0.2690, "h1", 0.017100),
    ("H6", 2.0790, 2.0790, -1.9610, "ho", 0.397900)]
ETHANOL_BONDS = [(1, 2), (2, 3), (1, 4), (1, 5), (1, 6), (2, 7), (2, 8), (3, 9)]


def _ethanol_mol2(path, with_charges):
    atoms = [f"{i:7d} {name:<6s}{x:10.4f}{y:10.4f}{z:10.4f} {kind:<6s} 1 MOL {charge if with_charges else 0.0:10.6f}"
             for i, (name, x, y, z, kind, charge) in enumerate(FREESOLV_ETHANOL, start=1)]
    bonds = [f"{k:6d}{i:6d}{j:6d} 1" for k, (i, j) in enumerate(ETHANOL_BONDS, start=1)]
    charge_type = "USER_CHARGES" if with_charges else "NO_CHARGES"
    text = ["@<TRIPOS>MOLECULE", "ethanol", f"{len(atoms)} {len(bonds)} 1 0 0", "SMALL", charge_type, "", "@<TRIPOS>ATOM",
            *atoms, "@<TRIPOS>BOND", *bonds, "@<TRIPOS>SUBSTRUCTURE", "     1 MOL         1 TEMP  0 ****  ****    0 ROOT"]
    Path(path).write_text("\n".join(text) + "\n")
    return Path(path)


def _energy(system, positions, box=None):
    """Potential energy (kJ/mol) on the Reference platform."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _nonbonded(system):
    return next(force for force in system.getForces() if isinstance(force, openmm.NonbondedForce))


def _charges(system, atoms):
    force = _nonbonded(system)
    return np.array([force.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in atoms])


@pytest.fixture(scope="module")
def methane(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("methane")
    start = time.perf_counter()
    built = sm.methane_solvation(workdir=workdir)
    built.build_seconds = time.perf_counter() - start
    return built


@needs_ambertools
def test_methane_solute_charges(methane):
    assert methane.name == "methane" and methane.n_solute_atoms == 5 and methane.solute_atoms == [0, 1, 2, 3, 4]
    assert methane.settings["net_charge"] == 0 and methane.settings["charge_method"] == "bcc"
    charges = _charges(methane.solvent.system, methane.solute_atoms)
    elements = [atom.element.symbol for atom in methane.solvent.topology.atoms()][:5]
    assert abs(charges.sum()) < 1e-6
    assert elements == ["C", "H", "H", "H", "H"] and charges[0] < 0 and np.all(charges[1:] > 0)
    np.testing.assert_allclose(charges, methane.settings["solute_charges_e"], atol=1e-6)
    np.testing.assert_allclose(_charges(methane.vacuum.system, range(5)), charges, atol=1e-12)
    assert methane.settings["solute_atom_types"] == ["c3", "hc", "hc", "hc", "hc"]
    assert methane.build_seconds < 30, methane.build_seconds


@needs_ambertools
def test_methane_water_is_only_tip3p(methane):
    topology, system = methane.solvent.topology, methane.solvent.system
    others = [residue for residue in topology.residues() if residue.index != 0]
    assert len(others) == methane.settings["n_waters"] > 300 and methane.settings["counter_ions"] == {}
    force = _nonbonded(system)
    for residue in others:
        atoms = list(residue.atoms())
        assert residue.name == "HOH" and [atom.element.symbol for atom in atoms] == ["O", "H", "H"]
        (q_o, sigma_o, epsilon_o), (q_h, _, _) = [force.getParticleParameters(atoms[k].index) for k in (0, 1)]
        assert q_o.value_in_unit(unit.elementary_charge) == pytest.approx(-0.834)
        assert q_h.value_in_unit(unit.elementary_charge) == pytest.approx(0.417)
        # AMBER's TIP3P oxygen: Rmin/2 = 1.7683 A, epsilon = 0.1520 kcal/mol
        assert sigma_o.value_in_unit(unit.nanometer) == pytest.approx(0.17683 * 2 / 2 ** (1 / 6), abs=1e-6)
        assert epsilon_o.value_in_unit(unit.kilojoule_per_mole) == pytest.approx(0.1520 * 4.184, abs=1e-6)
    assert system.getNumConstraints() == 4 + 3 * len(others)  # 4 C-H bonds, rigid waters


@needs_ambertools
def test_methane_box_holds_padding_and_water_density(methane):
    positions = methane.solvent.positions_nm[methane.solute_atoms]
    extent = max(np.linalg.norm(a - b) for a in positions for b in positions)
    box = np.array([vector.value_in_unit(unit.nanometer) for vector in methane.solvent.system.getDefaultPeriodicBoxVectors()])
    assert np.allclose(box, np.diag(np.diag(box)))
    assert np.all(np.diag(box) >= extent + 2 * 1.2) and methane.settings["box_nm"] == pytest.approx(list(np.diag(box)))
    assert 0.9 < methane.settings["density_g_per_ml"] < 1.0  # not tleap's solvatebox (0.65 g/mL here)
    waters = methane.solvent.positions_nm[5:]
    assert np.min(np.linalg.norm(waters[:, None, :] - positions[None, :, :], axis=-1)) > 0.2


@needs_ambertools
def test_methane_energy_equals_independent_build(methane):
    files = methane.settings["files"]
    independent = from_files(prmtop=files["solvent_prmtop"], inpcrd=files["solvent_inpcrd"], temperature=298.15,
                             constraints="HBonds", nonbonded_cutoff=0.9)
    _nonbonded(independent.system).setUseDispersionCorrection(True)
    ours = methane.solvent
    box = ours.system.getDefaultPeriodicBoxVectors()
    rng = np.random.default_rng(0)
    for positions in (ours.positions_nm, ours.positions_nm + 0.002 * rng.standard_normal(ours.positions_nm.shape)):
        expected = _energy(independent.system, positions, box)
        assert _energy(ours.system, positions, box) == pytest.approx(expected, rel=1e-6)
    barostats = [force for force in ours.system.getForces() if isinstance(force, openmm.MonteCarloBarostat)]
    assert len(barostats) == 1 and barostats[0].getDefaultPressure().value_in_unit(unit.atmosphere) == pytest.approx(1.0)
    assert _nonbonded(ours.system).getNonbondedMethod() == openmm.NonbondedForce.PME
    assert _nonbonded(ours.system).getCutoffDistance().value_in_unit(unit.nanometer) == pytest.approx(0.9)


@needs_ambertools
def test_hydrogen_mass_repartitioning_keeps_the_hamiltonian(methane, tmp_path):
    heavy = sm.methane_solvation(workdir=tmp_path, hydrogen_mass=3.0, timestep=0.004)
    assert heavy.settings["hydrogen_mass_amu"] == 3.0 and heavy.settings["timestep_ps"] == 0.004
    for ours, theirs in ((methane.solvent, heavy.solvent), (methane.vacuum, heavy.vacuum)):
        masses = [np.array([s.getParticleMass(i).value_in_unit(unit.dalton) for i in range(s.getNumParticles())])
                  for s in (ours.system, theirs.system)]
        assert masses[1][1:5] == pytest.approx([3.0] * 4) and masses[1][0] == pytest.approx(masses[0][0] - 4 * (3.0 - masses[0][1]))
        assert masses[1][5:] == pytest.approx(masses[0][5:])  # rigid TIP3P water keeps its masses
        assert masses[1].sum() == pytest.approx(masses[0].sum())
        box = ours.system.getDefaultPeriodicBoxVectors()
        assert _energy(theirs.system, ours.positions_nm, box) == pytest.approx(_energy(ours.system, ours.positions_nm, box), rel=1e-9)
    with pytest.raises(InvalidInputError, match=r"leaves atom 0 \(C, residue MOL\) with 2.04 amu.*at most 3.2 amu") as caught:
        sm.methane_solvation(hydrogen_mass=3.5)  # carbon: 12.011 - 4 (3.5 - 1.008) amu
    assert "\n" not in str(caught.value)


@needs_ambertools
def test_methane_vacuum_leg_equals_solute_prmtop(methane):
    prmtop = app.AmberPrmtopFile(methane.settings["files"]["vacuum_prmtop"])
    reference = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    positions = methane.vacuum.positions_nm
    assert _energy(methane.vacuum.system, positions) == pytest.approx(_energy(reference, positions), rel=1e-6, abs=1e-9)
    assert not methane.vacuum.system.usesPeriodicBoundaryConditions()
    # same solute geometry in both legs, up to a translation (tleap centres the box) and PDB precision (0.001 A)
    solvated = methane.solvent.positions_nm[:5]
    np.testing.assert_allclose(solvated - solvated[0], positions - positions[0], atol=2e-4)


@needs_ambertools
def test_solvated_prmtop_input_gives_the_same_legs(methane, tmp_path):
    files = methane.settings["files"]
    again = sm.small_molecule_solvation(prmtop=files["solvent_prmtop"], inpcrd=files["solvent_inpcrd"], name="again",
                                        workdir=tmp_path)
    assert again.solute_atoms == methane.solute_atoms and again.settings["n_waters"] == methane.settings["n_waters"]
    assert again.settings["solute_residues"] == ["MOL"] and again.settings["forcefield"] == "from prmtop"
    positions = again.vacuum.positions_nm  # cut out by cpptraj from the solvated box
    assert _energy(again.vacuum.system, positions) == pytest.approx(_energy(methane.vacuum.system, positions), rel=1e-6)
    box = methane.solvent.system.getDefaultPeriodicBoxVectors()
    assert _energy(again.solvent.system, methane.solvent.positions_nm, box) == pytest.approx(
        _energy(methane.solvent.system, methane.solvent.positions_nm, box), rel=1e-9)


@pytest.fixture(scope="module")
def ethanol_build():
    if _missing_tools() is not None:
        pytest.skip(f"needs AmberTools and RDKit: {_missing_tools()}")
    start = time.perf_counter()
    ethanol = sm.small_molecule_solvation("CCO", name="ethanol")
    return ethanol, time.perf_counter() - start


@needs_ambertools
def test_ethanol_from_smiles_neutral_with_expected_signs(ethanol_build):
    ethanol, seconds = ethanol_build
    charges = np.array(ethanol.settings["solute_charges_e"])
    types = ethanol.settings["solute_atom_types"]
    assert types == ["c3", "c3", "oh", "hc", "hc", "hc", "h1", "h1", "ho"], types
    assert abs(charges.sum()) < 1e-6
    assert charges[2] < -0.5 and charges[8] > 0.3 and charges[1] > 0 and charges[0] < 0 and np.all(charges[3:] > 0)
    assert np.ptp(charges[3:6]) < 1e-6 and np.ptp(charges[6:8]) < 1e-6  # antechamber averages equivalent atoms
    assert seconds < 30, seconds


@needs_ambertools
def test_ethanol_am1bcc_matches_freesolv(tmp_path):
    """AM1-BCC on FreeSolv's ethanol geometry reproduces FreeSolv's published charges (measured: within 0.004 e)."""
    mol2 = _ethanol_mol2(tmp_path / "ethanol_freesolv.mol2", with_charges=False)
    ethanol = sm.small_molecule_solvation(mol2=mol2, charge_method="bcc", workdir=tmp_path / "work")
    published = np.array([atom[-1] for atom in FREESOLV_ETHANOL])
    np.testing.assert_allclose(ethanol.settings["solute_charges_e"], published, atol=0.01)
    assert ethanol.name == "ethanol_freesolv" and ethanol.settings["forcefield"] == "gaff2"
    assert (tmp_path / "work" / "ethanol_freesolv_input.mol2").is_file()


@needs_ambertools
def test_mol2_charges_are_used_as_given(tmp_path):
    mol2 = _ethanol_mol2(tmp_path / "ethanol.mol2", with_charges=True)
    ethanol = sm.small_molecule_solvation(mol2=mol2, forcefield="gaff", pressure=None, switch_distance=0.8,
                                          dispersion_correction=False, hydrogen_mass=3.0, timestep=0.004)
    published = np.array([atom[-1] for atom in FREESOLV_ETHANOL])
    np.testing.assert_allclose(_charges(ethanol.solvent.system, range(9)), published, atol=1e-6)
    settings, system = ethanol.settings, ethanol.solvent.system
    assert settings["charge_method"] == "file" and settings["forcefield"] == "gaff" and ethanol.pressure is None
    assert not any(isinstance(force, openmm.MonteCarloBarostat) for force in system.getForces())
    force = _nonbonded(system)
    assert force.getUseSwitchingFunction() and force.getSwitchingDistance().value_in_unit(unit.nanometer) == pytest.approx(0.8)
    assert not force.getUseDispersionCorrection()
    assert system.getParticleMass(3).value_in_unit(unit.dalton) == pytest.approx(3.0)
    assert settings["timestep_ps"] == 0.004 and settings["hydrogen_mass_amu"] == 3.0


@needs_ambertools
def test_charged_solute_with_counter_ion():
    acetate = sm.small_molecule_solvation("CC(=O)[O-]", name="acetate", allow_charged=True, padding=1.0)
    assert acetate.settings["net_charge"] == -1 and acetate.settings["counter_ions"] == {"Na+": 1}
    total = _charges(acetate.solvent.system, range(acetate.solvent.n_atoms)).sum()
    assert abs(total) < 1e-4


@needs_ambertools
def test_water_solute_is_tip3p():
    water = sm.water_solvation(padding=1.0)
    assert water.solute_atoms == [0, 1, 2] and water.vacuum.n_atoms == 3 and water.settings["forcefield"] == "TIP3P"
    np.testing.assert_allclose(_charges(water.solvent.system, [0, 1, 2]), [-0.834, 0.417, 0.417])
    assert water.vacuum.system.getNumConstraints() == 3  # rigid, as in the solvent
    assert abs(_energy(water.vacuum.system, water.vacuum.positions_nm)) < 1e-6  # TIP3P: no intramolecular energy


@needs_ambertools
def test_workdir_keeps_files_and_refuses_another_molecule(tmp_path):
    first = sm.small_molecule_solvation("C", name="solute", workdir=tmp_path, padding=1.0)
    kept = sorted(path.name for path in tmp_path.iterdir())
    assert "solute_solvent.prmtop" in kept and "solute_build.json" in kept and not any(n.startswith(".") for n in kept)
    again = sm.small_molecule_solvation("C", name="solute", workdir=tmp_path, padding=1.0)  # same molecule: rebuilt
    assert again.settings["n_waters"] == first.settings["n_waters"]
    with pytest.raises(InvalidInputError, match=r"already holds .*built from SMILES C\).*give another workdir or name="):
        sm.small_molecule_solvation("CCO", name="solute", workdir=tmp_path)
    (tmp_path / "mine_gaff2.mol2").write_text("the user's own file")
    with pytest.raises(InvalidInputError, match="not written by small_molecule_solvation"):
        sm.small_molecule_solvation("C", name="mine", workdir=tmp_path)
    assert (tmp_path / "mine_gaff2.mol2").read_text() == "the user's own file"


@needs_ambertools
def test_tool_failure_names_the_tool_and_its_log(tmp_path):
    with pytest.raises(ParametrizationError, match=r"antechamber failed .*log: ") as caught:
        sm.small_molecule_solvation("CB(C)C", name="trimethylborane", workdir=tmp_path)  # sqm has no AM1 boron here
    log = Path(str(caught.value).split("log: ")[1].split(" (folder kept")[0])
    assert log.is_file() and log.name == "trimethylborane_antechamber.log"


def test_parmchk2_attn_terms_are_refused(tmp_path):
    frcmod = tmp_path / "x.frcmod"
    frcmod.write_text("remark\nBOND\nc3-xx   0.00   0.000       ATTN, need revision\n\nANGLE\n")
    with pytest.raises(ParametrizationError, match=r"no parameters for 1 term\(s\) .*c3-xx.*give them in frcmod="):
        sm._check_frcmod(frcmod)
    user = tmp_path / "user.frcmod"
    user.write_text("BOND\nc3-xx  300.0  1.5\n")
    sm._check_frcmod(frcmod, user)  # the user's frcmod supplies it


@needs_rdkit
@pytest.mark.parametrize("smiles", ["C1CC", "C(C", "not a molecule", ""])
def test_invalid_smiles(smiles):
    with pytest.raises(InvalidInputError, match=r"is not a valid SMILES string .* e\.g\. 'CCO' for ethanol"):
        sm.small_molecule_solvation(smiles)


@needs_rdkit
@pytest.mark.parametrize("smiles, charge", [("[NH4+]", "+1"), ("CC(=O)[O-]", "-1")])
def test_charged_solute_is_refused(smiles, charge):
    with pytest.raises(InvalidInputError, match=rf"net charge {re.escape(charge)} e: .*not implemented.*allow_charged=True"):
        sm.small_molecule_solvation(smiles)


def test_mol2_without_charges_is_refused_for_file_charges(tmp_path):
    mol2 = _ethanol_mol2(tmp_path / "ethanol.mol2", with_charges=False)
    with pytest.raises(InvalidInputError, match=r"has no charges .*pass charge_method='bcc'"):
        sm.small_molecule_solvation(mol2=mol2)
    with pytest.raises(InvalidInputError, match=r"has no charges"):
        sm.small_molecule_solvation(mol2=mol2, charge_method="file")


def test_an_ion_in_a_mol2_without_charges_is_refused_before_any_tool_runs(tmp_path, monkeypatch):
    """Taken as neutral, ethoxide (ethanol without its hydroxyl hydrogen) has an odd electron count: refused in one line."""
    monkeypatch.setattr(sm, "_tool_dirs", lambda: [str(tmp_path)])  # no AmberTools: the refusal must come first
    monkeypatch.setattr(sys.modules[__name__], "FREESOLV_ETHANOL", FREESOLV_ETHANOL[:-1])
    monkeypatch.setattr(sys.modules[__name__], "ETHANOL_BONDS", ETHANOL_BONDS[:-1])
    ethoxide = _ethanol_mol2(tmp_path / "ethoxide.mol2", with_charges=False)
    with pytest.raises(InvalidInputError, match=r"no charges, so its net charge is taken as 0.*odd number of electrons \(25\)"):
        sm.small_molecule_solvation(mol2=ethoxide, charge_method="bcc")


def test_mol2_electron_count_reads_sybyl_and_gaff_types():
    from openmm_flowplugin._systems._solute import check_uncharged_mol2_parity

    check_uncharged_mol2_parity(["c3", "c3", "oh", "hc", "hc", "hc", "h1", "h1", "ho"], "ethanol.mol2")  # control: neutral
    check_uncharged_mol2_parity(["C.3", "Cl", "H", "H", "H"], "chloromethane.mol2")
    check_uncharged_mol2_parity(["c3", "br", "hc", "hc", "hc"], "bromomethane.mol2")
    for types in (["C.3", "Xx", "H"], ["C.3", "H", "H", "H", "Du"], ["CA", "HA"], ["c3", "du"], ["opls_135", "H"], ["N.3", "LP"]):
        check_uncharged_mol2_parity(types, "unknown.mol2")  # a type that is no element (or not surely): left to antechamber
    for types in (["C.3", "Cl", "H", "H"], ["c3", "cl", "hc", "hc"], ["N.4", "H", "H", "H", "H"], ["n+", "hn", "hn", "hn", "hn"]):
        with pytest.raises(InvalidInputError, match="odd number of electrons"):
            check_uncharged_mol2_parity(types, "ion.mol2")


def test_missing_ambertools_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(sm, "_tool_dirs", lambda: [str(tmp_path)])
    mol2 = _ethanol_mol2(tmp_path / "ethanol.mol2", with_charges=True)
    with pytest.raises(ImportError, match=r"antechamber was not found .*pip install openmm_flowplugin\[solvation\]"):
        sm.small_molecule_solvation(mol2=mol2)
    assert not list(tmp_path.glob(".ethanol-build-*"))


@pytest.mark.parametrize("options, message", [
    ({}, "give exactly one of smiles, sdf, mol2 or prmtop"),
    ({"smiles": "C", "mol2": "x.mol2"}, "give exactly one of smiles, sdf, mol2 or prmtop"),
    ({"smiles": "C", "frcmod": "x.frcmod"}, "frcmod adds parameters to a mol2 solute"),
    ({"prmtop": "x.prmtop"}, "prmtop and inpcrd go together"),
    ({"smiles": "C", "forcefield": "amber14"}, "forcefield='amber14' is not one of gaff, gaff2"),
    ({"smiles": "C", "charge_method": "file"}, "charge_method='file' reads the charges of a mol2 file"),
    ({"smiles": "C", "padding": -1.0}, "padding must be a positive number"),
    ({"smiles": "C", "switch_distance": 1.0}, "switch_distance .* must be shorter than nonbonded_cutoff"),
    ({"mol2": "/nonexistent/x.mol2"}, "is not a file"),
])
def test_bad_options_are_one_line(options, message):
    with pytest.raises(InvalidInputError, match=message) as caught:
        sm.small_molecule_solvation(**options)
    assert "\n" not in str(caught.value)


def test_quantities_are_converted_at_the_edge():
    options = sm._options(12 * unit.angstrom, 298.15 * unit.kelvin, 1.01325 * unit.bar,
                          9 * unit.angstrom, 8 * unit.angstrom, True, "hbonds", 3 * unit.amu, 4 * unit.femtoseconds)
    assert options["padding_nm"] == pytest.approx(1.2) and options["pressure_atm"] == pytest.approx(1.0)
    assert options["nonbonded_cutoff_nm"] == pytest.approx(0.9) and options["switch_distance_nm"] == pytest.approx(0.8)
    assert options["hydrogen_mass_amu"] == pytest.approx(3.0) and options["timestep_ps"] == pytest.approx(0.004)
    assert options["temperature_K"] == pytest.approx(298.15) and options["constraints"] == "HBonds"


@needs_ambertools
def test_timestep_too_large_without_constraints():
    with pytest.raises(InvalidInputError, match="timestep 2 fs is too large"):
        sm.methane_solvation(constraints=None, padding=1.0)


@needs_ambertools
def test_docstring_examples_run():
    result = doctest.testmod(sm, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


def _alchemical_energies(leg, positions, box=None):
    """Energies (kJ/mol) of one configuration in each λ state of an alchemical leg."""
    context = openmm.Context(leg.alchemical_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    energies = []
    for state in leg.thermodynamic_states:
        context.setParameter("lambda_electrostatics", state.lambda_electrostatics)
        context.setParameter("lambda_sterics", state.lambda_sterics)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return np.array(energies)


def _without_solute_charges(system, atoms):
    """A copy with the solute's particle charges zeroed; exceptions (1-4 pairs) kept."""
    copy = openmm.XmlSerializer.clone(system)
    force = _nonbonded(copy)
    for i in atoms:
        _, sigma, epsilon = force.getParticleParameters(i)
        force.setParticleParameters(i, 0.0, sigma, epsilon)
    return copy


@needs_ambertools
def test_both_legs_change_the_solutes_own_energy_alike(ethanol_build):
    """The cycle closes: the alchemical change of the solute's intramolecular energy is the same in both legs.

    Switching the electrostatics off in the solvent leg minus the same in the vacuum leg must be the
    solute-water electrostatics alone, which zeroing the solute's charges (exceptions kept) gives
    independently. Ethanol has 1-4 electrostatics (exceptions): a leg that treated them differently
    would be off by their energy, checked to be large here (the control).
    """
    from openmm_flowplugin.freeenergy.alchemical import alchemical_leg

    ethanol, _ = ethanol_build
    box = ethanol.solvent.system.getDefaultPeriodicBoxVectors()
    x = ethanol.solvent.positions.value_in_unit(unit.nanometer)
    solute = list(ethanol.solute_atoms)
    legs = alchemical_leg(ethanol.solvent, solute), alchemical_leg(ethanol.vacuum, range(len(solute)), name="vacuum")
    off = legs[0].schedule.stage_boundary
    solvent, vacuum = _alchemical_energies(legs[0], x, box), _alchemical_energies(legs[1], x[solute])
    alchemical = (solvent[0] - solvent[off]) - (vacuum[0] - vacuum[off])
    zeroed = [_energy(leg.system, pos, b) - _energy(_without_solute_charges(leg.system, atoms), pos, b)
              for leg, pos, b, atoms in ((ethanol.solvent, x, box, solute), (ethanol.vacuum, x[solute], None, range(len(solute))))]
    assert alchemical == pytest.approx(zeroed[0] - zeroed[1], abs=1e-6)
    exceptions_14 = (vacuum[0] - vacuum[off]) - zeroed[1]
    assert abs(exceptions_14) > 10.0, exceptions_14  # what a mismatch in the 1-4 treatment would add


def _sdf(path, smiles, hydrogens=True, three_d=True, records=1):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles)) if hydrogens else Chem.MolFromSmiles(smiles)
    if three_d:
        AllChem.EmbedMolecule(mol, randomSeed=7)
    writer = Chem.SDWriter(str(path))
    for _ in range(records):
        writer.write(mol)
    writer.close()
    return path


@needs_ambertools
@needs_rdkit
def test_a_solute_from_an_sdf_keeps_its_conformer_and_gets_am1bcc_charges(tmp_path):
    from rdkit import Chem

    path = _sdf(tmp_path / "ethanol.sdf", "CCO")
    built = sm.small_molecule_solvation(sdf=path, padding=1.0, pressure=None)
    assert built.n_solute_atoms == 9 and built.settings["net_charge"] == 0 and built.settings["sdf"] == str(path.resolve())
    assert built.settings["charge_method"] == "bcc" and abs(sum(built.settings["solute_charges_e"])) < 1e-8
    assert sorted(built.settings["solute_atom_types"]) == sorted(["c3", "c3", "oh", "hc", "hc", "hc", "h1", "h1", "ho"])
    # the vacuum leg holds the file's conformer (up to antechamber's 4-decimal Å coordinates)
    given = Chem.MolFromMolFile(str(path), removeHs=False).GetConformer().GetPositions() / 10.0
    np.testing.assert_allclose(np.asarray(built.vacuum.positions_nm), given, atol=1e-4)


@needs_rdkit
@pytest.mark.parametrize("kind, message", [
    ("no hydrogens", "lacks hydrogens"), ("2D", "no 3D coordinates"), ("two records", "holds 2 records"),
    ("charged", "net charge -1 e.*--allow-charged"),
])
def test_an_sdf_that_cannot_be_used_is_refused_before_any_tool_runs(tmp_path, kind, message, monkeypatch):
    monkeypatch.setattr(sm, "_tool_dirs", lambda: [str(tmp_path)])  # no AmberTools: the refusal must come first
    smiles = "CC(=O)[O-]" if kind == "charged" else "CCO"
    path = _sdf(tmp_path / "solute.sdf", smiles, hydrogens=kind != "no hydrogens", three_d=kind != "2D",
                records=2 if kind == "two records" else 1)
    with pytest.raises(InvalidInputError, match=message):
        sm.small_molecule_solvation(sdf=path)
