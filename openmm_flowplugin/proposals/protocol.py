"""The proposal protocol shared by every learned Monte Carlo move.

A *proposal* is any object with

- ``sample(n, generator=None) -> (x, log_q)``: ``x`` a torch tensor of shape (n, n_atoms, 3) in nm,
  ``log_q`` shape (n,); random numbers come from ``generator`` (a :class:`torch.Generator`) when
  given, so moves control every stream (:mod:`~openmm_flowplugin.proposals.streams`);
- ``log_prob(x) -> log_q``: shape (n,) for ``x`` of shape (n, n_atoms, 3).

A proposal whose density is intractable may return, from both methods, a *random* ``log_q`` whose
exponential is an unbiased estimate of q given the configuration (e.g. a diffusion sampler: path
density over a backward path's density, :class:`~openmm_flowplugin.diffusion.DiffusionProposal`).
Metropolis–Hastings with such estimates stays exact (it is exact on the space extended by the
auxiliary draws; a state keeps its estimate until it is left, a fresh state gets a fresh one). Its
``log_prob`` then takes ``generator=``, and moves pass one from their streams.

``log_q`` is the log density with respect to Cartesian volume of the atoms it moves; for a
proposal that is invariant to rigid motions (``rigid_invariant = True``, e.g. flows on internal
coordinates) it is the density with respect to the internal degrees of freedom (see
:mod:`openmm_flowplugin.geometry.internal`) and moves re-align each proposal onto the current state.

Optional attributes a move consults: ``n_atoms`` (checked at construction), ``rigid_invariant``
(default False), ``respects_constraints`` (default False), ``fingerprint`` (sha256 of the
molecule it was made for, see :attr:`MolecularSystem.fingerprint`), ``version`` (a token that
changes with the parameters; see :func:`proposal_version`; tensors and modules are tracked
without it).
"""

__all__ = [
    "metropolis_hastings_log_ratio",
    "proposal_n_atoms",
    "proposal_version",
    "sample_with_generator",
    "checked_batch_size",
    "check_proposal_fingerprint",
    "check_proposal_methods",
    "checked_count",
    "single_log_prob",
    "align_to_current",
    "check_constraints",
]

import inspect
import math
import warnings
import weakref

import numpy as np
import torch
from ..errors import InvalidInputError, InvalidTypeError


