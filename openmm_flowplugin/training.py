"""Training Boltzmann generators: maximum likelihood on MD data, then reverse KL through OpenMM.

Reverse KL minimizes ``E_q[u(x) + log q(x)]`` (= KL(q || p) up to log Z) with gradients of ``u``
from OpenMM's forces through :class:`~openmm_flowplugin.energy.OpenMMEnergy`. High-energy samples
are softened with a lin-log cut so a few clashes do not dominate the gradient; samples whose energy
evaluation fails (``u = inf``) are left out of the loss.
"""

__all__ = ["train_maximum_likelihood", "train_reverse_kl", "importance_weights", "effective_sample_size", "ESSSelector"]

import copy
import math

import numpy as np
import torch
from tqdm.auto import tqdm


def _as_positions(data):
    if hasattr(data, "xyz"):  # mdtraj.Trajectory
        data = data.xyz
    return torch.as_tensor(np.asarray(data), dtype=torch.float64)


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
    """

    def __init__(self, energy, every=250, n_samples=2000):
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
    callback : callable, optional
        ``callback(flow, step)`` after every step (e.g. an :class:`ESSSelector`).

    Returns
    -------
    list of float
        Mean negative log-likelihood per step.
    """
    positions = _as_positions(data)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    optimizer = torch.optim.Adam(flow.parameters(), lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, n_steps)
    history = []
    flow.train()
    bar = tqdm(range(n_steps), desc="maximum likelihood", disable=not progress)
    for step in bar:
        batch = positions[torch.randint(len(positions), (batch_size,), generator=generator)]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 100.0)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        bar.set_postfix(nll=f"{np.mean(history[-50:]):.3f}")
        if callback is not None:
            callback(flow, step)
    flow.eval()
    return history


def _linlog(u, cut):
    """u below ``cut``; ``cut + log(1 + u - cut)`` above (continuous, monotonic, same gradient sign)."""
    return torch.where(u < cut, u, cut + torch.log1p(torch.clamp(u - cut, min=0.0)))


def train_reverse_kl(flow, energy, n_steps=500, batch_size=256, learning_rate=1e-4, data=None, ml_weight=0.5,
                     energy_cut=1e3, progress=True, seed=None, callback=None):
    """Fine-tune ``flow`` by reverse KL against ``energy`` (optionally mixed with maximum likelihood on ``data``).

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
    list of float
        Reverse-KL loss per step (``E_q[u + log q]``, an upper bound on ``-log Z``).
    """
    positions = None if data is None else _as_positions(data)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    optimizer = torch.optim.Adam(flow.parameters(), lr=learning_rate)
    history = []
    flow.train()
    bar = tqdm(range(n_steps), desc="reverse KL", disable=not progress)
    for step in bar:
        x, log_q = flow.sample(batch_size)
        u = energy(x)
        ok = torch.isfinite(u) & torch.isfinite(log_q)
        if not ok.any():
            continue
        kl = (_linlog(u[ok], energy_cut) + log_q[ok]).mean()
        loss = kl
        if positions is not None and ml_weight > 0:
            batch = positions[torch.randint(len(positions), (batch_size,), generator=generator)]
            loss = loss - ml_weight * flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 100.0)
        optimizer.step()
        history.append(kl.item())
        bar.set_postfix(kl=f"{np.mean(history[-20:]):.3f}")
        if callback is not None:
            callback(flow, step)
    flow.eval()
    return history


@torch.no_grad()
def importance_weights(flow, energy, n_samples, batch_size=2000):
    """Draw ``n_samples`` from ``flow``; return positions, reduced energies and log importance weights.

    ``log w = -u(x) - log q(x)`` (unnormalized, float64); failed energies and samples outside the
    flow's domain (``log q = -inf``) give ``log w = -inf``.
    """
    xs, us, log_ws = [], [], []
    for start in range(0, n_samples, batch_size):
        x, log_q = flow.sample(min(batch_size, n_samples - start))
        u = energy(x)
        xs.append(x)
        us.append(u)
        valid = torch.isfinite(u) & torch.isfinite(log_q)  # log_q = -inf: a sample outside the flow's domain
        log_ws.append(torch.where(valid, -u - log_q, torch.full_like(u, -math.inf)))
    return torch.cat(xs), torch.cat(us), torch.cat(log_ws)


def effective_sample_size(log_weights):
    """Kish effective sample size fraction ``(sum w)^2 / (n sum w^2)`` in [0, 1], from log weights."""
    log_w = torch.as_tensor(log_weights, dtype=torch.float64)
    finite = torch.isfinite(log_w)
    if not finite.any():
        return 0.0
    log_w = log_w - log_w[finite].max()
    w = torch.exp(log_w)
    return float(w.sum() ** 2 / (w**2).sum() / len(w))
