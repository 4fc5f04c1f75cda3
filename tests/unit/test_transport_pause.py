"""A peer link survives its far end being frozen (SIGSTOP) past the zmq heartbeat timeout.

Two real processes, each with an inbox (a ROUTER) and a link (a DEALER) to the other's inbox,
made the way an agent node makes its neighbour links. The child is stopped for longer than the
zmq heartbeat timeout, so the parent's DEALER gives up on the connection and reconnects to a
process that cannot answer yet; when the child is continued, its inbox sees the new connection
while the old one (holding the heartbeats buffered during the stop) is still being torn down.
Under a fixed routing id libzmq refuses the new connection as a duplicate and never looks at it
again: the child hears none of the parent's messages until that connection drops for another
reason. What is asserted: after the resume each side hears what the other sends from then on,
within a bound generous for a loaded machine (the membership timeout of the main job, 5 s).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from protocols.codec import messages as m
from protocols.net.transport import Hub, SocketOptions

pytestmark = pytest.mark.timeout(60)

# Short zmq heartbeats keep the test to a few seconds; the stop outlasts their timeout.
OPTIONS = SocketOptions(heartbeat_ivl_s=0.2, heartbeat_timeout_s=1.0)
STOPPED_S = 1.6
HEARD_WITHIN_S = 5.0  # the main job's membership timeout
SEND_EVERY_S = 0.05
# While the child is stopped the parent sends much faster: the more messages its inbox finds
# buffered on the old connection when it wakes, the longer that connection takes to be torn down,
# and the surer the new one arrives meanwhile (as a real neighbour's heartbeats and consensus
# shares of a 13 s stop did).
SEND_EVERY_WHILE_STOPPED_S = 0.002

# The child: its inbox, a link to the parent's inbox, a numbered heartbeat every SEND_EVERY_S,
# and one stdout line per heartbeat heard ("heard N").
CHILD = f"""
import sys, time
from protocols.codec import messages as m
from protocols.net.transport import Hub, SocketOptions
hub = Hub(sender="child", run_id="test", options=SocketOptions({OPTIONS.heartbeat_ivl_s}, {OPTIONS.heartbeat_timeout_s}))
inbox = hub.bind_router(sys.argv[1], name="peers")
link = hub.connect_dealer(sys.argv[2], name="peer:parent", identity=None)
print("ready", flush=True)
sent, next_send = 0, 0.0
while True:
    now = time.monotonic()
    if now >= next_send:
        link.send(m.Heartbeat(node_id="child", incarnation=sent, state="running"))
        sent, next_send = sent + 1, now + {SEND_EVERY_S}
    for channel in hub.wait(max(0.0, next_send - time.monotonic())):
        for envelope in channel.recv_all():
            print("heard", envelope.message.incarnation, flush=True)
"""


def test_both_directions_of_a_peer_link_are_heard_again_after_a_stop_past_the_zmq_heartbeat_timeout(tmp_path):
    hub = Hub(sender="parent", run_id="test", options=OPTIONS)
    child = None
    try:
        inbox = hub.bind_router(f"ipc://{tmp_path}/parent.peer", name="peers")
        child_inbox = f"ipc://{tmp_path}/child.peer"
        child = subprocess.Popen([sys.executable, "-c", CHILD, child_inbox, inbox.endpoint],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert child.stdout.readline().strip() == "ready"
        heard_by_child: queue.Queue[int] = queue.Queue()
        threading.Thread(target=lambda: [heard_by_child.put(int(line.split()[1])) for line in child.stdout], daemon=True).start()
        link = hub.connect_dealer(child_inbox, name="peer:child", identity=None)  # as agent_node/node_lifecycle.py
        sent = 0

        def run_for(seconds: float, every_s: float = SEND_EVERY_S, until=lambda heard: False) -> list[int]:
            """Send a numbered heartbeat every `every_s` for `seconds` or until `until(heard)`;
            returns the child's numbers heard meanwhile."""
            nonlocal sent
            heard: list[int] = []
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0 and not until(heard):
                link.send(m.Heartbeat(node_id="parent", incarnation=sent, state="running"))
                sent += 1
                for channel in hub.wait(min(every_s, left)):
                    heard.extend(envelope.message.incarnation for envelope in channel.recv_all())
            return heard

        assert run_for(0.5), "the parent never heard the child before the stop"
        os.kill(child.pid, signal.SIGSTOP)
        last_before_resume = max(run_for(STOPPED_S, every_s=SEND_EVERY_WHILE_STOPPED_S), default=-1)
        os.kill(child.pid, signal.SIGCONT)
        first_after_resume = sent

        # Each side hears what the other sent after the resume (the child numbers its heartbeats
        # on: one higher than any heard before or in the burst of its buffered ones is new).
        child_heard: list[int] = []

        def both_heard(parent_heard: list[int]) -> bool:
            while not heard_by_child.empty():
                child_heard.append(heard_by_child.get_nowait())
            return any(n >= first_after_resume for n in child_heard) and len(set(parent_heard)) > 1

        parent_heard = run_for(HEARD_WITHIN_S, until=both_heard)
        both_heard(parent_heard)
        assert any(n >= first_after_resume for n in child_heard), (
            f"the stopped-then-continued child heard none of the {sent - first_after_resume} messages "
            f"its peer sent in the {HEARD_WITHIN_S} s after the resume (the last it heard: "
            f"{max(child_heard, default=None)}, the first sent after the resume: {first_after_resume})"
        )
        assert len(set(parent_heard)) > 1 and max(parent_heard) > last_before_resume, (
            f"the parent heard nothing new from the child in the {HEARD_WITHIN_S} s after its resume"
        )
    finally:
        if child is not None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()
        hub.close()
