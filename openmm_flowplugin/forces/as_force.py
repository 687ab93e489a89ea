"""Learned potentials as ordinary OpenMM forces.

A torch module that maps positions (nm) to an energy (kJ/mol) becomes an OpenMM ``Force``:
an :class:`openmm.PythonForce` on any platform (``backend="python"``), or an
``openmmtorch.TorchForce`` on CUDA (``backend="torch"``, extra ``openmm_flowplugin[torch-force]``,
see :mod:`openmm_flowplugin.torch_force`). Forces come from autograd.

Calling convention of the module: ``module(positions, **parameters)`` where ``positions`` is a
float64 tensor of shape ``(n_particles, 3)`` in nm, each global parameter is passed by name as a
0-d float64 tensor, and ``box_vectors=`` (shape ``(3, 3)``, nm, rows are vectors) is added when
the force is periodic. It returns a scalar energy in kJ/mol.

Energy derivatives with respect to global parameters (``dU/dlambda`` for thermodynamic
integration): :class:`openmm.PythonForce` cannot report them to a Context, so
:func:`parameter_derivative` computes them by autograd from the module at the Context's current
positions and parameters (and adds the Context's own derivatives from other forces).
"""

__all__ = ["as_openmm_force", "parameter_derivative"]

import keyword

import numpy as np
import torch

from .python_force import _computation_of, _module_forces, python_force

_RESERVED_NAMES = {"positions", "box_vectors", "self"}
_BACKENDS = ("auto", "python", "torch")


def _check_parameters(global_parameters):
    parameters = {}
    for name, default in dict(global_parameters or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED_NAMES:
            raise ValueError(
                f"global parameter name {name!r} cannot be passed as a keyword argument; use a Python "
                f"identifier other than {sorted(_RESERVED_NAMES)}."
            )
        parameters[name] = float(default)
    return parameters


def _check_particles(particles, system):
    if particles is None:
        return None
    if system is None:
        raise ValueError(
            "particles needs system= (the openmm.System the force will join, or its particle count): an index beyond "
            "the System would make OpenMM read memory outside it."
        )
    n_particles = system if isinstance(system, int) else system.getNumParticles()
    values = list(particles)
    if any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) for i in values):
        raise TypeError(f"particles must be integers, got {particles!r}.")
    indices = [int(i) for i in values]
    if len(indices) == 0 or len(set(indices)) != len(indices) or min(indices) < 0 or max(indices) >= n_particles:
        raise ValueError(
            f"particles must be a non-empty list of distinct indices in [0, {n_particles}) (the System's particles), got {particles!r}."
        )
    return indices


def _resolve_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
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
    ``dU/dp`` for a parameter inside the module: PythonForce cannot report energy parameter
    derivatives, so use :func:`parameter_derivative` (autograd, exact). The TorchForce backend
    reports them natively through ``State.getEnergyParameterDerivatives()``.

    The XML form of a PythonForce holds the module pickled at creation (OpenMM pickles the callable
    in the constructor): create the force after training. Deserializing unpickles Python objects,
    so load only XML you trust.

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
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module mapping positions to an energy, got {type(module).__name__}.")
    parameters = _check_parameters(global_parameters)
    particles = _check_particles(particles, system)
    backend = _resolve_backend(backend)
    if backend == "torch":
        from .torch_force import torch_force

        return torch_force(module, particles=particles, periodic=periodic, global_parameters=parameters)

    return python_force(module, particles=particles, periodic=periodic, global_parameters=parameters)


def parameter_derivative(context, name):
    """``dU/dp`` (kJ/mol per unit of ``p``) of a Context's potential energy for global parameter ``name``.

    Sums the derivatives the Context reports itself (forces with ``addEnergyParameterDerivative``,
    e.g. the ``lambda`` switch of :func:`openmm_flowplugin.ani.create_mixed_system`) and, for each
    force made by :func:`as_openmm_force` with the ``"python"`` backend that takes ``name``, the
    derivative of its module by autograd at the Context's current positions, box and parameters.
    Exact (no finite differences); costs one extra module evaluation per force.

    Parameters
    ----------
    context : openmm.Context
    name : str

    Returns
    -------
    float

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
    """
    state = context.getState(getPositions=True, getParameters=True, getParameterDerivatives=True)
    parameters = dict(state.getParameters())
    if name not in parameters:
        raise KeyError(f"the Context has no global parameter {name!r}; it has {sorted(parameters)}.")
    total = float(dict(state.getEnergyParameterDerivatives()).get(name, 0.0))
    positions = np.asarray(state.getPositions(asNumpy=True)._value, dtype=np.float64)
    box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value, dtype=np.float64)
    for force in _module_forces(context.getSystem()):
        computation = _computation_of(force)
        if computation is None or name not in computation.parameter_names:
            continue
        indices = list(force.getParticles())
        x = torch.from_numpy(positions[indices] if indices else positions)
        kwargs = {p: torch.tensor(parameters[p], dtype=torch.float64) for p in computation.parameter_names}
        if computation.periodic:
            kwargs["box_vectors"] = torch.from_numpy(box)
        total += computation.parameter_derivatives(x, [name], **kwargs)[name]
    return total
