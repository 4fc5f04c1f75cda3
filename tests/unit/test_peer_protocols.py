"""Peer protocols as plugins (agent_node/peer_protocols/): the registry's checks, `agents.protocols`
in the config, the example's return gossip (examples/parley_ippo/parley_ippo/gossip.py) driven by
the deterministic network simulator, its message on the wire, and the capability that drives it
in a node. tests/integration/test_plugin_run.py runs it through `orchestrate up`."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import pytest

from agent_node.capability import PEERS, dispatch_table, load_capabilities
from agent_node.peer_protocols import PROTOCOLS, LearnerView, ProtocolSpec
from agent_node.plugins import PluginError
from agent_node.roles import Transition
from protocols.codec import messages as m
from protocols.net.links import LinkConfig
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere
from protocols.run.settings import agent_node_ids
from protocols.engines.topology import TopologyConfig, build_topology
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "parley_ippo"
GOSSIP = "parley_ippo.gossip:ReturnGossip"


@pytest.fixture
def gossip(monkeypatch):
    """The example's gossip module, imported from this tree (as a user's package on PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import parley_ippo.gossip

    return parley_ippo.gossip


def ring_of(n: int) -> dict[str, tuple[str, ...]]:
    topology = build_topology(TopologyConfig(kind="ring"), agent_node_ids(n))
    return {node: tuple(topology.nodes[j] for j in topology.neighbours(i)) for i, node in enumerate(topology.nodes)}


def engines(gossip, n: int, **settings):
    config = gossip.GossipConfig(kind=GOSSIP, **settings)
    return {node: gossip.ReturnGossip(config, ProtocolSpec(node, neighbours, seed=i, num_agents=n))
            for i, (node, neighbours) in enumerate(ring_of(n).items())}


# ---------------------------------------------------------------------------- the registry


def test_the_example_resolves_by_import_path_with_its_own_config(gossip):
    entry = PROTOCOLS.resolve(GOSSIP)
    assert entry.config_model is gossip.GossipConfig and entry.source == "import path"
    config = entry.config_model.model_validate({"kind": GOSSIP, "every_steps": 7})
    assert isinstance(PROTOCOLS.build(config, ProtocolSpec("agent_0", ("agent_1",), 0, 2)), gossip.ReturnGossip)


@pytest.fixture
def bad_protocols(monkeypatch, gossip):
    """A module of protocol classes that each get one thing wrong."""
    module = types.ModuleType("bad_protocols")

    @dataclass(frozen=True)
    class Unregistered:
        value: float

    def variant(name, **changes):
        return type(name, (gossip.ReturnGossip,), changes)

    module.NoMessages = variant("NoMessages", message_types=())
    module.Unregistered = variant("Unregistered", message_types=(Unregistered,))
    module.ParleysOwn = variant("ParleysOwn", message_types=(m.Heartbeat,))
    module.HalfAHook = variant("HalfAHook", give=None)
    module.NoConfig = variant("NoConfig", config_model=None)
    monkeypatch.setitem(sys.modules, "bad_protocols", module)
    return module


@pytest.mark.parametrize("name, error", [
    ("NoMessages", "message_types must be a non-empty tuple"),
    ("Unregistered", "is not a registered wire message; decorate its frozen dataclass with @protocols.codec.messages.register_message"),
    ("ParleysOwn", r"message type Heartbeat \('membership.heartbeat'\) is Parley's own"),
    ("HalfAHook", "has the learner hook's request but not give"),
    ("NoConfig", "must name its config as the class attribute `config_model`"),
])
def test_a_protocol_class_that_lacks_part_of_the_interface_is_named(bad_protocols, name, error):
    with pytest.raises(PluginError, match=error):
        PROTOCOLS.resolve(f"bad_protocols:{name}")


def agents_section(protocols):
    from agent_node.config import AgentsConfig

    return AgentsConfig.model_validate({"count": 3, "learner": {"kind": "dqn"}, "protocols": protocols})


