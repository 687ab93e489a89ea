"""simulate(): trajectory formats, checkpoints and exact resume after a kill, NaN detection, overwrite policy, the CLI."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import mdtraj
import numpy as np
import pytest
from click.testing import CliRunner
from openmm import unit

from openmm_flowplugin import systems
from openmm_flowplugin.cli import main
from openmm_flowplugin.outputs import OutputExistsError
from openmm_flowplugin.simulation import SimulationUnstableError, simulate
from openmm_flowplugin.simulation.checkpointing import record_path
from openmm_flowplugin.simulation.trajectory_files import count_frames, truncate_frames

FORMATS = ["dcd", "xtc", "h5"]
#: Largest position error of each format against the in-memory frames (nm): DCD and HDF5 store float32, XTC 1e-3 nm.
TOLERANCE = {"dcd": 1e-5, "xtc": 6e-4, "h5": 1e-6}
RUN = dict(report_interval=50, equilibration_steps=100, seed=7, progress=False, platform="Reference")


@pytest.fixture(scope="module")
def ala2():
    return systems.get("alanine_dipeptide_vacuum")


@pytest.fixture(scope="module")
def reference_frames(ala2):
    """An uninterrupted 1000-step run kept in memory."""
    return simulate(ala2, 1000, **RUN)


@pytest.mark.parametrize("ext", FORMATS)
def test_each_format_writes_and_reads_back(ala2, reference_frames, tmp_path, ext):
    output = tmp_path / f"md.{ext}"
    trajectory = simulate(ala2, 1000, output=output, **RUN)
    assert trajectory.n_frames == 20 and count_frames(output) == 20
    np.testing.assert_allclose(trajectory.time, 0.05 * np.arange(1, 21))
    on_disk = mdtraj.load(str(output), **({} if ext == "h5" else {"top": ala2.mdtraj_topology}))
    np.testing.assert_array_equal(on_disk.xyz, trajectory.xyz)
    assert np.abs(trajectory.xyz - reference_frames.xyz).max() < TOLERANCE[ext]  # same seed, same dynamics
    if ext == "xtc":  # frame k is written at step (k + 1) * interval after equilibration
        with mdtraj.formats.XTCTrajectoryFile(str(output)) as handle:
            _, _, steps, _ = handle.read()
        np.testing.assert_array_equal(steps, 50 * np.arange(1, 21))
    if ext == "h5":
        np.testing.assert_allclose(on_disk.time, 0.05 * np.arange(1, 21))


def test_unsupported_extension_is_refused_before_work(ala2, tmp_path):
    with pytest.raises(ValueError, match=r"cannot write a trajectory to .*md\.pdb: supported extensions are \.dcd, \.xtc, \.h5\."):
        simulate(ala2, 10**9, output=tmp_path / "md.pdb", **RUN)  # would take hours if it started
    assert list(tmp_path.iterdir()) == []


def _checkpointed(ala2, n_steps, output, **kwargs):
    checkpoint = output.with_suffix(".chk")
    return simulate(ala2, n_steps, output=output, checkpoint=checkpoint, checkpoint_interval=200,
                    log=output.with_suffix(".log"), **RUN, **kwargs)


@pytest.mark.parametrize("ext", FORMATS)
def test_resume_after_kill_equals_uninterrupted_run(ala2, reference_frames, tmp_path, ext):
    output = tmp_path / f"md.{ext}"
    checkpoint, log = output.with_suffix(".chk"), output.with_suffix(".log")
    _checkpointed(ala2, 600, output)
    saved = checkpoint.read_bytes()
    _checkpointed(ala2, 800, output, resume=True)
    # The state after a kill just before the checkpoint at step 800: frames to 800 on disk, checkpoint at 600,
    # half a frame and half a log row written.
    checkpoint.write_bytes(saved)
    if ext != "h5":
        with open(output, "ab") as handle:
            handle.write(b"\x01" * 100)
    with open(log, "a") as handle:
        handle.write('"81.0%",810,0.8')
    assert count_frames(output) == 16

    resumed = _checkpointed(ala2, 1000, output, resume=True)
    uninterrupted = simulate(ala2, 1000, output=tmp_path / f"straight.{ext}", **RUN)
    assert resumed.n_frames == 20 and count_frames(output) == 20
    np.testing.assert_array_equal(resumed.time, uninterrupted.time)
    np.testing.assert_array_equal(resumed.xyz, uninterrupted.xyz)  # the checkpoint holds the exact state and RNG
    assert np.abs(resumed.xyz - reference_frames.xyz).max() < TOLERANCE[ext]
    rows = [line.split(",") for line in log.read_text().splitlines()]
    assert rows[0][1] == '"Step"' and [int(row[1]) for row in rows[1:]] == list(range(50, 1001, 50))


def test_resume_after_sigkill_in_a_subprocess(ala2, tmp_path):
    output, checkpoint = tmp_path / "md.dcd", tmp_path / "md.chk"
    script = textwrap.dedent(f"""
        from openmm_flowplugin import systems
        from openmm_flowplugin.simulation import simulate
        simulate(systems.get("alanine_dipeptide_vacuum"), 10**8, output={str(output)!r}, checkpoint={str(checkpoint)!r},
                 checkpoint_interval=500, report_interval=50, equilibration_steps=100, seed=7, progress=False,
                 platform="Reference")
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not (output.is_file() and count_frames(output) >= 15):  # past the checkpoint at step 500
            assert process.poll() is None and time.monotonic() < deadline, "the run stopped or never started"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    n_steps = 50 * count_frames(output) + 500
    resumed = simulate(ala2, n_steps, output=output, checkpoint=checkpoint, checkpoint_interval=500, resume=True, **RUN)
    uninterrupted = simulate(ala2, n_steps, output=tmp_path / "straight.dcd", **RUN)
    assert resumed.n_frames == n_steps // 50
    np.testing.assert_array_equal(resumed.xyz, uninterrupted.xyz)


