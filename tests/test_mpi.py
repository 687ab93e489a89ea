"""Replica exchange with FlowMCMove across MPI ranks (``mpirun -n 2``), through openmmtools' own MPI support.

Needs the ``mpi`` extra (mpi4py and an MPI with ``mpirun``, e.g. the ``mpich`` wheel); skipped otherwise.
Each run is a subprocess, ``[mpirun -n 2] python tests/mpi_scripts/replica_exchange.py ...``, with one
OpenMM and one torch thread per rank. The harmonic runs have no MD, so a run is a deterministic function
of its seeds: the trajectory stored by 2 ranks must be the single-process one, bit for bit.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent / "mpi_scripts" / "replica_exchange.py"
BIN = Path(sys.executable).parent
KELVINS = np.array([300.0, 400.0, 533.0])  # tests/mpi_scripts/replica_exchange.py: HARMONIC_TEMPERATURES
SPRING = 1000.0  # kJ/mol/nm^2, the harmonic_oscillator system's default
ITERATIONS, KILLED_AFTER, PROPOSALS = 160, 80, 5


def _mpirun():
    for candidate in (BIN / "mpirun", BIN / "mpiexec", shutil.which("mpirun"), shutil.which("mpiexec")):
        if candidate is not None and Path(candidate).is_file():
            return str(candidate)
    return None


def _skip_reason():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "needs mpi4py: pip install 'openmm_flowplugin[mpi]' (mpi4py with the mpich wheel)"
    if _mpirun() is None:
        return "needs mpirun/mpiexec on PATH or next to the Python executable (pip install mpich)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _run(args, ranks, cwd, timeout=120, check=True, script=SCRIPT):
    """Run ``script`` (or, with ``args[0] == "cli"``, the CLI) on ``ranks`` ranks; return the completed process."""
    command = [str(BIN / "openmm-flowplugin"), *args[1:]] if args[0] == "cli" else [sys.executable, str(script), *args]
    if ranks > 1:
        command = [_mpirun(), "-n", str(ranks), *command]
    env = dict(os.environ, OPENMM_CPU_THREADS="1", OPENMM_FLOWPLUGIN_TORCH_THREADS="1", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # mpirun and its ranks: one process group
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command)} ran over {timeout} s:\n{output[-3000:]}")
    if check and process.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {process.returncode}:\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output)


def _trajectory(storage):
    """Stored positions (n_iterations + 1, n_states, 3) nm, by thermodynamic state, and the last iteration."""
    from openmmtools.multistate import MultiStateReporter

    reporter = MultiStateReporter(str(storage), open_mode="r")
    try:
        last = reporter.read_last_iteration()
        frames = []
        for iteration in range(last + 1):
            sampler_states = reporter.read_sampler_states(iteration)
            frame = np.zeros((len(KELVINS), 3))
            for replica, state in enumerate(reporter.read_replica_thermodynamic_states(iteration)):
                frame[state] = sampler_states[replica].positions._value[0]
            frames.append(frame)
        statistics = [m.statistics for m in reporter.read_mcmc_moves()]
    finally:
        reporter.close()
    return np.array(frames), last, statistics


def _draws(record, tags):
    rows = []
    for path in sorted(Path(record).glob("draws_*.json")):
        tag, rank = path.stem.split("_")[1], int(path.stem.rsplit("rank", 1)[1])
        if tag in tags:
            rows += [(tuple(stream), index, tuple(x), rank) for stream, index, x in json.loads(path.read_text())]
    return rows


@pytest.fixture(scope="module")
def harmonic(tmp_path_factory):
    """One uninterrupted single-process run; a 2-rank run killed mid-way, resumed on 2 ranks and (a copy) on 1."""
    work = tmp_path_factory.mktemp("mpi")
    common = ["--proposals", str(PROPOSALS), "--record", "record"]
    _run(["--storage", "one.nc", "--iterations", str(ITERATIONS), "--tag", "one", "--summary", "one.json", *common], 1, work)
    killed = _run(["--storage", "two.nc", "--iterations", str(ITERATIONS), "--die-after", str(KILLED_AFTER), "--tag", "killed",
                   *common], 2, work, check=False)
    for suffix in (".nc", "_checkpoint.nc"):
        shutil.copy(work / f"two{suffix}", work / f"copy{suffix}")
    _run(["--storage", "two.nc", "--iterations", str(ITERATIONS), "--resume", "--tag", "two", "--summary", "two.json", *common], 2, work)
    _run(["--storage", "copy.nc", "--iterations", str(ITERATIONS), "--resume", "--tag", "copy", "--summary", "copy.json", *common], 1, work)
    return work, killed


def test_killed_run_resumes_on_two_ranks_and_on_one(harmonic):
    work, killed = harmonic
    assert killed.returncode != 0  # rank 0 was SIGKILLed in the middle of iteration KILLED_AFTER + 1
    two, copy = (json.loads((work / f"{name}.json").read_text()) for name in ("two", "copy"))
    assert (two["ranks"], copy["ranks"]) == (2, 1)
    assert two["start_iteration"] == copy["start_iteration"] == KILLED_AFTER  # continues the stored iteration count
    assert two["iterations"] == copy["iterations"] == ITERATIONS
    x_one, x_two, x_copy = (_trajectory(work / f"{name}.nc")[0] for name in ("one", "two", "copy"))
    assert x_two.shape == x_one.shape == (ITERATIONS + 1, len(KELVINS), 3)
    # Up to the crash the 2-rank storage is the single-process run, bit for bit; after it, resuming on 2 ranks
    # or on 1 gives the same continuation (the streams are a function of the stored counters, not of the rank).
    assert np.array_equal(x_two[: KILLED_AFTER + 1], x_one[: KILLED_AFTER + 1])
    assert np.array_equal(x_two, x_copy)
    assert not np.array_equal(x_two[1:], x_two[:-1])  # control: the chain moves, so equality above is not vacuous


def test_resumed_run_continues_the_uninterrupted_streams(harmonic):
    """openmmtools' from_storage deep-copies the stored moves: the first copy of a restored move continues its stream."""
    work, _ = harmonic
    assert np.array_equal(_trajectory(work / "two.nc")[0], _trajectory(work / "one.nc")[0])


