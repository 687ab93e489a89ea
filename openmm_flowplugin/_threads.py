"""One torch intra-op thread for the package's own small-tensor work, unless the user asks otherwise.

Flows on tens of atoms run many small tensor operations, each of which, spread over every core,
waits for all of its threads. When another process holds a core (a shared machine, MPI ranks,
OpenMM's own threads) that wait dominates: measured on 2 cores with two other simulations running
(``benchmarks/bench_defaults.py``, ``docs/performance.md``), torch's default thread count made
sampling 10,000 alanine-dipeptide configurations 13-45x, a training step 23x and one
single-configuration ``log q`` 4.5x slower than one thread. On an otherwise idle machine torch's
default was ~1.5x faster for the large batches, so one thread trades that for robustness; on
dedicated cores, ``OPENMM_FLOWPLUGIN_TORCH_THREADS=0`` gives it back.

The rule
--------
- The package's sampling, evaluation and training (and each Metropolis-Hastings ``log q`` of a
  flow move) run inside :func:`package_threads`, which switches torch to
  :func:`package_thread_count` threads and restores the caller's count afterwards. Code outside
  the package keeps the user's setting.
- The count is 1, unless ``OPENMM_FLOWPLUGIN_TORCH_THREADS=N`` or :func:`set_package_threads`
  (which wins) says otherwise, e.g. for large models on many cores. ``0`` leaves torch's setting
  alone (no switching at all).
- Nothing is switched when torch already runs on the wanted count (e.g. nested blocks, or a user
  who set one thread).

The switch is cheap, so it is done per call, even for the single-configuration ``log q`` of every
Metropolis-Hastings step: measured on 2 cores, ``torch.set_num_threads`` there and back costs
~0.2 µs and the whole context manager ~5 µs, against 5-10 ms for one ``log q`` of the shipped
alanine-dipeptide flow (< 0.1 %); a per-step ``log q`` ran no slower with the switch than with the
user already at one thread, and the user's next parallel operation after a switch no slower than
without one (a 256x256 matmul on 2 threads: 145 vs 144 µs). Setting the count once for the whole
process would be no faster and would silently change the user's own torch code.

``torch.set_num_threads`` is process-wide: a block running in one Python thread also affects torch
work that other Python threads do meanwhile (their speed, never their results).
"""

__all__ = ["package_threads", "package_thread_count", "set_package_threads", "THREADS_ENV_VAR"]

import contextlib
import numbers
import os

import torch

from .errors import InvalidInputError

#: Environment variable: torch intra-op threads for the package's work (0: leave torch's setting).
THREADS_ENV_VAR = "OPENMM_FLOWPLUGIN_TORCH_THREADS"

_override = None


def set_package_threads(n):
    """Use ``n`` torch threads for the package's work (``None``: back to the default; ``0``: torch's own).

    Parameters
    ----------
    n : int or None
        An integer >= 0; takes precedence over ``OPENMM_FLOWPLUGIN_TORCH_THREADS``.

    Examples
    --------
    >>> set_package_threads(2); package_thread_count()
    2
    >>> set_package_threads(None)  # back to the environment variable, else 1
    >>> set_package_threads(-1)
    Traceback (most recent call last):
    ...
    openmm_flowplugin.errors.InvalidInputError: set_package_threads: the thread count must be an integer >= 0 (0: leave torch's setting alone), got -1.
    """
    global _override
    if n is not None:
        whole = isinstance(n, numbers.Integral) or (isinstance(n, float) and n.is_integer())
        if isinstance(n, bool) or not whole or n < 0:
            raise InvalidInputError(
                f"set_package_threads: the thread count must be an integer >= 0 (0: leave torch's setting alone), got {n!r}."
            )
        n = int(n)
    _override = n


def package_thread_count():
    """Threads the package's work runs on: :func:`set_package_threads`, else the environment variable, else 1.

    Raises
    ------
    ValueError
        ``OPENMM_FLOWPLUGIN_TORCH_THREADS`` is set to something other than an integer >= 0.
    """
    if _override is not None:
        return _override
    value = os.environ.get(THREADS_ENV_VAR, "").strip()
    if not value:
        return 1
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise InvalidInputError(
            f"{THREADS_ENV_VAR}={value!r} is not a thread count; set it to an integer >= 0 (0: leave torch's setting alone) or unset it."
        )
    return n


@contextlib.contextmanager
def package_threads():
    """Run the block on :func:`package_thread_count` torch threads, restoring the previous count after.

    Examples
    --------
    >>> with package_threads():
    ...     torch.get_num_threads()
    1
    """
    wanted = package_thread_count()
    previous = torch.get_num_threads()
    if wanted == 0 or wanted == previous:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
