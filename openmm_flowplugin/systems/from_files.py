"""Your own molecule: a :class:`MolecularSystem` from OpenMM, AMBER, GROMACS or serialized-System input files.

One source per call, as in OpenMM's own readers:

=============================  ==========================================  =====================================
source                         Python                                      command line
=============================  ==========================================  =====================================
PDB (or PDBx/mmCIF) + XMLs     ``pdb=, forcefield=[...]``                  ``--pdb FILE --forcefield XML ...``
AMBER                          ``prmtop=, inpcrd=``                        ``--prmtop FILE --inpcrd FILE``
GROMACS                        ``top=, gro=`` (``include_dir=``)           ``--top FILE --gro FILE``
serialized ``openmm.System``   ``system_xml=, pdb=``                       ``--system-xml FILE --pdb FILE``
=============================  ==========================================  =====================================
"""

__all__ = ["from_files"]

import warnings
from pathlib import Path

import openmm
from openmm import app, unit

from ..units import kelvin
from ._inputs import (
    build_options,
    check_box,
    checked_file,
    choose_source,
    create_system,
    method_name,
    nm_positions,
    one_line,
    periodic_box,
    read,
    set_box,
    source_inputs,
)
from .compatibility import check_flow_compatible
from .molecular_system import MolecularSystem
from ..errors import InvalidInputError

_IMPLICIT_XML = {"OBC1": "implicit/obc1.xml", "OBC2": "implicit/obc2.xml", "GBn": "implicit/gbn.xml",
                 "GBn2": "implicit/gbn2.xml", "HCT": "implicit/hct.xml"}


