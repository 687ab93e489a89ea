"""The diffusion example runs (quick settings) and prints what its docstring promises."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_diffusion_fes_example_runs(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "diffusion_fes.py"), str(tmp_path / "mb"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("Müller–Brown, 10 iterations", "ΔF(A → B) reweighted", "ΔF(A → B) quadrature", "FES error"):
        assert line in result.stdout, result.stdout
    assert (tmp_path / "mb" / "fes.png").is_file() and (tmp_path / "mb" / "checkpoint.pt").is_file()


def test_alanine_fes_example_runs(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "diffusion_alanine_fes.py"), str(tmp_path / "ala"), "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("20 iterations", "energy evaluations (MD warm start included)", "ESS", "ΔF(C7eq → C7ax)"):
        assert line in result.stdout, result.stdout
    assert (tmp_path / "ala" / "fes.png").is_file() and (tmp_path / "ala" / "bias.xml").is_file()
