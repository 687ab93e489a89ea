"""The two legs of a hydration free energy for :mod:`.small_molecules`: the solute's prmtop/inpcrd alone and in
TIP3P water (antechamber + parmchk2 + tleap and OpenMM's Modeller, or cut out of a solvated prmtop by cpptraj),
and the OpenMM Systems built from them.
"""

__all__ = ["WATER_RESIDUES", "ION_ELEMENTS", "parametrize", "from_solvated_prmtop", "assemble"]

import collections
import math
import re
import shutil
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.freeenergy import SolvationSystem
from openmm_flowplugin.systems._inputs import (
    nm_positions,
    one_line,
    periodic_box,
    set_box,
)
from openmm_flowplugin.systems.compatibility import check_md_timestep
from openmm_flowplugin.systems.molecular_system import MolecularSystem

from ._ambertools import ambertools_version, check_frcmod, run_leap, run_tool
from ._solute import (
    CONFORMER_SEED,
    checked_net_charge,
    rdkit_version,
    read_mol2,
    read_sdf,
    refuse_charged,
    spread_charge_residual,
    write_conformer,
)
from ._workdir import build_identity

WATER_RESIDUES = frozenset({"HOH", "WAT", "TP3", "T3P", "SOL", "TIP3", "H2O"})
ION_ELEMENTS = frozenset({"Li", "Na", "K", "Rb", "Cs", "F", "Cl", "Br", "I", "Mg", "Ca", "Zn", "Sr", "Ba"})


def parametrize(source, inputs, name, options, scratch):
    """antechamber + parmchk2 + tleap (or tleap alone for a TIP3P water); file names and facts of the build."""
    forcefield, info = options["forcefield"], {"identity": build_identity(source, inputs)}
    leap = []
    if source == "water":
        leap += ["source leaprc.water.tip3p", "MOL = copy WAT"]
    else:
        mol2, frcmod = f"{name}_{forcefield}.mol2", f"{name}_{forcefield}.frcmod"
        if source == "smiles":
            canonical, net_charge, mol = inputs
            sdf = f"{name}_rdkit.sdf"
            write_conformer(mol, scratch / sdf)
            args = ["-i", sdf, "-fi", "sdf"]
            info.update(smiles=canonical, conformer_seed=CONFORMER_SEED, rdkit=rdkit_version())
        elif source == "sdf":
            shutil.copyfile(inputs["sdf"], scratch / f"{name}_input.sdf")
            net_charge = read_sdf(scratch / f"{name}_input.sdf")
            args = ["-i", f"{name}_input.sdf", "-fi", "sdf"]
            info.update(sdf=str(inputs["sdf"]), rdkit=rdkit_version())
        else:
            shutil.copyfile(inputs["mol2"], scratch / f"{name}_input.mol2")
            _, _, charges = read_mol2(scratch / f"{name}_input.mol2")
            net_charge = 0 if charges is None else checked_net_charge(charges, f"mol2 {inputs['mol2'].name}")
            args = ["-i", f"{name}_input.mol2", "-fi", "mol2"]
            info.update(mol2=str(inputs["mol2"]), frcmod=str(inputs["frcmod"]) if "frcmod" in inputs else None)
        args += ["-o", mol2, "-fo", "mol2", "-at", forcefield, "-rn", "MOL", "-pf", "y"]
        if options["charge_method"] == "bcc":
            args += ["-c", "bcc", "-nc", str(net_charge)]
        run_tool("antechamber", args, scratch, name, [mol2])
        run_tool("parmchk2", ["-i", mol2, "-f", "mol2", "-o", frcmod, "-s", forcefield], scratch, name, [frcmod])
        user_frcmod = None
        if "frcmod" in inputs:
            user_frcmod = scratch / f"{name}_input.frcmod"
            shutil.copyfile(inputs["frcmod"], user_frcmod)
        check_frcmod(scratch / frcmod, user_frcmod)
        if options["charge_method"] == "bcc":
            info["charge_correction_e"] = spread_charge_residual(scratch / mol2, net_charge)
        names, types, charges = read_mol2(scratch / mol2)
        info.update(net_charge=checked_net_charge(charges, mol2), solute_atom_names=names, solute_atom_types=types)
        leap += [f"source leaprc.{forcefield}", "source leaprc.water.tip3p", f"MOL = loadmol2 {mol2}",
                 f"loadamberparams {frcmod}"] + ([f"loadamberparams {user_frcmod.name}"] if user_frcmod else [])
    vacuum = [f"{name}_vacuum.prmtop", f"{name}_vacuum.inpcrd"]
    run_leap(leap + [f"saveamberparm MOL {vacuum[0]} {vacuum[1]}"], scratch, name, "tleap_vacuum", vacuum)
    width = _solvate(scratch / vacuum[0], scratch / vacuum[1], options["padding_nm"], scratch / f"{name}_solvated.pdb")
    solvent = [f"{name}_solvent.prmtop", f"{name}_solvent.inpcrd"]
    box = f"{10 * width:.4f}"
    leap += [f"SYS = loadpdb {name}_solvated.pdb", f"set SYS box {{{box} {box} {box}}}"]
    if info.get("net_charge"):
        leap.append(f"addions SYS {'Na+' if info['net_charge'] < 0 else 'Cl-'} 0")
    log = run_leap(leap + [f"saveamberparm SYS {solvent[0]} {solvent[1]}"], scratch, name, "tleap_solvent", solvent)
    version = re.search(r"General Force Field.*?\(Version ([^,)]+)", log)
    info.update(forcefield_version=version.group(1) if version else None, ambertools=ambertools_version(),
                solvation="OpenMM Modeller.addSolvent (pre-equilibrated TIP3P box), cube: solute diameter + 2 * padding")
    return {"solvent": tuple(scratch / f for f in solvent), "vacuum": tuple(scratch / f for f in vacuum),
            "solute_residues": [0], "info": info}  # the solute (MOL) stays the first residue


