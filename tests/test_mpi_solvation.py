"""The solvation workflow's λ replica exchange over MPI (``mpirun -n 2``), through the ``solvation`` command.

A 36-particle Lennard-Jones fluid, sterics in 6 states (tests/mpi_scripts/solvation_cli.py). The Langevin
seeds derive from the root seed, the start iteration and the MPI rank, so 2 ranks draw other noise than one
process: the 2-rank ΔF must equal the single-process one within 4 combined standard errors, and the storage the
2 ranks wrote must resume in one process. Slow (about 2 minutes on 2 cores): ``--runslow``.
"""

import json
import math

import pytest

from test_mpi import _run, _skip_reason

SCRIPT = "solvation_cli.py"
ITERATIONS, EXTENDED = 120, 140

pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())), pytest.mark.slow]


def _solvation(output, iterations, ranks, cwd):
    from pathlib import Path

    script = Path(__file__).parent / "mpi_scripts" / SCRIPT
    return _run([output, str(iterations)], ranks, cwd, timeout=300, script=script)


def _leg(folder):
    return json.loads((folder / "results.json").read_text())["legs"]["solvent"]


def test_two_ranks_give_the_single_process_free_energy_and_resume_on_one(tmp_path):
    one = _solvation("one", ITERATIONS, 1, tmp_path)
    two = _solvation("two", ITERATIONS, 2, tmp_path)
    for run in (one, two):  # the table and the closing line, printed by rank 0 only
        assert run.stdout.count("# Solvation free energy of lj_fluid") == 1 and run.stdout.count("results in ") == 1
    leg_one, leg_two = _leg(tmp_path / "one"), _leg(tmp_path / "two")
    assert leg_one["n_iterations"] == leg_two["n_iterations"] == ITERATIONS
    combined = math.hypot(leg_one["error_kT"], leg_two["error_kT"])
    assert abs(leg_two["delta_f_kT"] - leg_one["delta_f_kT"]) < 4 * combined, (leg_one["delta_f_kT"], leg_two["delta_f_kT"], combined)
    assert combined < 0.3  # resolution of the comparison (kT): a run that mixes up states shifts ΔF by more
    assert all(leg_two["overlap"][k][k + 1] > 0.03 for k in range(5))  # replicas exchanged between all neighbours
    # The storage rank 0 wrote for the 2 ranks resumes in one process and is extended
    resumed = _solvation("two", EXTENDED, 1, tmp_path)
    assert resumed.stdout.count("# Solvation free energy") == 1
    assert _leg(tmp_path / "two")["n_iterations"] == EXTENDED
