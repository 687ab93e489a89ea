"""Importing the package (and every public name) prints nothing: no pymbar/JAX banners, no warnings."""

import subprocess
import sys

import pytest

import openmm_flowplugin

SUBPACKAGES = ["analysis", "bridge", "flows", "forces", "geometry", "integrators", "mcmc", "proposals", "simulation", "systems"]


def _run(code):
    # -W default: show every warning once, as a user's interpreter would (pytest's filters do not apply here).
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(
    "statement",
    [
        "import openmm_flowplugin",
        "from openmm_flowplugin import FlowMCMove, FlowMCIntegrator, OpenMMEnergy, load_flow, systems",
        "from openmm_flowplugin import " + ", ".join(openmm_flowplugin._EXPORTS),
        "; ".join(f"import openmm_flowplugin.{name}" for name in SUBPACKAGES),
    ],
    ids=["package", "main-names", "all-exports", "subpackages"],
)
def test_import_prints_nothing(statement):
    result = _run(statement)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", f"{statement!r} printed to stdout:\n{result.stdout}"
    assert result.stderr == "", f"{statement!r} printed to stderr:\n{result.stderr}"


def test_thermodynamic_state_prints_nothing():
    # MolecularSystem.thermodynamic_state() imports openmmtools, whose package import loads pymbar.
    result = _run(
        "from openmm_flowplugin import systems; systems.get('harmonic_oscillator').thermodynamic_state()"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_the_check_can_fail():
    # Control: a statement that does print is caught by the same capture.
    result = _run("import logging; logging.getLogger('pymbar.timeseries').warning('banner')")
    assert result.stderr.strip() == "banner"
