"""Training Boltzmann generators: maximum likelihood on MD data, then reverse KL through OpenMM.

Both objectives run through one optimisation loop (:func:`_optimize`): Adam, gradient clipping,
an optional cosine learning-rate decay, a progress bar, a per-step callback (e.g.
:class:`ESSSelector`) and one torch thread (:mod:`openmm_flowplugin._threads`).

Reverse KL minimizes ``E_q[u(x) + log q(x)]`` (= KL(q || p) up to log Z) with gradients of ``u``
from OpenMM's forces through :class:`~openmm_flowplugin.bridge.OpenMMEnergy`.
"""

__all__ = ["train_maximum_likelihood", "train_reverse_kl", "ESSSelector", "TrainingHistory"]

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from .._threads import package_threads
from ..analysis.weights import effective_sample_size, importance_weights
from ..errors import InvalidInputError


class TrainingHistory(list):
    """The loss per optimisation step (a list of floats), with counts of what the loop left out.

    Attributes
    ----------
    n_skipped_steps : int
        Steps without a single finite sample (no update was made).
    n_nonfinite_samples : int
        Samples left out of the loss because their energy or log q was not finite.
    n_softened_samples : int
        Samples whose reduced energy was above the cut and entered the loss softened (reverse KL).
    """

    def __init__(self):
        super().__init__()
        self.n_skipped_steps = 0
        self.n_nonfinite_samples = 0
        self.n_softened_samples = 0


def _as_positions(data):
    if hasattr(data, "xyz"):  # mdtraj.Trajectory
        data = data.xyz
    positions = torch.as_tensor(np.asarray(data), dtype=torch.float64)
    if positions.ndim != 3 or positions.shape[-1] != 3 or len(positions) == 0:
        raise InvalidInputError(f"training data must be a non-empty array of shape (n_frames, n_atoms, 3) in nm, got {tuple(positions.shape)}.")
    return positions


def _check_counts(**counts):
    for name, value in counts.items():
        if int(value) != value or value < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}.")


