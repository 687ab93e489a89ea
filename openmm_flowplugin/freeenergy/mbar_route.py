"""The classical route: replica exchange over the λ states of a leg, stored and resumable, then MBAR.

:func:`run_leg` drives openmmtools' ``ReplicaExchangeSampler`` with a ``MultiStateReporter`` (a run
that stops resumes from the last checkpoint, in another process); :func:`analyze_leg` reads the
stored reduced potentials and estimates the leg's free energy with pymbar's MBAR after discarding
the equilibration and subsampling to uncorrelated iterations, with its overlap matrix and the
forward/reverse convergence of the estimate.
"""

__all__ = ["LegEstimate", "run_leg", "analyze_leg"]

import contextlib
import json
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from openmm import unit

from .._quiet import quiet_banners
from ..errors import InvalidInputError, NoOverlapError

_TAG = "openmm_flowplugin_leg"  # key of our record in the storage's metadata
_SEED_TAG = "openmm_flowplugin_root_seed"  # key of the root seed the run was created with (a decimal string)


@dataclass
class LegEstimate:
    """MBAR estimate of one leg: ``delta_f = f(decoupled) - f(coupled)`` in kT, with its standard error.

    Attributes
    ----------
    delta_f, error : float
        Reduced free-energy difference from the first (coupled) to the last (decoupled) state, and its
        standard error (pymbar's asymptotic estimate on uncorrelated samples).
    state_free_energies : list of float
        ``f_k - f_0`` for every state (kT).
    overlap : numpy.ndarray, shape=(n_states, n_states)
        MBAR overlap matrix; a smallest off-diagonal neighbour overlap below 0.03 means the schedule
        needs more states there (:func:`analyze_leg` refuses such a result).
    forward, reverse : list of (float, float, float)
        ``(fraction of the samples, delta_f, error)`` from the first and from the last fractions.
    n_iterations, n_equilibration, statistical_inefficiency, n_uncorrelated : int, int, float, int
        Stored iterations (without the minimized start), iterations discarded as equilibration, the
        statistical inefficiency of the replicas' summed reduced potential (in iterations), and the
        samples MBAR used (uncorrelated iterations times replicas).
    interval_errors : list of float
        MBAR standard error of ``f_{k+1} - f_k`` for each pair of neighbouring states (kT): where the
        schedule's variance comes from (add states, or spread them, where these are largest). Their squares
        need not add up to ``error**2``: the intervals' errors are correlated.
    """

    delta_f: float
    error: float
    state_free_energies: list
    overlap: np.ndarray = field(repr=False)
    forward: list = field(repr=False)
    reverse: list = field(repr=False)
    n_iterations: int = 0
    n_equilibration: int = 0
    statistical_inefficiency: float = 1.0
    n_uncorrelated: int = 0
    interval_errors: list = field(default_factory=list)

    @property
    def min_neighbour_overlap(self):
        """Smallest overlap between neighbouring states (the weakest link of the schedule)."""
        return float(min(self.overlap[k, k + 1] for k in range(len(self.overlap) - 1)))

    def to_dict(self):
        """Plain data (JSON)."""
        return {"delta_f_kT": self.delta_f, "error_kT": self.error, "state_free_energies_kT": self.state_free_energies,
                "overlap": np.asarray(self.overlap).tolist(), "min_neighbour_overlap": self.min_neighbour_overlap,
                "forward": self.forward, "reverse": self.reverse, "n_iterations": self.n_iterations,
                "n_equilibration": self.n_equilibration, "statistical_inefficiency": self.statistical_inefficiency,
                "n_uncorrelated": self.n_uncorrelated, "interval_errors_kT": self.interval_errors}


def _leg_record(leg, md_steps, timestep_fs, collision_rate, equilibration_iterations):
    return {"equilibration_iterations": int(equilibration_iterations), "leg": leg.name, "system": leg.molecular_system.name, "fingerprint": leg.molecular_system.fingerprint,
            "solute_atoms": leg.solute_atoms, "schedule": leg.schedule.to_dict(), "md_steps": int(md_steps),
            "timestep_fs": float(timestep_fs), "collision_rate_per_ps": float(collision_rate),
            "temperature_K": float(leg.molecular_system.temperature.value_in_unit(unit.kelvin)),
            "pressure_atm": None if leg.pressure is None else float(leg.pressure.value_in_unit(unit.atmosphere)),
            **leg.record}


def _stored_record(storage):
    """(our record of the leg or None, iterations stored, the root seed the run was created with or None)."""
    from openmmtools.multistate import MultiStateReporter

    reporter = MultiStateReporter(str(storage), open_mode="r")
    try:
        metadata = reporter.read_dict("metadata")
        done = reporter.read_last_iteration(last_checkpoint=True)
    finally:
        reporter.close()
    record, seed = metadata.get(_TAG), metadata.get(_SEED_TAG)
    return (json.loads(record) if isinstance(record, str) else None), done, (int(seed) if isinstance(seed, str) else None)


