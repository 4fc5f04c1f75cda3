"""`orchestrate report` on run and sweep directories written here with known contents, so every
number the report prints can be checked against a hand computation. (The integration test
tests/integration/test_sweep_runs.py reports on real runs.)"""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from agent_node.consensus.report import rounds_to_converge
from orchestrator import report
from orchestrator.cli import main
from tests.conftest import write_jsonl

T0 = 1_000_000.0  # the run's `started` event


def make_run(run_dir: Path, returns=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0), loss_drops=(1, 3),
             steps_done: int = 100) -> Path:
    """A two-agent run of 100 steps (its env server reported `steps_done` of them): agent_0
    restarted once (its link counters start again from zero) and was hit by one fault; both ran
    one 4-round consensus session."""
    (run_dir / "resolved.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved.yaml").write_text("run: {steps: 100}  # stand-in: report reads events and metrics only\n")
    write_jsonl(run_dir / "events.jsonl", [
        {"t": T0 - 5, "event": "run_started", "node": None},
        {"t": T0 + 9.9, "event": "run_complete", "node": "env", "steps": steps_done},
        {"t": T0, "event": "started", "node": None},
        {"t": T0 + 3, "event": "fault", "node": None, "kind": "kill", "at_s": 3.0, "nodes": {"agent_0": 123}, "skipped": []},
        {"t": T0 + 3.1, "event": "exited", "node": "agent_0", "code": -9},
        {"t": T0 + 4, "event": "restarted", "node": "agent_0", "pid": 124, "restarts": 1},
        {"t": T0 + 10, "event": "run_finished", "node": None, "exit_code": 0, "reason": "budget spent"},
    ])  # fmt: skip
    episodes = [{"step": 10 * (i + 1), "t": T0 + i, "env/episode_return": r} for i, r in enumerate(returns)]
    rounds = [{"step": 50, "t": T0 + 5, "consensus/round": float(r), "consensus/disagreement_max": d}
              for r, d in enumerate([2.0, 0.5, 1e-3, 1e-4])]  # round 3 is the first <= 1e-3 x 2.0  # fmt: skip
    session = [{"step": 50, "t": T0 + 5, "consensus/rounds": 4.0, "consensus/disagreement_first": 2.0,
                "consensus/disagreement_last": 1e-4, "consensus/missing_neighbours": 1.0},
               {"step": 50, "t": T0 + 5, "consensus/duration_s": 0.5}]  # fmt: skip
    first_dropped, second_dropped = loss_drops
    write_jsonl(run_dir / "nodes" / "agent_0" / "metrics.jsonl", [
        *episodes, *rounds, *session,
        {"step": 30, "t": T0 + 2, "link/agent_0_to_agent_1/sent": 20.0, "link/agent_0_to_agent_1/delivered": 19.0,
         "link/agent_0_to_agent_1/dropped": float(first_dropped)},
        # restarted: the counters begin again
        {"step": 100, "t": T0 + 8, "link/agent_0_to_agent_1/sent": 10.0, "link/agent_0_to_agent_1/delivered": 7.0,
         "link/agent_0_to_agent_1/dropped": float(second_dropped),
         "link/agent_1_to_agent_0/received": 5.0, "link/agent_1_to_agent_0/age_p50_ms": 20.0, "link/agent_1_to_agent_0/age_p99_ms": 80.0},
    ])  # fmt: skip
    write_jsonl(run_dir / "nodes" / "agent_1" / "metrics.jsonl", [
        *episodes, *rounds, *session,
        {"step": 100, "t": T0 + 10, "link/agent_1_to_agent_0/sent": 10.0, "link/agent_1_to_agent_0/delivered": 10.0,
         "link/agent_1_to_agent_0/dropped": 0.0, "link/agent_1_to_env/sent": 100.0, "link/agent_1_to_env/dropped": 0.0,
         "link/agent_0_to_agent_1/age_p50_ms": 25.0, "link/agent_0_to_agent_1/age_p99_ms": 90.0},
    ])  # fmt: skip
    write_jsonl(run_dir / "nodes" / "env" / "metrics.jsonl", [{"step": 100, "t": T0 + 10, "env/steps": 100.0}])
    # a torn last line (a writer killed mid-write) is skipped, not fatal
    with open(run_dir / "nodes" / "agent_1" / "metrics.jsonl", "a") as file:
        file.write('{"step": 101, "env/episode_ret')
    return run_dir


