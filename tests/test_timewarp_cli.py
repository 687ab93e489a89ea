"""``openmm-flowplugin train-timewarp``: pairs within trajectories, a resumed run equals the uninterrupted one, one-line errors.

Data: two short Langevin runs of alanine dipeptide in vacuum made by ``simulate`` (40 and 20 frames,
one .h5 and one .dcd). Controls: the pair count would be 58 if pairs spanned the two trajectories
(it must be 56 = 38 + 18); the resumed model must equal, weight by weight, a run trained in one go.
"""

import pytest
import torch
from click.testing import CliRunner

from openmm_flowplugin.cli import main
from openmm_flowplugin.flows import load_conditional_flow

SMALL = ["--layers", "2", "--hidden", "16", "--context-features", "8", "--batch-size", "16", "--no-progress"]


def _assert_user_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], result.output


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    folder = tmp_path_factory.mktemp("md")
    runner = CliRunner()
    paths = []
    for name, steps, seed in (("a.h5", 400, 1), ("b.dcd", 200, 2)):
        path = folder / name
        result = runner.invoke(main, ["simulate", "alanine_dipeptide_vacuum", "--steps", str(steps), "--interval", "10",
                                      "--equilibration-steps", "100", "--seed", str(seed), "-o", str(path)])
        assert result.exit_code == 0, result.output
        paths.append(str(path))
    return paths


def test_train_timewarp_pairs_stay_within_trajectories_and_resume_is_exact(trajectories, tmp_path):
    runner = CliRunner()
    data = [arg for path in trajectories for arg in ("-d", path)]
    base = ["train-timewarp", "alanine_dipeptide_vacuum", *data, "--lag", "2", *SMALL]
    result = runner.invoke(main, [*base, "--steps", "30", "-o", str(tmp_path / "whole.pt")])
    assert result.exit_code == 0, result.output
    assert "56 pairs from 2 trajectories" in result.output
    whole = load_conditional_flow(tmp_path / "whole.pt", cache=False)
    assert whole.metadata["lag_frames"] == 2 and whole.metadata["n_pairs"] == 56
    assert whole.metadata["system"] == "alanine_dipeptide_vacuum" and whole.n_atoms == 22

    checkpoint = str(tmp_path / "train.pt")
    first = runner.invoke(main, [*base, "--steps", "20", "--checkpoint", checkpoint, "--checkpoint-every", "10",
                                 "-o", str(tmp_path / "part.pt")])
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(main, [*base, "--steps", "30", "--checkpoint", checkpoint, "-o", str(tmp_path / "resumed.pt")])
    assert resumed.exit_code == 0, resumed.output
    assert "(resumed from" in resumed.output
    again = load_conditional_flow(tmp_path / "resumed.pt", cache=False)
    for (name, a), b in zip(whole.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-9), name  # summation order may differ in the last bits
    part = load_conditional_flow(tmp_path / "part.pt", cache=False)
    assert not torch.equal(part.state_dict()["log_step"], whole.state_dict()["log_step"])  # control: 20 steps differ from 30

    # a resume with other settings is refused in one line
    other = runner.invoke(main, [*base, "--steps", "40", "--learning-rate", "0.01", "--checkpoint", checkpoint,
                                 "-o", str(tmp_path / "other.pt")])
    _assert_user_error(other, "learning_rate")


def test_train_timewarp_user_errors_are_one_line(trajectories, tmp_path):
    import mdtraj
    import numpy as np

    runner = CliRunner()
    a = trajectories[0]
    out = str(tmp_path / "tw.pt")
    broken = mdtraj.load(a)
    broken.xyz[5, 3, 0] = np.nan
    broken.save(str(tmp_path / "nan.h5"))
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", str(tmp_path / "nan.h5"), "--lag", "1",
                                            "-o", out]), "1 frames with non-finite coordinates (the first: frame 5)")
    other = mdtraj.load(a)
    next(other.topology.atoms).element = mdtraj.element.sulfur  # as many atoms, another molecule
    other.save(str(tmp_path / "other.h5"))
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", str(tmp_path / "other.h5"), "--lag", "1",
                                            "-o", out]), "holds another molecule: its atom 0 is S, alanine_dipeptide_vacuum's is H")
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", a, "--lag", "40", "-o", out]),
                       "--lag 40 frames is too long")
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", str(tmp_path / "no.h5"), "--lag", "1",
                                            "-o", out]), "not found")
    _assert_user_error(runner.invoke(main, ["train-timewarp", "mueller_brown", "-d", a, "--lag", "1", "-o", out]), "has 22 atoms")
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", a, "--lag", "1", "--hidden", "a,b",
                                            "-o", out]), "--hidden")
    (tmp_path / "exists.pt").write_text("x")
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", a, "--lag", "1",
                                            "-o", str(tmp_path / "exists.pt")]), "already exists")


def test_md_takes_a_conditional_flow_one_proposal_per_jump(trajectories, tmp_path):
    runner = CliRunner()
    flow = str(tmp_path / "tw.pt")
    trained = runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", trajectories[0], "--lag", "2", *SMALL,
                                   "--steps", "5", "-o", flow])
    assert trained.exit_code == 0, trained.output
    md = ["md", "alanine_dipeptide_vacuum", "--flow", flow, "--steps", "40", "--interval", "20", "--jump-interval", "10",
          "--platform", "Reference", "--seed", "1", "--log", str(tmp_path / "log.csv")]
    result = runner.invoke(main, md)
    assert result.exit_code == 0, result.output
    assert "40 steps; flow jumps accepted" in result.output and "of 4 " in result.output  # a jump every 10 steps
    _assert_user_error(runner.invoke(main, md + ["--proposals", "2", "--overwrite"]), "one proposal per jump")


