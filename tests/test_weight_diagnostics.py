"""The Pareto-tail diagnostic of importance weights, and the reliability of basin free-energy differences built on it."""

import math

import numpy as np
import pytest
from scipy import stats

from openmm_flowplugin.analysis import basin_free_energy_difference
from openmm_flowplugin.analysis.weights import pareto_k, pareto_k_threshold
from openmm_flowplugin.units import kT as reduced_kT

N = 40000


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_pareto_k_recovers_the_shape_of_pareto_weights(k):
    rng = np.random.default_rng(7)
    log_weights = np.log1p(rng.pareto(1.0 / k, N))  # P(w > t) ~ t^(-1/k): a generalized Pareto tail of shape k
    m = int(min(0.2 * N, 3 * math.sqrt(N)))
    standard_error = (1.0 + k) / math.sqrt(m)  # asymptotic s.d. of the maximum-likelihood shape (k > -1/2)
    assert abs(pareto_k(log_weights) - k) < 4 * standard_error


def test_pareto_k_separates_light_from_heavy_tails():
    """Control for the test above: its tolerance is far narrower than the gap between a finite- and an infinite-variance tail."""
    rng = np.random.default_rng(8)
    light, heavy = (pareto_k(np.log1p(rng.pareto(1.0 / k, N))) for k in (0.2, 0.9))
    m = int(3 * math.sqrt(N))
    assert heavy - light > 4 * (1.2 + 1.9) / math.sqrt(m)  # the two tests' acceptance windows do not overlap
    assert light < pareto_k_threshold(N) < heavy


def test_pareto_k_needs_enough_weights_and_ignores_zero_weights():
    assert math.isnan(pareto_k(np.zeros(24)))
    assert pareto_k(np.r_[np.zeros(100), [-np.inf] * 10]) == -math.inf  # equal weights: a bounded tail


def _gaussian_importance_samples(proposal_variance, seed, n=20000):
    """x ~ N(0, s²) weighted exactly for N(0, 1); log w = −x²/2 + x²/(2 s²). Weights have tail shape k = 1 − s² when s² < 1."""
    x = np.random.default_rng(seed).normal(0.0, math.sqrt(proposal_variance), n)
    return x[:, None], -0.5 * x**2 + 0.5 * x**2 / proposal_variance


BASINS = {"core": [(-0.5, 0.5)], "tail": [(0.5, 50.0)]}
EXACT = -reduced_kT(300.0) * math.log(stats.norm.sf(0.5) / (1.0 - 2 * stats.norm.sf(0.5)))


def test_a_basin_difference_from_bounded_weights_is_reliable_and_right():
    s, log_w = _gaussian_importance_samples(1.44, seed=1)
    delta = basin_free_energy_difference(s, log_w, BASINS, "core", "tail", 300.0, seed=1)
    assert delta.reliable, delta.diagnosis()
    assert abs(delta.value - EXACT) < 4 * delta.error
    assert delta.samples["tail"] == int(np.sum(s[:, 0] >= 0.5))
    assert 0 < delta.effective_samples["tail"] <= delta.samples["tail"]


def test_a_basin_difference_from_infinite_variance_weights_says_it_is_unreliable():
    """Control: a proposal too narrow for the target (k = 0.9) leaves the tail basin to a few huge weights; the flag must say so."""
    s, log_w = _gaussian_importance_samples(0.1, seed=1, n=40000)
    delta = basin_free_energy_difference(s, log_w, BASINS, "core", "tail", 300.0, seed=1)
    assert not delta.reliable
    assert delta.pareto_k["tail"] > pareto_k_threshold(delta.samples["tail"])
    assert "UNRELIABLE" in delta.diagnosis()
