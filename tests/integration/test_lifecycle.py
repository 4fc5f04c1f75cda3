"""Lifecycle of a run on real processes: the orchestrator's death, `down` without an
orchestrator, Ctrl-C during start-up, a paused node, exit times; and the fork server itself.

Every test uses configs/tiny_ring.yaml (env server + 3 DQN agents) with a budget too long to
finish, so the run is stopped by what the test does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.launcher import NODE_PID_FILENAME, process_start_time
from tests.conftest import REPO
from tests.integration.test_orchestrate import (
    assert_all_reaped,
    finished_ok,
    launched_pids,
    node_metrics,
    orchestrate,
    read_events,
    run_to_its_end,
    wait_for_event,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LONG = ("--set", "run.steps=1000000")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until_gone(pids: dict[str, int], timeout_s: float) -> float:
    """Seconds until none of `pids` runs; an AssertionError naming the survivors otherwise."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not any(alive(pid) for pid in pids.values()):
            return time.monotonic() - started
        time.sleep(0.05)
    survivors = {node: pid for node, pid in pids.items() if alive(pid)}
    raise AssertionError(f"still running after {timeout_s} s: {survivors}")


def cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


@pytest.fixture
def kill_leftovers():
    """Whatever a test leaves running (pid, start time) is killed at teardown."""
    leftovers: list[int] = []
    yield leftovers
    for pid in leftovers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_nodes_stop_by_themselves_when_the_orchestrator_is_killed(tmp_path, kill_leftovers):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), *LONG)
    events = wait_for_event(run_dir, "started", process)
    pids = launched_pids(events)
    kill_leftovers.extend(pids.values())
    process.kill()  # kill -9: no shutdown, no reaping
    process.communicate(timeout=30)
    killed_at = time.monotonic()
    wait_until_gone(pids, timeout_s=30)
    for node in pids:
        log = (run_dir / "nodes" / node / "log").read_text()
        assert "the orchestrator" in log and "is gone; stopping" in log, f"{node} log:\n{log[-2000:]}"
    # Noticed within a second (the watch looks every 0.5 s), well inside the 5 s goal.
    assert time.monotonic() - killed_at < 30
    agent_log = (run_dir / "nodes" / "agent_0" / "log").read_text()
    assert "-> draining" in agent_log, "a clean stop, not a crash"
    zygote = (run_dir / "zygote.pid").read_text().split()[0]
    assert not alive(int(zygote)), "the zygote exits when its orchestrator's socket closes"


def test_down_stops_what_a_dead_orchestrator_left_running(tmp_path, kill_leftovers):
    """`down` works from the pid files alone: stand-in nodes that ignore nothing but signals."""
    run_dir = tmp_path / "run"
    assert cli("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--dry-run").returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run_dir / "orchestrator.pid").write_text(str(dead.pid))
    stand_ins = {}
    for node in ("env", "agent_0", "agent_1"):
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        kill_leftovers.append(child.pid)
        (run_dir / "nodes" / node / NODE_PID_FILENAME).write_text(f"{child.pid} {process_start_time(child.pid)}\n")
        stand_ins[node] = child
    # A pid file whose process is gone (a recycled pid would have another start time): ignored.
    (run_dir / "nodes" / "agent_2" / NODE_PID_FILENAME).write_text(f"{dead.pid} 1\n")

    status = cli("status", str(run_dir))
    assert "still run" in status.stdout and "agent_1" in status.stdout, status.stdout

    result = cli("down", str(run_dir), "--wait", "10")
    assert result.returncode == 0, result.stderr
    assert "is gone; stopping what it left running" in result.stdout
    assert "agent_2" not in result.stdout
    for node, child in stand_ins.items():
        assert child.wait(timeout=10) == -signal.SIGTERM, node
    assert "ended" in cli("status", str(run_dir)).stdout


def interrupt_and_expect_no_child_after_5_s(process, run_dir: Path, kill_leftovers: list[int]) -> None:
    """Ctrl-C `orchestrate up` now: it exits 130 within 5 s (+1 s of slack), every node it
    launched has exited (and is recorded so) within 5 s of the interrupt, and all are reaped."""
    process.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=60)
    finally:  # (if it never stops, its nodes must not run on after the test: the run is long)
        kill_leftovers.extend(launched_pids(read_events(run_dir)).values())
        if process.poll() is None:
            process.kill()
    events = read_events(run_dir)
    pids = launched_pids(events)
    kill_leftovers.extend(pids.values())
    wait_until_gone(pids, timeout_s=max(0.0, 5.0 - (time.monotonic() - interrupted_at)) + 0.01)
    assert process.returncode == 130, stderr.decode()[-3000:]
    assert time.monotonic() - interrupted_at < 5.0 + 1.0, "orchestrate up itself returned late"
    assert {e["node"] for e in events if e["event"] == "exited"} == set(pids)
    assert_all_reaped(pids)


