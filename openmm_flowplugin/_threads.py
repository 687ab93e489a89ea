"""One torch intra-op thread for the package's own small-tensor work, unless the user asks otherwise.

Flows on tens of atoms run many small tensor operations; spreading each over every core costs more
than it saves (measured on 2 cores: sampling 10,000 alanine-dipeptide configurations took 46.8 s
with torch's default threads vs 4.2 s with one; a training step 2.37 s vs 0.26 s). The package's
sampling, evaluation and training run inside :func:`package_threads`, which switches torch to
:func:`package_thread_count` threads and restores the user's setting afterwards.

Set ``OPENMM_FLOWPLUGIN_TORCH_THREADS=N`` (or call :func:`set_package_threads`) to choose
another count, e.g. for large models on many cores or on the GPU; ``0`` leaves torch's setting alone.
"""

__all__ = ["package_threads", "package_thread_count", "set_package_threads", "THREADS_ENV_VAR"]

import contextlib
import os

import torch

#: Environment variable: torch intra-op threads for the package's work (0: leave torch's setting).
THREADS_ENV_VAR = "OPENMM_FLOWPLUGIN_TORCH_THREADS"

_override = None


def set_package_threads(n):
    """Use ``n`` torch threads for the package's work (``None``: back to the default; ``0``: torch's own)."""
    global _override
    if n is not None and (int(n) != n or n < 0):
        raise ValueError(f"the thread count must be an integer >= 0 (0: leave torch's setting), got {n!r}.")
    _override = None if n is None else int(n)


def package_thread_count():
    """Threads the package's work runs on: :func:`set_package_threads`, else the environment variable, else 1."""
    if _override is not None:
        return _override
    value = os.environ.get(THREADS_ENV_VAR, "1")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV_VAR}={value!r} is not an integer; set it to a thread count (0: torch's own).") from None
    if n < 0:
        raise ValueError(f"{THREADS_ENV_VAR}={value!r} must be >= 0.")
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
