"""How results over seeds are summarized: the mean with its Student-t interval, and the field's
protocol beside it (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice";
Gorsane et al. 2022 for MARL, used by BenchMARL and Mava): the interquartile mean (IQM) with a
stratified-bootstrap 95% interval, the probability of improvement, and Holm's correction when a
table holds several comparisons.

The IQM and its interval, and the probability of improvement, are computed by `rliable` itself
(Parley's `[stats]` extra, which `make setup` installs), so a number printed here is the number
another project's rliable prints for the same scores. One task: every score array is
(runs, 1). The bootstrap is seeded (`seed`): rliable's resampling draws from numpy's global
generator, which is seeded here and put back as it was afterwards, so the same scores give the
same interval every time and nothing else's random stream moves.

The t-interval and Holm's step-down method need only scipy and are written out here.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np

BOOTSTRAP_REPS = 20_000  # rliable's default is 50,000; 20,000 keeps a report under a second per row
STATS_EXTRA_HINT = "the IQM and its bootstrap interval need rliable: pip install -e '.[stats]' (make setup does)"


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


def rliable_available() -> bool:
    try:
        import rliable  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """rliable's StratifiedBootstrap resamples with `np.random.choice` (the global generator,
    whatever random_state says): seed it for the call and restore it after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _column(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"expected one or more finite scores, got {list(array)}")
    return array.reshape(-1, 1)  # (runs, tasks = 1): rliable's layout


def iqm_interval(values: Sequence[float], *, seed: int = 0, reps: int = BOOTSTRAP_REPS) -> tuple[float, float, float]:
    """(IQM, lower, upper): the interquartile mean of the scores (rliable's `aggregate_iqm`, the
    25%-trimmed mean) and its 95% percentile interval from rliable's stratified bootstrap over
    runs (`get_interval_estimates`). ImportError (with the way to install it) without rliable."""
    try:
        from rliable import library, metrics
    except ImportError as error:
        raise ImportError(STATS_EXTRA_HINT) from error
    scores = _column(values)
    with _seeded_global_numpy(seed):
        points, intervals = library.get_interval_estimates(
            {"x": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps, confidence_interval_size=0.95)
    return float(points["x"][0]), float(intervals["x"][0, 0]), float(intervals["x"][1, 0])


def probability_of_improvement(x: Sequence[float], y: Sequence[float], *, seed: int = 0,
                               reps: int = BOOTSTRAP_REPS) -> tuple[float, float, float]:
    """(P(X > Y), lower, upper): rliable's probability of improvement of the runs `x` over the runs
    `y` (the Mann-Whitney U statistic over every pair of runs: a tie counts one half) and its 95%
    interval from rliable's stratified bootstrap resampling each side on its own. It compares the
    two sets of runs, not seed by seed: with paired seeds it says how often one run of X beats one
    run of Y, beside the paired difference's t-interval."""
    try:
        from rliable import library, metrics
    except ImportError as error:
        raise ImportError(STATS_EXTRA_HINT) from error
    pair = [_column(x), _column(y)]
    with _seeded_global_numpy(seed):
        points, intervals = library.get_interval_estimates(
            {"x_over_y": pair}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps,
            confidence_interval_size=0.95)
    return float(points["x_over_y"][0]), float(intervals["x_over_y"][0, 0]), float(intervals["x_over_y"][1, 0])


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