def test_resume_refusals(ala2, tmp_path):
    output, checkpoint = tmp_path / "md.dcd", tmp_path / "md.chk"
    kwargs = dict(output=output, checkpoint=checkpoint, resume=True, **RUN)
    with pytest.raises(FileNotFoundError, match="cannot resume: checkpoint .*md.chk not found"):
        simulate(ala2, 400, **kwargs)
    simulate(ala2, 400, output=output, checkpoint=checkpoint, checkpoint_interval=200, **RUN)
    with pytest.raises(ValueError, match="belongs to alanine_dipeptide_vacuum with 22 atoms, but double_well_2d has 1"):
        simulate(systems.get("double_well_2d"), 400, **kwargs)
    with pytest.raises(ValueError, match="written with report_interval=50, this call has 100"):
        simulate(ala2, 400, **dict(kwargs, report_interval=100))
    with pytest.raises(ValueError, match="at step 400, past n_steps 200"):
        simulate(ala2, 200, **kwargs)
    truncate_frames(output, 5)
    with pytest.raises(ValueError, match="has 5 frames, but checkpoint .* is at step 400, which implies 8"):
        simulate(ala2, 600, **kwargs)
    os.remove(record_path(checkpoint))
    with pytest.raises(FileNotFoundError, match="run record .* is missing"):
        simulate(ala2, 600, **kwargs)


def test_checkpointed_run_can_be_extended(ala2, reference_frames, tmp_path):
    output = tmp_path / "md.h5"
    first = _checkpointed(ala2, 400, output)
    again = _checkpointed(ala2, 400, output, resume=True)  # a finished run: nothing to do, nothing duplicated
    np.testing.assert_array_equal(again.xyz, first.xyz)
    extended = _checkpointed(ala2, 1000, output, resume=True)
    np.testing.assert_array_equal(extended.xyz, reference_frames.xyz)


