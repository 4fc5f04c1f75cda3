"""A node that comes back under its node id is heard at once by the ROUTERs it reconnects to
(ZMQ_ROUTER_HANDOVER, `Hub.bind_router(handover=True)`, which the learner node sets).

The case that stalled centralized runs (issue 12): a ROUTER that reads behind (a busy learner
node) still holds unread messages from a killed agent when the restarted agent connects with the
same routing id. libzmq 4.3 then refuses the new connection unless handover is set, and never
reconsiders it, so the restarted agent is never heard again."""

from __future__ import annotations

import time

from protocols import messages as m
from protocols.transport import Hub


def test_a_reconnecting_dealer_takes_over_its_routing_id_while_its_predecessor_has_unread_messages(tmp_path):
    server = Hub(sender="learner", run_id="r")
    first, second = Hub(sender="agent_1", run_id="r"), Hub(sender="agent_1", run_id="r")
    try:
        inbox = server.bind_router(f"ipc://{tmp_path}/router", name="inbox", handover=True)
        old = first.connect_dealer(inbox.endpoint, name="old", identity="agent_1", close_linger_s=2.0)
        for incarnation in range(50):  # the ROUTER reads none of these yet
            old.send(m.Heartbeat(node_id="agent_1", incarnation=0, state=str(incarnation)))
        deadline = time.monotonic() + 5
        while not server.wait(0.05) and time.monotonic() < deadline:
            pass  # the first message is in: the old connection holds the routing id
        first.close()  # as a killed process: the connection closes with its messages unread
        new = second.connect_dealer(inbox.endpoint, name="new", identity="agent_1")
        time.sleep(0.3)  # the new connection's handshake, while the old pipe still holds messages
        new.send(m.Heartbeat(node_id="agent_1", incarnation=1, state="back"))

        heard: list[m.Heartbeat] = []
        deadline = time.monotonic() + 5
        while not any(h.incarnation == 1 for h in heard) and time.monotonic() < deadline:
            server.wait(0.1)
            heard += [envelope.message for envelope in inbox.recv_all()]
        assert any(h.incarnation == 1 for h in heard), f"the restarted dealer was never heard ({len(heard)} old messages read)"
        # And the ROUTER's answers under that routing id reach the new connection, not the dead one.
        assert inbox.send(m.Heartbeat(node_id="learner", incarnation=0, state="hi"), to="agent_1")
        deadline = time.monotonic() + 5
        answers = []
        while not answers and time.monotonic() < deadline:
            second.wait(0.1)
            answers = list(new.recv_all())
        assert answers and answers[0].message.state == "hi"
    finally:
        for hub in (server, first, second):
            hub.close()
