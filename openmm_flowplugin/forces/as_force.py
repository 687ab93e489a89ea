"""Learned potentials as ordinary OpenMM forces.

A torch module that maps positions (nm) to an energy (kJ/mol) becomes an OpenMM ``Force``:
an :class:`openmm.PythonForce` on any platform (``backend="python"``), or an
``openmmtorch.TorchForce`` on CUDA (``backend="torch"``, extra ``openmm_flowplugin[torch-force]``,
see :mod:`openmm_flowplugin.torch_force`). Forces come from autograd.

Calling convention of the module: ``module(positions, **parameters)`` where ``positions`` is a
float64 tensor of shape ``(n_particles, 3)`` in nm, each global parameter is passed by name as a
0-d float64 tensor, and ``box_vectors=`` (shape ``(3, 3)``, nm, rows are vectors) is added when
the force is periodic. It returns a scalar energy in kJ/mol.

The force evaluates the module's weights as they are when the force is created (a snapshot):
create it after training; to use new weights, create a new force.

Energy derivatives with respect to global parameters (``dU/dlambda`` for thermodynamic
integration): :class:`openmm.PythonForce` cannot report them to a Context, so
:func:`parameter_derivative` computes them by autograd from the module at the Context's current
positions and parameters (and adds the Context's own derivatives from other forces, refusing to
return a sum that misses a force that uses the parameter without declaring its derivative).
"""

__all__ = ["as_openmm_force", "parameter_derivative"]

import copy
import keyword

import numpy as np
import torch
from openmm import unit

from ._parameter_terms import derivative_terms
from .python_force import python_force
from ..errors import InvalidInputError, InvalidTypeError, UnknownNameError

_RESERVED_NAMES = {"positions", "box_vectors", "self"}
_BACKENDS = ("auto", "python", "torch")
_UNDECLARED = ("raise", "finite_difference")


def _check_parameters(global_parameters):
    parameters = {}
    for name, default in dict(global_parameters or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED_NAMES:
            raise InvalidInputError(
                f"global parameter name {name!r} cannot be passed as a keyword argument; use a Python "
                f"identifier other than {sorted(_RESERVED_NAMES)}."
            )
        parameters[name] = float(default)
    return parameters


def _check_particles(particles, system):
    if particles is None:
        return None
    if system is None:
        raise InvalidInputError(
            "particles needs system= (the openmm.System the force will join, or its particle count): an index beyond "
            "the System would make OpenMM read memory outside it."
        )
    n_particles = system if isinstance(system, int) else system.getNumParticles()
    values = list(particles)
    if any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) for i in values):
        raise InvalidTypeError(f"particles must be integers, got {particles!r}.")
    indices = [int(i) for i in values]
    if len(indices) == 0 or len(set(indices)) != len(indices) or min(indices) < 0 or max(indices) >= n_particles:
        raise InvalidInputError(
            f"particles must be a non-empty list of distinct indices in [0, {n_particles}) (the System's particles), got {particles!r}."
        )
    return indices


def _resolve_backend(backend):
    if backend not in _BACKENDS:
        raise InvalidInputError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
    if backend != "auto":
        return backend
    if torch.cuda.is_available():
        try:
            import openmmtorch  # noqa: F401
        except ImportError:
            return "python"
        return "torch"
    return "python"


