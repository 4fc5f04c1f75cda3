"""bench/ctde.py end to end at a tiny budget: one variant, one seed, an override reaches the run,
the evaluation curve is drawn."""

from __future__ import annotations

import json

import pytest
import yaml
from tests.conftest import load_bench

bench = load_bench("ctde.py")


@pytest.mark.long
def test_a_vdn_run_is_scored_with_the_override_applied(tmp_path, capsys):
    code = bench.main(["--seeds", "0", "--steps", "300", "--variants", "vdn", "--last-evals", "1",
                       "--set", "agents.learner.target_update_period=50", "--root", str(tmp_path), "--json", "--plot", str(tmp_path / "curves.png")])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    (run,) = result["runs"]
    assert not run["failed"] and run["score"] is not None and run["score"] < 0  # simple_spread pays negative rewards
    assert run["gradient_steps"] > 0
    assert result["overrides"] == ["agents.learner.target_update_period=50"]
    resolved = yaml.safe_load((tmp_path / "vdn_seed0" / "resolved.yaml").read_text())
    assert resolved["agents"]["learner"]["target_update_period"] == 50
    assert resolved["training"]["mixer"] == "vdn"
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