def metropolis_hastings_log_ratio(u_current, u_proposed, log_q_current, log_q_proposed):
    """log acceptance ratio ``-u' + u + log q(x) - log q(x')`` in float64; NaN or +inf energy -> -inf.

    A proposal the proposal density itself rules out (``log q(x') = -inf``) or that the energy
    rejects (``u' = +inf`` or NaN) is never accepted. Scalars in, a float out; arrays in, an array out.

    Examples
    --------
    >>> metropolis_hastings_log_ratio(1.0, 2.0, -3.0, -3.5)
    -0.5
    >>> metropolis_hastings_log_ratio(1.0, float("nan"), 0.0, 0.0)
    -inf
    """
    if all(isinstance(v, (float, int)) for v in (u_current, u_proposed, log_q_current, log_q_proposed)):
        if not (math.isfinite(u_proposed) and math.isfinite(log_q_proposed)):
            return -math.inf
        log_ratio = -float(u_proposed) + u_current + log_q_current - log_q_proposed
        return -math.inf if math.isnan(log_ratio) else log_ratio
    u_current = np.asarray(u_current, dtype=np.float64)
    u_proposed = np.asarray(u_proposed, dtype=np.float64)
    log_q_current = np.asarray(log_q_current, dtype=np.float64)
    log_q_proposed = np.asarray(log_q_proposed, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        log_ratio = -u_proposed + u_current + log_q_current - log_q_proposed
    bad = ~np.isfinite(u_proposed) | ~np.isfinite(log_q_proposed) | np.isnan(log_ratio)
    return np.where(bad, -np.inf, log_ratio)


def proposal_n_atoms(proposal):
    """Number of atoms a proposal moves: its ``n_atoms`` attribute, else the shape of one sample."""
    n_atoms = getattr(proposal, "n_atoms", None)
    if n_atoms is None:
        x, _ = proposal.sample(1)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise InvalidInputError(f"proposal.sample(1) must return positions of shape (1, n_atoms, 3), got {tuple(x.shape)}.")
        n_atoms = x.shape[1]
    return int(n_atoms)


def proposal_version(proposal):
    """A token that changes whenever the proposal's parameters change (its *version*).

    In order: the proposal's own ``version`` attribute (called if callable) — the way for any
    proposal to declare it; for a :class:`torch.nn.Module`, the identity and in-place modification
    counter of every parameter and buffer; for other objects, the same for the tensors and modules
    among their attributes (one level deep, e.g. a wrapper holding a flow). A proposal whose state
    cannot be tracked this way (no tensors, no ``version``) is refused: draws made ahead and cached
    ``log q`` values could otherwise outlive a change of its parameters. Changes made through
    ``parameter.data`` (a view with a version counter of its own) are not seen: change parameters in
    place under ``torch.no_grad()``, as optimizers do, or declare ``version``.

    Raises
    ------
    TypeError
        If no version can be established.

    Examples
    --------
    >>> layer = torch.nn.Linear(2, 2)
    >>> before = proposal_version(layer)
    >>> with torch.no_grad():
    ...     _ = layer.weight.mul_(2.0)
    >>> proposal_version(layer) != before
    True
    """
    version = getattr(proposal, "version", None)
    if version is not None:
        return ("declared", version() if callable(version) else version)
    if isinstance(proposal, torch.nn.Module):
        return _tensor_token(module_tensors(proposal))
    tensors = []
    for value in vars(proposal).values() if hasattr(proposal, "__dict__") else ():
        if isinstance(value, torch.nn.Module):
            tensors.extend(module_tensors(value))
        elif torch.is_tensor(value):
            tensors.append(value)
    if not tensors:
        raise InvalidTypeError(
            f"cannot tell when the proposal {type(proposal).__name__} changes: it holds no torch tensors or modules and "
            "has no `version` attribute. Give it a `version` attribute (or property) that changes whenever its "
            "parameters change (a constant if they never do)."
        )
    return _tensor_token(tensors)


def _tensor_token(tensors):
    # data_ptr: ``param.data = ...`` (e.g. ``module.to(dtype)``) swaps the storage without bumping _version
    return tuple((id(t), t._version, t.data_ptr()) for t in tensors)


_registrations = [0]  # bumped whenever any module registers a parameter, buffer or submodule
_module_tensor_cache = weakref.WeakKeyDictionary()


def _count_registration(*_):
    _registrations[0] += 1


for _register in (torch.nn.modules.module.register_module_parameter_registration_hook,
                  torch.nn.modules.module.register_module_buffer_registration_hook,
                  torch.nn.modules.module.register_module_module_registration_hook):
    _register(_count_registration)


def module_tensors(module):
    """Parameters and buffers of ``module`` (recursively), as a list cached until any module registers a new one.

    ``module.parameters()`` walks the module tree (~0.2 ms for a flow); a jump needs the list every time.
    """
    cached = _module_tensor_cache.get(module)
    if cached is None or cached[0] != _registrations[0]:
        cached = (_registrations[0], [*module.parameters(), *module.buffers()])
        _module_tensor_cache[module] = cached
    return cached[1]


def sample_with_generator(proposal, n, generator):
    """``proposal.sample(n, generator=generator)``, or ``proposal.sample(n)`` for proposals without that argument.

    A proposal whose ``sample`` takes no ``generator`` draws with its own randomness: its draws then do
    not follow the move's seed, and copies, MPI ranks or resumed runs may repeat them (warned once per class).
    """
    cls = type(proposal)
    accepts = _takes_generator(proposal.sample, any_keyword=True)
    if not accepts and cls not in _WARNED_NO_GENERATOR:
        _WARNED_NO_GENERATOR.add(cls)
        warnings.warn(
            f"{cls.__name__}.sample(n) takes no `generator`: its draws do not follow the move's seed, so copies, MPI "
            "ranks and resumed runs may repeat them. Add a `generator=None` argument and draw from it.",
            stacklevel=3,
        )
    return proposal.sample(n, generator=generator) if accepts else proposal.sample(n)


_WARNED_NO_GENERATOR = set()


def checked_batch_size(batch_size):
    """``batch_size`` as an int, or ValueError naming ``sample_batch_size`` if it is not an integer >= 1."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise InvalidInputError(f"sample_batch_size must be an integer >= 1, got {batch_size!r}.")
    return int(batch_size)


def check_proposal_fingerprint(proposal, system, topology):
    """Raise ValueError if the proposal was made for another molecule than ``system`` + ``topology``.

    Compares ``proposal.fingerprint`` (:func:`~openmm_flowplugin.systems.molecular_system.system_fingerprint`:
    atom count, elements, masses, bond graph) and, for proposals that expose the ``bonds`` they were
    built on (flows on internal coordinates), that bond graph against the System's. Nothing is
    checked without a topology or a fingerprint.
    """
    from ..systems.molecular_system import fingerprint_matches

    fingerprint = getattr(proposal, "fingerprint", None)
    if topology is None or fingerprint is None:
        return
    if not fingerprint_matches(fingerprint, system, topology, getattr(proposal, "bonds", None)):
        raise InvalidInputError(
            f"proposal.fingerprint {fingerprint[:15]}... does not match the system (atoms, masses and bond graph): "
            "the proposal was made for another molecule (or another atom order). Load the proposal trained for this system."
        )


def check_proposal_methods(proposal):
    """Raise TypeError unless ``proposal`` has callable ``sample`` and ``log_prob``."""
    for method in ("sample", "log_prob"):
        if not callable(getattr(proposal, method, None)):
            raise InvalidTypeError(f"proposal {type(proposal).__name__} has no {method}() method; see openmm_flowplugin.proposals for the protocol.")


def checked_count(name, value):
    """``value`` as an int, or ValueError naming ``name`` unless it is an integer >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def single_log_prob(proposal, positions, generator=None):
    """``log q`` (float) of one configuration, positions float64 (n_atoms, 3) nm, with one torch thread.

    ``generator`` (a :class:`torch.Generator`, or a function returning one, called only when needed)
    goes to proposals whose ``log_prob`` takes one (random estimates); others never see it.
    """
    from .._threads import package_threads

    x = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float64))[None]
    with torch.no_grad(), package_threads():
        if generator is not None and _takes_generator(proposal.log_prob):
            log_q = proposal.log_prob(x, generator=generator() if callable(generator) else generator)
        else:
            log_q = proposal.log_prob(x)
    return float(torch.as_tensor(log_q).reshape(-1)[0])


