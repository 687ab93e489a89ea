"""Boltzmann generators: normalizing flows on internal coordinates.

The flow models the 3N-6 internal coordinates of a molecule (see
:mod:`openmm_flowplugin.coordinates`) as features

- broad torsions in ``[-pi, pi)`` (backbone, rotors), transformed by circular rational-quadratic
  splines (Rezende et al. 2020),
- narrow torsions (unimodal in the reference data, e.g. peptide bonds, sibling-relative hydrogen
  torsions), centred on their circular mean and standardized,
- ``log`` bond lengths and ``logit(angle / pi)``, standardized,

the last three transformed by monotonic rational-quadratic splines (Durkan et al. 2019),

stacked in coupling layers whose conditioners see torsions through ``(cos, sin)``. The spline
and coupling machinery is zuko's (``transform()``, ``sample``); ``log_prob`` evaluates the same splines
directly in a few fused torch ops (:func:`~._splines.rqs_forward`, no transform objects per call), which makes
one configuration ~3x cheaper (``benchmarks/bench_log_prob.py``).

References
----------
Noé, Olsson, Köhler, Wu. Boltzmann generators. Science 365 (2019). https://arxiv.org/abs/1812.01729
"""

__all__ = ["BoltzmannGenerator"]

import math

import torch
import torch.nn.functional as F
import zuko
from torch import nn
from zuko.flows.spline import CircularRQSTransform
from zuko.transforms import ComposedTransform, CouplingTransform, DependentTransform, MonotonicRQSTransform

from ..geometry.internal import InternalCoordinates, InternalCoordinateTransform
from ._numpy_log_prob import numpy_log_prob
from ._splines import rqs_forward
from ..errors import InvalidInputError

_SPLINE_BOUND = 5.0  # standardized bond/angle features; identity tails outside
_LINEAR_TYPES = (nn.Linear, zuko.nn.Linear)  # zuko's Linear is not an nn.Linear
_NUMPY_MAX_BATCH = 16  # no-grad log_prob of at most this many configurations runs its splines in NumPy (faster)


