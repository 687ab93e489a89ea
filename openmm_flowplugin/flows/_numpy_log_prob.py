"""``BoltzmannGenerator.log_prob`` of a few configurations in NumPy: the same arithmetic, no torch ops.

A Metropolis jump needs ``log q`` of one configuration (the current one, which MD has just moved), and
a torch op on a few floats costs several times a NumPy op. :class:`NumpyLogProb` is a snapshot of a flow
(index arrays, feature standardization, conditioner weights) taken for one parameter version; the flow
keeps one and rebuilds it when :func:`~openmm_flowplugin.proposals.protocol.proposal_version` changes.
Positions, internal coordinates and features are float64; the coupling layers run in the weights' dtype,
as the torch path does, so the two agree to float32 rounding (``tests/test_flows_fast_path.py``).
"""

__all__ = ["NumpyLogProb", "numpy_log_prob"]

import math
import weakref

import numpy as np
import zuko
from torch import nn

from ._splines import rqs_forward_numpy

_LINEAR_TYPES = (nn.Linear, zuko.nn.Linear)


def _norm(v):
    return np.sqrt(np.einsum("...i,...i->...", v, v))


def _angles(a, b, c):
    u, v = a - b, c - b
    return np.arccos(np.clip(np.einsum("...i,...i->...", u, v) / (_norm(u) * _norm(v)), -1.0, 1.0))


def _cross(u, v):
    """``np.cross`` over the last axis, without its axis bookkeeping (several times faster on small arrays)."""
    u0, u1, u2 = u[..., 0], u[..., 1], u[..., 2]
    v0, v1, v2 = v[..., 0], v[..., 1], v[..., 2]
    return np.stack((u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0), axis=-1)


def _torsions(a, b, c, d):
    """As :func:`~openmm_flowplugin.geometry.internal.dihedral` (IUPAC sign convention)."""
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = _cross(b1, b2), _cross(b2, b3)
    m1 = _cross(n1, b2 / _norm(b2)[..., None])
    return np.arctan2(-np.einsum("...i,...i->...", m1, n2), np.einsum("...i,...i->...", n1, n2))


def _numpy(tensor, dtype=None):
    array = tensor.detach().cpu().numpy()
    return np.array(array, dtype=dtype or array.dtype)  # a copy: the snapshot must not follow later updates


class _Layer:
    """One coupling layer: index arrays and the conditioner as (kind, weight^T, bias) steps."""

    def __init__(self, coupling, steps):
        self.cond_torsion, self.cond_rest, self.transformed = coupling._indices(None)
        self.circular, self.bins, self.n_out = coupling.circular, coupling.bins, coupling.n_out
        self.bound = coupling.spline_bound
        self.steps = steps

    def __call__(self, z):
        angles = z[:, self.cond_torsion]
        h = np.concatenate((np.cos(angles), np.sin(angles), z[:, self.cond_rest]), axis=-1)
        for kind, weight_t, bias in self.steps:
            h = h @ weight_t + bias if kind == "linear" else h / (1 + np.exp(-h))  # SiLU
        phi = h.reshape(len(z), self.n_out, 3 * self.bins - 1)
        x_b = z[:, self.transformed]
        if self.circular:
            y_b, ladj = rqs_forward_numpy(np.remainder(x_b, 2 * math.pi) - math.pi, phi, self.bins, math.pi)
        else:
            y_b, ladj = rqs_forward_numpy(x_b, phi, self.bins, self.bound)
        y = z.copy()
        y[:, self.transformed] = y_b
        return y, ladj


def _conditioner_steps(net):
    """``net`` (zuko MLP) as NumPy steps, or ``None`` if it holds a module this path does not know."""
    steps = []
    for module in net:
        if type(module) in _LINEAR_TYPES and module.weight.ndim == 2:
            weight = _numpy(module.weight)
            bias = _numpy(module.bias) if module.bias is not None else np.zeros(weight.shape[0], weight.dtype)
            steps.append(("linear", np.ascontiguousarray(weight.T), bias))
        elif type(module) is nn.SiLU:
            steps.append(("silu", None, None))
        else:
            return None
    return steps


