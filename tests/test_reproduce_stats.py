"""Study statistics against NumPy/SciPy references: cell summaries and paired bootstrap intervals."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from keras_mmoe.reproduce import stats


def test_describe_matches_numpy_and_reports_non_finite_runs():
    values = [0.3, 0.1, np.nan, 0.7, 0.2, np.inf, 0.25]
    finite = np.array([0.3, 0.1, 0.7, 0.2, 0.25])
    d = stats.describe(values)
    assert d["n"] == 5 and d["non_finite"] == 2
    assert d["mean"] == pytest.approx(finite.mean())
    assert d["std"] == pytest.approx(np.std(finite, ddof=1))
    assert d["median"] == pytest.approx(0.25)
    assert (d["q1"], d["q3"]) == pytest.approx((0.2, 0.3))  # linear interpolation, as np.percentile
    assert (d["min"], d["max"]) == (0.1, 0.7)
    assert stats.describe([2.0])["std"] == 0.0
    empty = stats.describe([np.nan])
    assert empty["n"] == 0 and empty["non_finite"] == 1 and np.isnan(empty["mean"])


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("n", [5, 20, 200])
def test_bootstrap_interval_matches_scipy(method, n):
    rng = np.random.default_rng(n)
    values = rng.lognormal(-2.0, 1.0, size=n)  # skewed, like final losses
    low, high = stats.bootstrap_mean_interval(values, n_resamples=4000, seed=7, method=method)
    reference = scipy_stats.bootstrap((values,), np.mean, n_resamples=4000, method=method,
                                      confidence_level=0.95, rng=np.random.default_rng(7))
    assert (low, high) == pytest.approx(tuple(reference.confidence_interval), rel=1e-9)
    assert low < values.mean() < high


def test_bootstrap_interval_loop_reference():
    # A slow, literal reference of the percentile interval: resample, average, sort, interpolate.
    values = np.array([0.31, -0.02, 0.15, 0.08, 0.22, -0.11, 0.05])
    draws = np.random.default_rng(3).integers(0, 7, (2000, 7))
    means = sorted(sum(values[i] for i in row) / 7 for row in draws)

    def quantile(q):
        position = q * (len(means) - 1)
        i = int(position)
        return means[i] + (position - i) * (means[i + 1] - means[i])

    low, high = quantile(0.025), quantile(0.975)
    assert stats.bootstrap_mean_interval(values, n_resamples=2000, seed=3, method="percentile") == pytest.approx(
        (low, high), rel=1e-12)


def test_bootstrap_interval_edge_cases():
    assert stats.bootstrap_mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(np.isnan(stats.bootstrap_mean_interval([0.5])))
    assert stats.bootstrap_mean_interval([1.0, 2.0, 4.0], seed=1) == stats.bootstrap_mean_interval([1.0, 2.0, 4.0], seed=1)
    with pytest.raises(ValueError, match="method"):
        stats.bootstrap_mean_interval([1.0, 2.0], method="basic")
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_mean_interval([1.0, 2.0], confidence=95)


def test_paired_difference_pairs_by_run_and_matches_scipy():
    rng = np.random.default_rng(0)
    seeds = list(range(30))
    mmoe = {s: float(v) for s, v in zip(seeds, rng.lognormal(-2.5, 0.5, 30))}
    omoe = {s: mmoe[s] + float(d) for s, d in zip(seeds, rng.normal(0.01, 0.02, 30))}
    shuffled = dict(reversed(list(omoe.items())))  # pairing is by key, not by order
    result = stats.paired_difference(mmoe, shuffled, n_resamples=3000, seed=5)
    diff = np.array([mmoe[s] - omoe[s] for s in seeds])
    reference = scipy_stats.bootstrap((diff,), np.mean, n_resamples=3000, method="bca",
                                      rng=np.random.default_rng(5))
    assert result["n"] == 30 and result["dropped"] == 0
    assert result["mean"] == pytest.approx(diff.mean()) and result["median"] == pytest.approx(np.median(diff))
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(tuple(reference.confidence_interval), rel=1e-9)
    assert result["first_lower"] == pytest.approx((diff < 0).mean())
    # scipy's own paired resampling of the two samples gives the same interval
    paired = scipy_stats.bootstrap((np.array([mmoe[s] for s in seeds]), np.array([omoe[s] for s in seeds])),
                                   lambda a, b, axis: np.mean(a - b, axis=axis), paired=True,
                                   n_resamples=3000, method="percentile", rng=np.random.default_rng(5))
    percentile = stats.paired_difference(mmoe, omoe, n_resamples=3000, seed=5, method="percentile")
    assert (percentile["ci_low"], percentile["ci_high"]) == pytest.approx(tuple(paired.confidence_interval), rel=1e-9)


def test_paired_difference_drops_diverged_pairs_and_refuses_unpaired_runs():
    result = stats.paired_difference({0: 0.1, 1: np.nan, 2: 0.3, 3: 0.2}, {0: 0.2, 1: 0.1, 2: 0.1, 3: 0.25})
    assert result["n"] == 3 and result["dropped"] == 1
    assert result["mean"] == pytest.approx((-0.1 + 0.2 - 0.05) / 3)
    with pytest.raises(ValueError, match=r"unpaired runs: \[2\]"):
        stats.paired_difference({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.1, 1: 0.2})