def test_huge_timestep_fails_fast_with_the_step_and_the_fix(ala2, tmp_path):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SimulationUnstableError) as error:
        warnings.simplefilter("always")
        simulate(ala2, 10_000, timestep=20 * unit.femtosecond, equilibration_steps=10_000, report_interval=100,
                 seed=1, progress=False, platform="Reference")
    assert time.perf_counter() - start < 5
    assert any("20 fs is too large" in str(w.message) for w in caught)
    assert error.value.phase == "equilibration" and error.value.step == 100
    message = str(error.value)
    assert "at equilibration step 100" in message and "timestep too large (20 fs)" in message
    assert "minimize or reduce --timestep" in message
    # in production, into a file: no file with NaN frames is left behind
    with pytest.raises(SimulationUnstableError, match="at production step 100 "), pytest.warns(UserWarning, match="too large"):
        simulate(ala2, 10_000, timestep=0.02, equilibration_steps=0, report_interval=100, seed=1, progress=False,
                 platform="Reference", output=tmp_path / "md.dcd")
    assert not (tmp_path / "md.dcd").exists()


def test_control_stable_timestep_does_not_trip_the_guard(ala2):
    trajectory = simulate(ala2, 2000, timestep=2 * unit.femtosecond, report_interval=100, equilibration_steps=0,
                          seed=1, progress=False, platform="Reference")
    assert np.isfinite(trajectory.xyz).all() and trajectory.n_frames == 20


@pytest.mark.parametrize("existing", ["output", "log", "checkpoint", "record"])
def test_existing_files_are_never_replaced_without_overwrite(ala2, tmp_path, existing):
    paths = {"output": tmp_path / "md.xtc", "log": tmp_path / "md.log", "checkpoint": tmp_path / "md.chk"}
    paths["record"] = record_path(paths["checkpoint"])
    paths[existing].write_text("precious")
    kwargs = dict(output=paths["output"], log=paths["log"], checkpoint=paths["checkpoint"], **RUN)
    with pytest.raises(OutputExistsError, match="already exists"):
        simulate(ala2, 200, **kwargs)
    assert [p.name for p in tmp_path.iterdir()] == [paths[existing].name] and paths[existing].read_text() == "precious"
    assert simulate(ala2, 200, overwrite=True, **kwargs).n_frames == 4
    assert count_frames(paths["output"]) == 4


def test_argument_errors(ala2, tmp_path):
    for kwargs, pattern in [
        (dict(n_steps=1.5), "n_steps must be an integer >= 1"),
        (dict(timestep=float("nan")), "timestep must be a finite number > 0"),
        (dict(timestep=-1.0), "timestep must be a finite number > 0"),
        (dict(checkpoint=tmp_path / "c.chk"), "checkpoint= needs output="),
        (dict(output=tmp_path / "a.dcd", checkpoint=tmp_path / "c.chk", checkpoint_interval=75), "must be a multiple of report_interval"),
        (dict(resume=True), "resume needs checkpoint="),
        (dict(output=tmp_path / "a.dcd", log=tmp_path / "a.dcd"), "must be different files"),
    ]:
        arguments = dict(n_steps=200, **RUN)
        arguments.update(kwargs)
        with pytest.raises(ValueError, match=pattern):
            simulate(ala2, **arguments)
    assert list(tmp_path.iterdir()) == []


# --- the command line ---


def _one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], result.output


def test_cli_checkpoint_log_and_resume(tmp_path):
    runner = CliRunner()
    output, checkpoint, log = tmp_path / "md.xtc", tmp_path / "md.chk", tmp_path / "md.log"
    common = ["simulate", "alanine_dipeptide_vacuum", "--interval", "50", "--equilibration-steps", "100", "--seed", "3",
              "--platform", "Reference", "-o", str(output), "--checkpoint", str(checkpoint), "--checkpoint-interval", "200",
              "--log", str(log)]
    result = runner.invoke(main, common + ["--steps", "400"])
    assert result.exit_code == 0, result.output
    assert "wrote 8 frames" in result.output and checkpoint.is_file() and record_path(checkpoint).is_file()
    _one_line_error(runner.invoke(main, common + ["--steps", "400"]), "already exists")
    result = runner.invoke(main, common + ["--steps", "600", "--resume"])
    assert result.exit_code == 0, result.output
    assert "wrote 12 frames" in result.output and count_frames(output) == 12
    assert [line.split(",")[1] for line in log.read_text().splitlines()[1:]] == [str(s) for s in range(50, 601, 50)]
    straight = runner.invoke(main, common[:-6] + ["-o", str(tmp_path / "straight.xtc"), "--steps", "600"])
    assert straight.exit_code == 0, straight.output
    assert (tmp_path / "straight.xtc").read_bytes() == output.read_bytes()


