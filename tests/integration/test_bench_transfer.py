"""bench/transfer.py end to end at a tiny budget: the three training runs learn and are scored by
their evaluations; the evaluation-only runs (the average of a training run's copies, each agent
its own copy, agent_0's copy for all, untrained) run one step and evaluate once with
--eval-episodes episodes from the checkpoints they name; every run plays on the --grid asked for; the curves are drawn; and a
second invocation with --reuse scores the finished runs without running them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from agent_node.persistence import load_checkpoint
from tests.conftest import load_bench

bench = load_bench("transfer.py")

# Eleven whole runs (~70 s on an idle 2-core machine, minutes under load).
pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(600)]


def test_evaluation_only_runs_evaluate_once_with_the_episodes_asked_for(tmp_path, capsys):
    code = bench.main(["--seeds", "0", "--steps", "40", "--eval-every", "20", "--eval-episodes", "3", "--grid", "8",
                       "--root", str(tmp_path), "--json", "--plot", str(tmp_path / "curves.png")])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    runs = result["runs"]["0"]
    for name in bench.TRAINED:
        assert [step for step, _ in runs[name]["evaluations"]] == [20, 40], name
    for name, (source, which) in bench.EVALUATION_ONLY.items():
        assert len(runs[name]["evaluations"]) == 1, name
        resolved = yaml.safe_load((tmp_path / f"{name}_seed0" / "resolved.yaml").read_text())
        assert resolved["run"]["steps"] == 1 and resolved["env"]["eval_episodes"] == 3
        assert resolved["agents"]["learning"] is False and resolved["agents"]["count"] == 4
        shared, own = resolved["agents"].get("load_shared_checkpoint"), resolved["agents"].get("load_checkpoints")
        if source is None:
            assert shared is None and own is None, name
        elif which == bench.OWN:  # each pursuer its own agent node's final checkpoint
            assert shared is None, name
            for i in range(4):
                link = Path(own) / f"pursuer_{i}" / "latest.pt"
                assert link.resolve() == bench.checkpoint_of(tmp_path / f"{source}_seed0", i).resolve(), (name, i)
        elif which == bench.AVERAGE:  # every pursuer the average of the training run's copies
            assert own is None and shared == str(tmp_path / f"{source}_seed0" / "shared_policy.pt"), name
        else:
            assert which == bench.AGENT_0 and own is None, name
            assert shared == str(bench.checkpoint_of(tmp_path / f"{source}_seed0")), name
    # The averages hold as many copies as their runs had agent nodes (2 for train_2, 4 otherwise).
    for source, count in (("train_2", 2), ("train_mix", 4), ("train_4", 4)):
        run_dir = tmp_path / f"{source}_seed0"
        assert bench.agent_count(run_dir) == count
        average = load_checkpoint(run_dir / "shared_policy.pt")["learner"]["dqn"]["q_network"]
        copies = [load_checkpoint(bench.checkpoint_of(run_dir, i))["learner"]["dqn"]["q_network"]
                  for i in range(count)]
        for key, value in average.items():
            torch.testing.assert_close(value, sum(copy[key] for copy in copies) / count, rtol=1e-5, atol=1e-6)
    for name in [*bench.TRAINED, *bench.EVALUATION_ONLY]:
        resolved = yaml.safe_load((tmp_path / f"{name}_seed0" / "resolved.yaml").read_text())
        base_kwargs = resolved["env"]["kwargs"]["base_kwargs"]
        assert (base_kwargs["x_size"], base_kwargs["y_size"], base_kwargs["max_cycles"]) == (8, 8, 100), name
    assert result["grid"] == "8x8"
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")

    code = bench.main(["--seeds", "0", "--steps", "40", "--eval-every", "20", "--eval-episodes", "3", "--grid", "8",
                       "--root", str(tmp_path), "--json", "--reuse"])
    again = json.loads(capsys.readouterr().out)
    assert code == 0, again
    for name, run in again["runs"]["0"].items():
        assert run["reused"] and run["score"] == runs[name]["score"], name
    assert json.dumps(again["ratios"]) == json.dumps(result["ratios"])  # NaN where a run gained nothing
