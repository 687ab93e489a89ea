"""Flow checkpoints: round trip, safety, refusal of the wrong molecule, shared loading."""

import pytest
import torch

from openmm_flowplugin import BoltzmannGenerator, CheckpointError, load_flow, save_flow, systems
from openmm_flowplugin.flows.checkpoints import file_sha256


@pytest.fixture(scope="module")
def ala2():
    return systems.get("alanine_dipeptide_vacuum")


@pytest.fixture()
def flow(ala2):
    x0 = torch.as_tensor(ala2.positions_nm) + 0.003 * torch.randn(32, 22, 3, dtype=torch.float64)
    flow = BoltzmannGenerator.for_system(ala2, x0, n_blocks=1, hidden=(16,))
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return flow


def test_round_trip_preserves_density_and_metadata(flow, ala2, tmp_path):
    path = tmp_path / "flow.pt"
    sha = save_flow(flow, path)
    assert sha == file_sha256(path) == flow.checkpoint_sha256
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["metadata"]["system"] == "alanine_dipeptide_vacuum"
    assert payload["metadata"]["fingerprint"] == ala2.fingerprint
    assert payload["metadata"]["temperature_K"] == 300.0
    assert "package_version" in payload["metadata"]
    loaded = load_flow(path, system=ala2)
    with torch.no_grad():
        x, _ = flow.sample(16)
        torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))
    assert loaded.checkpoint_sha256 == sha


def test_loading_twice_shares_one_model(flow, tmp_path):
    path = tmp_path / "flow.pt"
    save_flow(flow, path)
    assert load_flow(path) is load_flow(str(path))
    assert load_flow(path, cache=False) is not load_flow(path)


def test_existing_checkpoint_is_not_overwritten(flow, tmp_path):
    path = tmp_path / "flow.pt"
    save_flow(flow, path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        save_flow(flow, path)
    assert path.read_bytes() == before


def test_checkpoint_for_another_molecule_is_refused(flow, tmp_path):
    path = tmp_path / "flow.pt"
    save_flow(flow, path)
    with pytest.raises(CheckpointError, match="made for 'alanine_dipeptide_vacuum'.*'mueller_brown'"):
        load_flow(path, system=systems.get("mueller_brown"))


def test_missing_and_corrupt_files_give_clear_errors(flow, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_flow(tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    save_flow(flow, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_flow(corrupt)
    wrong = tmp_path / "wrong.pt"
    torch.save({"hello": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointError, match="not an openmm_flowplugin flow checkpoint"):
        load_flow(wrong)


def test_shipped_flow_loads_by_name(ala2):
    flow = load_flow("alanine_dipeptide_vacuum", system=ala2)
    assert flow.n_atoms == 22 and flow.rigid_invariant
    assert flow.metadata["training_command"].startswith("openmm-flowplugin train alanine_dipeptide_vacuum")
