"""The node side of the control channel to the orchestrator.

Every node (env server or agent) runs the same short conversation with the orchestrator:

    node                          orchestrator
    control.register  ─────────▶  (waits until every node has registered)
                      ◀─────────  control.directory  (env endpoint, my neighbours' endpoints)
    control.ready     ─────────▶  (waits until every node is ready)
                      ◀─────────  control.start
    control.status    ─────────▶  every status_every_s: state, step, episode, last return
                      ◀─────────  control.shutdown   (run budget spent, Ctrl-C, a failure)
    control.goodbye   ─────────▶

`ControlClient` owns the DEALER socket of that conversation. The waits that happen before the
node's main loop runs (`register`, `wait_for`) block with a deadline; afterwards the node's loop
polls `channel` itself and passes control messages to its own handlers.
"""

from __future__ import annotations

import os
import socket as pysocket
from typing import Any

import zmq

from protocols import messages as m
from protocols.transport import Channel, make_socket


class ControlTimeout(TimeoutError):
    pass


class ShutdownRequested(Exception):
    """The orchestrator asked us to stop while we were waiting for something else."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ControlClient:
    def __init__(self, context: zmq.Context, endpoint: str, *, node_id: str, run_id: str) -> None:
        socket = make_socket(context, zmq.DEALER, identity=node_id.encode())
        socket.connect(endpoint)
        self.node_id = node_id
        self.channel = Channel(socket, sender=node_id, run_id=run_id)
        self._last_status = 0.0

    def register(self, role: str, endpoints: dict[str, str], incarnation: int = 0) -> None:
        self.channel.send(
            m.Register(
                node_id=self.node_id,
                role=role,
                endpoints=endpoints,
                pid=os.getpid(),
                host=pysocket.gethostname(),
                incarnation=incarnation,
            )
        )

    def wait_for(self, message_type: type, timeout_s: float) -> Any:
        """Block until a control message of `message_type` arrives, with a deadline.

        A shutdown that arrives meanwhile raises ShutdownRequested; other messages are dropped.
        """
        message = self.channel.wait_for(message_type, m.Shutdown, timeout_s=timeout_s)
        if message is None:
            raise ControlTimeout(
                f"{self.node_id}: no {message_type.MSG_TYPE} from the orchestrator within {timeout_s:.0f} s"
            )
        if isinstance(message, m.Shutdown):
            raise ShutdownRequested(message.reason)
        return message

    def ready(self) -> None:
        self.channel.send(m.Ready(node_id=self.node_id))

    def next_status_at(self, every_s: float) -> float:
        """When the next status report is due (a node's loop sleeps no longer than this)."""
        return self._last_status + every_s

    def status_due(self, now: float, every_s: float) -> bool:
        return now >= self.next_status_at(every_s)

    def send_status(
        self,
        now: float,
        *,
        state: str,
        step: int,
        episode: int,
        last_return: float | None,
        msgs_per_s: float,
        extra: dict[str, float],
    ) -> None:
        self._last_status = now
        self.channel.send(
            m.Status(
                node_id=self.node_id,
                state=state,
                step=step,
                episode=episode,
                last_return=last_return,
                msgs_per_s=msgs_per_s,
                extra=extra,
            )
        )

    def goodbye(self, reason: str) -> None:
        self.channel.send(m.Goodbye(node_id=self.node_id, reason=reason))

    def close(self) -> None:
        # The one socket closed with a (bounded) linger: the goodbye just sent should arrive.
        self.channel.socket.close(linger=1000)
