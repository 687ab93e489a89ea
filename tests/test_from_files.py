"""Your own molecule: systems.from_files builds the same MolecularSystem as the registry, and bad input is one line."""

import math
import warnings
from pathlib import Path

import numpy as np
import openmm
import pytest
from click.testing import CliRunner
from openmm import app, unit

from openmm_flowplugin import systems
from openmm_flowplugin.cli import main
from openmm_flowplugin.systems import check_flow_compatible, check_md_timestep, from_files, max_unconstrained_timestep

PRMTOP = Path(str(systems.data_path("data", "alanine-dipeptide.prmtop")))
CRD = Path(str(systems.data_path("data", "alanine-dipeptide.crd")))
PEPTIDE_PDB = Path(__file__).resolve().parents[1] / "examples" / "data" / "ace-ala-ala-nme.pdb"


def _energy(molecular_system, positions=None):
    """Potential energy (kJ/mol) on the Reference platform, at ``positions`` (nm) or the system's own."""
    context = openmm.Context(molecular_system.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPeriodicBoxVectors(*molecular_system.system.getDefaultPeriodicBoxVectors())
    context.setPositions(molecular_system.positions if positions is None else positions)
    return context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _perturbed(molecular_system, n=3, scale=0.005, seed=0):
    rng = np.random.default_rng(seed)
    return [molecular_system.positions_nm + scale * rng.standard_normal(molecular_system.positions_nm.shape) for _ in range(n)]


def _write_pdb(molecular_system, path, box=None):
    topology = molecular_system.topology
    if box is not None:
        topology = app.Topology()
        topology.__dict__.update(molecular_system.topology.__dict__)  # a shallow copy that may carry a box
        topology.setPeriodicBoxVectors(box)
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, molecular_system.positions, handle)
    return path


# --------------------------------------------------------------------------- AMBER


def test_amber_files_give_the_registry_system():
    registry = systems.get("alanine_dipeptide_vacuum")
    mine = from_files(prmtop=PRMTOP, inpcrd=CRD)
    assert mine.n_atoms == 22 and mine.n_constraints == 0
    assert mine.name == "alanine-dipeptide" and mine.fingerprint == registry.fingerprint
    assert np.array_equal(mine.positions_nm, registry.positions_nm)
    for positions in [registry.positions_nm, *_perturbed(registry)]:
        assert _energy(mine, positions) == _energy(registry, positions)
    assert mine.options["prmtop"] == str(PRMTOP.resolve()) and Path(mine.options["inpcrd"]).is_absolute()
    assert mine.options["nonbonded_method"] == "NoCutoff" and mine.options["constraints"] is None
    assert "alanine-dipeptide.prmtop" in mine.description and "no constraints" in mine.description


def test_amber_implicit_solvent_gives_the_registry_system():
    registry = systems.get("alanine_dipeptide_implicit")
    mine = from_files(prmtop=PRMTOP, inpcrd=CRD, implicit_solvent=app.OBC1, name="mine", temperature=310)
    assert mine.name == "mine" and mine.temperature == 310 * unit.kelvin
    for positions in [registry.positions_nm, *_perturbed(registry)]:
        assert _energy(mine, positions) == _energy(registry, positions)
    assert _energy(mine) != _energy(from_files(prmtop=PRMTOP, inpcrd=CRD))  # the solvent term is there


# --------------------------------------------------------------------------- PDB + force field


def test_pdb_with_amber14_builds_the_shipped_peptide():
    peptide = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml")
    assert peptide.name == "ace-ala-ala-nme" and peptide.n_atoms == 32 and peptide.n_constraints == 0
    assert [residue.name for residue in peptide.topology.residues()] == ["ACE", "ALA", "ALA", "NME"]
    assert not peptide.system.usesPeriodicBoundaryConditions()
    energy = _energy(peptide)
    assert math.isfinite(energy) and energy < 0  # a minimized structure
    assert peptide.options["forcefield"] == ["amber14-all.xml"] and peptide.options["pdb"] == str(PEPTIDE_PDB)
    # implicit solvent: by name or through the force-field list, the same System
    by_name = from_files(pdb=PEPTIDE_PDB, forcefield=["amber14-all.xml"], implicit_solvent="OBC1")
    by_xml = from_files(pdb=PEPTIDE_PDB, forcefield=["amber14-all.xml", "implicit/obc1.xml"])
    assert _energy(by_name) == _energy(by_xml) < energy - 50  # solvation lowers the energy of a polar peptide


