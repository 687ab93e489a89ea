"""Named solvation systems and the user's own molecules, built into a :class:`SolvationSystem`.

Presets: ``lj`` (identical-particle LJ fluid: the excess chemical potential), ``lj-paper`` (the neural-TI
paper's LJ solute in 512 LJ solvent particles), ``methane`` and ``water`` (TIP3P; GAFF2/AM1-BCC through
AmberTools, the ``solvation`` extra). Builders live in the repository's ``systems/`` folder.
"""

__all__ = ["PRESETS", "solvation_system"]

from ..errors import InvalidInputError, UnknownNameError

#: preset -> ("module:function" in openmm_flowplugin._systems, description)
PRESETS = {
    "lj": ("lj_fluids:lj_fluid", "Lennard-Jones fluid, particle 0 as the solute (mu_ex; N = 500, rho* = 0.8, T* = 1.2, r_c = 2.5)"),
    "lj-paper": ("lj_fluids:lj_solute", "LJ solute (sigma 2, epsilon 2) in 512 LJ particles, box 9 sigma, T* = 1 (neural TI paper)"),
    "methane": ("small_molecules:methane_solvation", "Methane, GAFF2/AM1-BCC in TIP3P (AmberTools)"),
    "water": ("small_molecules:water_solvation", "A TIP3P water in TIP3P"),
}


def _builder(path):
    import importlib

    module, function = path.split(":")
    return getattr(importlib.import_module(f"openmm_flowplugin._systems.{module}"), function)


def solvation_system(preset=None, **options):
    """Build a preset (``options`` go to its builder) or, without a preset, a small molecule from
    ``smiles``/``sdf``/``mol2``/``prmtop`` options (``systems/small_molecules.py``: ``small_molecule_solvation``).

    Examples
    --------
    >>> lj = solvation_system("lj", n_particles=64, density=0.5)
    >>> lj.n_solute_atoms, lj.solvent.n_atoms
    (1, 64)
    """
    if preset is None:
        if not any(options.get(key) for key in ("smiles", "sdf", "mol2", "prmtop")):
            raise InvalidInputError("give a preset (" + ", ".join(PRESETS) + ") or a molecule: smiles, sdf, mol2 or prmtop/inpcrd.")
        return _builder("small_molecules:small_molecule_solvation")(**options)
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown solvation preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    return _builder(PRESETS[preset][0])(**options)
