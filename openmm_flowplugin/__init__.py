"""openmm_flowplugin: learned samplers for OpenMM and openmmtools.

Public API (imported lazily, so ``import openmm_flowplugin`` stays fast and quiet):

- Systems and energies: :mod:`~openmm_flowplugin.systems` (registry, :func:`~openmm_flowplugin.systems.from_files`),
  :class:`OpenMMEnergy`, :func:`select_platform`
- Coordinates and flows: :class:`InternalCoordinateTransform`, :class:`BoltzmannGenerator`,
  :func:`load_flow`, :func:`save_flow`
- Training and evaluation: :func:`train_maximum_likelihood`, :func:`train_reverse_kl`,
  :func:`evaluate_flow`, :func:`importance_weights`, :func:`effective_sample_size`, :func:`pareto_k`, :func:`simulate`
- Proposals and exact moves: :class:`GaussianProposal`, :class:`ProposalBuffer`, :class:`FlowMCMove` (openmmtools),
  :class:`FlowMCIntegrator` (drop-in OpenMM integrator), :class:`FlowMCReporter`
- Forces: :func:`as_openmm_force`, :func:`flow_potential`, :func:`parameter_derivative`,
  :func:`create_mixed_system` (TorchANI: :mod:`openmm_flowplugin.forces.ani`, extra ``[ani]``)
- Free energies: :func:`solvation_system`, :func:`solvation_free_energy` (alchemical MBAR, neural TI);
  the CV-biased diffusion sampler :class:`DiffusionSampler` with :class:`WellTemperedBias`, :class:`DiffusionProposal` (its draws as exact MC moves) and
  :class:`NoiseSchedule`, :func:`free_energy_surface`
- Speed: :func:`set_package_threads` (torch threads for the package's own work; default 1)

Subpackages, one concept each: ``bridge``, ``geometry``, ``flows``, ``proposals``, ``mcmc``,
``integrators``, ``forces``, ``freeenergy``, ``diffusion``, ``analysis``, ``systems``, ``simulation``, ``cli``. Module paths of the
flat layout (``openmm_flowplugin.moves``, ``.python_force``, ...) still import, for stored data.
"""

import importlib

from . import _compat
from ._version import __version__

_compat.install()

_EXPORTS = {
    # systems and the energy bridge
    "systems": ".systems",
    "MolecularSystem": ".systems.molecular_system",
    "OpenMMEnergy": ".bridge.energy",
    "select_platform": ".platforms",
    # coordinates and flows
    "InternalCoordinateTransform": ".geometry.internal",
    "BoltzmannGenerator": ".flows.boltzmann_generator",
    "load_flow": ".flows.checkpoints",
    "save_flow": ".flows.checkpoints",
    "CheckpointError": ".flows.checkpoints",
    # training, data, evaluation
    "train_maximum_likelihood": ".flows.training",
    "train_reverse_kl": ".flows.training",
    "importance_weights": ".analysis.weights",
    "effective_sample_size": ".analysis.weights",
    "pareto_k": ".analysis.weights",
    "simulate": ".simulation.md",
    "evaluate_flow": ".analysis.evaluation",
    # proposals
    "GaussianProposal": ".proposals.gaussian",
    "ProposalBuffer": ".proposals.buffer",
    # exact learned Monte Carlo: openmmtools move, OpenMM integrator
    "FlowMCMove": ".mcmc.flow_move",
    "TimewarpMove": ".mcmc.timewarp_move",
    "ConditionalFlow": ".flows.conditional",
    "TransferableConditionalFlow": ".flows.transferable",
    "InternalCoordinateProposal": ".flows.internal_conditional",
    "train_timewarp": ".flows.conditional_training",
    "FlowMCIntegrator": ".integrators.flow_mc",
    "FlowMCReporter": ".integrators.reporter",
    # learned potentials as forces
    "as_openmm_force": ".forces.as_force",
    "flow_potential": ".forces.modules",
    "parameter_derivative": ".forces.as_force",
    "create_mixed_system": ".forces.mixing",
    "solvation_system": ".freeenergy.presets",
    "solvation_free_energy": ".freeenergy.solvation",
    # the CV-biased diffusion sampler and free-energy surfaces
    "DiffusionSampler": ".diffusion.sampler",
    "DiffusionProposal": ".diffusion.proposal",
    "WellTemperedBias": ".diffusion.bias",
    "NoiseSchedule": ".diffusion.schedule",
    "free_energy_surface": ".analysis.fes",
    # speed
    "set_package_threads": "._threads",
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
