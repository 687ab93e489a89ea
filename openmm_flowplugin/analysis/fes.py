"""Free-energy surfaces and basin free-energy differences from weighted samples, with bootstrap errors.

The samples must be independent (as a diffusion sampler's or a flow's are); the weights are
importance weights for the Boltzmann density (log weights, any normalisation; ``-inf`` for a
sample of weight 0). Errors are bootstrap standard deviations over resampled sample sets.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> s = rng.normal(size=(4000, 2))
>>> fes = free_energy_surface(s, np.zeros(4000), bins=[np.linspace(-3, 3, 7)] * 2, temperature=300.0, seed=1)
>>> fes.free_energy.shape
(6, 6)
>>> basins = {"left": [(-3, 0), (-3, 3)], "right": [(0, 3), (-3, 3)]}
>>> delta = basin_free_energy_difference(s, np.zeros(4000), basins, "left", "right", temperature=300.0, seed=1)
>>> abs(delta.value) < 4 * delta.error
True
"""

__all__ = ["FreeEnergySurface", "BasinFreeEnergy", "free_energy_surface", "basin_free_energy_difference", "fes_error"]

import dataclasses
import math
import warnings

import numpy as np

from ..errors import InvalidInputError
from ..proposals.streams import numpy_generator
from ..units import kT as _kT
from .weights import effective_sample_size, pareto_k, pareto_k_threshold


# Effective samples a basin needs before its weight (and the bootstrap error of it) is trusted.
MIN_EFFECTIVE_SAMPLES = 100


@dataclasses.dataclass
class FreeEnergySurface:
    """F(s) on a grid of bins, kJ/mol, minimum 0.

    Attributes
    ----------
    edges : list of numpy.ndarray
        Bin edges per CV.
    free_energy : numpy.ndarray
        −kT ln(p_b / bin volume) − min; ``nan`` in bins without weight.
    error : numpy.ndarray
        Bootstrap standard error of ``free_energy`` (``nan`` where it is; ``inf`` for bins some
        replicas leave empty). Replicas are shifted by the full sample's minimum, so the minimum bin
        has an error too.
    probability : numpy.ndarray
        Weighted bin probabilities (over the samples inside the grid).
    """

    edges: list
    free_energy: np.ndarray
    error: np.ndarray
    probability: np.ndarray

    @property
    def centres(self):
        """Bin centres per CV."""
        return [0.5 * (e[1:] + e[:-1]) for e in self.edges]


@dataclasses.dataclass
class BasinFreeEnergy:
    """ΔF = F(B) − F(A) = −kT ln(P_B / P_A) in kJ/mol with its bootstrap standard error (``inf`` if a replica leaves a basin empty).

    The bootstrap error is only as good as the weights' tail: where a basin's largest weights have a
    Pareto shape k̂ above :func:`~openmm_flowplugin.analysis.weights.pareto_k_threshold`, its weight
    is dominated by samples not drawn yet, the estimate is biased with high probability and the error
    bar cannot show it. ``reliable`` says whether both basins pass.

    Attributes
    ----------
    value, error : float
        kJ/mol.
    probabilities : dict
        Basin name → weighted probability.
    samples : dict
        Basin name → number of samples with nonzero weight inside it.
    effective_samples : dict
        Basin name → Kish effective sample size of the weights inside it.
    pareto_k : dict
        Basin name → k̂ of the weights w·1_basin over all ``n_draws`` samples (zero outside the basin).
    n_draws : int
        Samples the estimate used (the n of the tail fit and its threshold; 0: the basins' samples).
    """

    value: float
    error: float
    probabilities: dict
    samples: dict = dataclasses.field(default_factory=dict)
    effective_samples: dict = dataclasses.field(default_factory=dict)
    pareto_k: dict = dataclasses.field(default_factory=dict)
    n_draws: int = 0

    @property
    def reliable(self):
        """True when every basin has an effective sample size ≥ 100 and k̂ below the threshold for the n draws.

        Both are needed: with a few dozen samples in a basin the tail fit itself is noise.
        """
        return bool(self.pareto_k) and all(
            self.effective_samples[name] >= MIN_EFFECTIVE_SAMPLES and self.pareto_k[name] < pareto_k_threshold(self._draws)
            for name in self.pareto_k)

    @property
    def _draws(self):
        return self.n_draws or sum(self.samples.values())

    def diagnosis(self):
        """One line on the weights' tail in each basin, for logs and result files."""
        if not self.pareto_k:
            return "no tail diagnostics (built without them)"
        parts = [f"{name}: {self.samples[name]} samples, ESS {self.effective_samples[name]:.1f}, k̂ {self.pareto_k[name]:.2f}"
                 for name in self.pareto_k]
        verdict = "reliable" if self.reliable else f"UNRELIABLE: a basin's weight rests on a heavy tail (k̂ above {pareto_k_threshold(self._draws):.2f}) or on fewer than 100 effective samples"
        return f"{verdict} ({'; '.join(parts)})"


