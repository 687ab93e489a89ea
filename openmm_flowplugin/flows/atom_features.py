"""Atom features from elements and the bond graph, the same for any molecule (no per-molecule vocabulary).

Each atom gets three blocks over the element list :data:`ELEMENTS` (plus one slot for any other
element or none): its own element (one-hot), the elements of its bonded neighbours (counts), and the
elements two bonds away (counts). So a carbonyl carbon (C bonded to O, N/C) differs from an alpha
carbon (C bonded to N, C, C, H) and from a methyl carbon, in any molecule whose topology has bonds;
a model trained on several molecules sees the same features for the same chemical environment in a
new one. This is a bonded-environment type in the spirit of Timewarp's atom embeddings, without
their fixed table of residue-specific names.
"""

__all__ = ["ELEMENTS", "atom_features", "n_atom_features"]

import numpy as np

from ..errors import InvalidInputError

#: Elements with their own slot; anything else (or no element) shares the last slot.
ELEMENTS = ("H", "C", "N", "O", "S", "P", "F", "Cl", "Br", "I")


def n_atom_features():
    """Length of one atom's feature vector: three blocks of ``len(ELEMENTS) + 1``.

    Examples
    --------
    >>> n_atom_features()
    33
    """
    return 3 * (len(ELEMENTS) + 1)


def _slot(atom):
    symbol = getattr(atom.element, "symbol", None)
    return ELEMENTS.index(symbol) if symbol in ELEMENTS else len(ELEMENTS)


def atom_features(topology, atom_indices=None):
    """Features (n_atoms, 33) of the atoms of an OpenMM (or mdtraj) topology, from elements and bonds.

    Parameters
    ----------
    topology : openmm.app.Topology or mdtraj.Topology
    atom_indices : sequence of int, optional
        The atoms to describe (default all), in this order; their neighbours may lie outside.

    Returns
    -------
    numpy.ndarray, shape=(n_atoms, 33)
        float64: element one-hot, neighbour element counts, second-neighbour element counts.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> features = atom_features(systems.get("alanine_dipeptide_vacuum").topology)
    >>> features.shape, features[:, :11].sum(1).tolist() == [1.0] * 22
    ((22, 33), True)
    """
    if hasattr(topology, "to_openmm"):  # mdtraj
        topology = topology.to_openmm()
    atoms = list(topology.atoms())
    n_slots = len(ELEMENTS) + 1
    slots = np.array([_slot(atom) for atom in atoms], dtype=int)
    neighbours = [set() for _ in atoms]
    for bond in topology.bonds():
        a, b = bond[0].index, bond[1].index
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    if atom_indices is None:
        atom_indices = range(len(atoms))
    atom_indices = [int(i) for i in atom_indices]
    if any(i < 0 or i >= len(atoms) for i in atom_indices):
        raise InvalidInputError(f"atom_indices must lie in [0, {len(atoms)}), the topology's atoms.")
    features = np.zeros((len(atom_indices), 3 * n_slots))
    for row, i in enumerate(atom_indices):
        features[row, slots[i]] = 1.0
        second = set()
        for j in neighbours[i]:
            features[row, n_slots + slots[j]] += 1.0
            second |= neighbours[j]
        for k in second - neighbours[i] - {i}:
            features[row, 2 * n_slots + slots[k]] += 1.0
    return features
