"""bench/realtime.py's points: each is a valid run of the main job with the straggler it names."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import load_config
from tests.conftest import load_bench

realtime = load_bench("realtime.py")
MAIN_JOB = Path(__file__).resolve().parents[2] / "configs" / "4agents_ring.yaml"


def test_a_slowed_straggler_waits_before_each_answer_on_either_clock():
    for rate in (None, 40.0):
        config = load_config(MAIN_JOB, realtime.point_settings(rate, 0.0, 400, 3, act_delay_s=0.02))
        assert config.agents.act_delay_s == {realtime.STRAGGLER: 0.02}
        assert config.env.clock == ("lockstep" if rate is None else "realtime")
    assert load_config(MAIN_JOB, realtime.point_settings(40.0, 2.0, 400, 3)).agents.act_delay_s == {}


def test_the_page_counts_late_actions_as_the_report_does_across_an_env_server_restart(tmp_path):
    from orchestrator.report import summarize_run
    from tests.unit.test_sweep_effects import T0, flat, make_run

    # The env server counts late actions from zero again after its restart (at T0 + 3.5): agent_0
    # was late 40 times before it and 10 after, 50 in all, not the last row's 10.
    env_rows = [{"step": 100, "t": T0 + 3, "env/late_actions/agent_0": 40.0, "env/late_actions/agent_1": 0.0,
                 "env/action_age_steps/agent_0": 2.0, "env/action_age_steps_max/agent_0": 3.0},
                {"step": 200, "t": T0 + 4, "env/late_actions/agent_0": 10.0, "env/late_actions/agent_1": 4.0,
                 "env/action_age_steps/agent_0": 4.0, "env/action_age_steps_max/agent_0": 6.0,
                 "env/action_age_steps/agent_1": 1.0, "env/action_age_steps_max/agent_1": 2.0}]  # fmt: skip
    restart = {"t": T0 + 3.5, "event": "restarted", "node": "env", "pid": 9, "restarts": 1}
    run_dir = make_run(tmp_path / "run", flat(-12.0), env_rows=env_rows, extra_events=[restart])
    columns = realtime.measure(run_dir, 200)
    assert columns["late_by_agent"] == {"agent_0": 50.0, "agent_1": 4.0}
    assert columns["late_share"] == summarize_run(run_dir)["headline"]["late_action_share"] == (50 / 200 + 4 / 200) / 2
    assert (columns["age_mean"], columns["age_max"]) == ((3.0 + 1.0) / 2, 6.0)
    assert columns["eval_return"] == -12.0


def test_the_summary_pairs_each_rate_with_the_lockstep_by_seed_and_leaves_out_refused_runs():
    def row(rate, seed, eval_return, returncode=0):
        return {"rate": rate, "pause_s": 0.0, "act_delay_s": 0.0, "seed": seed, "returncode": returncode,
                "refused": None if returncode == 0 else f"exit {returncode}", "steps_per_s": 40.0,
                "late_share": 0.0 if rate is None else 0.25, "age_mean": None if rate is None else 2.0,
                "eval_return": eval_return}  # fmt: skip

    rows = [row(None, 0, -14.0), row(None, 1, -15.0), row(None, 2, -16.0),
            row(80.0, 0, -15.0), row(80.0, 1, -17.0), row(80.0, 2, -40.0, returncode=1)]
    lockstep, clocked = realtime.summarize(rows)
    assert lockstep["rate"] is None and lockstep["seeds"] == [0, 1, 2] and lockstep["minus_lockstep"] is None
    assert clocked["seeds"] == [0, 1] and clocked["runs"] == 3
    mean, half = clocked["minus_lockstep"]
    assert mean == -1.5 and half > 0  # (-15 - -14 + -17 - -15) / 2; the refused seed 2 is in neither
    assert clocked["eval_return"][0] == -16.0 and clocked["late_share"][0] == 0.25
