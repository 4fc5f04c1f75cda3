"""bench/og_marl_drift_model.py: its coverage measure, counted by hand, and (long) its verdict on
the drift task with scarce data, where the fused GP must be the better model for every agent."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import load_bench

drift_model = load_bench("og_marl_drift_model.py")


def test_covered_fraction_counts_the_grid_points_near_the_rows():
    # The grid has 40 x 40 cell centres at +-0.25, +-0.75, ...; within 1.5 of the origin lie the 32
    # with (|x|, |y|) in {(.25, .25), (.25, .75), (.75, .25), (.25, 1.25), (1.25, .25), (.75, .75),
    # (.75, 1.25), (1.25, .75)} (4 sign choices each); (1.25, 1.25) is 1.77 away.
    assert drift_model.covered_fraction(np.zeros((1, 2))) == 32 / 1600
    # A row repeated covers nothing more; a far corner row adds its own disc, clipped by the walls.
    assert drift_model.covered_fraction(np.zeros((5, 2))) == 32 / 1600
    corner = drift_model.covered_fraction(np.array([[9.9, 9.9]]))
    assert 0 < corner < 32 / 1600
    assert drift_model.covered_fraction(np.array([[0.0, 0.0], [9.9, 9.9]])) == pytest.approx(32 / 1600 + corner)


@pytest.mark.long
def test_with_drift_and_scarce_data_the_fused_gp_predicts_better_for_every_agent():
    # Measured at seeds 0-4: fused smaller for 25 of 25 agent-seeds on every set, by a factor > 2.
    (row,) = drift_model.compare(seeds=[0], amplitudes=[0.5], fit_rows=[32])
    for name in ("own", "sites", "others"):
        assert row[name]["fused_smaller"] == row[name]["pairs"] == 5, (name, row[name])
        assert row[name]["fused_mse"] < 0.5 * row[name]["local_mse"], (name, row[name])
    assert row["covered_by_own_rows"] < row["covered_by_pooled_rows"]
