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

__all__ = [
    "as_openmm_force",
    "flow_potential",
    "parameter_derivative",
    "TorchComputation",
    "FlowEnergy",
    "HarmonicRestraint",
]

import keyword

import numpy as np
import torch

from .python_force import TorchComputation, _computation_of, _module_forces, python_force
from .units import kT as _kT

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


def _check_particles(particles):
    if particles is None:
        return None
    indices = [int(i) for i in particles]
    if len(indices) == 0 or len(set(indices)) != len(indices) or min(indices) < 0:
        raise ValueError(f"particles must be a non-empty list of distinct non-negative indices, got {particles!r}.")
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


def as_openmm_force(module, particles=None, periodic=False, global_parameters=None, backend="auto"):
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
    particles = _check_particles(particles)
    backend = _resolve_backend(backend)
    if backend == "torch":
        from .torch_force import torch_force

        return torch_force(module, particles=particles, periodic=periodic, global_parameters=parameters)

    return python_force(module, particles=particles, periodic=periodic, global_parameters=parameters)


class HarmonicRestraint(torch.nn.Module):
    """``U = k/2 * sum |x - x0|^2`` with the force constant ``k`` (kJ/mol/nm^2) a global parameter.

    A minimal module following the calling convention of :func:`as_openmm_force`; a reference
    for tests and examples.

    Parameters
    ----------
    reference_positions : array_like, shape (n_particles, 3)
        ``x0`` in nm.

    Examples
    --------
    >>> import torch
    >>> HarmonicRestraint([[0.0, 0.0, 0.0]])(torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64), k=torch.tensor(200.0))
    tensor(1.0000, dtype=torch.float64)
    """

    def __init__(self, reference_positions):
        super().__init__()
        self.register_buffer("reference_positions", torch.as_tensor(np.asarray(reference_positions, dtype=np.float64)))

    def forward(self, positions: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return 0.5 * k * ((positions - self.reference_positions) ** 2).sum()


class FlowEnergy(torch.nn.Module):
    """``U(x) = -kT log q(x)`` in kJ/mol for a flow with ``log_prob(x)``, ``x`` shape (n, n_atoms, 3) nm.

    Parameters
    ----------
    flow : torch.nn.Module
        Has ``log_prob(x) -> Tensor[n]``.
    kT : float
        Thermal energy in kJ/mol.
    """

    def __init__(self, flow, kT):
        super().__init__()
        self.flow = flow
        self.kT = float(kT)

    def forward(self, positions):
        x = positions.to(dtype=_flow_dtype(self.flow)).unsqueeze(0)
        return -self.kT * self.flow.log_prob(x).to(torch.float64).sum()


def _flow_dtype(flow):
    for tensor in list(flow.parameters()) + list(flow.buffers()) if isinstance(flow, torch.nn.Module) else []:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float64


def flow_potential(flow, temperature, particles=None, backend="python"):
    """The energy ``U(x) = -kT log q(x)`` of a flow as an OpenMM Force (learned bias or reference).

    Parameters
    ----------
    flow : torch.nn.Module
        Any module with ``log_prob(x)``, ``x`` a tensor of shape (n, n_atoms, 3) in nm,
        returning ``log q`` of shape (n,). Positions are cast to the flow's parameter dtype.
    temperature : openmm.unit.Quantity or float
        Temperature (K if a bare number) defining ``kT``.
    particles : sequence of int, optional
        Atoms the flow describes (default: all).
    backend : {"python", "torch", "auto"}
        As in :func:`as_openmm_force`.

    Returns
    -------
    openmm.Force
        Forces ``kT * grad log q(x)`` (kJ/mol/nm) by autograd.

    Examples
    --------
    >>> import torch
    >>> class Gaussian(torch.nn.Module):
    ...     def log_prob(self, x):
    ...         return -0.5 * (x ** 2).sum(dim=(-2, -1)) / 0.01
    >>> force = flow_potential(Gaussian(), 300.0)
    >>> type(force).__name__
    'PythonForce'
    """
    if not callable(getattr(flow, "log_prob", None)):
        raise TypeError(f"flow must have a log_prob(x) method, got {type(flow).__name__}.")
    return as_openmm_force(FlowEnergy(flow, _kT(temperature)), particles=particles, backend=backend)


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
