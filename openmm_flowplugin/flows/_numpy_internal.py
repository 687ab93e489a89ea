"""``InternalCoordinateProposal.propose`` of a torsion mixture in NumPy: the same draws and arithmetic, no torch ops.

A jump of ``FlowMCIntegrator`` proposes from one configuration, and on a molecule of tens of atoms the torch
path of a blind torsion mixture (``moves="torsions"``, ``components > 1``, rigid rotations) spends most of
its time in the overhead of torch ops on a few floats. :class:`NumpyTorsionMixture` is a snapshot of such a
proposal (Z-matrix index arrays, mixture-network weights, base scales) for one parameter version; the
proposal keeps one through :func:`~._numpy_log_prob.cached_snapshot` and rebuilds it when its parameters
change. The random numbers are drawn by the same torch calls on the same generator as the torch path, so both
paths give the same proposals and Hastings terms to rounding (``tests/test_internal_proposal.py``).
"""

__all__ = ["NumpyTorsionMixture"]

import math

import numpy as np
import torch

from ._numpy_log_prob import _conditioner_steps, _cross, _numpy

_IMAGES = np.arange(-4, 5, dtype=np.float64) * 2.0 * math.pi
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _wrap(angle):
    return np.remainder(angle + math.pi, 2.0 * math.pi) - math.pi


def _softplus(x):
    """torch.nn.functional.softplus (its threshold 20 included)."""
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def _logsumexp(a, axis=-1):
    """Over the last axis (``axis=-1``) or the first (``axis=0``); a row of -inf gives -inf, NaN stays NaN."""
    peak = a.max(axis=axis)
    safe = np.where(np.isfinite(peak), peak, 0.0)
    shifted = a - (safe[..., None] if axis == -1 else safe)
    return np.log(np.exp(shifted).sum(axis=axis)) + safe


def _wrapped_normal_log_prob(delta, log_scale):
    shifted = (_wrap(delta)[..., None] + _IMAGES) / np.exp(log_scale)[..., None]
    return _logsumexp(-0.5 * shifted * shifted, -1) - log_scale - _LOG_SQRT_2PI


