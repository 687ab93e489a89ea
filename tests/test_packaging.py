"""A non-editable install ships the systems' inputs and models and finds them."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    (path,) = out.glob("openmm_flowplugin-*.whl")
    return path


def test_wheel_contains_systems_inputs_and_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "openmm_flowplugin/_systems/alanine_dipeptide.py",
        "openmm_flowplugin/_systems/toy_potentials.py",
        "openmm_flowplugin/_systems/data/alanine-dipeptide.prmtop",
        "openmm_flowplugin/_systems/data/alanine-dipeptide.crd",
        "openmm_flowplugin/_systems/models/alanine_dipeptide_vacuum.pt",
    ):
        assert required in names, required
    model = zipfile.ZipFile(wheel).getinfo("openmm_flowplugin/_systems/models/alanine_dipeptide_vacuum.pt")
    assert model.file_size < 5 * 1024 * 1024


def test_installed_copy_finds_its_systems(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)], check=True)
    code = (
        "import openmm_flowplugin as p; from openmm_flowplugin import systems;"
        "assert p.__file__.startswith(%r), p.__file__;"
        "print(systems.get('alanine_dipeptide_vacuum').n_atoms, p.load_flow('alanine_dipeptide_vacuum').n_atoms)" % str(target)
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["22", "22"]
