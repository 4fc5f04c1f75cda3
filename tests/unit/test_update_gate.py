"""The host's update gate (agent_node/update_gate.py): at most `tokens` turns at once, first come
first served, a release wakes the queue, a killed holder or waiter blocks nobody, a wait is
bounded, and the config's settings. The node's side runs in whole runs: the tiny ring
(tests/integration/test_orchestrate.py) and the reproducibility test with one token
(tests/integration/test_reproducible_runs.py)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
from pydantic import ValidationError

from agent_node.config import AgentsConfig
from agent_node.update_gate import WAIT_LIMIT_S, UpdateGate, cores_of_this_host, gate_directory, open_update_gate


@pytest.fixture
def stand_in_pids():
    """Live processes whose pids stand in for nodes (the queue drops pids that do not exist)."""
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(4)]
    yield [sleeper.pid for sleeper in sleepers]
    for sleeper in sleepers:
        sleeper.kill()
        sleeper.wait()


def gates(directory, pids, tokens, **kwargs):
    return [UpdateGate(directory, tokens, pid=pid, **kwargs) for pid in pids]


def test_no_more_than_the_tokens_hold_at_once_and_the_queue_goes_first_come(tmp_path, stand_in_pids):
    a, b, c, d = gates(tmp_path, stand_in_pids, tokens=2)
    assert a.take_turn() and b.take_turn()
    assert a.take_turn(), "a turn already held goes on"
    assert not c.take_turn() and c.waiting and not c.held
    assert not d.take_turn() and d.waiting
    a.release()
    assert not d.take_turn(), "c asked first: the free token is c's"
    assert c.take_turn() and c.held and not c.waiting
    assert not a.take_turn(), "a queues again, behind d"
    b.release()
    assert not a.take_turn() and d.take_turn()
    assert c.metrics()["update_gate/acquired"] == 1.0 and c.metrics()["update_gate/waited"] == 1.0
    for gate in (a, b, c, d):
        gate.close()


def test_a_node_with_nobody_queued_takes_its_next_turn_at_once(tmp_path, stand_in_pids):
    a, b = gates(tmp_path, stand_in_pids[:2], tokens=1)
    for _ in range(3):
        assert a.take_turn()
        a.release()
    assert a.waited == 0 and a.acquired == 3
    assert not select.select([a.wake_fd], [], [], 0)[0], "a release with nobody queued wakes nobody"
    a.close()
    b.close()


def test_a_release_wakes_a_waiter_polling_the_pipe(tmp_path, stand_in_pids):
    holder, waiter = gates(tmp_path, stand_in_pids[:2], tokens=1)
    assert holder.take_turn() and not waiter.take_turn()
    assert not select.select([waiter.wake_fd], [], [], 0.1)[0], "nothing wakes it while the turn is held"
    holder.release()
    assert select.select([waiter.wake_fd], [], [], 5)[0]
    assert waiter.take_turn() and waiter.held
    assert not select.select([waiter.wake_fd], [], [], 0)[0], "the waiter emptied the pipe"
    holder.close()
    waiter.close()


def test_a_wait_is_given_up_after_the_limit_and_counted(tmp_path, stand_in_pids):
    now = [0.0]
    holder, waiter, third = gates(tmp_path, stand_in_pids[:3], tokens=1, clock=lambda: now[0])
    assert holder.take_turn() and not waiter.take_turn() and not third.take_turn()
    now[0] = WAIT_LIMIT_S / 2
    assert not waiter.take_turn()
    now[0] = WAIT_LIMIT_S
    assert waiter.take_turn() and not waiter.held, "it updates without a turn rather than wait on"
    assert waiter.metrics() == {"update_gate/acquired": 0.0, "update_gate/waited": 1.0,
                                "update_gate/wait_s": WAIT_LIMIT_S, "update_gate/timeouts": 1.0}
    holder.release()
    assert third.take_turn(), "the waiter that gave up left the queue: the next one is first"
    assert not waiter.take_turn() and waiter.waiting, "its next turn queues again"
    for gate in (holder, waiter, third):
        gate.close()


def test_acquire_blocks_until_a_release(tmp_path, stand_in_pids):
    holder, waiter = gates(tmp_path, stand_in_pids[:2], tokens=1)
    assert holder.take_turn()
    result = {}
    thread = threading.Thread(target=lambda: result.update(got=waiter.acquire(10.0)))
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive(), "the waiter waits while the only turn is held"
    holder.release()
    thread.join(timeout=5)
    assert result == {"got": True} and waiter.held and waiter.timeouts == 0
    assert not holder.acquire(0.05) and holder.timeouts == 1 and not holder.waiting
    holder.close()
    waiter.close()


def test_leaving_the_queue_lets_the_next_one_in(tmp_path, stand_in_pids):
    holder, first, second = gates(tmp_path, stand_in_pids[:3], tokens=1)
    assert holder.take_turn() and not first.take_turn() and not second.take_turn()
    first.release()  # nothing owed any more: it leaves the queue without a turn
    assert not first.waiting and not first.held
    holder.release()
    assert second.take_turn()
    for gate in (holder, first, second):
        gate.close()


HOLD_FOREVER = """
import sys, time
from pathlib import Path
from agent_node.update_gate import UpdateGate
gate = UpdateGate(Path(sys.argv[1]), tokens=1)
print("held" if gate.take_turn() and gate.held else "queued", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("killed", ["holder", "waiter"])
def test_a_killed_node_blocks_nobody(tmp_path, stand_in_pids, killed):
    holder = UpdateGate(tmp_path, tokens=1, pid=stand_in_pids[0])
    if killed == "waiter":
        assert holder.take_turn()
    child = subprocess.Popen([sys.executable, "-c", HOLD_FOREVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == ("held" if killed == "holder" else "queued")
        gate = UpdateGate(tmp_path, tokens=1, pid=stand_in_pids[1])
        assert not gate.take_turn()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        holder.release()
        assert gate.take_turn(), "the dead node's pid was dropped from the queue file"
        gate.close()
    finally:
        if child.poll() is None:
            child.kill()
    holder.close()


def test_a_torn_queue_file_starts_afresh(tmp_path, stand_in_pids):
    gate = UpdateGate(tmp_path, tokens=1, pid=stand_in_pids[0])
    (tmp_path / "queue").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00")  # 5 holders, no pids
    assert gate.take_turn()
    gate.close()


def test_the_setting_chooses_the_tokens(tmp_path):
    assert open_update_gate("off", tmp_path) is None
    cores = open_update_gate("cores", tmp_path)
    assert cores.tokens == cores_of_this_host() >= 1
    three = open_update_gate(3, tmp_path / "other")
    assert three.tokens == 3
    assert sorted(p.name for p in gate_directory(tmp_path / "other").iterdir()) == ["queue", "wake"]
    assert oct(gate_directory(tmp_path).stat().st_mode & 0o777) == "0o700"
    cores.close()
    three.close()


@pytest.mark.parametrize("bad", [0, -1, "on", 1.5])
def test_the_config_refuses_a_gate_it_cannot_build(bad):
    with pytest.raises(ValidationError, match="update_gate"):
        AgentsConfig(count=2, learner={"kind": "dqn"}, update_gate=bad)