def resolved_root_seed(seed, storage):
    """The root seed a run on ``storage`` uses: ``seed``; with ``None``, the one stored with the run ``storage``
    holds, or a fresh one (rank 0's under ``mpirun``) for new storage or storage written before roots were stored."""
    from ..mcmc.seeded_runs import shared_root_seed

    stored = None
    if seed is None:
        comm = _mpi_comm()
        if comm is None or comm.rank == 0:
            with contextlib.suppress(Exception):  # unreadable storage: run_leg says why
                stored = _stored_record(storage)[2] if Path(storage).exists() else None
        if comm is not None:
            stored = comm.bcast(stored, root=0)
    return stored if stored is not None else shared_root_seed(seed)  # every rank takes the same branch


def run_leg(leg, storage, n_iterations, md_steps=500, timestep=2.0, collision_rate=1.0, checkpoint_interval=10,
            equilibration_iterations=20, platform=None, progress=None, seed=None):
    """Replica exchange over the states of ``leg`` for ``n_iterations`` in total, stored in ``storage``.

    An existing ``storage`` for the same leg (same system, solute, schedule and MD settings) is resumed
    from its last checkpoint; storage of anything else is refused, never overwritten.

    Parameters
    ----------
    leg : AlchemicalLeg
    storage : str or Path
        NetCDF file (``.nc``); positions go to the ``_checkpoint.nc`` file beside it.
    n_iterations : int
        Total iterations (a multiple of ``checkpoint_interval``).
    md_steps : int
        Langevin steps (openmmtools ``LangevinDynamicsMove``, BAOAB) per iteration and replica.
    timestep : float or Quantity
        fs if a bare number (the System's constraints must allow it).
    collision_rate : float or Quantity
        1/ps if a bare number.
    checkpoint_interval : int
        Iterations between stored positions: what an interruption can lose at most.
    equilibration_iterations : int
        Iterations without exchanges or storage after the minimization of a new run (e.g. to melt a
        lattice start); the analysis discards a further equilibration it detects.
    platform : str, optional
        OpenMM platform (default: chosen by timing, :func:`~openmm_flowplugin.platforms.select_platform`).
    progress : bool, optional
        tqdm bar with ETA on stderr (default: when stderr is a terminal).
    seed : int, optional
        Root seed of the run's randomness (default: the one stored with the run being resumed, else a fresh
        one, stored with the new run): the seeds of the Langevin integrators and Monte Carlo barostats and
        openmmtools' replica swaps (which draw from NumPy's global generator, seeded
        for the run and restored after, or numba's) derive from it, the leg's name, the iteration the run
        starts at and the MPI rank (:mod:`~openmm_flowplugin.mcmc.seeded_runs`), so a resume continues with
        new draws and legs and ranks never share them. The same seed and storage repeat a run, resumes
        included, where the platform's forces are deterministic (Reference, CPU with one thread); with
        several CPU threads or on a GPU, force sums differ in the last bits and the chains part from there.

    Returns
    -------
    int
        Iterations stored.
    """
    with quiet_banners():
        from openmmtools import mcmc, multistate

    from ..mcmc.seeded_runs import seeded_sampler_run
    from ..platforms import select_platform
    from ..units import in_unit

    storage = Path(storage)
    if storage.suffix != ".nc":
        raise InvalidInputError(f"storage {storage} must end in .nc (openmmtools NetCDF storage).")
    root_seed = resolved_root_seed(seed, storage)
    timestep_fs = float(in_unit(timestep, unit.femtosecond, "timestep"))
    rate = float(in_unit(collision_rate, unit.picosecond**-1, "collision_rate"))
    if n_iterations % checkpoint_interval:
        raise InvalidInputError(f"n_iterations {n_iterations} is not a multiple of checkpoint_interval {checkpoint_interval}: "
                                "a resume would repeat iterations; change one of them.")
    record = _leg_record(leg, md_steps, timestep_fs, rate, equilibration_iterations)
    comm = _mpi_comm()
    exists = storage.exists() if comm is None else comm.bcast(storage.exists() if comm.rank == 0 else None, root=0)
    with quiet_banners(), contextlib.redirect_stdout(sys.stderr):  # openmmtools prints citations
        if exists:  # rank 0's answer, read before it creates anything (a rank asking later would see its new file)
            stored, done, _ = _stored_record(storage)
            if stored != record:
                what = "not written by openmm_flowplugin" if stored is None else f"for {stored['system']!r} ({stored['leg']} leg)"
                differs = [] if stored is None else [key for key in record if stored.get(key) != record[key]]
                raise InvalidInputError(f"{storage} holds another run ({what}; differs in {', '.join(differs) or 'everything'}); "
                                        "give another storage path, or delete it to start again.")
            if done >= n_iterations:
                return done
            sampler = multistate.ReplicaExchangeSampler.from_storage(multistate.MultiStateReporter(str(storage)))
            sampler.number_of_iterations = n_iterations
            if leg.pressure is None:
                _restore_fixed_box(sampler, leg.alchemical_system)
        else:
            storage.parent.mkdir(parents=True, exist_ok=True)
            move = mcmc.LangevinDynamicsMove(timestep=timestep_fs * unit.femtosecond, collision_rate=rate / unit.picosecond,
                                             n_steps=int(md_steps), reassign_velocities=False)
            sampler = multistate.ReplicaExchangeSampler(mcmc_moves=move, number_of_iterations=n_iterations,
                                                        online_analysis_interval=None)
            reporter = multistate.MultiStateReporter(str(storage), checkpoint_interval=checkpoint_interval)
            sampler_states = [leg.sampler_state() for _ in leg.thermodynamic_states]
            sampler.create(leg.thermodynamic_states, sampler_states, reporter,
                           metadata={_TAG: json.dumps(record), _SEED_TAG: str(root_seed)})
        chosen = select_platform(leg.alchemical_system, platform)
        # streams: (leg, start iteration, rank): legs, resumes and MPI ranks never share draws
        key = (zlib.crc32(leg.name.encode()), int(sampler.iteration), 0 if comm is None else comm.rank)
        try:
            with seeded_sampler_run(sampler, chosen, root_seed, key):
                if sampler.iteration == 0:
                    sampler.minimize()
                    if equilibration_iterations:
                        sampler.equilibrate(int(equilibration_iterations))
                _run_with_progress(sampler, n_iterations, f"{leg.name} leg", on_root_rank(progress, comm))
            return sampler.iteration
        finally:
            sampler._reporter.close()
            if comm is not None:
                comm.barrier()  # the storage is closed (by rank 0, its only writer) before any rank reads it


