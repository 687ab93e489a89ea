"""The ``"python"`` backend of :func:`openmm_flowplugin.as_openmm_force`: :class:`openmm.PythonForce`.

:class:`TorchComputation` is the picklable callable the PythonForce evaluates. Pickling stores the
module's bytes and sha256; unpickling goes through a process-level cache keyed by that hash, so a
System deserialized many times (openmmtools hashes and copies Systems through XML) shares one
module. Forces made in this process are also found again by their unique name, without unpickling.
"""

__all__ = ["TorchComputation", "python_force"]

import hashlib
import io
import pickle
import re
import uuid
import warnings
import weakref

import numpy as np
import openmm
import torch

_FUNCTION_ATTRIBUTE = re.compile(r'function="([0-9a-fA-F]*)"')

#: Process-level cache of deserialized modules, keyed by the sha256 of their serialized bytes.
_MODULE_CACHE = weakref.WeakValueDictionary()
#: Computations of the forces made in this process, keyed by the unique name given to their force.
_LIVE_COMPUTATIONS = weakref.WeakValueDictionary()
#: Cache of unpickled PythonForce callables, keyed by the sha256 of the pickled function.
_CALLABLE_CACHE = weakref.WeakValueDictionary()


def _serialize_module(module):
    buffer = io.BytesIO()
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, buffer)
        return "torchscript", buffer.getvalue()
    return "pickle", pickle.dumps(module, protocol=pickle.HIGHEST_PROTOCOL)


def _deserialize_module(kind, payload, sha256):
    module = _MODULE_CACHE.get(sha256)
    if module is None:
        if hashlib.sha256(payload).hexdigest() != sha256:
            raise ValueError("serialized torch module is corrupt: its sha256 does not match the stored hash.")
        if kind == "torchscript":
            module = torch.jit.load(io.BytesIO(payload), map_location="cpu")
        else:
            module = pickle.loads(payload)
        _MODULE_CACHE[sha256] = module
    return module


class TorchComputation:
    """The picklable callable behind the ``"python"`` backend.

    Evaluates ``module(positions, **parameters)`` on the :class:`openmm.State` that
    :class:`openmm.PythonForce` passes and returns ``(energy, forces)`` in kJ/mol and kJ/mol/nm.
    Pickles as the module's bytes (``torch.jit.save`` for TorchScript) plus their sha256;
    unpickling reuses a process-level cache keyed by that hash, so copies share one module.

    Parameters
    ----------
    module : torch.nn.Module
    parameter_names : sequence of str
        Global parameters passed to the module by name, as 0-d float64 tensors.
    periodic : bool
        Pass ``box_vectors=`` (nm, shape (3, 3)).

    Examples
    --------
    >>> import pickle, torch
    >>> class Harmonic(torch.nn.Module):
    ...     def forward(self, positions):
    ...         return (positions ** 2).sum()
    >>> computation = TorchComputation(Harmonic())
    >>> computation.energy_and_forces(torch.ones(2, 3, dtype=torch.float64))[0]
    6.0
    """

    def __init__(self, module, parameter_names=(), periodic=False):
        self.module = module
        self.parameter_names = tuple(parameter_names)
        self.periodic = bool(periodic)
        self._serialized = None

    def _inputs(self, state):
        positions = torch.from_numpy(np.asarray(state.getPositions(asNumpy=True)._value, dtype=np.float64))
        kwargs = {}
        if self.parameter_names:
            values = state.getParameters()
            for name in self.parameter_names:
                kwargs[name] = torch.tensor(values[name], dtype=torch.float64)
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True)._value
            kwargs["box_vectors"] = torch.from_numpy(np.asarray(box, dtype=np.float64))
        return positions, kwargs

    def energy_and_forces(self, positions, **kwargs):
        """Energy (float, kJ/mol) and forces (numpy, kJ/mol/nm) at ``positions`` (tensor, nm)."""
        with torch.enable_grad():
            positions = positions.detach().requires_grad_(True)
            energy = self.module(positions, **kwargs)
            if energy.numel() != 1:
                raise ValueError(
                    f"the module must return a scalar energy in kJ/mol, got shape {tuple(energy.shape)}; "
                    "sum per-atom or per-sample energies inside the module."
                )
            (gradient,) = torch.autograd.grad(energy.sum(), positions)
        return float(energy.detach()), (-gradient).numpy()

    def parameter_derivatives(self, positions, names, **kwargs):
        """dU/dp by autograd for each parameter in ``names`` (dict of floats, kJ/mol per unit)."""
        with torch.enable_grad():
            leaves = {name: kwargs[name].detach().requires_grad_(True) for name in names}
            kwargs = {**kwargs, **leaves}
            energy = self.module(positions, **kwargs).sum()
            grads = torch.autograd.grad(energy, list(leaves.values()), allow_unused=True)
        return {name: 0.0 if g is None else float(g) for name, g in zip(leaves, grads)}

    def __call__(self, state):
        positions, kwargs = self._inputs(state)
        return self.energy_and_forces(positions, **kwargs)

    def __getstate__(self):
        if self._serialized is None:
            kind, payload = _serialize_module(self.module)
            self._serialized = (kind, payload, hashlib.sha256(payload).hexdigest())
        kind, payload, sha256 = self._serialized
        return {
            "module_format": kind,
            "module_bytes": payload,
            "module_sha256": sha256,
            "parameter_names": self.parameter_names,
            "periodic": self.periodic,
        }

    def __setstate__(self, state):
        self.module = _deserialize_module(state["module_format"], state["module_bytes"], state["module_sha256"])
        self.parameter_names = tuple(state["parameter_names"])
        self.periodic = bool(state["periodic"])
        self._serialized = (state["module_format"], state["module_bytes"], state["module_sha256"])