def test_a_run_summary_matches_the_hand_computation(tmp_path):
    summary = report.summarize_run(make_run(tmp_path / "run"))
    assert summary["exit_code"] == 0 and summary["reason"] == "budget spent"
    assert summary["duration_s"] == pytest.approx(10.0)

    agent_0, agent_1 = summary["agents"]["agent_0"], summary["agents"]["agent_1"]
    assert agent_0["episodes"] == 10
    assert agent_0["return_final"] == 10.0
    assert agent_0["return_last20"] == pytest.approx(9.5)  # the last 2 of 10 episodes
    assert agent_0["steps"] == 100
    assert agent_0["steps_per_s"] == pytest.approx(100 / 9.0)  # its last row is at +9 s (an episode)
    assert agent_1["steps_per_s"] == pytest.approx(100 / 10.0)
    assert (agent_0["restarts"], agent_0["faults"]) == (1, 1)
    assert (agent_1["restarts"], agent_1["faults"]) == (0, 0)
    # down at +3.1 s (exited), its first row after the restart (+4 s) is the episode at +5 s
    assert agent_0["recovery_s"] == pytest.approx(1.9)
    assert agent_1["recovery_s"] is None
    assert summary["consensus"]["sessions_per_agent"]["agent_0"] == 1

    link = summary["links"]["agent_0_to_agent_1"]
    assert (link["sent"], link["delivered"], link["dropped"]) == (30.0, 26.0, 4.0)  # 20 + 10, 19 + 7, 1 + 3
    assert link["dropped_fraction"] == pytest.approx(4 / 30)
    assert (link["age_p50_ms"], link["age_p99_ms"]) == (25.0, 90.0)  # measured by the receiver, agent_1
    assert summary["links"]["agent_1_to_agent_0"]["age_p99_ms"] == 80.0

    consensus = summary["consensus"]
    assert consensus["sessions"] == 2  # one per agent
    assert consensus["rounds_to_1e-3_mean"] == 2.0  # 1e-3 <= 1e-3 * 2.0 at round 2
    assert consensus["reached_1e-3_fraction"] == 1.0
    assert consensus["rounds_to_1e-6_mean"] is None and consensus["reached_1e-6_fraction"] == 0.0  # 1e-3 of 2.0 is not 1e-6 of it
    assert consensus["disagreement_last_mean"] == 1e-4
    assert consensus["missing_neighbour_rounds"] == 2.0
    assert consensus["short_session_fraction"] == 1.0  # each agent's one session missed a neighbour
    assert summary["headline"]["consensus_short_sessions"] == 1.0
    assert consensus["duration_s_mean"] == 0.5
    assert consensus["first_session"] == {
        "agents": 2, "disagreement_before_mean": 2.0, "disagreement_after_mean": 1e-4,
        "rounds_to_1e-3_mean": 2.0, "reached_1e-3_fraction": 1.0, "rounds_to_1e-6_mean": None, "reached_1e-6_fraction": 0.0,
        "duration_s_mean": 0.5,
    }  # fmt: skip

    headline = summary["headline"]
    assert headline["return_last20"] == pytest.approx(9.5)
    # peer links only: (4 + 0) dropped of (30 + 10) sent; the env link is not a peer link
    assert headline["peer_dropped_fraction"] == pytest.approx(4 / 40)
    assert headline["peer_age_p99_ms"] == 90.0
    assert (headline["consensus_first_disagreement_after"], headline["consensus_first_rounds_to_1e-3"]) == (1e-4, 2.0)
    assert (headline["restarts"], headline["faults"]) == (1.0, 1.0)
    # (an older run's fault event: no run_s or step of its own; run_s from its time)
    assert summary["faults"] == [{"kind": "kill", "at_s": 3.0, "at_step": None, "run_s": 3.0, "step": None,
                                  "nodes": ["agent_0"], "skipped": []}]


def started_run(run_dir: Path) -> Path:
    """A run directory as a run that started and then stopped leaves it: the started event and
    one metrics row of one agent, no consensus, no end."""
    (run_dir / "nodes" / "agent_0").mkdir(parents=True)
    (run_dir / "resolved.yaml").write_text("#\n")
    write_jsonl(run_dir / "events.jsonl", [{"t": T0, "event": "started", "node": None}])
    write_jsonl(run_dir / "nodes" / "agent_0" / "metrics.jsonl", [{"step": 5, "t": T0 + 1, "dqn/loss": 0.1}])
    return run_dir