def test_ctrl_c_two_seconds_after_up_leaves_no_child_after_5_s(tmp_path, kill_leftovers):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), *LONG)
    time.sleep(2.0)  # the point of the test: an interrupt at an arbitrary moment of start-up
    interrupt_and_expect_no_child_after_5_s(process, run_dir, kill_leftovers)


@pytest.mark.parametrize("moment", ["launched", "registered"])
def test_ctrl_c_while_nodes_start_leaves_no_child_after_5_s(tmp_path, kill_leftovers, moment):
    """The hard moments: nodes forked but not registered, or registered and waiting on each other."""
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), *LONG)
    deadline = time.monotonic() + 90
    while not any(e["event"] == moment for e in read_events(run_dir)):
        assert process.poll() is None and time.monotonic() < deadline, f"no {moment!r} event"
        time.sleep(0.01)
    interrupt_and_expect_no_child_after_5_s(process, run_dir, kill_leftovers)


@contextmanager
def tiny_ring_started(run_dir: Path, kill_leftovers: list[int], *overrides: str):
    """`orchestrate up` of the tiny ring for long (LONG); yields the process and the nodes' pids
    once every node has started, and kills the orchestrator if it is still running after."""
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), *LONG, *overrides)
    try:
        pids = launched_pids(wait_for_event(run_dir, "started", process))
        kill_leftovers.extend(pids.values())
        yield process, pids
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def neighbours_last_seen(log_text: str) -> dict[str, str]:
    """Each neighbour's last membership state ("up" / "down") an agent's log says."""
    return {m.group(1): m.group(2) for m in re.finditer(r"neighbour (\S+) is (up|down)", log_text)}


# zmq heartbeats shorter than the ~3 s a pause takes to be noticed: the neighbours' links to the
# paused agent drop and reconnect while it is stopped (see `Hub.connect_dealer`).
SHORT_ZMQ_HEARTBEATS = ("--set", "network.zmq_heartbeat_ivl_s=0.2", "--set", "network.zmq_heartbeat_timeout_s=1.0")
MEMBERSHIP_TIMEOUT_S = 5.0  # tiny_ring's (the default)


# Long (about 17 s): it waits out a membership timeout twice.
@pytest.mark.long
def test_a_paused_node_is_detected_and_shown_and_resumes_hearing_its_neighbours(tmp_path, kill_leftovers):
    run_dir = tmp_path / "run"
    log_path = run_dir / "nodes" / "agent_1" / "log"
    with tiny_ring_started(run_dir, kill_leftovers, *SHORT_ZMQ_HEARTBEATS) as (process, pids):
        os.kill(pids["agent_1"], signal.SIGSTOP)
        events = wait_for_event(run_dir, "paused", process, timeout_s=30)
        paused = [e for e in events if e["event"] == "paused"]
        assert [e["node"] for e in paused] == ["agent_1"] and paused[0]["process_state"] == "T"
        status = cli("status", str(run_dir)).stdout
        row = next(line for line in status.splitlines() if line.startswith("agent_1"))
        assert "paused" in row, status
        os.kill(pids["agent_1"], signal.SIGCONT)
        events = wait_for_event(run_dir, "resumed", process, timeout_s=30)
        assert [e for e in events if e["event"] == "resumed"][0]["node"] == "agent_1"
        # The resumed agent goes on hearing both neighbours: what its links buffered during the
        # stop arrives at once, so only a membership timeout later does a lost link show, as a
        # neighbour declared down and not up again.
        time.sleep(MEMBERSHIP_TIMEOUT_S + 2.0)
        log_text = log_path.read_text()
        assert neighbours_last_seen(log_text) == {"agent_0": "up", "agent_2": "up"}, log_text[-3000:]
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 130
    assert_all_reaped(pids)


