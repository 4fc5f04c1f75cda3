"""The host's update gate (agent_node/update_gate.py): at most `tokens` holders, a release wakes a
waiter, a killed holder's token comes back, a wait is bounded, and the config's settings. The node's
side (a waiting node keeps answering messages) is tested in tests/unit/test_node_update_gate.py."""

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
from agent_node.update_gate import (
    HOLD_LIMIT_STEPS,
    WAIT_LIMIT_S,
    UpdateGate,
    cores_of_this_host,
    gate_directory,
    open_update_gate,
)


def test_no_more_than_the_tokens_hold_at_once_and_a_release_frees_one(tmp_path):
    first, second, third = (UpdateGate(tmp_path, tokens=2) for _ in range(3))
    assert first.take_turn() and second.take_turn()
    assert first.take_turn(), "a turn already held goes on"
    assert not third.take_turn() and third.waiting and not third.held
    second.release()
    assert third.take_turn() and third.held and not third.waiting and not second.held
    assert third.metrics()["update_gate/acquired"] == 1.0 and third.metrics()["update_gate/waited"] == 1.0
    for gate in (first, second, third):
        gate.close()


def test_a_wait_is_given_up_after_the_limit_and_counted(tmp_path):
    now = [0.0]
    holder, waiter = UpdateGate(tmp_path, tokens=1), UpdateGate(tmp_path, tokens=1, clock=lambda: now[0])
    assert holder.take_turn()
    assert not waiter.take_turn()
    now[0] = WAIT_LIMIT_S / 2
    assert not waiter.take_turn()
    now[0] = WAIT_LIMIT_S
    assert waiter.take_turn() and not waiter.held, "it updates without a token rather than wait on"
    assert waiter.metrics() == {"update_gate/acquired": 0.0, "update_gate/waited": 1.0,
                                "update_gate/wait_s": WAIT_LIMIT_S, "update_gate/timeouts": 1.0}
    assert not waiter.take_turn() and waiter.waiting, "the next turn queues again"
    holder.close()
    waiter.close()


def test_a_release_wakes_a_waiter_polling_the_pipe(tmp_path):
    holder, waiter = UpdateGate(tmp_path, tokens=1), UpdateGate(tmp_path, tokens=1)
    assert holder.take_turn() and not waiter.take_turn()
    assert not select.select([waiter.wake_fd], [], [], 0.1)[0], "nothing to wake it while the token is held"
    holder.release()
    assert select.select([waiter.wake_fd], [], [], 5)[0]
    assert waiter.take_turn() and waiter.held
    assert not select.select([waiter.wake_fd], [], [], 0)[0], "the waiter emptied the pipe"
    holder.close()
    waiter.close()


def test_acquire_blocks_until_a_release(tmp_path):
    holder, waiter = UpdateGate(tmp_path, tokens=1), UpdateGate(tmp_path, tokens=1)
    assert holder.take_turn()
    result = {}
    thread = threading.Thread(target=lambda: result.update(got=waiter.acquire(10.0)))
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive(), "the waiter waits while the only token is held"
    holder.release()
    thread.join(timeout=5)
    assert result == {"got": True} and waiter.held and waiter.timeouts == 0
    assert not holder.acquire(0.05) and holder.timeouts == 1
    holder.close()
    waiter.close()


def test_releasing_without_a_token_stops_a_wait(tmp_path):
    holder, waiter = UpdateGate(tmp_path, tokens=1), UpdateGate(tmp_path, tokens=1)
    assert holder.take_turn() and not waiter.take_turn()
    waiter.release()
    assert not waiter.waiting and not waiter.held
    holder.close()
    waiter.close()


HOLD_FOREVER = """
import sys, time
from pathlib import Path
from agent_node.update_gate import UpdateGate
gate = UpdateGate(Path(sys.argv[1]), tokens=1)
assert gate.take_turn() and gate.held
print("held", flush=True)
time.sleep(600)
"""


def test_a_token_held_by_a_killed_process_comes_back(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLD_FOREVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        gate = UpdateGate(tmp_path, tokens=1)
        assert not gate.take_turn()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert gate.acquire(5.0), "the kernel dropped the dead holder's lock; the next look finds it free"
        gate.close()
    finally:
        if child.poll() is None:
            child.kill()


def test_a_holder_gives_the_token_back_after_its_hold_limit(tmp_path):
    gate = UpdateGate(tmp_path, tokens=1)
    assert gate.take_turn()
    assert not gate.counted(HOLD_LIMIT_STEPS - 1)
    assert gate.counted(1), "a learner that always owes must queue again"
    gate.release()
    assert gate.steps_since_acquire == 0
    gate.close()


def test_the_setting_chooses_the_tokens(tmp_path):
    assert open_update_gate("off", tmp_path) is None
    cores = open_update_gate("cores", tmp_path)
    assert cores.tokens == cores_of_this_host() >= 1
    three = open_update_gate(3, tmp_path / "other")
    assert three.tokens == 3
    assert sorted(p.name for p in gate_directory(tmp_path / "other").iterdir()) == ["token-0", "token-1", "token-2", "wake"]
    assert oct(gate_directory(tmp_path).stat().st_mode & 0o777) == "0o700"
    cores.close()
    three.close()


@pytest.mark.parametrize("bad", [0, -1, "on", 1.5])
def test_the_config_refuses_a_gate_it_cannot_build(bad):
    with pytest.raises(ValidationError, match="update_gate"):
        AgentsConfig(count=2, learner={"kind": "dqn"}, update_gate=bad)