def test_a_run_without_consensus_or_an_end_reports_what_is_there(tmp_path):
    run_dir = started_run(tmp_path / "run")
    summary = report.summarize_run(run_dir)
    assert summary["exit_code"] is None and "no run_finished event" in summary["reason"]
    assert summary["consensus"] is None
    assert summary["agents"]["agent_0"]["return_last20"] is None
    assert summary["agents"]["agent_0"]["steps_per_s"] == pytest.approx(5.0)


def test_the_run_tables_show_the_numbers(tmp_path):
    out = io.StringIO()
    assert report.main(make_run(tmp_path / "run"), out=out) == 0
    text = out.getvalue()
    assert "agent_0 -> agent_1" in text and "13.3%" in text  # 4 of 30 dropped
    assert "9.5" in text  # return over the last 20%
    assert "fault: kill at +3 s on agent_0" in text


def make_sweep(sweep_dir: Path) -> None:
    """Two points x two seeds; the second point's seed 1 failed before writing a run dir."""
    runs = []
    for index, loss in enumerate([0.0, 0.3]):
        for seed in (0, 1):
            name = f"p{index:02d}-loss{loss}-seed{seed}"
            status = "failed" if (index, seed) == (1, 1) else "ok"
            if status == "ok":
                make_run(sweep_dir / name, returns=[float(seed + 10 * index)] * 5, loss_drops=(seed, index))
            runs.append({"point": f"p{index:02d}-loss{loss}", "point_index": index, "seed": seed,
                         "grid_values": {"network.default_link.loss": loss}, "overrides": [],
                         "run_dir": str(sweep_dir / name), "log": "", "status": status,
                         "exit_code": 0 if status == "ok" else 1})  # fmt: skip
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "sweep": "demo", "base_config": "x.yaml", "grid": {"network.default_link.loss": [0.0, 0.3]},
        "seeds": [0, 1], "set": {}, "state": "finished", "runs": runs,
    }))  # fmt: skip


def test_a_sweep_summary_aggregates_each_point_over_its_seeds(tmp_path):
    make_sweep(tmp_path)
    summary = report.summarize_sweep(tmp_path)
    first, second = summary["points"]
    assert (first["ok"], len(first["runs"])) == (2, 2)
    assert (second["ok"], len(second["runs"])) == (1, 2)
    returns = first["metrics"]["return_last20"]
    assert returns["n"] == 2 and returns["mean"] == pytest.approx(0.5)
    assert returns["std"] == pytest.approx(statistics.stdev([0.0, 1.0]))
    half = stats.t.ppf(0.975, 1) * returns["std"] / math.sqrt(2)
    assert returns["ci95"] == pytest.approx([0.5 - half, 0.5 + half])
    # the failed seed contributes nothing; one seed has no spread and no interval
    assert second["metrics"]["return_last20"] == {"n": 1, "mean": 10.0, "std": 0.0, "ci95": None, "min": 10.0, "max": 10.0}
    # seed 0 of point 0 dropped 0 + 0 of 40 peer messages; seed 1, 1 + 0
    assert first["metrics"]["peer_dropped_fraction"]["mean"] == pytest.approx((0 / 40 + 1 / 40) / 2)


