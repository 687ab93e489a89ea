"""``openmm-flowplugin sample``: FlowMCMove in an openmmtools sampler, stored in NetCDF, resumable."""

import contextlib
import json
import logging
import math
import sys
from pathlib import Path

import click

from ._common import FINITE_POSITIVE, POSITIVE_INT, _user_errors, load_system, system_options
from ..errors import InvalidInputError

_TAG = "openmm_flowplugin_sample"  # metadata key: the run's settings, as JSON
_SAMPLERS = ("MultiStateSampler", "ReplicaExchangeSampler")  # the only classes --resume instantiates


def _temperatures(temperature, temperatures, t_min, t_max, replicas):
    """Kelvin values from the temperature options, or None (the system's temperature)."""
    ladder = (t_min, t_max, replicas)
    given = [name for name, value in (("--temperature", temperature), ("--temperatures", temperatures),
                                      ("--min-temperature/--max-temperature/--replicas", any(v is not None for v in ladder)))
             if value]
    if len(given) > 1:
        raise InvalidInputError(f"give only one of {' or '.join(given)}.")
    if temperature is not None:
        return [float(temperature)]
    if temperatures is not None:
        try:
            values = [float(t) for t in temperatures.split(",")]
        except ValueError:
            raise InvalidInputError(f"--temperatures {temperatures!r}: give comma-separated kelvin values, e.g. 300,350,400.") from None
        if not all(t > 0 and math.isfinite(t) for t in values):
            raise InvalidInputError(f"--temperatures {temperatures!r}: every temperature must be a positive number of kelvin.")
        if len(set(values)) != len(values):
            raise InvalidInputError(f"--temperatures {temperatures!r} repeats a temperature; give distinct values.")
        return values
    if any(v is not None for v in ladder):
        if None in ladder:
            raise InvalidInputError("a geometric ladder needs all of --min-temperature, --max-temperature and --replicas.")
        if not t_max > t_min:
            raise InvalidInputError(f"--max-temperature {t_max} must be above --min-temperature {t_min}.")
        return [t_min * (t_max / t_min) ** (i / (replicas - 1)) for i in range(replicas)]
    return None


def _flow_moves(sampler):
    """The FlowMCMove of each state (the last move of a SequenceMove)."""
    return [m.move_list[-1] if hasattr(m, "move_list") else m for m in sampler._mcmc_moves]


def _state0_energy(sampler):
    """Reduced potential of the replica now in state 0."""
    replica = int(list(sampler._replica_thermodynamic_states).index(0))
    return float(sampler._energy_thermodynamic_states[replica, 0])


def _mpi_comm():
    """openmmtools' MPI communicator under ``mpirun`` (None in a single process); only rank 0 holds the storage open."""
    import mpiplus

    return mpiplus.get_mpicomm()


def _is_rank0():
    comm = _mpi_comm()
    return comm is None or comm.rank == 0


def _on_rank0(function, *args):
    """Run ``function(*args)`` on rank 0 only, while the other ranks wait (under ``mpirun``).

    For checks and removals of existing output: every rank checking or deleting files that rank 0 is about
    to create races it. An error is raised on rank 0 alone (``_user_errors`` reports it once and aborts the
    job); the other ranks wait for that abort instead of reporting it again.
    """
    comm = _mpi_comm()
    if comm is None:
        return function(*args)
    error = None
    if comm.rank == 0:
        try:
            function(*args)
        except Exception as raised:  # reported by rank 0 below, after the others know
            error = raised
    if comm.bcast(error is not None, root=0):
        if comm.rank == 0:
            raise error
        comm.barrier()  # rank 0 never joins: it aborts the job
    return None


def _stored_state0_energies(reporter, n_iterations):
    """Reduced potentials in state 0 at stored iterations 1..n_iterations."""
    if n_iterations < 1:
        return []
    energies = reporter.read_energies(iteration=slice(1, n_iterations + 1))[0]
    states = reporter.read_replica_thermodynamic_states(iteration=slice(1, n_iterations + 1))
    return [float(e[list(s).index(0), 0]) for e, s in zip(energies, states)]


def _ess(u):
    """n / g of the series ``u`` (pymbar), NaN while it is too short or constant."""
    from pymbar import timeseries
    from pymbar.utils import ParameterError

    if len(u) < 3:
        return math.nan
    try:
        return len(u) / timeseries.statistical_inefficiency(u, fast=len(u) > 5000)
    except ParameterError:  # constant series: no variance to estimate g from
        return math.nan


