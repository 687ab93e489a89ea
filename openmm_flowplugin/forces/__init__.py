"""Learned potentials as ordinary OpenMM forces.

:func:`as_openmm_force` turns a torch module mapping positions (nm) to an energy (kJ/mol) into an
:class:`openmm.PythonForce` (any platform) or an ``openmmtorch.TorchForce`` (CUDA);
:func:`parameter_derivative` gives exact ``dU/dλ``; :func:`flow_potential` makes ``-kT log q(x)``
of a flow a force; :mod:`~openmm_flowplugin.forces.mixing` switches any learned potential on a
subset of atoms against the MM terms it replaces; :mod:`~openmm_flowplugin.forces.ani` (extra
``ani``) does that with TorchANI models.
"""

from .._compat import package_getattr
from .as_force import as_openmm_force, parameter_derivative
from .mixing import create_mixed_system
from .modules import FlowEnergy, HarmonicRestraint, flow_potential
from .python_force import TorchComputation

__all__ = [
    "as_openmm_force",
    "parameter_derivative",
    "flow_potential",
    "create_mixed_system",
    "HarmonicRestraint",
    "FlowEnergy",
    "TorchComputation",
]

# Private names of the flat layout's ``forces`` module, which stored data (pickles) may name.
__getattr__ = package_getattr(__name__, ('as_force', 'modules', 'python_force'))
