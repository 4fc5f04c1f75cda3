"""A centralized run (configs/tiny_qmix.yaml, a `learner` node) survives restarts.

- an agent restarted mid-run is heard by the learner again (its DEALER connects under a routing
  id of its new incarnation: protocols/net/transport.py, incarnation_routing_id) and gets parameters
  again;
- the learner node killed mid-run, restarted by the restart policy, restores its checkpoint
  (networks, optimizer, gradient step counter, joint replay) and trains on from it; the agents,
  held while too many of their rows were unacknowledged, join it again and are acknowledged
  (protocols/codec/ctde.py, flow control).

Both runs must finish their budget with exit 0: before these fixes, each stalled (every agent
held its observations for good and the lockstep crawled at one step per `env.step_deadline_s`).
The agent's restart is timed by `at_s` (the budget outlasts it on an idle machine; on a loaded one
the run is longer, never shorter); the learner is killed once it has trained past a checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_orchestrate import launched_pids, orchestrate, read_events, run_restarting_the_env_server, wait_for_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

COMMON = (
    "--set", "run.steps=800",
    "--set", "env.step_deadline_s=1.0",
    "--set", "agents.checkpoint_every_steps=50",
    "--set", "agents.replay_save_every_steps=50",
)  # fmt: skip


def metrics(run_dir: Path, node: str) -> list[dict]:
    path = run_dir / "nodes" / node / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]  # (a line being written is skipped)


def finish(process: subprocess.Popen, run_dir: Path, target: str) -> list[dict]:
    """Wait for the run; exit 0, `target` killed once and back, every node's last exit clean."""
    try:
        _, stderr = process.communicate(timeout=200)
    except subprocess.TimeoutExpired:  # stalled: let the orchestrator stop its nodes, then fail
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        pytest.fail(f"the run did not finish in 200 s (stalled after the restart of {target}?): {stderr.decode()[-2000:]}")
    assert process.returncode == 0, stderr.decode()[-3000:]
    events = read_events(run_dir)
    rejoined = [e for e in events if e["event"] == "rejoined"]
    assert [e["node"] for e in rejoined] == [target], [e for e in events if e["event"] in ("fault", "restarted", "exited")]
    exits = {(e["node"], e["code"]) for e in events if e["event"] == "exited"}
    assert exits == {(node, 0) for node in ("env", "agent_0", "agent_1", "agent_2", "learner")} | {(target, -9)}
    return events


@pytest.mark.long
def test_an_agent_restarted_mid_run_is_heard_by_the_learner_and_gets_parameters_again(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_qmix.yaml", "--run-dir", str(run_dir), *COMMON,
                          "--set", "faults.schedule=[{at_s: 1.0, kind: restart, nodes: [agent_1]}]")
    events = finish(process, run_dir, "agent_1")
    back_at = next(e["t"] for e in events if e["event"] == "rejoined")
    learner = [r for r in metrics(run_dir, "learner") if "learner/gradient_steps" in r]
    steps_at_restart = max([r["learner/gradient_steps"] for r in learner if r["t"] <= back_at], default=0.0)
    final = learner[-1]
    # The learner joined rows with the restarted agent's pieces after it came back, and trained on them.
    assert final["learner/gradient_steps"] > steps_at_restart
    assert final["learner/joint_rows"] > [r["learner/joint_rows"] for r in learner if r["t"] <= back_at][-1]
    assert final["learner/messages_refused"] == 0
    # The new incarnation of agent_1 (its counters start again) got the learner's newer parameters.
    after = [r for r in metrics(run_dir, "agent_1") if "ctde/params_updates" in r and r["t"] > back_at]
    assert after and after[-1]["ctde/params_updates"] >= 2
    assert after[-1]["ctde/params_gradient_step"] > steps_at_restart


@pytest.mark.long
def test_the_learner_node_killed_mid_run_is_restarted_by_policy_restores_its_checkpoint_and_trains_on(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_qmix.yaml", "--run-dir", str(run_dir), *COMMON,
                          "--set", "faults.restart={policy: on-failure, backoff_s: 0.1}")
    try:
        # Killed once it has trained past a checkpoint (every 50 env steps, ~65 gradient steps
        # each), whatever the machine's load: a crash, restarted by the policy.
        pid = launched_pids(wait_for_event(run_dir, "started", process, timeout_s=120))["learner"]
        deadline = time.monotonic() + 120
        while not any(r.get("learner/gradient_steps", 0) >= 150 for r in metrics(run_dir, "learner")):
            assert time.monotonic() < deadline and process.poll() is None, "the learner never reached 150 gradient steps"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except BaseException:
        process.kill()
        raise
    events = finish(process, run_dir, "learner")
    assert [e["expected"] for e in events if e["event"] == "exited" and e["code"] == -9] == [False]  # a crash, not a fault
    log = (run_dir / "nodes" / "learner" / "log").read_text()
    found = re.search(r"restored the qmix learner: gradient step (\d+), env step (\d+), (\d+) joint rows in replay", log)
    assert found, log[-3000:]
    restored_step, restored_rows = int(found.group(1)), int(found.group(3))
    assert restored_step > 0 and restored_rows > 0
    records = metrics(run_dir, "learner")
    restore_index = next(i for i, r in enumerate(records) if "learner/restored_gradient_step" in r)
    assert records[restore_index]["learner/restored_gradient_step"] == restored_step
    # The gradient step counter goes on from the checkpoint: never below it, and well past it.
    after = [r["learner/gradient_steps"] for r in records[restore_index + 1 :] if "learner/gradient_steps" in r]
    assert after and min(after) >= restored_step and after[-1] > restored_step
    # Every agent got parameters the restarted learner trained (newer than its checkpoint).
    back_at = next(e["t"] for e in events if e["event"] == "rejoined")
    for agent in ("agent_0", "agent_1", "agent_2"):
        counters = [r for r in metrics(run_dir, agent) if "ctde/params_gradient_step" in r and r["t"] > back_at]
        assert counters and counters[-1]["ctde/params_gradient_step"] > restored_step, agent


@pytest.mark.long
def test_a_centralized_run_goes_on_across_an_env_server_restart(tmp_path):
    """The env server restarted at step 80: the agents rejoin it, and the learner node joins every
    row they sent before and after (none left pending or evicted)."""
    run_dir = tmp_path / "run"
    events = run_restarting_the_env_server(run_dir, "configs/tiny_qmix.yaml", 80, "run.steps=200", timeout_s=200)
    assert any(e["event"] == "env_server_resumed" for e in events)
    final = [r for r in metrics(run_dir, "learner") if "learner/joint_rows" in r][-1]
    sent = {agent: [r for r in metrics(run_dir, agent) if "ctde/rows_sent" in r][-1]["ctde/rows_sent"] for agent in ("agent_0", "agent_1", "agent_2")}
    assert len(set(sent.values())) == 1 and final["learner/joint_rows"] == sent["agent_0"] >= 390, (sent, final)
    assert final["learner/rows_evicted"] == 0 and final["learner/pending_keys"] == 0 and final["learner/gradient_steps"] > 0
