"""An env-server restart resumes the run, on real processes: `orchestrate up` of
configs/tiny_ring.yaml whose env server is restarted by the schedule, then crashes (kill -9 from
the test) and is restarted by the restart policy. The agents wait for it, rejoin, and the run reaches its budget with every
lockstep step run once."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.integration.test_orchestrate import (
    assert_all_reaped, finished_ok, launched_pids, orchestrate, read_events, wait_for_event,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(330)]

AGENTS = ("agent_0", "agent_1", "agent_2")


def rows(run_dir, node: str) -> list[dict]:
    lines = (run_dir / "nodes" / node / "metrics.jsonl").read_text().splitlines()
    parsed = []
    for position, line in enumerate(lines):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            assert position == len(lines) - 1, f"a torn line in the middle of {node}'s metrics: {line!r}"
            # (the last line, read while the run writes it)
    return parsed


@pytest.mark.long
def test_the_env_server_restarts_twice_and_the_run_resumes_where_it_stopped(tmp_path):
    run_dir = tmp_path / "run"
    # 1500 steps take ~7 s on an idle 2-core machine (31 s at load 8.5): long enough for both faults.
    steps, copies = 1500, 2
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", f"run.steps={steps}",
        "--set", "faults.schedule=[{at_s: 1.5, kind: restart, nodes: [env]}]",
        "--set", "faults.restart={policy: on-failure, roles: [env_server], backoff_s: 0.2}",
    )  # fmt: skip
    # The first restart (the schedule's); once the resumed server stepped, a crash of it (kill -9
    # from outside: not a scheduled fault), which the restart policy covers.
    events = wait_for_event(run_dir, "env_server_resumed", process)
    resumed_at = next(e["t"] for e in events if e["event"] == "env_server_resumed")
    deadline = time.monotonic() + 120
    while not any(r["t"] > resumed_at and "env/episode_return" in r for r in rows(run_dir, "agent_0")):
        assert time.monotonic() < deadline and process.poll() is None, "no step after the first resume"
        time.sleep(0.05)
    crashed_at = time.time()
    os.kill(next(e["pid"] for e in events if e["event"] == "restarted" and e["node"] == "env"), signal.SIGKILL)
    stderr = finished_ok(process, timeout_s=300)
    events = read_events(run_dir)
    env_events = [e for e in events if e["node"] == "env"]
    kinds = [e["event"] for e in env_events]
    assert kinds.count("restarted") == 2 and kinds.count("env_server_restarting") == 2, kinds
    scheduled = [e for e in env_events if e["event"] == "restart_scheduled"]
    # The schedule's restart at once, then the policy's after its backoff, doubled by the first restart.
    assert [(e["requested"], e["in_s"]) for e in scheduled] == [(True, 0.0), (False, 0.4)]
    exits = [(e["code"], e["expected"]) for e in env_events if e["event"] == "exited"]
    assert exits == [(-signal.SIGKILL, True), (-signal.SIGKILL, False), (0, True)], "a crash, yet restarted"
    for told in (e for e in env_events if e["event"] in ("env_server_restarting", "env_server_resumed")):
        assert told["agents_told"] == list(AGENTS), told
    resumed = [e for e in env_events if e["event"] == "env_server_resumed"]
    assert len(resumed) == 2 and all(e["downtime_s"] is not None for e in resumed)
    first_step, second_step = (e["step"] for e in resumed)
    fault_times = [next(e["t"] for e in events if e["event"] == "fault"), crashed_at]
    env_log = (run_dir / "nodes" / "env" / "log").read_text()
    assert f"resumed at step {first_step} (incarnation 1" in env_log and f"resumed at step {second_step} (incarnation 2" in env_log
    # Every agent's lockstep bodies are packed (protocols/codec/packed.py), and again after each rejoin.
    for agent in AGENTS:
        assert env_log.count(f"client {agent}: lockstep bodies packed") == 3, agent

    # The step counter went on: each resume is at or after the last step the agents had seen
    # before that fault (not 0), and the run finished its budget once, at the budget.
    for fault_t, step in zip(fault_times, (first_step, second_step)):
        seen = max(r["step"] for agent in AGENTS for r in rows(run_dir, agent) if r["t"] < fault_t)
        assert 0 < seen <= step, (fault_t, seen, step)
    assert second_step > first_step
    assert [e["steps"] for e in events if e["event"] == "run_complete"] == [steps]

    # No step run twice, none skipped: every env step gives each agent one transition per copy.
    # Only the last action before each kill may have been played without the agents seeing its
    # outcome (the server died after the step, before its observation went out): at most one
    # step per restart unseen, never more rows than steps.
    for agent in AGENTS:
        mine = rows(run_dir, agent)
        observed = [r["dqn/rows_observed"] for r in mine if "dqn/rows_observed" in r][-1]
        assert copies * (steps - 2) <= observed <= copies * steps, (agent, observed)
        # The episodes cut by each restart ended as such (their partial returns reported apart),
        # and whole episodes went on after it: the step of each never goes back. The agent cuts
        # at the last step it saw (the resumed step or the one before it), and only an episode it
        # has seen a step of: a restart at an episode's end cuts nothing, which is common since
        # evaluations, long next to a step, fall on episode ends (every 20 steps).
        # Episodes end every 10 steps counted from where the copies were last reset: step 0, then
        # each resume (a resumed server resets every copy, below), so after a resume at step 132
        # the next episode ends at 142, and a restart there cuts nothing.
        cut_steps = {r["step"] for r in mine if "env/cut_episode_return" in r}
        assert cut_steps <= {first_step, second_step, first_step - 1, second_step - 1}, (agent, cut_steps)
        for resume_step, episodes_from in ((first_step, 0), (second_step, first_step)):
            seen_candidates = {resume_step - 1, resume_step}
            if all((step - episodes_from) % 10 != 0 for step in seen_candidates):  # mid-episode whichever it saw
                assert cut_steps & seen_candidates, (agent, resume_step, cut_steps)
        episode_steps = [r["step"] for r in mine if "env/episode_return" in r]
        assert episode_steps == sorted(episode_steps) and mine[-1]["step"] == steps
        # Each resumed server reset every copy: the first whole episode after it is a new one of
        # max_cycles (10) steps from the resumed step, not the rest of the cut one.
        for resume in resumed:
            first = next(r for r in mine if "env/episode_return" in r and r["step"] > resume["step"])
            assert (first["step"], first["env/episode_length"]) == (resume["step"] + 10, 10.0), (agent, first, resume)
        # Kept learning after the last restart: gradient steps grew in rows written after it.
        after = [r["dqn/gradient_steps"] for r in mine if "dqn/gradient_steps" in r and r["t"] > resumed[-1]["t"]]
        assert len(after) >= 2 and after[-1] > after[0], (agent, after)
        assert [r["env/server_downtime_s"] for r in mine if "env/server_downtime_s" in r], agent
        log = (run_dir / "nodes" / agent / "log").read_text()
        assert log.count("rejoined the restarted env server") == 2 and "no message from the env server" not in log

    # The evaluation schedule went on too: one evaluation every 20 steps, none twice, none lost
    # (one interrupted by a kill runs again after the resume).
    eval_steps = [r["step"] for r in rows(run_dir, "env") if "eval/return_mean" in r]
    assert eval_steps == list(range(20, steps + 1, 20))
    assert_all_reaped(launched_pids(events) | {e["node"]: e["pid"] for e in events if e["event"] == "restarted"})


def test_a_restarted_env_server_does_not_wait_for_an_agent_killed_for_good(tmp_path):
    """agent_2 is killed by the schedule (no restart follows), then the env server is restarted:
    the orchestrator tells it agent_2 is gone (control.agents_gone), so it steps on with the
    others at once instead of waiting out its 100 s join deadline for a node that never comes."""
    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", "run.steps=120",
        "--set", "env.join_deadline_s=100", "--set", "env.step_deadline_s=0.5", "--set", "env.eval_every_steps=null",
        "--set", "faults.schedule=[{at_step: 30, kind: kill, nodes: [agent_2]}, {at_step: 60, kind: restart, nodes: [env]}]",
        "--set", "faults.restart={policy: on-failure, roles: [env_server], backoff_s: 0.2}",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=90)  # waiting out the join deadline would overrun this
    assert process.returncode == 0, stderr.decode()[-3000:]
    events = read_events(run_dir)
    resumed = next(e for e in events if e["event"] == "env_server_resumed")
    assert resumed["agents_gone"] == ["agent_2"] and sorted(resumed["agents_told"]) == ["agent_0", "agent_1"]
    assert "agents ['agent_2'] are gone for good" in (run_dir / "nodes" / "env" / "log").read_text()
    complete = next(e for e in events if e["event"] == "run_complete")
    assert complete["steps"] == 120 and complete["t"] - resumed["t"] < 50, "the resumed server did not wait 100 s"
