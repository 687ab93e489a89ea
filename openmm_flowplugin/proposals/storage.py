"""Plain-data state of a move's proposal, and the keyed cache that lets moves share one proposal.

A move that holds a learned proposal is deep-copied and serialized by openmmtools many times
(``MultiStateSampler`` copies moves per state and stores them in its NetCDF file through
``__getstate__``). Its state must therefore be plain data, and restoring it must find the model
again instead of storing or copying weights:

- a proposal with a ``checkpoint_path`` (e.g. a flow from :func:`openmm_flowplugin.flows.load_flow`)
  is stored as ``{"checkpoint_path", "checkpoint_sha256"}`` (plus ``"loader"`` if the proposal names
  its own ``checkpoint_loader``); restoring checks the file's sha256 and loads it. Storing refuses a
  proposal whose parameters changed since it was loaded or saved (its version,
  :func:`~openmm_flowplugin.proposals.protocol.proposal_version`, differs from the one recorded
  then): the file would name other weights than the ones the move used. Save it first
  (:func:`~openmm_flowplugin.flows.save_flow`, a new file) and store that;
- any other proposal is stored as its class (module, name) and its own ``__getstate__()`` dict,
  which must be plain data (as :class:`~openmm_flowplugin.proposals.GaussianProposal` does).

Stored data never chooses code freely: a stored loader or class is resolved only if it is on an
allow-list — the package's own (under their current and flat-layout module paths) plus those the
user registers in code with :func:`register_proposal_class` and :func:`register_checkpoint_loader`.
What this cannot guard: openmmtools' own ``deserialize`` imports the classes a storage file names
for every move, and a serialized System unpickles every PythonForce's callable. Resume only storage
you trust.

Restored proposals go through a process-level ``WeakValueDictionary`` keyed by
(path, sha256) or (class, canonical JSON of the state), so the moves of a resumed sampler share one
object, as :class:`openmmtools.states.ThermodynamicState` shares its System.
"""

__all__ = [
    "ProposalStateError",
    "proposal_state",
    "proposal_from_state",
    "share_proposal",
    "register_proposal_class",
    "register_checkpoint_loader",
    "record_checkpoint_version",
]

import json
import os
import threading
import weakref

from ..flows.checkpoints import _changed_since_loaded, file_sha256
from .protocol import proposal_version
from ..errors import InvalidInputError, InvalidTypeError

#: Plain-data proposal classes a stored state may name: "module:qualname" -> class (resolved lazily).
_PROPOSAL_CLASSES = {
    "openmm_flowplugin.proposals.gaussian:GaussianProposal": ("openmm_flowplugin.proposals.gaussian", "GaussianProposal"),
    "openmm_flowplugin.proposals:GaussianProposal": ("openmm_flowplugin.proposals.gaussian", "GaussianProposal"),
}

#: Checkpoint loaders a stored state may name: name -> callable(path) (resolved lazily).
_LOADERS = {}

_cache = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()
_PLAIN_TYPES = (str, int, float, bool, type(None))


class ProposalStateError(InvalidInputError):
    """A proposal cannot be stored as plain data, or its checkpoint cannot be found again."""


