"""agent_node/node_handlers.py's handlers on a stand-in node (no sockets, no processes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from agent_node.env_client import EnvClient
from agent_node.node_handlers import on_env_server_restarting
from protocols.codec import messages as m


def test_an_env_server_restart_forgets_the_newest_step_the_old_server_sent():
    # The restarted server resumes from its own saved step, which may be earlier than the last
    # step the old one sent: remembering that step would leave the new server's observations
    # unanswered, as if a newer one had overtaken them.
    closed = []
    client = EnvClient("agent_0", agent_indices=[0])
    client.note_newest([observation(120), observation(3, evaluation=True)])
    assert client.stepped_past(observation(119)) and client.stepped_past(observation(2, evaluation=True))
    node = SimpleNamespace(
        env_client=client, env=object(), hub=SimpleNamespace(close_channel=closed.append),
        capabilities=[], episodes=SimpleNamespace(cut=lambda: []), metrics=SimpleNamespace(write=lambda *a: None),
        reproducibility_broken=lambda *a: None, step=120, waiting_for_updates=None,
        dead_server_observation=None, evaluating=False, env_down_since=None,
    )
    on_env_server_restarting(node, "orchestrator", m.EnvServerRestarting(restarts=0), now=5.0)
    assert not client.stepped_past(observation(100)) and not client.stepped_past(observation(0, evaluation=True))
    assert node.env is None and len(closed) == 1 and node.env_client.restarting


def observation(step: int, evaluation: bool = False) -> m.EnvObservation:
    return m.EnvObservation(step=step, observations={}, rewards={}, terminated={}, truncated={}, active={},
                            final_observations={}, episode_start=np.zeros(1, dtype=bool), evaluation=evaluation)


def test_only_the_newest_observation_of_each_clock_is_answered():
    # Behind a realtime clock an agent receives several observations at once; the older ones of
    # each clock were stepped past. Training again ends an evaluation: the next counts from 0.
    client = EnvClient("agent_0", agent_indices=[0])
    client.note_newest([observation(7), observation(8), observation(0, evaluation=True), observation(1, evaluation=True)])
    assert [client.stepped_past(observation(s)) for s in (7, 8)] == [True, False]
    assert [client.stepped_past(observation(s, evaluation=True)) for s in (0, 1)] == [True, False]
    client.note_newest([observation(9)])
    assert not client.stepped_past(observation(0, evaluation=True))
