"""The Pareto-tail diagnostic of importance weights, and the reliability of basin free-energy differences built on it."""

import math

import numpy as np
import pytest
from scipy import stats

from openmm_flowplugin.analysis import basin_free_energy_difference
from openmm_flowplugin.analysis.weights import pareto_k, pareto_k_threshold
from openmm_flowplugin.errors import InvalidInputError
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
    m = int(math.ceil(3 * math.sqrt(N)))
    assert 0.9 - 4 * 1.9 / math.sqrt(m) > 0.2 + 4 * 1.2 / math.sqrt(m)  # the acceptance windows of k = 0.2 and 0.9 do not overlap
    light, heavy = (pareto_k(np.log1p(rng.pareto(1.0 / k, N))) for k in (0.2, 0.9))
    assert light < pareto_k_threshold(N) < heavy


def test_pareto_k_needs_enough_weights_and_ignores_zero_weights():
    assert math.isnan(pareto_k(np.zeros(24))) and math.isnan(pareto_k(np.full(100, -np.inf)))
    assert pareto_k(np.r_[np.zeros(100), [-np.inf] * 10]) == -math.inf  # equal weights: a bounded tail
    assert math.isnan(pareto_k(np.r_[0.0, 1.0, [-np.inf] * 100]))  # two nonzero weights: no tail to fit
    rare = np.full(40000, -np.inf)  # 300 nonzero weights with a k = 0.9 tail, fewer than M = 600
    rare[:300] = np.log1p(np.random.default_rng(5).pareto(1.0 / 0.9, 300))
    assert abs(pareto_k(rare) - 0.9) < 4 * 1.9 / math.sqrt(299)  # fitted over 0, the bulk pulled k̂ to ~0.3
    nearly_equal = 1e-14 * np.random.default_rng(0).normal(size=1000)  # no false heavy tail from rounding-size exceedances
    assert pareto_k(nearly_equal) < 0.5
    with pytest.raises(InvalidInputError, match="NaN or \\+inf"):
        pareto_k(np.r_[np.zeros(100), np.nan])


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
    """Control: a proposal too narrow for the target (k = 0.9) leaves the tail basin to a few huge weights; the flag must say so.

    The tail fit is a statistic too (1 of 60 seeds passed it in a scan), so ten seeds are checked and one miss is allowed.
    """
    # the second basin holds ~530 samples, fewer than the M = 600 largest weights the tail fit uses: a rare basin
    rare = {"core": [(-0.7, 0.7)], "tail": [(0.7, 50.0)]}
    for basins in (BASINS, rare):
        flagged = []
        for seed in range(10):
            s, log_w = _gaussian_importance_samples(0.1, seed=seed, n=40000)
            delta = basin_free_energy_difference(s, log_w, basins, "core", "tail", 300.0, n_bootstrap=0)
            flagged.append(not delta.reliable and "UNRELIABLE" in delta.diagnosis())
        assert sum(flagged) >= 9, (basins, flagged)
    assert delta.samples["tail"] < math.ceil(3 * math.sqrt(40000))


def test_a_flow_evaluation_reports_its_weights_tail():
    from openmm_flowplugin.analysis.evaluation import FlowEvaluation
    from openmm_flowplugin.analysis.weights import effective_sample_size

    rng = np.random.default_rng(3)
    for k, verdict in ((0.2, "ok"), (0.9, "heavy")):
        log_w = np.log1p(rng.pareto(1.0 / k, N))
        evaluation = FlowEvaluation(n_samples=N, ess_fraction=effective_sample_size(log_w), positions=np.zeros((N, 1, 3)),
                                    reduced_energies=np.zeros(N), log_weights=log_w)
        assert any(line.startswith("weights' tail") and verdict in line for line in evaluation.summary()), evaluation.summary()
