"""Well-formed messages a node refuses are counted in `security/refused_messages` and logged like
the transport's drops: one line per source at once, then one aggregated line per source per 5 s,
never one per message. Driven through each node kind's own refusal path, with a hub that never
opens a socket."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from agent_node.capability import PEERS
from agent_node.goals.supervisor import OrchestratedSupervisor
from agent_node.node import AgentNode
from agent_node.peers import PeerMesh
from protocols.codec import messages as m
from protocols.codec.wire import PROTOCOL_VERSION, Envelope, Header
from protocols.net.transport import Hub
from tests.conftest import RecordingLink


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def envelope(sender: str, message) -> Envelope:
    return Envelope(Header("", type(message).MSG_TYPE, sender, "run", PROTOCOL_VERSION, 0, 0.0), message, {})


@pytest.fixture
def hub():
    hub = Hub(sender="agent_1", run_id="run")
    hub.refusals.clock = clock = FakeClock()
    hub.fake_clock = clock
    yield hub
    hub.close()


def refusal_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]


def test_an_agent_refusing_400_messages_writes_a_line_per_source_then_one_per_5_s(hub, caplog):
    """The flood the issue met: 200 signed env.reset from a neighbour (no handler for it from
    there) and 200 heartbeats from a node that is not a neighbour."""
    caplog.set_level(logging.WARNING)
    mesh = PeerMesh("agent_1", {"agent_0": RecordingLink(), "agent_2": RecordingLink()}, heartbeat_every_s=1.0,
                    timeout_s=3.0, refusals=hub.refusals)
    # The node's dispatch, on a node that has only what `_dispatch` and the membership events read.
    node = SimpleNamespace(messages_handled=0, mesh=mesh, hub=hub, HANDLERS=AgentNode.HANDLERS, dispatch={}, talk=None,
                           step=0, capabilities=[], metrics=SimpleNamespace(write=lambda step, record: None))
    for _ in range(200):
        AgentNode._dispatch(node, PEERS, envelope("agent_0", m.EnvReset(seed=1)))
        AgentNode._dispatch(node, PEERS, envelope("agent_7", m.Heartbeat(node_id="agent_7", incarnation=0, state="running")))

    lines = refusal_lines(caplog)
    assert len(lines) == 2, lines  # the first refusal of each source, with its detail
    assert any("agent_0" in line and "env.reset from neighbour: no handler for it from there" in line for line in lines)
    assert any("agent_7" in line and "membership.heartbeat from a node that is not a neighbour" in line for line in lines)
    assert hub.link_metrics()["security/refused_messages"] == 400
    assert mesh.dropped_from_strangers == 200

    hub.fake_clock.now += 5.0  # the window is over: one aggregated line per source
    hub.refusals.flush()
    aggregated = refusal_lines(caplog)[2:]
    assert len(aggregated) == 2, aggregated
    assert any("refused 199 messages from agent_0" in line for line in aggregated)
    assert any("refused 199 messages from agent_7" in line for line in aggregated)


def test_the_supervisor_counts_and_aggregates_what_it_does_not_take(hub, caplog):
    caplog.set_level(logging.WARNING)
    supervisor = OrchestratedSupervisor.__new__(OrchestratedSupervisor)  # only `handle`'s refusal path runs
    supervisor.hub, supervisor.service = hub, None
    for _ in range(100):
        supervisor.handle(None, envelope("agent_0", m.EnvReset(seed=None)))
    assert len(refusal_lines(caplog)) == 1
    assert hub.link_metrics()["security/refused_messages"] == 100


def test_the_learner_node_counts_refusals_in_its_own_and_the_security_counters(hub, caplog):
    from agent_node.ctde.learner_node import LearnerService

    caplog.set_level(logging.WARNING)
    learner = LearnerService(2, make_core=None, inbox=RecordingLink(), refusals=hub.refusals)
    for _ in range(100):
        assert learner.handle(envelope("agent_0", m.EnvReset(seed=None))) is False
    assert len(refusal_lines(caplog)) == 1
    assert learner.metrics()["learner/messages_refused"] == 100
    assert hub.link_metrics()["security/refused_messages"] == 100


def test_a_hub_with_no_refusals_reports_zero():
    hub = Hub(sender="env", run_id="run")
    try:
        assert hub.link_metrics()["security/refused_messages"] == 0
    finally:
        hub.close()
