"""Energy modules that follow :func:`~openmm_flowplugin.as_openmm_force`'s convention, and flow potentials."""

__all__ = ["HarmonicRestraint", "FlowEnergy", "flow_potential"]

import numpy as np
import torch

from ..units import kT as _kT
from .as_force import as_openmm_force
from ..errors import InvalidTypeError


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


def flow_potential(flow, temperature, particles=None, backend="python", system=None):
    """The energy ``U(x) = -kT log q(x)`` of a flow as an OpenMM Force (learned bias or reference).

    Parameters
    ----------
    flow : torch.nn.Module
        Any module with ``log_prob(x)``, ``x`` a tensor of shape (n, n_atoms, 3) in nm,
        returning ``log q`` of shape (n,). Positions are cast to the flow's parameter dtype.
    temperature : openmm.unit.Quantity or float
        Temperature (K if a bare number) defining ``kT``.
    particles : sequence of int, optional
        Atoms the flow describes (default: all); needs ``system``.
    system : openmm.System or int, optional
        The System the force joins (or its particle count).
    backend : {"python", "torch", "auto"}
        As in :func:`as_openmm_force`.

    Returns
    -------
    openmm.Force
        Forces ``kT * grad log q(x)`` (kJ/mol/nm) by autograd.

    Notes
    -----
    The force evaluates a snapshot of the flow taken now (see :func:`as_openmm_force`): training
    the flow further does not change it. Create the force after training; to use new weights,
    create a new force.

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
        raise InvalidTypeError(f"flow must have a log_prob(x) method, got {type(flow).__name__}.")
    return as_openmm_force(FlowEnergy(flow, _kT(temperature)), particles=particles, backend=backend, system=system)
