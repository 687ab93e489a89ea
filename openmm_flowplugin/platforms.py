"""Choosing the OpenMM platform: by measurement, once per System.

Which platform is fastest depends on the System, not only on its size. For alanine dipeptide in
vacuum the single-threaded Reference platform beats the CPU platform by 20-40x (the CPU
platform's threading and neighbour-list set-up cost more than the whole force computation),
while with OBC implicit solvent (a ``CustomGBForce``) the CPU platform wins. So, unless told
otherwise, :func:`select_platform` times the candidates on the System itself:

1. the ``platform`` argument, if given;
2. else the environment variable ``OPENMM_FLOWPLUGIN_PLATFORM`` (e.g. ``CPU``);
3. else, for systems of more than :data:`REFERENCE_MAX_PARTICLES` particles, CUDA, then OpenCL,
   when present, untimed;
4. else, for systems of at most :data:`REFERENCE_MAX_PARTICLES` particles, Reference and CPU —
   and the GPU platform of step 3, when present — are timed the first time the System is seen in
   this process and the fastest is kept, cached by a digest of the System's XML and the purpose.
   Timing: after a warm-up, short blocks of the candidates alternate for up to ~0.25 s (0.1 s once
   the best two are 3x apart) and each one's best block counts (integrator steps that recompute the
   forces for ``purpose="md"``, energy+force evaluations for ``purpose="energy"``, each block ending
   with a read-back so a GPU's queued work is counted); it costs 0.1-0.3 s for alanine dipeptide on
   2 cores, plus the first GPU Context's kernel compilation, a cache hit ~20 µs. It runs on the
   caller's ``positions`` if given, else on a jittered lattice at liquid density (or filling the box).
   GPUs are timed for small systems because they do not always win there: on an H200 with
   OpenMM 8.6, alanine dipeptide in vacuum ran 4,571 ns/day on Reference against 2,402 on CUDA and
   evaluated 52,000 configurations/s against 12,000, while in OBC implicit solvent CUDA ran MD
   20x faster than the CPU platform (``benchmarks/bench_platforms.py``);
5. larger systems without a GPU go to CPU without timing: Reference never won there. Measured on 2
   cores (MD steps): TIP3P water boxes with PME of 306, 774 and 1,503 particles ran 7x, 7x and 13x
   slower on Reference, explicit-solvent alanine dipeptide (2,269 particles) 13x; the largest system
   where Reference kept up was a 156-particle host-guest complex in vacuum (0.25 vs 0.30 ms).

What was measured and why a platform was chosen is returned by :func:`platform_choice` and
logged (logger ``openmm_flowplugin.platforms``, level INFO).
"""

__all__ = ["select_platform", "platform_choice", "clear_platform_cache", "PlatformChoice", "PLATFORM_ENV_VAR",
           "REFERENCE_MAX_PARTICLES", "PURPOSES"]

import hashlib
import itertools
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

from .errors import InvalidInputError

import numpy as np
import openmm

#: Environment variable that overrides automatic platform selection (e.g. ``Reference``, ``CUDA``).
PLATFORM_ENV_VAR = "OPENMM_FLOWPLUGIN_PLATFORM"

#: Reference is timed against CPU only for systems of at most this many particles (see the module notes).
REFERENCE_MAX_PARTICLES = 500

#: What a Context will be used for: ``"md"`` (integrator steps) or ``"energy"`` (one configuration at a time).
PURPOSES = ("md", "energy")

_GPU_PLATFORMS = ("CUDA", "OpenCL")
_CANDIDATES = ("Reference", "CPU")
_BLOCK_SECONDS = 0.005  # length of one timed block
_TIMING_SECONDS = 0.25  # rounds of blocks stop after this long (at least _MIN_ROUNDS rounds)
_MIN_ROUNDS, _MAX_ROUNDS = 3, 20
_DECISIVE_RATIO, _DECISIVE_SECONDS = 3.0, 0.1  # stop early when the best blocks are this far apart after 0.1 s

_logger = logging.getLogger(__name__)
_lock = threading.Lock()
_cache = {}  # (digest of the System XML, purpose) -> PlatformChoice
_by_identity = {}  # id(system) -> (weakref to it, cheap fingerprint, digest): skips the XML on a cache hit
_unserializable = itertools.count()


@dataclass(frozen=True)
class PlatformChoice:
    """Which platform :func:`select_platform` chose, and why.

    Attributes
    ----------
    name : str
        The platform name, e.g. ``"CPU"``.
    purpose : str
        ``"md"`` or ``"energy"``.
    reason : str
        One line: the argument, the environment variable, a GPU, the system size, or the timings.
    timings : dict
        Seconds per integrator step (``"md"``) or per energy+force evaluation (``"energy"``) of each
        candidate timed, best block after a warm-up; ``inf`` if the candidate failed. Empty when
        nothing was timed.
    cost : float
        Seconds spent timing (0 when nothing was timed).
    """

    name: str
    purpose: str
    reason: str
    timings: dict = field(default_factory=dict)
    cost: float = 0.0


def _available_platforms():
    return {openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())}