def test_agents_protocols_holds_each_protocols_own_config_and_dumps_it_again(gossip):
    agents = agents_section([{"kind": GOSSIP, "every_steps": 7, "entropy_boost": 0.5}])
    (protocol,) = agents.protocols
    assert isinstance(protocol, gossip.GossipConfig) and (protocol.every_steps, protocol.window) == (7, 20)
    dumped = agents.model_dump(mode="json")["protocols"]
    assert dumped == [{"kind": GOSSIP, "every_steps": 7, "window": 20, "timeout_s": 2.0, "timeout_steps": 5, "entropy_boost": 0.5}]
    assert agents_section([]).protocols == () and agents_section(None).protocols == ()


@pytest.mark.parametrize("protocols, errors", [
    ([{"kind": "no_such_package:Gossip"}], ["protocols.0.kind: 'no_such_package:Gossip': cannot import module"]),
    ([{"kind": GOSSIP, "every_step": 5, "window": 0}],
     ["protocols.0.window: expected greater than 0", "protocols.0.every_step: unknown key", "did you mean 'every_steps'"]),
    ([{"every_steps": 5}, "gossip"], ["protocols.0.kind: required field is missing", "protocols.1: expected a mapping"]),
    ([{"kind": "gossip"}], ["protocols.0.kind: expected an installed plugin", "or an import path 'package.module:Class', got 'gossip'"]),
    ([{"kind": GOSSIP}, {"kind": GOSSIP}], ["protocols: each protocol runs once per agent"]),
])
def test_a_bad_protocol_entry_is_a_config_error_naming_it(gossip, protocols, errors):
    import pydantic

    with pytest.raises(pydantic.ValidationError) as raised:
        agents_section(protocols)
    for error in errors:
        assert error in str(raised.value)


# ---------------------------------------------------------------------------- the engine in the simulator


def simulate(gossip, n: int = 4, **settings):
    nodes = engines(gossip, n, **settings)
    sim = NetworkSimulator(nodes, same_link_everywhere(LinkConfig(delay_s=0.01, jitter_s=0.005)), seed=3)
    return nodes, sim


def test_the_return_gossip_runs_in_the_network_simulator(gossip):
    nodes, sim = simulate(gossip)
    own = {node: -float(i) for i, node in enumerate(nodes)}
    for node, engine in nodes.items():
        request = engine.request(LearnerView(step=50, episode_returns=(own[node], own[node])))
        assert request == (1, own[node])  # round 50 // every_steps
        sim.call(node, lambda e, now, request=request: e.start(request, now))
    sim.run(until=1.0)
    for node, engine in nodes.items():
        assert engine.done and sim.now < 1.0 + 1e-9
        assert engine.result.heard == {neighbour: own[neighbour] for neighbour in ring_of(4)[node]}
        metrics = engine.metrics()
        assert metrics["gossip/heard"] == 2 and metrics["gossip/neighbour_best"] == max(own[b] for b in ring_of(4)[node])
    # The same round is not started twice; the next window starts the next one.
    assert nodes["agent_0"].request(LearnerView(step=60)) is None
    assert nodes["agent_0"].request(LearnerView(step=100))[0] == 2


def test_a_round_ends_on_its_deadline_or_when_membership_says_a_neighbour_died(gossip):
    nodes, sim = simulate(gossip, timeout_s=2.0)
    sim.crash("agent_2")  # agent_1 and agent_3 never hear from it
    for node in ("agent_0", "agent_1", "agent_3"):
        sim.call(node, lambda e, now: e.start((0, 1.0), now))
    sim.run(until=1.0)
    assert nodes["agent_0"].done and not nodes["agent_1"].done and not nodes["agent_3"].done
    sim.call("agent_1", lambda e, now: e.on_neighbour_down("agent_2", now))
    assert nodes["agent_1"].done and nodes["agent_1"].result.heard == {"agent_0": 1.0}
    sim.run(until=5.0)  # agent_3 waits out its deadline
    assert nodes["agent_3"].done and nodes["agent_3"].result.heard == {"agent_0": 1.0}


