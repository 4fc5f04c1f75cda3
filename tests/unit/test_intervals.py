"""orchestrator/intervals.py: the IQM, its stratified-bootstrap interval and the probability of
improvement on fixed samples, against rliable's own functions and against values worked out by
hand; Holm's step-down method on p-values whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rliable import library, metrics

from orchestrator.intervals import holm, iqm_interval, paired_t_test, probability_of_improvement, t_interval

# Ten seeds' scores, with two outliers the IQM trims away and the mean does not.
SAMPLE = [-14.2, -13.1, -15.0, -12.7, -14.8, -13.9, -30.5, -14.1, -13.3, -2.0]


def test_the_iqm_is_the_mean_of_the_middle_half():
    # 8 values: the middle half is 3, 4, 5, 6 (rliable trims 25% from each end).
    assert iqm_interval([8, 1, 7, 2, 6, 3, 5, 4], reps=200)[0] == pytest.approx(4.5)
    ordered = sorted(SAMPLE)
    # 10 values: scipy's trim_mean cuts int(2.5) = 2 from each end.
    assert iqm_interval(SAMPLE, reps=200)[0] == pytest.approx(np.mean(ordered[2:8]))
    assert iqm_interval(SAMPLE, reps=200)[0] == pytest.approx(metrics.aggregate_iqm(np.array(SAMPLE).reshape(-1, 1)))


def rliable_interval(scores: dict, func, reps: int = 4000) -> tuple[float, float, float]:
    np.random.seed(5)  # rliable resamples from numpy's global generator
    points, intervals = library.get_interval_estimates(scores, func, reps=reps)
    (key,) = points
    return points[key][0], intervals[key][0, 0], intervals[key][1, 0]


def test_the_iqm_interval_is_rliables_stratified_bootstrap():
    iqm, low, high = iqm_interval(SAMPLE, seed=3)
    expected = rliable_interval({"a": np.array(SAMPLE).reshape(-1, 1)}, lambda x: np.array([metrics.aggregate_iqm(x)]))
    assert iqm == pytest.approx(expected[0])
    # Two bootstraps of 4,000 and 10,000 resamples: the bounds (~2.5 apart) agree to Monte Carlo error.
    assert (low, high) == pytest.approx(expected[1:], abs=0.25)
    assert low < iqm < high
    assert iqm_interval(SAMPLE, seed=3) == (iqm, low, high)  # seeded: the same scores, the same interval


def test_the_improvement_interval_is_rliables_independent_bootstrap():
    better = [s + 1.0 for s in SAMPLE]
    p, low, high = probability_of_improvement(better, SAMPLE, seed=2)
    x, y = np.array(better).reshape(-1, 1), np.array(SAMPLE).reshape(-1, 1)
    assert p == pytest.approx(metrics.probability_of_improvement(x, y))
    expected = rliable_interval({"x_y": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=1000)
    assert (low, high) == pytest.approx(expected[1:], abs=0.06)
    assert low <= p <= high


def test_the_probability_of_improvement_counts_pairs_of_runs_ties_as_half():
    # x over y: (3>1) (3<5) (4>1) (4<5) -> 2 of 4; (5=5) adds a tie.
    assert probability_of_improvement([3, 4], [1, 5], reps=200)[0] == pytest.approx(0.5)
    assert probability_of_improvement([5, 6], [5, 1], reps=200)[0] == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert probability_of_improvement(SAMPLE, SAMPLE, reps=200)[0] == pytest.approx(0.5)  # rliable's equal-arrays case


def test_scores_must_be_finite():
    with pytest.raises(ValueError, match="finite scores"):
        iqm_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="finite scores"):
        probability_of_improvement([], [1.0])


def test_the_t_interval_and_the_paired_test():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert (mean, half) == pytest.approx((2.0, 4.302652729911275 * 1.0 / math.sqrt(3)))
    assert paired_t_test([0.0, 0.0, 0.0])[2] == 1.0
    assert paired_t_test([1.0])[2] != paired_t_test([1.0])[2]  # nan: one pair tests nothing
    assert paired_t_test([1.0, 1.2, 0.9, 1.1, 1.05])[2] < 0.001


def test_holm_steps_down_and_stops_at_the_first_it_keeps():
    # m = 4: thresholds 0.0125, 0.0167, 0.025, 0.05 for the sorted p-values.
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # 0.02 >= 0.0167 stops the steps, so 0.024 < 0.025 is not rejected either.
    assert holm([0.001, 0.02, 0.024, 0.9]) == [True, False, False, False]
    # Bonferroni would keep none of these at 0.05 / 3; Holm keeps all three.
    assert holm([0.016, 0.024, 0.049]) == [True, True, True]
    assert holm([math.nan, 0.001]) == [False, True]
    with pytest.raises(ValueError, match="alpha"):
        holm([0.1], alpha=1.5)