def test_the_cli_reports_a_sweep_as_a_table_or_json(tmp_path, capsys):
    make_sweep(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "sweep demo" in table and "0.5 ± 0.707" in table and "1/2" in table
    assert "not counted: p01-loss0.3 seed 1: no run directory (the sweep says failed)" in table
    assert "1 comparisons: each point minus p00-loss0.0 on return_last20" in table
    assert main(["report", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["point"] for p in data["points"]] == ["p00-loss0.0", "p01-loss0.3"]


def test_the_timeline_of_a_run_that_failed_before_any_episode_ended_draws_without_a_warning(tmp_path):
    import warnings

    run_dir = started_run(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        (path,) = report.plot_run(report.summarize_run(run_dir), run_dir / "report")
    assert path.stat().st_size > 1000


def test_save_writes_summary_md_and_plots_into_report(tmp_path, capsys):
    make_sweep(tmp_path)
    assert main(["report", str(tmp_path), "--save"]) == 0
    assert (tmp_path / "report" / "sweep.png").stat().st_size > 1000
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert summary.startswith("# Sweep demo\n")
    assert "| p00   |" in summary and "0.5 ± 0.707" in summary
    run_dir = tmp_path / "p00-loss0.0-seed0"
    assert main(["report", str(run_dir), "--save"]) == 0
    assert (run_dir / "report" / "timeline.png").stat().st_size > 1000
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "### agents" in summary and "| agent_0 -> agent_1 |" in summary


def test_report_on_a_directory_that_is_neither_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "expected a run directory" in capsys.readouterr().err


def test_rounds_to_converge_splits_sessions_at_round_zero():
    rows = [{"consensus/round": float(r), "consensus/disagreement_max": d} for r, d in enumerate([1.0, 1e-2, 1e-3])]
    rows += [{"step": 5, "dqn/loss": 0.1}]  # other rows in between are ignored
    rows += [{"consensus/round": float(r), "consensus/disagreement_max": d} for r, d in enumerate([4.0, 1.0, 0.5])]
    rows += [{"consensus/round": 0.0, "consensus/disagreement_max": 0.0}]  # nothing to average: done at once
    # round 0 heard no neighbour (its NaN disagreement was not written): measured from round 1
    rows += [{"consensus/round": 0.0}, {"consensus/round": 1.0, "consensus/disagreement_max": 2.0},
             {"consensus/round": 2.0, "consensus/disagreement_max": 1e-3}]  # fmt: skip
    rows += [{"consensus/round": 0.0}]  # nothing measured at all
    assert rounds_to_converge(rows, 1e-3) == [2, None, 0, 2, None]
    # A million times smaller is reached by none of them but the one with nothing to average.
    assert rounds_to_converge(rows, 1e-6) == [None, None, 0, None, None]
    rows += [{"consensus/round": float(r), "consensus/disagreement_max": d} for r, d in enumerate([1.0, 1e-4, 1e-7])]
    assert rounds_to_converge(rows, 1e-6)[-1] == 2 and rounds_to_converge(rows, 1e-3)[-1] == 1


def test_fault_windows_end_at_the_recovery_of_a_node_they_hit():
    events = [
        {"t": 10.0, "event": "fault", "kind": "kill", "nodes": {"agent_1": 5}},
        {"t": 10.5, "event": "exited", "node": "agent_1"},
        {"t": 11.0, "event": "restarted", "node": "agent_2"},  # another node: not the end
        {"t": 12.0, "event": "restarted", "node": "agent_1"},
        {"t": 15.0, "event": "fault", "kind": "pause", "nodes": {"agent_3": 6}},
        {"t": 23.0, "event": "fault", "kind": "resume", "nodes": {"agent_3": 6}},
        {"t": 30.0, "event": "fault", "kind": "kill", "nodes": {"agent_0": 7}},  # never restarted
    ]
    assert report.fault_windows(events) == [
        (10.0, 12.0, "kill agent_1"), (15.0, 23.0, "pause agent_3"), (23.0, None, "resume agent_3"), (30.0, None, "kill agent_0"),
    ]  # fmt: skip


def test_a_network_fault_counts_for_its_targets_not_every_node_it_was_sent_to():
    partition = {"t": 5.0, "event": "fault", "kind": "partition", "targets": ["agent_2"],
                 "nodes": {"agent_0": 1, "agent_1": 2, "agent_2": 3, "env": 4}}  # fmt: skip
    grouped = {"t": 6.0, "event": "fault", "kind": "partition", "targets": [], "groups": [["agent_0"], ["agent_1", "env"]],
               "nodes": {"agent_0": 1, "agent_1": 2, "env": 4}}  # fmt: skip
    heal = {"t": 13.0, "event": "fault", "kind": "heal", "targets": [], "nodes": {"agent_0": 1}}
    assert report.fault_targets(partition) == {"agent_2"}
    assert report.fault_targets(grouped) == {"agent_0", "agent_1", "env"}
    assert report.fault_targets({"event": "fault", "kind": "kill", "nodes": {"agent_1": 9}}) == {"agent_1"}
    windows = report.fault_windows([partition, grouped, heal])
    assert windows[:2] == [(5.0, 13.0, "partition agent_2"), (6.0, 13.0, "partition agent_0,agent_1,env")]


def test_back_after_a_fault_and_metric_rows_lost_per_agent(tmp_path):
    """agent_0 is partitioned from +2 s to +6 s (it sees steps up to 100, then 300 on) and
    paused at +8 s for good; agent_1 is never hit but one of its periodic rows (step 200) is
    missing: a row lost. Rows are written every 50 steps (resolved.yaml)."""
    run_dir = tmp_path / "run"
    (run_dir / "resolved.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved.yaml").write_text("agents: {count: 2, learner: {kind: dqn}, metrics_every_steps: 50}\n")
    write_jsonl(run_dir / "events.jsonl", [
        {"t": T0, "event": "started", "node": None},
        {"t": T0 + 2, "event": "fault", "kind": "partition", "at_s": 2.0, "run_s": 2.0, "step": 100, "position": 0,
         "targets": ["agent_0"], "nodes": {"env": 1, "agent_0": 2, "agent_1": 3}},
        {"t": T0 + 6, "event": "fault", "kind": "heal", "at_step": 250, "run_s": 6.0, "step": 260, "position": 1,
         "targets": [], "nodes": {"env": 1, "agent_0": 2, "agent_1": 3}},
        {"t": T0 + 8, "event": "fault", "kind": "pause", "at_s": 8.0, "position": 2, "nodes": {"agent_0": 2}},
        {"t": T0 + 10, "event": "run_finished", "node": None, "exit_code": 0, "reason": "budget spent"},
    ])  # fmt: skip
    agent_0 = [{"step": s, "t": T0 + s / 50, "dqn/loss": 0.1} for s in (0, 50, 100)]
    agent_0 += [{"step": 100, "t": T0 + 4, "membership/peers_alive": 0.0},  # cut off: its step stands still
                {"step": 100, "t": T0 + 6.01, "link/agent_0_to_env/dropped_loss": 0.0},  # the heal's row: no step, no loss
                {"step": 275, "t": T0 + 6.5, "env/episode_return": -1.0},  # acting again 0.5 s after the heal
                {"step": 300, "t": T0 + 6.75, "dqn/loss": 0.2},  # learning again
                {"step": 350, "t": T0 + 7.5, "dqn/loss": 0.2}]  # paused after this: 400 on never come
    agent_1 = [{"step": s, "t": T0 + s / 50, "dqn/loss": 0.1} for s in (0, 50, 100, 150, 250, 300, 350, 400)]
    write_jsonl(run_dir / "nodes" / "agent_0" / "metrics.jsonl", agent_0)
    write_jsonl(run_dir / "nodes" / "agent_1" / "metrics.jsonl", agent_1)
    summary = report.summarize_run(run_dir)
    a0, a1 = summary["agents"]["agent_0"], summary["agents"]["agent_1"]
    partition, pause = a0["interruptions"]
    assert (partition["kind"], partition["start"], partition["end"]) == ("partition", T0 + 2, T0 + 6)
    assert partition["acting_after_s"] == pytest.approx(0.5) and partition["learning_after_s"] == pytest.approx(0.75)
    assert (pause["kind"], pause["end"], pause["acting_after_s"]) == ("pause", None, None)
    # 150..250 were not seen (cut off); 400 was never reached after the pause: neither is lost.
    assert a0["metric_rows_lost"] == [] and a0["back_after_fault_s"] == pytest.approx(0.5)
    assert a1["interruptions"] == [] and a1["metric_rows_lost"] == [200] and a1["back_after_fault_s"] is None
    assert summary["headline"]["metric_rows_lost"] == 1.0
    assert summary["headline"]["back_after_fault_s"] == pytest.approx(0.5)
    assert summary["headline"]["learning_after_fault_s"] == pytest.approx(0.75)
    assert [(f["kind"], f["at_s"], f["at_step"], f["step"]) for f in summary["faults"]][:2] == [
        ("partition", 2.0, None, 100), ("heal", None, 250, 260)]
    out = io.StringIO()
    report.render_run(summary, __import__("rich.console").console.Console(file=out, width=300))
    text = out.getvalue()
    assert "fault: heal at step 250 (fired at +6 s, step 260)" in text
    assert "agent_0: after the partition (faults.schedule.0) ended, acting again after 0.5 s, learning after 0.75 s" in text
    assert "agent_1: metric rows lost at steps [200]" in text


def test_an_agent_that_never_acts_again_after_a_heal_has_no_back_after_figure(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "resolved.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved.yaml").write_text("run: {name: run}\n")
    write_jsonl(run_dir / "events.jsonl", [
        {"t": T0, "event": "started", "node": None},
        {"t": T0 + 1, "event": "fault", "kind": "partition", "position": 0, "targets": ["agent_0"], "nodes": {"agent_0": 2}},
        {"t": T0 + 2, "event": "fault", "kind": "heal", "position": 1, "targets": [], "nodes": {"agent_0": 2}},
    ])  # fmt: skip
    write_jsonl(run_dir / "nodes" / "agent_0" / "metrics.jsonl",
                [{"step": 0, "t": T0}, {"step": 250, "t": T0 + 0.5}, {"step": 250, "t": T0 + 3, "membership/peers_alive": 2.0}])
    summary = report.summarize_run(run_dir)
    agent = summary["agents"]["agent_0"]
    assert agent["interruptions"][0]["acting_after_s"] is None
    assert agent["back_after_fault_s"] is None and summary["headline"]["back_after_fault_s"] is None


def test_every_up_writes_the_run_report_and_a_failed_plot_is_an_event_not_a_failure(tmp_path, monkeypatch, capsys):
    from orchestrator import runtime
    from orchestrator.rundir import EventLog, read_jsonl

    run_dir = make_run(tmp_path / "run")
    events = EventLog(run_dir / "events.jsonl")
    runtime.write_report(run_dir, events)
    assert (run_dir / "report" / "summary.md").read_text().startswith("# Run run\n")
    assert (run_dir / "report" / "timeline.png").stat().st_size > 1000
    assert "report: " in capsys.readouterr().err
    assert not any(e["event"] == "report_failed" for e in read_jsonl(run_dir / "events.jsonl"))

    (run_dir / "report" / "timeline.png").unlink()
    runtime.write_report(run_dir, events, plots=False)  # after Ctrl-C: the summary only
    assert not (run_dir / "report" / "timeline.png").exists() and (run_dir / "report" / "summary.md").is_file()

    def broken_plot(summary, out_dir):
        raise RuntimeError("no display backend")

    monkeypatch.setattr(report, "plot_run", broken_plot)
    runtime.write_report(run_dir, events)  # must not raise
    failed = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "report_failed"]
    assert failed and failed[-1]["problems"] == ["plots: RuntimeError: no display backend"]
    assert failed[-1]["written"] == [str(run_dir / "report" / "summary.md"), str(run_dir / "tb" / "hparams")]
    assert "report not complete: plots: RuntimeError: no display backend" in capsys.readouterr().err
    # A run directory the report cannot read: a problem line, not an exception.
    written, problems, lines = report.write_run_report(tmp_path / "missing")
    assert written == [] and lines == [] and problems and problems[0].startswith("summary: RunDirError")


def test_a_push_sum_run_reports_its_disagreement_estimate_and_no_rounds(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "resolved.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved.yaml").write_text("run: {name: run}\n")
    write_jsonl(run_dir / "events.jsonl", [{"t": T0, "event": "started", "node": None}])
    for node, (first, last) in {"agent_0": (4.0, 1e-6), "agent_1": (2.0, 3e-6)}.items():
        write_jsonl(run_dir / "nodes" / node / "metrics.jsonl", [
            {"step": 20, "t": T0 + 1, "consensus/pushes": 40.0, "consensus/weight_mass": 1.0,
             "consensus/disagreement_first": first, "consensus/disagreement_last": last},
            {"step": 20, "t": T0 + 1, "consensus/duration_s": 2.0}])  # fmt: skip
    summary = report.summarize_run(run_dir)
    consensus = summary["consensus"]
    assert consensus["rounds_mean"] is None and consensus["disagreement_first_mean"] == pytest.approx(3.0)
    assert consensus["disagreement_last_mean"] == pytest.approx(2e-6)
    assert consensus["first_session"]["reached_1e-3_fraction"] is None  # no rounds: not 0%
    assert summary["headline"]["consensus_first_disagreement_after"] == pytest.approx(2e-6)
    out = io.StringIO()
    report.render_run(summary, __import__("rich.console").console.Console(file=out, width=300))
    assert "disagreement estimate 3.00e+00 at the first pushes heard -> 2.00e-06 at the last" in out.getvalue()


def test_a_reproducible_run_that_timing_decided_says_so_per_agent(tmp_path):
    """run.reproducible: an agent writes `reproducibility/<cause>` (agent_node/node.py); the
    report names the causes per agent and flags the run, and says nothing when none were written."""
    run_dir = make_run(tmp_path / "run")
    with open(run_dir / "nodes" / "agent_1" / "metrics.jsonl", "a") as file:  # after the torn line: a new line
        file.write("\n" + json.dumps({"step": 60, "t": T0 + 6, "reproducibility/broken": 1.0, "reproducibility/step_deadline": 1.0}))
        file.write("\n" + json.dumps({"step": 70, "t": T0 + 7, "reproducibility/broken": 1.0, "reproducibility/consensus_incomplete": 1.0}) + "\n")
    summary = report.summarize_run(run_dir)
    assert summary["agents"]["agent_1"]["reproducibility_broken_by"] == ["consensus_incomplete", "step_deadline"]
    assert summary["agents"]["agent_0"]["reproducibility_broken_by"] == []
    assert summary["headline"]["reproducibility_broken"] == 1.0
    out = io.StringIO()
    report.main(run_dir, out=out)
    assert "agent_1: not reproducible (run.reproducible), timing decided: consensus_incomplete, step_deadline" in out.getvalue()
    assert "agent_0: not reproducible" not in out.getvalue()
    assert report.summarize_run(make_run(tmp_path / "clean"))["headline"]["reproducibility_broken"] == 0.0


def test_env_server_restarts_are_reported_with_their_step_and_downtime(tmp_path):
    run_dir = make_run(tmp_path / "run")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    events[-1:-1] = [
        {"t": T0 + 6, "event": "env_server_resumed", "node": "env", "step": 60, "restarts": 1, "downtime_s": 0.7},
        {"t": T0 + 8.5, "event": "env_server_resumed", "node": "env", "step": 90, "restarts": 2, "downtime_s": 1.25},
    ]
    write_jsonl(run_dir / "events.jsonl", events)
    summary = report.summarize_run(run_dir)
    assert summary["env_restarts"] == [{"run_s": 6.0, "step": 60, "downtime_s": 0.7},
                                       {"run_s": 8.5, "step": 90, "downtime_s": 1.25}]
    out = io.StringIO()
    assert report.main(run_dir, out=out) == 0
    assert "env server: back at +6 s after 0.7 s down, resumed at step 60" in out.getvalue()
    assert report.summarize_run(make_run(tmp_path / "plain"))["env_restarts"] == []


def test_damaged_saved_state_is_reported_for_every_node_and_a_fresh_start_in_the_headline(tmp_path):
    run_dir = make_run(tmp_path / "run")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    events[-1:-1] = [
        {"t": T0 + 4.5, "event": "state_damaged", "node": "agent_0", "started_fresh": False,
         "what": "damaged state skipped: .../step-000000020.pt (no Parley seal); 10 steps of learning lost"},
        {"t": T0 + 5, "event": "state_damaged", "node": "learner", "started_fresh": True,
         "what": "no good generation of its saved state: ...; started from scratch (run.on_corrupt_state: start_fresh)"},
    ]
    write_jsonl(run_dir / "events.jsonl", events)
    summary = report.summarize_run(run_dir)
    assert summary["headline"]["state_started_fresh"] == 1.0
    assert [(d["node"], d["started_fresh"]) for d in summary["state_damaged"]] == [("agent_0", False), ("learner", True)]
    out = io.StringIO()
    assert report.main(run_dir, out=out) == 0
    lines = out.getvalue().splitlines()
    # Right under the run's first line: what the run is, is not what its config says.
    assert lines[1].startswith("agent_0: RESTORED OLDER SAVED STATE: damaged state skipped: ")
    assert lines[2].startswith("learner: STARTED FROM SCRATCH OVER DAMAGED SAVED STATE: no good generation")
    clean = report.summarize_run(make_run(tmp_path / "clean"))
    assert clean["headline"]["state_started_fresh"] == 0.0 and clean["state_damaged"] == []


def make_grid_sweep(sweep_dir: Path, point_returns: list[list[float]], steps_done: dict | None = None) -> None:
    """One point per entry of `point_returns`, one seed per value in it (the run's return)."""
    runs = []
    for index, returns in enumerate(point_returns):
        for seed, value in enumerate(returns):
            name = f"p{index:02d}-delay{index}-seed{seed}"
            make_run(sweep_dir / name, returns=[value] * 5, steps_done=(steps_done or {}).get((index, seed), 100))
            runs.append({"point": f"p{index:02d}-delay{index}", "point_index": index, "seed": seed,
                         "grid_values": {"network.default_link.delay_s": index}, "overrides": [],
                         "run_dir": str(sweep_dir / name), "log": "", "status": "ok", "exit_code": 0})
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "sweep": "grid", "base_config": "x.yaml", "grid": {"network.default_link.delay_s": list(range(len(point_returns)))},
        "seeds": list(range(len(point_returns[0]))), "set": {}, "state": "finished", "runs": runs}))


