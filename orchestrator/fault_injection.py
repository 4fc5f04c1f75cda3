"""The fault schedule at run time: each fault fired at its moment, on the nodes it names.

`FaultInjector` is the orchestrator's part that executes `faults.schedule`
(orchestrator/faults.py plans it): process faults are signals the launch backend sends (kill,
pause, resume, restart), network faults are control messages every node applies to its own
outgoing links (partition, heal, link). A fault `at_step` is fired while the env server holds
that step for it (env_server/step_hold.py), and the step is released once every node a network
fault went to has applied it. Every fault is written to events.jsonl with when it fired on both
clocks; the network faults so far are kept, for nodes that (re)start later to replay.
The runtime's loop (orchestrator/runtime.py) calls it; it owns no socket of its own.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import RunConfig
from orchestrator.faults import FaultClock, ScheduledFault, fired_positions, plan_faults
from orchestrator.node_record import NodeRecord
from orchestrator.rundir import EventLog, read_jsonl
from protocols.codec import messages as m


# How long a step held for its faults waits for every node to say it applied them (at most half
# of protocols.control.step_hold_timeout_s, after which the env server would step on by itself).
FAULT_APPLIED_TIMEOUT_S = 2.0


@dataclass
class NetworkFaultSent:
    """A partition, heal or link change sent to nodes: who has not applied it yet, and after how
    long each of the others did (control.fault_applied)."""

    issued_at: float
    waiting: set[str]
    applied_after_s: dict[str, float] = field(default_factory=dict)


@dataclass
class StepAwaitingFaults:
    """A training step the env server holds while the nodes apply that step's network faults."""

    env_server: str
    step: int
    positions: list[int]  # of the network faults issued at that step
    deadline: float  # monotonic: released then even if a node has not answered