def test_per_state_averages_are_exact(harmonic):
    """<|r - r0|^2> = 3 kT / K in each state, within 5 standard errors (statistical inefficiency from pymbar)."""
    from pymbar import timeseries

    work, _ = harmonic
    positions, _, _ = _trajectory(work / "two.nc")
    r2 = (positions[1:] ** 2).sum(-1)  # (iterations, states); the wells sit at the origin
    kT = 0.00831446261815324 * KELVINS
    exact = 3 * kT / SPRING
    errors = np.array([r2[:, k].std(ddof=1) * np.sqrt(timeseries.statistical_inefficiency(r2[:, k]) / len(r2))
                       for k in range(len(KELVINS))])
    z = (r2.mean(0) - exact) / errors
    assert np.all(np.abs(z) < 5), (r2.mean(0), exact, errors)
    # Control: the same check fails against another state's exact value (states mixed up by the ranks).
    assert abs((r2[:, 0].mean() - exact[2]) / errors[0]) > 5


def test_no_proposal_is_used_twice_across_ranks(harmonic):
    work, _ = harmonic
    rows = _draws(work / "record", {"killed", "two"})  # every proposal the 2-rank run's completed iterations used
    keys = [(stream, index) for stream, index, _, _ in rows]
    assert len(rows) > 0 and len(set(keys)) == len(keys)  # no draw of a stream used twice, by either rank
    assert len({x for _, _, x, _ in rows}) == len(rows)  # and no proposed position repeats at all
    for stream in {s for s, _, _, _ in rows}:
        indices = sorted(index for s, index, _, _ in rows if s == stream)
        assert indices == list(range(len(indices)))  # each stream used in order, no gap: counters synchronised
    before_crash = {(s, i, x) for s, i, x, _ in _draws(work / "record", {"killed"})}
    assert {r for _, _, _, r in _draws(work / "record", {"killed"})} == {0, 1}  # both ranks drew
    for stream in {s for s, _, _ in before_crash}:  # each state's move ran on both ranks, continuing one stream
        assert {r for s, _, _, r in _draws(work / "record", {"killed"}) if s == stream} == {0, 1}
    single = {(s, i, x) for s, i, x, _ in _draws(work / "record", {"one"})}
    assert before_crash <= single  # the draws the single-process run used for the same iterations


