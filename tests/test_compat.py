"""Data written by the flat layout (0.1, commit 42e7776) still loads: openmmtools storage and System XML.

The fixtures in tests/data/legacy_v0 were made by make_fixtures.py with that version. Each check runs
in a fresh process, where nothing has imported the new modules yet: the old module paths named in
the files must resolve by themselves.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

LEGACY = Path(__file__).parent / "data" / "legacy_v0"


def _run(code, cwd):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # third-party banners also go to stdout: keep the lines the snippet marked
    return [line[len("RESULT "):] for line in result.stdout.splitlines() if line.startswith("RESULT ")]


def test_old_module_paths_are_the_new_objects():
    from openmm_flowplugin import mcmc, proposals
    from openmm_flowplugin import moves as old_moves
    from openmm_flowplugin.forces import python_force as new_python_force
    from openmm_flowplugin.forces.python_force import TorchComputation

    assert old_moves.FlowMCMove is mcmc.FlowMCMove
    assert TorchComputation is new_python_force.TorchComputation
    from openmm_flowplugin.checkpoints import load_flow
    from openmm_flowplugin.flows import load_flow as new_load_flow

    assert load_flow is new_load_flow
    from openmm_flowplugin.proposals import GaussianProposal

    assert GaussianProposal is proposals.gaussian.GaussianProposal
    with pytest.raises(AttributeError, match="has no attribute"):
        old_moves.NoSuchThing  # noqa: B018


def test_simulate_stays_callable_after_old_module_import():
    import openmm_flowplugin
    import openmm_flowplugin.simulate  # the old module path shadows the function attribute

    assert callable(openmm_flowplugin.simulate)


def test_legacy_system_xml_evaluates_in_fresh_process():
    """A System whose PythonForces pickled flat-layout classes (flows, forces, python_force) gives the old numbers."""
    expected = json.loads((LEGACY / "python_force_system_expected.json").read_text())
    out = _run(
        f"""
        import json
        import numpy as np
        import openmm
        system = openmm.XmlSerializer.deserialize(open("python_force_system.xml").read())
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions({expected["positions_nm"]!r})
        context.setParameter("k", {expected["k"]!r})
        state = context.getState(getEnergy=True, getForces=True)
        from openmm_flowplugin import parameter_derivative
        print("RESULT", json.dumps([state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value.tolist(),
                                    parameter_derivative(context, "k")]))
        """,
        cwd=LEGACY,
    )
    energy, forces, derivative = json.loads(out[-1])
    assert energy == pytest.approx(expected["energy_kj_mol"], rel=1e-6)
    np.testing.assert_allclose(forces, expected["forces_kj_mol_nm"], rtol=1e-5, atol=1e-4)
    assert derivative == pytest.approx(expected["dU_dk"], rel=1e-12)


def test_legacy_storage_reads_and_resumes_in_fresh_process(tmp_path):
    for name in ("replica_exchange.nc", "replica_exchange_checkpoint.nc"):
        shutil.copy(LEGACY / name, tmp_path / name)
    out = _run(
        """
        import openmm
        from openmmtools import cache
        from openmmtools.multistate import MultiStateReporter, ReplicaExchangeSampler
        reporter = MultiStateReporter("replica_exchange.nc", open_mode="r")
        moves = reporter.read_mcmc_moves()
        reporter.close()
        flow_moves = [m.move_list[-1] for m in moves]
        print("RESULT", type(flow_moves[0]).__module__, [m.n_proposed for m in flow_moves])
        sampler = ReplicaExchangeSampler.from_storage(MultiStateReporter("replica_exchange.nc", open_mode="a"))
        platform = openmm.Platform.getPlatformByName("Reference")
        sampler.energy_context_cache = cache.ContextCache(platform=platform)
        sampler.sampler_context_cache = cache.ContextCache(platform=platform)
        sampler.extend(2)
        print("RESULT", [m.move_list[-1].n_proposed for m in sampler._mcmc_moves], sampler.iteration)
        sampler._reporter.close()
        """,
        cwd=tmp_path,
    )
    lines = out
    assert lines[-2] == "openmm_flowplugin.mcmc.flow_move [12, 12]"
    assert lines[-1] == "[20, 20] 5"