class _Coupling(nn.Module):
    """One coupling layer: ``features[transformed] = spline(features[transformed] | features[~transformed])``."""

    spline_bound = _SPLINE_BOUND  # non-circular splines: identity outside [-bound, bound]

    def __init__(self, transformed, is_torsion, hidden, bins):
        super().__init__()
        self.register_buffer("transformed", transformed.clone())
        self.register_buffer("is_torsion", is_torsion.clone())
        kinds = is_torsion[transformed]
        if not (kinds.all() or (~kinds).all()):
            raise InvalidInputError("a coupling layer transforms either torsions only or non-torsions only.")
        self.circular = bool(kinds.all())
        self.bins = bins
        condition = ~transformed
        n_condition_torsions = int((condition & is_torsion).sum())
        n_in = int(condition.sum()) + n_condition_torsions  # torsions enter as (cos, sin)
        self.n_out = int(transformed.sum())
        self.net = zuko.nn.MLP(n_in, self.n_out * (3 * bins - 1), hidden_features=hidden, activation=nn.SiLU)
        last = self.net[-1]
        nn.init.zeros_(last.weight)  # start at the identity map
        nn.init.zeros_(last.bias)

    def _embed(self, x_a):
        torsion = self.is_torsion[~self.transformed]
        return torch.cat((torch.cos(x_a[..., torsion]), torch.sin(x_a[..., torsion]), x_a[..., ~torsion]), dim=-1)

    def _meta(self, x_a):
        phi = self.net(self._embed(x_a)).unflatten(-1, (self.n_out, 3 * self.bins - 1))
        widths, heights, derivatives = phi.split((self.bins, self.bins, self.bins - 1), dim=-1)
        if self.circular:
            univariate = CircularRQSTransform(widths, heights, derivatives)
        else:
            univariate = MonotonicRQSTransform(widths, heights, derivatives, bound=_SPLINE_BOUND)
        return DependentTransform(univariate, 1)

    def forward(self):
        return CouplingTransform(self._meta, ~self.transformed)

    def call_and_ladj(self, x):
        """Forward (normalizing) map of the layer and its log|det J|, shapes (..., n_features) and (...,).

        Equals ``self().call_and_ladj(x)`` (zuko) to float32 rounding, differentiable, but builds no
        transform objects: index tensors are cached and the spline is :func:`~._splines.rqs_forward`.
        """
        cond_torsion, cond_rest, idx_b = self._indices(x.device)
        angles = x.index_select(-1, cond_torsion)
        phi = self._conditioner(torch.cat((torch.cos(angles), torch.sin(angles), x.index_select(-1, cond_rest)), dim=-1))
        x_b = x.index_select(-1, idx_b)
        if self.circular:  # zuko's CircularRQSTransform: circular shift by pi, then a spline on [-pi, pi]
            y_b, ladj = rqs_forward(torch.remainder(x_b, 2 * math.pi) - math.pi, phi, self.bins, math.pi)
        else:
            y_b, ladj = rqs_forward(x_b, phi, self.bins, _SPLINE_BOUND)
        return x.index_copy(-1, idx_b, y_b), ladj

    def _conditioner(self, h):
        """Spline parameters (..., n_out, 3 bins - 1) from the embedded condition: ``self.net``, layer by layer."""
        for module in self.net:  # functional calls skip nn.Module.__call__'s overhead; same weights, same ops
            if type(module) in _LINEAR_TYPES and module.weight.ndim == 2:
                h = F.linear(h, module.weight, module.bias)
            elif type(module) is nn.SiLU:
                h = F.silu(h)
            else:
                h = module(h)
        return h.unflatten(-1, (self.n_out, 3 * self.bins - 1))

    def _indices(self, device):
        """(condition torsions, other condition features, transformed features) as index tensors on
        ``device`` (NumPy arrays for ``None``), cached; the key follows the buffers (``load_state_dict``
        copies into them, ``.to()`` replaces them).
        """
        key = (self.transformed.data_ptr(), self.transformed._version, self.is_torsion.data_ptr(), self.is_torsion._version, device)
        cache = self.__dict__.setdefault("_index_cache", {})
        if key not in cache:
            condition = ~self.transformed
            masks = (condition & self.is_torsion, condition & ~self.is_torsion, self.transformed)
            indices = tuple(torch.nonzero(mask).flatten().cpu() for mask in masks)
            cache.clear()
            cache[key] = tuple(i.numpy() for i in indices) if device is None else tuple(i.to(device) for i in indices)
        return cache[key]

    def __getstate__(self):
        state = self.__dict__.copy()  # the index cache is derived data: rebuilt after a copy or unpickling
        state.pop("_index_cache", None)
        return state

    def inverse_and_ladj(self, y):
        """Inverse of the layer and the forward log|det J| at the preimage, with one conditioner pass.

        (zuko's generic inverse ``call_and_ladj`` evaluates the conditioner twice.)
        """
        spline = self._meta(y[..., ~self.transformed])
        x_b = spline.inv(y[..., self.transformed])
        _, ladj = spline.call_and_ladj(x_b)
        x = y.clone()
        x[..., self.transformed] = x_b
        return x, ladj


