"""Routing ids per incarnation (`transport.incarnation_routing_id`), which agents use at the
learner node.

The case that stalled centralized runs: a ROUTER that reads behind (a busy learner
node) still holds unread messages from a killed agent when the restarted agent connects. libzmq
4.3 refuses a new connection under a routing id whose old connection still holds messages, and
never reconsiders it. ZMQ_ROUTER_HANDOVER would let the new connection take the id over, and
would let any process that reaches the socket do the same and receive what was meant for the
agent. With a routing id of its own per incarnation the restarted agent is heard at
once, and nothing can take over a connection's id: zmq keeps the first connection of an id."""

from __future__ import annotations

import time

from protocols.codec import messages as m
from protocols.run.settings import NetworkConfig
from protocols.net.transport import Hub, incarnation_routing_id, node_of_routing_id


def receive(hub: Hub, channel, until, timeout_s: float = 5.0) -> list:
    """Envelopes read from `channel` until `until(envelopes)` holds or the timeout passes."""
    received: list = []
    deadline = time.monotonic() + timeout_s
    while not until(received) and time.monotonic() < deadline:
        hub.wait(0.05)
        received += list(channel.recv_all())
    return received


def beat(sender: str, incarnation: int, state: str) -> m.Heartbeat:
    return m.Heartbeat(node_id=sender, incarnation=incarnation, state=state)


def heard_agent(server: Hub, agent: Hub, tmp_path):
    """The server's ROUTER, agent_1's DEALER under a fresh incarnation id, and that id, once the
    ROUTER has heard the agent (so it knows the connection)."""
    inbox = server.bind_router(f"ipc://{tmp_path}/router", name="inbox")
    routing_id = incarnation_routing_id("agent_1")
    channel = agent.connect_dealer(inbox.endpoint, name="learner", identity=routing_id)
    channel.send(beat("agent_1", 0, "running"))
    assert receive(server, inbox, lambda got: bool(got))
    return inbox, channel, routing_id


def test_routing_ids_of_incarnations_name_their_node_and_differ():
    first, second = incarnation_routing_id("agent_1"), incarnation_routing_id("agent_1")
    assert first != second and first.startswith("agent_1~") and len(first) == len("agent_1~") + 16
    assert node_of_routing_id(first) == node_of_routing_id("agent_1") == "agent_1"


def test_a_restarted_dealer_is_heard_while_its_predecessor_has_unread_messages(tmp_path):
    server = Hub(sender="learner", run_id="r")
    first, second = Hub(sender="agent_1", run_id="r"), Hub(sender="agent_1", run_id="r")
    try:
        inbox = server.bind_router(f"ipc://{tmp_path}/router", name="inbox")
        old = first.connect_dealer(inbox.endpoint, name="old", identity=incarnation_routing_id("agent_1"), close_linger_s=2.0)
        for index in range(50):  # the ROUTER reads none of these yet
            old.send(beat("agent_1", 0, str(index)))
        deadline = time.monotonic() + 5
        while not server.wait(0.05) and time.monotonic() < deadline:
            pass  # the first message is in: the old connection holds its routing id
        first.close()  # as a killed process: the connection closes with its messages unread
        new_id = incarnation_routing_id("agent_1")
        new = second.connect_dealer(inbox.endpoint, name="new", identity=new_id)
        time.sleep(0.3)  # the new connection's handshake, while the old pipe still holds messages
        new.send(beat("agent_1", 1, "back"))

        heard = receive(server, inbox, lambda got: any(e.message.incarnation == 1 for e in got))
        back = [e for e in heard if e.message.incarnation == 1]
        assert back, f"the restarted dealer was never heard ({len(heard)} old messages read)"
        assert back[0].identities[0] == new_id.encode()
        assert inbox.send(beat("learner", 0, "hi"), to=new_id)
        answers = receive(second, new, lambda got: bool(got))
        assert answers and answers[0].message.state == "hi"
    finally:
        for hub in (server, first, second):
            hub.close()


def test_a_second_connection_under_a_live_routing_id_receives_nothing(tmp_path):
    """No handover: a process that connects under the id of a live connection (which it would
    have to guess: 64 random bits) is not given that connection's traffic."""
    server, agent, stranger = Hub(sender="learner", run_id="r"), Hub(sender="agent_1", run_id="r"), Hub(sender="x", run_id="r")
    try:
        inbox, live, routing_id = heard_agent(server, agent, tmp_path)
        impostor = stranger.connect_dealer(inbox.endpoint, name="impostor", identity=routing_id)
        impostor.send(beat("x", 0, "here"))
        time.sleep(0.3)
        assert inbox.send(beat("learner", 0, "for agent_1"), to=routing_id)
        assert [e.message.state for e in receive(agent, live, lambda got: bool(got))] == ["for agent_1"]
        assert receive(stranger, impostor, lambda got: bool(got), timeout_s=0.5) == []
    finally:
        for hub in (server, agent, stranger):
            hub.close()


def test_a_router_sends_to_an_incarnation_through_its_nodes_link(tmp_path):
    net = NetworkConfig.model_validate({"default_link": {"delay_s": 0.0}, "links": [{"src": "learner", "dst": "agent_1", "link": {"loss": 1.0}}]})
    server = Hub(sender="learner", run_id="r", links=net.link_table("learner", run_seed=0))
    agent = Hub(sender="agent_1", run_id="r")
    try:
        inbox, channel, routing_id = heard_agent(server, agent, tmp_path)
        inbox.send(beat("learner", 0, "lost"), to=routing_id)
        assert server.link_metrics()["link/learner_to_agent_1/dropped_loss"] == 1
        assert receive(agent, channel, lambda got: bool(got), timeout_s=0.5) == []
    finally:
        server.close()
        agent.close()