def _restore_fixed_box(sampler, system):
    """Give resumed constant-volume replicas the System's box in full precision.

    The storage keeps box vectors in float32: a box of exactly twice the cutoff (the neural-TI paper's
    LJ solute: 9 sigma with a 4.5 sigma cutoff) can round below it, and OpenMM then refuses the box and
    the first step gives NaN. At constant volume the box never changes, so the System's is the exact one.
    (openmmtools' ``sampler_states`` setter is refused after iteration 0: the states are set in place.)
    """
    box = system.getDefaultPeriodicBoxVectors()
    for sampler_state in sampler._sampler_states:
        if sampler_state.box_vectors is not None:
            sampler_state.box_vectors = box


def _mpi_comm():
    """openmmtools' MPI communicator under ``mpirun`` (None in a single process)."""
    import mpiplus

    return mpiplus.get_mpicomm()


def on_root_rank(progress, comm=None):
    """``progress`` on MPI rank 0 (or without MPI), off on the other ranks: one bar per run."""
    comm = _mpi_comm() if comm is None else comm
    return progress if comm is None or comm.rank == 0 else False


def _run_with_progress(sampler, n_iterations, label, progress):
    from tqdm import tqdm

    from .._threads import package_threads

    with tqdm(total=n_iterations, initial=sampler.iteration, unit="it", desc=label, file=sys.stderr,
              disable=None if progress is None else not progress) as bar, package_threads():
        while sampler.iteration < n_iterations:
            sampler.run(1)
            bar.update(1)


def _decorrelated_samples(energies, states):
    """Uncorrelated iterations after equilibration: (u_kn, N_k, iterations used, t0, g)."""
    from pymbar import timeseries

    n_iterations, n_replicas, n_states = energies.shape
    per_iteration = energies[np.arange(n_iterations)[:, None], np.arange(n_replicas)[None, :], states].sum(axis=1)
    t0, g, _ = timeseries.detect_equilibration(per_iteration)
    indices = np.asarray(timeseries.subsample_correlated_data(per_iteration[t0:], g=g)) + t0
    return indices, int(t0), float(g)


def _mbar(energies, states, iterations, storage):
    from pymbar import MBAR
    from pymbar.utils import ParameterError

    n_states = energies.shape[2]
    u_kn = energies[iterations].reshape(-1, n_states).T  # (states, samples): every replica of every iteration
    sampled = states[iterations].reshape(-1)
    order = np.argsort(sampled, kind="stable")
    N_k = np.bincount(sampled, minlength=n_states)
    try:
        mbar = MBAR(u_kn[:, order], N_k)
        result = mbar.compute_free_energy_differences()
    except ParameterError as error:  # pymbar's "weights not normalized": no consistent solution
        reason = " ".join(str(error).split())  # pymbar's message spans lines; a user error is one line
        raise NoOverlapError(f"{storage}: MBAR found no consistent free energies over its {n_states} states (pymbar: {reason}), "
                             f"which means neighbouring states do not overlap; {_OVERLAP_FIX}") from error
    return mbar, result["Delta_f"], result["dDelta_f"]


