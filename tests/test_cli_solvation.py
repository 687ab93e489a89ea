"""`openmm-flowplugin solvation`: one-line errors for contradictory input, and a small run that resumes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from openmm_flowplugin.cli import main


def run(*args):
    return CliRunner().invoke(main, ["solvation", *args], standalone_mode=True)


@pytest.mark.parametrize("args, message", [
    ([], "either --preset or a molecule"),
    (["--preset", "lj", "--smiles", "C"], "either --preset or a molecule"),
    (["--preset", "lj", "--padding", "1.0"], "--padding applies to molecules"),
    (["--preset", "lj", "--temperature", "300"], "reduced temperature"),
    (["--preset", "lj", "--hydrogen-mass", "3"], "--hydrogen-mass does nothing for --preset lj"),
    (["--preset", "water", "--hydrogen-mass", "3"], "OpenMM keeps the masses of rigid water"),
    (["--preset", "methane", "--hydrogen-mass", "0"], "Invalid value for '--hydrogen-mass'"),
    (["--preset", "nope"], "Invalid value for '--preset'"),
    (["--preset", "lj", "--method", "exp"], "Invalid value for '--method'"),
    (["--preset", "lj", "--method", "neural-ti", "--nodes", "1,0.5"], "decrease from t = 1 to t = 0"),
    (["--preset", "lj", "--method", "neural-ti", "--nodes", "many"], "give a count"),
    (["--preset", "lj", "--method", "neural-ti", "--nodes", "1"], "at least 2 nodes"),
    (["--preset", "lj", "--nvt", "--cutoff", "1.0"], "--nvt, --cutoff apply to molecules in water"),
    (["--preset", "water", "--forcefield", "gaff"], "--forcefield do not apply to --preset water"),
    (["--prmtop", __file__, "--inpcrd", __file__, "--charge-method", "bcc"], "--charge-method do not apply to --prmtop"),
    (["--prmtop", __file__, "--inpcrd", __file__, "--padding", "1.0"], "--padding does not apply to --prmtop"),
    (["--smiles", "C", "--constraints", "some"], "Invalid value for '--constraints'"),
    (["--preset", "methane", "--density", "0.6"], "--density sets the state of --preset lj"),
])
def test_contradictory_input_is_one_line(tmp_path, args, message):
    result = run(*args, "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_molecule_is_built_for_its_hydrogen_mass_and_time_step(tmp_path, monkeypatch):
    from openmm_flowplugin.errors import InvalidInputError
    from openmm_flowplugin.freeenergy import presets

    built = []

    def builder(**options):  # stands in for AmberTools: records what the command asked for
        built.append(options)
        raise InvalidInputError("stop after the build")

    monkeypatch.setattr(presets, "_builder", lambda path: builder)
    for args in (["--preset", "methane", "--hydrogen-mass", "3", "--timestep", "4"], ["--smiles", "CCO", "--timestep", "1"],
                 ["--preset", "water"], ["--preset", "lj", "--timestep", "5"], ["--preset", "lj", "--density", "0.6", "--reduced-temperature", "1.5"],
                 ["--sdf", __file__]):
        result = run(*args, "-o", str(tmp_path / "out"))
        assert result.exit_code == 2 and "stop after the build" in result.output, result.output
    # an LJ preset's step is in its reduced units: --timestep goes to the run only
    assert built == [{"hydrogen_mass": 3.0, "timestep": 0.004}, {"smiles": "CCO", "timestep": 0.001}, {}, {},
                     {"density": 0.6, "reduced_temperature": 1.5}, {"sdf": __file__}]
    # the options that decide the Hamiltonian, each to the builder's keyword
    built.clear()
    result = run("--smiles", "CC(=O)[O-]", "--forcefield", "gaff", "--charge-method", "bcc", "--allow-charged", "--nvt", "--cutoff",
                 "1.0", "--switch-distance", "0.8", "--no-dispersion-correction", "--constraints", "none", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "stop after the build" in result.output, result.output
    assert built == [dict(smiles="CC(=O)[O-]", forcefield="gaff", charge_method="bcc", allow_charged=True, pressure=None,
                          nonbonded_cutoff=1.0, switch_distance=0.8, dispersion_correction=False, constraints=None)]


def test_a_molecule_the_builder_refuses_is_one_line(tmp_path, monkeypatch):
    """Invalid SMILES, a charged solute (naming the flag that builds it anyway) and missing AmberTools (naming the extra)."""
    pytest.importorskip("rdkit")
    small_molecules = pytest.importorskip("openmm_flowplugin._systems.small_molecules")
    for args, message in ((["--smiles", "C1CC"], "SMILES"), (["--smiles", "CC(=O)[O-]"], "--allow-charged")):
        result = run(*args, "-o", str(tmp_path / "out"))
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    monkeypatch.setattr(small_molecules, "_tool_dirs", lambda: [str(tmp_path)])  # no AmberTools there
    result = run("--smiles", "C", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "was not found" in result.output and "openmm_flowplugin[solvation]" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_lj_preset_runs_writes_results_and_refuses_other_settings(tmp_path, monkeypatch):
    from openmm_flowplugin._systems.lj_fluids import lj_fluid
    from openmm_flowplugin.freeenergy import presets

    real_builder = presets._builder
    small = lambda **options: lj_fluid(n_particles=36, density=0.5, cutoff=2.0, **options)  # noqa: E731 - the preset, small
    monkeypatch.setattr(presets, "_builder", lambda path: small if path == presets.PRESETS["lj"][0] else real_builder(path))
    out = tmp_path / "lj"
    common = ["--preset", "lj", "-o", str(out), "--equilibration", "2", "--platform", "Reference", "--no-progress"]
    args = [*common, "--md-steps", "10"]
    first = run(*args, "--iterations", "10")
    assert first.exit_code == 0, first.output
    assert "ΔG_solv" in first.output and (out / "results.json").is_file() and (out / "solvent.nc").is_file()
    assert (out / "results.md").read_text().strip() in first.output
    stored = json.loads((out / "results.json").read_text())
    assert stored["legs"]["solvent"]["n_iterations"] == 10 and stored["settings"]["timestep_ps"] > 0
    assert stored["settings"]["seed"] == 0 and stored["settings"]["lattice_seed"] == 0  # the root seed; the preset's own
    from openmm_flowplugin.freeenergy.lj_reference import jzg_excess_chemical_potential, lj_tail_correction_mu

    mu = stored["lj_chemical_potential"]  # μ_ex for the truncated potential, with the tail correction, and JZG's
    assert mu["mu_ex_truncated_epsilon"] == pytest.approx(stored["delta_g_epsilon"])
    assert mu["tail_correction_epsilon"] == pytest.approx(lj_tail_correction_mu(0.5, 2.0))
    assert mu["mu_ex_full_lj_epsilon"] == pytest.approx(mu["mu_ex_truncated_epsilon"] + mu["tail_correction_epsilon"])
    assert mu["jzg_full_lj_epsilon"] == pytest.approx(jzg_excess_chemical_potential(0.5, 1.2))
    assert mu["error_epsilon"] == pytest.approx(stored["error_kT"] * 1.2)  # kT = T* ε
    assert "Johnson–Zollweg–Gubbins" in (out / "results.md").read_text()
    extended = run(*args, "--iterations", "20")  # resumes: 10 more iterations
    assert extended.exit_code == 0, extended.output
    assert json.loads((out / "results.json").read_text())["legs"]["solvent"]["n_iterations"] == 20
    other = run(*common, "--md-steps", "11", "--iterations", "30")
    assert other.exit_code == 2 and "holds another run" in other.output


def test_neural_ti_method_runs_both_estimators(tmp_path, monkeypatch):
    from openmm_flowplugin._systems.lj_fluids import lj_fluid
    from openmm_flowplugin.freeenergy import presets

    # a dilute fluid: 4 nodes overlap well (>= 0.03, or the result is refused) even after 5 training steps
    monkeypatch.setattr(presets, "_builder", lambda path: lambda **options: lj_fluid(n_particles=36, density=0.3, cutoff=2.0))
    from openmm_flowplugin.freeenergy import neural_ti

    seeds_given = {}
    for name, key in (("sample_endpoints", "endpoints"), ("train_neural_ti", "training"), ("amortized_delta_f", "amortized")):
        def spy(*args, _real=getattr(neural_ti, name), _key=key, **kwargs):  # records the seed each step is given
            seeds_given[_key] = kwargs["seed"]
            return _real(*args, **kwargs)
        monkeypatch.setattr(neural_ti, name, spy)
    out = tmp_path / "nti"
    result = run("--preset", "lj", "-o", str(out), "--method", "neural-ti", "--nodes", "4", "--train-steps", "5", "--samples", "8",
                 "--iterations", "30", "--md-steps", "20", "--equilibration", "2", "--checkpoint-interval", "2",
                 "--platform", "Reference", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "exact path" in result.output and "amortized (approximate)" in result.output and "TI: trapezoid" in result.output
    stored = json.loads((out / "neural_ti.json").read_text())
    assert stored["nodes"] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0]) and len(stored["training_loss"]) == 5
    assert stored["seed"] == 0 and "seed" not in stored["settings"]  # --seed's default, recorded; the preset's own is
    assert stored["settings"]["lattice_seed"] == 0  # recorded as lattice_seed
    from openmm_flowplugin.freeenergy.neural_ti import derived_seeds

    assert stored["seeds"] == seeds_given == derived_seeds(0)  # endpoint MD, training and the amortized estimate: from the root
    for name in ("neural_ti_samples.npz", "neural_ti_model.pt", "neural_ti_path.nc", "neural_ti.md", "dudl.png", "neural_ti_overlap.png"):
        assert (out / name).is_file()
    assert (out / "neural_ti.md").read_text().strip() in result.output
    ti = stored["ti"]
    assert ti["profile"]["lambdas"] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0]) and ti["quadrature_error_kT"] is not None
    assert ti["delta_f_kT"] == pytest.approx(-np.trapezoid(ti["profile"]["mean"], ti["profile"]["lambdas"]))
    # dudl.png draws the stored ⟨∂u/∂t⟩ at the nodes, with its error bars
    from openmm_flowplugin.freeenergy._dudl import write_dudl_plot

    x, y, yerr = write_dudl_plot(out)["learned path (neural TI), dU/dt (lambda_sterics)"]
    assert x == ti["profile"]["lambdas"] and y == ti["profile"]["mean"] and yerr == pytest.approx(ti["profile"]["error"])
    again = run("--preset", "lj", "-o", str(out), "--method", "neural-ti", "--nodes", "4", "--train-steps", "5", "--samples", "8",
                "--iterations", "30", "--md-steps", "20", "--equilibration", "2", "--checkpoint-interval", "2",
                "--platform", "Reference", "--no-progress", "--seed", "5")
    assert again.exit_code == 0, again.output
    reused = json.loads((out / "neural_ti.json").read_text())["seeds"]  # stored samples and φ keep the seeds they were made with
    assert reused == dict(derived_seeds(0), amortized=derived_seeds(5)["amortized"]) != derived_seeds(0)


def test_both_routes_refuse_stored_neural_ti_files_of_other_counts_before_the_mbar_route(tmp_path):
    import torch

    out = tmp_path / "out"
    out.mkdir()
    torch.save({"history": [1.0, 0.5, 0.25]}, out / "neural_ti_model.pt")
    result = run("--preset", "lj", "--method", "both", "--train-steps", "5", "-o", str(out), "--no-progress")
    assert result.exit_code == 2 and "trained for 3 steps, not 5: give --train-steps 3" in result.output, result.output
    assert not (out / "solvent.nc").exists()  # refused before any MBAR work
    (out / "neural_ti_model.pt").unlink()  # an interrupted training's checkpoint past the steps asked for: the same
    torch.save({"settings": {}, "history": [1.0] * 7, "rng": "{}"}, out / "neural_ti_training.pt")
    result = run("--preset", "lj", "--method", "both", "--train-steps", "5", "-o", str(out), "--no-progress")
    assert result.exit_code == 2 and "at step 7 of a training longer than the 5 steps" in result.output, result.output
    assert not (out / "solvent.nc").exists()
