"""Every bad CLI input gets one line naming the option and the fix, exit status 2, before any long work."""

import pytest
from click.testing import CliRunner

from openmm_flowplugin.cli import main


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def files(tmp_path):
    empty = tmp_path / "empty.dcd"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.dcd"
    garbage.write_bytes(b"this is not a trajectory" * 10)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"empty": str(empty), "garbage": str(garbage), "file_as_dir": str(a_file / "out.h5"), "tmp": tmp_path}


def _one_line(result, *patterns):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert all(p in lines[0] for p in patterns), result.output
    return lines


SIM = ["simulate", "alanine_dipeptide_vacuum", "--interval", "10"]


@pytest.mark.parametrize("args, patterns", [
    (SIM + ["--steps", "0", "-o", "{tmp}/x.dcd"], ["--steps", "0"]),
    (SIM + ["--steps", "-5", "-o", "{tmp}/x.dcd"], ["--steps"]),
    (SIM + ["--steps", "2.5", "-o", "{tmp}/x.dcd"], ["--steps", "2.5"]),
    (SIM + ["--steps", "20", "--timestep", "0", "-o", "{tmp}/x.dcd"], ["--timestep"]),
    (SIM + ["--steps", "20", "--timestep", "inf", "-o", "{tmp}/x.dcd"], ["timestep"]),
    (SIM + ["--steps", "20", "--timestep", "10", "-o", "{tmp}/x.dcd"], ["timestep"]),
    (SIM + ["--steps", "20", "-o", "{tmp}/x.pdb"], [".dcd"]),
    (SIM + ["--steps", "20", "-o", "{file_as_dir}"], ["not a directory"]),
    (["train", "alanine_dipeptide_vacuum", "-d", "{empty}", "-o", "{tmp}/f.pt"], ["empty.dcd"]),
    (["train", "alanine_dipeptide_vacuum", "-d", "{garbage}", "-o", "{tmp}/f.pt"], ["garbage.dcd"]),
    (["train", "alanine_dipeptide_vacuum", "-d", "{tmp}/missing.dcd", "-o", "{tmp}/f.pt"], ["missing.dcd"]),
    (["train", "alanine_dipeptide_vacuum", "-d", "{garbage}", "--batch-size", "0", "-o", "{tmp}/f.pt"], ["--batch-size"]),
    (["evaluate", "alanine_dipeptide_vacuum", "--samples", "0"], ["--samples"]),
    (["evaluate", "alanine_dipeptide_vacuum", "--samples", "ten"], ["--samples", "ten"]),
    (["sample", "alanine_dipeptide_vacuum", "--flow", "alanine_dipeptide_vacuum", "--iterations", "0", "-o", "{tmp}/r.nc"], ["--iterations"]),
    (["md", "alanine_dipeptide_vacuum", "--flow", "alanine_dipeptide_vacuum", "--steps", "0"], ["--steps"]),
])
def test_bad_input_is_refused_in_one_message(runner, files, args, patterns):
    args = [a.format(**files) for a in args]
    _one_line(runner.invoke(main, args), *patterns)
    assert not any(p.name.startswith(("x.", "f.", "r.")) for p in files["tmp"].iterdir())  # nothing was written


@pytest.mark.parametrize("args, patterns", [
    (["md", "alanine_dipeptide_vacuum", "--flow", "alanine_dipeptide_vacuum", "--steps", "10", "--timestep", "nan"], ["--timestep", "finite"]),
    (["md", "alanine_dipeptide_vacuum", "--flow", "alanine_dipeptide_vacuum", "--steps", "10", "--friction", "inf"], ["--friction", "finite"]),
    (["sample", "alanine_dipeptide_vacuum", "--flow", "alanine_dipeptide_vacuum", "--temperature", "nan", "-o", "{tmp}/r.nc"], ["--temperature", "finite"]),
    (["md", "alanine_dipeptide_vacuum", "--flow", "alanine_dipeptide_vacuum", "--steps", "10", "--platform", "Foo"], ["platform 'Foo'"]),
    (["train", "alanine_dipeptide_vacuum", "-d", "{garbage}", "--hidden", "a,b", "-o", "{tmp}/f.pt"], ["--hidden"]),
])
def test_non_finite_values_unknown_platforms_and_bad_widths_are_one_line(runner, files, args, patterns):
    args = [a.format(**files) for a in args]
    _one_line(runner.invoke(main, args), *patterns)