def _solvate(prmtop_path, inpcrd_path, padding, pdb_path):
    """Solute + TIP3P waters in a cube (OpenMM's Modeller) written as a PDB for tleap; returns the edge (nm).

    The edge is the solute's diameter (twice the largest distance of an atom from the centre of its
    bounding box) + 2 * padding, so every orientation keeps ``padding`` of water to the faces. tleap's
    ``solvatebox`` is not used: it leaves ~0.3 nm of vacuum at each periodic face (0.65 g/mL in a 3 nm box).
    """
    prmtop, inpcrd = app.AmberPrmtopFile(str(prmtop_path)), app.AmberInpcrdFile(str(inpcrd_path))
    positions = inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    center = 0.5 * (positions.min(axis=0) + positions.max(axis=0))
    width = 2 * float(np.max(np.linalg.norm(positions - center, axis=1))) + 2 * padding
    modeller = app.Modeller(prmtop.topology, inpcrd.getPositions())
    modeller.addSolvent(_radii_forcefield(prmtop), model="tip3p", boxSize=openmm.Vec3(width, width, width) * unit.nanometer,
                        neutralize=False)
    with open(pdb_path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
    return width


def _radii_forcefield(prmtop):
    """A ForceField with the solute's nonbonded parameters, from which Modeller takes its van der Waals radii."""
    import io
    from xml.sax.saxutils import quoteattr

    system = prmtop.createSystem()  # keep it referenced: its forces are views into it
    nonbonded = next(force for force in system.getForces() if isinstance(force, openmm.NonbondedForce))
    atoms = list(prmtop.topology.atoms())
    xml = ["<ForceField>", "<AtomTypes>"]
    xml += [f'<Type name="t{a.index}" class="t{a.index}" element="{a.element.symbol}" '
            f'mass="{a.element.mass.value_in_unit(unit.dalton)}"/>' for a in atoms]
    xml += ["</AtomTypes>", "<Residues>"]
    for residue in prmtop.topology.residues():
        xml.append(f"<Residue name={quoteattr(residue.name)}>")
        xml += [f"<Atom name={quoteattr(a.name)} type=\"t{a.index}\"/>" for a in residue.atoms()]
        xml += [f"<Bond atomName1={quoteattr(a.name)} atomName2={quoteattr(b.name)}/>" for a, b in prmtop.topology.bonds()
                if a.residue is residue]
        xml.append("</Residue>")
    xml += ["</Residues>", '<NonbondedForce coulomb14scale="0.833333" lj14scale="0.5">']
    for a in atoms:
        charge, sigma, epsilon = nonbonded.getParticleParameters(a.index)
        xml.append(f'<Atom type="t{a.index}" charge="{charge.value_in_unit(unit.elementary_charge)}" '
                   f'sigma="{sigma.value_in_unit(unit.nanometer)}" epsilon="{epsilon.value_in_unit(unit.kilojoule_per_mole)}"/>')
    xml += ["</NonbondedForce>", "</ForceField>"]
    return app.ForceField(io.StringIO("\n".join(xml)))


def _solute_residues(topology):
    """Indices of the residues of the first molecule that is not water or an ion."""
    def solvent_like(residue):
        atoms = list(residue.atoms())
        return residue.name.upper() in WATER_RESIDUES or (
            len(atoms) == 1 and atoms[0].element is not None and atoms[0].element.symbol in ION_ELEMENTS)

    first = next((residue for residue in topology.residues() if not solvent_like(residue)), None)
    if first is None:
        raise InvalidInputError("the prmtop holds only water and ions; give a solvated system whose solute comes with it.")
    links = {}
    for bond in topology.bonds():
        a, b = bond[0].residue.index, bond[1].residue.index
        links.setdefault(a, set()).add(b)
        links.setdefault(b, set()).add(a)
    molecule, todo = {first.index}, [first.index]
    while todo:
        for other in links.get(todo.pop(), ()):
            if other not in molecule:
                molecule.add(other)
                todo.append(other)
    return sorted(molecule)


def from_solvated_prmtop(inputs, name, options, scratch):
    """The vacuum leg cut out of a solvated prmtop with cpptraj (``strip``)."""
    prmtop, inpcrd = scratch / f"{name}_input.prmtop", scratch / f"{name}_input.inpcrd"
    shutil.copyfile(inputs["prmtop"], prmtop)
    shutil.copyfile(inputs["inpcrd"], inpcrd)
    try:
        topology = app.AmberPrmtopFile(str(prmtop)).topology
    except Exception as error:  # noqa: BLE001 (OpenMM's reader raises many types on bad files)
        raise InvalidInputError(f"cannot read prmtop {inputs['prmtop']} as an AMBER topology: {one_line(error)}.") from None
    residues = _solute_residues(topology)
    mask = ":" + ",".join(str(index + 1) for index in residues)
    script = [f"parm {prmtop.name}", f"trajin {inpcrd.name}",
              f"strip !({mask}) parmout {name}_vacuum.prmtop nobox", f"trajout {name}_vacuum.inpcrd restart", "run", "quit"]
    (scratch / f"{name}_cpptraj.in").write_text("\n".join(script) + "\n")
    outputs = [f"{name}_vacuum.prmtop", f"{name}_vacuum.inpcrd"]
    run_tool("cpptraj", ["-i", f"{name}_cpptraj.in"], scratch, name, outputs)
    info = {"identity": build_identity("prmtop", inputs), "prmtop": str(inputs["prmtop"]), "inpcrd": str(inputs["inpcrd"]),
            "solute_residues": [topology_residue.name for topology_residue in topology.residues()
                                if topology_residue.index in residues],
            "forcefield": "from prmtop", "charge_method": "from prmtop", "padding_nm": None, "water_model": "from prmtop",
            "ambertools": ambertools_version()}
    return {"solvent": (prmtop, inpcrd), "vacuum": (scratch / outputs[0], scratch / outputs[1]), "solute_residues": residues,
            "info": info}


def _check_repartitioned_masses(system, topology, hydrogen_mass):
    """Refuse a hydrogen mass that leaves a heavy atom lighter than its hydrogens (OpenMM takes their extra mass from
    the atom they are bonded to: methane's carbon keeps 12.011 - 4 (m_H - 1.008) amu)."""
    hydrogens = collections.Counter()
    for a, b in topology.bonds():
        for hydrogen, heavy in ((a, b), (b, a)):
            if hydrogen.element is not None and hydrogen.element.symbol == "H" and heavy.element is not None \
                    and heavy.element.symbol != "H":
                hydrogens[heavy.index] += 1
    for atom in topology.atoms():
        if atom.element is None or atom.element.symbol == "H":
            continue
        mass = system.getParticleMass(atom.index).value_in_unit(unit.dalton)
        if mass < hydrogen_mass:
            n = hydrogens[atom.index]
            limit = (atom.element.mass.value_in_unit(unit.dalton) + 1.008 * n) / (n + 1)  # equal to its hydrogens
            raise InvalidInputError(f"hydrogen_mass {hydrogen_mass:g} amu leaves atom {atom.index} ({atom.element.symbol}, residue "
                                    f"{atom.residue.name}) with {mass:.3g} amu, lighter than its hydrogens; use a hydrogen mass "
                                    f"of at most {math.floor(limit * 100) / 100:g} amu (3 is usual with 4 fs steps).")


def _leg(prmtop_path, inpcrd_path, periodic, options):
    prmtop, inpcrd = app.AmberPrmtopFile(str(prmtop_path)), app.AmberInpcrdFile(str(inpcrd_path))
    nm = unit.nanometer
    kwargs = {"constraints": None if options["constraints"] is None else getattr(app, options["constraints"]),
              "rigidWater": True, "hydrogenMass": None if options["hydrogen_mass_amu"] is None
              else options["hydrogen_mass_amu"] * unit.dalton}
    if periodic:
        switch = options["switch_distance_nm"]
        kwargs.update(nonbondedMethod=app.PME, nonbondedCutoff=options["nonbonded_cutoff_nm"] * nm,
                      switchDistance=None if switch is None else switch * nm,
                      ewaldErrorTolerance=options["ewald_error_tolerance"])
    else:
        kwargs.update(nonbondedMethod=app.NoCutoff)
    system = prmtop.createSystem(**kwargs)
    if options["hydrogen_mass_amu"] is not None:
        _check_repartitioned_masses(system, prmtop.topology, options["hydrogen_mass_amu"])
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setUseDispersionCorrection(options["dispersion_correction"] and periodic)
    box = periodic_box(inpcrd.boxVectors) if periodic else None
    if periodic:
        if box is None:
            raise InvalidInputError(f"{inpcrd_path.name} has no periodic box; give the coordinates of a solvated box.")
        set_box(system, prmtop.topology, box)
    else:
        prmtop.topology.setPeriodicBoxVectors(None)
    return system, prmtop.topology, nm_positions(inpcrd.getPositions(asNumpy=True))


def assemble(name, options, built, scratch, folder):
    info = dict(built["info"])
    temperature = options["temperature_K"] * unit.kelvin
    system, topology, positions = _leg(*built["solvent"], True, options)
    width = min(vector[i] for i, vector in enumerate(system.getDefaultPeriodicBoxVectors())).value_in_unit(unit.nanometer)
    if width < 2 * options["nonbonded_cutoff_nm"]:
        raise InvalidInputError(f"the water box is {width:.3g} nm wide, less than twice the {options['nonbonded_cutoff_nm']:g} "
                                "nm cutoff; increase padding or shorten nonbonded_cutoff.")
    residues = built["solute_residues"]
    solute = [atom.index for atom in topology.atoms() if atom.residue.index in residues]
    charges = next(force for force in system.getForces() if isinstance(force, openmm.NonbondedForce))
    solute_charges = [charges.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in solute]
    net_charge = checked_net_charge(solute_charges, "the solute")
    refuse_charged(net_charge, options)
    vacuum_system, vacuum_topology, vacuum_positions = _leg(*built["vacuum"], False, options)
    waters = [residue for residue in topology.residues() if residue.name.upper() in WATER_RESIDUES
              and residue.index not in residues]
    ions, others = {}, {}
    for residue in topology.residues():
        if residue.index not in residues and residue.name.upper() not in WATER_RESIDUES:
            atoms = list(residue.atoms())
            is_ion = len(atoms) == 1 and atoms[0].element is not None and atoms[0].element.symbol in ION_ELEMENTS
            counts = ions if is_ion else others
            counts[residue.name] = counts.get(residue.name, 0) + 1
    box = [float(system.getDefaultPeriodicBoxVectors()[i][i].value_in_unit(unit.nanometer)) for i in range(3)]
    mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles()))
    avogadro = unit.AVOGADRO_CONSTANT_NA.value_in_unit(unit.mole**-1)
    info.pop("identity", None)
    settings = {"builder": "small_molecule_solvation", "name": name, **{k: v for k, v in options.items()}, **info,
                "net_charge": net_charge, "solute_charges_e": [round(q, 10) for q in solute_charges],
                "n_solute_atoms": len(solute), "n_waters": len(waters), "counter_ions": ions, "other_residues": others,
                "box_nm": box,
                "density_g_per_ml": float(mass / avogadro / (np.prod(box) * 1e-21))}
    if folder is not None:
        settings["files"] = {f"{leg}_{ext}": str(folder / Path(built[leg][k]).name)
                             for leg in ("solvent", "vacuum") for k, ext in enumerate(("prmtop", "inpcrd"))}
    pressure = None if options["pressure_atm"] is None else options["pressure_atm"] * unit.atmosphere
    if pressure is not None:
        system.addForce(openmm.MonteCarloBarostat(pressure, temperature))
    legs = {}
    for leg, (leg_system, leg_topology, leg_positions) in {"solvent": (system, topology, positions),
                                                             "vacuum": (vacuum_system, vacuum_topology, vacuum_positions)}.items():
        where = f"in {len(waters)} TIP3P waters, PME {options['nonbonded_cutoff_nm']:g} nm" if leg == "solvent" else "in vacuum"
        legs[leg] = MolecularSystem(
            name=f"{name}_{leg}", system=leg_system, topology=leg_topology, positions=leg_positions, temperature=temperature,
            description=f"{name} ({settings['forcefield']}, {settings['charge_method']} charges) {where}",
            options={**settings, "leg": leg, "temperature": temperature})
    check_md_timestep(legs["solvent"], options["timestep_ps"])
    return SolvationSystem(name=name, solvent=legs["solvent"], vacuum=legs["vacuum"], solute_atoms=solute, pressure=pressure,
                           settings=settings)
