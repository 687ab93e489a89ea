"""Which forces of a System contribute to ``dU/dλ``, and whether the Context reports each contribution.

OpenMM reports 0 for the derivative of a global parameter that a force uses without declaring it
(``addEnergyParameterDerivative``), and some force types cannot declare it at all (in OpenMM 8.6:
``NonbondedForce`` with parameter offsets, ``CustomExternalForce``, ``CustomHbondForce``,
``CustomManyParticleForce``, ``CustomVolumeForce``, ``PythonForce``). A ``CustomCVForce`` reports
``∂E/∂λ`` plus the chain rule through its collective variables only when it declares ``λ`` itself
and each collective variable that uses ``λ`` declares it too; ``ATMForce`` passes on no derivative
of the forces inside it. :func:`derivative_terms` finds the PythonForces made by
:func:`~openmm_flowplugin.as_openmm_force` whose derivative we compute by autograd, and lists
every other contribution the Context would silently drop.
"""

__all__ = ["derivative_terms"]

import openmm

from .python_force import _computation_of


def _global_names(force):
    if isinstance(force, openmm.PythonForce):
        return set(dict(force.getGlobalParameters()))
    if hasattr(force, "getNumGlobalParameters"):
        return {force.getGlobalParameterName(i) for i in range(force.getNumGlobalParameters())}
    return set()


def _declared_names(force):
    if hasattr(force, "getNumEnergyParameterDerivatives"):
        return {force.getEnergyParameterDerivativeName(i) for i in range(force.getNumEnergyParameterDerivatives())}
    return set()


def _inner_forces(force):
    if isinstance(force, openmm.CustomCVForce):
        return [force.getCollectiveVariable(i) for i in range(force.getNumCollectiveVariables())]
    if hasattr(openmm, "ATMForce") and isinstance(force, openmm.ATMForce):
        return [force.getForce(i) for i in range(force.getNumForces())]
    return []


def _uses(force, name):
    return name in _global_names(force) or any(_uses(inner, name) for inner in _inner_forces(force))


def _label(force, where):
    return f"{where} ({type(force).__name__} named {force.getName()!r})"


def _wrapped_python_force(force):
    """The PythonForce of an ``as_openmm_force`` wrapper: a CustomCVForce whose energy is its single CV."""
    if isinstance(force, openmm.CustomCVForce) and force.getNumCollectiveVariables() == 1:
        inner = force.getCollectiveVariable(0)
        if isinstance(inner, openmm.PythonForce) and force.getEnergyFunction().strip() == force.getCollectiveVariableName(0):
            return inner
    return None


def _undeclared(force, name, label):
    """Descriptions of the contributions to dU/d``name`` of ``force`` that the Context does not report."""
    problems, inner_users = [], False
    for k, inner in enumerate(_inner_forces(force)):
        if not _uses(inner, name):
            continue
        inner_users = True
        inner_label = _label(inner, f"{label} > inner force {k}")
        if isinstance(inner, openmm.PythonForce):
            problems.append(
                f"{inner_label} is a PythonForce inside a {type(force).__name__}, whose dU/d{name} cannot be computed "
                f"there (only at the top level or as the single collective variable of a CustomCVForce whose energy "
                f"is that variable, as as_openmm_force makes it)"
            )
        elif isinstance(force, openmm.CustomCVForce):
            problems.extend(_undeclared(inner, name, inner_label))
        else:
            problems.append(f"{inner_label}: a {type(force).__name__} reports no derivative of the forces inside it")
    if name not in _declared_names(force) and (name in _global_names(force) or isinstance(force, openmm.CustomCVForce) and inner_users):
        if not hasattr(force, "addEnergyParameterDerivative"):
            problems.append(f"{label} uses {name!r}, but a {type(force).__name__} cannot declare parameter derivatives")
        elif name in _global_names(force):
            problems.append(f"{label} uses {name!r} without declaring it: call force.addEnergyParameterDerivative({name!r})")
        else:
            problems.append(
                f"{label} holds forces that use {name!r} but does not declare it: call "
                f"force.addGlobalParameter({name!r}, value) and force.addEnergyParameterDerivative({name!r})"
            )
    return problems


def derivative_terms(system, name):
    """``(terms, problems)`` for ``dU/d name`` of ``system``.

    ``terms``: ``(computation, particles)`` of each PythonForce made by ``as_openmm_force`` whose
    module takes ``name`` (at the top level, or as the single CV of its ``"u"`` wrapper).
    ``problems``: one description per contribution that neither the Context reports nor we compute.
    Raises ValueError for a PythonForce of ours that takes ``name`` but cannot be loaded.
    """
    terms, problems = [], []
    for index, force in enumerate(system.getForces()):
        label = _label(force, f"force {index}")
        python = force if isinstance(force, openmm.PythonForce) else _wrapped_python_force(force)
        if python is None:
            problems.extend(_undeclared(force, name, label))
            continue
        if name not in _global_names(python):
            continue  # the module never sees the parameter (the wrapper's energy is the CV alone)
        if python is not force:
            label = _label(python, f"{label} > inner force 0")
        computation = _computation_of(python, label)
        if computation is None:
            problems.append(f"{label} is a PythonForce not made by as_openmm_force, which cannot report dU/d{name}")
        elif name in computation.parameter_names:
            terms.append((computation, list(python.getParticles())))
    return terms, problems
