"""The ``"python"`` backend of :func:`openmm_flowplugin.as_openmm_force`: :class:`openmm.PythonForce`.

:class:`TorchComputation` is the picklable callable the PythonForce evaluates. Pickling stores the
module's bytes and sha256; unpickling goes through a process-level cache keyed by that hash, so a
System deserialized many times (openmmtools hashes and copies Systems through XML) shares one
module. :func:`python_force` evaluates a *snapshot* of the module: the module round-tripped through
those bytes when the force is created, the same bytes OpenMM pickles into the PythonForce (and
copies into a CustomCVForce). So every copy of the force, and :func:`parameter_derivative
<openmm_flowplugin.forces.parameter_derivative>`, evaluate the weights the module had then.
"""

__all__ = ["TorchComputation", "python_force"]

import copy
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
from ..errors import InvalidInputError, InvalidTypeError

_FUNCTION_ATTRIBUTE = re.compile(r'function="([0-9a-fA-F]*)"')
_NAME_PREFIX = "TorchComputation-"

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
            raise InvalidInputError("serialized torch module is corrupt: its sha256 does not match the stored hash.")
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

    If the module cannot be loaded when unpickled (e.g. its class is not importable in this
    process), unpickling still succeeds and every evaluation raises an error that names the cause:
    an exception during unpickling would crash the process inside OpenMM (a segmentation fault in
    ``XmlSerializer.deserialize``, OpenMM 8.6).

    Parameters
    ----------
    module : torch.nn.Module
        Evaluated as it is (:func:`python_force` passes a snapshot).
    parameter_names : sequence of str
        Global parameters passed to the module by name, as 0-d float64 tensors.
    periodic : bool
        Pass ``box_vectors=`` (nm, shape (3, 3)).

    Attributes
    ----------
    load_error : str or None
        Why the module could not be loaded when unpickled (None if it was).

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
        self.load_error = None

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

    def _check_loaded(self):
        if self.load_error is not None:
            raise RuntimeError(self.load_error)

    def energy_and_forces(self, positions, **kwargs):
        """Energy (float, kJ/mol) and forces (numpy, kJ/mol/nm) at ``positions`` (tensor, nm)."""
        self._check_loaded()
        with torch.enable_grad():
            positions = positions.detach().requires_grad_(True)
            energy = self.module(positions, **kwargs)
            if energy.numel() != 1:
                raise InvalidInputError(
                    f"the module must return a scalar energy in kJ/mol, got shape {tuple(energy.shape)}; "
                    "sum per-atom or per-sample energies inside the module."
                )
            (gradient,) = torch.autograd.grad(energy.sum(), positions)
        return float(energy.detach()), (-gradient).numpy()

    def parameter_derivatives(self, positions, names, **kwargs):
        """dU/dp by autograd for each parameter in ``names`` (dict of floats, kJ/mol per unit)."""
        self._check_loaded()
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
        self.parameter_names = tuple(state["parameter_names"])
        self.periodic = bool(state["periodic"])
        self._serialized = (state["module_format"], state["module_bytes"], state["module_sha256"])
        self.module, self.load_error = None, None
        try:
            self.module = _deserialize_module(*self._serialized)
        except Exception as error:  # noqa: BLE001 - raising here would crash OpenMM; every use raises it instead
            self.load_error = (
                f"the torch module of this PythonForce (made by openmm_flowplugin.as_openmm_force) could not be "
                f"loaded: {type(error).__name__}: {error}. Make the module's class importable in this process "
                "(the same package and module path as when the force was made)."
            )


def _snapshot(module):
    """``(snapshot, serialized, problem)``: the module round-tripped through its bytes (a deep copy if it cannot be pickled)."""
    try:
        kind, payload = _serialize_module(module)
    except Exception as error:  # noqa: BLE001 - pickle raises many types; reported to the caller as `problem`
        problem = f"{type(module).__name__} (or a module inside it) could not be pickled ({type(error).__name__}: {error})."
        try:
            return copy.deepcopy(module), None, problem
        except Exception as copy_error:  # noqa: BLE001
            raise InvalidTypeError(
                f"{problem} It cannot be deep-copied either ({type(copy_error).__name__}: {copy_error}), so the force "
                "cannot hold a snapshot of it. Define its class at the top level of an importable module."
            ) from copy_error
    sha256 = hashlib.sha256(payload).hexdigest()
    snapshot = _MODULE_CACHE.get(sha256)
    if snapshot is None:
        try:
            snapshot = _deserialize_module(kind, payload, sha256)
        except Exception as error:  # noqa: BLE001 - re-raised with the fix
            raise InvalidInputError(
                f"{type(module).__name__} pickles, but its bytes do not unpickle ({type(error).__name__}: {error}); "
                "a System holding this force would crash OpenMM when deserialized. Fix the module's "
                "__getstate__/__setstate__ (or __reduce__), or pass a TorchScript module."
            ) from error
    return snapshot, (kind, payload, sha256), None


def python_force(module, particles=None, periodic=False, global_parameters=None):
    """An :class:`openmm.PythonForce` evaluating a snapshot of ``module``; see :func:`openmm_flowplugin.as_openmm_force`.

    With global parameters it is returned inside an :class:`openmm.CustomCVForce` (energy ``"u"``)
    that declares them, which requires the module to be picklable.
    """
    parameters = dict(global_parameters or {})
    snapshot, serialized, problem = _snapshot(module)
    if problem is not None:
        fix = "Define its class at the top level of an importable module, without lambdas or closures (or pass a TorchScript module)."
        if parameters:
            raise InvalidInputError(
                f"{problem} {fix} It is needed here: with global parameters the PythonForce sits inside a "
                "CustomCVForce, which copies it by serialization when a Context is created."
            )
        warnings.warn(
            f"{problem} {fix} Without it this force cannot be serialized with XmlSerializer, nor used in an "
            "openmmtools ThermodynamicState.",
            stacklevel=3,
        )
    computation = TorchComputation(snapshot, parameter_names=tuple(parameters), periodic=periodic)
    computation._serialized = serialized  # OpenMM pickles exactly the bytes the snapshot came from
    force = openmm.PythonForce(computation, parameters)
    force.setName(f"{_NAME_PREFIX}{uuid.uuid4().hex}")
    _LIVE_COMPUTATIONS[force.getName()] = computation
    if particles is not None:
        force.setParticles(particles)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
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


def _computation_of(force, label):
    """The TorchComputation a PythonForce evaluates; None if its callable is something else (not ours).

    Raises ValueError when the callable cannot be unpickled here, or is ours but its module failed to load.
    """
    computation = _LIVE_COMPUTATIONS.get(force.getName())
    if computation is None:
        payload = _pickled_function(force)
        if not payload:
            return None
        key = hashlib.sha256(payload).hexdigest()
        computation = _CALLABLE_CACHE.get(key)
        if computation is None:
            try:
                computation = pickle.loads(payload)
            except Exception as error:  # noqa: BLE001 - re-raised with the force named
                raise InvalidInputError(
                    f"{label}: its pickled callable cannot be unpickled in this process ({type(error).__name__}: "
                    f"{error}), so its dU/dλ cannot be computed. Make the classes it names importable."
                ) from error
            if not isinstance(computation, TorchComputation):
                return None
            _CALLABLE_CACHE[key] = computation
    if computation.load_error is not None:
        raise InvalidInputError(f"{label}: {computation.load_error}")
    return computation
