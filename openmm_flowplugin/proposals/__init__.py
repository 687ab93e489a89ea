"""Proposals for learned Monte Carlo: the protocol, simple proposals, batching and plain-data storage.

A *proposal* is any object with

- ``sample(n) -> (x, log_q)``: ``x`` a torch tensor of shape (n, n_atoms, 3) in nm, ``log_q`` shape (n,);
- ``log_prob(x) -> log_q``: shape (n,) for ``x`` of shape (n, n_atoms, 3).

See :mod:`openmm_flowplugin.proposals.protocol` for the optional attributes moves consult.
"""

from .._compat import package_getattr
from ..geometry.alignment import kabsch_align
from .buffer import ProposalBuffer
from .gaussian import GaussianProposal
from .protocol import (
    check_proposal_fingerprint,
    checked_batch_size,
    metropolis_hastings_log_ratio,
    proposal_n_atoms,
    proposal_version,
    sample_with_generator,
)
from .streams import checked_root_seed, numpy_generator, torch_generator

__all__ = [
    "GaussianProposal",
    "ProposalBuffer",
    "metropolis_hastings_log_ratio",
    "proposal_n_atoms",
    "proposal_version",
    "checked_batch_size",
    "check_proposal_fingerprint",
    "kabsch_align",
    "sample_with_generator",
    "checked_root_seed",
    "numpy_generator",
    "torch_generator",
]

# Private names of the flat layout's ``proposals`` module, which stored data (pickles) may name.
__getattr__ = package_getattr(__name__, ('protocol', 'gaussian', 'buffer'))