def test_pdb_of_alanine_dipeptide_with_amber99sbildn(tmp_path):
    registry = systems.get("alanine_dipeptide_vacuum")
    pdb = _write_pdb(registry, tmp_path / "ala2.pdb")
    mine = from_files(pdb=pdb, forcefield=["amber99sbildn.xml"])
    assert mine.n_atoms == 22
    elements = [[atom.element.symbol for atom in ms.topology.atoms()] for ms in (mine, registry)]
    bonds = [sorted(tuple(sorted((a.index, b.index))) for a, b in ms.topology.bonds()) for ms in (mine, registry)]
    assert elements[0] == elements[1] and bonds[0] == bonds[1]
    assert math.isfinite(_energy(mine)) and _energy(mine) != _energy(registry)  # another force field
    cif = tmp_path / "ala2.cif"
    with open(cif, "w") as handle:
        app.PDBxFile.writeFile(registry.topology, registry.positions, handle)
    from_cif = from_files(pdb=cif, forcefield=["amber99sbildn.xml"])  # PDBx/mmCIF by its suffix
    assert _energy(from_cif, registry.positions_nm) == _energy(mine, registry.positions_nm)


def test_periodic_pdb_gets_pme_and_its_box(tmp_path):
    registry = systems.get("alanine_dipeptide_vacuum")
    box = [openmm.Vec3(3.0, 0, 0), openmm.Vec3(0, 3.2, 0), openmm.Vec3(0, 0, 3.4)] * unit.nanometer
    pdb = _write_pdb(registry, tmp_path / "boxed.pdb", box=box)
    periodic = from_files(pdb=pdb, forcefield="amber99sbildn.xml")
    assert periodic.options["nonbonded_method"] == "PME" and periodic.system.usesPeriodicBoundaryConditions()
    widths = [v[i].value_in_unit(unit.nanometer) for i, v in enumerate(periodic.system.getDefaultPeriodicBoxVectors())]
    assert widths == pytest.approx([3.0, 3.2, 3.4])
    assert periodic.topology.getPeriodicBoxVectors() is not None
    assert math.isfinite(_energy(periodic))
    vacuum = from_files(pdb=pdb, forcefield="amber99sbildn.xml", nonbonded_method="NoCutoff")
    assert not vacuum.system.usesPeriodicBoundaryConditions()
    # a placeholder box narrower than twice the cutoff is refused with the fix
    small = _write_pdb(registry, tmp_path / "small.pdb", box=[openmm.Vec3(1.0, 0, 0), openmm.Vec3(0, 1.0, 0), openmm.Vec3(0, 0, 1.0)] * unit.nanometer)
    with pytest.raises(ValueError, match="less than twice the 1 nm cutoff.*nonbonded_method='NoCutoff'") as error:
        from_files(pdb=small, forcefield="amber99sbildn.xml")
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- serialized System


def test_system_xml_round_trips_energies_exactly(tmp_path):
    peptide = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml")
    xml = tmp_path / "peptide-system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(peptide.system))
    again = from_files(system_xml=xml, pdb=PEPTIDE_PDB)
    assert again.name == "peptide-system" and again.fingerprint == peptide.fingerprint
    assert again.options["system_xml"] == str(xml.resolve())
    for positions in [peptide.positions_nm, *_perturbed(peptide)]:
        assert _energy(again, positions) == _energy(peptide, positions)