def test_exited_event_is_stamped_when_the_node_died(tmp_path, kill_leftovers):
    run_dir = tmp_path / "run"
    with tiny_ring_started(run_dir, kill_leftovers) as (process, pids):
        killed_at = time.time()
        os.kill(pids["agent_1"], signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == 1
    events = read_events(run_dir)
    died = next(e for e in events if e["event"] == "exited" and e["node"] == "agent_1")
    shutdown = next(e for e in events if e["event"] == "shutdown")
    # Ordering, not a time window (a loaded CI machine can take any time to notice): the stamp
    # falls after the kill and before the shutdown the death caused, so it is not the reap time.
    assert killed_at <= died["t"], (died["t"] - killed_at)
    assert died["t"] <= shutdown["t"], "stamped when it died, before the shutdown it caused"


# spawn (~15 s: every node imports torch afresh) runs with the long scenarios; fork_server is the default
@pytest.mark.parametrize("method", ["fork_server", pytest.param("spawn", marks=pytest.mark.long)])
def test_both_start_methods_run_to_completion(tmp_path, method):
    run_dir = tmp_path / "run"
    events = run_to_its_end(run_dir, "configs/tiny_ring.yaml", f"launch.start_method={method}")
    launched = [e for e in events if e["event"] == "launched"]
    assert {e["start_method"] for e in launched} == {method}
    assert (run_dir / "zygote.pid").exists() == (method == "fork_server")
    # Each node is the orchestrator's own child whichever way it started: it registered with its pid.
    registered = {e["node"]: e["pid"] for e in events if e["event"] == "registered"}
    assert registered == {e["node"]: e["pid"] for e in launched}


@pytest.mark.long
def test_scheduled_kill_pause_and_resume_are_executed_and_logged(tmp_path):
    from orchestrator.config import load_config
    from orchestrator.faults import plan_faults

    kill = "{at_s: 1.0, kind: kill, random: {count: 1}}"
    drawn = plan_faults(load_config(REPO / "configs/tiny_ring.yaml", [f"faults.schedule=[{kill}]"]))[0].targets
    paused = next(agent for agent in ("agent_0", "agent_1", "agent_2") if agent not in drawn)
    schedule = f"[{{at_s: 0.5, kind: pause, nodes: [{paused}]}}, {{at_s: 6.5, kind: resume, nodes: [{paused}]}}, {kill}]"
    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", "run.steps=400", "--set", f"faults.schedule={schedule}"
    )
    _, stderr = process.communicate(timeout=170)
    events = read_events(run_dir)
    faults = [e for e in events if e["event"] == "fault"]
    assert [(f["kind"], f["at_s"]) for f in faults] == [("pause", 0.5), ("kill", 1.0), ("resume", 6.5)]
    started = next(e["t"] for e in events if e["event"] == "started")
    for fault in faults:
        assert fault["t"] - started >= fault["at_s"], "never early"
    assert list(faults[1]["nodes"]) == list(drawn) and faults[1]["chosen_by"] == "random"
    died = next(e for e in events if e["event"] == "exited" and e["node"] == drawn[0])
    assert died["code"] == -signal.SIGKILL and died["expected"] and died["scheduled_kill"]
    # SIGSTOP for 6 s: detected by the missing status reports, then seen again.
    assert [e["node"] for e in events if e["event"] == "paused"] == [paused]
    assert [e["node"] for e in events if e["event"] == "resumed"] == [paused]
    # A scheduled kill is not a failure: the others finish the budget.
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert [e for e in events if e["event"] == "run_complete"]
    assert_all_reaped(launched_pids(events))


@pytest.mark.long
@pytest.mark.timeout(330)
def test_a_killed_agent_is_restarted_by_policy_and_steps_again_from_its_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # The run must outlast both faults: 600 steps took 2.6 s on an idle 2-core machine, 2000 take
    # ~9 s idle and up to ~100 s at load 25.
    steps = 2000
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", f"run.steps={steps}",
        "--set", "faults.schedule=[{at_s: 2, kind: kill, nodes: [agent_1]}, {at_s: 3, kind: restart, nodes: [agent_2]}]",
        "--set", "faults.restart={policy: on-failure, max_restarts: 2, backoff_s: 0.5}",
    )  # fmt: skip
    stderr = finished_ok(process, timeout_s=300)
    events = read_events(run_dir)
    for agent, requested in (("agent_1", False), ("agent_2", True)):
        mine = [e for e in events if e["node"] == agent]
        kinds = [e["event"] for e in mine]
        assert kinds.count("launched") == 1 and kinds.count("restarted") == 1, kinds
        scheduled = next(e for e in mine if e["event"] == "restart_scheduled")
        assert scheduled["requested"] is requested and scheduled["in_s"] == (0.0 if requested else 0.5)
        rejoined = next(e for e in mine if e["event"] == "rejoined")
        log = (run_dir / "nodes" / agent / "log").read_text()
        assert "restored checkpoint of step" in log and "replay transitions" in log, log[-2000:]
        # Back and stepping: metric rows written after it rejoined, up to the end of the budget.
        rows = node_metrics(run_dir, agent)
        after = [r for r in rows if r["t"] > rejoined["t"]]
        assert after and after[-1]["step"] == steps
        assert after[0]["t"] - rejoined["t"] < 5.0, "stepping again within 5 s of rejoining"
        assert [e["code"] for e in mine if e["event"] == "exited"][-1] == 0
    assert_all_reaped(launched_pids(events) | {e["node"]: e["pid"] for e in events if e["event"] == "restarted"})
