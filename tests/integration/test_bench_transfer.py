"""bench/transfer.py end to end at a tiny budget: the three training runs learn and are scored by
their evaluations, the evaluation-only runs (zero-shot, untrained) run one step and evaluate once
with --eval-episodes episodes, every run plays on the --grid asked for, and the curves are drawn."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_transfer", REPO / "bench" / "transfer.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_transfer"] = bench
spec.loader.exec_module(bench)


def test_evaluation_only_runs_evaluate_once_with_the_episodes_asked_for(tmp_path, capsys):
    code = bench.main(["--seeds", "0", "--steps", "40", "--eval-every", "20", "--eval-episodes", "3", "--grid", "8",
                       "--root", str(tmp_path), "--json", "--plot", str(tmp_path / "curves.png")])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    runs = result["runs"]["0"]
    for name in bench.TRAINED:
        assert [step for step, _ in runs[name]["evaluations"]] == [20, 40], name
    for name in bench.ZERO_SHOT:
        assert len(runs[name]["evaluations"]) == 1, name
        resolved = yaml.safe_load((tmp_path / f"{name}_seed0" / "resolved.yaml").read_text())
        assert resolved["run"]["steps"] == 1 and resolved["env"]["eval_episodes"] == 3
        assert resolved["agents"]["learning"] is False and resolved["agents"]["count"] == 4
    for name in [*bench.TRAINED, *bench.ZERO_SHOT]:
        resolved = yaml.safe_load((tmp_path / f"{name}_seed0" / "resolved.yaml").read_text())
        base_kwargs = resolved["env"]["kwargs"]["base_kwargs"]
        assert (base_kwargs["x_size"], base_kwargs["y_size"], base_kwargs["max_cycles"]) == (8, 8, 100), name
    assert result["grid"] == "8x8"
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