def test_a_neighbours_message_for_a_round_not_begun_here_waits_for_it(gossip):
    nodes, sim = simulate(gossip, n=3)
    sim.call("agent_1", lambda e, now: e.start((4, -2.0), now))
    sim.run(until=0.5)
    assert not nodes["agent_0"].done  # it has not begun round 4, but kept what agent_1 said in it
    sim.call("agent_0", lambda e, now: e.start((4, -1.0), now))
    sim.call("agent_2", lambda e, now: e.start((4, -3.0), now))
    sim.run(until=1.0)
    assert nodes["agent_0"].result.heard == {"agent_1": -2.0, "agent_2": -3.0}


def test_give_raises_the_learners_entropy_while_it_trails_its_neighbours(gossip):
    (engine, *_) = engines(gossip, 3, entropy_boost=0.5).values()
    learner = types.SimpleNamespace(entropy_coef=0.01)
    engine.give(learner, gossip.Round(0, own=-5.0, heard={"agent_1": -4.0}))
    assert learner.entropy_coef == pytest.approx(0.015)
    engine.give(learner, gossip.Round(1, own=-3.0, heard={"agent_1": -4.0}))
    assert learner.entropy_coef == pytest.approx(0.01) and engine.entropy_coef == pytest.approx(0.01)
    with pytest.raises(TypeError, match="needs a learner with an `entropy_coef`"):
        engine.give(object(), gossip.Round(2, own=-3.0, heard={}))


def test_its_message_is_checked_and_signed_on_the_wire(gossip):
    from protocols.codec import wire
    from protocols.codec.errors import FieldError, SignatureError

    message = gossip.MeanReturn(round=3, mean_return=-7.5, episodes=20)
    frames = wire.encode(message, sender="agent_0", run_id="r", seq=1, key=b"k" * 32)
    assert wire.decode(frames, key=b"k" * 32).message == message
    tampered = list(frames)
    tampered[1] = bytes(tampered[1]).replace(b"episodes", b"episodez")
    with pytest.raises(SignatureError):
        wire.decode(tampered, key=b"k" * 32)
    with pytest.raises(FieldError, match="round"):
        wire.decode(wire.encode(gossip.MeanReturn(round="three", mean_return=-7.5, episodes=20), sender="agent_0", run_id="r", seq=2))


# ---------------------------------------------------------------------------- in the node


class StandInNode:
    """The node services the protocol capability uses."""

    def __init__(self, node_id: str = "agent_0", n: int = 3) -> None:
        self.topology = build_topology(TopologyConfig(kind="ring"), agent_node_ids(n))
        self.identity = types.SimpleNamespace(node_id=node_id)
        self.learner = types.SimpleNamespace(entropy_coef=0.01)
        self.sent, self.records, self.broken = [], [], []

    def send_peers(self, outgoing):
        self.sent.extend(outgoing)

    def write_metrics(self, record):
        self.records.append(record)

    def reproducibility_broken(self, cause, what):
        self.broken.append(cause)


def transition(rewards, ended, copies=(0, 1)) -> Transition:
    k = len(copies)
    return Transition(obs=np.zeros((k, 2), np.float32), action=np.zeros(k, np.int64), reward=np.asarray(rewards, np.float32),
                      next_obs=np.zeros((k, 2), np.float32), terminated=np.zeros(k, bool), truncated=np.asarray(ended),
                      copy_index=np.asarray(copies, np.int64))


def gossip_capability(gossip, talk: str, **settings):
    """The return gossip as agent_0's capability in a ring of 3, and the stand-in node around it."""
    run = types.SimpleNamespace(
        run=types.SimpleNamespace(seed=0), protocols=types.SimpleNamespace(talk=talk),
        agents=types.SimpleNamespace(count=3, protocols=(gossip.GossipConfig(kind=GOSSIP, every_steps=10, **settings),)),
    )
    node = StandInNode()
    (capability,) = load_capabilities(run, node, ["agent_node.peer_protocols.capability:build"])
    return capability, node


