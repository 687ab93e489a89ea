"""`openmm-flowplugin diffuse`: a small run writes its results and resumes; bad CVs, grids and basins are one line."""

import json

import numpy as np
import openmm
import pytest
import torch
from click.testing import CliRunner

from openmm_flowplugin.cli import main

MB = ["--system", "mueller_brown", "--cv", "x:x@0", "--cv", "y:y@0", "--grid", "x:-2,1.5", "--grid", "y:-1,2.5", "--hill-width", "0.25"]
SMALL = ["--batch-size", "16", "--samples", "64", "--steps", "10", "--no-progress"]


def run(*args):
    return CliRunner().invoke(main, ["diffuse", *args], standalone_mode=True)


def test_a_small_run_writes_results_and_resumes(tmp_path):
    out = tmp_path / "mb"
    basins = ["--basin", "A:-1.5,-0.2:1.0,2.0", "--basin", "B:0.2,1.2:-0.4,0.4"]
    first = run(*MB, *SMALL, *basins, "--iterations", "3", "-o", str(out))
    assert first.exit_code == 0, first.output
    for name in ("checkpoint.pt", "results.json", "results.md", "fes.png", "samples.npz", "bias.xml"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == 3 and "A -> B" in results["basins"] and "approximate" in results["well_tempered_estimate"]
    basin = results["basins"]["A -> B"]  # three tiny iterations: an estimate, or the reason there is none
    assert ("delta_f_kJ_per_mol" in basin) != ("not_estimated" in basin)
    if "delta_f_kJ_per_mol" in basin:  # three iterations cannot give reliable weights: the result must say so
        assert basin["reliable"] is False and "UNRELIABLE" in basin["diagnosis"] and "UNRELIABLE" in (out / "results.md").read_text()
    assert results["energy_evaluations"] == 3 * 16 + 64
    stored = np.load(out / "samples.npz")
    assert stored["log_weights"].shape == (64,) and stored["cv_values"].shape == (64, 2)
    fes = np.load(out / "fes.npz")  # the reweighted FES with its error bars, as the plot shows it
    assert fes["free_energy_kJ_per_mol"].shape == fes["error_kJ_per_mol"].shape == (50, 50) and list(fes["cv_names"]) == ["x", "y"]
    finite = np.isfinite(fes["free_energy_kJ_per_mol"])
    assert finite.any() and np.nanmin(fes["free_energy_kJ_per_mol"]) == 0.0 and not np.isnan(fes["error_kJ_per_mol"][finite]).any()
    force = openmm.XmlSerializer.deserialize((out / "bias.xml").read_text())
    assert isinstance(force, openmm.CustomCVForce) and force.getNumCollectiveVariables() == 2
    # a finished run's results are not replaced unless asked; asked, the run is extended in its folder
    again = run(*MB, *SMALL, *basins, "--iterations", "5", "-o", str(out))
    assert again.exit_code == 2 and "already holds results (results.json, results.md, fes.png" in again.output and "--overwrite" in again.output
    assert json.loads((out / "results.json").read_text())["iterations"] == 3
    fewer = run(*MB, *SMALL, *basins, "--iterations", "2", "--overwrite", "-o", str(out))
    assert fewer.exit_code == 2 and "holds 3 training iterations" in fewer.output and (out / "results.json").is_file(), fewer.output
    extended = run(*MB, *SMALL, *basins, "--iterations", "5", "--overwrite", "-o", str(out))
    assert extended.exit_code == 0, extended.output
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == 5 and results["energy_evaluations"] == 5 * 16 + 2 * 64
    (out / "results.json").unlink()  # as if killed during the analysis: its samples written, not its results.json
    resumed = run(*MB, *SMALL, *basins, "--iterations", "5", "-o", str(out))
    assert resumed.exit_code == 0 and json.loads((out / "results.json").read_text())["iterations"] == 5, resumed.output
    other = run("--system", "double_well_2d", *MB[2:], *SMALL, "--iterations", "6", "--overwrite", "-o", str(out))
    assert other.exit_code == 2 and "another system" in other.output
    assert json.loads((out / "results.json").read_text())["iterations"] == 5  # refused before anything was replaced
    assert len(np.load(out / "samples.npz")["log_weights"]) == 64
    foreign = tmp_path / "solvation"  # another command's results in the folder
    foreign.mkdir()
    (foreign / "results.json").write_text("{}")
    refused = run(*MB, *SMALL, "--iterations", "1", "-o", str(foreign))
    assert refused.exit_code == 2 and "already holds results (results.json)" in refused.output
    assert (foreign / "results.json").read_text() == "{}" and not (foreign / "checkpoint.pt").exists()


def test_samples_are_saved_before_an_analysis_that_fails(tmp_path):
    out = tmp_path / "narrow"  # a grid no sample falls in
    narrow = ["--system", "mueller_brown", "--cv", "x:x@0", "--cv", "y:y@0", "--grid", "x:-0.1,0.1", "--grid", "y:-0.1,0.1"]
    result = run(*narrow, "--hill-width", "0.05", *SMALL, "--samples", "8", "--iterations", "1", "-o", str(out))
    assert result.exit_code == 2 and "no weighted sample falls inside the bins" in result.output and "samples.npz" in result.output
    assert "a wider one (--grid) needs another folder" in result.output
    assert np.load(out / "samples.npz")["log_weights"].shape == (8,) and (out / "bias.xml").is_file(), result.output


def test_pool_training_adds_the_second_half_of_training_end_points_to_the_estimate(tmp_path):
    plain, pooled = tmp_path / "plain", tmp_path / "pooled"
    assert run(*MB, *SMALL, "--iterations", "4", "-o", str(plain)).exit_code == 0
    result = run(*MB, *SMALL, "--iterations", "4", "--pool-training", "-o", str(pooled))
    assert result.exit_code == 0, result.output
    without, with_ = (json.loads((folder / "results.json").read_text()) for folder in (plain, pooled))
    assert without["training_end_points_pooled"] == 0 and "pooled" not in without["estimator"]
    assert with_["training_end_points_pooled"] == 2 * 16 and "pooled" in with_["estimator"]  # iterations 2 and 3 of 0-3
    assert with_["energy_evaluations"] == without["energy_evaluations"] == 4 * 16 + 64  # no extra evaluation
    for folder, results in ((plain, without), (pooled, with_)):  # written either way: a folder never keeps another run's end points
        stored = np.load(folder / "training_end_points.npz")
        assert stored["log_weights"].shape == (32,) and stored["cv_values"].shape == (32, 2) and results["training_end_points_saved"] == 32
    assert np.array_equal(np.load(pooled / "samples.npz")["log_weights"], np.load(plain / "samples.npz")["log_weights"])
    assert "+ 32 training end points" in (pooled / "results.md").read_text()
    # a run whose checkpoint kept no end points (written before they were kept) says so and uses the samples alone
    state = torch.load(pooled / "checkpoint.pt", weights_only=True)
    del state["training_end_points"]
    torch.save(state, pooled / "checkpoint.pt")
    with pytest.warns(UserWarning, match="keeps no training end points"):
        again = run(*MB, *SMALL, "--iterations", "4", "--pool-training", "--overwrite", "-o", str(pooled))
    assert again.exit_code == 0, again.output
    results = json.loads((pooled / "results.json").read_text())
    assert results["training_end_points_pooled"] == 0 and "pooled" not in results["estimator"]
    assert results["training_end_points_saved"] == 0 and np.load(pooled / "training_end_points.npz")["log_weights"].shape == (0,)


@pytest.mark.parametrize("args, message", [
    (["--system", "mueller_brown", "--cv", "x:x@0"], "exactly two CVs"),
    (["--system", "mueller_brown", "--cv", "x:x@0", "--cv", "x:y@0"], "exactly two CVs"),
    (["--system", "mueller_brown", "--cv", "x:0,1,2,3,4", "--cv", "y:y@0"], "give 4 (torsion)"),
    (["--system", "mueller_brown", "--cv", "x:a,b", "--cv", "y:y@0"], "not an atom index"),
    (["--system", "mueller_brown", "--cv", "x:x@0", "--cv", "y:y@0"], "need a grid range: --grid x:LO,HI"),
    (["--system", "alanine_dipeptide_vacuum", "--cv", "phi:4,6,8,14", "--cv", "d:0,5", "--grid", "d:0,1"], "periodic on both axes or neither"),
    ([*MB, "--basin", "A:0,1:0,1"], "at least two --basin"),
    ([*MB, "--basin", "A:0,1", "--basin", "B:0,1:0,1"], "a basin is NAME:LO,HI:LO,HI"),
    ([*MB, "--grid", "z:0,1"], "name one of the CVs"),
    (["--system", "mueller_brown", "--cv", "x:x@0", "--cv", "y:y@3", "--grid", "x:-2,1.5", "--grid", "y:-1,2.5", "--hill-width", "0.25"],
     "reads atom 3"),
    (["--system", "alanine_dipeptide_vacuum", "--cv", "phi:4,6,8,14", "--cv", "psi:6,8,14,99"], "reads atom 99"),  # before any MD
    ([*MB, "--md-interval", "10"], "standardize internal coordinates, and this run is in cartesian coordinates"),
    (["--system", "alanine_dipeptide_vacuum", "--cv", "phi:4,6,8,14", "--cv", "psi:6,8,14,16", "--md-frames", "1"], "--md-frames"),
    (["--system", "alanine_dipeptide_vacuum", "--cv", "phi:4,6,8,14", "--cv", "psi:6,8,14,16", "--grid", "phi:0,1"], "drop the grid range"),
    (["--system", "mueller_brown", "--cv", "x:x@0", "--cv", "y:y@0", "--grid", "x:-2,1.5", "--grid", "y:-1,inf"], "must be finite"),
    ([*MB[:-1], "0.0005"], "more than 1,000,000: give wider hills"),
    ([*MB[:-1], "10"], "too wide for the grid"),
    ([*MB, "--sigma-max", "1e200"], "sigma_max <= 1e6"),
    ([*MB, "--sigma-max", "1000"], "--sigma-max, --max-gradient-norm"),  # every end point non-finite: a diverged run, one line
])
def test_bad_input_is_one_line(tmp_path, args, message):
    result = run(*args, *SMALL, "--iterations", "1", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    if "--sigma-max," not in message:  # refused before any work: no folder left behind (the diverged run had started)
        assert not (tmp_path / "out").exists()


def test_internal_coordinates_on_a_molecule(tmp_path):
    out = tmp_path / "ala"
    result = run("--system", "alanine_dipeptide_vacuum", "--cv", "phi:4,6,8,14", "--cv", "psi:6,8,14,16",  # coordinates auto
                 *SMALL, "--iterations", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["coordinates"] == "internal" and results["md_steps_for_standardization"] == 200 * 50
    assert results["settings"]["coordinates"]["kind"] == "internal"
    schedule = results["settings"]["schedule"]  # standardized units: the internal-coordinate defaults
    assert (schedule["sigma_max"], schedule["sigma_min"]) == (1.2, 0.05)
    # the torsions that turn phi and psi (Z-matrix rows 3 and 9) are standardized on at least --rotor-scale (default 1 rad)
    coordinates = results["settings"]["coordinates"]
    first_torsion = 21 + 20  # 21 bonds, 20 angles
    assert [coordinates["scale"][first_torsion + i] for i in (3, 9)] == [1.0, 1.0]
    # the standardization MD and its warm start count: 10,000 MD steps + 200 warm-start energies + 2 x 16 + 64
    assert results["energy_evaluations"] == 10_000 + 200 + 2 * 16 + 64
    energies = np.load(out / "samples.npz")["reduced_energies"]
    assert np.isfinite(energies).any() and np.nanmedian(energies[np.isfinite(energies)]) < 1e4  # molecules, not noise


def test_a_shorter_standardization_run_counts_its_steps_and_a_resume_with_another_is_refused(tmp_path):
    out, cvs = tmp_path / "ala", ["--system", "alanine_dipeptide_vacuum", "--cv", "phi:4,6,8,14", "--cv", "psi:6,8,14,16"]
    short = ["--md-frames", "20", "--md-interval", "10"]
    result = run(*cvs, *SMALL, *short, "--iterations", "1", "-o", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["md_steps_for_standardization"] == 200  # 20 frames x 10 steps
    assert results["energy_evaluations"] == 200 + 20 + 16 + 64  # MD, the warm start's energies, one iteration, the samples
    resumed = run(*cvs, *SMALL, *short, "--iterations", "2", "--overwrite", "-o", str(out))  # the same run resumes
    assert resumed.exit_code == 0 and json.loads((out / "results.json").read_text())["iterations"] == 2, resumed.output
    other = run(*cvs, *SMALL, "--md-frames", "20", "--md-interval", "20", "--iterations", "3", "--overwrite", "-o", str(out))  # another MD run
    assert other.exit_code == 2 and "standardized on another MD run" in other.output and "--md-interval" in other.output, other.output
    unwidened = run(*cvs, *SMALL, *short, "--rotor-scale", "0", "--iterations", "3", "--overwrite", "-o", str(out))
    assert unwidened.exit_code == 2 and "another rotor spread" in unwidened.output and "--rotor-scale" in unwidened.output, unwidened.output


def test_constrained_systems_are_refused():
    import dataclasses

    from openmm_flowplugin import systems
    from openmm_flowplugin.diffusion import DiffusionSampler
    from openmm_flowplugin.errors import InvalidInputError

    ala2 = systems.get("alanine_dipeptide_vacuum")
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(ala2.system))
    system.addConstraint(0, 1, 0.109)
    with pytest.raises(InvalidInputError, match="1 constraints.*constraints=None"):
        DiffusionSampler(dataclasses.replace(ala2, system=system))


def test_auto_coordinates_are_internal_for_a_molecule_only():
    from openmm_flowplugin import systems
    from openmm_flowplugin.diffusion.workflow import parse_cv, resolved_coordinates
    from openmm_flowplugin.errors import InvalidInputError

    ala2, mb = systems.get("alanine_dipeptide_vacuum"), systems.get("mueller_brown")
    torsions = [parse_cv("phi:4,6,8,14")[1], parse_cv("psi:6,8,14,16")[1]]
    assert resolved_coordinates(ala2, "auto", torsions) == "internal"
    assert resolved_coordinates(ala2, "auto", [parse_cv("x:x@0")[1], torsions[0]]) == "cartesian"  # no positions in internal ones
    assert resolved_coordinates(mb, "auto", [parse_cv("x:x@0")[1], parse_cv("y:y@0")[1]]) == "cartesian"
    assert resolved_coordinates(ala2, "cartesian", torsions) == "cartesian"
    with pytest.raises(InvalidInputError, match="'auto', 'cartesian' or 'internal'"):
        resolved_coordinates(ala2, "zmatrix", torsions)


def test_a_cartesian_run_made_before_auto_resumes_in_its_own_coordinates(tmp_path):
    out, cvs = tmp_path / "ala", ["--system", "alanine_dipeptide_vacuum", "--cv", "phi:4,6,8,14", "--cv", "psi:6,8,14,16"]
    assert run(*cvs, *SMALL, "--coordinates", "cartesian", "--iterations", "1", "-o", str(out)).exit_code == 0
    resumed = run(*cvs, *SMALL, "--iterations", "2", "--overwrite", "-o", str(out))  # auto: the checkpoint's space
    assert resumed.exit_code == 0, resumed.output
    results = json.loads((out / "results.json").read_text())
    assert results["coordinates"] == "cartesian" and results["iterations"] == 2
    other = run(*cvs, *SMALL, "--coordinates", "internal", "--iterations", "3", "--overwrite", "-o", str(out))  # another space
    assert other.exit_code == 2 and "--coordinates cartesian" in other.output, other.output


@pytest.mark.parametrize("hill_width", [0.0, float("nan")])
def test_the_python_workflow_refuses_a_bad_hill_width(tmp_path, hill_width):
    from openmm_flowplugin import systems
    from openmm_flowplugin.diffusion.workflow import diffusion_free_energy_surface
    from openmm_flowplugin.errors import InvalidInputError
    from openmm_flowplugin.geometry import CartesianComponent

    cvs = {"x": CartesianComponent(0, "x"), "y": CartesianComponent(0, "y")}
    with pytest.raises(InvalidInputError, match="hill_width must be a finite number > 0"):
        diffusion_free_energy_surface(systems.get("mueller_brown"), cvs, tmp_path / "out", grid_ranges={"x": (-2, 1.5), "y": (-1, 2.5)},
                                      hill_width=hill_width, coordinates="cartesian")
