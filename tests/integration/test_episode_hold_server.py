"""The episode-start hold through a real env server: who plays is announced (env.episode_start),
the first observation waits for goal.ready from the active agents, or for the hold's deadline."""

from __future__ import annotations

import json
import time

import pytest

from protocols.codec import messages as m
from protocols.net.transport import Hub
from tests.integration.lockstep_paths import LockstepClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KWARGS = json.dumps({"num_landmarks": 3, "max_steps": 3})


def Client(hub: Hub, endpoint: str, index: int, transport: str) -> LockstepClient:
    """A bare agent-side client driving env agent `index` (tests/integration/lockstep_paths.py)."""
    return LockstepClient(hub, endpoint, f"client_{index}", index, transport)


def reset_pair(hub: Hub, endpoint: str, transport: str) -> tuple[LockstepClient, LockstepClient]:
    """Clients driving agents 0 and 1, each having asked for the first reset."""
    pair = Client(hub, endpoint, 0, transport), Client(hub, endpoint, 1, transport)
    for client in pair:
        client.channel.send(m.EnvReset(seed=1))
    return pair


def test_late_goal_ready_releases_the_first_observation_of_each_episode(env_server, hub, lockstep_transport):
    endpoint = env_server("--env", "goal_lines_v0", "--kwargs", KWARGS, "--copies", "2",
                          "--episode-start-hold", "30", "--step-deadline", "30", "--transport", lockstep_transport)
    first, late = reset_pair(hub, endpoint, lockstep_transport)
    for client in (first, late):
        announcement = client.expect(m.EnvEpisodeStart)
        assert announcement.step == 0 and announcement.episode_start.tolist() == [True, True]
        assert {a: rows.tolist() for a, rows in announcement.active.items()} == {"agent_0": [True, True], "agent_1": [True, True]}
        assert announcement.hold_s == 30.0
    first.ready(0)
    # A goal.ready for an agent the client does not drive is refused, and releases nothing.
    first.channel.send(m.GoalReady(step=0, agents=["agent_1"]))
    refusal = first.expect(m.ErrorReply)
    assert refusal.code == "not_your_agent"
    assert late.channel.wait_for(object, timeout_s=1.0) is None, "held while agent_1 negotiates"
    released_at = time.monotonic()
    late.ready(0)
    for client in (first, late):
        observation = client.expect(m.EnvObservation)
        assert observation.step == 0 and observation.episode_start.tolist() == [True, True]
    assert time.monotonic() - released_at < 15, "released by goal.ready, not by the 30 s deadline"

    # goal_lines ends its episodes after max_steps=3: the autoreset's episode is announced and held too.
    for step in range(3):
        for client in (first, late):
            client.act(step)
        if step < 2:
            for client in (first, late):
                assert client.expect(m.EnvObservation).step == step + 1
    for client in (first, late):
        announcement = client.expect(m.EnvEpisodeStart)
        assert announcement.step == 3 and announcement.episode_start.tolist() == [True, True]
    late.ready(3)
    assert first.channel.wait_for(object, timeout_s=1.0) is None
    first.ready(3)
    for client in (first, late):
        observation = client.expect(m.EnvObservation)
        assert observation.step == 3 and observation.episode_start.tolist() == [True, True]


def test_an_agent_that_never_reports_holds_the_start_only_until_the_deadline(env_server, hub, lockstep_transport):
    endpoint = env_server("--env", "goal_lines_v0", "--kwargs", KWARGS, "--episode-start-hold", "1.5",
                          "--step-deadline", "30", "--transport", lockstep_transport)
    ready, silent = reset_pair(hub, endpoint, lockstep_transport)
    for client in (ready, silent):
        client.expect(m.EnvEpisodeStart)
    announced_at = time.monotonic()
    ready.ready(0)
    for client in (ready, silent):
        assert client.expect(m.EnvObservation).step == 0
    # The server's hold began before the announcement reached us, so allow a little slack.
    assert time.monotonic() - announced_at >= 1.2, "held until the deadline: agent_1 never sent goal.ready"
    # The lockstep goes on as usual afterwards.
    for client in (ready, silent):
        client.act(0)
    for client in (ready, silent):
        assert client.expect(m.EnvObservation).step == 1


def test_without_a_hold_nothing_is_announced_and_goal_ready_is_refused(env_server, hub, lockstep_transport):
    endpoint = env_server("--env", "goal_lines_v0", "--kwargs", KWARGS, "--transport", lockstep_transport)
    first, second = reset_pair(hub, endpoint, lockstep_transport)
    for client in (first, second):
        assert client.expect(m.EnvObservation).step == 0
    first.ready(0)
    refusal = first.expect(m.ErrorReply)
    assert refusal.code == "no_episode_hold" and "episode_start_hold_s" in refusal.message


def test_goals_in_goal_ready_are_paid_only_while_their_episode_is_held(env_server, hub, lockstep_transport):
    """`agents.goals.paid_by: env`: goal.ready names the goal; the env server hands it to the env
    (goal_lines' assign_goals) while the start is held, and refuses it once the episode runs."""
    kwargs = json.dumps({"num_landmarks": 3, "max_steps": 3, "view": "own"})
    endpoint = env_server("--env", "goal_lines_v0", "--kwargs", kwargs, "--episode-start-hold", "30",
                          "--step-deadline", "30", "--transport", lockstep_transport)
    first, second = reset_pair(hub, endpoint, lockstep_transport)
    for client in (first, second):
        client.expect(m.EnvEpisodeStart)
    first.ready(0, goals=[3, 4])
    refusal = first.expect(m.ErrorReply)
    assert refusal.code == "bad_goals" and "1 agents and 2 goals" in refusal.message
    first.ready(0, goals=[9])
    assert first.expect(m.ErrorReply).code == "bad_goals", "goal_lines L = 3 has goals 0..5"
    for client in (first, second):
        client.ready(0, goals=[3])
    for client in (first, second):
        assert client.expect(m.EnvObservation).step == 0, "accepted goals release the hold"
    first.ready(0, goals=[3])
    refusal = first.expect(m.ErrorReply)
    assert refusal.code == "late_goals" and "after that episode started" in refusal.message
