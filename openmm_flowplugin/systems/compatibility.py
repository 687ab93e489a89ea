"""Constraints and time steps that a flow, a FlowMCMove or MD cannot respect, reported with the fix.

Flows and :class:`~openmm_flowplugin.FlowMCMove` propose new positions for every atom: they cannot keep
constrained distances fixed, so a System for them has no constraints. Without constraints the
fastest motions are the X-H bond vibrations (period ~10 fs), which Langevin MD resolves with a time
step of about 1 fs; the usual 2 fs needs HBonds constraints, which flows cannot use.
"""

__all__ = ["check_flow_compatible", "check_md_timestep", "max_unconstrained_timestep"]

import math

import openmm
from openmm import unit

from ..units import in_unit
from ..errors import InvalidInputError

#: Largest time step (fs) for Langevin MD with unconstrained bonds to hydrogen of standard mass.
UNCONSTRAINED_TIMESTEP_FS = 1.0
_HYDROGEN_MASS = 1.008  # amu


def _parts(molecular_system):
    if isinstance(molecular_system, openmm.System):
        return molecular_system, None, "the System", {}
    return molecular_system.system, molecular_system.topology, repr(molecular_system.name), molecular_system.options


def _unconstrained_hydrogen_masses(system, topology):
    """Masses (amu) of hydrogens (by element, or by mass < 1.5 amu without a topology) in no constraint."""
    constrained = set()
    for k in range(system.getNumConstraints()):
        i, j, _ = system.getConstraintParameters(k)
        constrained.update((i, j))
    if topology is not None:
        hydrogens = [atom.index for atom in topology.atoms() if atom.element is not None and atom.element.symbol == "H"]
    else:
        hydrogens = [i for i in range(system.getNumParticles()) if 0 < system.getParticleMass(i).value_in_unit(unit.dalton) < 1.5]
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in hydrogens if i not in constrained]
    return [m for m in masses if m > 0]  # massless particles do not move


def max_unconstrained_timestep(molecular_system):
    """Largest MD time step (fs) the unconstrained hydrogens allow, or ``None`` if every hydrogen is constrained.

    1 fs for hydrogens of standard mass, scaled by ``sqrt(m_H / 1.008 amu)`` for repartitioned
    (heavier) hydrogens, since an X-H vibration's period grows as the square root of the hydrogen's mass.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> max_unconstrained_timestep(systems.get("alanine_dipeptide_vacuum"))
    1.0
    """
    system, topology, _, _ = _parts(molecular_system)
    masses = _unconstrained_hydrogen_masses(system, topology)
    if not masses:
        return None
    return round(UNCONSTRAINED_TIMESTEP_FS * math.sqrt(max(min(masses), _HYDROGEN_MASS) / _HYDROGEN_MASS), 3)


def check_md_timestep(molecular_system, timestep, raise_error=True):
    """Problems of an MD ``timestep`` (ps if a bare number) for this system: too large for its unconstrained hydrogens.

    Returns the list of messages (empty if fine); raises ``ValueError`` with them if ``raise_error``.

    Examples
    --------
    >>> from openmm import unit
    >>> from openmm_flowplugin import systems
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> check_md_timestep(ala2, 1 * unit.femtosecond)
    []
    >>> check_md_timestep(ala2, 2 * unit.femtosecond)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: timestep 2 fs is too large for 'alanine_dipeptide_vacuum': its 12 hydrogens are not constrained...
    """
    system, topology, label, _ = _parts(molecular_system)
    dt_fs = 1000.0 * float(in_unit(timestep, unit.picosecond, "timestep"))
    if not dt_fs > 0 or not math.isfinite(dt_fs):
        raise InvalidInputError(f"timestep must be a positive time, got {timestep}.")
    problems = []
    masses = _unconstrained_hydrogen_masses(system, topology)
    limit = max_unconstrained_timestep(molecular_system)
    if limit is not None and dt_fs > limit * (1 + 1e-9):
        heavier = f" (hydrogen masses of {min(masses):.3g} amu allow {limit:g} fs)" if limit != UNCONSTRAINED_TIMESTEP_FS else ""
        problems.append(
            f"timestep {dt_fs:g} fs is too large for {label}: its {len(masses)} hydrogens are not constrained, and "
            f"unconstrained X-H vibrations need about 1 fs{heavier}. Use 1 fs, or HBonds constraints with 2 fs for plain "
            "MD, which flows cannot use."
        )
    if problems and raise_error:
        raise InvalidInputError(" ".join(problems))
    return problems


def check_flow_compatible(molecular_system, timestep=None, raise_error=True):
    """Problems that stop a flow or :class:`~openmm_flowplugin.FlowMCMove` from sampling this system, each with its fix.

    Parameters
    ----------
    molecular_system : MolecularSystem or openmm.System
    timestep : Quantity or float, optional
        An MD time step to check as well (ps if a bare number), e.g. of the MD that makes training data
        or that alternates with the flow move.
    raise_error : bool
        Raise ``ValueError`` (one line, all problems) instead of returning them.

    Returns
    -------
    list of str
        Empty if the system is fine.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> check_flow_compatible(systems.get("alanine_dipeptide_vacuum"), timestep=0.001)
    []
    """
    system, _, label, options = _parts(molecular_system)
    problems = []
    n_constraints = system.getNumConstraints()
    if n_constraints:
        if options.get("source") == "system_xml":
            fix = ("A serialized System cannot be rebuilt here: re-export it without constraints "
                   "(createSystem(..., constraints=None, rigidWater=False)) and run MD on it with a 1 fs time step.")
        elif options.get("source"):
            fix = ("Rebuild it with constraints=None (the default of systems.from_files and of the command line's file "
                   "options) and run MD on it with a 1 fs time step.")
        else:
            fix = "Build the System with constraints=None and rigidWater=False, and run MD on it with a 1 fs time step."
        problems.append(f"{label} has {n_constraints} constraints, but flows and FlowMCMove move every atom and cannot keep "
                        f"constrained distances fixed. {fix}")
    if timestep is not None:
        problems += check_md_timestep(molecular_system, timestep, raise_error=False)
    if problems and raise_error:
        raise InvalidInputError(" ".join(problems))
    return problems
