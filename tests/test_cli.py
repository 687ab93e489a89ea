"""The command-line interface: commands work, user errors are one line and a non-zero exit."""

import pytest
from click.testing import CliRunner

from openmm_flowplugin.cli import main


@pytest.fixture()
def runner():
    return CliRunner()


def _assert_user_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], result.output


def test_systems_lists_registry(runner):
    result = runner.invoke(main, ["systems"])
    assert result.exit_code == 0
    assert "alanine_dipeptide_vacuum" in result.output and "mueller_brown" in result.output


def test_unknown_system_is_one_line(runner, tmp_path):
    result = runner.invoke(main, ["simulate", "alanin", "--steps", "10", "--interval", "5", "-o", str(tmp_path / "x.h5")])
    _assert_user_error(result, "Unknown system 'alanin'")


def test_missing_checkpoint_is_one_line(runner, tmp_path):
    result = runner.invoke(main, ["evaluate", str(tmp_path / "missing.pt")])
    _assert_user_error(result, "not found")


def test_simulate_train_evaluate_round_trip(runner, tmp_path):
    data = tmp_path / "md.h5"
    result = runner.invoke(main, ["simulate", "alanine_dipeptide_vacuum", "--steps", "2000", "--interval", "20", "--seed", "1", "-o", str(data)])
    assert result.exit_code == 0, result.output
    assert data.is_file()
    # refuses to overwrite what is saved
    before = data.read_bytes()
    result = runner.invoke(main, ["simulate", "alanine_dipeptide_vacuum", "--steps", "2000", "--interval", "20", "-o", str(data)])
    _assert_user_error(result, "already exists")
    assert data.read_bytes() == before

    checkpoint = tmp_path / "flow.pt"
    result = runner.invoke(
        main,
        ["train", "alanine_dipeptide_vacuum", "-d", str(data), "-o", str(checkpoint), "--ml-steps", "5", "--kl-steps", "2",
         "--blocks", "1", "--hidden", "16", "--batch-size", "16", "--ess-samples", "100"],
    )
    assert result.exit_code == 0, result.output
    assert "importance-sampling ESS" in result.output and checkpoint.is_file()

    plot = tmp_path / "rama.png"
    result = runner.invoke(main, ["evaluate", str(checkpoint), "-n", "200", "--plot", str(plot), "--energy-plot", str(tmp_path / "e.png"), "-d", str(data)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_shape_mismatch_is_one_line(runner, tmp_path):
    data = tmp_path / "toy.h5"
    assert runner.invoke(main, ["simulate", "double_well_2d", "--steps", "200", "--interval", "20", "-o", str(data)]).exit_code == 0
    result = runner.invoke(main, ["train", "alanine_dipeptide_vacuum", "-d", str(data), "-o", str(tmp_path / "f.pt")])
    _assert_user_error(result, "has 1 atoms but alanine_dipeptide_vacuum has 22")


def test_checkpoint_for_other_system_is_one_line(runner, tmp_path):
    result = runner.invoke(main, ["evaluate", "alanine_dipeptide_vacuum", "--system", "mueller_brown", "-n", "10"])
    _assert_user_error(result, "made for 'alanine_dipeptide_vacuum'")


def test_internal_bug_keeps_its_traceback(runner, monkeypatch):
    """Only the package's user-error types become one line: a bug (here a TypeError deep inside) is not disguised."""
    from openmm_flowplugin import systems

    def broken():
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(systems, "describe", broken)
    result = runner.invoke(main, ["systems"])
    assert result.exit_code != 2 and isinstance(result.exception, TypeError)
