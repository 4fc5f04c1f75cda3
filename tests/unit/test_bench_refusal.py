"""Every bench that scores `orchestrate up` runs refuses a run that did not exit 0 or did not do
its budget, through one rule (orchestrator/run_records.py, via bench/runs.py): here each is fed
such a run (written as the runtime writes one, with evaluations good enough to be scored if the
rule were missed), and a check over bench/ finds every script that launches runs and asks that
it goes through the rule."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import runs  # noqa: E402

RESOLVED = "run: {seed: 0, steps: 200, reproducible: false}\n"


def write_run(run_dir: Path, exit_code: int, steps_done: int = 200, evaluations=((100, -20.0), (200, -10.0))) -> Path:
    """A run directory: its env server's evaluations, its events (run_complete at `steps_done`,
    run_finished with `exit_code`) and its resolved config (a budget of 200 steps)."""
    (run_dir / "nodes" / "env").mkdir(parents=True, exist_ok=True)
    rows = [{"step": step, "t": float(step), "eval/return_mean": value} for step, value in evaluations]
    (run_dir / "nodes" / "env" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "resolved.yaml").write_text(RESOLVED)
    events = [{"t": 0.0, "event": "run_started", "node": None, "code": {"git_commit": "abc123", "git_dirty": True}},
              {"t": 1.0, "event": "started", "node": None},
              {"t": 9.0, "event": "run_complete", "node": "env", "steps": steps_done},
              {"t": 10.0, "event": "run_finished", "node": None, "exit_code": exit_code, "reason": "a node died" if exit_code else "budget spent"}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


@pytest.fixture
def failing_runs(monkeypatch):
    """`orchestrate up` replaced: every run it starts writes a run that exited 1 (the process too)."""
    started = []

    def fake_run_once(config, overrides, run_dir, timeout_s, extra_paths=()):
        started.append(run_dir)
        write_run(Path(run_dir), exit_code=1)
        return 1, "a node died"

    monkeypatch.setattr(runs, "run_once", fake_run_once)
    return started


def test_the_main_job_and_ippo_leave_a_refused_run_out_and_say_why(tmp_path, capsys):
    import ippo
    import main_job

    write_run(main_job.run_dir_of(tmp_path, "main", 0), exit_code=1)
    write_run(main_job.run_dir_of(tmp_path, "main", 1), exit_code=0, steps_done=120)  # stopped short, exit 0
    assert main_job.run_summary(main_job.run_dir_of(tmp_path, "main", 0)) is None
    summary = main_job.analyse(tmp_path, [0, 1], ["main"])
    entry = summary["variants"]["main"]
    assert entry["scores"] == {} and entry["refused"] == {
        0: "it exited 1 (a node died)", 1: "it stopped before its budget: 120 steps of 200"}
    main_job.print_tables(summary)
    assert "refused: main seed 1: it stopped before its budget" in capsys.readouterr().out
    write_run(main_job.run_dir_of(tmp_path, "ippo", 0), exit_code=1)
    assert ippo.analyse(tmp_path, tmp_path, [0])["learners"]["ippo"]["scores"] == {}


def test_benches_on_run_and_score_refuse_a_failed_run(tmp_path, failing_runs, capsys):
    import ctde
    import pmic
    import transfer

    assert transfer.main(["--seeds", "0", "--root", str(tmp_path / "transfer"), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    trained = result["runs"]["0"]["train_4"]
    assert trained["failed"] and trained["score"] is None and trained["record"]["exit_code"] == 1
    assert trained["record"]["git_commit"] == "abc123" and trained["record"]["reproducible"] is False
    assert ctde.main(["--seeds", "0", "--root", str(tmp_path / "ctde")]) == 1
    assert pmic.main(["--seeds", "0", "--root", str(tmp_path / "pmic")]) == 1
    assert "FAILED: it exited 1" in capsys.readouterr().out


def test_benches_on_run_and_record_refuse_a_failed_run(tmp_path, failing_runs, monkeypatch, capsys):
    import goals_faults
    import goals_team
    import offline

    assert offline.main(["--seeds", "0", "--root", str(tmp_path / "offline"), "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["error"].startswith("recording run refused: it exited 1") and row["records"]["recording"]["exit_code"] == 1

    args = SimpleNamespace(config=goals_faults.CONFIG, steps=200, landmarks=3, seeds=1, first_seed=0, set=[], delays=[0.0],
                           losses=[0.0], no_kill=True, no_sweep=False, root=str(tmp_path / "faults"), timeout_s=10, save=None)
    monkeypatch.setattr(goals_faults, "score_run", lambda run_dir: {"aligned_all": 1.0, "episodes_joined": 5})
    results = goals_faults.run_all(args)
    (run,) = results["cells"][0]["per_seed"]
    assert run["refused"].startswith("it exited 1") and run["record"]["git_commit"] == "abc123"
    assert goals_faults._mean([run], "aligned_all") != goals_faults._mean([run], "aligned_all")  # nan: not counted
    goals_faults.report(results)
    assert "refused, left out: seeds [0]" in capsys.readouterr().out

    goals_team.report({"conditions": {"steps": 200, "episodes_per_run": 5},
                       "runs": [{"topology": "ring6", "seed": 0, "exit_code": 1, "refused": "it exited 1"}]})
    assert "refused: it exited 1" in capsys.readouterr().out


def test_the_reproducibility_bench_stops_at_a_refused_run(tmp_path, failing_runs, monkeypatch):
    from bench import reproducible

    monkeypatch.setattr(reproducible, "run_and_record", runs.run_and_record)
    monkeypatch.setattr(sys, "argv", ["reproducible.py", "--repeats", "1"])
    assert reproducible.main() == 1


# The shared rule's names: a bench that launches runs must reach one of them.
THROUGH_THE_RULE = re.compile(r"\b(run_and_score|run_and_record|run_record|summarize_sweep|finished_runs)\b")
LAUNCHES_RUNS = re.compile(r'"orchestrator", "up"|\brun_once\(|\brun_and_score\(|\brun_and_record\(|"-m", "orchestrator"')
# Benches that start `orchestrate up` but score no learning: they time or inspect the runs they start.
# chaos.py checks invariants on the runs it breaks on purpose (exit 0 among them), and scores no return.
NOT_SCORING = {"runs.py", "scale.py", "throughput.py", "throughput_hosts.py", "links.py", "sac_update_cost.py", "chaos.py"}


def test_every_bench_that_launches_runs_goes_through_the_rule():
    launching = sorted(path.name for path in (REPO / "bench").glob("*.py") if LAUNCHES_RUNS.search(path.read_text()))
    assert {"main_job.py", "og_marl.py", "goals.py", "transfer.py", "offline.py"} <= set(launching)
    unchecked = [name for name in launching if name not in NOT_SCORING
                 and not THROUGH_THE_RULE.search((REPO / "bench" / name).read_text())]
    assert unchecked == []