#: Below this neighbour overlap (Klimovich, Shirts & Mobley's rule of thumb) a result is refused.
MIN_NEIGHBOUR_OVERLAP = 0.03
_OVERLAP_FIX = "add states between the weakest pair (a denser schedule, more nodes of t) or sample longer."


def _check_overlap(storage, overlap, delta_f, error):
    """Raise :class:`NoOverlapError` unless every neighbouring pair overlaps and the estimate is finite."""
    neighbours = [float(overlap[k, k + 1]) for k in range(len(overlap) - 1)]
    weakest = int(np.argmin(neighbours)) if neighbours else 0
    if neighbours and (neighbours[weakest] < MIN_NEIGHBOUR_OVERLAP or not (math.isfinite(delta_f) and math.isfinite(error))):
        raise NoOverlapError(f"{storage}: states {weakest} and {weakest + 1} overlap {neighbours[weakest]:.3g} (below "
                             f"{MIN_NEIGHBOUR_OVERLAP}; estimate {delta_f:.3g} +- {error:.3g} kT), so MBAR's result cannot be "
                             f"trusted; {_OVERLAP_FIX}", weakest_pair=(weakest, weakest + 1))


def analyze_leg(storage, fractions=(0.2, 0.4, 0.6, 0.8, 1.0)):
    """MBAR estimate of the leg stored in ``storage`` (see :class:`LegEstimate`).

    Iteration 0 (the minimized start) is dropped, then the equilibration found by pymbar's
    ``detect_equilibration`` on the summed reduced potential of the replicas; the rest is subsampled
    by its statistical inefficiency. ``fractions`` set the forward/reverse convergence points.

    Raises :class:`~openmm_flowplugin.errors.NoOverlapError` when MBAR finds no consistent solution, the
    estimate is not finite, or two neighbouring states overlap less than :data:`MIN_NEIGHBOUR_OVERLAP`
    (0.03): such a result is refused, not reported.
    """
    storage = Path(storage)
    if not storage.is_file():
        raise FileNotFoundError(f"{storage} not found: run the leg first.")
    energies, states = _stored_energies(storage)
    if len(energies) < 10:
        raise InvalidInputError(f"{storage} holds {len(energies)} iterations; MBAR needs at least 10 (run the leg longer).")
    iterations, t0, g = _decorrelated_samples(energies, states)
    mbar, delta_f, d_delta_f = _mbar(energies, states, iterations, storage)
    overlap = np.asarray(mbar.compute_overlap()["matrix"])
    _check_overlap(storage, overlap, float(delta_f[0, -1]), float(d_delta_f[0, -1]))
    forward, reverse = [], []
    for fraction in fractions:
        n = max(2, int(round(fraction * len(iterations))))
        for target, chosen in ((forward, iterations[:n]), (reverse, iterations[-n:])):
            try:
                _, f, df = _mbar(energies, states, chosen, storage)
                target.append((float(fraction), float(f[0, -1]), float(df[0, -1])))
            except NoOverlapError:  # too few samples in a fraction: a gap in the convergence check, not a refusal
                target.append((float(fraction), math.nan, math.nan))
    return LegEstimate(delta_f=float(delta_f[0, -1]), error=float(d_delta_f[0, -1]),
                       state_free_energies=[float(v) for v in delta_f[0]], overlap=overlap, forward=forward, reverse=reverse,
                       n_iterations=int(len(energies)), n_equilibration=t0, statistical_inefficiency=g,
                       n_uncorrelated=int(len(iterations) * energies.shape[1]),
                       interval_errors=[float(d_delta_f[k, k + 1]) for k in range(len(d_delta_f) - 1)])


def _stored_energies(storage):
    """Reduced potentials ``[iteration, replica, state]`` and sampled states ``[iteration, replica]`` of a leg's storage,
    without iteration 0 (the minimized start)."""
    with quiet_banners():
        from openmmtools.multistate import MultiStateReporter

        reporter = MultiStateReporter(str(storage), open_mode="r")
        try:
            last = reporter.read_last_iteration(last_checkpoint=False)
            energies, _, _ = reporter.read_energies()
            states = np.asarray(reporter.read_replica_thermodynamic_states())
        finally:
            reporter.close()
    return np.asarray(energies, dtype=np.float64)[1 : last + 1], states[1 : last + 1]


def kT_in(temperature, target=unit.kilocalorie_per_mole):
    """kT at ``temperature`` (K or Quantity) in ``target`` units."""
    from ..units import kelvin

    return float((unit.MOLAR_GAS_CONSTANT_R * kelvin(temperature) * unit.kelvin).value_in_unit(target))