def from_files(pdb=None, forcefield=None, prmtop=None, inpcrd=None, top=None, gro=None, system_xml=None,
               temperature=300.0 * unit.kelvin, name=None, constraints=None, nonbonded_method=None,
               implicit_solvent=None, include_dir=None, **create_system_options):
    """Build a :class:`MolecularSystem` from your own input files (the same object as ``systems.get(name)``).

    Give exactly one source: ``pdb`` + ``forcefield``, ``prmtop`` + ``inpcrd``, ``top`` + ``gro``, or
    ``system_xml`` + ``pdb``. Every other combination, a missing or unreadable file, and inputs that do
    not fit together (atom counts) raise a one-line ``ValueError`` that names the option and the fix.

    Parameters
    ----------
    pdb : str or Path, optional
        PDB file (``.cif``/``.pdbx``: PDBx/mmCIF): the molecule to parametrize with ``forcefield``, or
        the topology and positions for ``system_xml``.
    forcefield : str or sequence of str, optional
        OpenMM force-field XMLs for :class:`openmm.app.ForceField`, shipped names or paths, e.g.
        ``["amber14-all.xml"]``; implicit solvent by adding ``"implicit/obc1.xml"`` (or ``implicit_solvent``).
    prmtop, inpcrd : str or Path, optional
        AMBER topology and coordinates (``.inpcrd``, ``.rst7``, ``.crd``, ``.nc``).
    top, gro : str or Path, optional
        GROMACS topology and coordinates. ``#include`` files are looked up in ``include_dir``.
    system_xml : str or Path, optional
        An ``openmm.System`` written by ``openmm.XmlSerializer``; used as it is (with ``pdb``).
    temperature : Quantity or float
        Temperature of the system (K if a bare number; default 300 K).
    name : str, optional
        Default: the stem of the main file (``pdb``, ``prmtop``, ``top`` or ``system_xml``).
    constraints : None, str or openmm.app constraint, optional
        Default ``None``: no constraints and flexible water. Flows and :class:`~openmm_flowplugin.FlowMCMove`
        propose new positions for every atom and cannot keep bond lengths fixed, so a System for them
        must have no constraints (and MD on it needs a ~1 fs time step). ``"HBonds"`` etc. build a
        System for plain MD only.
    nonbonded_method : None, str or openmm.app method, optional
        Default: ``NoCutoff`` if the input has no periodic box, ``PME`` if it has one (PDB ``CRYST1``,
        AMBER box, a non-zero GROMACS box).
    implicit_solvent : None, str or openmm.app implicit model, optional
        ``"OBC1"``, ``"OBC2"``, ``"GBn"``, ``"GBn2"`` or ``"HCT"``: ``implicitSolvent`` for AMBER files, the
        matching ``implicit/*.xml`` for ``forcefield``. Not for GROMACS or ``system_xml``.
    include_dir : str or Path, optional
        GROMACS include folder (default: OpenMM's, ``/usr/local/gromacs/share/gromacs/top``).
    **create_system_options
        More ``createSystem`` arguments, in OpenMM's or snake_case spelling (``nonbonded_cutoff=1.2``,
        ``hydrogen_mass=...``, ``remove_cm_motion=False``); bare numbers in nm and amu.

    Returns
    -------
    MolecularSystem
        ``options`` records the source files (absolute paths) and options; periodic box vectors of the
        input are the System's defaults.

    Raises
    ------
    ValueError
        One line naming the option(s) and the fix.

    Warns
    -----
    UserWarning
        A ``system_xml`` with constraints (flows cannot use it; see :func:`check_flow_compatible`).

    Examples
    --------
    The AMBER files of the registered alanine dipeptide:

    >>> from openmm_flowplugin import systems
    >>> prmtop = systems.data_path("data", "alanine-dipeptide.prmtop")
    >>> ala2 = systems.from_files(prmtop=prmtop, inpcrd=systems.data_path("data", "alanine-dipeptide.crd"))
    >>> ala2.name, ala2.n_atoms, ala2.n_constraints, ala2.options["nonbonded_method"]
    ('alanine-dipeptide', 22, 0, 'NoCutoff')
    >>> systems.from_files(prmtop=prmtop)
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: prmtop (--prmtop) needs inpcrd (--inpcrd): pass the AMBER coordinates (.inpcrd, .rst7 or .crd) that go with it.
    """
    inputs = {"pdb": pdb, "forcefield": forcefield, "prmtop": prmtop, "inpcrd": inpcrd, "top": top, "gro": gro,
              "system_xml": system_xml}
    source = choose_source(inputs)
    if include_dir is not None and source != "gromacs":
        raise InvalidInputError(f"include_dir is for GROMACS topologies (top/gro); remove it for {source_inputs(source)}.")
    temperature = kelvin(temperature) * unit.kelvin
    if source == "system_xml":
        extra = {"constraints": constraints, "nonbonded_method": nonbonded_method, "implicit_solvent": implicit_solvent}
        extra = [key for key, value in extra.items() if value is not None] + sorted(create_system_options)
        if extra:
            raise InvalidInputError(
                f"a serialized System (--system-xml) is used as it is; {', '.join(extra)} cannot change it. "
                "Re-export the System from the code that built it, or build it here from the force-field files."
            )
        built = _from_system_xml(checked_file(system_xml, "system_xml"), checked_file(pdb, "pdb"))
    else:
        options = build_options(constraints, nonbonded_method, create_system_options)
        if source == "forcefield":
            built = _from_pdb(checked_file(pdb, "pdb"), forcefield, implicit_solvent, options)
        elif source == "amber":
            built = _from_amber(checked_file(prmtop, "prmtop"), checked_file(inpcrd, "inpcrd"), implicit_solvent, options)
        else:
            if implicit_solvent is not None:
                raise InvalidInputError("implicit_solvent is not supported for GROMACS input by OpenMM; use --prmtop/--inpcrd "
                                 "or --pdb with --forcefield ... implicit/obc1.xml.")
            built = _from_gromacs(checked_file(top, "top"), checked_file(gro, "gro"), include_dir, options)
    system, topology, positions, files, settings = built
    check_box(system, files)
    name = name or Path(next(iter(files.values()))).stem
    molecular_system = MolecularSystem(
        name=name,
        system=system,
        topology=topology,
        positions=positions,
        temperature=temperature,
        description=_description(name, system, files, settings),
        options={"source": source, **files, **settings, "temperature": temperature},
    )
    if source == "system_xml" and system.getNumConstraints():
        for problem in check_flow_compatible(molecular_system, raise_error=False):
            warnings.warn(problem, stacklevel=2)
    return molecular_system


