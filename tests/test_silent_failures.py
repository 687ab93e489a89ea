"""Regression tests for failures that used to be silent (issue: "No silent failures").

Each test names the item it covers; each fails on the flat-layout code (0.1) it was written against.
"""

import copy
import subprocess
import sys
import textwrap

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit
from openmmtools import cache
from openmmtools.utils import deserialize, serialize

from openmm_flowplugin import systems
from openmm_flowplugin.flows import BoltzmannGenerator, load_flow, save_flow
from openmm_flowplugin.mcmc import FlowMCMove
from openmm_flowplugin.mcmc.flow_move import BrokenStateError
from openmm_flowplugin.proposals import GaussianProposal, ProposalBuffer
from openmm_flowplugin.proposals.protocol import check_proposal_fingerprint, proposal_version
from openmm_flowplugin.proposals.storage import ProposalStateError, proposal_state


def reference_cache():
    return cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))


def _run(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [line[7:] for line in result.stdout.splitlines() if line.startswith("RESULT ")]


@pytest.fixture(scope="module")
def ala():
    return systems.get("alanine_dipeptide_vacuum")


def _tiny_flow(ala, seed=0):
    torch.manual_seed(seed)
    x0 = torch.as_tensor(ala.positions_nm)[None] + 0.003 * torch.randn(32, 22, 3, dtype=torch.float64)
    return BoltzmannGenerator.for_system(ala, x0, n_blocks=1, hidden=(8,))


# ---------------------------------------------------------------------------- item 2: stored state after training
def test_move_refuses_to_store_a_checkpoint_whose_weights_changed(ala, tmp_path):
    save_flow(_tiny_flow(ala), tmp_path / "flow.pt")
    flow = load_flow(tmp_path / "flow.pt")
    move = FlowMCMove(flow, seed=0)
    assert proposal_state(flow)["checkpoint_path"] == str(tmp_path / "flow.pt")
    with torch.no_grad():
        next(flow.parameters()).add_(0.1)  # trained in place
    with pytest.raises(ProposalStateError, match="changed since it was loaded"):
        serialize(move)
    save_flow(flow, tmp_path / "retrained.pt")  # the fix the message names
    assert serialize(move)["proposal"]["checkpoint_path"] == str(tmp_path / "retrained.pt")


# ---------------------------------------------------------------------------- item 3: random streams
def test_flow_move_with_a_seed_is_reproducible_whatever_torch_global_state(ala, tmp_path):
    save_flow(_tiny_flow(ala), tmp_path / "flow.pt")
    chains = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        flow = load_flow(tmp_path / "flow.pt", cache=False)
        move = FlowMCMove(flow, n_proposals=20, seed=11, sample_batch_size=8)
        sampler_state = ala.sampler_state()
        for _ in range(3):
            move.apply(ala.thermodynamic_state(), sampler_state, reference_cache())
        chains.append((np.array(sampler_state.positions._value), move.statistics))
    np.testing.assert_array_equal(chains[0][0], chains[1][0])
    assert chains[0][1] == chains[1][1] and chains[0][1]["n_accepted"] > 0


def test_resumed_gaussian_proposal_continues_its_stream_across_processes(tmp_path):
    """0.1 stored the seed, not the generator state: a proposal restored in a new process replayed its draws."""
    state_file = tmp_path / "state.json"
    first = _run(f"""
        import json
        from openmm_flowplugin.proposals import GaussianProposal
        proposal = GaussianProposal([[0.0, 0.0, 0.0]], 0.1, seed=3)
        x, _ = proposal.sample(4)
        open({str(state_file)!r}, "w").write(json.dumps(proposal.__getstate__()))
        print("RESULT", json.dumps(x.numpy().ravel().tolist()))
        """)
    second = _run(f"""
        import json
        from openmm_flowplugin.proposals import GaussianProposal
        proposal = GaussianProposal.__new__(GaussianProposal)
        proposal.__setstate__(json.loads(open({str(state_file)!r}).read()))
        x, _ = proposal.sample(4)
        print("RESULT", json.dumps(x.numpy().ravel().tolist()))
        """)
    before, after = np.array(eval(first[0])), np.array(eval(second[0]))
    assert not np.isin(after, before).any()


def test_moves_copied_and_restored_in_other_processes_never_collide(tmp_path):
    """Per-state copies and a move restored from storage in a fresh process draw disjoint proposals."""
    ho = systems.get("harmonic_oscillator")
    move = FlowMCMove(GaussianProposal(ho.positions_nm, ho.reference.std, seed=1), n_proposals=4, seed=5, sample_batch_size=4)
    copies = [copy.deepcopy(move) for _ in range(2)]
    for c in copies:
        c.apply(ho.thermodynamic_state(), ho.sampler_state(), reference_cache())
    stored = serialize(copies[1])
    draws_here = np.concatenate([c._proposal_buffer().draws(0, 8)[0].ravel() for c in copies])
    out = _run(f"""
        import json
        from openmmtools.utils import deserialize
        move = deserialize({stored!r})
        print("RESULT", json.dumps([list(move.stream), move.n_drawn]))
        print("RESULT", json.dumps(move._proposal_buffer().draws(move.n_drawn, 4)[0].ravel().tolist()))
        """)
    stream, n_drawn = eval(out[0])
    assert tuple(stream) == (1,) and n_drawn == 4
    resumed_draws = np.array(eval(out[1]))
    np.testing.assert_array_equal(resumed_draws, copies[1]._proposal_buffer().draws(4, 4)[0].ravel())  # continues, same stream
    assert not np.isin(resumed_draws, draws_here[:4 * 3]).any()  # neither copy 0's draws nor copy 1's first four


def test_the_first_copy_of_a_restored_move_continues_its_stream_and_the_original_branches_off():
    """openmmtools' from_storage deep-copies each stored move before use: that copy must continue the stored stream
    (the resumed run draws what the uninterrupted one would), and no two objects may ever share a draw."""
    ho = systems.get("harmonic_oscillator")
    move = FlowMCMove(GaussianProposal(ho.positions_nm, ho.reference.std, seed=1), n_proposals=3, seed=5, sample_batch_size=4)
    running = copy.deepcopy(copy.deepcopy(move))  # stream (0, 0), as a per-state copy of a copy
    running.apply(ho.thermodynamic_state(), ho.sampler_state(), reference_cache())
    restored = deserialize(serialize(running))  # what openmmtools reads back
    continuing = copy.deepcopy(restored)
    assert (continuing.stream, continuing.n_drawn) == (running.stream, 3)
    assert restored.stream == running.stream + (running._n_copies,) and restored.n_drawn == 0  # an unused child stream
    later = copy.deepcopy(continuing)  # the continuing move's next child skips the one the original took
    assert later.stream == running.stream + (running._n_copies + 1,)
    again = copy.deepcopy(restored)  # only the first copy continues; further copies branch off as usual
    assert again.stream == restored.stream + (0,)
    streams = [m.stream for m in (continuing, restored, later, again)]
    assert len(set(streams)) == len(streams)
    fresh = copy.deepcopy(move)  # control: a move that was not restored gives its copies new streams
    assert fresh.stream != move.stream and fresh.n_drawn == 0


# ---------------------------------------------------------------------------- item 4: versions of any proposal
class Wrapper:
    """A plain (non-Module) proposal wrapping a torch module: 0.1 never noticed in-place training."""

    rigid_invariant = False

    def __init__(self, module):
        self.module = module
        self.n_atoms = 1

    def sample(self, n, generator=None):
        x = self.module.mean + 0.1 * torch.randn(n, 1, 3, dtype=torch.float64, generator=generator)
        return x, self.log_prob(x)

    def log_prob(self, x):
        return -0.5 * (((x - self.module.mean) / 0.1) ** 2).sum((-2, -1))


class Mean(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(1, 3, dtype=torch.float64))


def test_buffer_refreshes_for_a_wrapped_module_trained_in_place():
    proposal = Wrapper(Mean())
    buffer = ProposalBuffer(proposal, batch_size=32, seed=0)
    buffer.take(1)
    with torch.no_grad():
        proposal.module.mean += 5.0
    x, log_q = buffer.take(8)
    np.testing.assert_allclose(log_q, proposal.log_prob(torch.from_numpy(x)).detach().numpy())


def test_proposal_without_a_version_is_refused():
    class Opaque:
        n_atoms = 1

        def sample(self, n, generator=None):
            return torch.zeros(n, 1, 3, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)

        def log_prob(self, x):
            return torch.zeros(len(x), dtype=torch.float64)

    with pytest.raises(TypeError, match="`version`"):
        ProposalBuffer(Opaque(), batch_size=4)
    declared = Opaque()
    declared.version = 0
    assert proposal_version(declared) == ("declared", 0)


# ---------------------------------------------------------------------------- item 5: fingerprint with bonds
def test_fingerprint_tells_an_isomer_with_the_same_atom_order_apart(ala):
    flow = load_flow("alanine_dipeptide_vacuum")
    check_proposal_fingerprint(flow, ala.system, ala.topology)  # the right molecule passes
    isomer = copy.deepcopy(ala.system)
    bonds = next(f for f in isomer.getForces() if isinstance(f, openmm.HarmonicBondForce))
    i, j, length, k = bonds.getBondParameters(0)
    other = next(a for a in range(22) if a not in (i, j))
    bonds.setBondParameters(0, i, other, length, k)  # same atoms, elements, masses and order; another bond graph
    with pytest.raises(ValueError, match="another molecule"):
        check_proposal_fingerprint(flow, isomer, ala.topology)


def test_topology_without_bonds_is_not_refused(ala):
    """A PDB without CONECT records gives a Topology without bonds: the bonds come from the System."""
    bare = app.Topology()
    chain = bare.addChain()
    residue = bare.addResidue("MOL", chain)
    for atom in ala.topology.atoms():
        bare.addAtom(atom.name, atom.element, residue)
    check_proposal_fingerprint(load_flow("alanine_dipeptide_vacuum"), ala.system, bare)


# ---------------------------------------------------------------------------- item 6: broken current state
@pytest.mark.parametrize("all_nan", [True, False])  # one NaN coordinate made OpenMM's CPU platform raise its own exception
def test_nan_current_state_raises_instead_of_rejecting_forever(all_nan):
    from openmmtools import cache

    ho = systems.get("harmonic_oscillator")
    move = FlowMCMove(GaussianProposal(ho.positions_nm, ho.reference.std, seed=1), n_proposals=3, seed=2)
    sampler_state = ho.sampler_state()
    if all_nan:
        sampler_state.positions = sampler_state.positions * float("nan")
    else:
        positions = sampler_state.positions.value_in_unit(unit.nanometer).copy()
        positions[0, 0] = np.nan
        sampler_state.positions = positions * unit.nanometer
    context_cache = reference_cache() if all_nan else cache.ContextCache(platform=openmm.Platform.getPlatformByName("CPU"))
    with pytest.raises(BrokenStateError, match="proposal is not at fault"):
        move.apply(ho.thermodynamic_state(), sampler_state, context_cache)
    assert move.n_proposed == 0


# ---------------------------------------------------------------------------- item 7: crafted storage
@pytest.mark.parametrize("crafted", [
    {"checkpoint_path": "PATH", "checkpoint_sha256": "SHA", "loader": "runpy:run_path"},
    {"module": "os", "class": "remove", "state": {}},
    {"module": "builtins", "class": "eval", "state": {}},
])
def test_crafted_storage_cannot_name_code_to_run(tmp_path, crafted):
    from openmm_flowplugin.flows.checkpoints import file_sha256

    script = tmp_path / "payload.py"
    marker = tmp_path / "ran"
    script.write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    ho = systems.get("harmonic_oscillator")
    stored = serialize(FlowMCMove(GaussianProposal(ho.positions_nm, 0.1, seed=1), seed=2))
    state = {key: (str(script) if value == "PATH" else file_sha256(script) if value == "SHA" else value) for key, value in crafted.items()}
    stored["proposal"] = state
    with pytest.raises(ProposalStateError, match="allow-list"):
        deserialize(stored)
    assert not marker.exists()


# ---------------------------------------------------------------------------- item 10: bad input accepted silently
@pytest.mark.parametrize("indices", [[0.9], [], [True], [[0]]])
def test_move_atom_indices_must_be_integers(indices):
    proposal = GaussianProposal([[0.0, 0.0, 0.0]], 0.1, seed=0)
    with pytest.raises(ValueError, match="integer atom indices"):
        FlowMCMove(proposal, atom_indices=indices)


def test_flow_log_prob_of_an_empty_batch_is_empty(ala):
    log_q = _tiny_flow(ala).log_prob(torch.zeros(0, 22, 3, dtype=torch.float64))
    assert log_q.shape == (0,) and log_q.dtype == torch.float64


# ---------------------------------------------------------------------------- item 9: reverse KL counts what it leaves out
def test_reverse_kl_counts_left_out_and_softened_samples(ala):
    from openmm_flowplugin import OpenMMEnergy, train_reverse_kl

    flow = _tiny_flow(ala)
    energy = OpenMMEnergy(ala.system, ala.temperature, platform="Reference")
    history = train_reverse_kl(flow, energy, n_steps=2, batch_size=16, energy_cut=-1e9, progress=False)
    assert history.n_softened_samples == 32  # every finite sample is above a cut this low

    class NoFiniteEnergy:
        def __call__(self, x):
            return torch.full((len(x),), float("inf"), dtype=torch.float64)

    history = train_reverse_kl(flow, NoFiniteEnergy(), n_steps=3, batch_size=8, progress=False)
    assert (history.n_skipped_steps, history.n_nonfinite_samples, len(history)) == (3, 24, 0)


def test_a_flow_with_no_finite_weight_is_reported_not_usable_instead_of_crashing(ala):
    """0.1 raised numpy's zero-size-array error when every sample failed."""
    from openmm_flowplugin import evaluate_flow

    class Broken(torch.nn.Module):
        n_atoms = 22

        def sample(self, n, generator=None):
            return torch.full((n, 22, 3), float("nan"), dtype=torch.float64), torch.zeros(n, dtype=torch.float64)

    result = evaluate_flow(Broken(), ala, n_samples=20)
    assert result.ess_fraction == 0.0 and not result.usable and not result.normalized_weights.any()
    assert any("not usable" in line for line in result.summary())


def test_restoring_a_move_never_reuses_a_cached_flow_trained_since_loading(ala, tmp_path):
    """The process caches shared a flow changed in place as if it held the file's weights."""
    save_flow(_tiny_flow(ala), tmp_path / "flow.pt")
    flow = load_flow(tmp_path / "flow.pt")
    stored = serialize(FlowMCMove(flow, seed=0))
    with torch.no_grad():
        next(flow.parameters()).add_(0.1)
    restored = deserialize(dict(stored))
    assert restored.proposal is not flow
    assert torch.equal(next(restored.proposal.parameters()), next(load_flow(tmp_path / "flow.pt", cache=False).parameters()))
    assert load_flow(tmp_path / "flow.pt") is not flow
    serialize(restored)  # the restored move holds the file's weights: storing it is fine


def test_redrawn_velocities_respect_constraints_on_atoms_the_move_leaves_alone():
    ho = systems.get("harmonic_oscillator", n_particles=3)
    ho.system.addConstraint(1, 2, 0.1)
    positions = ho.positions_nm.copy()
    positions[2] = positions[1] + [0.1, 0.0, 0.0]
    move = FlowMCMove(GaussianProposal(positions[:1], ho.reference.std[:1], seed=1), atom_indices=[0], n_proposals=20, seed=2)
    sampler_state = ho.sampler_state(positions)
    move.apply(ho.thermodynamic_state(), sampler_state, reference_cache())
    assert move.n_accepted > 0
    v = np.asarray(sampler_state.velocities._value)
    x = np.asarray(sampler_state.positions._value)
    assert abs(np.dot(v[2] - v[1], x[2] - x[1])) < 1e-5  # no velocity along the constrained bond
