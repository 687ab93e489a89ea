"""OpenMM Contexts behind :class:`~openmm_flowplugin.bridge.energy.OpenMMEnergy`: one configuration at a time,
bad configurations told apart from a broken setup, and the worker processes that hold their own Context."""

__all__ = ["BAD_CONFIGURATION_MESSAGES", "EnergyEvaluationError", "is_bad_configuration_error"]

import numpy as np
import openmm

from .._openmm_fast import context_energy_and_forces

#: Lower-cased fragments of the exceptions OpenMM raises for a bad *configuration* (its coordinate checks
#: on the CPU, CUDA and OpenCL platforms; older versions wrote "nan"). Every other exception means a broken
#: System, Context or platform and propagates as :class:`EnergyEvaluationError`.
BAD_CONFIGURATION_MESSAGES = ("particle coordinate is nan",)


class EnergyEvaluationError(RuntimeError):
    """OpenMM could not evaluate the System: a broken setup (force, Context, platform), not a bad configuration."""


def is_bad_configuration_error(error):
    """True if ``error`` is OpenMM's exception for coordinates it cannot evaluate (NaN or overflow)."""
    message = str(error).lower()
    return isinstance(error, openmm.OpenMMException) and any(m in message for m in BAD_CONFIGURATION_MESSAGES)


class _ContextEvaluator:
    """One OpenMM Context evaluating energies (kJ/mol) and forces (kJ/mol/nm) of full configurations.

    A configuration fails (energy ``+inf``, forces 0) when its coordinates are not finite, when OpenMM
    raises its exception for bad coordinates, or when the energy or forces come out non-finite. Any
    other exception is a broken setup and raises :class:`EnergyEvaluationError`; to tell the two apart
    the last configuration that evaluated well is evaluated again, which names the cause.
    """

    def __init__(self, system, platform, properties=None):
        self.n_atoms = system.getNumParticles()
        self.platform_name = platform.getName()
        self.integrator = openmm.VerletIntegrator(0.001)
        self.context = openmm.Context(system, self.integrator, platform, properties or {})
        self._last_good = None  # positions (n_atoms, 3) that evaluated to a finite energy and forces

    def evaluate(self, positions):
        """positions: float64 array (B, n_atoms, 3). Returns energies (B,), forces (B, n_atoms, 3), failed (B,) bool."""
        n = len(positions)
        energies = np.full(n, np.inf)
        forces = np.zeros((n, self.n_atoms, 3))
        finite_input = np.isfinite(positions).all(axis=(1, 2))
        good = None
        for i in np.flatnonzero(finite_input):
            try:
                energies[i] = self._evaluate_one(positions[i], forces[i])
            except Exception as error:
                self._check_failure(error, i, self._last_good if good is None else positions[good])
                energies[i], forces[i] = np.inf, 0.0  # a bad configuration
            else:
                if np.isfinite(energies[i]) and np.isfinite(forces[i]).all():
                    good = i
        if good is not None:
            self._last_good = positions[good].copy()
        failed = ~np.isfinite(energies) | ~np.isfinite(forces).all(axis=(1, 2))
        energies[failed] = np.inf
        forces[failed] = 0.0
        return energies, forces, failed

    def _evaluate_one(self, x, force_out):
        return context_energy_and_forces(self.context, x, force_out)

    def _check_failure(self, error, index, reference):
        """Return if ``error`` comes from a bad configuration; raise EnergyEvaluationError otherwise."""
        where = f"OpenMM raised at configuration {index} on the {self.platform_name} platform: {error}"
        if reference is not None:  # does the Context still evaluate a configuration it evaluated before?
            scratch = np.zeros((self.n_atoms, 3))
            try:
                energy = self._evaluate_one(reference, scratch)
                broken = not (np.isfinite(energy) and np.isfinite(scratch).all())
            except Exception as again:
                broken, error = True, again
            if broken:
                raise EnergyEvaluationError(
                    f"{where} -- and the Context now fails on a configuration it evaluated before ({error}): the "
                    "Context or platform is broken (e.g. a lost GPU context, a force whose Python function raises), "
                    "not the configuration. Check the platform and the System's forces."
                ) from error
            if is_bad_configuration_error(error):
                return
            raise EnergyEvaluationError(
                f"{where} -- the Context still evaluates the previous configuration, so a force fails for this "
                "configuration only (e.g. a PythonForce whose function raises there). Only non-finite coordinates, "
                "energies or forces count as failed evaluations (u = +inf): make the force return a non-finite "
                "energy instead of raising if such configurations are to be rejected."
            ) from error
        if is_bad_configuration_error(error):
            return
        raise EnergyEvaluationError(
            f"{where} -- this is a broken setup (e.g. a force whose Python function raises, a platform or GPU "
            "failure), not a bad configuration, which would give u = +inf. Check the System's forces and the platform."
        ) from error


# Worker processes hold their own Context, built once from the System's XML.
_worker_evaluator = None


def _init_worker(system_xml, platform_name, properties):
    global _worker_evaluator
    system = openmm.XmlSerializer.deserialize(system_xml)
    _worker_evaluator = _ContextEvaluator(system, openmm.Platform.getPlatformByName(platform_name), properties)


def _evaluate_in_worker(positions):
    return _worker_evaluator.evaluate(positions)