def _description(name, system, files, settings):
    sources = " + ".join(Path(path).name for path in files.values())
    parts = [f"{name}: {system.getNumParticles()} atoms from {sources}"]
    if "system_xml" in files:
        parts.append("serialized System")
    if settings.get("forcefield"):
        parts.append(", ".join(Path(xml).name if Path(xml).is_absolute() else xml for xml in settings["forcefield"]))
    if "nonbonded_method" in settings:
        parts.append(settings["nonbonded_method"])
        if settings.get("implicit_solvent"):
            parts.append(f"{settings['implicit_solvent']} implicit solvent")
    n_constraints = system.getNumConstraints()
    parts.append(f"{n_constraints} constraints" if n_constraints else "no constraints")
    return "; ".join(parts)


def _read_structure(path):
    if path.suffix.lower() in (".cif", ".pdbx", ".mmcif"):
        return read(app.PDBxFile, path, "pdb", "a PDBx/mmCIF file")
    return read(app.PDBFile, path, "pdb", "a PDB file")


def _structure_positions(structure, path):
    n_atoms = structure.topology.getNumAtoms()
    if n_atoms == 0:
        raise InvalidInputError(f"pdb (--pdb) {path} has no atoms; give a PDB file with ATOM/HETATM records.")
    return nm_positions(structure.getPositions(asNumpy=True))


def _from_pdb(path, forcefield, implicit_solvent, options):
    structure = _read_structure(path)
    positions = _structure_positions(structure, path)
    xmls = [str(forcefield)] if isinstance(forcefield, (str, Path)) else [str(xml) for xml in forcefield]
    implicit = method_name(implicit_solvent, "implicit_solvent")
    if implicit is not None and _IMPLICIT_XML[implicit] not in xmls:
        xmls.append(_IMPLICIT_XML[implicit])
    try:
        force_field = app.ForceField(*xmls)
    except Exception as error:  # missing or malformed XML
        raise InvalidInputError(
            f"cannot load forcefield (--forcefield) {' '.join(xmls)}: {one_line(error)}. Give paths or XMLs shipped "
            "with OpenMM, e.g. amber14-all.xml, amber14/tip3pfb.xml, implicit/obc1.xml."
        ) from None
    xmls = [str(Path(xml).resolve()) if Path(xml).is_file() else xml for xml in xmls]
    topology = structure.topology
    box = periodic_box(topology.getPeriodicBoxVectors())
    system, settings = create_system(force_field.createSystem, options, box is not None, f"{path.name} with {', '.join(xmls)}",
                                     topology)
    set_box(system, topology, box)
    settings.update(forcefield=xmls, implicit_solvent=implicit)
    return system, topology, positions, {"pdb": str(path)}, settings


