"""Training conditional flows by maximum likelihood on MD pairs (x_t, x_{t+tau}), with checkpoints that resume.

Each step draws a minibatch of pairs, rotates each pair by one uniformly random rotation (the flow is
not rotation equivariant; a rigid rotation of both frames is a symmetry of the dynamics), draws the
auxiliary velocities ``v, v' ~ N(0, I)`` and minimizes ``-mean log p(x_{t+tau}, v' | x_t[, v])``.
Its optimum makes ``v'`` independent of ``x'``, so the velocity terms of the acceptance cancel.
Every random number of step ``k`` comes from ``torch_generator(seed, k)``, so a run resumed from a
checkpoint (model, Adam state, step, losses) continues exactly as the uninterrupted run would.
"""

__all__ = ["fine_tune_acceptance", "random_rotations", "train_timewarp", "trajectory_pairs"]

import hashlib
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from .._threads import package_threads
from ..errors import InvalidInputError
from ..outputs import atomic_output_path
from ..proposals.conditional import standard_normal_log_prob
from ..proposals.streams import checked_root_seed, torch_generator
from .checkpoints import CheckpointError
from .conditional_io import _mark_saved, _payload, read_checkpoint
from .training import TrainingHistory, _check_counts, _linlog, _optimize


def trajectory_pairs(trajectories, lag):
    """Pairs ``(x_t, x_{t+lag})`` of frames ``lag`` apart, never across trajectories.

    Parameters
    ----------
    trajectories : mdtraj.Trajectory, array_like or list of them
        Positions of shape (n_frames, n_atoms, 3) in nm (an mdtraj trajectory's ``xyz``); a list
        holds separate trajectories of the same molecule.
    lag : int
        tau in frames (>= 1).

    Returns
    -------
    x_t, x_lag : numpy.ndarray, shape=(n_pairs, n_atoms, 3)
        float64, nm.

    Examples
    --------
    >>> x_t, x_lag = trajectory_pairs(np.arange(12.0).reshape(4, 1, 3), lag=2)
    >>> x_t[:, 0, 0].tolist(), x_lag[:, 0, 0].tolist()
    ([0.0, 3.0], [6.0, 9.0])
    """
    _check_counts(lag=lag)
    if hasattr(trajectories, "xyz") or not isinstance(trajectories, (list, tuple)):
        trajectories = [trajectories]
    starts, ends = [], []
    for trajectory in trajectories:
        xyz = np.asarray(getattr(trajectory, "xyz", trajectory), dtype=np.float64)
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise InvalidInputError(f"a trajectory must have shape (n_frames, n_atoms, 3) in nm, got {xyz.shape}.")
        if starts and xyz.shape[1] != starts[0].shape[1]:
            raise InvalidInputError(f"trajectories have {starts[0].shape[1]} and {xyz.shape[1]} atoms: pass one molecule's trajectories.")
        starts.append(xyz[: len(xyz) - int(lag)])
        ends.append(xyz[int(lag):])
    x_t, x_lag = np.concatenate(starts), np.concatenate(ends)
    if len(x_t) == 0:
        raise InvalidInputError(f"no pairs: every trajectory has at most lag={lag} frames.")
    return x_t, x_lag