def _optimize(flow, step_loss, n_steps, learning_rate, description, weight_decay=0.0, cosine=False, progress=True, callback=None):
    """The loop both objectives share. ``step_loss()`` returns ``(loss, reported)`` or ``None`` to skip the step."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, n_steps) if cosine else None
    history = TrainingHistory()
    flow.train()
    try:
        with package_threads():
            bar = tqdm(range(n_steps), desc=description, disable=not progress)
            for step in bar:
                result = step_loss(history)
                if result is None:
                    history.n_skipped_steps += 1
                else:
                    loss, reported = result
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(flow.parameters(), 100.0)
                    optimizer.step()
                    history.append(reported)
                    bar.set_postfix(loss=f"{np.mean(history[-50:]):.3f}")
                if schedule is not None:
                    schedule.step()
                if callback is not None:
                    callback(flow, step)
    finally:
        flow.eval()
    return history


class ESSSelector:
    """Model selection by importance-sampling ESS on fresh samples: keeps the best weights seen.

    Maximum likelihood on correlated MD frames overfits (the ESS peaks, then falls); every
    ``every`` steps this draws ``n_samples`` new samples, measures the ESS against ``energy`` and
    remembers the best state. Fresh samples make this a validation, not a fit to the test.

    Parameters
    ----------
    energy : OpenMMEnergy
    every : int
    n_samples : int

    Examples
    --------
    >>> from openmm_flowplugin import systems, OpenMMEnergy
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> selector = ESSSelector(OpenMMEnergy(ala2.system, 300), every=10, n_samples=100)
    >>> selector.best_ess
    -1.0
    """

    def __init__(self, energy, every=250, n_samples=2000):
        _check_counts(every=every, n_samples=n_samples)
        self.energy, self.every, self.n_samples = energy, int(every), int(n_samples)
        self.best_ess, self.best_state, self.history = -1.0, None, []

    def __call__(self, flow, step):
        if (step + 1) % self.every:
            return
        flow.eval()
        _, _, log_w = importance_weights(flow, self.energy, self.n_samples)
        ess = effective_sample_size(log_w)
        self.history.append((step + 1, ess))
        if ess > self.best_ess:
            self.best_ess, self.best_state = ess, copy.deepcopy(flow.state_dict())
        flow.train()

    def restore_best(self, flow):
        """Load the best weights seen into ``flow``; returns the ESS they had."""
        if self.best_state is not None:
            flow.load_state_dict(self.best_state)
        return self.best_ess


def train_maximum_likelihood(flow, data, n_steps=2000, batch_size=256, learning_rate=1e-3, weight_decay=0.0, progress=True, seed=None,
                             callback=None):
    """Fit ``flow`` to configurations by maximum likelihood (Adam, cosine learning-rate decay).

    Parameters
    ----------
    flow : BoltzmannGenerator
    data : mdtraj.Trajectory or array_like, shape=(n_frames, n_atoms, 3)
        nm.
    n_steps, batch_size : int
    learning_rate, weight_decay : float
    progress : bool
    seed : int, optional
        Seeds the batch draws (default 0).
    callback : callable, optional
        ``callback(flow, step)`` after every step (e.g. an :class:`ESSSelector`).

    Returns
    -------
    TrainingHistory
        Mean negative log-likelihood per step.

    Examples
    --------
    >>> import torch
    >>> from openmm_flowplugin import systems, BoltzmannGenerator
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> data = torch.as_tensor(ala2.positions_nm)[None] + 0.002 * torch.randn(64, 22, 3, dtype=torch.float64)
    >>> flow = BoltzmannGenerator.for_system(ala2, data, n_blocks=1, hidden=(16,))
    >>> history = train_maximum_likelihood(flow, data, n_steps=3, batch_size=16, progress=False)
    >>> len(history)
    3
    """
    _check_counts(n_steps=n_steps, batch_size=batch_size)
    positions = _as_positions(data)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def step_loss(history):
        batch = positions[torch.randint(len(positions), (batch_size,), generator=generator)]
        loss = -flow.log_prob(batch).mean()
        return loss, loss.item()

    return _optimize(flow, step_loss, int(n_steps), learning_rate, "maximum likelihood", weight_decay=weight_decay, cosine=True,
                     progress=progress, callback=callback)


def _linlog(u, cut):
    """u below ``cut``; ``cut + log(1 + u - cut)`` above (continuous, monotonic, same gradient sign)."""
    return torch.where(u < cut, u, cut + torch.log1p(torch.clamp(u - cut, min=0.0)))


def train_reverse_kl(flow, energy, n_steps=500, batch_size=256, learning_rate=1e-4, data=None, ml_weight=0.5,
                     energy_cut=1e3, progress=True, seed=None, callback=None):
    """Fine-tune ``flow`` by reverse KL against ``energy`` (optionally mixed with maximum likelihood on ``data``).

    .. warning:: Two departures from the plain reverse-KL objective make it biased when they act,
       and both are counted in the returned :class:`TrainingHistory`: samples whose energy or
       log q is not finite are left out of the mean (``n_nonfinite_samples``; a step with none
       finite makes no update, ``n_skipped_steps``), and reduced energies above ``energy_cut`` enter
       softened as ``cut + log(1 + u - cut)`` (``n_softened_samples``), so a few clashes do not
       dominate the gradient. The flow remains an exact proposal either way: Metropolis-Hastings
       and importance weights use its exact density.

    Parameters
    ----------
    flow : BoltzmannGenerator
    energy : OpenMMEnergy
        Reduced energies of the target.
    n_steps, batch_size : int
    learning_rate : float
    data : mdtraj.Trajectory or array_like, optional
        If given, ``ml_weight`` times the negative log-likelihood of a data batch is added, which
        keeps the flow from collapsing onto one mode.
    ml_weight : float
    energy_cut : float
        Reduced energy above which ``u`` is softened logarithmically in the loss.
    callback : callable, optional
        ``callback(flow, step)`` after every step (e.g. an :class:`ESSSelector`).

    Returns
    -------
    TrainingHistory
        Reverse-KL loss per step (``E_q[u + log q]``, an upper bound on ``-log Z``).
    """
    _check_counts(n_steps=n_steps, batch_size=batch_size)
    positions = None if data is None else _as_positions(data)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def step_loss(history):
        x, log_q = flow.sample(batch_size)
        u = energy(x)
        ok = torch.isfinite(u) & torch.isfinite(log_q)
        history.n_nonfinite_samples += int((~ok).sum())
        if not ok.any():
            return None
        history.n_softened_samples += int((u[ok] > energy_cut).sum())
        kl = (_linlog(u[ok], energy_cut) + log_q[ok]).mean()
        loss = kl
        if positions is not None and ml_weight > 0:
            batch = positions[torch.randint(len(positions), (batch_size,), generator=generator)]
            loss = loss - ml_weight * flow.log_prob(batch).mean()
        return loss, kl.item()

    return _optimize(flow, step_loss, int(n_steps), learning_rate, "reverse KL", progress=progress, callback=callback)
