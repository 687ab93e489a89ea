"""Checkpoints of conditional flows: weights plus plain metadata, loaded with ``weights_only=True``.

A file is a ``torch.save`` of a plain dictionary::

    {"format": "openmm_flowplugin.conditional_flow/1", "config": {...}, "metadata": {...},
     "state_dict": {...}, "training": {...}}   # "training" only in training checkpoints

written to a temporary name and renamed. :func:`load_conditional_flow` reads the model part of
either kind; :func:`~openmm_flowplugin.flows.conditional_training.train_timewarp` resumes from the
``training`` part. Moves store the path and sha256 of a loaded flow (never its tensors) and find it
again through the checkpoint loader named :data:`LOADER_NAME`.
"""

__all__ = ["save_conditional_flow", "load_conditional_flow", "LOADER_NAME", "FORMAT"]

import threading
import weakref
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..outputs import atomic_output_path
from .checkpoints import CheckpointError, _changed_since_loaded, _record_version, file_sha256, load_plain_payload

FORMAT = "openmm_flowplugin.conditional_flow/1"
LOADER_NAME = "openmm_flowplugin.conditional_flow"

_cache = weakref.WeakValueDictionary()  # (absolute path, sha256) -> flow: copies of a move share one model
_cache_lock = threading.Lock()


def register_loader():
    """Allow stored moves to reload conditional flows (idempotent; TimewarpMove's module calls it on import)."""
    from ..proposals.storage import register_checkpoint_loader

    register_checkpoint_loader(LOADER_NAME, load_conditional_flow)


def _payload(flow, training=None):
    payload = {
        "format": FORMAT,
        "config": dict(flow.config),
        "metadata": dict(flow.metadata),
        "state_dict": {k: v.detach().cpu().clone() for k, v in flow.state_dict().items()},
    }
    if training is not None:
        payload["training"] = training
    return payload


def _mark_saved(flow, path):
    register_loader()
    flow.checkpoint_path = str(Path(path).resolve())
    flow.checkpoint_sha256 = file_sha256(path)
    flow.checkpoint_loader = LOADER_NAME
    _record_version(flow)
    return flow.checkpoint_sha256


def save_conditional_flow(flow, path, overwrite=False):
    """Write ``flow`` (a :class:`~openmm_flowplugin.flows.ConditionalFlow`) to ``path``; returns its sha256.

    Examples
    --------
    >>> import tempfile, os
    >>> from openmm_flowplugin.flows import ConditionalFlow
    >>> flow = ConditionalFlow(3, n_layers=2, hidden=(8,), context_features=4)
    >>> path = os.path.join(tempfile.mkdtemp(), "tw.pt")
    >>> _ = save_conditional_flow(flow, path)
    >>> load_conditional_flow(path).config == flow.config
    True
    """
    with atomic_output_path(path, overwrite) as tmp:
        torch.save(_payload(flow), tmp)
    return _mark_saved(flow, path)


def read_checkpoint(path):
    """The checkpoint's plain dictionary, or :class:`CheckpointError` naming what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"conditional flow checkpoint {path} not found. Train one with train_timewarp or pass a valid path.")
    return load_plain_payload(path, FORMAT, "conditional flow")


def build_from_payload(payload, path):
    """The ConditionalFlow, TransferableConditionalFlow or InternalCoordinateProposal the payload describes (evaluation mode)."""
    from .conditional import ConditionalFlow
    from .internal_conditional import InternalCoordinateProposal
    from .transferable import TransferableConditionalFlow

    config = dict(payload["config"])
    if config.get("architecture") == "internal":
        architecture = InternalCoordinateProposal
        config.pop("architecture")
    else:
        architecture = TransferableConditionalFlow if "atom_features" in config else ConditionalFlow
    try:
        flow = architecture(metadata=payload["metadata"], **config)
        flow.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError, InvalidInputError) as error:  # unknown config keys, missing/unexpected weights, wrong shapes
        raise CheckpointError(f"{path}: its weights do not fit the architecture its config describes: {error}") from error
    flow.eval()
    return flow


def load_conditional_flow(path, system=None, cache=True):
    """Load a conditional flow written by :func:`save_conditional_flow` (or a training checkpoint).

    Parameters
    ----------
    path : str or Path
    system : MolecularSystem, optional
        If given, the flow must have been made for this molecule (same fingerprint); a
        :class:`~openmm_flowplugin.flows.TransferableConditionalFlow` made for another molecule (or for
        none) is returned bound to this one (:meth:`~openmm_flowplugin.flows.TransferableConditionalFlow.bound_to`).
    cache : bool
        Share one model per (file, content) in this process.

    Raises
    ------
    CheckpointError
        Missing or corrupt file, or a flow made for another molecule.
    """
    path = Path(path)
    sha256 = file_sha256(path) if path.is_file() else None
    key = (str(path.resolve()), sha256)
    with _cache_lock:
        flow = _cache.get(key) if cache else None
        if flow is not None and _changed_since_loaded(flow):
            flow = None
        if flow is None:
            flow = build_from_payload(read_checkpoint(path), path)
            flow.requires_grad_(False)
            _mark_saved(flow, path)
            if cache:
                _cache[key] = flow
    if system is not None and getattr(flow, "bound_to", None) is not None and flow.fingerprint != system.fingerprint:
        return flow.bound_to(system)  # a transferable model runs on any molecule (not saved: see bound_to)
    if system is not None and (flow.n_atoms != system.n_atoms or flow.fingerprint not in (None, system.fingerprint)):
        raise CheckpointError(
            f"conditional flow {path} was made for {flow.metadata.get('system', '?')!r} ({flow.n_atoms} atoms) but the "
            f"system is {system.name!r} ({system.n_atoms} atoms) with other atoms, masses or bonds; load the flow trained "
            "for this molecule or train one."
        )
    return flow


def is_conditional_checkpoint(path):
    """Whether ``path`` is a file holding a conditional flow (its ``format``), without building the model."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not ours to judge here: the loader that takes it names what is wrong
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_proposal_flow(name_or_path, system=None):
    """A Boltzmann generator or a conditional flow, whichever the checkpoint holds (for ``md``-style callers).

    Examples
    --------
    >>> load_proposal_flow("alanine_dipeptide_vacuum").__class__.__name__
    'BoltzmannGenerator'
    """
    from .checkpoints import load_flow

    if is_conditional_checkpoint(name_or_path):
        return load_conditional_flow(name_or_path, system=system)
    return load_flow(name_or_path, system=system)
