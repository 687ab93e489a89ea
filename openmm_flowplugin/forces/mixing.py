"""ML/MM mixed systems: any learned potential on a subset of atoms of an MM system, switched by ``lambda``.

``U(x; λ) = λ U_ML(x_ml) + (1 - λ) U_MM,int(x_ml) + U_MM,rest(x)``, as openmm-ml's interpolating
mixed systems. The ML part is any torch module following :func:`~openmm_flowplugin.as_openmm_force`'s
convention, or an OpenMM Force acting on the ML atoms. TorchANI models use this through
:func:`openmm_flowplugin.forces.ani.create_mixed_system`.
"""

__all__ = ["create_mixed_system"]

import copy

import openmm
import torch

from .as_force import as_openmm_force
from ..errors import InvalidInputError, InvalidTypeError

_BONDED = {
    # force class: (number of terms, get parameters, set parameters, atoms per term)
    openmm.HarmonicBondForce: ("getNumBonds", "getBondParameters", "setBondParameters", 2),
    openmm.HarmonicAngleForce: ("getNumAngles", "getAngleParameters", "setAngleParameters", 3),
    openmm.PeriodicTorsionForce: ("getNumTorsions", "getTorsionParameters", "setTorsionParameters", 4),
    openmm.RBTorsionForce: ("getNumTorsions", "getTorsionParameters", "setTorsionParameters", 4),
}
_IGNORED = (openmm.CMMotionRemover, openmm.MonteCarloBarostat, openmm.AndersenThermostat)


def _split_bonded(force, ml):
    """Two copies of a bonded force: terms not entirely inside ``ml``, and terms entirely inside (others zeroed)."""
    count, get, set_, n_atoms = _BONDED[type(force)]
    outside, inside = copy.deepcopy(force), copy.deepcopy(force)
    for i in range(getattr(force, count)()):
        parameters = list(getattr(force, get)(i))
        atoms, rest = parameters[:n_atoms], parameters[n_atoms:]
        if isinstance(force, openmm.PeriodicTorsionForce):
            zeroed = rest[:2] + [0.0]  # periodicity and phase stay, k = 0
        elif isinstance(force, (openmm.HarmonicBondForce, openmm.HarmonicAngleForce)):
            zeroed = rest[:1] + [0.0]  # equilibrium value stays, k = 0
        else:
            zeroed = [0.0] * len(rest)
        target = outside if set(atoms) <= ml else inside
        getattr(target, set_)(i, *atoms, *zeroed)
    return outside, inside


def _internal_nonbonded(force, atoms, periodic):
    """Coulomb + Lennard-Jones between ML atoms without cutoff, with the force's exceptions (1-4 scaling)."""
    pair = openmm.CustomBondForce("ONE_4PI_EPS0*chargeProd/r + 4*epsilon*((sigma/r)^12-(sigma/r)^6)")
    pair.addGlobalParameter("ONE_4PI_EPS0", 138.935456)  # OpenMM's value (kJ/mol nm/e^2), as in openmm-ml
    for name in ("chargeProd", "sigma", "epsilon"):
        pair.addPerBondParameter(name)
    pair.setUsesPeriodicBoundaryConditions(periodic)
    exceptions = {}
    for k in range(force.getNumExceptions()):
        i, j, q, sigma, epsilon = force.getExceptionParameters(k)
        exceptions[frozenset((i, j))] = (q, sigma, epsilon)
    for a, i in enumerate(atoms):
        for j in atoms[:a]:
            if frozenset((i, j)) in exceptions:
                q, sigma, epsilon = exceptions[frozenset((i, j))]
            else:
                qi, si, ei = force.getParticleParameters(i)
                qj, sj, ej = force.getParticleParameters(j)
                q, sigma, epsilon = qi * qj, 0.5 * (si + sj), (ei * ej).sqrt()
            if q._value != 0 or epsilon._value != 0:
                pair.addBond(i, j, [q._value, sigma._value, epsilon._value])
    return pair