class BoltzmannGenerator(nn.Module):
    """Normalizing flow over a molecule's internal coordinates, with Cartesian ``sample``/``log_prob``.

    Parameters
    ----------
    n_atoms : int
    bonds : list of (int, int)
        Bond graph (e.g. ``[(a.index, b.index) for a, b in topology.bonds()]``).
    reference_positions : torch.Tensor, shape=(n_samples, n_atoms, 3)
        Configurations (nm) whose bond/angle statistics standardize the features, usually the
        training data.
    n_blocks : int
        Blocks of four coupling layers (two for torsions, two for bonds and angles).
    hidden : tuple of int
        Hidden layer widths of each conditioner.
    bins : int
        Spline bins.
    metadata : dict, optional
        Plain data stored with checkpoints (system name, fingerprint, temperature...).

    Notes
    -----
    ``log_prob`` and the ``log_q`` of ``sample`` are densities with respect to the Cartesian
    volume of the internal degrees of freedom (invariant to translation and rotation), so
    ``log w = -u(x) - log_q(x)`` is a correct importance weight and
    ``-u(x') + u(x) + log_q(x) - log_q(x')`` a correct Metropolis-Hastings ratio.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> x0 = torch.as_tensor(ala2.positions_nm)[None]
    >>> flow = BoltzmannGenerator.for_system(ala2, x0, n_blocks=1, hidden=(32,))
    >>> x, log_q = flow.sample(3)
    >>> x.shape, bool(torch.allclose(flow.log_prob(x), log_q, atol=1e-3))
    (torch.Size([3, 22, 3]), True)
    """

    rigid_invariant = True

    def __init__(self, n_atoms, bonds, reference_positions, n_blocks=3, hidden=(128, 128), bins=8, metadata=None,
                 narrow_torsions=None, narrow_threshold=0.9):
        super().__init__()
        self.metadata = dict(metadata or {})
        self.checkpoint_path = None
        self.checkpoint_sha256 = None
        self.coordinates = InternalCoordinateTransform(n_atoms, bonds)
        ict = self.coordinates
        n_t, n_b, n_a = ict.n_torsions, ict.n_bonds, ict.n_angles
        self.n_features = n_t + n_b + n_a
        ic, _, _ = ict.to_internal(torch.as_tensor(reference_positions, dtype=torch.float64))
        resultant = torch.polar(torch.ones_like(ic.torsions), ic.torsions).mean(0)
        if narrow_torsions is None:  # unimodal torsions: mean resultant length above the threshold
            narrow_torsions = torch.nonzero(resultant.abs() > narrow_threshold).flatten().tolist() if len(ic.torsions) > 1 else []
        narrow = torch.zeros(n_t, dtype=torch.bool)
        narrow[list(narrow_torsions)] = True
        self.register_buffer("narrow", narrow)
        self.n_circular = int((~narrow).sum())
        torsion_loc = torch.angle(resultant)
        deviation = torch.remainder(ic.torsions - torsion_loc + math.pi, 2 * math.pi) - math.pi
        self.register_buffer("torsion_loc", torsion_loc.float())
        self.register_buffer("torsion_scale", _safe_std(deviation, 0.02).float())
        self.config = {"n_atoms": int(n_atoms), "bonds": [list(map(int, b)) for b in bonds], "n_blocks": int(n_blocks),
                       "hidden": [int(h) for h in hidden], "bins": int(bins), "narrow_torsions": sorted(map(int, narrow_torsions))}
        log_b = torch.log(ic.bonds)
        logit_a = torch.logit(ic.angles / math.pi)
        self.register_buffer("bond_loc", log_b.mean(0).float())
        self.register_buffer("bond_scale", _safe_std(log_b, 0.01).float())
        self.register_buffer("angle_loc", logit_a.mean(0).float())
        self.register_buffer("angle_scale", _safe_std(logit_a, 0.02).float())

        is_circular = torch.zeros(self.n_features, dtype=torch.bool)
        is_circular[: self.n_circular] = True
        generator = torch.Generator().manual_seed(0)
        layers = []
        for _ in range(n_blocks):
            for group in (torch.arange(self.n_circular), torch.arange(self.n_circular, self.n_features)):
                if len(group) < 2:
                    continue
                half = group[torch.randperm(len(group), generator=generator)[: len(group) // 2]]
                first = torch.zeros(self.n_features, dtype=torch.bool)
                first[half] = True
                second = torch.zeros(self.n_features, dtype=torch.bool)
                second[group] = True
                second &= ~first
                layers += [_Coupling(first, is_circular, hidden, bins), _Coupling(second, is_circular, hidden, bins)]
        self.layers = nn.ModuleList(layers)

    @classmethod
    def for_system(cls, molecular_system, reference_positions, **kwargs):
        """Build a flow for a :class:`~openmm_flowplugin.molecular_system.MolecularSystem` (metadata filled in)."""
        if molecular_system.n_constraints:
            raise InvalidInputError(
                f"{molecular_system.name} has {molecular_system.n_constraints} constraints, but a flow moves every atom. "
                "Build the System with constraints=None (e.g. systems.get(name) does)."
            )
        from .._version import __version__
        from ..units import kelvin

        bonds = [(a.index, b.index) for a, b in molecular_system.topology.bonds()]
        metadata = {
            "system": molecular_system.name,
            "n_atoms": molecular_system.n_atoms,
            "fingerprint": molecular_system.fingerprint,
            "temperature_K": kelvin(molecular_system.temperature),
            "package_version": __version__,
        }
        metadata.update(kwargs.pop("metadata", {}))
        return cls(molecular_system.n_atoms, bonds, reference_positions, metadata=metadata, **kwargs)

    # ------------------------------------------------------------------ protocol
    @property
    def n_atoms(self):
        return self.config["n_atoms"]

    @property
    def bonds(self):
        """The bond graph the internal coordinates were built on, as a list of (i, j)."""
        return [tuple(bond) for bond in self.config["bonds"]]

    @property
    def fingerprint(self):
        """sha256 of the molecule this flow was made for (``None`` if unknown)."""
        return self.metadata.get("fingerprint")

    def transform(self):
        """The zuko transform features -> latent (normalizing direction)."""
        return ComposedTransform(*(layer() for layer in self.layers))

    def log_prob(self, x):
        """Log density (float64, shape (n,)) of Cartesian positions ``x`` of shape (n, n_atoms, 3) in nm.

        Differentiable with respect to ``x`` and the weights. Equals :meth:`_log_prob_zuko` (the same
        flow through zuko's transforms) to float32 rounding, several times faster for small batches.
        """
        x = self._check_positions(x)
        if len(x) == 0:
            return torch.zeros(0, dtype=torch.float64, device=x.device)
        if len(x) <= _NUMPY_MAX_BATCH and x.device.type == "cpu" and not self._needs_grad(x):
            log_q = numpy_log_prob(self, x.detach().numpy())
            if log_q is not None:
                return torch.from_numpy(log_q)
        ic, _, _ = self.coordinates.to_internal(x.to(torch.float64))
        features, log_det_features = self._features(ic)
        z, ladj = features.float(), torch.zeros((), device=features.device)
        for layer in self.layers:
            z, layer_ladj = layer.call_and_ladj(z)
            ladj = ladj + layer_ladj
        return self._base_log_prob(z) + ladj.double() + log_det_features

    def _log_prob_zuko(self, x):
        """Reference path of :meth:`log_prob`: the features through ``self.transform()`` (zuko's objects)."""
        x = self._check_positions(x)
        if len(x) == 0:
            return torch.zeros(0, dtype=torch.float64, device=x.device)
        ic, _, _ = self.coordinates.to_internal(x.to(torch.float64))
        features, log_det_features = self._features(ic)
        z, ladj = self.transform().call_and_ladj(features.float())
        return self._base_log_prob(z) + ladj.double() + log_det_features

    def sample(self, n, generator=None):
        """Draw ``n`` configurations: positions (n, n_atoms, 3) nm float64 in the root frame, and log_q (n,) float64.

        Random numbers come from ``generator`` (a :class:`torch.Generator`) if given, else from torch's
        global generator. Differentiable (reparameterized) when gradients are enabled.
        """
        z = self._sample_base(int(n), generator)
        features, ladj = z, torch.zeros(len(z), dtype=torch.float64, device=z.device)
        for layer in reversed(self.layers):
            features, layer_ladj = layer.inverse_and_ladj(features)
            ladj = ladj + layer_ladj.double()
        log_q_features = self._base_log_prob(z) + ladj
        ic, log_det_features = self._internal(features.double())
        x = self.coordinates.to_cartesian(ic)
        return x, log_q_features + log_det_features

    def forward(self, x):
        return self.log_prob(x)

    # ------------------------------------------------------------------ internals
    def _check_positions(self, x):
        if not torch.is_tensor(x):
            x = torch.as_tensor(x)
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise InvalidInputError(f"positions must have shape (n, {self.n_atoms}, 3) in nm, got {tuple(x.shape)}.")
        return x

    def _needs_grad(self, tensor):
        return torch.is_grad_enabled() and (tensor.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _features(self, ic):
        """Internal coordinates -> features, and log|d features / d ic| (so that log q_x = log p(features) + this)."""
        bonds, angles, torsions = ic
        circular = torsions[..., ~self.narrow]
        deviation = torch.remainder(torsions[..., self.narrow] - self.torsion_loc[self.narrow].double() + math.pi, 2 * math.pi) - math.pi
        narrow = deviation / self.torsion_scale[self.narrow].double()
        zb = (torch.log(bonds) - self.bond_loc.double()) / self.bond_scale.double()
        za = (torch.logit(angles / math.pi) - self.angle_loc.double()) / self.angle_scale.double()
        features = torch.cat((circular, narrow, zb, za), dim=-1)
        return features, -self._log_det_internal_to_features(bonds, angles)

    def _internal(self, features):
        """Features -> internal coordinates, and the same log-det term as :meth:`_features` returns.

        A narrow torsion more than pi from its mean (a > 15-sigma event) has no preimage: such a
        sample gets ``log_q = -inf``, which moves reject and importance weights discard.
        """
        ict = self.coordinates
        n_c, n_t, n_b = self.n_circular, ict.n_torsions, ict.n_bonds
        circular, narrow = features[..., :n_c], features[..., n_c:n_t]
        zb, za = features[..., n_t : n_t + n_b], features[..., n_t + n_b :]
        deviation = narrow * self.torsion_scale[self.narrow].double()
        valid = (deviation.abs() <= math.pi).all(-1)
        torsions = torch.empty(features.shape[:-1] + (n_t,), dtype=features.dtype, device=features.device)
        torsions[..., ~self.narrow] = circular
        torsions[..., self.narrow] = deviation + self.torsion_loc[self.narrow].double()
        torsions = torch.remainder(torsions + math.pi, 2 * math.pi) - math.pi
        bonds = torch.exp(zb * self.bond_scale.double() + self.bond_loc.double())
        angles = math.pi * torch.sigmoid(za * self.angle_scale.double() + self.angle_loc.double())
        log_det = -self._log_det_internal_to_features(bonds, angles)
        log_det = torch.where(valid, log_det, torch.full_like(log_det, -math.inf))
        return InternalCoordinates(bonds, angles, torsions), log_det

    def _log_det_internal_to_features(self, bonds, angles):
        """log|d ic / d features| + log|d x / d ic| (Cartesian volume per feature volume)."""
        # b = exp(scale zb + loc): db/dzb = scale b;  theta = pi sigmoid(scale za + loc): dtheta/dza = scale theta (1 - theta/pi)
        log_det = (torch.log(self.bond_scale.double()) + torch.log(bonds)).sum(-1)
        log_det = log_det + (torch.log(self.angle_scale.double()) + torch.log(angles) + torch.log1p(-angles / math.pi)).sum(-1)
        log_det = log_det + torch.log(self.torsion_scale[self.narrow].double()).sum(-1)
        return log_det + self.coordinates.log_det_jacobian(bonds, angles)

    def _base_log_prob(self, z):
        n_c = self.n_circular
        torsions, rest = z[..., :n_c].double(), z[..., n_c:].double()
        inside = (torsions.abs() <= math.pi + 1e-5).all(-1)
        log_uniform = torch.where(inside, -n_c * math.log(2 * math.pi), -math.inf)
        return log_uniform - 0.5 * (rest**2).sum(-1) - 0.5 * rest.shape[-1] * math.log(2 * math.pi)

    def _sample_base(self, n, generator=None):
        n_c = self.n_circular
        device = self.bond_loc.device
        draw_device = device if generator is None else generator.device  # a CPU generator draws on the CPU
        torsions = (torch.rand(n, n_c, device=draw_device, generator=generator) * 2 - 1) * math.pi
        rest = torch.randn(n, self.n_features - n_c, device=draw_device, generator=generator)
        return torch.cat((torsions, rest), dim=-1).to(device)

    def extra_repr(self):
        return f"n_atoms={self.n_atoms}, n_features={self.n_features}, n_circular={self.n_circular}, n_layers={len(self.layers)}"


def _safe_std(values, minimum):
    if len(values) < 2:
        return torch.full(values.shape[1:], minimum, dtype=values.dtype)
    return values.std(0).clamp(min=minimum)