def _from_amber(prmtop_path, inpcrd_path, implicit_solvent, options):
    prmtop = read(app.AmberPrmtopFile, prmtop_path, "prmtop", "an AMBER topology")
    inpcrd = read(app.AmberInpcrdFile, inpcrd_path, "inpcrd", "AMBER coordinates")
    positions = nm_positions(inpcrd.getPositions(asNumpy=True))
    n_top, n_crd = prmtop.topology.getNumAtoms(), len(positions)
    if n_top != n_crd:
        raise InvalidInputError(f"prmtop (--prmtop) {prmtop_path.name} has {n_top} atoms but inpcrd (--inpcrd) {inpcrd_path.name} "
                         f"has {n_crd}; pass the coordinates written with this topology.")
    box = periodic_box(inpcrd.boxVectors) or periodic_box(prmtop.topology.getPeriodicBoxVectors())
    if box is not None:
        prmtop.topology.setPeriodicBoxVectors(box)
    implicit = method_name(implicit_solvent, "implicit_solvent")
    if implicit is not None:
        options = {**options, "kwargs": {**options["kwargs"], "implicitSolvent": getattr(app, implicit)}}
    system, settings = create_system(prmtop.createSystem, options, box is not None, prmtop_path.name)
    set_box(system, prmtop.topology, box)
    settings["implicit_solvent"] = implicit
    return system, prmtop.topology, positions, {"prmtop": str(prmtop_path), "inpcrd": str(inpcrd_path)}, settings


def _from_gromacs(top_path, gro_path, include_dir, options):
    gro = read(app.GromacsGroFile, gro_path, "gro", "a GROMACS coordinate file")
    box = periodic_box(gro.getPeriodicBoxVectors())
    kwargs = {"periodicBoxVectors": box}
    if include_dir is not None:
        include = Path(include_dir).expanduser().resolve()
        if not include.is_dir():
            raise InvalidInputError(f"include_dir {include_dir} is not a folder; give the GROMACS share/gromacs/top folder.")
        kwargs["includeDir"] = str(include)
    try:
        topfile = app.GromacsTopFile(str(top_path), **kwargs)
    except Exception as error:
        hint = " Pass include_dir= the GROMACS share/gromacs/top folder." if "include" in str(error).lower() else ""
        raise InvalidInputError(f"cannot read top (--top) {top_path} as a GROMACS topology: {one_line(error)}.{hint}") from None
    positions = nm_positions(gro.getPositions(asNumpy=True))
    n_top, n_gro = topfile.topology.getNumAtoms(), len(positions)
    if n_top != n_gro:
        raise InvalidInputError(f"top (--top) {top_path.name} has {n_top} atoms but gro (--gro) {gro_path.name} has {n_gro}; "
                         "pass the coordinates of this topology (same molecules, same order).")
    system, settings = create_system(topfile.createSystem, options, box is not None, top_path.name)
    set_box(system, topfile.topology, box)
    files = {"top": str(top_path), "gro": str(gro_path)}
    if include_dir is not None:
        settings["include_dir"] = kwargs["includeDir"]
    return system, topfile.topology, positions, files, settings


def _from_system_xml(xml_path, pdb_path):
    try:
        system = openmm.XmlSerializer.deserialize(xml_path.read_text())
    except Exception as error:
        raise InvalidInputError(f"cannot read system_xml (--system-xml) {xml_path} as a serialized OpenMM System: {one_line(error)}.") from None
    if not isinstance(system, openmm.System):
        raise InvalidInputError(f"system_xml (--system-xml) {xml_path} holds a {type(system).__name__}, not a System; "
                         "write it with openmm.XmlSerializer.serialize(system).")
    structure = _read_structure(pdb_path)
    positions = _structure_positions(structure, pdb_path)
    n_system, n_pdb = system.getNumParticles(), len(positions)
    if n_system != n_pdb:
        raise InvalidInputError(f"system_xml (--system-xml) {xml_path.name} has {n_system} particles but pdb (--pdb) {pdb_path.name} "
                         f"has {n_pdb} atoms; pass the PDB of this System (same atoms, same order).")
    topology = structure.topology
    box = periodic_box(topology.getPeriodicBoxVectors())
    if system.usesPeriodicBoundaryConditions():
        if box is not None:  # the PDB's box belongs with its positions
            system.setDefaultPeriodicBoxVectors(*box)
        topology.setPeriodicBoxVectors(system.getDefaultPeriodicBoxVectors())
    return system, topology, positions, {"system_xml": str(xml_path), "pdb": str(pdb_path)}, {}
