"""OpenMM's SWIG entry points for single-configuration energies and forces, with the public-API fallback.

For systems of tens of atoms, the :class:`openmm.unit.Quantity` wrapping done by
``Context.setPositions`` and ``State.getPotentialEnergy`` costs more than the energy itself. The
private ``openmm._openmm`` functions skip it. They are used only when every one of them exists
(checked once at import, against the installed OpenMM build); otherwise the public API is used.
"""

__all__ = ["FAST_PATH", "context_potential_energy", "context_energy_and_forces"]

import numpy as np
import openmm
from openmm import unit

try:
    from openmm import _openmm

    FAST_PATH = all(
        hasattr(_openmm, name)
        for name in ("Context_setPositions", "Context_getState", "State__getVectorAsNumpy", "State_getPotentialEnergy")
    )
except ImportError:  # pragma: no cover - depends on the OpenMM build
    FAST_PATH = False

_ENERGY_AND_FORCES = openmm.State.Energy + openmm.State.Forces


def context_potential_energy(context, positions=None):
    """Potential energy (kJ/mol, float) of ``context``, after setting ``positions`` (nm, numpy (n, 3)) if given.

    Examples
    --------
    >>> import openmm
    >>> system = openmm.System(); _ = system.addParticle(1.0)
    >>> restraint = openmm.CustomExternalForce("x^2"); _ = restraint.addParticle(0, []); _ = system.addForce(restraint)
    >>> context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    >>> context_potential_energy(context, np.array([[0.5, 0.0, 0.0]]))
    0.25
    """
    if FAST_PATH:
        if positions is not None:
            _openmm.Context_setPositions(context, np.ascontiguousarray(positions, dtype=np.float64))
        return _openmm.State_getPotentialEnergy(_openmm.Context_getState(context, openmm.State.Energy, False, -1))
    if positions is not None:
        context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def context_energy_and_forces(context, positions, force_out):
    """Set ``positions`` (float64 (n, 3) nm), write forces (kJ/mol/nm) into ``force_out``, return the energy (kJ/mol)."""
    if FAST_PATH:
        _openmm.Context_setPositions(context, positions)
        state = _openmm.Context_getState(context, _ENERGY_AND_FORCES, False, -1)
        _openmm.State__getVectorAsNumpy(state, openmm.State.Forces, force_out)
        return _openmm.State_getPotentialEnergy(state)
    context.setPositions(positions)
    state = context.getState(energy=True, forces=True)
    force_out[:] = state.getForces(asNumpy=True)._value
    return state.getPotentialEnergy()._value