def test_a_sweep_counts_its_comparisons_and_marks_those_that_survive_holm(tmp_path, capsys):
    # Point 1 is lower on every seed by 5 (p ~ 1e-8); point 2 by 1 with the noise of the seeds
    # (p = 0.033: below 0.05 alone, not below Holm's 0.05 / 2 at its step); point 3 is noise.
    base = [10.0, 12.0, 11.0, 13.0, 9.0]
    make_grid_sweep(tmp_path, [base, [v - 5 + d for v, d in zip(base, [0.1, -0.1, 0.0, 0.05, -0.05])],
                               [v - 1 + d for v, d in zip(base, [0.9, -0.9, 0.4, -0.4, 0.0])],
                               [v + d for v, d in zip(base, [0.5, -0.5, 0.2, -0.3, 0.1])]])
    comparisons = report.summarize_sweep(tmp_path)["comparisons"]
    assert comparisons["count"] == 3 and comparisons["metric"] == "return_last20"
    first, strong, weak, noise = comparisons["rows"]
    assert "p_value" not in first and first["iqm"] == pytest.approx(11.0)  # the middle half of 9..13
    assert strong["difference"] == pytest.approx(-5.0) and strong["survives_holm"]
    assert weak["p_value"] == pytest.approx(0.0326, abs=1e-3) and not weak["survives_holm"]
    assert noise["p_value"] > 0.5 and not noise["survives_holm"]
    assert strong["probability_of_improvement"] < weak["probability_of_improvement"] < noise["probability_of_improvement"]
    assert main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "3 comparisons: each point minus p00-delay0 on return_last20" in table and "1 survive (p01)" in table


