"""The capability interface (agent_node/capability.py): loading by import path, the dispatch
table, and what a capability saves in the node's checkpoint. The built-in capabilities are
driven by real nodes in the integration tests (the main job, goals, CTDE, consensus)."""

from __future__ import annotations

import sys
import types

import gymnasium as gym
import numpy as np
import pytest

from agent_node.algos.config import DQNConfig
from agent_node.algos.dqn import DQNAgent
from agent_node.capability import PEERS, Capability, dispatch_table, load_capabilities, load_entry_point
from agent_node.registry import builtin_descriptions
from agent_node.persistence import NodePersistence, load_checkpoint
from protocols.codec import messages as m
from protocols.engines.flooding import FloodTable


def small_agent(seed: int) -> DQNAgent:
    config = DQNConfig(batch_size=4, buffer_size=50, learning_starts=4, train_every=1, hidden_sizes=(8,))
    return DQNAgent(config, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), gym.spaces.Discrete(3), seed=seed)


class Counter(Capability):
    name = "counter"
    handles = {FloodTable: (PEERS,)}

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


@pytest.fixture
def plugin_module(monkeypatch):
    module = types.ModuleType("a_users_plugin")
    module.build = lambda run, node: Counter()
    module.nothing = lambda run, node: None
    module.not_a_capability = lambda run, node: object()
    monkeypatch.setitem(sys.modules, "a_users_plugin", module)
    return module


def test_capabilities_load_by_import_path_and_a_run_that_does_not_use_one_gets_none(plugin_module):
    loaded = load_capabilities(None, None, ["a_users_plugin:build", "a_users_plugin:nothing"])
    assert [type(capability) for capability in loaded] == [Counter]


@pytest.mark.parametrize("path, error", [
    ("a_users_plugin", "expected the form 'package.module:name'"),
    ("a_users_plugin:missing", "has no attribute 'missing'"),
])
def test_a_bad_entry_point_is_named(plugin_module, path, error):
    with pytest.raises(ValueError, match=error):
        load_entry_point(path)


def test_what_an_entry_point_builds_must_be_one_capability_of_its_name(plugin_module):
    with pytest.raises(TypeError, match="not_a_capability.*built a object, not a Capability"):
        load_capabilities(None, None, ["a_users_plugin:not_a_capability"])
    with pytest.raises(ValueError, match="its name 'counter' is empty or taken"):
        load_capabilities(None, None, ["a_users_plugin:build", "a_users_plugin:build"])


def test_a_message_type_has_one_handler():
    assert dispatch_table([Counter()], {m.Heartbeat: None})[FloodTable][0] == (PEERS,)
    with pytest.raises(ValueError, match="FloodTable is handled by counter and by capability 'counter'"):
        dispatch_table([Counter(), Counter()], {})
    with pytest.raises(ValueError, match="Heartbeat is handled by the node"):
        dispatch_table([type("Rogue", (Counter,), {"handles": {m.Heartbeat: (PEERS,)}})()], {m.Heartbeat: None})


def test_every_builtin_entry_point_resolves():
    paths = [description.node_side for description in builtin_descriptions()]
    assert len(paths) == 6 and all(callable(load_entry_point(path)) for path in paths)


def test_a_capabilitys_state_rides_in_the_checkpoint_and_only_when_it_has_one(tmp_path):
    counter = Counter()
    counter.count = 7
    persistence = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10)
    persistence.may_write = True
    persistence.save_checkpoint(5, small_agent(0), episodes=1)
    assert "capabilities" not in load_checkpoint(persistence.checkpoint_path)  # the format a run without them always wrote
    persistence.capability_states = lambda: {counter.name: counter.state_dict()}
    persistence.save_checkpoint(10, small_agent(0), episodes=2)
    restored = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10).restore(small_agent(1))
    assert (restored.step, dict(restored.capabilities)) == (10, {"counter": {"count": 7}})


@pytest.fixture
def forget_the_example_message():
    """The example registers `gossip.best_return` in the process-wide message table; take it out
    afterwards, or later tests (the generated message reference) would find a stranger in it."""
    from protocols.codec.messages import MESSAGE_TYPES

    yield
    MESSAGE_TYPES.pop("gossip.best_return", None)


def test_the_example_in_the_interfaces_docstring_works(forget_the_example_message):
    """The `Gossip` capability the docstring shows a user, run against a stand-in node."""
    import textwrap

    import agent_node.capability as capability_module
    from protocols.run.settings import agent_node_ids
    from protocols.engines.topology import TopologyConfig, build_topology

    doc = capability_module.__doc__
    code = doc[doc.index("    from dataclasses import dataclass"):doc.index("The description (agent_node/registry.py)")]
    namespace: dict = {}
    exec(textwrap.dedent(code), namespace)  # noqa: S102 - the documentation's own example

    class StandInNode:
        topology = build_topology(TopologyConfig(kind="ring"), agent_node_ids(3))
        identity = types.SimpleNamespace(node_id="agent_0")

        def __init__(self):
            self.sent, self.records = [], []

        def send_peers(self, outgoing):
            self.sent.extend(outgoing)

        def write_metrics(self, record):
            self.records.append(record)

    node = StandInNode()
    config = namespace["GossipConfig"](kind="my_package.gossip:CAPABILITY")
    run = types.SimpleNamespace(agents=types.SimpleNamespace(count=3), capabilities=(config,))
    gossip = namespace["build"](run, node)
    assert load_capabilities(None, node, []) == [] and isinstance(gossip, Capability)
    gossip.on_timer(0.0)
    assert sorted(peer for peer, _ in node.sent) == ["agent_1", "agent_2"] and gossip.next_deadline() == 1.0
    gossip.on_message("agent_1", namespace["BestReturn"](2.5), 0.1)
    assert node.records == [{"gossip/best_heard": 2.5}]
    assert dispatch_table([gossip], {})[namespace["BestReturn"]][0] == (PEERS,)
