"""Seeded openmmtools multistate runs: Langevin MD, energy Contexts and replica swaps from a root seed.

openmmtools' samplers draw from generators no move controls: each Context's integrator, Monte
Carlo barostat and Andersen thermostat (OpenMM picks a random seed when none is set), NumPy's
global generator (replica swaps in Python) and numba's own (the jitted swap-all mixing).
:func:`seeded_sampler_run` derives all of them from ``(root_seed, *run_key, purpose, counter)`` as
:mod:`~openmm_flowplugin.proposals.streams` does for learned moves, so a run repeats for a seed
(where the platform's forces are deterministic) and a resume (another start iteration in
``run_key``) or another MPI rank draws anew.

Examples
--------
>>> from openmmtools import cache, integrators, states
>>> from openmm import unit
>>> from openmm_flowplugin import systems
>>> system = systems.get("harmonic_oscillator").system
>>> seeded = seeded_context_cache(None, root_seed=1, run_key=(0, 0, 0), purpose=INTEGRATORS)
>>> state = states.ThermodynamicState(system, 300 * unit.kelvin)
>>> _, integrator = seeded.get_context(state, integrators.LangevinIntegrator(300 * unit.kelvin))
>>> integrator.getRandomNumberSeed() == seeded_context_cache(None, 1, (0, 0, 0), INTEGRATORS).seed_of(0)
True
"""

__all__ = ["INTEGRATORS", "SWAPS", "ENERGIES", "FORCES", "seeded_context_cache", "seed_replica_swaps", "seeded_sampler_run", "shared_root_seed",
           "with_seeded_random_forces"]

import contextlib
import copy
import functools
import zlib

import numpy as np

from ..proposals.streams import checked_root_seed, numpy_generator

INTEGRATORS, SWAPS, ENERGIES, FORCES = 0, 1, 2, 3  # purposes of a run's streams (FORCES: barostats, thermostats)


def seed_replica_swaps(seed):
    """Seed the generators openmmtools' replica swaps draw from: NumPy's global one, and numba's (its jitted
    swap-all mixing has a generator of its own, seeded only from jitted code)."""
    np.random.seed(seed)
    try:
        seed_numba = _numba_seeder()
    except ImportError:  # no numba: openmmtools mixes in Python, from NumPy's generator
        return
    seed_numba(seed)


@functools.cache
def _numba_seeder():
    from numba import njit

    @njit
    def seed_numba(value):
        np.random.seed(value)

    return seed_numba


def seeded_context_cache(platform, root_seed, run_key, purpose):
    """An openmmtools ContextCache whose k-th new Context gets the integrator seed ``seed_of(k)`` of
    ``(root, *run_key, purpose, k)``, also when the cache makes its default integrator (the energy cache's
    Contexts: on the Reference and CPU platforms every new Context reseeds the generator all custom
    integrators of the process share), and whose i-th random force (Monte Carlo barostat, Andersen
    thermostat) gets ``force_seed_of(k, i)`` of ``(root, *run_key, FORCES, purpose, k, i)``.

    The cache's integrator ids ignore the seed, so setting it on every integrator passed in changes no lookup;
    a state's context id is its standard System's hash, computed before, so the seeded copy a new Context is
    made of changes none either. (``ThermodynamicState.is_context_compatible``, which compares a Context's whole
    System, tells such a Context apart from an unseeded one; openmmtools' samplers do not call it.)
    """
    from openmmtools import cache

    root_seed = checked_root_seed(root_seed)
    created = set()

    @functools.cache
    def seed_of(k):
        return int(numpy_generator(root_seed, *run_key, purpose, k).integers(1, 2**31))

    @functools.cache
    def force_seed_of(k, i):
        return int(numpy_generator(root_seed, *run_key, FORCES, purpose, k, i).integers(1, 2**31))

    def next_seed():  # called on every get_context (each move's apply): derived once per Context count
        return seed_of(len(created))

    class SeededContextCache(cache.ContextCache):
        _cached_default_integrator_id = None  # the class's own (the base class caches it per class)

        @staticmethod
        def _get_default_integrator(temperature):
            integrator = cache.ContextCache._get_default_integrator(temperature)
            integrator.setRandomNumberSeed(next_seed())
            return integrator

        def get_context(self, thermodynamic_state, integrator=None):
            if integrator is not None:
                integrator.setRandomNumberSeed(next_seed())
            k = len(created)
            with _seeded_random_forces(thermodynamic_state, lambda i: force_seed_of(k, i)):
                context, context_integrator = super().get_context(thermodynamic_state, integrator)
            created.add(id(context))  # the cache keeps its Contexts (no capacity): ids are not reused
            return context, context_integrator

    seeded = SeededContextCache(platform=platform)
    seeded.seed_of, seeded.force_seed_of = seed_of, force_seed_of
    return seeded