def test_acceptance_statistics_add_up(harmonic):
    work, _ = harmonic
    for name in ("one", "two", "copy"):
        summary = json.loads((work / f"{name}.json").read_text())
        _, last, stored = _trajectory(work / f"{name}.nc")
        assert last == ITERATIONS
        assert stored == summary["statistics"]  # what rank 0 stored is what every rank ended with
        for statistics in stored:
            assert statistics["n_proposed"] == ITERATIONS * PROPOSALS
            assert 0 < statistics["n_accepted"] < statistics["n_proposed"]
    two, copy = (json.loads((work / f"{name}.json").read_text())["statistics"] for name in ("two", "copy"))
    assert two == copy


def test_alanine_dipeptide_with_the_shipped_flow_on_two_ranks(tmp_path):
    _run(["--system", "alanine", "--storage", "ala.nc", "--iterations", "3", "--states", "2", "--md-steps", "10",
          "--summary", "ala.json"], 2, tmp_path, timeout=180)
    summary = json.loads((tmp_path / "ala.json").read_text())
    assert summary["ranks"] == 2
    assert [s["n_proposed"] for s in summary["statistics"]] == [15, 15]
    assert sum(s["n_accepted"] for s in summary["statistics"]) > 0  # the shipped flow is accepted ~50 % at 300 K
    assert all(s["n_invalid"] == 0 for s in summary["statistics"])


def test_sample_command_on_two_ranks_then_resumed_on_one(tmp_path):
    options = ["--flow", "alanine_dipeptide_vacuum", "--platform", "Reference", "-o", "run.nc", "--no-progress"]
    fresh = _run(["cli", "sample", "alanine_dipeptide_vacuum", "--temperatures", "300,400", "--iterations", "2", "--md-steps", "10",
                  "--proposals", "5", "--seed", "3", *options], 2, tmp_path, timeout=180)
    assert "2 iterations stored in run.nc" in fresh.stdout
    # Rank 0 alone prints the summary: one line per state and one closing line, not one set per rank
    assert fresh.stdout.count("state 0 (300.0 K)") == fresh.stdout.count("state 1 (400.0 K)") == 1
    assert fresh.stdout.count("iterations stored in") == 1
    resumed = _run(["cli", "sample", "--resume", "--iterations", "4", "-o", "run.nc", "--no-progress", "--platform", "Reference"],
                   1, tmp_path, timeout=180)
    assert "n_proposed=20" in resumed.stdout and "4 iterations stored in run.nc" in resumed.stdout
    # An existing output without --overwrite: refused once (rank 0 checks, the others wait for its abort), untouched
    refused = _run(["cli", "sample", "alanine_dipeptide_vacuum", "--temperatures", "300,400", "--iterations", "2", "--md-steps", "10",
                    "--proposals", "5", *options], 2, tmp_path, timeout=180, check=False)
    assert refused.returncode != 0 and refused.stdout.count("already exists") == 1, refused.stdout[-2000:]
    assert _stored_iterations(tmp_path / "run.nc") == 4
    # --overwrite on 2 ranks: rank 0 alone removes the old run, before it creates the new one; no rank races it
    replaced = _run(["cli", "sample", "alanine_dipeptide_vacuum", "--temperatures", "300,400", "--iterations", "2", "--md-steps", "10",
                     "--proposals", "5", "--seed", "4", "--overwrite", *options], 2, tmp_path, timeout=180)
    assert replaced.stdout.count("2 iterations stored in run.nc") == 1 and replaced.stdout.count("state 0 (300.0 K)") == 1
    assert "n_proposed=10" in replaced.stdout and _stored_iterations(tmp_path / "run.nc") == 2  # a new run, not the old one


def _stored_iterations(storage):
    from openmmtools.multistate import MultiStateReporter

    reporter = MultiStateReporter(str(storage), open_mode="r")
    try:
        return reporter.read_last_iteration()
    finally:
        reporter.close()


# ---------------------------------------------------------------------------- TimewarpMove across ranks
TW_ITERATIONS, TW_KILLED_AFTER, TW_PROPOSALS, TW_CONTROL_ITERATIONS = 120, 60, 10, 60
TW_R0 = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # harmonic_oscillator(n_particles=3): the wells, nm


