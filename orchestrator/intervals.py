"""How results over seeds are summarized: the mean with its Student-t interval, and the field's
protocol beside it (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice";
Gorsane et al. 2022 for MARL, used by BenchMARL and Mava): the interquartile mean (IQM) with a
stratified-bootstrap 95% interval, the probability of improvement, and Holm's correction when a
table holds several comparisons.

The definitions are rliable's (`rliable.metrics.aggregate_iqm`: scipy's 25%-trimmed mean;
`probability_of_improvement`: the Mann-Whitney U statistic over every pair of runs divided by the
pairs, a tie counting one half; `rliable.library.get_interval_estimates`: the percentile interval
of a bootstrap that resamples runs within each task). Here there is one task, so the stratified
bootstrap is the plain bootstrap over runs; it is drawn as one numpy array instead of rliable's
loop (which takes ~0.2 s per 1,000 resamples for the IQM and ~1 s for the probability of
improvement, too slow for a report with a row per sweep point), from a seeded generator, so the
same scores give the same interval. tests/unit/test_intervals.py holds these functions against
rliable's own on fixed samples (rliable is in the `[stats]` extra, which `make setup` installs).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOOTSTRAP_REPS = 10_000


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval) of the finite values; half-width 0 for one
    value, (nan, nan) for none."""
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return float("nan"), float("nan")
    if array.size == 1:
        return float(array[0]), 0.0
    half = stats.t.ppf(0.975, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size)
    return float(array.mean()), float(half)


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"expected one or more finite scores, got {list(array)}")
    return array


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    """The IQM of each row: scipy's trim_mean with 25% cut from each end (rliable's aggregate_iqm)."""
    from scipy import stats

    return stats.trim_mean(samples, proportiontocut=0.25, axis=1)


def _percentile_interval(replicates: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(low), float(high)


def iqm_interval(values: Sequence[float], *, seed: int = 0, reps: int = BOOTSTRAP_REPS) -> tuple[float, float, float]:
    """(IQM, lower, upper): the interquartile mean of the scores and the 95% percentile interval of
    `reps` bootstrap resamples of the runs."""
    scores = _finite(values)
    rng = np.random.default_rng(seed)
    resamples = scores[rng.integers(0, scores.size, size=(reps, scores.size))]
    return (float(_iqm_rows(scores[None, :])[0]), *_percentile_interval(_iqm_rows(resamples)))


def _improvement_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, P(X > Y) over every pair of an x and a y of that row, a tie counting one half."""
    greater = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
    ties = (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2))
    return greater + 0.5 * ties


def probability_of_improvement(x: Sequence[float], y: Sequence[float], *, seed: int = 0,
                               reps: int = BOOTSTRAP_REPS) -> tuple[float, float, float]:
    """(P(X > Y), lower, upper): how often a run of `x` beats a run of `y` over every pair of runs
    (a tie counts one half), and its 95% percentile interval from resampling each side's runs on
    its own (rliable's StratifiedIndependentBootstrap). It compares the two sets of runs, not seed
    by seed: with paired seeds it sits beside the paired difference's t-interval."""
    xs, ys = _finite(x), _finite(y)
    rng = np.random.default_rng(seed)
    resampled_x = xs[rng.integers(0, xs.size, size=(reps, xs.size))]
    resampled_y = ys[rng.integers(0, ys.size, size=(reps, ys.size))]
    point = float(_improvement_rows(xs[None, :], ys[None, :])[0])
    return (point, *_percentile_interval(_improvement_rows(resampled_x, resampled_y)))


def paired_t_test(differences: Sequence[float]) -> tuple[float, float, float]:
    """(mean difference, half-width of its 95% t-interval, two-sided p-value of a zero mean) of
    paired differences; the p-value is nan for fewer than two pairs, 1 when every difference is 0."""
    from scipy import stats

    array = np.asarray(differences, dtype=np.float64)
    array = array[np.isfinite(array)]
    mean, half = t_interval(array)
    if array.size < 2:
        return mean, half, float("nan")
    if np.all(array == array[0]):
        return mean, half, 1.0 if array[0] == 0 else 0.0
    return mean, half, float(stats.ttest_1samp(array, 0.0).pvalue)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which of these hypotheses Holm's step-down method rejects at family-wise error `alpha`:
    sort the m p-values, compare the k-th smallest (k from 0) with alpha / (m - k), and stop at the
    first that is not below it. A nan p-value (too few pairs) is never rejected but counts in m."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a level in (0, 1), got {alpha}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (math.isnan(p_values[i]), p_values[i]))
    rejected = [False] * m
    for rank, index in enumerate(order):
        p = p_values[index]
        if math.isnan(p) or p >= alpha / (m - rank):
            break
        rejected[index] = True
    return rejected