def with_seeded_random_forces(system, seed, name):
    """``system``, or where ``seed`` is given and it holds Monte Carlo barostats or Andersen thermostats left
    unseeded (seed 0: OpenMM draws a random one), a copy whose i-th such force is seeded from
    ``(seed mod 2**63, crc32(name), i)``: for plain MD whose integrator takes ``seed`` itself (``name`` keeps the
    streams of different runs apart). A seed the user set on a force is kept.

    Examples
    --------
    >>> import openmm
    >>> system = openmm.System()
    >>> _ = system.addForce(openmm.MonteCarloBarostat(1.0, 300.0))
    >>> seeded = with_seeded_random_forces(system, 1, "simulate")
    >>> seeded.getForce(0).getRandomNumberSeed() > 0, system.getForce(0).getRandomNumberSeed()
    (True, 0)
    >>> with_seeded_random_forces(system, None, "simulate") is system
    True
    """
    unseeded = [i for i, force in enumerate(system.getForces())
                if isinstance(force, random_force_types()) and force.getRandomNumberSeed() == 0]
    if seed is None or not unseeded:
        return system
    system = copy.deepcopy(system)
    for k, index in enumerate(unseeded):
        stream = numpy_generator(int(seed) % 2**63, zlib.crc32(name.encode()), k)
        system.getForce(index).setRandomNumberSeed(int(stream.integers(1, 2**31)))
    return system


@functools.cache  # called on every get_context (each move's apply)
def random_force_types():
    """The OpenMM forces that draw random numbers of their own (seeded by ``setRandomNumberSeed``; 0 means random)."""
    import openmm

    names = ("MonteCarloBarostat", "MonteCarloAnisotropicBarostat", "MonteCarloMembraneBarostat", "MonteCarloFlexibleBarostat",
             "AndersenThermostat")
    return tuple(getattr(openmm, name) for name in names if hasattr(openmm, name))


@contextlib.contextmanager
def _seeded_random_forces(thermodynamic_state, seed_of_force):
    """While the block runs, the Systems ``thermodynamic_state.get_system`` returns (the copies openmmtools makes a
    new Context of) have their i-th random force seeded with ``seed_of_force(i)``; the state itself is unchanged."""
    get_system = thermodynamic_state.get_system
    shadowed = vars(thermodynamic_state).get("get_system")  # a get_system the caller set on the instance, if any
    random_forces = random_force_types()

    def seeded_copy(*args, **kwargs):
        system = get_system(*args, **kwargs)
        for i, force in enumerate(f for f in system.getForces() if isinstance(f, random_forces)):
            force.setRandomNumberSeed(seed_of_force(i))
        return system

    thermodynamic_state.get_system = seeded_copy  # an instance attribute shadows the method
    try:
        yield
    finally:
        if shadowed is None:
            del thermodynamic_state.get_system
        else:
            thermodynamic_state.get_system = shadowed


@contextlib.contextmanager
def seeded_sampler_run(sampler, platform, root_seed, run_key):
    """Give ``sampler`` (an openmmtools ``MultiStateSampler``) seeded Context caches on ``platform`` (it keeps them)
    and seed its replica swaps; NumPy's global generator is restored when the block ends (numba's stays seeded).

    ``run_key``: integers that tell runs apart, e.g. (what is run, the start iteration, the MPI rank).
    The sampler's learned moves keep their own streams (their ``seed``).

    Examples
    --------
    >>> import contextlib, io, os, tempfile
    >>> from openmmtools import mcmc, multistate
    >>> from openmm_flowplugin import systems
    >>> ho = systems.get("harmonic_oscillator")
    >>> sampler = multistate.MultiStateSampler(mcmc_moves=mcmc.LangevinDynamicsMove(n_steps=10), number_of_iterations=2)
    >>> reporter = multistate.MultiStateReporter(os.path.join(tempfile.mkdtemp(), "run.nc"))
    >>> with contextlib.redirect_stdout(io.StringIO()):  # openmmtools prints its citations
    ...     sampler.create([ho.thermodynamic_state()], [ho.sampler_state()], reporter)
    ...     with seeded_sampler_run(sampler, None, root_seed=1, run_key=(0, sampler.iteration, 0)):
    ...         sampler.run()
    >>> sampler.iteration
    2
    >>> reporter.close()
    """
    sampler.energy_context_cache = seeded_context_cache(platform, root_seed, run_key, ENERGIES)
    sampler.sampler_context_cache = seeded_context_cache(platform, root_seed, run_key, INTEGRATORS)
    global_numpy = np.random.get_state()
    try:
        seed_replica_swaps(int(numpy_generator(root_seed, *run_key, SWAPS).integers(2**32)))
        yield sampler
    finally:
        np.random.set_state(global_numpy)


def shared_root_seed(seed):
    """``seed`` checked, or a fresh root seed if ``None``: rank 0's under ``mpirun`` (openmmtools' communicator), so
    that every rank derives its streams from the one root that is recorded."""
    import mpiplus

    root = checked_root_seed(seed)
    comm = mpiplus.get_mpicomm()
    return root if comm is None else comm.bcast(root, root=0)