@contextlib.contextmanager
def _quiet_openmmtools():
    """Silence openmmtools' "experimental API" warnings and pymbar's banner (log records below ERROR)."""
    loggers = [logging.getLogger(name) for name in ("openmmtools", "pymbar")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_resume(output, settings, given, molecular_system, flow_path):
    """Refuse options that contradict the run stored in ``output``; return its stored settings."""
    from openmmtools.multistate import MultiStateReporter

    from ..flows.checkpoints import file_sha256, resolve_flow_path

    reporter = MultiStateReporter(str(output), open_mode="r")
    try:
        stored = reporter.read_dict("metadata").get(_TAG)
    finally:
        reporter.close()
    stored = json.loads(stored) if isinstance(stored, str) else None
    if not isinstance(stored, dict) or stored.get("sampler") not in _SAMPLERS:
        raise InvalidInputError(f"{output} was not written by `openmm-flowplugin sample`; resume it with openmmtools directly.")
    if molecular_system is not None and molecular_system.fingerprint != stored.get("fingerprint"):
        raise InvalidInputError(f"--resume continues the run in {output}, made for {stored.get('system', 'another system')!r}, "
                         f"not {molecular_system.name!r}; drop the system options or start a new run with another --output.")
    if flow_path is not None:
        given["flow_sha256"] = file_sha256(resolve_flow_path(flow_path))
    for key, value in given.items():
        if value is None:
            continue
        same = (value == stored[key] if not isinstance(value, list)
                else len(value) == len(stored[key]) and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(value, stored[key])))
        if not same:
            raise InvalidInputError(f"--resume continues the run in {output}, whose {settings[key]} is {stored[key]}, not {value}; "
                             "drop that option or start a new run with another --output.")
    return stored


_HELP = """Sample SYSTEM with an exact flow Monte Carlo move (FlowMCMove) in an openmmtools sampler.

Each iteration applies Langevin MD (--md-steps) then --proposals Metropolis-Hastings flow steps, in every
state. One temperature runs a MultiStateSampler with one state; several (--temperatures, or a geometric
ladder with --min-temperature/--max-temperature/--replicas) run replica exchange. Everything is stored in
OUTPUT (.nc) and OUTPUT_checkpoint.nc (positions, energies, move statistics) for openmmtools' analysis.

--resume continues OUTPUT to --iterations in total; the system, flow and settings come from the file
(options you repeat must agree). Resume only storage you trust: openmmtools' storage deserializes the
classes it names.
"""