def select_platform(system=None, platform=None, purpose="md", positions=None):
    """Return the OpenMM platform to use for ``system``.

    Order of precedence: the ``platform`` argument, the environment variable
    ``OPENMM_FLOWPLUGIN_PLATFORM``, then the automatic choice described in
    :mod:`openmm_flowplugin.platforms` (for small Systems the fastest of Reference, CPU and a GPU
    platform if present, timed once per System and purpose in this process; for larger ones the GPU
    platform if present, else CPU).

    Parameters
    ----------
    system : openmm.System, optional
        The System the Context will hold. Without one (and no GPU), Reference.
    platform : str or openmm.Platform, optional
        Use this platform (an instance is returned as it is).
    purpose : {"md", "energy"}
        ``"md"`` for a Context that runs integrator steps, ``"energy"`` for one that evaluates
        energies and forces of configurations one at a time.
    positions : array_like or Quantity, shape=(n_particles, 3), optional
        A typical configuration (nm) to time on; default: a jittered lattice. Not part of the
        cache key.

    Returns
    -------
    openmm.Platform

    Raises
    ------
    ValueError
        The requested platform is not available, ``purpose`` is unknown, or ``positions`` do not
        fit the System.
    TypeError
        ``system`` is not an :class:`openmm.System`.

    Examples
    --------
    >>> select_platform(platform="Reference").getName()
    'Reference'
    >>> from openmm_flowplugin import systems
    >>> select_platform(systems.get("alanine_dipeptide_vacuum").system, purpose="energy").getName()
    'Reference'
    """
    if isinstance(platform, openmm.Platform):
        return platform
    return openmm.Platform.getPlatformByName(platform_choice(system, platform, purpose, positions).name)


def platform_choice(system=None, platform=None, purpose="md", positions=None):
    """The :class:`PlatformChoice` (name, reason, timings) :func:`select_platform` makes; same arguments.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> choice = platform_choice(systems.get("alanine_dipeptide_vacuum").system, purpose="md")
    >>> choice.name, "CPU" in choice.timings
    ('Reference', True)
    >>> choice.timings["Reference"] < choice.timings["CPU"]
    True
    """
    if purpose not in PURPOSES:
        raise InvalidInputError(f"purpose must be one of {PURPOSES}, got {purpose!r}.")
    if isinstance(platform, openmm.Platform):
        return PlatformChoice(platform.getName(), purpose, "given as an openmm.Platform")
    available = _available_platforms()
    if platform is not None:
        return PlatformChoice(_checked(platform, available, "argument"), purpose, "the platform argument")
    from_env = os.environ.get(PLATFORM_ENV_VAR, "").strip()
    if from_env:
        return PlatformChoice(_checked(from_env, available, "env"), purpose, f"environment variable {PLATFORM_ENV_VAR}={from_env}")
    gpu = next((name for name in _GPU_PLATFORMS if name in available), None)
    if system is None:
        return PlatformChoice(gpu or "Reference", purpose, "no System given to time on")
    if not isinstance(system, openmm.System):
        hint = " (pass its .system)" if hasattr(system, "system") else ""
        raise TypeError(f"system must be an openmm.System{hint}, got {type(system).__name__}.")
    n_particles = system.getNumParticles()
    if n_particles > REFERENCE_MAX_PARTICLES:
        if gpu:
            return PlatformChoice(gpu, purpose, f"{n_particles} particles > {REFERENCE_MAX_PARTICLES}: {gpu} untimed")
        if "CPU" in available:
            return PlatformChoice("CPU", purpose, f"{n_particles} particles > {REFERENCE_MAX_PARTICLES}: Reference cannot win")
    candidates = tuple(name for name in _CANDIDATES if name in available) + ((gpu,) if gpu else ())
    if len(candidates) == 1:  # e.g. a build whose CPU plugin failed to load
        return PlatformChoice(candidates[0], purpose, f"the only platform available here is {candidates[0]}")
    x = None if positions is None else _checked_positions(positions, n_particles)
    with _lock:
        key = (_digest(system), purpose)
        choice = _cache.get(key)
        if choice is None:
            choice = _cache[key] = _time_candidates(system, purpose, x, candidates)
            _logger.info("%s platform for a %d-particle System: %s", purpose, n_particles, choice.reason)
    return choice


def clear_platform_cache():
    """Forget every timed choice (e.g. after the machine's load changed); the next call times again."""
    with _lock:
        _cache.clear()
        _by_identity.clear()


def _checked(name, available, source):
    if name not in available:
        how = "Pass another platform" if source == "argument" else f"Set {PLATFORM_ENV_VAR} to another platform or unset it"
        raise InvalidInputError(f"OpenMM platform {name!r} is not available here (available: {sorted(available)}). {how}.")
    return name


def _fingerprint(system):
    forces = tuple(type(system.getForce(i)).__name__ for i in range(system.getNumForces()))
    return system.getNumParticles(), system.getNumConstraints(), forces, system.usesPeriodicBoundaryConditions()


