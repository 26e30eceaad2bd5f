"""Statistics of study results in NumPy: per-cell summaries and paired bootstrap differences.

``describe`` summarizes one cell's runs (mean, sample std, median, quartiles); ``paired_difference``
compares two methods run on the same draws and seeds (run r of each), with a seeded bootstrap
confidence interval of the mean difference: BCa (bias-corrected and accelerated; Efron and
Tibshirani, "An Introduction to the Bootstrap", 1993, 14.3) by default, or the percentile
interval. Both follow ``scipy.stats.bootstrap`` (same resampling, same quantiles), against which
the tests check them; SciPy is not needed at run time.
"""

import math
from statistics import NormalDist

import numpy as np


def _finite(values):
    values = np.asarray(list(values), dtype=np.float64).ravel()
    return values[np.isfinite(values)], int((~np.isfinite(values)).sum())


def describe(values):
    """``{"n", "non_finite", "mean", "std", "median", "q1", "q3", "min", "max"}`` of the finite values.

    ``std`` is the sample standard deviation (ddof=1; 0 for one value); quartiles are NumPy's
    linear-interpolation percentiles 25 and 75. ``non_finite`` counts NaN/inf values (diverged
    runs), which are left out of every statistic and reported, not hidden.
    """
    finite, bad = _finite(values)
    if finite.size == 0:
        return {"n": 0, "non_finite": bad, **{k: float("nan") for k in
                                               ("mean", "std", "median", "q1", "q3", "min", "max")}}
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return {
        "n": int(finite.size),
        "non_finite": bad,
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def bootstrap_mean_interval(values, confidence=0.95, n_resamples=10_000, seed=0, method="bca"):
    """Two-sided bootstrap confidence interval ``(low, high)`` of the mean of ``values``.

    Resamples: ``np.random.default_rng(seed).integers(0, n, (n_resamples, n))``, one row per
    resample; the interval takes the linear-interpolation quantiles of the resampled means at
    ``alpha`` and ``1 - alpha`` (``method="percentile"``), or at the BCa-adjusted levels
    ``Phi(z0 + (z0 + z)/(1 - a (z0 + z)))`` with bias ``z0`` from the share of resampled means
    below the sample mean and acceleration ``a`` from the jackknife (``method="bca"``).
    Constant values give ``(value, value)``; fewer than two values give ``(nan, nan)``.
    """
    if method not in ("bca", "percentile"):
        raise ValueError(f"`method` must be 'bca' or 'percentile', received: method={method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), received: confidence={confidence!r}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2 or not np.all(np.isfinite(x)):
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    n = x.size
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, (n_resamples, n))].mean(axis=-1)
    alpha = (1 - confidence) / 2
    levels = [alpha, 1 - alpha]
    if method == "bca":
        normal = NormalDist()
        share_below = ((means < x.mean()).sum() + (means <= x.mean()).sum()) / (2 * n_resamples)
        z0 = normal.inv_cdf(share_below) if 0 < share_below < 1 else math.copysign(math.inf, share_below - 0.5)
        jackknife = (x.sum() - x) / (n - 1)
        d = jackknife.mean() - jackknife
        a = (d**3).sum() / (6 * (d**2).sum() ** 1.5)
        levels = []
        for z in (normal.inv_cdf(alpha), -normal.inv_cdf(alpha)):
            levels.append(normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) if math.isfinite(z0) else float(z0 > 0))
    low, high = np.quantile(means, levels)
    return float(low), float(high)


def paired_difference(first, second, confidence=0.95, n_resamples=10_000, seed=0, method="bca"):
    """Paired comparison of two methods: statistics of ``first[r] - second[r]`` over runs ``r``.

    Args:
        first, second: ``{run key: value}`` (e.g. final loss by run seed) of the two methods; the
            keys must be the same (every run of one has its pair in the other).
        confidence, n_resamples, seed, method: of :func:`bootstrap_mean_interval`.

    Returns:
        ``{"n", "dropped", "mean", "median", "ci_low", "ci_high", "first_lower"}``: pairs used
        (both values finite), pairs dropped (a non-finite value), mean and median difference,
        the interval of the mean difference, and the share of pairs where ``first`` is lower.
    """
    first, second = dict(first), dict(second)
    if set(first) != set(second):
        missing = sorted(set(first) ^ set(second), key=repr)
        raise ValueError(f"paired_difference needs the same runs on both sides; unpaired runs: {missing}")
    try:
        keys = sorted(first)  # a fixed order, so the seeded resamples are reproducible
    except TypeError:
        keys = sorted(first, key=repr)
    a = np.array([first[k] for k in keys], dtype=np.float64)
    b = np.array([second[k] for k in keys], dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    diff = a[ok] - b[ok]
    low, high = bootstrap_mean_interval(diff, confidence, n_resamples, seed, method)
    return {
        "n": int(diff.size),
        "dropped": int((~ok).sum()),
        "mean": float(diff.mean()) if diff.size else float("nan"),
        "median": float(np.median(diff)) if diff.size else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "method": method,
        "first_lower": float((diff < 0).mean()) if diff.size else float("nan"),
    }