def test_the_node_drives_the_engine_and_hands_its_result_to_the_learner(gossip):
    capability, node = gossip_capability(gossip, "free", entropy_boost=1.0)
    assert dispatch_table([capability], {})[gossip.MeanReturn][0] == (PEERS,)
    observation = types.SimpleNamespace(step=10)
    capability.on_transition(observation, transition([-1.0, -2.0], [False, False]))
    capability.on_transition(observation, transition([-1.0, -2.0], [True, True]))  # episodes of -2 and -4
    capability.after_observation(observation, now=0.0)
    assert sorted(peer for peer, _ in node.sent) == ["agent_1", "agent_2"]
    assert node.sent[0][1] == gossip.MeanReturn(round=1, mean_return=-3.0, episodes=2)
    assert capability.next_deadline() == 2.0
    capability.after_observation(types.SimpleNamespace(step=11), now=0.1)  # a round in flight: no second one
    assert len(node.sent) == 2
    capability.on_message("agent_1", gossip.MeanReturn(round=1, mean_return=-1.0, episodes=5), now=0.2)
    assert node.records == []
    capability.on_message("agent_2", gossip.MeanReturn(round=1, mean_return=-6.0, episodes=5), now=0.3)
    (record,) = node.records
    assert record["gossip/neighbour_best"] == -1.0 and record["gossip/own_return"] == -3.0
    assert node.learner.entropy_coef == pytest.approx(0.02)  # trailing agent_1: 0.01 * (1 + 1.0)
    assert node.broken == ["peer_protocol"]  # a reproducible run says what timing decided


def test_talking_in_env_steps_the_engine_s_time_is_the_step_and_its_messages_come_at_step_starts(gossip):
    capability, node = gossip_capability(gossip, "env_steps", timeout_steps=4)
    assert capability.talks_in_env_steps and capability.engine.timeout == 4, "spec.clock told the engine its unit"
    capability.on_transition(None, transition([-1.0, -2.0], [True, True]))
    capability.after_observation(types.SimpleNamespace(step=10, evaluation=False), now=12345.6)  # wall time ignored
    assert capability.engine.deadline == 14 and capability.next_deadline() is None, "in steps: checked at the step starts"
    capability.on_timer(12345.7)  # the node's wall-clock tick is not the engine's time
    assert not capability.engine.done
    capability.on_env_step(types.SimpleNamespace(step=11), [("agent_1", gossip.MeanReturn(round=1, mean_return=-1.0, episodes=5))])
    assert not capability.engine.done
    capability.on_env_step(types.SimpleNamespace(step=14), [])  # agent_2 never spoke: the round ends at its deadline
    (record,) = node.records
    assert record["gossip/neighbour_best"] == -1.0 and node.broken == [], "in steps timing decides nothing"


def test_a_protocol_that_does_not_say_it_talks_in_steps_is_refused_there(gossip):
    from orchestrator.config import load_config
    from protocols.run.config_errors import ConfigError

    main_job = Path(__file__).resolve().parents[2] / "configs" / "4agents_ring.yaml"
    gossip_entry = f"{{kind: '{GOSSIP}', every_steps: 10}}"
    load_config(main_job, ["protocols.talk=env_steps", f"agents.protocols=[{gossip_entry}]"])
    gossip.ReturnGossip.talks_in_env_steps = False
    try:
        with pytest.raises(ConfigError) as caught:
            load_config(main_job, ["protocols.talk=env_steps", f"agents.protocols=[{gossip_entry}]"])
    finally:
        gossip.ReturnGossip.talks_in_env_steps = True
    assert any(problem.startswith("agents.protocols.0.kind:") and "talks_in_env_steps" in problem
               for problem in caught.value.problems), caught.value.problems


def test_a_run_without_protocols_builds_none():
    run = types.SimpleNamespace(agents=types.SimpleNamespace(count=3, protocols=()), run=types.SimpleNamespace(seed=0),
                                protocols=types.SimpleNamespace(talk="free"))
    assert load_capabilities(run, StandInNode(), ["agent_node.peer_protocols.capability:build"]) == []


def test_an_agent_with_no_live_neighbour_ends_its_round_at_once(gossip):
    (engine, *_) = engines(gossip, 3).values()
    for neighbour in ("agent_1", "agent_2"):
        engine.on_neighbour_down(neighbour, 0.0)
    assert engine.start((0, -1.0), 0.0) == [] and engine.done and engine.result.heard == {}