def test_system_xml_with_constraints_warns_with_the_fix(tmp_path):
    constrained = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml", constraints="HBonds")
    assert constrained.n_constraints == 17  # one per hydrogen
    xml = tmp_path / "constrained.xml"
    xml.write_text(openmm.XmlSerializer.serialize(constrained.system))
    with pytest.warns(UserWarning, match="has 17 constraints.*re-export it without constraints"):
        loaded = from_files(system_xml=xml, pdb=PEPTIDE_PDB)
    assert loaded.n_constraints == 17
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without constraints
        xml.write_text(openmm.XmlSerializer.serialize(from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml").system))
        from_files(system_xml=xml, pdb=PEPTIDE_PDB)


# --------------------------------------------------------------------------- GROMACS

_TOP = """[ defaults ]
; nbfunc comb-rule gen-pairs fudgeLJ fudgeQQ
1 2 yes 0.5 0.8333

[ atomtypes ]
; name at.num mass charge ptype sigma epsilon
OW 8 15.99940 0.0 A 0.315061 0.636386
HW 1 1.00800 0.0 A 0.0 0.0

[ moleculetype ]
; name nrexcl
WAT 2

[ atoms ]
; nr type resnr residue atom cgnr charge mass
1 OW 1 WAT O 1 -0.834 15.99940
2 HW 1 WAT H1 1 0.417 1.00800
3 HW 1 WAT H2 1 0.417 1.00800

[ bonds ]
1 2 1 0.09572 462750.4
1 3 1 0.09572 462750.4

[ angles ]
2 1 3 1 104.52 836.8

[ system ]
two flexible waters

[ molecules ]
WAT 2
"""
_XYZ = np.array([[1.0, 1.0, 1.0], [1.1, 1.0, 1.0], [0.975, 1.093, 1.0], [1.3, 1.0, 1.0], [1.34, 1.09, 1.0], [1.34, 0.91, 1.03]])
_CHARGES = np.array([-0.834, 0.417, 0.417] * 2)


def _write_gromacs(folder, box="3.00000   3.00000   3.00000"):
    names = ["O", "H1", "H2"] * 2
    lines = ["two flexible waters", f"{len(_XYZ):5d}"]
    lines += [f"{i // 3 + 1:5d}{'WAT':<5s}{name:>5s}{i + 1:5d}{x:8.3f}{y:8.3f}{z:8.3f}" for i, (name, (x, y, z)) in enumerate(zip(names, _XYZ))]
    lines.append(f"   {box}")
    (folder / "water2.top").write_text(_TOP)
    (folder / "water2.gro").write_text("\n".join(lines) + "\n")
    return folder / "water2.top", folder / "water2.gro"


def _water_dimer_energy():
    """Bonds, angles, and intermolecular LJ + Coulomb of the topology above, computed by hand (kJ/mol)."""
    energy = 0.0
    for o in (0, 3):
        for h in (o + 1, o + 2):
            energy += 0.5 * 462750.4 * (np.linalg.norm(_XYZ[h] - _XYZ[o]) - 0.09572) ** 2
        u, v = _XYZ[o + 1] - _XYZ[o], _XYZ[o + 2] - _XYZ[o]
        theta = np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
        energy += 0.5 * 836.8 * (theta - np.radians(104.52)) ** 2
    for i in range(3):
        for j in range(3, 6):
            r = np.linalg.norm(_XYZ[i] - _XYZ[j])
            energy += 138.935456 * _CHARGES[i] * _CHARGES[j] / r
            if i == 0 and j == 3:  # only O-O has Lennard-Jones
                energy += 4 * 0.636386 * ((0.315061 / r) ** 12 - (0.315061 / r) ** 6)
    return energy


def test_gromacs_files_build_the_written_topology(tmp_path):
    top, gro = _write_gromacs(tmp_path)
    water = from_files(top=top, gro=gro)
    assert water.n_atoms == 6 and water.n_constraints == 0 and water.name == "water2"
    assert [atom.element.symbol for atom in water.topology.atoms()] == ["O", "H", "H"] * 2
    assert water.options["nonbonded_method"] == "PME"  # a gro file with a box is periodic
    widths = [v[i].value_in_unit(unit.nanometer) for i, v in enumerate(water.system.getDefaultPeriodicBoxVectors())]
    assert widths == pytest.approx([3.0, 3.0, 3.0])
    vacuum = from_files(top=top, gro=gro, nonbonded_method="NoCutoff")
    assert _energy(vacuum) == pytest.approx(_water_dimer_energy(), rel=1e-6)
    # a zero box line means no box
    top, gro = _write_gromacs(tmp_path, box="0.00000   0.00000   0.00000")
    assert from_files(top=top, gro=gro).options["nonbonded_method"] == "NoCutoff"


def test_gromacs_include_dir_is_searched(tmp_path):
    top, gro = _write_gromacs(tmp_path)
    include = tmp_path / "forcefields"
    include.mkdir()
    head, molecule = _TOP.split("[ moleculetype ]")
    molecule, tail = molecule.split("[ system ]")
    (include / "wat.itp").write_text("[ moleculetype ]" + molecule)
    top.write_text(head + '#include "wat.itp"\n\n[ system ]' + tail)
    with pytest.raises(ValueError, match="include_dir"):
        from_files(top=top, gro=gro)
    water = from_files(top=top, gro=gro, include_dir=include, nonbonded_method="NoCutoff")
    assert water.options["include_dir"] == str(include.resolve())
    assert _energy(water) == pytest.approx(_water_dimer_energy(), rel=1e-6)


def test_gromacs_include_that_is_not_there_names_include_dir(tmp_path):
    top, gro = _write_gromacs(tmp_path)
    top.write_text('#include "amber99sb-ildn.ff/forcefield.itp"\n' + _TOP)
    with pytest.raises(ValueError, match=r"cannot read top \(--top\).*include_dir") as error:
        from_files(top=top, gro=gro, include_dir=tmp_path)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- bad input: one line each


def _bad_inputs(tmp_path):
    garbage = tmp_path / "garbage.prmtop"
    garbage.write_text("this is not a prmtop\n")
    empty = tmp_path / "empty.pdb"
    empty.write_text("")
    short_crd = tmp_path / "three.inpcrd"
    short_crd.write_text("three atoms\n    3\n   0.0000000   0.0000000   0.0000000   1.0000000   0.0000000   0.0000000\n   0.0000000   1.0000000   0.0000000\n")
    ala2_pdb = _write_pdb(systems.get("alanine_dipeptide_vacuum"), tmp_path / "ala2.pdb")
    no_hydrogens = tmp_path / "no_h.pdb"
    no_hydrogens.write_text("".join(line + "\n" for line in PEPTIDE_PDB.read_text().splitlines() if not line.endswith(" H  ") and not line.startswith("CONECT")))
    peptide_xml = tmp_path / "peptide.xml"
    peptide_xml.write_text(openmm.XmlSerializer.serialize(from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml").system))
    integrator_xml = tmp_path / "integrator.xml"
    integrator_xml.write_text(openmm.XmlSerializer.serialize(openmm.VerletIntegrator(0.001)))
    bad_xml = tmp_path / "bad.xml"
    bad_xml.write_text("<System nonsense")
    top, gro = _write_gromacs(tmp_path)
    pdb_ff = {"pdb": PEPTIDE_PDB, "forcefield": "amber14-all.xml"}
    return [
        ({}, "no input files: pass pdb (--pdb) and forcefield (--forcefield), or prmtop"),
        ({"prmtop": PRMTOP}, "prmtop (--prmtop) needs inpcrd (--inpcrd)"),
        ({"inpcrd": CRD}, "inpcrd (--inpcrd) needs prmtop (--prmtop)"),
        ({"forcefield": ["amber14-all.xml"]}, "forcefield (--forcefield) needs pdb (--pdb)"),
        ({"pdb": PEPTIDE_PDB}, "pdb (--pdb) needs forcefield (--forcefield XML ...)"),
        ({"top": top}, "top (--top) needs gro (--gro)"),
        ({"gro": gro}, "gro (--gro) needs top (--top)"),
        ({"system_xml": peptide_xml}, "system_xml (--system-xml) needs pdb (--pdb)"),
        ({"prmtop": PRMTOP, "inpcrd": CRD, "pdb": PEPTIDE_PDB}, "pdb (--pdb) does not go with prmtop (--prmtop) and inpcrd"),
        ({**pdb_ff, "system_xml": peptide_xml}, "forcefield (--forcefield) and system_xml (--system-xml) both define"),
        ({"prmtop": PRMTOP, "inpcrd": CRD, "top": top, "gro": gro}, "the inputs describe more than one system"),
        ({"prmtop": tmp_path / "missing.prmtop", "inpcrd": CRD}, "missing.prmtop not found"),
        ({"prmtop": tmp_path, "inpcrd": CRD}, "is not a file"),
        ({"prmtop": garbage, "inpcrd": CRD}, "cannot read prmtop (--prmtop)"),
        ({"pdb": empty, "forcefield": "amber14-all.xml"}, "empty.pdb is empty"),
        ({"prmtop": PRMTOP, "inpcrd": short_crd}, "has 22 atoms but inpcrd (--inpcrd) three.inpcrd has 3"),
        ({"system_xml": peptide_xml, "pdb": ala2_pdb}, "has 32 particles but pdb (--pdb) ala2.pdb has 22 atoms"),
        ({"system_xml": integrator_xml, "pdb": PEPTIDE_PDB}, "holds a VerletIntegrator, not a System"),
        ({"system_xml": bad_xml, "pdb": PEPTIDE_PDB}, "cannot read system_xml (--system-xml)"),
        ({"system_xml": peptide_xml, "pdb": PEPTIDE_PDB, "constraints": "HBonds"}, "is used as it is; constraints cannot change it"),
        ({"pdb": PEPTIDE_PDB, "forcefield": "no-such-forcefield.xml"}, "cannot load forcefield (--forcefield) no-such-forcefield.xml"),
        ({"pdb": no_hydrogens, "forcefield": "amber14-all.xml"}, "cannot build a System from no_h.pdb with amber14-all.xml: No template found"),
        ({**pdb_ff, "constraints": "HBond"}, "constraints='HBond' is not one of None, HBonds, AllBonds, HAngles"),
        ({**pdb_ff, "nonbonded_method": "PME"}, "nonbonded_method=PME needs a periodic box"),
        ({**pdb_ff, "include_dir": tmp_path}, "include_dir is for GROMACS topologies"),
        ({"prmtop": PRMTOP, "inpcrd": CRD, "no_such_option": 1}, "unexpected keyword argument 'noSuchOption'"),
        ({"top": top, "gro": gro, "implicit_solvent": "OBC1"}, "implicit_solvent is not supported for GROMACS"),
        ({**pdb_ff, "nonbondedMethod": app.PME}, "pass nonbonded_method=..., not nonbondedMethod="),
        ({**pdb_ff, "temperature": -5}, "temperature must be a positive number of kelvin"),
    ]


def test_bad_input_is_one_line_with_the_fix(tmp_path):
    for kwargs, pattern in _bad_inputs(tmp_path):
        with pytest.raises(ValueError) as error:
            from_files(**kwargs)
        message = str(error.value)
        assert pattern in message and "\n" not in message, (kwargs, message)


def test_create_system_options_pass_through():
    # snake_case and bare numbers (amu): hydrogen mass repartitioning on the shipped peptide
    heavy = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml", hydrogen_mass=3.024)
    hydrogens = [atom.index for atom in heavy.topology.atoms() if atom.element.symbol == "H"]
    assert all(heavy.system.getParticleMass(i) == 3.024 * unit.dalton for i in hydrogens)
    assert heavy.options["hydrogen_mass"] == 3.024
    total = sum(heavy.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(heavy.n_atoms))
    normal = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml")
    assert total == pytest.approx(sum(normal.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(32)))


# --------------------------------------------------------------------------- constraints and time steps


def test_constraints_and_timesteps_are_reported_with_the_fix():
    flexible = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml")
    assert check_flow_compatible(flexible, timestep=1 * unit.femtosecond) == []
    assert max_unconstrained_timestep(flexible) == 1.0
    with pytest.raises(ValueError, match="timestep 2 fs is too large.*Use 1 fs, or HBonds constraints with 2 fs for plain MD, which flows cannot use"):
        check_flow_compatible(flexible, timestep=0.002)  # bare number: ps
    constrained = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml", constraints="HBonds")
    problems = check_flow_compatible(constrained, timestep=2 * unit.femtosecond, raise_error=False)
    assert len(problems) == 1 and "17 constraints" in problems[0] and "Rebuild it with constraints=None" in problems[0]
    assert check_md_timestep(constrained, 2 * unit.femtosecond) == []  # plain MD with HBonds at 2 fs is fine
    assert max_unconstrained_timestep(constrained) is None
    # repartitioned hydrogens (3.024 amu) allow sqrt(3) fs
    heavy = from_files(pdb=PEPTIDE_PDB, forcefield="amber14-all.xml", hydrogen_mass=3.024)
    assert max_unconstrained_timestep(heavy) == pytest.approx(math.sqrt(3), abs=1e-3)
    assert check_md_timestep(heavy, 1.5 * unit.femtosecond) == []
    assert len(check_md_timestep(heavy, 2 * unit.femtosecond, raise_error=False)) == 1
    # a bare openmm.System works too (hydrogens found by mass)
    assert len(check_flow_compatible(constrained.system, raise_error=False)) == 1
    with pytest.raises(ValueError, match="timestep must be a positive time"):
        check_md_timestep(flexible, 0.0)


# --------------------------------------------------------------------------- command line


def _assert_user_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], result.output


def test_cli_accepts_the_file_options(tmp_path):
    runner = CliRunner()
    output = tmp_path / "md.h5"
    result = runner.invoke(main, ["simulate", "--prmtop", str(PRMTOP), "--inpcrd", str(CRD), "--steps", "20", "--interval", "10",
                                  "--seed", "1", "-o", str(output)])
    assert result.exit_code == 0, result.output
    import mdtraj

    trajectory = mdtraj.load(str(output))
    assert trajectory.n_frames == 2 and trajectory.n_atoms == 22
    result = runner.invoke(main, ["simulate", "--pdb", str(PEPTIDE_PDB), "--forcefield", "amber14-all.xml", "--steps", "20",
                                  "--interval", "10", "-o", str(tmp_path / "peptide.h5")])
    assert result.exit_code == 0, result.output
    # the shipped alanine-dipeptide flow, evaluated on the system built from the AMBER files
    result = runner.invoke(main, ["evaluate", "alanine_dipeptide_vacuum", "--prmtop", str(PRMTOP), "--inpcrd", str(CRD), "-n", "100"])
    assert result.exit_code == 0, result.output
    assert "importance-sampling ESS" in result.output


def test_cli_file_errors_are_one_line(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "x.h5")
    _assert_user_error(runner.invoke(main, ["simulate", "--prmtop", str(PRMTOP), "--steps", "20", "--interval", "10", "-o", out]),
                       "prmtop (--prmtop) needs inpcrd (--inpcrd)")
    _assert_user_error(runner.invoke(main, ["simulate", "--forcefield", "amber14-all.xml", "--steps", "20", "--interval", "10", "-o", out]),
                       "forcefield (--forcefield) needs pdb (--pdb)")
    _assert_user_error(runner.invoke(main, ["simulate", "--prmtop", str(tmp_path / "nope.prmtop"), "--inpcrd", str(CRD), "--steps", "20",
                                            "--interval", "10", "-o", out]), "nope.prmtop not found")
    _assert_user_error(runner.invoke(main, ["evaluate", "alanine_dipeptide_vacuum", "--inpcrd", str(CRD), "-n", "10"]),
                       "inpcrd (--inpcrd) needs prmtop (--prmtop)")


def test_cli_flow_trained_on_files_needs_the_files_again(tmp_path):
    runner = CliRunner()
    files = ["--prmtop", str(PRMTOP), "--inpcrd", str(CRD)]
    data, checkpoint = tmp_path / "md.h5", tmp_path / "flow.pt"
    assert runner.invoke(main, ["simulate", *files, "--steps", "200", "--interval", "10", "--seed", "1", "-o", str(data)]).exit_code == 0
    result = runner.invoke(main, ["train", *files, "-d", str(data), "-o", str(checkpoint), "--ml-steps", "2", "--blocks", "1",
                                  "--hidden", "8", "--batch-size", "8", "--ess-samples", "20"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["evaluate", str(checkpoint), *files, "-n", "20"])
    assert result.exit_code == 0, result.output
    _assert_user_error(runner.invoke(main, ["evaluate", str(checkpoint), "-n", "20"]), "'alanine-dipeptide', which is not a registered system")