def python_force(module, particles=None, periodic=False, global_parameters=None):
    """An :class:`openmm.PythonForce` evaluating ``module``; see :func:`openmm_flowplugin.as_openmm_force`.

    With global parameters it is returned inside an :class:`openmm.CustomCVForce` (energy ``"u"``)
    that declares them, which requires the module to be picklable.
    """
    parameters = dict(global_parameters or {})
    computation = TorchComputation(module, parameter_names=tuple(parameters), periodic=periodic)
    force = openmm.PythonForce(computation, parameters)
    force.setName(f"TorchComputation-{uuid.uuid4().hex}")
    _LIVE_COMPUTATIONS[force.getName()] = computation
    if particles is not None:
        force.setParticles(particles)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    if not _pickled_function(force):
        problem = (
            f"{type(module).__name__} (or a module inside it) could not be pickled. Define its class at the "
            "top level of an importable module, without lambdas or closures (or pass a TorchScript module)."
        )
        if parameters:
            raise ValueError(
                f"{problem} It is needed here: with global parameters the PythonForce sits inside a "
                "CustomCVForce, which copies it by serialization when a Context is created."
            )
        warnings.warn(
            f"{problem} Without it this force cannot be serialized with XmlSerializer, nor used in an "
            "openmmtools ThermodynamicState.",
            stacklevel=3,
        )
    if not parameters:
        return force
    wrapper = openmm.CustomCVForce("u")
    wrapper.addCollectiveVariable("u", force)
    for name, default in parameters.items():
        wrapper.addGlobalParameter(name, default)
    return wrapper


def _pickled_function(force):
    """The pickled callable of a PythonForce (bytes; empty if it could not be pickled)."""
    # getPickledFunction() is not usable from Python; the XML holds the same bytes, hex-encoded.
    try:
        xml = openmm.XmlSerializer.serialize(force)
    except openmm.OpenMMException:
        return b""
    match = _FUNCTION_ATTRIBUTE.search(xml)
    return bytes.fromhex(match.group(1)) if match else b""


def _computation_of(force):
    """The TorchComputation behind a PythonForce (unpickled once per content hash), or None."""
    computation = _LIVE_COMPUTATIONS.get(force.getName())
    if computation is not None:
        return computation
    payload = _pickled_function(force)
    if not payload:
        return None
    key = hashlib.sha256(payload).hexdigest()
    computation = _CALLABLE_CACHE.get(key)
    if computation is None:
        computation = pickle.loads(payload)
        if not isinstance(computation, TorchComputation):
            return None
        _CALLABLE_CACHE[key] = computation
    return computation


def _module_forces(system):
    """Yield the PythonForces of ``system``: top level, or as the only CV of a CustomCVForce ``"u"``-style wrapper."""
    for force in system.getForces():
        if isinstance(force, openmm.PythonForce):
            yield force
        elif isinstance(force, openmm.CustomCVForce) and force.getNumCollectiveVariables() == 1:
            inner = force.getCollectiveVariable(0)
            if isinstance(inner, openmm.PythonForce) and force.getEnergyFunction() == force.getCollectiveVariableName(0):
                yield inner