def random_rotations(n, generator=None, dtype=torch.float64):
    """``n`` rotation matrices (n, 3, 3), uniform on SO(3) (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[:, :, 0] *= torch.sign(torch.linalg.det(q))[:, None]
    return q.to(dtype)


def _data_sha256(x_t, x_lag):
    return hashlib.sha256(np.ascontiguousarray(x_t).tobytes() + np.ascontiguousarray(x_lag).tobytes()).hexdigest()


def train_timewarp(model, pairs, n_steps=1000, batch_size=64, learning_rate=1e-3, rotations=True, seed=0,
                   checkpoint=None, checkpoint_every=100, progress=True):
    """Maximum likelihood of ``x_{t+tau}`` given ``x_t`` for a :class:`~openmm_flowplugin.flows.ConditionalFlow`.

    Parameters
    ----------
    model : ConditionalFlow or TransferableConditionalFlow
        Trained in place (returned in evaluation mode).
    pairs : tuple of array_like, or list of (MolecularSystem, tuple)
        ``(x_t, x_lag)`` of shape (n_pairs, n_atoms, 3) in nm, e.g. from :func:`trajectory_pairs`; for a
        :class:`~openmm_flowplugin.flows.TransferableConditionalFlow`, a list
        ``[(molecular_system, (x_t, x_lag)), ...]`` trains one model on several molecules (each
        minibatch drawn uniformly over all their pairs).
    n_steps : int
        Total optimisation steps (a resumed run trains until the checkpoint's step reaches it).
    batch_size : int
    learning_rate : float
        Adam's.
    rotations : bool
        Rotate each pair by a random rotation (default True).
    seed : int
        Root seed of the minibatches, rotations and velocities.
    checkpoint : str or Path, optional
        Written every ``checkpoint_every`` steps and at the end (atomically); if it exists when
        called, training resumes from it (same data, seed and settings, else CheckpointError).
    checkpoint_every : int
    progress : bool
        Show a progress bar with the latest loss.

    Returns
    -------
    TrainingHistory
        The loss (negative log likelihood per pair, nats) of every step so far, resumed ones included.

    Examples
    --------
    >>> from openmm_flowplugin.flows import ConditionalFlow
    >>> x = np.random.default_rng(0).normal(scale=0.1, size=(40, 3, 3))
    >>> flow = ConditionalFlow(3, n_layers=2, hidden=(8,), context_features=4)
    >>> history = train_timewarp(flow, trajectory_pairs(x, 1), n_steps=5, batch_size=8, progress=False)
    >>> len(history)
    5
    """
    _check_counts(n_steps=n_steps, batch_size=batch_size, checkpoint_every=checkpoint_every)
    seed = checked_root_seed(seed)
    sets, data_sha256 = _training_sets(model, pairs)
    settings = dict(seed=seed, batch_size=int(batch_size), learning_rate=float(learning_rate), rotations=bool(rotations),
                    data_sha256=data_sha256)
    if hasattr(model, "bound_to"):  # which elements the input weights learn from (bound_to warns about others)
        from .transferable import element_slots

        model.metadata["trained_element_slots"] = sorted({slot for flow, _, _ in sets for slot in element_slots(flow.features.cpu())})
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    history, start = TrainingHistory(), 0
    if checkpoint is not None and _exists(checkpoint):
        start = _resume(model, optimizer, history, checkpoint, settings)
        if start > int(n_steps):
            raise CheckpointError(f"{checkpoint} is at step {start}, past n_steps = {int(n_steps)} (the total, --steps): give {start} "
                                  "or more, or another checkpoint path.")
    model.requires_grad_(True)
    model.train()
    try:
        with package_threads(), tqdm(total=int(n_steps), initial=start, desc="train timewarp", disable=not progress) as bar:
            for step in range(start, int(n_steps)):
                generator = torch_generator(seed, step)
                log_p = [flow.log_prob(b, v[:, 1], a, v[:, 0]) for flow, a, b, v in _minibatches(sets, batch_size, generator, rotations)]
                loss = -torch.cat(log_p).mean()
                if not torch.isfinite(loss):  # before the step: the model and the checkpoint keep the last finite state
                    raise InvalidInputError(f"non-finite training loss at step {step}: lower the learning rate (--learning-rate), "
                                            "or check the data for broken frames.")
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
                optimizer.step()
                history.append(float(loss.detach()))
                bar.set_postfix_str(f"loss {history[-1]:.3f}", refresh=False)
                bar.update()
                if checkpoint is not None and ((step + 1) % int(checkpoint_every) == 0 or step + 1 == int(n_steps)):
                    _write(model, optimizer, history, checkpoint, settings, step + 1)
    finally:
        model.eval()
    return history


def fine_tune_acceptance(model, pairs, energy, n_steps=500, batch_size=64, likelihood_weight=1.0, learning_rate=3e-4,
                         energy_cut=1e3, rotations=True, seed=0, progress=True):
    """Raise the Metropolis-Hastings acceptance of a trained ConditionalFlow through the energy bridge.

    Each step minimizes ``likelihood_weight`` times the negative log-likelihood of a minibatch of pairs
    (as :func:`train_timewarp`) plus Timewarp's acceptance loss :math:`-\\mathrm{mean}\\,\\min(0, \\log\\alpha)`
    of one proposal from each start ``x_t`` of the minibatch, with
    :math:`\\log\\alpha = -u(x') + u(x) + h` exactly as :class:`~openmm_flowplugin.mcmc.TimewarpMove`
    computes it (``h`` from :func:`~openmm_flowplugin.proposals.conditional.auxiliary_log_hastings`),
    differentiated through the reparametrised proposal, the reverse density and the forces of ``energy``.
    Energy rises above ``energy_cut`` (kT) enter softened as ``cut + log(1 + du - cut)``, so clashes
    give finite gradients. The move stays exact whatever the weights: this changes only the acceptance.

    .. warning:: Acceptance is not sampling speed. The loss is lowest for tiny proposals, and the
       likelihood term only partly holds the step length: on alanine dipeptide (lag 10 fs) the
       acceptance rose from 1e-35 to 0.37 while the mean squared jump per proposal fell below that of
       the likelihood-trained flow with its step shrunk tenfold (docs/timewarp.md). Measure ESS, not
       acceptance. Not resumable (no checkpoints); every random number of step ``k`` comes from
       ``torch_generator(seed, k)``.

    Parameters
    ----------
    model : ConditionalFlow
        Trained in place (returned in evaluation mode), usually after :func:`train_timewarp`.
    pairs : tuple of array_like
        ``(x_t, x_lag)`` of shape (n_pairs, n_atoms, 3) in nm; the starts ``x_t`` should be Boltzmann-distributed.
    energy : OpenMMEnergy
        Reduced energies of the molecule's atoms (:class:`~openmm_flowplugin.bridge.energy.OpenMMEnergy`).
    n_steps, batch_size : int
    likelihood_weight : float
        Weight (>= 0) of the negative log-likelihood; 0 optimises acceptance alone.
    learning_rate : float
        Adam's.
    energy_cut : float
        Energy rise (kT) above which it is softened logarithmically.
    rotations : bool
        Rotate each pair by a uniformly random rotation (default True).
    seed : int
    progress : bool

    Returns
    -------
    TrainingHistory
        The mean acceptance probability ``min(1, alpha)`` of each step's proposals (an estimate on the
        training starts, before the step's update).
    """
    _check_counts(n_steps=n_steps, batch_size=batch_size)
    seed = checked_root_seed(seed)
    if not likelihood_weight >= 0:
        raise InvalidInputError(f"likelihood_weight must be >= 0, got {likelihood_weight!r}.")
    if getattr(energy, "n_atoms", None) != model.n_atoms:
        raise InvalidInputError(f"energy evaluates {getattr(energy, 'n_atoms', None)} atoms but the flow moves {model.n_atoms}: "
                                "pass OpenMMEnergy of the flow's molecule (atom_indices for a part of a System).")
    sets, _ = _training_sets(model, pairs)
    if len(sets) != 1:
        raise InvalidInputError("fine_tune_acceptance takes one molecule's pairs (x_t, x_lag) and its energy: call it per molecule.")
    [(_, data_t, data_lag)] = sets
    model.requires_grad_(True)
    counter = iter(range(int(n_steps)))

    def step_loss(history):
        generator = torch_generator(seed, next(counter))
        a, b, v = _minibatch(data_t, data_lag, batch_size, generator, rotations, model.dim, _dtype(model))
        nll = -model.log_prob(b, v[:, 1], a, v[:, 0]).mean()
        x_new, v_new, log_forward = model.sample(a, v[:, 0], generator=generator)
        log_reverse = model.log_prob(a, v[:, 0], x_new, v_new)
        rise = energy(x_new) - energy(a).detach()
        log_alpha = (-_linlog(rise, energy_cut) + standard_normal_log_prob(v_new) - standard_normal_log_prob(v[:, 0])
                     + log_reverse - log_forward)
        ok = torch.isfinite(log_alpha)
        history.n_nonfinite_samples += int((~ok).sum())
        if not ok.any():
            return None
        history.n_softened_samples += int((rise[ok] > energy_cut).sum())
        loss = -torch.clamp(log_alpha[ok], max=0.0).mean() + float(likelihood_weight) * nll
        return loss, float(torch.exp(torch.clamp(log_alpha.detach(), max=0.0)).where(ok, 0.0).mean())

    return _optimize(model, step_loss, int(n_steps), learning_rate, "fine-tune acceptance", progress=progress)


def _exists(path):
    from pathlib import Path

    return Path(path).is_file()


def _write(model, optimizer, history, path, settings, step):
    training = dict(settings, step=int(step), losses=[float(x) for x in history], optimizer=optimizer.state_dict())
    with atomic_output_path(path, overwrite=True) as tmp:
        torch.save(_payload(model, training), tmp)
    _mark_saved(model, path)


def _resume(model, optimizer, history, path, settings):
    payload = read_checkpoint(path)
    training = payload.get("training")
    if not isinstance(training, dict):
        raise CheckpointError(f"{path} holds a model but no training state: pass another checkpoint path to train anew.")
    if payload["config"] != model.config:
        raise CheckpointError(f"{path} was written for another architecture ({payload['config']}, the model has {model.config}).")
    changed = [key for key, value in settings.items() if training.get(key) != value]
    if changed:
        raise CheckpointError(
            f"{path} was trained with other {', '.join(changed)}: resuming would not continue that run. Pass the same "
            "data and settings, or another checkpoint path."
        )
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(training["optimizer"])
    history.extend(training["losses"])
    return int(training["step"])


def _dtype(model):
    return next(model.parameters()).dtype


def _checked_pairs(flow, pairs):
    """The pairs as tensors of the flow's dtype, and the sha256 of their float64 values."""
    if flow.n_atoms is None:
        raise InvalidInputError("the transferable flow is not bound to a molecule: pass [(molecular_system, (x_t, x_lag)), ...] "
                                "or train flow.bound_to(molecular_system).")
    x_t, x_lag = (np.asarray(p, dtype=np.float64) for p in pairs)
    if x_t.shape != x_lag.shape or x_t.ndim != 3 or x_t.shape[1:] != (flow.n_atoms, 3) or len(x_t) == 0:
        raise InvalidInputError(f"pairs must be two arrays of shape (n_pairs, {flow.n_atoms}, 3) in nm, got {x_t.shape} and {x_lag.shape}.")
    broken = np.flatnonzero(~(np.isfinite(x_t).all(axis=(1, 2)) & np.isfinite(x_lag).all(axis=(1, 2))))
    if len(broken):
        raise InvalidInputError(f"{len(broken)} pairs have non-finite coordinates (the first: pair {broken[0]}); drop those frames.")
    dtype = _dtype(flow)
    return torch.from_numpy(x_t).to(dtype), torch.from_numpy(x_lag).to(dtype), _data_sha256(x_t, x_lag)


def _training_sets(model, pairs):
    """``[(flow, x_t, x_lag)]``: one molecule's pairs, or ``[(molecular_system, pairs), ...]`` for a transferable flow."""
    several = isinstance(pairs, (list, tuple)) and len(pairs) > 0 and all(
        isinstance(item, (list, tuple)) and len(item) == 2 and hasattr(item[0], "topology") for item in pairs)
    if not several:
        data_t, data_lag, sha256 = _checked_pairs(model, pairs)
        return [(model, data_t, data_lag)], sha256
    if not hasattr(model, "bound_to"):
        raise InvalidInputError("pairs of several molecules need a TransferableConditionalFlow (a ConditionalFlow knows one molecule).")
    sets, parts = [], []
    for molecular_system, molecule_pairs in pairs:
        with warnings.catch_warnings():  # training is where unseen elements are learned
            warnings.simplefilter("ignore")
            flow = model.bound_to(molecular_system)
        data_t, data_lag, sha256 = _checked_pairs(flow, molecule_pairs)
        sets.append((flow, data_t, data_lag))
        parts.append(f"{flow.fingerprint}:{sha256}")
    return sets, hashlib.sha256(";".join(parts).encode()).hexdigest()


def _minibatch(data_t, data_lag, batch_size, generator, rotations, dim, dtype):
    """Pairs drawn with replacement, the same random rotation on both frames of a pair, and fresh v, v′ ~ N(0, I)."""
    index = torch.randint(len(data_t), (int(batch_size),), generator=generator)
    a, b = data_t[index], data_lag[index]
    if rotations:
        rotation = random_rotations(len(a), generator, dtype)
        a, b = a @ rotation, b @ rotation
    v = torch.randn(len(a), 2, dim, generator=generator, dtype=torch.float64).to(dtype)
    return a, b, v


def _minibatches(sets, batch_size, generator, rotations):
    """``[(flow, x_t, x_lag, v)]``: a minibatch drawn uniformly over all pairs of all molecules, split by molecule."""
    if len(sets) == 1:
        flow, data_t, data_lag = sets[0]
        return [(flow, *_minibatch(data_t, data_lag, batch_size, generator, rotations, flow.dim, _dtype(flow)))]
    sizes = torch.tensor([len(data_t) for _, data_t, _ in sets])
    molecule = torch.bucketize(torch.randint(int(sizes.sum()), (int(batch_size),), generator=generator), sizes.cumsum(0), right=True)
    counts = torch.bincount(molecule, minlength=len(sets)).tolist()
    return [(flow, *_minibatch(data_t, data_lag, count, generator, rotations, flow.dim, _dtype(flow)))
            for (flow, data_t, data_lag), count in zip(sets, counts) if count]