def _tw_trajectory(storage):
    """Stored positions (n_iterations + 1, n_states, 3 atoms, 3) nm, by thermodynamic state."""
    from openmmtools.multistate import MultiStateReporter

    reporter = MultiStateReporter(str(storage), open_mode="r")
    try:
        frames = []
        for iteration in range(reporter.read_last_iteration() + 1):
            sampler_states = reporter.read_sampler_states(iteration)
            frame = np.zeros((len(KELVINS), 3, 3))
            for replica, state in enumerate(reporter.read_replica_thermodynamic_states(iteration)):
                frame[state] = sampler_states[replica].positions._value
            frames.append(frame)
        statistics = [m.statistics for m in reporter.read_mcmc_moves()]
    finally:
        reporter.close()
    return np.array(frames), statistics


def _tw_rows(record, tags):
    """(stream, step, proposed positions, batch start, rank) of every proposal the runs ``tags`` used."""
    rows = []
    for path in sorted(Path(record).glob("draws_*.json")):
        if path.stem.split("_")[1] in tags:
            rank = int(path.stem.rsplit("rank", 1)[1])
            rows += [(tuple(stream), step, tuple(x), start, rank) for stream, step, x, start in json.loads(path.read_text())]
    return rows


def _batches_with_gaps(rows):
    """Batches (stream, start) whose steps are not start, start + 1, ...: a batch left, then used again later."""
    steps = {}
    for stream, step, _, start, _ in rows:
        steps.setdefault((stream, start), []).append(step)
    return [key for key, used in steps.items() if sorted(used) != list(range(key[1], key[1] + len(used)))]


@pytest.fixture(scope="module")
def timewarp(tmp_path_factory):
    """TimewarpMove (random-weight ConditionalFlow, 3 wells, no MD): one process; 2 ranks killed, resumed on 1;
    and the control, 2 ranks that do not exchange the prefetch record."""
    work = tmp_path_factory.mktemp("mpi_timewarp")
    common = ["--system", "timewarp", "--proposals", str(TW_PROPOSALS), "--record", "record"]
    _run([*common, "--storage", "one.nc", "--iterations", str(TW_ITERATIONS), "--tag", "one", "--summary", "one.json"], 1, work)
    killed = _run([*common, "--storage", "two.nc", "--iterations", str(TW_ITERATIONS), "--die-after", str(TW_KILLED_AFTER),
                   "--tag", "killed"], 2, work, check=False)
    _run([*common, "--storage", "two.nc", "--iterations", str(TW_ITERATIONS), "--resume", "--tag", "resumed",
          "--summary", "resumed.json"], 1, work)
    _run([*common, "--storage", "control.nc", "--iterations", str(TW_CONTROL_ITERATIONS), "--tag", "control",
          "--no-prefetch-sync"], 2, work)
    return work, killed


def test_timewarp_on_two_ranks_then_resumed_on_one_is_the_single_process_chain(timewarp):
    """Prefetched batches are exact across ranks: the chain is bit for bit the single-process one.

    Control: without the prefetch record in the exchanged statistics, a rank reuses a batch it drew
    before another rank moved the state's stream on (its origin is again the current positions), and the
    chain leaves the single-process one: still exact in distribution (the reused draws were never used),
    but the result would depend on the number of ranks.
    """
    work, killed = timewarp
    assert killed.returncode != 0
    resumed = json.loads((work / "resumed.json").read_text())
    assert (resumed["ranks"], resumed["start_iteration"], resumed["iterations"]) == (1, TW_KILLED_AFTER, TW_ITERATIONS)
    (x_one, stored_one), (x_two, stored_two) = _tw_trajectory(work / "one.nc"), _tw_trajectory(work / "two.nc")
    assert x_two.shape == x_one.shape == (TW_ITERATIONS + 1, len(KELVINS), 3, 3)
    # Up to the crash, bit for bit. The resumed run starts from positions stored in float32: the restored move
    # recognises its batch's origin at that precision and draws the batch again from its stream key, at the
    # rounded positions, so the continuation agrees to float32 rounding (same acceptances, same statistics).
    assert np.array_equal(x_two[: TW_KILLED_AFTER + 1], x_one[: TW_KILLED_AFTER + 1])
    assert np.abs(x_two - x_one).max() < 1e-5
    assert not np.array_equal(x_one[1:], x_one[:-1])  # the chain moves
    # Statistics, prefetch keys and the flow's cost (a batch drawn again after the resume is not counted twice);
    # the origin digests of the last batches differ in the float32 rounding of the continuation.
    def without_digest(statistics):
        return [dict(s, prefetch={k: v for k, v in s["prefetch"].items() if k != "origin_sha256"}) for s in statistics]

    assert stored_two == resumed["statistics"] and stored_one == json.loads((work / "one.json").read_text())["statistics"]
    assert without_digest(stored_two) == without_digest(stored_one)
    for statistics in stored_two:
        assert statistics["n_proposed"] == statistics["n_drawn"] == TW_ITERATIONS * TW_PROPOSALS
        assert 0 < statistics["n_accepted"] < statistics["n_proposed"] and statistics["n_invalid"] == 0
        assert statistics["prefetch"] is not None
    x_control, _ = _tw_trajectory(work / "control.nc")
    assert not np.array_equal(x_control, x_one[: TW_CONTROL_ITERATIONS + 1])
    assert _batches_with_gaps(_tw_rows(work / "record", {"control"}))  # the stale batch that made it leave


