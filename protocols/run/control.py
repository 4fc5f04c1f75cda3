"""The node side of the control channel to the orchestrator.

Every node (env server or agent) runs the same short conversation with the orchestrator:

    node                          orchestrator
    control.register  ─────────▶  (waits until every node has registered)
                      ◀─────────  control.directory  (env endpoint, my neighbours' endpoints)
    control.ready     ─────────▶  (waits until every node is ready)
                      ◀─────────  control.start
    control.status    ─────────▶  every status_every_s: state, step, episode, last return
                      ◀─────────  control.partition / control.heal / control.set_link
                                      (run-time network faults from faults.schedule)
    control.fault_applied ─────▶  (each, once applied to the node's links)
                      ◀─────────  control.hold_at_steps  (env server: the steps with faults)
    control.step_held ─────────▶  (env server, at such a step: the orchestrator issues its faults)
                      ◀─────────  control.release_step  (once every node applied them)
                      ◀─────────  control.env_restarting / control.env_back  (agents: the env
                                      server is being restarted / is back; agent_node/node.py)
                      ◀─────────  control.neighbour_moved  (agents: a restarted neighbour listens
                                      at a new tcp endpoint)
                      ◀─────────  control.shutdown   (run budget spent, Ctrl-C, a failure)
    control.goodbye   ─────────▶

`ControlClient` owns the DEALER channel of that conversation, made on the node's transport hub.
The waits that happen before the node's main loop runs (`register`, `wait_for`) block with a
deadline; afterwards the hub's wait covers `channel` with the node's other channels and the loop
passes control messages to its own handlers. The channel lingers up to a second when the hub
closes, so that the goodbye gets out.

**Network faults.** Link emulation lives in each node's own transport hub (`hub.links`, a
`LinkTable`): a node drops or delays what it *sends*. So a run-time partition or link change
reaches every node whose outgoing links it changes, and `apply_network_fault` (sans-IO: a table
and a message in, a log line out) is the whole node-side hook; the agent node and the env
server call it from their control handlers.

**The orchestrator's death.** A node started by the local orchestrator gets its pid in
`PARLEY_ORCHESTRATOR_PID` and is its child (also when forked by the zygote: the orchestrator is
a child subreaper). `OrchestratorWatch` checks every half second whether the node's parent is
still that pid; when the orchestrator is gone (killed, crashed) the node has been re-parented,
and the watch sends the node SIGTERM — the same clean stop as `orchestrate down` — and, should
the node still run `ORPHAN_KILL_AFTER_S` later, ends it. Without the variable (a node started
by hand, a remote backend) there is no watch.
"""

from __future__ import annotations

import os
import signal
import socket as pysocket
import threading
from typing import Any

from protocols.codec import messages as m
from protocols.storage.durable_state import StateNotice
from protocols.net.links import LinkConfig, LinkTable
from protocols.net.transport import Hub


ORCHESTRATOR_PID_ENV = "PARLEY_ORCHESTRATOR_PID"
# How often the watch looks at the parent pid, and how long a SIGTERM'd orphan gets to stop.
ORPHAN_CHECK_EVERY_S = 0.5
ORPHAN_KILL_AFTER_S = 15.0


