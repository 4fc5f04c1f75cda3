"""Means over seeds with 95 % confidence intervals (Student's t), for the benches' tables and plots,
and beside them the field's protocol (orchestrator/intervals.py, which `orchestrate report` uses
too): the IQM with its stratified-bootstrap interval and the probability of improvement, as
rliable defines them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: orchestrator.intervals
from orchestrator.intervals import (  # noqa: E402,F401  (re-exported for the benches)
    holm, iqm_interval, paired_t_test, probability_of_improvement, t_interval,
)


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval) of the finite values; half-width 0 for one value."""
    return t_interval(values)


def field_protocol(values, seed: int = 0) -> dict:
    """A variant's scores as the field reports them: {"iqm", "iqm_ci95": [low, high], "n"} (None
    for no scores)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return {"iqm": None, "iqm_ci95": None, "n": 0}
    iqm, low, high = iqm_interval(finite, seed=seed)
    return {"iqm": iqm, "iqm_ci95": [low, high], "n": len(finite)}


def improvement(x, y, seed: int = 0) -> dict:
    """P(a run of x beats a run of y) with its bootstrap interval; None without runs on either side."""
    x = [float(v) for v in x if v is not None and np.isfinite(v)]
    y = [float(v) for v in y if v is not None and np.isfinite(v)]
    if not x or not y:
        return {"probability_of_improvement": None, "poi_ci95": None}
    p, low, high = probability_of_improvement(x, y, seed=seed)
    return {"probability_of_improvement": p, "poi_ci95": [low, high]}


def minimum_detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference a two-sided paired t-test at level `alpha` detects with
    probability `power`, given the paired differences' SD and n pairs (exact, noncentral t).

    The usual shortcut (t_{1-alpha/2} + t_{power}) * sd / sqrt(n) is a little smaller at small n
    (at n = 5, 3.72 against 3.76 standard errors; both tend to 2.80 as n grows)."""
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(noncentrality: float) -> float:
        # The wrong-sign tail P(T < -critical), written as the upper tail at -noncentrality:
        # scipy's nct.cdf returns NaN for it at large noncentrality, where it is 0 to rounding.
        rejects = stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality)
        return rejects - power

    noncentrality = optimize.brentq(shortfall, 0.0, 50.0, xtol=1e-10)
    return float(noncentrality * sd / math.sqrt(n))


def curve_band(curves) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise mean and 95 % t half-width of equal-length curves, one row per seed."""
    curves = np.asarray(curves, dtype=np.float64)
    mean = curves.mean(axis=0)
    if len(curves) < 2:
        return mean, np.zeros_like(mean)
    return mean, stats.t.ppf(0.975, len(curves) - 1) * curves.std(axis=0, ddof=1) / np.sqrt(len(curves))
