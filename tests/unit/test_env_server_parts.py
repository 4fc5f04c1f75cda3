"""The env server's core and its parts (env_server/part.py): one dispatch table for every
message, whoever handles it and however it came (zmq or a shared-memory slot)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agent_node.env_client import EnvClient, use_lockstep_transport
from env_server.part import ServerPart, dispatch_table
from env_server.registry import make_env
from env_server.reporting import StepWallTime
from env_server.server import EnvServer, LockstepRules
from env_server.vector import VectorizedParallelEnv
from protocols.codec import messages as m


def test_a_message_type_claimed_twice_is_an_error_naming_both():
    class Goals(ServerPart):
        name = "goals"
        handles = (m.GoalReady,)

    class Other(ServerPart):
        name = "other"
        handles = (m.GoalReady,)

    class Actions(ServerPart):
        name = "actions"
        handles = (m.EnvAction,)

    core = {m.EnvAction: lambda identity, envelope: None}
    table = dispatch_table([Goals()], core)
    assert set(table) == {m.EnvAction, m.GoalReady}
    with pytest.raises(ValueError, match="GoalReady is handled by part 'goals' and by part 'other'"):
        dispatch_table([Goals(), Other()], core)
    with pytest.raises(ValueError, match="EnvAction is handled by the core and by part 'actions'"):
        dispatch_table([Actions()], core)


def start_server(hubs, tmp_path, transport: str = "auto") -> EnvServer:
    build = lambda: make_env("mpe2.simple_spread_v3", {"N": 2, "max_cycles": 5}, construction_seed=0)
    return EnvServer(VectorizedParallelEnv(build, 1, autoreset=True), hub=hubs("env"), env_name="spread",
                     bind_address=f"ipc://{tmp_path}/env.sock", seed=0, eval_seed=1, default_action_seed=2,
                     rules=LockstepRules(max_steps=None, step_deadline_s=5.0, join_deadline_s=5.0, transport=transport))


def test_the_parts_answer_their_messages_through_the_core_table(hubs, tmp_path):
    server = start_server(hubs, tmp_path)
    try:
        assert server.handlers[m.GoalReady] == server.goals.on_message
        assert server.handlers[m.EnvStateRequest] == server.state.on_message
        assert server.handlers[m.EnvAction] == server.on_action
        # Only the parts with deadlines are asked for them on every poll.
        assert server.timed_parts == [server.pacing, server.goals, server.fault_hold]
    finally:
        server.close()


@pytest.mark.parametrize("transport", ["zmq", "shm"])
def test_an_action_comes_in_through_the_one_dispatch_by_either_path(transport, hubs, tmp_path):
    """An env.action from a shared-memory slot takes the same way in as one by zmq: `handle`,
    then the table's `on_action` (no second entrance from inside the transport)."""
    server = start_server(hubs, tmp_path, transport)
    handled: list[str] = []
    handle = server.handle
    server.handle = lambda envelope: (handled.append(envelope.msg_type), handle(envelope))[1]
    client_hub = hubs("clients")
    channels = [client_hub.connect_dealer(server.endpoint, name=f"c{i}", identity=f"agent_{i}") for i in range(2)]
    shm = transport == "shm"
    clients = [EnvClient(f"agent_{i}", agent_indices=[i], packed=shm, shm=shm) for i in range(2)]

    def receive() -> list:
        answers = []
        for channel in channels:
            deadline = time.monotonic() + 10.0
            while (message := channel.wait_for(object, timeout_s=0.005)) is None:
                assert time.monotonic() < deadline, "no answer from the env server within 10 s"
                server.poll_once(0.005)
            answers.append(message)
        return answers

    try:
        for client, channel in zip(clients, channels):
            channel.send(client.join())
        for client, channel, welcome in zip(clients, channels, receive()):
            client.on_welcome(welcome)
            assert use_lockstep_transport(channel, client) == ("shm" if shm else "zmq msgpack")
        for channel in channels:
            channel.send(m.EnvReset())
        seen = receive()
        before = server.step
        for i, (channel, observation) in enumerate(zip(channels, seen)):
            channel.send(m.EnvAction(step=observation.step, actions={f"agent_{i}": np.zeros(1, np.int64)}))
        seen = receive()
        assert server.step == before + 1 and [o.step for o in seen] == [before + 1] * 2
        assert handled.count("env.action") == 2, handled
        assert server.counters.rejected_requests == 0
        # One training step timed: the wait for both actions, the step, the broadcast.
        timed = server.report.metrics()
        assert timed["lockstep/timed_steps"] == 1.0
        assert all(timed[f"lockstep/{phase}_s"] > 0 for phase in ("waiting", "stepping", "sending")), timed
    finally:
        server.close()


def test_the_steps_wall_time_counts_training_cycles_only():
    """Waiting runs from a training broadcast to the next training step; stepping ends at a
    broadcast in the same step; an evaluation between them (its broadcasts unmarked) is neither."""
    clock = StepWallTime()
    clock.observation_sent(0.0, 0.1)  # the episode's first observation, after a reset
    clock.step_begins(0.5)  # a plain step
    clock.observation_sent(0.8, 0.85)
    clock.step_ends()
    clock.step_begins(1.0)  # a step that begins an evaluation: no broadcast in it
    clock.step_ends()
    clock.observation_sent(5.0, 5.2)  # the held training observation, after the evaluation
    clock.step_begins(5.3)
    clock.observation_sent(5.4, 5.5)
    clock.step_ends()
    assert clock.metrics() == pytest.approx({"lockstep/waiting_s": 0.4 + 0.15 + 0.1, "lockstep/stepping_s": 0.3 + 0.1,
                                             "lockstep/sending_s": 0.1 + 0.05 + 0.2 + 0.1, "lockstep/timed_steps": 3.0})
