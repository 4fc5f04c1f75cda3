"""bench/mi_estimators.py: its oracles agree with the closed forms, and its verdicts read each
bound's side of the truth from the seeds' interval (tables built from given readings, no training)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import mi_estimators as bench  # noqa: E402


def test_the_oracles_bracket_the_truth_as_the_estimators_theory_says():
    for rho in (0.5, 0.9):
        truth = bench.true_mi(rho, 1)
        assert bench.optimal_jsd(rho, 1, samples=20_000) < truth < bench.exact_club(rho, 1)
    assert bench.true_mi(0.8, 1) == pytest.approx(0.511, abs=5e-4)
    assert bench.exact_club(0.8, 2) == pytest.approx(2 * 0.64 / 0.36)
    assert bench.optimal_jsd(0.999, 8, samples=20_000) <= 2 * math.log(2) + 1e-9  # saturates


def cell(jsd: list[float], club: list[float], truth: float = 1.0) -> dict:
    seeds = [{"jsd": j, "club": c, "jsd_half": j, "club_half": c} for j, c in zip(jsd, club)]
    return {"dims": 1, "rho": 0.9, "true_mi": truth, "jsd_optimum": 0.9, "club_exact": 4.3, "seeds": seeds}


def test_verdicts_follow_the_interval_not_the_mean_alone():
    header, rule, on_side, wrong_side = bench.summarize([
        cell(jsd=[0.8, 0.82, 0.78, 0.81, 0.79], club=[1.5, 1.6, 1.4, 1.55, 1.45]),
        cell(jsd=[1.3, 1.31, 1.29, 1.3, 1.3], club=[0.5, 0.52, 0.48, 0.5, 0.5]),
    ])
    assert "below truth?" in header and "above truth?" in header
    columns = [c.strip() for c in on_side.split("|")[1:-1]]
    assert columns[6] == "yes" and columns[11] == "yes" and columns[7] == "-0.200" and columns[12] == "+0.500"
    columns = [c.strip() for c in wrong_side.split("|")[1:-1]]
    assert columns[6] == "NO" and columns[11] == "NO"
    # A mean above the truth whose interval reaches below it is on its side within sampling error.
    _, _, noisy = bench.summarize([cell(jsd=[0.5, 1.5, 0.9, 1.4, 0.8], club=[1.0] * 5)])
    assert [c.strip() for c in noisy.split("|")[1:-1]][6] == "yes"
