"""bench/runs.py's plot of finished runs: evaluation curves, evaluation-only levels, and the
groups it has to leave out, read from run directories laid out as the runtime writes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import runs  # noqa: E402


def make_run(root: Path, name: str, evaluations: list[tuple[int, float]]) -> Path:
    """A run directory whose env server wrote these greedy evaluations (and a training record)."""
    env = root / name / "nodes" / "env"
    env.mkdir(parents=True)
    lines = [{"step": 1, "env/steps_per_s": 10.0}] + [{"step": step, "eval/return_mean": value} for step, value in evaluations]
    (env / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / name


def test_evaluations_are_read_from_the_env_servers_metrics(tmp_path):
    run = make_run(tmp_path, "a_seed0", [(100, -3.0), (200, -2.0)])
    assert runs.evaluations(run) == [(100, -3.0), (200, -2.0)]


def test_curves_and_levels_are_drawn_and_empty_groups_named(tmp_path):
    curve = [make_run(tmp_path, f"train_seed{seed}", [(100, -3.0 - seed), (200, -2.0), (300, -1.0)]) for seed in range(3)]
    curve.append(make_run(tmp_path, "train_seed3", [(100, -3.0), (200, -2.0)]))  # shorter: the curve is cut to it
    level = [make_run(tmp_path, f"eval_seed{seed}", [(50, -4.0 + seed)]) for seed in range(2)]
    nothing = [make_run(tmp_path, "crashed_seed0", [])]
    out = tmp_path / "curves.png"
    left_out = runs.plot_evaluations({"train": curve, "crashed": nothing}, out, "test", levels={"zero-shot": level})
    assert left_out == ["crashed"]
    assert out.read_bytes().startswith(b"\x89PNG")


def test_the_command_line_refuses_a_glob_that_matches_nothing(tmp_path):
    make_run(tmp_path, "a_seed0", [(100, -1.0)])
    with pytest.raises(SystemExit, match="no run directory matches"):
        runs.main(["plot", str(tmp_path / "x.png"), f"a={tmp_path}/b_seed*"])
    with pytest.raises(SystemExit, match="expected LABEL=GLOB"):
        runs.main(["plot", str(tmp_path / "x.png"), f"{tmp_path}/a_seed*"])
    runs.main(["plot", str(tmp_path / "x.png"), f"a={tmp_path}/a_seed*"])
    assert (tmp_path / "x.png").exists()