def as_openmm_force(module, particles=None, periodic=False, global_parameters=None, backend="auto", system=None):
    """Wrap a torch module mapping positions (nm) to an energy (kJ/mol) as an OpenMM Force.

    Parameters
    ----------
    module : torch.nn.Module
        Called as ``module(positions, **parameters)``: ``positions`` float64, shape
        ``(n, 3)``, nm; each global parameter a 0-d float64 tensor passed by name;
        ``box_vectors=`` (shape (3, 3), nm) added when ``periodic``. Returns a scalar in kJ/mol.
        Must accept float64 inputs (call ``module.double()`` if needed).
    particles : sequence of int, optional
        Apply the force to these particles only: the module sees their positions, in this order,
        and forces are scattered back (``PythonForce.setParticles``). Default: all particles.
        Needs ``system``, against which the indices are checked.
    periodic : bool
        Whether the module uses periodic boundary conditions. Positions may then arrive wrapped
        into the box, so the module must be invariant to wrapping (e.g. minimum image).
    global_parameters : dict of str to float, optional
        Context parameters and their default values, e.g. ``{"lambda_ml": 1.0}``.
    backend : {"auto", "python", "torch"}
        ``"python"``: :class:`openmm.PythonForce` (all platforms, XML-serializable by pickling).
        ``"torch"``: ``openmmtorch.TorchForce`` through TorchScript (extra
        ``openmm_flowplugin[torch-force]``). ``"auto"``: ``"torch"`` if CUDA torch is available and
        ``openmmtorch`` imports, otherwise ``"python"``.
    system : openmm.System or int, optional
        The System the force will be added to (or its particle count); required with ``particles``.

    Returns
    -------
    openmm.Force
        With ``"python"``: an :class:`openmm.PythonForce`, or, when there are global parameters,
        an :class:`openmm.CustomCVForce` with energy ``"u"`` whose single collective variable is
        that PythonForce and which declares the parameters, so ``context.setParameter`` and
        openmmtools ``GlobalParameterState`` (which looks for ``getNumGlobalParameters``) drive
        them. With ``"torch"``: a ``TorchForce`` with ``addEnergyParameterDerivative`` for
        every parameter.

    Notes
    -----
    The force evaluates a snapshot of ``module`` taken when it is created: with the ``"python"``
    backend, the module round-tripped through the bytes that OpenMM pickles into the PythonForce
    (its XML form, and the copy a CustomCVForce evaluates); with ``"torch"``, a deep copy of the
    module, scripted into the TorchForce. Changing the module's weights in place afterwards
    (e.g. more training) changes neither the Context's energies nor :func:`parameter_derivative`:
    create the force after training; to use new weights, create a new force (and a new Context).
    The snapshot costs one more copy of the module's weights in memory.

    ``dU/dp`` for a parameter inside the module: PythonForce cannot report energy parameter
    derivatives, so use :func:`parameter_derivative` (autograd of the snapshot, exact). The
    TorchForce backend reports them natively through ``State.getEnergyParameterDerivatives()``.

    Deserializing the XML unpickles Python objects, so load only XML you trust. If the module's
    class cannot be imported where the XML is loaded, the force raises an error naming it when
    evaluated.

    Examples
    --------
    >>> import openmm
    >>> system = openmm.System(); _ = system.addParticle(1.0)
    >>> from openmm_flowplugin.forces import HarmonicRestraint
    >>> restraint = HarmonicRestraint([[0.0, 0.0, 0.0]])
    >>> _ = system.addForce(as_openmm_force(restraint, global_parameters={"k": 100.0}, backend="python"))
    >>> context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    >>> context.setPositions([[0.1, 0.0, 0.0]])
    >>> context.setParameter("k", 200.0)
    >>> round(context.getState(getEnergy=True).getPotentialEnergy()._value, 6)
    1.0
    >>> restraint.reference_positions += 0.1  # in place, after creation: the force keeps its snapshot
    >>> round(context.getState(getEnergy=True).getPotentialEnergy()._value, 6)
    1.0
    """
    if not isinstance(module, torch.nn.Module):
        raise InvalidTypeError(f"module must be a torch.nn.Module mapping positions to an energy, got {type(module).__name__}.")
    parameters = _check_parameters(global_parameters)
    particles = _check_particles(particles, system)
    backend = _resolve_backend(backend)
    if backend == "torch":
        from .torch_force import torch_force

        # A deep copy, so the TorchForce cannot share weight tensors with the caller's module either.
        return torch_force(copy.deepcopy(module), particles=particles, periodic=periodic, global_parameters=parameters)

    return python_force(module, particles=particles, periodic=periodic, global_parameters=parameters)