def _digest(system):
    """sha256 of the System's XML; the XML is skipped when the same, unchanged-looking object comes back."""
    known = _by_identity.get(id(system))
    fingerprint = _fingerprint(system)
    if known is not None and known[0]() is system and known[1] == fingerprint:
        return known[2]
    try:
        digest = hashlib.sha256(openmm.XmlSerializer.serialize(system).encode()).hexdigest()
    except Exception:  # e.g. a force that cannot be serialized: cache for this object only, never for a successor
        digest = f"object-{next(_unserializable)}"
    try:
        _by_identity[id(system)] = (weakref.ref(system, _forget(id(system))), fingerprint, digest)
    except TypeError:  # not weak-referenceable: always digest
        pass
    return digest


def _forget(key):
    """Weak-reference callback: drop the identity entry when its System is freed (before its id can be reused)."""
    return lambda _: _by_identity.pop(key, None)


def _time_candidates(system, purpose, positions, candidates):
    start = time.perf_counter()
    x = _timing_positions(system, positions)
    blocks, errors = {}, {}
    for name in candidates:
        try:
            blocks[name] = _timer(system, name, purpose, x)
        except Exception as error:  # e.g. a force this platform does not support
            errors[name] = error
    timings = {name: math.inf for name in candidates}
    # Blocks of the candidates alternate, spread over 0.1-0.25 s: a short burst of load elsewhere on
    # the machine cannot make one candidate look slow in all its blocks. The best block counts.
    started = time.perf_counter()
    for round_ in range(_MAX_ROUNDS):
        for name, block in list(blocks.items()):
            try:
                timings[name] = min(timings[name], block())
            except Exception as error:
                errors[name] = error
                timings[name] = math.inf
                del blocks[name]
        elapsed = time.perf_counter() - started
        if round_ + 1 >= _MIN_ROUNDS and (elapsed > _TIMING_SECONDS or (elapsed > _DECISIVE_SECONDS and _decided(timings))):
            break
    blocks.clear()  # releases the Contexts
    cost = time.perf_counter() - start
    best = min(candidates, key=lambda name: timings[name])
    unit = "step" if purpose == "md" else "evaluation"
    measured = ", ".join(f"{name} {timings[name] * 1e3:.3g} ms/{unit}" for name in candidates)
    reason = f"fastest when timed ({measured}; timing took {cost:.2f} s)"
    if errors:
        reason += "; failed: " + "; ".join(f"{name}: {_first_line(error)}" for name, error in errors.items())
    return PlatformChoice(best, purpose, reason, timings, cost)


def _decided(timings):
    """Whether the best blocks so far are at least :data:`_DECISIVE_RATIO` apart (or a candidate failed)."""
    fastest, runner_up = sorted(timings.values())[:2]
    return runner_up >= _DECISIVE_RATIO * fastest


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _checked_positions(positions, n_particles):
    from .units import to_numpy_positions

    return np.ascontiguousarray(to_numpy_positions(positions, n_particles, "positions"), dtype=np.float64)


def _timing_positions(system, positions):
    if positions is not None:
        return positions
    n = system.getNumParticles()
    # A jittered cubic lattice at about liquid density (0.22 nm spacing), or filling the periodic box.
    per_side = max(1, math.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)[:n].astype(float)
    if system.usesPeriodicBoundaryConditions():
        box = np.array([[v[i].value_in_unit(openmm.unit.nanometer) for i in range(3)] for v in system.getDefaultPeriodicBoxVectors()])
        spacing = np.diag(box) / per_side
    else:
        spacing = np.full(3, 0.22)
    jitter = np.random.default_rng(0).uniform(-0.1, 0.1, grid.shape)
    return np.ascontiguousarray((grid + 0.5 + jitter) * spacing, dtype=np.float64)


def _force_step_integrator():
    """An integrator step that recomputes the forces and moves nothing (no constraints, no blow-ups)."""
    integrator = openmm.CustomIntegrator(0.001)
    integrator.addPerDofVariable("f_seen", 0.0)
    integrator.addComputePerDof("x", "x")  # marks the positions changed, so forces are recomputed
    integrator.addComputePerDof("f_seen", "f")
    return integrator


def _timer(system, name, purpose, positions):
    """A Context on platform ``name``, warmed up; returns ``block()``: seconds per MD step or evaluation over one block."""
    from ._openmm_fast import context_energy_and_forces

    integrator = _force_step_integrator() if purpose == "md" else openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(name))
    context.setPositions(positions)
    if purpose == "md":
        def run(n):
            integrator.step(n)
            integrator.getPerDofVariable(0)  # a read-back: GPU steps are queued, not done, when step returns
    else:
        forces = np.zeros_like(positions)

        def run(n):
            for _ in range(n):
                context_energy_and_forces(context, positions, forces)

    run(2)  # warm-up: neighbour lists, compiled expressions, caches
    t0 = time.perf_counter()
    run(1)
    per_block = int(min(1000, max(1, _BLOCK_SECONDS / max(time.perf_counter() - t0, 1e-7))))

    def block():
        t0 = time.perf_counter()
        run(per_block)
        return (time.perf_counter() - t0) / per_block

    block.context = context  # keeps the Context alive as long as the timer
    return block