class FaultInjector:
    """Fires the run's scheduled faults and tracks the network faults until applied."""

    def __init__(self, config: RunConfig, run_dir: Path, nodes: dict[str, NodeRecord], backend: Any, control: Any,
                 events: EventLog) -> None:
        self.config, self.nodes, self.backend, self.control, self.events = config, nodes, backend, control, events
        # A resumed run (its events.jsonl already has fault events) goes on with the faults not
        # fired yet; its nodes, all fresh, get the network faults fired before (orchestrator/faults.py).
        planned = {fault.position: fault for fault in plan_faults(config)}
        fired = fired_positions(read_jsonl(run_dir / "events.jsonl")) if planned else []
        self.clock = FaultClock([fault for position, fault in planned.items() if position not in fired])
        self.network_faults: list[m.Partition | m.Heal | m.SetLink] = [  # sent so far, in order
            planned[position].network_message() for position in fired if position in planned and planned[position].is_network]
        self.network_faults_unapplied: dict[int, NetworkFaultSent] = {}  # by schedule position
        self.step_awaiting_faults: StepAwaitingFaults | None = None

    def seconds_to_next(self) -> float | None:
        """How long the loop may wait before a fault is due or a held step must be released."""
        now = time.monotonic()
        waits = [self.clock.seconds_to_next(now)]
        if self.step_awaiting_faults is not None:
            waits.append(max(0.0, self.step_awaiting_faults.deadline - now))
        waits = [wait for wait in waits if wait is not None]
        return min(waits) if waits else None

    def fire_due(self) -> None:
        """Release a held step whose faults are applied (or overdue), and fire the faults due now."""
        self.release_step_once_applied()
        for fault in self.clock.due(time.monotonic(), self.env_step()):
            self.inject(fault)

    def inject(self, fault: ScheduledFault) -> None:
        """Execute one scheduled fault now and record it in events.jsonl."""
        if fault.is_network:
            self._inject_network(fault)
            return
        signum = {"kill": signal.SIGKILL, "restart": signal.SIGKILL, "pause": signal.SIGSTOP, "resume": signal.SIGCONT}[fault.kind]
        hit, skipped = {}, []
        for node_id in fault.targets:
            node = self.nodes[node_id]
            if fault.kind == "restart":
                node.restart_requested = True
            if node.process is None or node.exit_code is not None or node.process.poll() is not None:
                if fault.kind == "restart" and node.exit_code is not None and node.restart_at is None:
                    node.restart_at = time.monotonic()  # down already: start it again now
                    hit[node_id] = None
                else:
                    skipped.append(node_id)  # already gone: nothing to kill, pause or resume
                continue
            if fault.kind in ("kill", "restart"):
                node.killed_by_schedule = True
                node.killed_by_fault = fault
            node.paused_by_schedule = fault.kind == "pause"
            self.backend.signal(node, signum)
            hit[node_id] = node.process.pid
        self.events.write("fault", None, kind=fault.kind, **self._fault_timing(fault), nodes=hit,
                          skipped=skipped, chosen_by=fault.chosen_by, position=fault.position)

    def on_step_held(self, node: NodeRecord, step: int) -> None:
        """The env server holds training step `step` for its scheduled faults (env_server/step_hold.py):
        issue them now, between that step and the next, and let it step on once every node a
        network fault went to has applied it (so none sees the next observation before the fault)."""
        node.held_step = step
        issued = self.clock.due(time.monotonic(), step)
        for fault in issued:
            self.inject(fault)
        positions = [fault.position for fault in issued if fault.position in self.network_faults_unapplied]
        timeout_s = min(FAULT_APPLIED_TIMEOUT_S, self.config.protocols.control.step_hold_timeout_s / 2)
        self.step_awaiting_faults = StepAwaitingFaults(node.launch.node_id, step, positions, time.monotonic() + timeout_s)
        self.release_step_once_applied()

    def on_fault_applied(self, node: NodeRecord, position: int) -> None:
        """A node applied the network fault at `position`; the last one to do so completes it
        (a `fault_applied` event with each node's delay). A restarted node's replayed faults
        were complete already and are not counted again."""
        sent = self.network_faults_unapplied.get(position)
        node_id = node.launch.node_id
        if sent is None or node_id not in sent.waiting:
            return
        sent.waiting.discard(node_id)
        sent.applied_after_s[node_id] = round(time.monotonic() - sent.issued_at, 4)
        if not sent.waiting:
            del self.network_faults_unapplied[position]
            self.events.write("fault_applied", None, position=position, applied_after_s=sent.applied_after_s)

    def release_step_once_applied(self) -> None:
        held = self.step_awaiting_faults
        if held is None:
            return
        missing = {position: sorted(self.network_faults_unapplied[position].waiting)
                   for position in held.positions if position in self.network_faults_unapplied}
        if missing and time.monotonic() < held.deadline:
            return
        if missing:  # a node that died or hangs must not stall the run: the step goes on, logged
            self.events.write("fault_not_applied", None, step=held.step, missing=missing)
        self.step_awaiting_faults = None
        self.control.send(m.ReleaseStep(step=held.step), to=held.env_server)

    def hold_at_step_faults(self, env_server: NodeRecord) -> None:
        """Tell the env server at which training steps faults are still scheduled, so it holds
        each of them for us (sent after control.start: before it, a node's start-up drops it)."""
        steps = sorted({fault.at_step for fault in self.clock.pending_steps})
        if steps:
            self.control.send(m.HoldAtSteps(steps=steps), to=env_server.launch.node_id)

    def env_step(self) -> int | None:
        """The env server's training step: the newer of what its last status reported and the step
        it last held for faults (None before either)."""
        env = next((n for n in self.nodes.values() if n.launch.role == "env_server"), None)
        if env is None:
            return None
        steps = [step for step in (None if env.last_status is None else env.last_status.step, env.held_step) if step is not None]
        return max(steps) if steps else None

    def _fault_timing(self, fault: ScheduledFault) -> dict[str, float | int | None]:
        """When a fault fired, on both clocks: seconds since the start (`run_s`) and the env
        server's last reported step (`step`), with how late it was on the clock it was set on
        (`late_s` for an `at_s` fault; `late_steps` for an `at_step` one, at most the steps of
        one status period)."""
        run_s = self.clock.run_s(time.monotonic()) or 0.0
        step = self.env_step()
        timing: dict[str, float | int | None] = {"run_s": round(run_s, 3), "step": step}
        if fault.at_s is not None:
            timing.update(at_s=fault.at_s, late_s=round(run_s - fault.at_s, 3))
        else:
            timing.update(at_step=fault.at_step, late_steps=None if step is None else step - fault.at_step)
        return timing

    def _inject_network(self, fault: ScheduledFault) -> None:
        """A partition, heal or link change: its control message to every node whose outgoing
        links it changes (a node drops or delays what it sends). It is kept for nodes that
        restart later, whose fresh link tables get every network fault so far (`on_ready`)."""
        message = fault.network_message()
        self.network_faults.append(message)
        sent, skipped = {}, []
        for node_id in fault.recipients(list(self.nodes)):
            node = self.nodes[node_id]
            if node.registered and node.exit_code is None and node.process is not None and node.process.poll() is None:
                self.control.send(message, to=node_id)
                sent[node_id] = node.process.pid
            else:
                skipped.append(node_id)  # down (or restarting): it gets the history when it is ready
        if sent:
            self.network_faults_unapplied[fault.position] = NetworkFaultSent(time.monotonic(), set(sent))
        details = {"groups": [list(g) for g in fault.groups]} if fault.kind == "partition" else {}
        if fault.kind == "link":
            details = {"edges": [list(e) for e in fault.edges], "link": fault.link.model_dump(exclude_defaults=True)}
        self.events.write("fault", None, kind=fault.kind, **self._fault_timing(fault), targets=list(fault.targets),
                          nodes=sent, skipped=skipped, chosen_by=fault.chosen_by, position=fault.position, **details)