def test_a_transferable_flow_trains_on_two_molecules_and_runs_md_on_a_third(trajectories, tmp_path):
    runner = CliRunner()
    serine = str(tmp_path / "ser.h5")
    made = runner.invoke(main, ["simulate", "dipeptide_ser_vacuum", "--steps", "200", "--interval", "10", "--equilibration-steps", "100",
                                "--seed", "3", "-o", serine])
    assert made.exit_code == 0, made.output
    flow = str(tmp_path / "tw.pt")
    small = ["--layers", "2", "--hidden", "8", "--rounds", "1", "--batch-size", "8", "--no-progress", "--steps", "3"]
    trained = runner.invoke(main, ["train-timewarp", "--transferable", "-d", f"alanine_dipeptide_vacuum={trajectories[0]}",
                                   "-d", f"dipeptide_ser_vacuum={serine}", "--lag", "2", *small, "-o", flow])
    assert trained.exit_code == 0, trained.output
    assert "56 pairs from 2 trajectories of 2 molecule(s)" in trained.output  # 38 + 18
    model = load_conditional_flow(flow, cache=False)
    assert model.metadata["training_molecules"] == ["alanine_dipeptide_vacuum", "dipeptide_ser_vacuum"] and model.n_atoms is None
    result = runner.invoke(main, ["md", "dipeptide_thr_vacuum", "--flow", flow, "--steps", "20", "--interval", "10", "--jump-interval",
                                  "10", "--platform", "Reference", "--seed", "1", "--log", str(tmp_path / "log.csv")])
    assert result.exit_code == 0, result.output
    assert "of 2 " in result.output
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", f"dipeptide_ser_vacuum={serine}",
                                            "--lag", "2", *small, "-o", str(tmp_path / "x.pt")]), "need --transferable")


def test_an_internal_coordinate_proposal_trains_and_jumps_in_md(trajectories, tmp_path):
    runner = CliRunner()
    flow = str(tmp_path / "ic.pt")
    trained = runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", trajectories[0], "--lag", "2", "--internal",
                                   "torsions", "--hidden", "8", "--batch-size", "8", "--steps", "3", "--no-progress", "-o", flow])
    assert trained.exit_code == 0, trained.output
    model = load_conditional_flow(flow, cache=False)
    assert type(model).__name__ == "InternalCoordinateProposal" and model.config["moves"] == "torsions"
    result = runner.invoke(main, ["md", "alanine_dipeptide_vacuum", "--flow", flow, "--steps", "20", "--interval", "10",
                                  "--jump-interval", "5", "--platform", "Reference", "--seed", "1", "--log", str(tmp_path / "log.csv")])
    assert result.exit_code == 0, result.output
    assert "of 4 " in result.output
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", trajectories[0], "--lag", "2",
                                            "--internal", "all", "--transferable", "-o", str(tmp_path / "x.pt")]), "choose one")
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", trajectories[0], "--lag", "2",
                                            "--torsion", "backbone", "-o", str(tmp_path / "x.pt")]), "--torsion needs --internal torsions")


def test_a_backbone_mixture_trains_and_jumps_in_md(trajectories, tmp_path):
    runner = CliRunner()
    flow = str(tmp_path / "jumps.pt")
    trained = runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", trajectories[0], "--lag", "2", "--internal",
                                   "torsions", "--torsion", "backbone", "--components", "4", "--hidden", "8", "--batch-size", "8",
                                   "--steps", "3", "--no-progress", "-o", flow])
    assert trained.exit_code == 0, trained.output
    model = load_conditional_flow(flow, cache=False)
    assert model.config["torsions"] == [[4, 6, 8, 14], [6, 8, 14, 16]] and model.config["components"] == 4
    result = runner.invoke(main, ["md", "alanine_dipeptide_vacuum", "--flow", flow, "--steps", "20", "--interval", "10",
                                  "--jump-interval", "5", "--platform", "Reference", "--seed", "1", "--log", str(tmp_path / "log.csv")])
    assert result.exit_code == 0, result.output
    assert "of 4 " in result.output
    _assert_user_error(runner.invoke(main, ["train-timewarp", "alanine_dipeptide_vacuum", "-d", trajectories[0], "--lag", "2",
                                            "--internal", "torsions", "--torsion", "4,6,8", "-o", str(tmp_path / "x.pt")]),
                       "four comma-separated atom indices")


def test_fine_tuning_after_training_changes_the_model_and_refuses_several_molecules(trajectories, tmp_path):
    runner = CliRunner()
    common = ["train-timewarp", "alanine_dipeptide_vacuum", "-d", trajectories[0], "--lag", "2", "--internal", "torsions",
              "--torsion", "backbone", "--components", "3", "--hidden", "8", "--batch-size", "8", "--steps", "3", "--no-progress"]
    plain, tuned = str(tmp_path / "plain.pt"), str(tmp_path / "tuned.pt")
    assert runner.invoke(main, common + ["-o", plain]).exit_code == 0
    result = runner.invoke(main, common + ["--fine-tune-steps", "4", "--likelihood-weight", "0.5", "-o", tuned])
    assert result.exit_code == 0, result.output
    assert "fine-tuned 4 steps, acceptance of the training starts" in result.output
    before, after = (load_conditional_flow(path, cache=False).state_dict() for path in (plain, tuned))
    assert any(not torch.equal(before[name], after[name]) for name in before)  # the same likelihood training, then tuned
    _assert_user_error(runner.invoke(main, ["train-timewarp", "-d", f"alanine_dipeptide_vacuum={trajectories[0]}", "-d",
                                            f"dipeptide_ala_vacuum={trajectories[1]}", "--transferable", "--lag", "2",
                                            "--fine-tune-steps", "2", "-o", str(tmp_path / "t.pt")]), "--fine-tune-steps")
