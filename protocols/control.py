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

`ControlClient` owns the DEALER channel of that conversation, made on the node's transport hub.
The waits that happen before the node's main loop runs (`register`, `wait_for`) block with a
deadline; afterwards the hub's wait covers `channel` with the node's other channels and the loop
passes control messages to its own handlers. The channel lingers up to a second when the hub
closes, so that the goodbye gets out.
"""

from __future__ import annotations

import os
import socket as pysocket
from typing import Any

from protocols import messages as m
from protocols.transport import Hub


class ControlTimeout(TimeoutError):
    pass


class ShutdownRequested(Exception):
    """The orchestrator asked us to stop while we were waiting for something else."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ControlClient:
    # How long closing waits for the last messages (the goodbye) to leave.
    GOODBYE_LINGER_S = 1.0

    def __init__(self, hub: Hub, endpoint: str, *, node_id: str) -> None:
        self.node_id = node_id
        self.channel = hub.connect_dealer(endpoint, name="control", identity=node_id, close_linger_s=self.GOODBYE_LINGER_S)
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