def test_timewarp_uses_no_proposal_twice_across_ranks(timewarp):
    work, _ = timewarp
    rows = _tw_rows(work / "record", {"killed", "resumed"})
    assert {r for *_, r in _tw_rows(work / "record", {"killed"})} == {0, 1}
    keys = [(stream, step) for stream, step, *_ in rows]
    assert len(keys) == len(set(keys)) == 3 * TW_ITERATIONS * TW_PROPOSALS  # every step of every state once
    assert len({x for _, _, x, _, _ in rows}) == len(rows)  # no proposed configuration twice
    for stream in {s for s, *_ in rows}:
        assert sorted(step for s, step, *_ in rows if s == stream) == list(range(TW_ITERATIONS * TW_PROPOSALS))
        assert {r for s, *_, r in _tw_rows(work / "record", {"killed"}) if s == stream} == {0, 1}  # each state on both ranks
    assert not _batches_with_gaps(rows)  # each batch used from its start, in order, never resumed after another


def test_timewarp_per_state_averages_are_exact_on_two_ranks(timewarp):
    """Centre fixed at the wells' centre: E sum_i |x_i - r0_i|^2 = 3 (N - 1) kT / K in each state (5 standard errors)."""
    from pymbar import timeseries

    work, _ = timewarp
    positions, _ = _tw_trajectory(work / "two.nc")
    d2 = ((positions[1:] - TW_R0) ** 2).sum((2, 3))  # (iterations, states)
    exact = 3 * (len(TW_R0) - 1) * 0.00831446261815324 * KELVINS / SPRING
    errors = np.array([d2[:, k].std(ddof=1) * np.sqrt(timeseries.statistical_inefficiency(d2[:, k]) / len(d2))
                       for k in range(len(KELVINS))])
    z = (d2.mean(0) - exact) / errors
    assert np.all(np.abs(z) < 5), (d2.mean(0), exact, errors)
    assert abs((d2[:, 0].mean() - exact[2]) / errors[0]) > 5  # control: another state's value is resolved as wrong


def test_a_user_error_on_every_rank_is_printed_once(tmp_path):
    (tmp_path / "other.nc").write_text("")  # not this run's storage: every rank refuses it alike
    result = _run(["cli", "sample", "alanine_dipeptide_vacuum", "--temperatures", "300,400", "--iterations", "1", "--md-steps", "5",
                   "--proposals", "2", "--flow", "alanine_dipeptide_vacuum", "--platform", "Reference", "--no-progress",
                   "--resume", "-o", "other.nc"], 2, tmp_path, timeout=120, check=False)
    assert result.returncode != 0
    assert result.stdout.count("error:") == 1, result.stdout[-2000:]


def test_a_user_error_after_mpi_starts_is_printed_once_and_ends_every_rank(tmp_path):
    script = tmp_path / "fail_everywhere.py"
    script.write_text(
        "from mpi4py import MPI\n"
        "from openmm_flowplugin.cli._common import _user_errors\n"
        "from openmm_flowplugin.errors import InvalidInputError\n"
        "@_user_errors\n"
        "def command():\n"
        "    MPI.COMM_WORLD.Barrier()\n"
        "    raise InvalidInputError(f'bad input seen by rank {MPI.COMM_WORLD.Get_rank()}')\n"
        "command()\n")
    result = _run(["--no-arguments-used"], 2, tmp_path, timeout=60, check=False, script=script)
    assert result.returncode != 0
    assert result.stdout.count("error: bad input seen by rank 0") == 1, result.stdout[-2000:]
    assert "seen by rank 1" not in result.stdout  # rank 0 aborted the job before rank 1's grace period ended
