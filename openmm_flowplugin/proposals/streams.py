"""Random streams derived from a root seed and counters.

Every random draw a learned move makes comes from a generator seeded by
``numpy.random.SeedSequence(root_seed, spawn_key=(*stream, purpose, counter))``:

- ``root_seed``: given by the user (``seed=``) or drawn once from the OS and then stored;
- ``stream``: which copy of a move (``()`` for the object the user built; a deep copy appends
  its copy number, so openmmtools' per-state copies get ``(0, k)``): copies never share draws;
- ``purpose``: :data:`DRAWS` (proposals), :data:`ACCEPT` (Metropolis uniforms), :data:`VELOCITIES`,
  :data:`LOG_PROB` (the auxiliary draws of a proposal whose ``log_prob`` is a random estimate);
- ``counter``: a position in the chain (draws consumed so far, or the proposal batch index).

Nothing but these integers is stored, and they are the same on every MPI rank (openmmtools builds
and copies moves identically on each rank and synchronises move statistics, which carry the
counter), so copies, ranks and resumed runs neither replay nor collide.

Examples
--------
>>> rng = numpy_generator(7, 0, ACCEPT, 12)
>>> float(rng.random()) == float(numpy_generator(7, 0, ACCEPT, 12).random())
True
>>> float(rng.random()) == float(numpy_generator(7, 1, ACCEPT, 12).random())
False
"""

__all__ = ["DRAWS", "ACCEPT", "VELOCITIES", "LOG_PROB", "new_root_seed", "checked_root_seed", "numpy_generator", "torch_generator"]

import numpy as np
import torch
from ..errors import InvalidInputError

DRAWS, ACCEPT, VELOCITIES, LOG_PROB = 0, 1, 2, 3


def new_root_seed():
    """A fresh 63-bit root seed from the operating system's entropy."""
    return int(np.random.SeedSequence().generate_state(2, np.uint64)[0] >> np.uint64(1))


def checked_root_seed(seed):
    """``seed`` as a non-negative int (a fresh one if ``None``), or ValueError."""
    if seed is None:
        return new_root_seed()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer (or None for a fresh one), got {seed!r}.")
    return int(seed)


def _sequence(root_seed, key):
    return np.random.SeedSequence(int(root_seed), spawn_key=tuple(int(k) for k in key))


def numpy_generator(root_seed, *key):
    """A :class:`numpy.random.Generator` for ``(root_seed, key)``."""
    return np.random.Generator(np.random.PCG64(_sequence(root_seed, key)))


def torch_generator(root_seed, *key):
    """A CPU :class:`torch.Generator` for ``(root_seed, key)``."""
    seed = int(_sequence(root_seed, key).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)
