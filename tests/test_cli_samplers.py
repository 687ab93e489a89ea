"""The sampler commands: ``sample`` (FlowMCMove in openmmtools, NetCDF storage, resume) and ``md`` (FlowMCIntegrator)."""

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from openmmtools.multistate import MultiStateReporter

from openmm_flowplugin.cli import main
from openmm_flowplugin.cli.sample_command import _temperatures
from openmm_flowplugin.flows.checkpoints import resolve_flow_path
from openmm_flowplugin.simulation.trajectory_files import count_frames

ALA = "alanine_dipeptide_vacuum"  # ships a flow: --flow alanine_dipeptide_vacuum
SAMPLE = ["sample", ALA, "--flow", ALA, "--md-steps", "10", "--proposals", "5", "--platform", "Reference"]
MD = ["md", ALA, "--flow", ALA, "--interval", "50", "--jump-interval", "10", "--proposals", "2", "--platform", "Reference"]


def _one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], result.output


def _stored(path, n_states=1):
    """(FlowMCMove states as stored, one per state; last iteration; temperatures in K) of a storage file."""
    reporter = MultiStateReporter(str(path), open_mode="r")
    try:
        moves = [reporter.read_dict(f"mcmc_moves/move{k}") for k in range(n_states)]
        iteration = reporter.read_last_iteration()
        temperatures = [s.temperature._value for s in reporter.read_thermodynamic_states()[0]]
    finally:
        reporter.close()
    return [m["move_list"][-1] if "move_list" in m else m for m in moves], iteration, temperatures


def test_sample_stores_refuses_to_overwrite_and_resumes_with_growing_statistics(tmp_path):
    runner, storage = CliRunner(), tmp_path / "run.nc"
    result = runner.invoke(main, SAMPLE + ["--iterations", "3", "--seed", "1", "-o", str(storage)])
    assert result.exit_code == 0, result.output
    assert "state 0 (300.0 K): flow acceptance" in result.output and str(storage) in result.output
    assert "Root seed 1 (stored)" in result.output
    (move,), iteration, temperatures = _stored(storage)
    assert (move["n_proposed"], iteration, temperatures) == (15, 3, [300.0])
    assert 0 < move["n_accepted"] < 15

    before = storage.read_bytes()
    _one_line_error(runner.invoke(main, SAMPLE + ["--iterations", "3", "-o", str(storage)]), "already exists")
    assert storage.read_bytes() == before
    _one_line_error(runner.invoke(main, ["sample", "--iterations", "5", "--proposals", "4", "-o", str(storage), "--resume"]),
                    "whose --proposals is 5, not 4")
    _one_line_error(runner.invoke(main, ["sample", "--iterations", "3", "-o", str(storage), "--resume"]), "already holds 3 iterations")
    _one_line_error(runner.invoke(main, ["sample", "harmonic_oscillator", "--iterations", "5", "-o", str(storage), "--resume"]),
                    "made for 'alanine_dipeptide_vacuum', not 'harmonic_oscillator'")

    result = runner.invoke(main, ["sample", "--iterations", "5", "-o", str(storage), "--resume"])
    assert result.exit_code == 0, result.output
    (resumed,), iteration, _ = _stored(storage)
    assert (resumed["n_proposed"], iteration) == (25, 5)  # 15 stored + 2 iterations x 5 proposals
    assert resumed["n_accepted"] >= move["n_accepted"]

    result = runner.invoke(main, SAMPLE + ["--iterations", "1", "-o", str(storage), "--overwrite"])
    assert result.exit_code == 0, result.output
    (fresh,), iteration, _ = _stored(storage)
    assert (fresh["n_proposed"], iteration) == (5, 1)


def test_replica_exchange_over_two_temperatures_with_flow_moves_only(tmp_path):
    storage = tmp_path / "rex.nc"
    result = CliRunner().invoke(main, SAMPLE + ["--iterations", "3", "--md-steps", "0", "--temperatures", "300,400",
                                                "-o", str(storage)])
    assert result.exit_code == 0, result.output
    assert "state 1 (400.0 K)" in result.output
    moves, iteration, temperatures = _stored(storage, n_states=2)
    assert temperatures == [300.0, 400.0] and iteration == 3
    assert [m["n_proposed"] for m in moves] == [15, 15]  # FlowMCMove alone (no SequenceMove), in each state


def _energies_and_swaps(path):
    reporter = MultiStateReporter(str(path), open_mode="r")
    try:
        n = reporter.read_last_iteration()
        return np.array([reporter.read_energies(i)[0] for i in range(1, n + 1)]), reporter.read_replica_thermodynamic_states()
    finally:
        reporter.close()