def test_cli_log_to_stdout(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "double_well_2d", "--steps", "200", "--interval", "50",
                                       "--equilibration-steps", "0", "-o", str(tmp_path / "md.dcd"), "--log", "-"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith('#"Progress (%)","Step"') and len(lines) == 6 and "wrote 4 frames" in lines[-1]


@pytest.mark.parametrize(
    "arguments, pattern",
    [
        (["--timestep", "0"], "--timestep must be a finite number of femtoseconds > 0"),
        (["--timestep", "nan"], "--timestep must be a finite number of femtoseconds > 0"),
        (["--timestep", "20"], "timestep 20 fs is too large: alanine_dipeptide_vacuum has 12 hydrogens without bond constraints"),
        (["--checkpoint", "c.chk", "--checkpoint-interval", "150"], "--checkpoint-interval (150) must be a multiple of --interval (100)"),
        (["--checkpoint-interval", "200"], "--checkpoint-interval needs --checkpoint FILE"),
        (["--resume"], "--resume needs --checkpoint FILE"),
        (["--resume", "--checkpoint", "missing.chk"], "cannot resume: checkpoint missing.chk not found"),
        (["-o", "md.nc"], "supported extensions are .dcd, .xtc, .h5"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, arguments, pattern):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["simulate", "alanine_dipeptide_vacuum", "--steps", "1000", "-o", "md.dcd", *arguments])
    _one_line_error(result, pattern)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("steps, pattern", [("0", "0 is not in the range x>=1"), ("2.5", "'2.5' is not a valid integer")])
def test_cli_counts_are_checked_by_click(tmp_path, steps, pattern):
    result = CliRunner().invoke(main, ["simulate", "alanine_dipeptide_vacuum", "--steps", steps, "-o", str(tmp_path / "md.dcd")])
    assert result.exit_code == 2 and pattern in result.output and "Traceback" not in result.output


def test_cli_blow_up_is_one_line_and_not_exit_0(tmp_path):
    # double_well_2d (no hydrogens) passes the timestep check; 5 ps steps are unstable for its 100 kJ/mol/nm^2 z spring
    output = tmp_path / "md.h5"
    result = CliRunner().invoke(main, ["simulate", "double_well_2d", "--steps", "1000", "--interval", "10",
                                       "--timestep", "5000", "--equilibration-steps", "0", "-o", str(output)])
    _one_line_error(result, "blew up at production step")
    assert "timestep too large (5000 fs)" in result.output and not output.exists()


def test_cli_start_from_a_dcd_frame_leaves_it_untouched(tmp_path):
    runner = CliRunner()
    first = tmp_path / "first.dcd"
    assert runner.invoke(main, ["simulate", "alanine_dipeptide_vacuum", "--steps", "200", "--interval", "100",
                                "--equilibration-steps", "0", "-o", str(first)]).exit_code == 0
    before = first.read_bytes()
    result = runner.invoke(main, ["simulate", "alanine_dipeptide_vacuum", "--steps", "200", "--interval", "100",
                                  "--equilibration-steps", "0", "--start", str(first), "-o", str(tmp_path / "second.h5")])
    assert result.exit_code == 0, result.output
    assert first.read_bytes() == before


def test_ctrl_c_before_the_first_checkpoint_resumes_from_step_0(ala2, reference_frames, tmp_path, monkeypatch):
    import openmm_flowplugin.simulation.md as md

    real, calls = md.save_checkpoint, []

    def interrupted(simulation, checkpoint):
        calls.append(simulation.currentStep)
        if len(calls) == 2:  # frames to step 200 are written; the checkpoint on disk is the one at step 0
            raise KeyboardInterrupt
        real(simulation, checkpoint)

    monkeypatch.setattr(md, "save_checkpoint", interrupted)
    output = tmp_path / "md.dcd"
    with pytest.raises(KeyboardInterrupt):
        _checkpointed(ala2, 1000, output)
    assert calls == [0, 200] and count_frames(output) == 4
    monkeypatch.setattr(md, "save_checkpoint", real)
    resumed = _checkpointed(ala2, 1000, output, resume=True)  # equilibration is not repeated
    assert np.abs(resumed.xyz - reference_frames.xyz).max() < TOLERANCE["dcd"]


@pytest.mark.parametrize("ext", FORMATS)
def test_truncate_frames_in_place(ala2, tmp_path, ext):
    output = tmp_path / f"md.{ext}"
    full = simulate(ala2, 500, output=output, **RUN)
    truncate_frames(output, 3)
    assert count_frames(output) == 3
    kept = mdtraj.load(str(output), **({} if ext == "h5" else {"top": ala2.mdtraj_topology}))
    np.testing.assert_array_equal(kept.xyz, full.xyz[:3])
    truncate_frames(output, 0)
    assert count_frames(output) == 0
    empty = tmp_path / f"empty.{ext}"
    empty.write_bytes(b"")
    truncate_frames(empty, 0)
    assert count_frames(empty) == 0


def test_unreadable_trajectory_is_one_line(ala2, tmp_path):
    output, checkpoint = tmp_path / "md.h5", tmp_path / "md.chk"
    simulate(ala2, 400, output=output, checkpoint=checkpoint, checkpoint_interval=200, **RUN)
    output.write_bytes(b"not an HDF5 file")  # e.g. damaged by a kill during a write
    with pytest.raises(ValueError, match=r"^cannot read trajectory .*md\.h5: [^\n]*$"):
        simulate(ala2, 600, output=output, checkpoint=checkpoint, resume=True, **RUN)


def test_a_seeded_run_seeds_the_systems_barostat(request):
    """With ``seed`` a Monte Carlo barostat in the user's System is seeded too (on a copy): the same seed gives the
    same box volumes, another seed others (the control). CPU platform with one thread: its barostat has a generator
    of its own, random unless seeded (Reference's draws from the integrator's)."""
    import openmm

    from openmm_flowplugin._systems.lj_fluids import lj_fluid

    cpu = openmm.Platform.getPlatformByName("CPU")
    threads = cpu.getPropertyDefaultValue("Threads")
    cpu.setPropertyDefaultValue("Threads", "1")
    request.addfinalizer(lambda: cpu.setPropertyDefaultValue("Threads", threads))
    fluid = lj_fluid(n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0).solvent
    barostat = openmm.MonteCarloBarostat(1.0 * unit.bar, fluid.temperature, 1)  # every step
    fluid.system.addForce(barostat)

    def volumes(seed):
        frames = simulate(fluid, 200, report_interval=20, equilibration_steps=0, timestep=0.01, seed=seed, progress=False,
                          platform="CPU")
        return np.prod(frames.unitcell_lengths, axis=1)

    first = volumes(5)
    assert len(np.unique(first)) > 1  # the barostat moved the box
    assert np.array_equal(first, volumes(5))
    assert not np.allclose(first, volumes(6))
    assert barostat.getRandomNumberSeed() == 0  # the user's System is unchanged


def test_a_seed_the_user_set_on_a_barostat_is_kept():
    import openmm

    from openmm_flowplugin.mcmc.seeded_runs import with_seeded_random_forces

    system = openmm.System()
    system.addForce(openmm.MonteCarloBarostat(1.0, 300.0))
    system.addForce(openmm.AndersenThermostat(300.0, 1.0))
    system.getForce(1).setRandomNumberSeed(123)
    seeded = with_seeded_random_forces(system, -4, "simulate")  # any int, as OpenMM's seeds
    assert seeded.getForce(1).getRandomNumberSeed() == 123 and seeded.getForce(0).getRandomNumberSeed() != 0
    assert seeded.getForce(0).getRandomNumberSeed() != with_seeded_random_forces(system, 4, "simulate").getForce(0).getRandomNumberSeed()
    assert seeded.getForce(0).getRandomNumberSeed() != with_seeded_random_forces(system, -4, "md").getForce(0).getRandomNumberSeed()
