"""agent_node/node_handlers.py's handlers on a stand-in node (no sockets, no processes)."""

from __future__ import annotations

from types import SimpleNamespace

from agent_node.env_client import EnvClient
from agent_node.node_handlers import on_env_server_restarting
from protocols.codec import messages as m


def test_an_env_server_restart_forgets_the_newest_step_the_old_server_sent():
    # The restarted server resumes from its own saved step, which may be earlier than the last
    # step the old one sent: remembering that step would leave the new server's observations
    # unanswered, as if a newer one had overtaken them.
    closed = []
    node = SimpleNamespace(
        env_client=EnvClient("agent_0", agent_indices=[0]), env=object(), hub=SimpleNamespace(close_channel=closed.append),
        capabilities=[], episodes=SimpleNamespace(cut=lambda: []), metrics=SimpleNamespace(write=lambda *a: None),
        reproducibility_broken=lambda *a: None, step=120, waiting_for_updates=None, newest_training_step=120,
        dead_server_observation=None, evaluating=False, env_down_since=None,
    )
    on_env_server_restarting(node, "orchestrator", m.EnvServerRestarting(restarts=0), now=5.0)
    assert node.newest_training_step == -1
    assert node.env is None and len(closed) == 1 and node.env_client.restarting