def test_a_seeded_run_repeats_its_md_and_swaps_and_a_resume_draws_anew(tmp_path, monkeypatch):
    """Same --seed: the same stored energies and replica states (Langevin MD, swaps and flow moves all seeded);
    another seed differs (the control); a resumed run repeats too, and seeds its MD and swaps from the stored root
    with its own start iteration."""
    from openmm_flowplugin.mcmc import seeded_runs

    runner = CliRunner()
    ladder = ["--temperatures", "300,400", "--proposals", "2"]
    keys, seeded_sampler_run = [], seeded_runs.seeded_sampler_run
    monkeypatch.setattr(seeded_runs, "seeded_sampler_run", lambda *args: keys.append(args[2:]) or seeded_sampler_run(*args))

    def run(name, seed, resume_at=None):
        storage = tmp_path / name
        if resume_at is not None:
            assert runner.invoke(main, SAMPLE + ladder + ["--iterations", str(resume_at), "--seed", seed, "-o", str(storage)]).exit_code == 0
            result = runner.invoke(main, ["sample", "--iterations", "4", "-o", str(storage), "--resume"])
        else:
            result = runner.invoke(main, SAMPLE + ladder + ["--iterations", "4", "--seed", seed, "-o", str(storage)])
        assert result.exit_code == 0, result.output
        return _energies_and_swaps(storage)

    state = np.random.get_state()
    energies, swaps = run("a.nc", "1")
    assert keys[-1][0] == 1 and keys[-1][1][1:] == (0, 0)  # (root, (sample, start iteration, rank))
    again, swaps_again = run("b.nc", "1")
    assert np.array_equal(energies, again) and np.array_equal(swaps, swaps_again)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))  # NumPy's global state restored
    assert not np.allclose(energies, run("c.nc", "2")[0])  # control: another seed
    resumed, _ = run("d.nc", "1", resume_at=2)
    assert keys[-1] == (1, (keys[0][1][0], 2, 0))  # the resume: the stored root, its own start iteration
    assert np.array_equal(resumed[:2], energies[:2])
    assert np.array_equal(resumed, run("e.nc", "1", resume_at=2)[0])


def test_temperature_ladders():
    assert _temperatures(None, None, None, None, None) is None
    assert _temperatures(310.0, None, None, None, None) == [310.0]
    assert _temperatures(None, "300,350", None, None, None) == [300.0, 350.0]
    ladder = _temperatures(None, None, 300.0, 600.0, 3)
    assert ladder == pytest.approx([300.0, 300.0 * 2**0.5, 600.0])
    refused = [
        ((300.0, "300,400", None, None, None), "give only one of --temperature or --temperatures"),
        ((None, "300,x", None, None, None), "comma-separated"),
        ((None, "300,300", None, None, None), "distinct"),
        ((None, None, 300.0, None, 3), "needs all of"),
        ((None, None, 400.0, 300.0, 2), "must be above"),
    ]
    for arguments, pattern in refused:
        with pytest.raises(ValueError, match=pattern):
            _temperatures(*arguments)