class NumpyTorsionMixture:
    """A snapshot of a blind torsion-mixture :class:`~.internal_conditional.InternalCoordinateProposal`.

    Use :meth:`build`, which returns ``None`` for a proposal this path does not cover (the caller then
    uses torch): another architecture, non-rigid moves, or weights that are not float64 on the CPU.
    """

    def __init__(self, proposal, steps):
        from .internal_conditional import _MAX_TORSION_SCALE

        transform = proposal.transform
        self.roots = tuple(int(a) for a in transform.roots)
        self.i, self.j, self.k, self.l = (np.asarray(transform.zmatrix[:, c], dtype=np.intp) for c in range(4))
        self.moved = _numpy(proposal.moved).astype(np.intp)
        self.inputs = _numpy(proposal.mixture_inputs)
        n_b, n_a, _ = proposal.sizes
        self.base_log_scale = _numpy(proposal.log_scale)[n_b + n_a + self.moved]
        self.log_max_scale = math.log(_MAX_TORSION_SCALE)
        self.components = int(proposal.config["components"])
        self.rotations = [(int(j), int(k), _numpy(atoms).astype(np.intp)) for j, k, atoms in proposal._rotations]
        self.steps = steps

    @classmethod
    def build(cls, proposal):
        """The snapshot, or ``None`` if ``proposal`` is not a float64 CPU blind torsion mixture with rigid rotations."""
        if not (proposal._mixture_is_blind and proposal._rotations is not None):
            return None
        if proposal.log_scale.dtype != torch.float64 or proposal.log_scale.device.type != "cpu":
            return None
        steps = _conditioner_steps(proposal.mixture_net)
        return None if steps is None else cls(proposal, steps)

    def _internal(self, x):
        """Bonds, angles and torsions of one configuration ``x`` (n_atoms, 3), as ``InternalCoordinateTransform``.

        Row ``(i, j, k, l)``: bond i-j, angle i-j-k and torsion l-k-j-i, from the bond vectors
        b1 = k - l, b2 = j - k, b3 = i - j (one gather, components spelled out: NumPy calls dominate here).
        """
        a0, a1, a2 = self.roots
        b1, b2, b3 = x[self.k] - x[self.l], x[self.j] - x[self.k], x[self.i] - x[self.j]
        n1, n2 = _cross(b1, b2), _cross(b2, b3)
        len2, len3 = np.sqrt((b2 * b2).sum(1)), np.sqrt((b3 * b3).sum(1))
        m1 = _cross(n1, b2 / len2[:, None])
        torsions = np.arctan2(-(m1 * n2).sum(1), (n1 * n2).sum(1))
        cos = np.clip(-(b3 * b2).sum(1) / (len3 * len2), -1.0, 1.0)  # angle between i - j and k - j
        u, v = x[a1] - x[a0], x[a2] - x[a0]
        root_u, root_v = math.sqrt(u @ u), math.sqrt(v @ v)
        root_angle = math.acos(min(1.0, max(-1.0, (u @ v) / (root_u * root_v))))
        bonds = np.concatenate(((root_u, root_v), len3))
        angles = np.concatenate(((root_angle,), np.arccos(cos)))
        return bonds, angles, torsions

    def _mixture(self, bonds, angles, torsions):
        """Log weights (K,), centres (K, m) and log scales (K, m) of the moved torsions' mixture."""
        h = np.concatenate((10.0 * bonds, angles, np.sin(torsions), np.cos(torsions))) * self.inputs
        for kind, weight_t, bias in self.steps:
            h = h @ weight_t + bias if kind == "linear" else h / (1.0 + np.exp(-h))  # SiLU
        k, m = self.components, len(self.moved)
        logits, sin_cos, raw = h[:k], h[k : k + 2 * k * m].reshape(k, m, 2), h[k + 2 * k * m :].reshape(k, m)
        log_weights = logits - _logsumexp(logits, 0)
        centres = np.arctan2(sin_cos[..., 0], sin_cos[..., 1])
        log_scale = self.base_log_scale + 3.0 * np.tanh(raw / 3.0)
        log_scale = self.log_max_scale - _softplus(self.log_max_scale - log_scale)
        return log_weights, centres, log_scale

    def _log_density(self, moved_torsions, log_weights, centres, log_scale):
        """log q(t | rest) of the moved torsions (b, m) under the mixture."""
        per_component = _wrapped_normal_log_prob(moved_torsions[:, None, :] - centres, log_scale).sum(-1)
        return _logsumexp(log_weights + per_component, -1)

    def propose(self, x, n, generator=None):
        """As ``InternalCoordinateProposal.propose``: ``n`` proposals from ``x`` (n_atoms, 3) nm and their log Hastings terms.

        A configuration outside the domain (a bond <= 0, an angle outside (0, pi), NaN) gives the current
        positions with Hastings terms of -inf, rejections, as in torch.
        """
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflows and NaNs end as -inf or rejections
            return self._propose(np.asarray(x, dtype=np.float64), n, generator)

    def _propose(self, x, n, generator):
        bonds, angles, torsions = self._internal(x)
        log_weights, centres, log_scale = self._mixture(bonds, angles, torsions)
        uniform = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        chosen = _component(np.exp(log_weights), uniform)
        noise = torch.randn((n, len(self.moved)), generator=generator, dtype=torch.float64).numpy()
        new = _wrap(centres[chosen] + np.exp(log_scale[chosen]) * noise)
        current = torsions[self.moved]
        log_q = self._log_density(np.concatenate((current[None], new)), log_weights, centres, log_scale)
        log_hastings = log_q[0] - log_q[1:]
        if not ((bonds > 0).all() and (angles > 0).all() and (angles < math.pi).all()):  # also: no rotation axis
            return np.repeat(x[None], n, axis=0), np.full(n, -math.inf)
        if n == 1:  # one jump of an integrator: scalar rotation matrices
            x_new = x.copy()
            for (j, k, atoms), angle in zip(self.rotations, (new[0] - current).tolist()):
                _rotate_one(x_new, j, k, atoms, angle)
            return x_new[None], log_hastings
        x_new = np.repeat(x[None], n, axis=0)
        for (j, k, atoms), angle in zip(self.rotations, (new - current).T):
            x_new = _rotate(x_new, j, k, atoms, angle)
        return x_new, log_hastings


def _component(weights, uniform):
    """Inverse-CDF draw of a component from ``weights`` (K,) for each uniform in [0, 1) (n,); as the torch path."""
    cumulative = np.cumsum(weights)
    return np.minimum((cumulative[None, :] <= uniform[:, None] * cumulative[-1]).sum(1), len(weights) - 1)


def _rotate(x, j, k, atoms, angle):
    """Rotate ``atoms`` of ``x`` (b, n, 3) about the bond axis from ``k`` to ``j`` by ``angle`` (b,): Rodrigues' rotation matrix."""
    axis = x[:, j] - x[:, k]
    a = axis / np.sqrt((axis * axis).sum(1))[:, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    ax, ay, az = a[:, 0], a[:, 1], a[:, 2]
    zero = np.zeros_like(ax)
    cross = np.stack((zero, -az, ay, az, zero, -ax, -ay, ax, zero), -1).reshape(-1, 3, 3)
    rotation = cos * np.eye(3) + sin * cross + (1.0 - cos) * (a[:, :, None] * a[:, None, :])
    x = x.copy()
    x[:, atoms] = x[:, j, None] + (x[:, atoms] - x[:, j, None]) @ rotation.transpose(0, 2, 1)
    return x


def _rotate_one(x, j, k, atoms, angle):
    """:func:`_rotate` of one configuration ``x`` (n, 3), in place."""
    ax, ay, az = (x[j] - x[k]).tolist()
    norm = math.sqrt(ax * ax + ay * ay + az * az)
    ax, ay, az = ax / norm, ay / norm, az / norm
    c, s = math.cos(angle), math.sin(angle)
    t = 1.0 - c
    rotation_t = np.array(((c + t * ax * ax, t * ax * ay + s * az, t * ax * az - s * ay),
                           (t * ax * ay - s * az, c + t * ay * ay, t * ay * az + s * ax),
                           (t * ax * az + s * ay, t * ay * az - s * ax, c + t * az * az)))
    origin = x[j].copy()
    x[atoms] = (x[atoms] - origin) @ rotation_t + origin
