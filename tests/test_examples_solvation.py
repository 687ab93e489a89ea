"""The solvation examples run (quick settings) and print what their docstrings promise."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_lj_chemical_potential_example_runs(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "lj_chemical_potential.py"), str(tmp_path), "--quick"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("alchemical MBAR", "neural TI, exact path", "neural TI, amortized (approximate)", "JZG equation of state"):
        assert line in result.stdout
    assert (tmp_path / "results.json").is_file() and (tmp_path / "neural_ti_path.nc").is_file()


@pytest.mark.slow
def test_methane_example_runs(tmp_path):
    pytest.importorskip("rdkit", reason="needs the solvation extra (RDKit, AmberTools)")
    result = subprocess.run([sys.executable, str(EXAMPLES / "solvation_methane.py"), str(tmp_path), "--quick", "--neural-ti"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ΔG_hyd(methane)" in result.stdout and (tmp_path / "vacuum.nc").is_file()
    assert "neural TI (exact path)" in result.stdout and (tmp_path / "neural_ti_path.nc").is_file()