def test_md_jumps_checkpoints_and_resumes_after_a_kill(tmp_path):
    runner = CliRunner()
    trajectory, jumps, log, checkpoint = (tmp_path / name for name in ("md.dcd", "jumps.csv", "md.log", "md.chk"))
    outputs = ["-o", str(trajectory), "--jump-log", str(jumps), "--log", str(log), "--checkpoint", str(checkpoint),
               "--checkpoint-interval", "100"]

    def rows():
        table = [line.split(",") for line in jumps.read_text().splitlines()]
        assert table[0][0] == '#"Step"' and sum(row[0].startswith("#") for row in table) == 1
        return [(int(r[0]), int(r[2]), int(r[3])) for r in table[1:]]

    result = runner.invoke(main, MD + ["--steps", "100", "--seed", "2"] + outputs)
    assert result.exit_code == 0, result.output
    assert [(step, proposed) for step, proposed, _ in rows()] == [(50, 10), (100, 20)]  # 2 proposals every 10 steps
    assert count_frames(trajectory) == 2
    shutil.copy(checkpoint, tmp_path / "at100.chk")

    result = runner.invoke(main, MD + ["--steps", "200", "--resume"] + outputs)
    assert result.exit_code == 0, result.output
    assert "200 steps" in result.output
    assert [(step, proposed) for step, proposed, _ in rows()] == [(s, s // 5) for s in (50, 100, 150, 200)]
    assert count_frames(trajectory) == 4
    _one_line_error(runner.invoke(main, MD + ["--steps", "200", "--resume"] + outputs), "is at step 200")

    # as if killed after the checkpoint at step 100: outputs are cut back to it, then continued
    shutil.copy(tmp_path / "at100.chk", checkpoint)
    result = runner.invoke(main, MD + ["--steps", "300", "--resume"] + outputs)
    assert result.exit_code == 0, result.output
    table = rows()
    assert [(step, proposed) for step, proposed, _ in table] == [(s, s // 5) for s in range(50, 301, 50)]
    assert all(0 <= accepted <= proposed for _, proposed, accepted in table) and table[-1][2] > 0
    assert count_frames(trajectory) == 6
    assert [line.split(",")[1] for line in log.read_text().splitlines()[1:]] == [str(s) for s in range(50, 301, 50)]
    _one_line_error(runner.invoke(main, MD + ["--steps", "400", "--resume", "--temperature", "350"] + outputs),
                    "was run at 300 K; resume with --temperature 300")


@pytest.fixture()
def other_molecule_flow(tmp_path):
    """The shipped alanine dipeptide flow, relabelled as made for another molecule (its fingerprint differs)."""
    payload = torch.load(resolve_flow_path(ALA), map_location="cpu", weights_only=True)
    payload["metadata"]["fingerprint"] = "v2:" + "0" * 64
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "arguments, pattern",
    [
        (["sample", ALA, "--flow", ALA, "--iterations", "2", "--temperatures", "300,-5", "-o", "r.nc"], "every temperature must be a positive"),
        (["sample", ALA, "--flow", "OTHER", "--iterations", "2", "-o", "r.nc"], "made for 'alanine_dipeptide_vacuum'"),
        (["sample", "harmonic_oscillator", "--flow", ALA, "--iterations", "2", "-o", "r.nc"], "made for 'alanine_dipeptide_vacuum'"),
        (["sample", ALA, "--iterations", "2", "-o", "r.nc"], "--flow is required"),
        (["sample", ALA, "--flow", ALA, "--iterations", "2", "-o", "r.h5"], "must end in .nc"),
        (["sample", ALA, "--flow", ALA, "--iterations", "5", "--checkpoint-interval", "2", "-o", "r.nc"], "not a multiple"),
        (["sample", "--iterations", "5", "-o", "r.nc", "--resume"], "cannot resume: r.nc not found"),
        (["md", ALA, "--flow", "OTHER", "--steps", "10"], "made for 'alanine_dipeptide_vacuum'"),
        (["md", ALA, "--flow", ALA, "--steps", "10", "-o", "t.pdb"], "supported extensions are"),
        (["md", ALA, "--flow", ALA, "--steps", "10", "--resume"], "--resume needs --checkpoint FILE"),
        (["md", ALA, "--flow", ALA, "--steps", "10", "--timestep", "20"], "timestep 20 fs is too large"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, monkeypatch, other_molecule_flow, arguments, pattern):
    monkeypatch.chdir(tmp_path)
    arguments = [str(other_molecule_flow) if a == "OTHER" else a for a in arguments]
    _one_line_error(CliRunner().invoke(main, arguments), pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


@pytest.mark.parametrize(
    "arguments, pattern",
    [
        (["sample", ALA, "--flow", ALA, "--iterations", "0", "-o", "r.nc"], "0 is not in the range x>=1"),
        (["sample", ALA, "--flow", ALA, "--iterations", "2", "--temperature", "-5", "-o", "r.nc"], "-5.0 is not in the range x>0"),
        (["md", ALA, "--flow", ALA, "--steps", "0"], "0 is not in the range x>=1"),
        (["md", ALA, "--flow", ALA, "--steps", "10", "--temperature", "0"], "0.0 is not in the range x>0"),
    ],
)
def test_counts_and_temperatures_are_checked_by_click(tmp_path, monkeypatch, arguments, pattern):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2 and pattern in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_md_resume_with_another_interval_or_output_is_refused_and_cuts_nothing(tmp_path):
    """Resuming with a larger --interval used to cut the trajectory to step // interval frames and exit 0."""
    runner = CliRunner()
    trajectory, checkpoint = tmp_path / "md.dcd", tmp_path / "md.chk"
    outputs = ["-o", str(trajectory), "--checkpoint", str(checkpoint), "--checkpoint-interval", "100"]
    assert runner.invoke(main, MD + ["--steps", "100"] + outputs).exit_code == 0
    frames = count_frames(trajectory)
    interval = MD.index("--interval") + 1
    wider = MD[:interval] + [str(2 * int(MD[interval]))] + MD[interval + 1:]
    _one_line_error(runner.invoke(main, wider + ["--steps", "200", "--resume"] + outputs), "--interval")
    moved = ["-o", str(tmp_path / "other.dcd")] + outputs[2:]
    _one_line_error(runner.invoke(main, MD + ["--steps", "200", "--resume"] + moved), "--trajectory")
    assert count_frames(trajectory) == frames