def _is_plain(value):
    if isinstance(value, _PLAIN_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def register_proposal_class(cls):
    """Allow moves restored from storage to rebuild proposals of class ``cls`` (stored by module and name).

    Examples
    --------
    >>> class MyProposal:
    ...     pass
    >>> register_proposal_class(MyProposal) is MyProposal
    True
    """
    _PROPOSAL_CLASSES[f"{cls.__module__}:{cls.__qualname__}"] = cls
    return cls


def register_checkpoint_loader(name, loader):
    """Allow stored states naming ``loader=name`` to load checkpoints with ``loader(path)``.

    A proposal declares its loader with the attribute ``checkpoint_loader = name``.
    """
    if not callable(loader):
        raise InvalidTypeError(f"loader must be callable(path), got {type(loader).__name__}.")
    _LOADERS[str(name)] = loader
    return loader


def record_checkpoint_version(proposal):
    """Remember ``proposal``'s current version as the one its checkpoint file holds (load_flow/save_flow call this)."""
    proposal._checkpoint_version = proposal_version(proposal)


def proposal_state(proposal):
    """Plain-data description of ``proposal`` from which :func:`proposal_from_state` rebuilds (or finds) it."""
    path = getattr(proposal, "checkpoint_path", None)
    if path is not None:
        path = os.path.abspath(os.fspath(path))
        recorded = getattr(proposal, "_checkpoint_version", None)
        if recorded is not None and proposal_version(proposal) != recorded:
            raise ProposalStateError(
                f"the proposal's parameters changed since it was loaded from or saved to {path} (e.g. trained in place): "
                "storing that path would name other weights than the ones the move used. Save the trained model to a new "
                "file (openmm_flowplugin.flows.save_flow(flow, 'new.pt')) before the sampler stores the move."
            )
        sha256 = getattr(proposal, "checkpoint_sha256", None) or file_sha256(path)
        state = {"checkpoint_path": path, "checkpoint_sha256": str(sha256)}
        loader = getattr(proposal, "checkpoint_loader", None)
        if loader is not None:
            state["loader"] = str(loader)
        return state
    cls = type(proposal)
    hint = getattr(cls, "storage_hint", None)
    if hint is not None:
        raise ProposalStateError(f"cannot store the proposal {cls.__qualname__}: {hint}")
    own_state = proposal.__getstate__() if hasattr(proposal, "__getstate__") else None
    if not isinstance(own_state, dict) or not _is_plain(own_state):
        raise ProposalStateError(
            f"cannot store the proposal {cls.__module__}.{cls.__qualname__} as plain data: its __getstate__() "
            f"returned {type(own_state).__name__} with non-plain values (e.g. tensors). Save the model and set "
            "`checkpoint_path` and `checkpoint_sha256` on it (as checkpoints.load_flow does), or give the class a "
            "__getstate__ returning a dict of numbers/strings/lists and a matching __setstate__."
        )
    return {"module": cls.__module__, "class": cls.__qualname__, "state": own_state}


def _allowed_class(module_name, qualname):
    entry = _PROPOSAL_CLASSES.get(f"{module_name}:{qualname}")
    if entry is None:
        raise ProposalStateError(
            f"stored state names proposal class {module_name}.{qualname}, which is not on the allow-list of classes a "
            "stored move may rebuild. If you trust this storage and the class is yours, call "
            "openmm_flowplugin.proposals.storage.register_proposal_class(YourClass) before resuming."
        )
    if isinstance(entry, tuple):
        import importlib

        entry = getattr(importlib.import_module(entry[0]), entry[1])
    return entry


def _allowed_loader(name):
    loader = _LOADERS.get(name)
    if loader is None:
        raise ProposalStateError(
            f"stored state names checkpoint loader {name!r}, which is not on the allow-list. If you trust this storage, "
            "call openmm_flowplugin.proposals.storage.register_checkpoint_loader(name, function) before resuming."
        )
    return loader


def _default_loader(path):
    from ..flows.checkpoints import load_flow

    return load_flow(path)


def _load_checkpoint(state):
    path, expected = state["checkpoint_path"], state["checkpoint_sha256"]
    if not os.path.isfile(path):
        raise ProposalStateError(
            f"the flow checkpoint {path} stored in this move's state is missing. Put the file (sha256 {expected}) "
            "back at that path, or rebuild the move with the model's new location."
        )
    found = file_sha256(path)
    if found != expected:
        raise ProposalStateError(
            f"the flow checkpoint {path} changed since the move was stored: its sha256 is {found}, "
            f"the stored one is {expected}. Restore the original file to resume this run exactly, or start a new "
            "run with the new model (resuming with other weights would mix two samplers)."
        )
    loader = _allowed_loader(state["loader"]) if "loader" in state else _default_loader
    proposal = loader(path)
    if getattr(proposal, "_checkpoint_version", None) is None:  # load_flow records it; a user's loader may not
        record_checkpoint_version(proposal)
    return proposal


def _build_plain(state):
    cls = _allowed_class(state["module"], state["class"])
    proposal = cls.__new__(cls)
    proposal.__setstate__(state["state"])
    return proposal


def _key(state):
    if "checkpoint_path" in state:
        return ("checkpoint", state["checkpoint_path"], state["checkpoint_sha256"])
    return ("plain", state["module"], state["class"], json.dumps(state["state"], sort_keys=True))


def share_proposal(proposal):
    """Register a live ``proposal`` so that moves restored from its state find this very object.

    Proposals that cannot be stored as plain data are skipped (storing them raises later, with the fix).
    """
    try:
        key = _key(proposal_state(proposal))
    except (ProposalStateError, OSError):
        return
    with _cache_lock:
        try:
            _cache.setdefault(key, proposal)
        except TypeError:
            pass


def proposal_from_state(state):
    """The proposal described by ``state``; moves restored from equal states share one object."""
    key = _key(state)
    build = _load_checkpoint if key[0] == "checkpoint" else _build_plain
    with _cache_lock:
        proposal = _cache.get(key)
        if proposal is not None and key[0] == "checkpoint" and _changed_since_loaded(proposal):
            proposal = None  # trained in place since it was shared: the file's weights are what the state names
        if proposal is None:
            proposal = build(state)
            try:
                _cache[key] = proposal
            except TypeError:  # not weak-referenceable: no sharing, still correct
                pass
    return proposal