def create_mixed_system(system, ml_atoms, ml_potential, lambda_name="lambda_ml", lambda_value=1.0, backend="python"):
    """An MM system whose ``ml_atoms`` interact internally through ``ml_potential``, switched by ``lambda``.

    ``U(x; λ) = λ U_ML(x_ml) + (1 - λ) U_MM,int(x_ml) + U_MM,rest(x)``, as openmm-ml's
    interpolating mixed systems: ``U_MM,int`` holds the bonded terms entirely inside the ML atoms
    and their Coulomb + Lennard-Jones pairs (with exceptions, no cutoff); ``U_MM,rest`` is the
    original system with those terms removed (bonded strengths zeroed, ML pairs made exceptions
    with zero charge and ε). With a NoCutoff ``NonbondedForce``, ``λ = 0`` reproduces the original
    energy exactly. λ lives in a :class:`openmm.CustomCVForce`, so ``context.setParameter`` and
    openmmtools ``GlobalParameterState`` drive it and ``dU/dλ = U_ML - U_MM,int`` is reported
    natively (``getState(getParameterDerivatives=True)``).

    Parameters
    ----------
    system : openmm.System
        Not modified. Supported forces touching ML atoms: HarmonicBond, HarmonicAngle,
        PeriodicTorsion, RBTorsion, Nonbonded (constraints are kept as they are).
    ml_atoms : sequence of int
    ml_potential : torch.nn.Module or openmm.Force
        A module mapping the ML atoms' positions (nm, float64, shape (len(ml_atoms), 3), sorted
        atom order) to kJ/mol (wrapped with :func:`~openmm_flowplugin.as_openmm_force`), or a
        Force that already acts on those atoms.
    lambda_name : str
    lambda_value : float
        Default value of λ in new Contexts.
    backend : {"python", "torch", "auto"}
        For a module, as in :func:`~openmm_flowplugin.as_openmm_force`.

    Returns
    -------
    openmm.System

    Examples
    --------
    >>> import torch
    >>> from openmm_flowplugin import systems
    >>> class Zero(torch.nn.Module):
    ...     def forward(self, positions):
    ...         return 0.0 * positions.sum()
    >>> molecule = systems.get("alanine_dipeptide_vacuum")
    >>> mixed = create_mixed_system(molecule.system, range(22), Zero())
    >>> type(mixed.getForce(mixed.getNumForces() - 1)).__name__
    'CustomCVForce'
    """
    atoms = sorted({int(i) for i in ml_atoms})
    if not atoms or atoms[-1] >= system.getNumParticles() or atoms[0] < 0:
        raise InvalidInputError(f"ml_atoms must be a non-empty set of particle indices below {system.getNumParticles()}.")
    if isinstance(ml_potential, torch.nn.Module):
        particles = None if atoms == list(range(system.getNumParticles())) else atoms
        ml_force = as_openmm_force(ml_potential, particles=particles, backend=backend, system=system)
    elif isinstance(ml_potential, openmm.Force):
        ml_force = copy.deepcopy(ml_potential)
    else:
        raise InvalidTypeError(f"ml_potential must be a torch.nn.Module or an openmm.Force, got {type(ml_potential).__name__}.")
    ml = set(atoms)
    periodic = system.usesPeriodicBoundaryConditions()
    mixed = copy.deepcopy(system)
    while mixed.getNumForces():
        mixed.removeForce(0)
    internal = []
    for force in system.getForces():
        if type(force) in _BONDED:
            outside, inside = _split_bonded(force, ml)
            mixed.addForce(outside)
            internal.append(inside)
        elif isinstance(force, openmm.NonbondedForce):
            rest = copy.deepcopy(force)
            for a, i in enumerate(atoms):
                for j in atoms[:a]:
                    rest.addException(i, j, 0.0, 1.0, 0.0, True)
            mixed.addForce(rest)
            internal.append(_internal_nonbonded(force, atoms, periodic))
        elif isinstance(force, _IGNORED):
            mixed.addForce(copy.deepcopy(force))
        else:
            raise InvalidInputError(
                f"create_mixed_system cannot split {type(force).__name__} between ML and MM atoms; supported: "
                f"{[cls.__name__ for cls in _BONDED]} and NonbondedForce. Remove the force, or build the mixed system by hand."
            )
    switch = openmm.CustomCVForce("")
    switch.addGlobalParameter(lambda_name, float(lambda_value))
    switch.addEnergyParameterDerivative(lambda_name)
    switch.addCollectiveVariable("u_ml", ml_force)
    names = []
    for k, force in enumerate(internal):
        names.append(f"u_mm{k}")
        switch.addCollectiveVariable(names[-1], force)
    mm_sum = "+".join(names) if names else "0"
    switch.setEnergyFunction(f"{lambda_name}*u_ml + (1-{lambda_name})*({mm_sum})")
    mixed.addForce(switch)
    return mixed