def _checked(cv_values, log_weights):
    s = np.asarray(cv_values, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    log_w = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if len(s) != len(log_w):
        raise InvalidInputError(f"{len(s)} CV rows but {len(log_w)} log weights.")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise InvalidInputError("log weights must be finite or -inf (weight 0), not NaN or +inf.")
    if not np.isfinite(log_w).any():
        raise InvalidInputError("every sample has weight 0: nothing to estimate.")
    return s, np.exp(log_w - log_w[np.isfinite(log_w)].max())


def _bootstrap(n, n_bootstrap, seed, statistic):
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap == 1 or n_bootstrap < 0:
        raise InvalidInputError(f"n_bootstrap must be 0 (no error bars) or an integer >= 2, got {n_bootstrap!r}.")
    rng = numpy_generator(seed, 0)
    return np.array([statistic(rng.integers(0, n, n)) for _ in range(n_bootstrap)])


def free_energy_surface(cv_values, log_weights, bins, temperature, n_bootstrap=200, seed=0):
    """Weighted histogram estimate of F(s) with bootstrap errors.

    Parameters
    ----------
    cv_values : array_like, shape=(n, n_cvs)
    log_weights : array_like, shape=(n,)
    bins : sequence of array_like
        Bin edges per CV.
    temperature : float or Quantity
    n_bootstrap : int
        Bootstrap replicas (>= 2), or 0 for no error bars (``nan``).
    seed : int
        Root seed of the bootstrap's random stream.

    Returns
    -------
    FreeEnergySurface
    """
    s, w = _checked(cv_values, log_weights)
    edges = [np.asarray(e, dtype=np.float64) for e in bins]
    if len(edges) != s.shape[1]:
        raise InvalidInputError(f"{s.shape[1]} CVs but bin edges for {len(edges)}.")
    volume = np.prod(np.meshgrid(*[np.diff(e) for e in edges], indexing="ij"), axis=0)
    kT = _kT(temperature)

    def surface(index):
        histogram, _ = np.histogramdd(s[index], bins=edges, weights=w[index])
        total = histogram.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            f = -kT * np.log(histogram / total / volume)
        f[~np.isfinite(f)] = np.nan
        return f, histogram / total if total > 0 else histogram

    f, probability = surface(np.arange(len(s)))
    if np.isnan(f).all():
        raise InvalidInputError("no weighted sample falls inside the bins: widen them.")
    minimum = np.nanmin(f)
    if n_bootstrap == 0:
        return FreeEnergySurface(edges=edges, free_energy=f - minimum, error=np.full(f.shape, np.nan), probability=probability)
    replicas = _bootstrap(len(s), n_bootstrap, seed, lambda index: surface(index)[0] - minimum)
    with warnings.catch_warnings():  # bins empty in every replica: nan, said in the docstring
        warnings.simplefilter("ignore", RuntimeWarning)
        error = np.nanstd(replicas, axis=0)
    # a bin that some replicas leave empty is too sparse for a finite error bar
    error = np.where(np.isfinite(f) & np.isnan(replicas).any(axis=0), np.inf, error)
    return FreeEnergySurface(edges=edges, free_energy=f - minimum, error=error, probability=probability)


def _in_basin(s, box):
    box = np.asarray(box, dtype=np.float64).reshape(-1, 2)
    if len(box) != s.shape[1]:
        raise InvalidInputError(f"a basin needs one (low, high) range per CV ({s.shape[1]}), got {box.tolist()}.")
    return np.all((s >= box[:, 0]) & (s < box[:, 1]), axis=1)


def basin_free_energy_difference(cv_values, log_weights, basins, first, second, temperature, n_bootstrap=200, seed=0):
    """ΔF = −kT ln(P_second / P_first) between two rectangular basins of CV space.

    Parameters
    ----------
    cv_values, log_weights : array_like
        As for :func:`free_energy_surface`.
    basins : dict
        Name → one (low, high) range per CV.
    first, second : str
        Basin names.
    temperature : float or Quantity
    n_bootstrap, seed : int

    Returns
    -------
    BasinFreeEnergy
    """
    s, w = _checked(cv_values, log_weights)
    for name in (first, second):
        if name not in basins:
            raise InvalidInputError(f"unknown basin {name!r}; defined: {sorted(basins)}.")
    inside = {name: _in_basin(s, basins[name]) for name in (first, second)}
    kT = _kT(temperature)

    def delta(index):
        pa, pb = (w[index][inside[name][index]].sum() for name in (first, second))
        with np.errstate(divide="ignore"):
            return -kT * np.log(pb / pa)

    value = delta(np.arange(len(s)))
    if not np.isfinite(value):
        raise InvalidInputError(f"basin {first!r} or {second!r} holds no weighted sample: ΔF cannot be estimated.")
    total = w.sum()
    replicas = _bootstrap(len(s), n_bootstrap, seed, delta) if n_bootstrap else np.array([np.nan])
    # replicas that leave a basin empty mean it is too sparsely sampled for a finite error bar
    error = math.nan if not n_bootstrap else float(np.std(replicas)) if np.isfinite(replicas).all() else math.inf
    log_w = np.log(w, where=w > 0, out=np.full_like(w, -np.inf))
    members = {name: log_w[inside[name] & (w > 0)] for name in (first, second)}
    # each basin's weight is a mean over all n draws of w·1_basin: its tail is fitted over all n
    return BasinFreeEnergy(value=float(value), error=error,
                           probabilities={name: float(w[inside[name]].sum() / total) for name in (first, second)},
                           samples={name: int(len(v)) for name, v in members.items()}, n_draws=len(s),
                           effective_samples={name: effective_sample_size(v) * len(v) for name, v in members.items()},
                           pareto_k={name: pareto_k(np.where(inside[name], log_w, -np.inf)) for name in (first, second)})


def fes_error(estimate, reference, reference_probability, cutoff=20.0):
    """Population-weighted mean absolute FES error (kJ/mol) over bins within ``cutoff`` of the reference minimum.

    Both surfaces are first aligned by their population-weighted mean over those bins; bins where
    the estimate is ``nan`` (no sample) count at the cutoff, so missing a basin is penalised.
    Compare an error with that of a constant estimate (``numpy.zeros_like(reference)``), which knows
    nothing: against the vacuum alanine-dipeptide reference of ``benchmarks/bench_diffusion_alanine.py``
    (φ/ψ, 24 × 24 bins) it is 2.1 kJ/mol population-weighted.
    """
    estimate, reference = np.asarray(estimate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    mask = np.isfinite(reference) & (reference - np.nanmin(reference) <= cutoff)
    p = np.asarray(reference_probability, dtype=np.float64)[mask]
    p = p / p.sum()
    est, ref = estimate[mask], reference[mask]
    seen = np.isfinite(est)
    shift = np.sum(p[seen] * (est[seen] - ref[seen])) / p[seen].sum() if seen.any() else 0.0
    deviation = np.where(seen, np.abs(est - shift - ref), cutoff)
    return float(np.sum(p * deviation))