def test_a_sweep_is_compared_with_the_point_named_by_against(tmp_path, capsys):
    make_grid_sweep(tmp_path, [[10.0, 12.0, 11.0], [7.0, 9.0, 8.5], [10.0, 12.5, 11.0]])
    comparisons = report.summarize_sweep(tmp_path, against="p01")["comparisons"]
    assert comparisons["baseline"] == "p01-delay1" and comparisons["count"] == 2
    first, reference, last = comparisons["rows"]
    assert "p_value" not in reference and first["difference"] == pytest.approx(2.833, abs=1e-3)
    assert main(["report", str(tmp_path), "--against", "p01-delay1"]) == 0
    out = capsys.readouterr().out
    assert "2 comparisons: each point minus p01-delay1" in out and "minus p01 [95% t-CI]" in out
    assert main(["report", str(tmp_path), "--against", "p07"]) != 0
    assert "--against: expected a point of the sweep (p00-delay0, p01-delay1, p02-delay2), got 'p07'" in capsys.readouterr().err


def test_a_sweep_leaves_out_a_run_that_stopped_before_its_budget(tmp_path):
    make_grid_sweep(tmp_path, [[1.0, 2.0], [3.0, 50.0]], steps_done={(1, 1): 60})
    point = report.summarize_sweep(tmp_path)["points"][1]
    assert point["ok"] == 1 and point["metrics"]["return_last20"]["mean"] == pytest.approx(3.0)
    assert point["runs"][1]["refused"] == "it stopped before its budget: 60 steps of 100"


def test_the_last_line_says_how_long_the_run_took() -> None:
    from orchestrator.report import timing_lines

    assert timing_lines({"duration_s": 71.6, "launch_s": 3.2}) == [
        "the run took 72 s from its first step to its end, after 3 s starting its nodes"]
    assert timing_lines({"duration_s": 71.6, "launch_s": None}) == ["the run took 72 s from its first step to its end"]
    assert timing_lines({"duration_s": None, "launch_s": 3.2}) == []  # a run that never finished