@click.command(help=_HELP)
@system_options
@click.option("--flow", "flow_path", default=None, help="Flow checkpoint (.pt), or a system name that ships one (with --resume: from the storage).")
@click.option("--iterations", required=True, type=POSITIVE_INT, help="Total sampler iterations.")
@click.option("--md-steps", default=None, type=click.IntRange(min=0), help="Langevin steps per iteration (default 100; 0: flow moves only).")
@click.option("--proposals", default=None, type=POSITIVE_INT, help="Flow proposals per iteration and state (default 10).")
@click.option("--timestep", default=None, type=FINITE_POSITIVE, help="Langevin time step in fs (default 1).")
@click.option("--friction", default=None, type=FINITE_POSITIVE, help="Langevin collision rate in 1/ps (default 1).")
@click.option("--temperature", default=None, type=FINITE_POSITIVE, help="Kelvin (default: the system's).")
@click.option("--temperatures", default=None, help="Replica exchange over these kelvin values, e.g. 300,350,400.")
@click.option("--min-temperature", default=None, type=FINITE_POSITIVE, help="Lowest temperature of a geometric ladder (K).")
@click.option("--max-temperature", default=None, type=FINITE_POSITIVE, help="Highest temperature of a geometric ladder (K).")
@click.option("--replicas", default=None, type=click.IntRange(min=2), help="Temperatures in the geometric ladder.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="NetCDF storage to write (.nc).")
@click.option("--checkpoint-interval", default=1, show_default=True, type=POSITIVE_INT,
              help="Iterations between stored positions (--iterations must be a multiple).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Root seed of the run: flow proposals, acceptance, velocities, Langevin MD, replica swaps (default: a fresh one; stored: a resume continues the flow move's streams and seeds MD and swaps anew).")
@click.option("--platform", default=None, help="OpenMM platform (default: automatic, the faster of Reference and CPU timed on the system; see docs/performance.md).")
@click.option("--resume", is_flag=True, help="Continue the run stored in --output (only storage you trust).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output and its _checkpoint file.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when stderr is a terminal].")
@_user_errors
def sample(molecular_system_options, flow_path, iterations, md_steps, proposals, timestep, friction, temperature, temperatures,
           min_temperature, max_temperature, replicas, output, checkpoint_interval, seed, platform, resume, overwrite, progress):
    from ..outputs import check_output_path
    from ..units import kelvin

    kelvins = _temperatures(temperature, temperatures, min_temperature, max_temperature, replicas)
    output = Path(output)
    if output.suffix != ".nc":
        raise InvalidInputError(f"--output {output} must end in .nc (openmmtools NetCDF storage).")
    checkpoint_file = output.with_name(output.stem + "_checkpoint.nc")
    if resume and overwrite:
        raise InvalidInputError("--resume continues --output and --overwrite replaces it; give one.")
    if iterations % checkpoint_interval:
        raise InvalidInputError(f"--iterations {iterations} is not a multiple of --checkpoint-interval {checkpoint_interval}: the run would "
                         "end between stored positions and --resume would repeat iterations; change one of them.")
    settings = {"temperatures": "temperatures (K)", "md_steps": "--md-steps", "proposals": "--proposals", "timestep_fs": "--timestep (fs)",
                "friction_per_ps": "--friction (1/ps)", "flow_sha256": "flow (sha256)"}
    given = {"temperatures": kelvins, "md_steps": md_steps, "proposals": proposals, "timestep_fs": timestep, "friction_per_ps": friction}
    system_given = any(molecular_system_options.values())
    molecular_system = load_system(molecular_system_options) if system_given or not resume else None
    if resume:
        for path in (output, checkpoint_file):
            if not path.is_file():
                raise FileNotFoundError(f"cannot resume: {path} not found (run without --resume to start a new run).")
        with _quiet_openmmtools():
            stored = _check_resume(output, settings, given, molecular_system, flow_path)
        run_settings = None
    else:
        _on_rank0(lambda: [check_output_path(path, overwrite) for path in (output, checkpoint_file)])
        if flow_path is None:
            raise InvalidInputError("--flow is required: a flow checkpoint (.pt) or a system name that ships one, e.g. alanine_dipeptide_vacuum.")
        defaults = {"temperatures": [kelvin(molecular_system.temperature)],
                    "md_steps": 100, "proposals": 10, "timestep_fs": 1.0, "friction_per_ps": 1.0}
        run_settings = {key: defaults[key] if value is None else value for key, value in given.items()}
        stored = dict(run_settings, sampler="ReplicaExchangeSampler" if len(run_settings["temperatures"]) > 1 else "MultiStateSampler")
    with _quiet_openmmtools():
        with contextlib.redirect_stdout(sys.stderr):  # openmmtools prints its citations: keep stdout for results
            sampler = _new_sampler(molecular_system, flow_path, run_settings, stored, output, checkpoint_file, iterations,
                                   checkpoint_interval, seed, overwrite) if not resume else _resumed_sampler(stored, output, iterations)
        try:
            with _seeded(sampler, platform):
                if not resume:
                    sampler.minimize()
                _run(sampler, iterations, progress)
        finally:
            sampler._reporter.close()
    _summary(sampler, stored, output)


def _new_sampler(molecular_system, flow_path, run, stored, output, checkpoint_file, iterations, checkpoint_interval, seed, overwrite):
    from openmm import unit
    from openmmtools import mcmc, multistate

    from ..flows.checkpoints import load_flow
    from ..mcmc import FlowMCMove
    from ..mcmc.seeded_runs import shared_root_seed

    flow = load_flow(flow_path, system=molecular_system)
    stored.update(system=molecular_system.name, fingerprint=molecular_system.fingerprint, flow_sha256=flow.checkpoint_sha256)
    move = FlowMCMove(flow, n_proposals=run["proposals"], seed=shared_root_seed(seed), topology=molecular_system.topology)
    if run["md_steps"]:
        langevin = mcmc.LangevinDynamicsMove(timestep=run["timestep_fs"] * unit.femtosecond, n_steps=run["md_steps"],
                                             collision_rate=run["friction_per_ps"] / unit.picosecond)
        move = mcmc.SequenceMove([langevin, move])
    cls = getattr(multistate, stored["sampler"])
    sampler = cls(mcmc_moves=move, number_of_iterations=iterations, online_analysis_interval=None)
    states = [molecular_system.thermodynamic_state(temperature=t * unit.kelvin) for t in run["temperatures"]]
    if overwrite:  # rank 0 alone removes the old run (it alone writes the storage); the others wait for it
        _on_rank0(lambda: [path.unlink(missing_ok=True) for path in (output, checkpoint_file)])
    output.parent.mkdir(parents=True, exist_ok=True)
    reporter = multistate.MultiStateReporter(str(output), checkpoint_interval=checkpoint_interval)
    sampler.create(states, [molecular_system.sampler_state() for _ in states], reporter, metadata={_TAG: json.dumps(stored)})
    return sampler


def _resumed_sampler(stored, output, iterations):
    from openmmtools import multistate

    reporter = multistate.MultiStateReporter(str(output), open_mode="r")
    done, interval = reporter.read_last_iteration(last_checkpoint=True), reporter.checkpoint_interval
    reporter.close()
    if done >= iterations:
        raise InvalidInputError(f"{output} already holds {done} iterations; pass --iterations above {done} to extend it.")
    if iterations % interval:
        raise InvalidInputError(f"--iterations {iterations} is not a multiple of the stored checkpoint interval {interval}; "
                         f"pass e.g. --iterations {(iterations // interval + 1) * interval}.")
    # from_storage opens the file for appending on rank 0 only (under MPI every rank opening it to write fails)
    sampler = getattr(multistate, stored["sampler"]).from_storage(multistate.MultiStateReporter(str(output)))
    sampler.number_of_iterations = iterations  # a stored option: assigning it updates the file
    return sampler


def _seeded(sampler, platform_name):
    """The run's Context caches on the chosen platform, their Langevin integrators and the replica swaps seeded
    from the flow move's root seed (stored, so a resume keeps it), the start iteration and the MPI rank."""
    import zlib

    from ..mcmc.seeded_runs import seeded_sampler_run
    from ..platforms import select_platform

    platform = select_platform(sampler._thermodynamic_states[0].system, platform_name)
    comm = _mpi_comm()
    key = (zlib.crc32(b"sample"), int(sampler.iteration), 0 if comm is None else comm.rank)
    return seeded_sampler_run(sampler, platform, _flow_moves(sampler)[0].seed, key)


def _run(sampler, iterations, progress):
    from tqdm import tqdm

    from .._threads import package_threads

    comm = _mpi_comm()
    energies = _stored_state0_energies(sampler._reporter, sampler.iteration) if comm is None or comm.rank == 0 else []
    every = max(1, iterations // 100)
    disable = (None if progress is None else not progress) if comm is None or comm.rank == 0 else True  # one bar, rank 0's
    with tqdm(total=iterations, initial=sampler.iteration, unit="it", file=sys.stderr, disable=disable) as bar, package_threads():
        while sampler.iteration < iterations:
            sampler.run(1)
            energies.append(_state0_energy(sampler))
            if sampler.iteration % every == 0 or sampler.iteration == iterations:
                moves = _flow_moves(sampler)
                accepted, proposed = sum(m.n_accepted for m in moves), sum(m.n_proposed for m in moves)
                bar.set_postfix_str(f"flow acceptance {accepted}/{proposed}, ESS(state 0) {_ess(energies):.1f}", refresh=False)
            bar.update(1)


def _summary(sampler, stored, output):
    if not _is_rank0():  # every rank holds the same statistics (openmmtools gathers them): print them once
        return
    for k, (move, kelvin) in enumerate(zip(_flow_moves(sampler), stored["temperatures"])):
        click.echo(f"state {k} ({kelvin:.1f} K): flow acceptance {move.fraction_accepted:.3f} "
                   f"({move.n_accepted} of n_proposed={move.n_proposed}, {move.n_invalid} invalid)")
    click.echo(f"{sampler.iteration} iterations stored in {output} (positions in {output.stem}_checkpoint.nc); "
               f"read with openmmtools.multistate.MultiStateReporter. Root seed {_flow_moves(sampler)[0].seed} (stored).")