def _takes_generator(method, any_keyword=False):
    """Whether ``method`` has a ``generator`` parameter (or, with ``any_keyword``, ``**kwargs``)."""
    function = getattr(method, "__func__", None)  # cached per function: inspecting a signature costs ~10 µs
    key = (function, any_keyword)
    takes = _TAKES_GENERATOR.get(key) if function is not None else None
    if takes is None:
        try:
            parameters = inspect.signature(method).parameters
            takes = "generator" in parameters or (any_keyword and any(p.kind is p.VAR_KEYWORD for p in parameters.values()))
        except (TypeError, ValueError):
            takes = False
        if function is not None:
            _TAKES_GENERATOR[key] = takes
    return takes


_TAKES_GENERATOR = {}


def align_to_current(proposal, proposed, current):
    """Proposed positions rigidly aligned onto ``current`` if ``proposal.rigid_invariant``, else unchanged.

    The optimal (Kabsch) alignment is symmetric, so detailed balance holds in the rigid degrees of freedom.
    Non-finite proposals are returned as they are (they are rejected).
    """
    if not getattr(proposal, "rigid_invariant", False):
        return proposed
    from ..geometry.alignment import kabsch_align

    if proposed.ndim == 2:
        return kabsch_align(proposed, current) if np.isfinite(proposed).all() else proposed
    finite = np.isfinite(proposed).all(axis=(1, 2))
    aligned = proposed.copy()
    if finite.any():
        aligned[finite] = kabsch_align(proposed[finite], current)
    return aligned


def check_constraints(proposal, constrained_pairs, moved=None):
    """Raise ValueError if a constraint involves a moved atom and the proposal does not respect constraints.

    ``constrained_pairs``: iterable of (i, j); ``moved``: set of moved atom indices (None: all atoms).
    """
    if getattr(proposal, "respects_constraints", False):
        return
    for k, (i, j) in enumerate(constrained_pairs):
        if moved is None or i in moved or j in moved:
            raise InvalidInputError(
                f"constraint {k} between atoms {i} and {j} involves atoms the proposal moves; learned proposals "
                "do not satisfy constraints. Build the System with constraints=None (and a ~1 fs timestep), or use "
                "a proposal that declares respects_constraints = True."
            )
