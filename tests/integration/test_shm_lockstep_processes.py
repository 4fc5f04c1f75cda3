"""The shared-memory lockstep path on real processes (protocols/net/shm_lockstep.py): nothing is left
in /dev/shm after a kill -9 of the server or of an agent, a client that falls behind still gets
every observation in order, and `env.transport: shm` refuses what it cannot serve, naming why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from protocols.codec import messages as m
from protocols.net.shm_lockstep import SHM_DIR
from tests.conftest import REPO, read_line_with_deadline
from tests.integration.test_env_server import Client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180),
              pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this machine")]

KWARGS = json.dumps({"N": 2, "max_cycles": 25})


def segments_of(pid: int) -> list[str]:
    """The /dev/shm names of the segments made by the standalone server with this pid."""
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(f"parley-standalone-{pid}-"))


def start_server(spawn, tmp_path, *extra: str) -> tuple[subprocess.Popen, str]:
    log = open(tmp_path / "server.log", "wb")
    server = spawn([sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3", "--kwargs", KWARGS,
                    "--bind", f"ipc://{tmp_path}/env.sock", "--step-deadline", "0.5", *extra],
                   stdout=subprocess.PIPE, stderr=log)
    line = read_line_with_deadline(server, 60)
    assert line.startswith("READY "), line
    return server, line.split(" ", 1)[1]


def start_clients(spawn, endpoint: str, count: int = 2) -> list[subprocess.Popen]:
    return [spawn([sys.executable, str(REPO / "bench" / "random_client.py"), endpoint, str(i), str(i)],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(count)]


def wait_for_log(path, text: str, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while path.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times within {timeout_s} s:\n{path.read_text()[-2000:]}"
        time.sleep(0.1)


def test_a_kill_9_of_the_env_server_leaves_no_segment(spawn, tmp_path):
    server, endpoint = start_server(spawn, tmp_path, "--transport", "shm", "--max-steps", "1000000")
    clients = start_clients(spawn, endpoint)
    wait_for_log(tmp_path / "server.log", "lockstep through shared memory", 2)
    wait_for_log(tmp_path / "server.log", "joined", 2)
    time.sleep(1.0)  # stepping: both clients mapped their segments (they unlink the names before env.reset)
    assert all(client.poll() is None for client in clients), "the clients are stepping"
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    assert segments_of(server.pid) == []
    for client in clients:
        client.kill()
        client.wait(timeout=10)
    assert segments_of(server.pid) == []


def test_a_kill_9_of_an_agent_leaves_no_segment_and_the_lockstep_steps_on_without_it(spawn, tmp_path):
    # A budget the pair cannot finish before the kill, even idle (~1,000-2,000 steps/s at N = 2).
    server, endpoint = start_server(spawn, tmp_path, "--transport", "shm", "--max-steps", "6000")
    clients = start_clients(spawn, endpoint)
    wait_for_log(tmp_path / "server.log", "lockstep through shared memory", 2)
    time.sleep(0.5)
    os.kill(clients[1].pid, signal.SIGKILL)
    clients[1].wait(timeout=10)
    assert segments_of(server.pid) == []
    out, err = clients[0].communicate(timeout=150)  # the survivor plays to the end of the budget
    assert clients[0].returncode == 0, err.decode()[-2000:]
    answered, defaulted, *_rest, path = out.decode().split("TIMING ")[1].split()
    assert path == "shm" and int(defaulted) > 0, "agent_1's action was defaulted once it was gone"
    assert segments_of(server.pid) == []


def test_a_client_that_falls_behind_gets_every_observation_in_order(env_server, hub):
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", KWARGS, "--step-deadline", "0.2",
                          "--transport", "shm")
    fast, slow = Client(hub, endpoint, "agent_0", 0, "shm"), Client(hub, endpoint, "agent_1", 1, "shm")
    for client in (fast, slow):
        client.channel.send(m.EnvReset())
    assert fast.expect(m.EnvObservation).step == 0
    for step in range(4):  # the slow client reads nothing meanwhile: the server defaults its action
        fast.act(step)
        assert fast.expect(m.EnvObservation).step == step + 1
    steps = [slow.expect(m.EnvObservation) for _ in range(5)]
    assert [o.step for o in steps] == [0, 1, 2, 3, 4], "the first through its slot, the rest by zmq, in order"
    assert all(o.missing == ["agent_1"] for o in steps[1:])
    # Steps 1-3 were sent while step 0 sat unread in the slot: by zmq. Step 4 too, unless the
    # slow client had read the others before the server came to it (it may: a broadcast sends one
    # client after the other, and order is kept either way).
    assert slow.channel.shm_link().received_by_shm in (1, 2)
    # Back in step: its actions count again (once one arrives before the step: the absent client
    # is not waited for), and its observations come through shared memory again.
    for step in range(4, 10):
        slow.act(step)
        time.sleep(0.05)
        fast.act(step)
        fast.expect(m.EnvObservation)
        if slow.expect(m.EnvObservation).missing == []:
            break
    else:
        raise AssertionError("the slow client's actions never counted again")
    assert slow.channel.shm_link().received_by_shm >= 2 and slow.channel.shm_link().sent_by_shm >= 1


def test_transport_shm_refuses_a_client_it_cannot_serve_and_auto_falls_back(env_server, hub):
    shm = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", KWARGS, "--transport", "shm")
    channel = hub.connect_dealer(shm, name="x", identity="x")
    for join, why in [
        (m.EnvJoin(client_id="x", agent_indices=[0]), "did not ask for packed bodies"),
        (m.EnvJoin(client_id="x", agent_indices=[0], packed=True, shm_host="another:1:2"), "on another host"),
        (m.EnvJoin(client_id="x", agent_indices=[0], packed=True, shm_host="another:1:2", global_view=True), "global view"),
    ]:
        channel.send(join)
        reply = channel.wait_for(object, timeout_s=20)
        assert isinstance(reply, m.ErrorReply) and reply.code == "shm_unavailable" and why in reply.message, reply
    auto = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", KWARGS)
    channel = hub.connect_dealer(auto, name="y", identity="y")
    channel.send(m.EnvJoin(client_id="y", agent_indices=[0], packed=True, shm_host="another:1:2"))
    welcome = channel.wait_for(object, timeout_s=20)
    assert isinstance(welcome, m.EnvWelcome) and welcome.packed and welcome.shm_segment == ""


def test_transport_shm_with_forwarded_infos_does_not_start(spawn):
    server = spawn([sys.executable, "-m", "env_server", "--env", "goal_lines_v0", "--transport", "shm",
                    "--forward-infos", "achieved_goals"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = server.communicate(timeout=60)
    assert server.returncode == 2
    assert "env.transport: shm cannot work here: infos are forwarded" in err.decode() and "Traceback" not in err.decode()


def test_observations_too_large_for_a_packed_frame_go_through_shared_memory_and_msgpack(env_server, hub):
    # 160 copies of a 12-float observation: 18,016 bytes a body, over the 16,128 a packed zmq
    # frame may carry. Through the segment they pass whole; the ones a slow client leaves the
    # slot full for go as msgpack bodies, in order.
    endpoint = env_server("--env", "mpe2.simple_spread_v3", "--kwargs", KWARGS, "--copies", "160",
                          "--step-deadline", "0.3", "--transport", "shm")
    fast, slow = Client(hub, endpoint, "agent_0", 0, "shm"), Client(hub, endpoint, "agent_1", 1, "shm")
    assert fast.welcome.packed and fast.welcome.shm_segment and fast.welcome.shm_capacities[0] > 16_128
    for client in (fast, slow):
        client.channel.send(m.EnvReset())
    first = fast.expect(m.EnvObservation)
    assert first.step == 0 and first.observations["agent_0"].shape == (160, 12)
    for step in range(2):  # the slow client reads nothing meanwhile
        fast.act(step)
        assert fast.expect(m.EnvObservation).step == step + 1
    assert fast.channel.shm_link().received_by_shm == 3, "the fast client's came through the segment"
    steps = [slow.expect(m.EnvObservation) for _ in range(3)]
    assert [o.step for o in steps] == [0, 1, 2] and all(o.observations["agent_1"].shape == (160, 12) for o in steps)
    assert slow.channel.shm_link().received_by_shm in (1, 2), "step 0 through the segment, what followed by zmq"
