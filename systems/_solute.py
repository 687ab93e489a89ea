"""The solute from SMILES (RDKit: one seeded conformer), an SD file (its own conformer) or mol2 (names, types, charges)
for :mod:`.small_molecules`."""

__all__ = ["CONFORMER_SEED", "parse_smiles", "read_sdf", "write_conformer", "rdkit_version", "read_mol2", "checked_net_charge",
           "check_uncharged_mol2_parity", "refuse_charged", "spread_charge_residual"]

import re
from pathlib import Path

import numpy as np

from openmm_flowplugin.errors import InvalidInputError, MissingDependencyError, ParametrizationError

from ._ambertools import INSTALL_HINT

CONFORMER_SEED = 20240601  # RDKit ETKDG seed: the same SMILES always gives the same conformer, hence charges


def parse_smiles(smiles):
    """``(canonical SMILES, net charge, RDKit Mol)`` of one molecule."""
    try:
        from rdkit import Chem, rdBase
    except ImportError as error:
        raise MissingDependencyError(f"a solute from SMILES needs RDKit: {INSTALL_HINT}.") from error
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(str(smiles)) if str(smiles).strip() else None
    if mol is None:
        raise InvalidInputError(f"smiles={smiles!r} is not a valid SMILES string (RDKit cannot parse it); check brackets, "
                                "ring-closure digits and valences, e.g. 'CCO' for ethanol.")
    if len(Chem.GetMolFrags(mol)) != 1:
        raise InvalidInputError(f"smiles={smiles!r} holds {len(Chem.GetMolFrags(mol))} molecules; give one molecule "
                                "(no '.'-separated salts or mixtures).")
    return Chem.MolToSmiles(mol), int(Chem.GetFormalCharge(mol)), mol


def read_sdf(path):
    """The net (formal) charge of the one molecule with 3D coordinates and explicit hydrogens in the SD file ``path``."""
    try:
        from rdkit import Chem, rdBase
    except ImportError as error:
        raise MissingDependencyError(f"a solute from an SD file needs RDKit: {INSTALL_HINT}.") from error
    with rdBase.BlockLogs():
        molecules = [m for m in Chem.SDMolSupplier(str(path), removeHs=False)]
    if not molecules or molecules[0] is None:
        raise InvalidInputError(f"sdf {path} holds no molecule RDKit can read (check its atom and bond blocks and valences).")
    if len(molecules) > 1:
        raise InvalidInputError(f"sdf {path} holds {len(molecules)} records; give one molecule (one conformer) per file.")
    mol = molecules[0]
    if len(Chem.GetMolFrags(mol)) != 1:
        raise InvalidInputError(f"sdf {path} holds {len(Chem.GetMolFrags(mol))} molecules; give one molecule (no salts or mixtures).")
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        raise InvalidInputError(f"sdf {path} has no 3D coordinates; give a 3D conformer (or the molecule as --smiles, which "
                                "generates one).")
    if any(atom.GetNumImplicitHs() for atom in mol.GetAtoms()):
        raise InvalidInputError(f"sdf {path} lacks hydrogens (RDKit finds implicit ones); add them with coordinates, e.g. "
                                "Chem.AddHs(mol, addCoords=True), or give the molecule as --smiles.")
    return int(Chem.GetFormalCharge(mol))


def write_conformer(mol, path):
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


def rdkit_version():
    from rdkit import rdBase

    return rdBase.rdkitVersion


def read_mol2(path, key="mol2"):
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


def checked_net_charge(charges, label):
    total = float(np.sum(charges))
    if abs(total - round(total)) > 0.01:
        raise InvalidInputError(f"the charges of {label} sum to {total:.4f} e, not a whole number; fix the charges or use "
                                "charge_method='bcc' (--charge-method bcc).")
    return round(total)


_GAFF_TYPE = re.compile(r"^(cl|br|f|i|[chnosp][0-9a-z+]?)$")  # GAFF/GAFF2 types: the element is their first letter(s)


def _element_of_mol2_type(atom_type):
    """Element symbol of a SYBYL (``C.3``, ``Cl``, ``N.am``) or GAFF/GAFF2 (``c3``, ``cl``, ``n+``) atom type; ``None`` for
    any other type (AMBER's ``CT``, dummies, lone pairs, OPLS names): then the electron count is left to antechamber."""
    head = atom_type.split(".")[0]
    if _GAFF_TYPE.match(atom_type):
        return atom_type[:2].capitalize() if atom_type[:2] in ("cl", "br") else atom_type[0].upper()
    if head == head.capitalize() and head.isalpha() and head not in ("Du", "Lp", "Any", "Hal", "Het", "Hev"):
        return head  # SYBYL: the element itself, case as written (AMBER's CA, NA, HO are not calcium, sodium, holmium)
    return None


def check_uncharged_mol2_parity(types, path):
    """Refuse a mol2 without charges whose electron count is odd when taken as neutral (an ion; AM1-BCC would fail)."""
    from openmm.app import element

    symbols = [_element_of_mol2_type(kind) for kind in types]
    if None in symbols:
        return  # a type we cannot map to an element: antechamber decides
    try:
        electrons = sum(element.Element.getBySymbol(symbol).atomic_number for symbol in symbols)
    except KeyError:  # not an element after all
        return
    if electrons % 2:
        raise InvalidInputError(
            f"mol2 {path} has no charges, so its net charge is taken as 0, but then it has an odd number of electrons "
            f"({electrons}): it is an ion (or a radical). Give the file charges that sum to its net charge, or the molecule "
            "as SMILES or an SD file with formal charges.")


def refuse_charged(net_charge, options):
    if net_charge and not options["allow_charged"]:
        raise InvalidInputError(
            f"the solute has net charge {net_charge:+d} e: hydration free energies of charged solutes need finite-size "
            "and neutralization corrections that are not implemented; give the neutral form (e.g. protonate it) or pass "
            "allow_charged=True (on the command line --allow-charged) to build it with counter-ions anyway.")


def spread_charge_residual(mol2_path, net_charge):
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
