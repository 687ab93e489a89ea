"""OpenMM integrators that mix molecular dynamics with learned Monte Carlo jumps, and their reporter."""

from .._compat import package_getattr
from .flow_mc import FlowMCIntegrator
from .reporter import FlowMCReporter

__all__ = ["FlowMCIntegrator", "FlowMCReporter"]

# Private names of the flat layout's ``integrators`` module, which stored data (pickles) may name.
__getattr__ = package_getattr(__name__, ('flow_mc',))
