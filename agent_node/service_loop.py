"""The one loop of the service nodes: the learner node (agent_node/ctde/learner_node.py) and the
goal supervisor (agent_node/goals/supervisor.py).

A service node binds its inbox, joins the run (register, directory, ready, start), then serves
messages until the orchestrator's `control.shutdown` or a signal, reporting status every
`protocols.control.status_every_s`, and says goodbye. What differs is the `Service` it runs:
its endpoints, what it does with a message, what it reports, and what it does at the end.
Every wait has a deadline (`WAKE_S` at most), so SIGTERM / SIGINT are noticed promptly.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Protocol

from protocols.codec import messages as m
from protocols.run.control import ControlClient, ShutdownRequested, stop_on_signals
from protocols.storage.durable_state import EXIT_DAMAGED_STATE, DamagedStateError, StateNotice
from protocols.run.node_config import NodeIdentity, node_hub
from protocols.net.transport import Channel, Hub
from protocols.codec.wire import Envelope

# How often the loop wakes up with nothing to do, to notice SIGTERM / SIGINT promptly.
WAKE_S = 0.2


class Service(Protocol):
    """What a service node runs in the shared loop."""

    role: str  # its role in the run ("learner", "supervisor"): the name it registers under
    log: logging.Logger
    # What its restore in `bind` met (damaged files skipped or set aside), None when nothing.
    state_notice: StateNotice | None

    def bind(self, hub: Hub) -> dict[str, str]:
        """Restore what it saved, bind its inbox; returns its endpoints for the directory."""

    def handle(self, channel: Channel, envelope: Envelope) -> None:
        """One message that is not the orchestrator's."""

    def after_message(self) -> None:
        """Called after every message and every wake-up (checkpoints and metrics that are due):
        a service behind its clients always has more waiting, and must still report."""

    def status(self) -> tuple[int, float, Mapping[str, float]]:
        """Its step, the messages it handled so far, and the extra status fields."""

    def status_metrics(self) -> tuple[int, Mapping[str, float]]:
        """The record written to its metrics at each status (with the step to write it at)."""

    def finish(self, reason: str) -> None:
        """After the shutdown, before the goodbye (take in what is still in flight, save)."""

    def final_metrics(self, reason: str) -> tuple[int, Mapping[str, float]] | None:
        """The record written to its metrics when it stops (None: nothing was built to report)."""


def run_service(service: Service, run: Any, identity: NodeIdentity, control_endpoint: str, metrics: Any) -> int:
    """Serve until told to stop; returns the exit code (0; 1 after a failure; EXIT_DAMAGED_STATE
    when its saved state cannot be read, so that it is not restarted over it)."""
    log = service.log
    stop = stop_on_signals()
    hub = node_hub(run, identity)
    control = None
    reason, exit_code = "stopped", 0
    status_every_s = run.protocols.control.status_every_s
    try:
        control = ControlClient(hub, control_endpoint, node_id=identity.node_id)
        endpoints = service.bind(hub)
        # What its restore met, if anything (a damaged file skipped, or a fresh start): said in its
        # control.ready, so the orchestrator records it (protocols/storage/durable_state.py).
        control.join_run(service.role, endpoints, run.protocols.control.startup_timeout_s,
                         notice=service.state_notice)
        started = time.monotonic()

        def report() -> None:
            service.after_message()
            now = time.monotonic()
            if control.status_due(now, status_every_s):
                step, messages, extra = service.status()
                control.send_status(now, state="running", step=step, episode=0, last_return=None,
                                    msgs_per_s=messages / max(1e-9, now - started), extra=dict(extra))
                metrics.write(*service.status_metrics())

        while not stop:
            timeout = min(WAKE_S, max(0.0, control.next_status_at(status_every_s) - time.monotonic()))
            for channel in hub.wait(timeout):
                for envelope in channel.recv_all():
                    if channel is control.channel:
                        if isinstance(envelope.message, m.Shutdown):
                            stop.append(envelope.message.reason)
                    else:
                        service.handle(channel, envelope)
                    report()
                    if stop:
                        break
            hub.flush_due()
            report()
        reason = stop[0]
        service.finish(reason)
    except ShutdownRequested as request:
        reason = request.reason
    except DamagedStateError as error:
        # Its saved state cannot be read: nothing was saved over it (saves happen after the
        # restore); stop, and ask not to be restarted (protocols/storage/durable_state.py).
        log.error("stopping: %s", error)
        reason, exit_code = f"failure: {error}", EXIT_DAMAGED_STATE
    except Exception as error:  # noqa: BLE001 - reported, then the node exits non-zero
        log.exception("%s failed: %s", service.role, error)
        reason, exit_code = f"failed: {error}", 1
    finally:
        try:
            if (final := service.final_metrics(reason)) is not None:
                metrics.write(*final)
            if control is not None:
                control.goodbye(reason)
        finally:
            metrics.close()
            hub.close()
    return exit_code