def parameter_derivative(context, name, undeclared="raise", step=1e-4):
    """``dU/dp`` (kJ/mol per unit of ``p``) of a Context's potential energy for global parameter ``name``.

    Sums the derivatives the Context reports itself (forces with ``addEnergyParameterDerivative``,
    e.g. the ``lambda`` switch of :func:`openmm_flowplugin.forces.create_mixed_system`) and, for each
    force made by :func:`as_openmm_force` with the ``"python"`` backend that takes ``name``, the
    derivative of its module by autograd at the Context's current positions, box and parameters:
    the module snapshot the Context evaluates (see :func:`as_openmm_force`). Exact; costs one extra
    module evaluation per force.

    OpenMM reports 0 for a parameter that a force uses without declaring its derivative
    (openmmtools' alchemical forces declare none for ``lambda_sterics``/``lambda_electrostatics``;
    ``NonbondedForce`` parameter offsets, ``CustomExternalForce`` and other PythonForces cannot
    declare any in OpenMM 8.6), and a PythonForce nested in a larger CustomCVForce cannot be
    differentiated here. Such forces make the sum incomplete: by default this raises a ValueError
    naming each of them and its fix.

    Parameters
    ----------
    context : openmm.Context
    name : str
    undeclared : {"raise", "finite_difference"}
        What to do when some force's contribution is neither reported nor computable (above).
        ``"finite_difference"``: return the whole ``dU/dp`` as the central difference
        ``(U(p + step) - U(p - step)) / (2 step)`` of the Context's potential energy (``p`` is
        restored afterwards; two energy evaluations). Its error is about ``step**2/6 |d³U/dp³|``
        plus rounding, ``eps |U| / step``: with the default step and the Reference platform
        (double precision, ``eps ~ 1e-16``) ``~1e-12 |U|``, but in single precision (the CPU
        platform; CUDA and OpenCL unless ``Precision`` is ``double``; ``eps ~ 1e-7``) ``~1e-3 |U|``:
        use a Reference Context, or a larger step where ``U(p)`` is smooth. ``p ± step`` must be
        valid values of the parameter.
    step : float
        Finite-difference step, in units of the parameter (only with ``"finite_difference"``).

    Returns
    -------
    float

    Raises
    ------
    KeyError
        If the Context has no parameter ``name``.
    ValueError
        If a contribution is missing (``undeclared="raise"``), or a force made by
        :func:`as_openmm_force` cannot load its module in this process.

    Examples
    --------
    >>> import openmm
    >>> system = openmm.System(); _ = system.addParticle(1.0)
    >>> from openmm_flowplugin.forces import HarmonicRestraint
    >>> restraint = HarmonicRestraint([[0.0, 0.0, 0.0]])
    >>> _ = system.addForce(as_openmm_force(restraint, global_parameters={"k": 100.0}, backend="python"))
    >>> context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    >>> context.setPositions([[0.1, 0.0, 0.0]])
    >>> round(parameter_derivative(context, "k"), 6)
    0.005

    A force that uses ``k`` without declaring its derivative (a CustomExternalForce cannot) would
    make that sum incomplete, so it is refused; a finite difference covers it:

    >>> external = openmm.CustomExternalForce("k * x")
    >>> _ = external.addGlobalParameter("k", 100.0); _ = external.addParticle(0, [])
    >>> _ = system.addForce(external); context.reinitialize(preserveState=True)
    >>> parameter_derivative(context, "k")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: dU/dk would be incomplete: ...
    >>> round(parameter_derivative(context, "k", undeclared="finite_difference"), 6)
    0.105
    """
    if undeclared not in _UNDECLARED:
        raise InvalidInputError(f"undeclared must be one of {_UNDECLARED}, got {undeclared!r}.")
    step = float(step)
    if not np.isfinite(step) or step <= 0:
        raise InvalidInputError(f"step must be a positive finite number (units of {name!r}), got {step!r}.")
    parameters = dict(context.getParameters())
    if name not in parameters:
        raise UnknownNameError(f"the Context has no global parameter {name!r}; it has {sorted(parameters)}.")
    terms, problems = derivative_terms(context.getSystem(), name)  # before any evaluation: it names broken forces
    if problems:
        if undeclared == "finite_difference":
            return _central_difference(context, name, parameters[name], step)
        raise InvalidInputError(
            f"dU/d{name} would be incomplete: OpenMM reports 0 for the derivative of a global parameter that a force "
            f"does not declare. {'; '.join(problems)}. Or pass undeclared='finite_difference' for a central "
            "finite difference of the whole energy."
        )
    state = context.getState(getPositions=True, getParameterDerivatives=True)
    total = float(dict(state.getEnergyParameterDerivatives()).get(name, 0.0))
    positions = np.asarray(state.getPositions(asNumpy=True)._value, dtype=np.float64)
    box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value, dtype=np.float64)
    for computation, particles in terms:
        x = torch.from_numpy(positions[particles] if particles else positions)
        kwargs = {p: torch.tensor(parameters[p], dtype=torch.float64) for p in computation.parameter_names}
        if computation.periodic:
            kwargs["box_vectors"] = torch.from_numpy(box)
        total += computation.parameter_derivatives(x, [name], **kwargs)[name]
    return total


def _central_difference(context, name, value, step):
    energies = []
    try:
        for shifted in (value + step, value - step):
            context.setParameter(name, shifted)
            energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    finally:
        context.setParameter(name, value)
    if not np.all(np.isfinite(energies)):
        raise InvalidInputError(
            f"the potential energy is not finite at {name} = {value} ± {step} ({energies} kJ/mol): choose a smaller "
            f"step, or declare the derivative (force.addEnergyParameterDerivative({name!r})) instead."
        )
    return (energies[0] - energies[1]) / (2.0 * step)