class NumpyLogProb:
    """A snapshot of a :class:`~.boltzmann_generator.BoltzmannGenerator` whose call is its ``log_prob`` in NumPy.

    Use :meth:`build`, which returns ``None`` for a flow it cannot represent (the caller then uses torch).
    """

    def __init__(self, flow, layers):
        ict = flow.coordinates
        a0, a1, a2 = ict.roots
        i, j, k, l = ict.zmatrix.T
        self.bond_pairs = (np.concatenate(([a1, a2], i)), np.concatenate(([a0, a0], j)))
        self.angle_triples = tuple(np.concatenate(([first], rest)) for first, rest in zip((a1, a0, a2), (i, j, k)))
        self.torsion_quads = (l, k, j, i)
        narrow = _numpy(flow.narrow).astype(bool)
        self.narrow, self.circular = np.flatnonzero(narrow), np.flatnonzero(~narrow)
        self.torsion_loc = _numpy(flow.torsion_loc, np.float64)[narrow]
        self.torsion_scale = _numpy(flow.torsion_scale, np.float64)[narrow]
        self.bond_loc, self.bond_scale = _numpy(flow.bond_loc, np.float64), _numpy(flow.bond_scale, np.float64)
        self.angle_loc, self.angle_scale = _numpy(flow.angle_loc, np.float64), _numpy(flow.angle_scale, np.float64)
        self.log_det_constant = (np.log(self.bond_scale).sum() + np.log(self.angle_scale).sum()
                                 + np.log(self.torsion_scale).sum())
        self.n_circular = flow.n_circular
        self.layer_dtype = layers[0].steps[0][1].dtype if layers else np.float32
        self.layers = layers

    @classmethod
    def build(cls, flow):
        if flow.bond_loc.device.type != "cpu":
            return None
        layers = []
        for coupling in flow.layers:
            steps = _conditioner_steps(coupling.net)
            if steps is None:
                return None
            layers.append(_Layer(coupling, steps))
        return cls(flow, layers)

    def __call__(self, x):
        """log q (float64, shape (n,)) of positions ``x`` (n, n_atoms, 3) nm."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):  # NaN/inf positions give NaN, as the torch path does, without warnings
            p, q = self.bond_pairs
            bonds = _norm(x[:, p] - x[:, q])
            a, b, c = self.angle_triples
            angles = _angles(x[:, a], x[:, b], x[:, c])
            t = self.torsion_quads
            torsions = _torsions(x[:, t[0]], x[:, t[1]], x[:, t[2]], x[:, t[3]])
            deviation = np.remainder(torsions[:, self.narrow] - self.torsion_loc + math.pi, 2 * math.pi) - math.pi
            log_bonds, log_angles = np.log(bonds), np.log(angles)
            features = np.concatenate((
                torsions[:, self.circular],
                deviation / self.torsion_scale,
                (log_bonds - self.bond_loc) / self.bond_scale,
                (np.log(angles / math.pi / (1 - angles / math.pi)) - self.angle_loc) / self.angle_scale,  # torch.logit's formula
            ), axis=-1)
            # log |d features / d x| = -(log|d ic / d features| + log|d x / d ic|), as BoltzmannGenerator._features
            log_det = (self.log_det_constant + log_bonds.sum(-1) + (log_angles + np.log1p(-angles / math.pi)).sum(-1)
                       + 2.0 * log_bonds.sum(-1) + np.log(np.sin(angles)).sum(-1))
            z, ladj = features.astype(self.layer_dtype), 0.0
            for layer in self.layers:
                z, layer_ladj = layer(z)
                ladj = ladj + layer_ladj
            z = z.astype(np.float64)
            torsions_z, rest = z[:, : self.n_circular], z[:, self.n_circular :]
            inside = (np.abs(torsions_z) <= math.pi + 1e-5).all(-1)
            log_base = (np.where(inside, -self.n_circular * math.log(2 * math.pi), -np.inf)
                        - 0.5 * (rest**2).sum(-1) - 0.5 * rest.shape[-1] * math.log(2 * math.pi))
            return log_base + np.asarray(ladj, dtype=np.float64) - log_det


_snapshots = weakref.WeakKeyDictionary()  # owner -> {build: (its version, its snapshot)}; outside the owner, so never pickled


def cached_snapshot(owner, build):
    """``build(owner)`` for the owner's current parameter version: rebuilt only when
    :func:`~openmm_flowplugin.proposals.protocol.proposal_version` changes (``None`` if ``build`` cannot represent it)."""
    from ..proposals.protocol import proposal_version

    version = proposal_version(owner)
    per_owner = _snapshots.setdefault(owner, {})
    cached = per_owner.get(build)
    if cached is None or cached[0] != version:
        cached = per_owner[build] = (version, build(owner))
    return cached[1]


def numpy_log_prob(flow, x):
    """``flow.log_prob(x)`` as a float64 NumPy array through the flow's cached :class:`NumpyLogProb`, or ``None``."""
    snapshot = cached_snapshot(flow, NumpyLogProb.build)
    return None if snapshot is None else snapshot(x)

