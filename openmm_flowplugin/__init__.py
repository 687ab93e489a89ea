"""openmm_flowplugin: learned samplers for OpenMM and openmmtools.

Public API (imported lazily, so ``import openmm_flowplugin`` stays fast and quiet):

- Systems and energies: :mod:`~openmm_flowplugin.systems`, :class:`OpenMMEnergy`
- Coordinates and flows: :class:`InternalCoordinateTransform`, :class:`BoltzmannGenerator`,
  :func:`load_flow`, :func:`save_flow`
- Training and evaluation: :func:`train_maximum_likelihood`, :func:`train_reverse_kl`,
  :func:`evaluate_flow`, :func:`effective_sample_size`, :func:`simulate`
- Proposals and exact moves: :class:`GaussianProposal`, :class:`ProposalBuffer`, :class:`FlowMCMove` (openmmtools),
  :class:`FlowMCIntegrator` (drop-in OpenMM integrator)
- Forces: :func:`as_openmm_force`, :func:`flow_potential`, :func:`parameter_derivative`
  (TorchANI integration: :mod:`openmm_flowplugin.ani`, extra ``[ani]``)
"""

import importlib

from ._version import __version__

_EXPORTS = {
    # systems and the energy bridge
    "systems": ".systems",
    "MolecularSystem": ".molecular_system",
    "OpenMMEnergy": ".energy",
    "select_platform": ".platforms",
    # coordinates and flows
    "InternalCoordinateTransform": ".coordinates",
    "BoltzmannGenerator": ".flows",
    "load_flow": ".checkpoints",
    "save_flow": ".checkpoints",
    "CheckpointError": ".checkpoints",
    # training, data, evaluation
    "train_maximum_likelihood": ".training",
    "train_reverse_kl": ".training",
    "importance_weights": ".training",
    "effective_sample_size": ".training",
    "simulate": ".simulate",
    "evaluate_flow": ".evaluation",
    # proposals
    "GaussianProposal": ".proposals",
    "ProposalBuffer": ".proposals",
    # exact learned Monte Carlo: openmmtools move, OpenMM integrator
    "FlowMCMove": ".moves",
    "FlowMCIntegrator": ".integrators",
    "FlowMCReporter": ".reporters",
    # learned potentials as forces
    "as_openmm_force": ".forces",
    "flow_potential": ".forces",
    "parameter_derivative": ".forces",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name], __name__)
        value = module if name == "systems" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'openmm_flowplugin' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