class OrchestratorWatch:
    """A daemon thread that stops this node once its orchestrator process is gone."""

    def __init__(self, orchestrator_pid: int, node_id: str) -> None:
        self.orchestrator_pid = orchestrator_pid
        self.node_id = node_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="orchestrator-watch", daemon=True)

    @classmethod
    def from_environment(cls, node_id: str) -> "OrchestratorWatch | None":
        text = os.environ.get(ORCHESTRATOR_PID_ENV, "")
        if not text.isdigit():
            return None
        if os.getppid() != int(text):
            # Started by that orchestrator but not its child (already orphaned, or another
            # launcher in between): the parent pid cannot tell us anything; no watch.
            return None
        return cls(int(text), node_id)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(ORPHAN_CHECK_EVERY_S):
            if os.getppid() != self.orchestrator_pid:
                break
        else:
            return
        print(f"{self.node_id}: the orchestrator (pid {self.orchestrator_pid}) is gone; stopping", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        if not self._stop.wait(ORPHAN_KILL_AFTER_S):
            print(f"{self.node_id}: still running {ORPHAN_KILL_AFTER_S:.0f} s after the orchestrator died; exiting", flush=True)
            os._exit(1)


# The control messages that change this node's emulated links (see "Network faults" above).
NETWORK_FAULTS = (m.Partition, m.Heal, m.SetLink)


def apply_network_fault(links: LinkTable, message: m.Partition | m.Heal | m.SetLink) -> str:
    """Apply a run-time network fault to this node's outgoing links; returns a line for the log.

    A partition blocks (in the table's `PartitionTable`) every pair of nodes in different groups;
    messages on a blocked link never enter it and count as `dropped_partition`. A heal unblocks
    the links touching its nodes (all links when it names none). A link change replaces the
    profile of the edges whose source is this node (`LinkTable.set_config`: counters and the
    link's seeded random stream carry over); a bad profile raises ValueError naming the field.
    """
    if not isinstance(message, NETWORK_FAULTS):
        raise TypeError(f"expected one of {[t.MSG_TYPE for t in NETWORK_FAULTS]}, got {type(message).__name__}")
    where = f"faults.schedule.{message.position}" if message.position >= 0 else "a network fault"
    if isinstance(message, m.Partition):
        links.partitions.partition(message.groups)
        cut = sorted(dst for src, dst in links.partitions.blocked_pairs if src == links.src)
        return f"{where}: partition {message.groups}; {links.src} cannot reach {cut or 'nobody'}"
    if isinstance(message, m.Heal):
        if message.nodes:
            links.partitions.heal_nodes(message.nodes)
        else:
            links.partitions.heal()
        still = sorted(dst for src, dst in links.partitions.blocked_pairs if src == links.src)
        return f"{where}: heal {message.nodes or 'every link'}; {links.src} still cut off from {still or 'nobody'}"
    # m.SetLink
    try:
        config = LinkConfig.model_validate(message.link)
    except ValueError as error:
        raise ValueError(f"{where}.link: expected a link profile (network.default_link's fields), got {message.link}: {error}") from None
    if any(len(edge) != 2 for edge in message.edges):
        raise ValueError(f"{where}.edges: expected [src, dst] pairs, got {message.edges}")
    changed = []
    for src, dst in message.edges:
        if src == links.src:
            links.set_config(dst, config)
            changed.append(dst)
    return f"{where}: link profile of {links.src} -> {changed or 'no link of this node'} set to {config.model_dump(exclude_defaults=True) or 'ideal'}"


class ControlTimeout(TimeoutError):
    pass


def stop_on_signals() -> list[str]:
    """From now on SIGTERM and SIGINT do not kill the process: each appends its name to the
    returned list, which the node's loop checks to stop cleanly (goodbye, sockets closed). The
    loop appends the orchestrator's shutdown reason to the same list."""
    stop: list[str] = []

    def request_stop(signum, frame):
        stop.append(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


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
        self.watch = OrchestratorWatch.from_environment(node_id)
        if self.watch is not None:
            self.watch.start()

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

    def ready(self, resumed_step: int | None = None, notice: StateNotice | None = None) -> None:
        """Say ready; `notice`: what the node did about damaged saved state (protocols/storage/durable_state.py)."""
        self.channel.send(m.Ready(
            node_id=self.node_id, resumed_step=resumed_step, state_damaged=None if notice is None else notice.what,
            state_started_fresh=notice is not None and notice.started_fresh,
        ))

    def join_run(self, role: str, endpoints: dict[str, str], startup_timeout_s: float,
                 notice: StateNotice | None = None) -> m.Directory:
        """The whole start-up of a node that needs nothing between the steps (the learner node,
        the goal supervisor): register, take the directory, say ready, wait for the start."""
        self.register(role, endpoints)
        directory = self.wait_for(m.Directory, startup_timeout_s)
        self.ready(notice=notice)
        self.wait_for(m.Start, startup_timeout_s)
        return directory

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
