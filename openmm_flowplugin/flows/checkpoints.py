"""Flow checkpoints: weights plus metadata, loaded safely, refused for the wrong molecule.

A checkpoint is a ``torch.save`` of a plain dictionary (loadable with ``weights_only=True``)::

    {"format": "openmm_flowplugin.flow/1", "config": {...}, "metadata": {...},
     "state_dict": {...}}

``metadata`` holds the system name, atom count, molecule fingerprint (atom count, elements,
masses), temperature and package version. Files are written to a temporary name and renamed,
and an existing file is never overwritten unless asked.
"""

__all__ = ["save_flow", "load_flow", "file_sha256", "check_flow_matches", "resolve_flow_path", "CheckpointError"]

import hashlib
import threading
import weakref
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..outputs import atomic_output_path, check_output_path  # noqa: F401 (check_output_path: old import path)

FORMAT = "openmm_flowplugin.flow/1"

_cache = weakref.WeakValueDictionary()  # (absolute path, sha256) -> flow: copies and moves share one model
_cache_lock = threading.Lock()


class CheckpointError(InvalidInputError):
    """A checkpoint file is missing, corrupt, or made for another system."""


def file_sha256(path):
    """sha256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_flow(flow, path, overwrite=False):
    """Write ``flow`` (a :class:`~openmm_flowplugin.flows.BoltzmannGenerator`) to ``path``; returns its sha256."""
    payload = {
        "format": FORMAT,
        "config": flow.config,
        "metadata": flow.metadata,
        "state_dict": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
    }
    with atomic_output_path(path, overwrite) as tmp:
        torch.save(payload, tmp)
    flow.checkpoint_path = str(Path(path).resolve())
    flow.checkpoint_sha256 = file_sha256(path)
    _record_version(flow)
    return flow.checkpoint_sha256


def _changed_since_loaded(proposal):
    """Whether ``proposal``'s parameters changed since it was loaded from or saved to its checkpoint."""
    from ..proposals.protocol import proposal_version

    recorded = getattr(proposal, "_checkpoint_version", None)
    return recorded is not None and proposal_version(proposal) != recorded


def _record_version(flow):
    """Remember the weights' version the file holds: storing a move refuses the path once they change."""
    from ..proposals.storage import record_checkpoint_version

    record_checkpoint_version(flow)


def resolve_flow_path(name_or_path):
    """A registered system name -> its shipped model in ``systems/models``; otherwise the path itself."""
    from .. import systems

    if str(name_or_path) in systems.list():
        return Path(str(systems.data_path("models", f"{name_or_path}.pt")))
    return Path(name_or_path)


def load_flow(name_or_path, system=None, cache=True):
    """Load a flow checkpoint by path, or the shipped model of a registered system by name.

    Parameters
    ----------
    name_or_path : str or Path
        ``"alanine_dipeptide_vacuum"`` or a ``.pt`` file written by :func:`save_flow`.
    system : MolecularSystem, optional
        If given, the checkpoint must have been made for this molecule (same fingerprint).
    cache : bool
        Share one model per (file, content) in this process.

    Returns
    -------
    BoltzmannGenerator
        In evaluation mode, float32 weights.

    Raises
    ------
    CheckpointError
        Missing or corrupt file, or a checkpoint for another molecule.

    Examples
    --------
    >>> flow = load_flow("alanine_dipeptide_vacuum")
    >>> flow.n_atoms, flow.metadata["system"]
    (22, 'alanine_dipeptide_vacuum')
    """
    from .boltzmann_generator import BoltzmannGenerator

    path = resolve_flow_path(name_or_path)
    if not path.is_file():
        raise CheckpointError(f"flow checkpoint {path} not found. Train one with `openmm-flowplugin train` or pass a valid path.")
    sha256 = file_sha256(path)
    key = (str(path.resolve()), sha256)
    with _cache_lock:
        flow = _cache.get(key) if cache else None
        if flow is not None and _changed_since_loaded(flow):
            flow = None  # trained in place since: no longer the file's weights, so load the file again
        if flow is None:
            config, state_dict, metadata = _read_payload(path)
            placeholder = torch.zeros(1, config["n_atoms"], 3, dtype=torch.float64)
            flow = BoltzmannGenerator(  # errors here are bugs, not bad files: they propagate with their traceback
                config["n_atoms"], config["bonds"], placeholder, n_blocks=config["n_blocks"],
                hidden=config["hidden"], bins=config["bins"], metadata=metadata,
                narrow_torsions=config.get("narrow_torsions", []),
            )
            try:
                flow.load_state_dict(state_dict)
            except RuntimeError as error:  # missing/unexpected keys, wrong shapes
                raise CheckpointError(f"{path}: its weights do not fit the architecture its config describes: {error}") from error
            flow.eval()
            flow.requires_grad_(False)
            flow.checkpoint_path = key[0]
            flow.checkpoint_sha256 = sha256
            _record_version(flow)
            if cache:
                _cache[key] = flow
    if system is not None:
        check_flow_matches(flow, system)
    return flow


_CONFIG_KEYS = {"n_atoms": int, "bonds": list, "n_blocks": int, "hidden": list, "bins": int}


def load_plain_payload(path, expected_format, kind):
    """A checkpoint's plain dictionary (``weights_only`` loading) with dict ``config``/``state_dict``/``metadata``.

    Raises :class:`CheckpointError` naming what is wrong: unreadable, another format, or missing parts.
    ``kind`` names the checkpoint in messages (e.g. "flow").
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or unsafe pickle content: all mean a bad file
        raise CheckpointError(f"{path} is corrupt or not a {kind} checkpoint: {type(error).__name__}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise CheckpointError(f"{path} is not an openmm_flowplugin {kind} checkpoint (format {expected_format}).")
    missing = [key for key in ("config", "state_dict", "metadata") if not isinstance(payload.get(key), dict)]
    if missing:
        raise CheckpointError(f"{path} is corrupt: {', '.join(missing)} missing or of the wrong type.")
    return payload


def _read_payload(path):
    """(config, state_dict, metadata) of a checkpoint file, or CheckpointError naming what is wrong with the file."""
    payload = load_plain_payload(path, FORMAT, "flow")
    config = payload["config"]
    missing = [f"config[{key!r}]" for key, kind in _CONFIG_KEYS.items() if not isinstance(config.get(key), kind)]
    if missing:
        raise CheckpointError(f"{path} is corrupt: {', '.join(missing)} missing or of the wrong type.")
    return config, payload["state_dict"], payload["metadata"]


def check_flow_matches(flow, molecular_system):
    """Raise :class:`CheckpointError` unless ``flow`` was made for ``molecular_system``."""
    from ..systems.molecular_system import fingerprint_matches

    same = flow.n_atoms == molecular_system.n_atoms and fingerprint_matches(
        flow.fingerprint, molecular_system.system, molecular_system.topology, flow.bonds
    )
    if not same:
        raise CheckpointError(
            f"flow checkpoint {flow.checkpoint_path} was made for {flow.metadata.get('system', '?')!r} "
            f"({flow.n_atoms} atoms) but the system is {molecular_system.name!r} ({molecular_system.n_atoms} atoms), "
            "with other atoms, masses or bonds; load the checkpoint trained for this molecule or train one."
        )
