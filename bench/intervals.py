"""Means over seeds with 95 % confidence intervals (Student's t), for the benches' tables and plots."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval) of the finite values; half-width 0 for one value."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), 0.0
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean()), float(half)


def curve_band(curves) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise mean and 95 % t half-width of equal-length curves, one row per seed."""
    curves = np.asarray(curves, dtype=np.float64)
    mean = curves.mean(axis=0)
    if len(curves) < 2:
        return mean, np.zeros_like(mean)
    return mean, stats.t.ppf(0.975, len(curves) - 1) * curves.std(axis=0, ddof=1) / np.sqrt(len(curves))
