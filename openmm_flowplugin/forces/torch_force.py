"""The ``"torch"`` backend of :func:`openmm_flowplugin.as_openmm_force`: ``openmmtorch.TorchForce``.

TorchForce calls a TorchScript module as ``forward(positions[, box_vectors], *parameters)``
(positions of *all* particles, float32 or float64, nm; global parameters positionally, in the
order they were added). :func:`script_adapter` compiles a small adapter that restores this
package's calling convention, ``module(positions, **parameters, box_vectors=...)`` with float64
inputs and, for a subset of particles, only their positions (autograd then gives zero force on
the others). Needs the extra ``openmm_flowplugin[torch-force]`` (``openmmtorch``, which requires
a CUDA build of torch).
"""

__all__ = ["script_adapter", "torch_force", "INSTALL_HINT"]

import hashlib
import linecache
import warnings

import torch

from ..errors import InvalidTypeError, MissingDependencyError

INSTALL_HINT = (
    "backend='torch' needs openmmtorch (TorchForce): install the extra `pip install "
    "openmm_flowplugin[torch-force]` (or `conda install -c conda-forge openmm-torch`) with a CUDA build "
    "of torch, or use backend='python' (openmm.PythonForce, works everywhere)."
)

_TEMPLATE = '''
import torch
from typing import Optional


class TorchForceAdapter(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, particles: Optional[torch.Tensor]):
        super().__init__()
        self.module = module
        self.use_subset = particles is not None
        self.register_buffer("particles", particles if particles is not None else torch.zeros(0, dtype=torch.long))

    def forward(self, positions: torch.Tensor{box_arg}{param_args}) -> torch.Tensor:
        x = positions.to(torch.float64)
        if self.use_subset:
            x = x.index_select(0, self.particles)
        return self.module(x{call_args}).to(torch.float64).reshape(())
'''

_ADAPTER_CLASSES = {}


def _adapter_class(parameter_names, periodic):
    box_arg = ", box_vectors: torch.Tensor" if periodic else ""
    param_args = "".join(f", {name}: torch.Tensor" for name in parameter_names)
    call_args = "".join(f", {name}={name}.to(torch.float64).reshape(())" for name in parameter_names)
    if periodic:
        call_args += ", box_vectors=box_vectors.to(torch.float64)"
    source = _TEMPLATE.format(box_arg=box_arg, param_args=param_args, call_args=call_args)
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    if key not in _ADAPTER_CLASSES:
        # TorchScript reads class source through inspect/linecache: register the generated text there.
        filename = f"<openmm_flowplugin-torchforce-adapter-{key}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace = {"__name__": f"openmm_flowplugin._generated_{key}"}
        exec(compile(source, filename, "exec"), namespace)
        _ADAPTER_CLASSES[key] = namespace["TorchForceAdapter"]
    return _ADAPTER_CLASSES[key]


def script_adapter(module, particles=None, periodic=False, parameter_names=()):
    """TorchScript ``module`` inside an adapter with TorchForce's calling convention.

    Parameters
    ----------
    module : torch.nn.Module
        Follows :func:`openmm_flowplugin.as_openmm_force`'s convention; must be scriptable
        (``torch.jit.script``) or already a ``ScriptModule``.
    particles : sequence of int, optional
    periodic : bool
    parameter_names : sequence of str
        In the order they are added to the TorchForce.

    Returns
    -------
    torch.jit.ScriptModule
        ``forward(positions[, box_vectors], *parameters)`` returning a 0-d float64 energy (kJ/mol).

    Examples
    --------
    >>> import torch
    >>> class Harmonic(torch.nn.Module):
    ...     def forward(self, positions: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    ...         return 0.5 * k * (positions ** 2).sum()
    >>> adapter = script_adapter(Harmonic(), particles=[1], parameter_names=["k"])
    >>> float(adapter(torch.ones(2, 3), torch.tensor(2.0)))
    3.0
    """
    if not isinstance(module, torch.jit.ScriptModule):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.script(module)
        except Exception as error:
            raise InvalidTypeError(
                f"backend='torch' needs a TorchScript-compatible module, but torch.jit.script({type(module).__name__}) "
                f"failed: {error}\nAnnotate forward's arguments as torch.Tensor, or use backend='python'."
            ) from error
    indices = None if particles is None else torch.tensor(list(particles), dtype=torch.long)
    adapter = _adapter_class(tuple(parameter_names), bool(periodic))(module, indices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript; TorchForce needs it
        return torch.jit.script(adapter)


def torch_force(module, particles=None, periodic=False, global_parameters=None):
    """An ``openmmtorch.TorchForce`` evaluating ``module`` (see :func:`script_adapter`).

    Every global parameter gets ``addEnergyParameterDerivative``, so ``dU/dp`` is available from
    ``State.getEnergyParameterDerivatives()``.

    Raises
    ------
    ImportError
        If ``openmmtorch`` is missing; the message names the extra ``openmm_flowplugin[torch-force]``.
    """
    try:
        from openmmtorch import TorchForce
    except ImportError as error:
        raise MissingDependencyError(INSTALL_HINT) from error
    parameters = dict(global_parameters or {})
    scripted = script_adapter(module, particles=particles, periodic=periodic, parameter_names=tuple(parameters))
    force = TorchForce(scripted)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    for name, default in parameters.items():
        force.addGlobalParameter(name, float(default))
        force.addEnergyParameterDerivative(name)
    return force
