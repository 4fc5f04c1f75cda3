"""The fault schedule (`faults.schedule`): which fault hits which nodes when, as pure data.

`plan_faults(config)` resolves every event's targets — node ids as given, every node of a role,
or a seeded random draw (derive_seed(run.seed, <position in the schedule>, "faults")) — once,
before the run, so the same config and seed always hit the same nodes. `FaultClock` hands the
orchestrator the faults that are due: an `at_s` fault counted from the moment the run started
(every node ready), an `at_step` fault once the env server's training step has reached it. The
orchestrator tells the env server those steps after the start (`control.hold_at_steps`); the
server holds each of them and says `control.step_held`, so the fault hits between that step
and the next (env_server/step_hold.py). A step the server had passed before it was told (or
any step, should the hold not happen) is caught by its `control.status` reports instead, as
late as one `protocols.control.status_every_s`. The orchestrator (orchestrator/runtime.py)
executes the due faults and writes a `fault` event for each to events.jsonl, with the seconds
since the start and the env step last reported.

Process faults (kill, pause, resume, restart) are signals to the targets. Network faults
(partition, heal, link) are control messages (`network_message`) to the nodes whose outgoing
links they change — link emulation lives in each node's transport hub, so a node drops or
delays what it sends: a partition goes to every node of its groups, a heal to every node, a
link change to the source node of each directed edge. Their plans carry the resolved
`groups` and directed `edges`. The semantics of each kind are in `FaultEvent`'s docstring
(orchestrator/config.py).

A resumed run (`orchestrate resume`) goes on with the faults its earlier orchestrators had not
fired yet (`fired_positions`, from the `fault` events of events.jsonl), and hands its nodes,
all started fresh, the network faults already fired, in the order they fired. Only `at_step`
faults resume faithfully (the env server's step goes on from its resume point, a time does
not), so `orchestrate resume` refuses a run with an `at_s` fault that has not fired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.config import EXECUTED_FAULTS, NETWORK_FAULT_KINDS, REFUSED_FAULTS, RunConfig, communication_links
from protocols.codec import messages as m
from protocols.net.links import LinkConfig
from protocols.seeds import derive_seed
from protocols.run.settings import ENV_NODE_ID, agent_node_ids

FAULT_SEED_STREAM = "faults"


@dataclass(frozen=True)
class ScheduledFault:
    position: int  # in faults.schedule
    at_s: float | None  # after the run started; None for a fault at a step
    kind: str  # kill | pause | resume | restart | partition | heal | link
    targets: tuple[str, ...]  # heal: empty means every link
    chosen_by: str  # nodes | role | random | groups | edges | all
    # partition: the islands (targets and everyone else, or the configured groups)
    groups: tuple[tuple[str, ...], ...] = ()
    # link: the directed (src, dst) links whose profile changes, and the new profile
    edges: tuple[tuple[str, str], ...] = ()
    link: LinkConfig | None = None
    at_step: int | None = None  # the env server's training step; None for a fault at a time

    @property
    def setting(self) -> str:
        """How the schedule set it: `at_s 1.0` or `at_step 500`."""
        return f"at_s {self.at_s}" if self.at_s is not None else f"at_step {self.at_step}"

    @property
    def when(self) -> str:
        return f"+{self.at_s:g}s" if self.at_s is not None else f"@step {self.at_step}"

    def describe(self) -> str:
        """One line for `orchestrate up --dry-run`: when, what, whom."""
        line = f"{self.when} {self.kind} {', '.join(self.targets) or '-'} (by {self.chosen_by})"
        if self.kind == "partition":
            line += " groups " + " | ".join(", ".join(group) for group in self.groups)
        elif self.kind == "link":
            line += f" edges {', '.join(f'{a}->{b}' for a, b in self.edges)} set to {self.link.model_dump(exclude_defaults=True) or 'ideal'}"
        return line

    @property
    def is_network(self) -> bool:
        return self.kind in NETWORK_FAULT_KINDS

    def recipients(self, all_nodes: list[str]) -> list[str]:
        """The nodes whose outgoing links this network fault changes (they get the message)."""
        if self.kind == "partition":
            members = {node for group in self.groups for node in group}
        elif self.kind == "link":
            members = {src for src, _ in self.edges}
        else:  # heal: every node may hold a block towards a healed node
            members = set(all_nodes)
        return [node for node in all_nodes if node in members]

    def network_message(self) -> m.Partition | m.Heal | m.SetLink:
        """The control message that makes a node apply this network fault."""
        if self.kind == "partition":
            return m.Partition(groups=[list(group) for group in self.groups], position=self.position)
        if self.kind == "heal":
            return m.Heal(nodes=list(self.targets), position=self.position)
        if self.kind == "link":
            return m.SetLink(edges=[list(edge) for edge in self.edges], link=self.link.model_dump(exclude_defaults=True),
                             position=self.position)
        raise ValueError(f"a {self.kind!r} fault is a signal, not a network message")


def refused_faults(config: RunConfig) -> list[str]:
    """One problem per scheduled fault that `orchestrate up` cannot execute."""
    return [
        f"faults.schedule.{position}.kind: expected one of {', '.join(EXECUTED_FAULTS)}; "
        f"{event.kind!r} is not executed yet: {REFUSED_FAULTS[event.kind]}"
        for position, event in enumerate(config.faults.schedule)
        if event.kind not in EXECUTED_FAULTS
    ]


def _role_nodes(config: RunConfig, role: str) -> list[str]:
    return agent_node_ids(config.agents.count) if role == "agent" else [ENV_NODE_ID]


def plan_faults(config: RunConfig) -> list[ScheduledFault]:
    """Every scheduled fault with its targets resolved, in the order they fire (ties: schedule order)."""
    planned = []
    for position, event in enumerate(config.faults.schedule):
        if event.nodes:
            targets, chosen_by = tuple(event.nodes), "nodes"
        elif event.role is not None:
            targets, chosen_by = tuple(_role_nodes(config, event.role)), "role"
        elif event.random is not None:
            pool = _role_nodes(config, event.random.role)
            rng = np.random.default_rng(derive_seed(config.run.seed, position, FAULT_SEED_STREAM))
            picked = sorted(rng.choice(len(pool), size=event.random.count, replace=False).tolist())
            targets, chosen_by = tuple(pool[i] for i in picked), "random"
        else:
            targets, chosen_by = (), "all"
        groups: tuple[tuple[str, ...], ...] = ()
        edges: tuple[tuple[str, str], ...] = ()
        if event.kind == "partition":
            if event.groups:
                groups, chosen_by = tuple(tuple(group) for group in event.groups), "groups"
                targets = tuple(node for group in groups for node in group)
            else:
                rest = tuple(node for node in config.node_ids() if node not in targets)
                groups = (targets, rest)
        elif event.kind == "link":
            links = communication_links(config.build_topology(), agent_node_ids(config.agents.count))
            if event.edges:
                chosen_by = "edges"
                pairs = [(a, b) for a, b in event.edges] + [(b, a) for a, b in event.edges]
                targets = tuple(node for node in config.node_ids() if any(node in edge for edge in event.edges))
            else:
                pairs = [link for link in links if link[0] in targets or link[1] in targets]
            edges = tuple(sorted(set(pairs)))
        planned.append(ScheduledFault(position, event.at_s, event.kind, targets, chosen_by, groups, edges, event.link,
                                      at_step=event.at_step))
    # Time faults first, then step faults (the two clocks cannot be ordered against each other
    # before the run); each in the order they fire, ties in schedule order.
    return sorted(planned, key=lambda fault: (fault.at_s is None, fault.at_s or 0.0, fault.at_step or 0, fault.position))


class FaultClock:
    """Which planned faults are due, `started_at` being the run's start (monotonic seconds) and
    `env_step` the env server's training step as last reported (None before its first report)."""

    def __init__(self, faults: list[ScheduledFault]) -> None:
        self.pending = sorted((f for f in faults if f.at_s is not None), key=lambda f: (f.at_s, f.position))
        self.pending_steps = sorted((f for f in faults if f.at_s is None), key=lambda f: (f.at_step, f.position))
        self.started_at: float | None = None

    def start(self, now: float) -> None:
        self.started_at = now

    def due(self, now: float, env_step: int | None = None) -> list[ScheduledFault]:
        """The faults due now, in the order to execute them (time faults, then step faults)."""
        if self.started_at is None:
            return []
        ready = [fault for fault in self.pending if self.started_at + fault.at_s <= now]
        self.pending = self.pending[len(ready) :]
        if env_step is not None:
            reached = [fault for fault in self.pending_steps if fault.at_step <= env_step]
            self.pending_steps = self.pending_steps[len(reached) :]
            ready += reached
        return ready

    def seconds_to_next(self, now: float) -> float | None:
        """How long until the next time fault (step faults wake the loop with the status that
        reports their step)."""
        if self.started_at is None or not self.pending:
            return None
        return max(0.0, self.started_at + self.pending[0].at_s - now)

    def run_s(self, now: float) -> float | None:
        """Seconds since the run started, or None before it."""
        return None if self.started_at is None else now - self.started_at


def fired_positions(events: list[dict]) -> list[int]:
    """The schedule positions of the faults fired so far in a run directory's events.jsonl
    records (a resumed run's earlier orchestrators), in the order they fired, each once."""
    fired: list[int] = []
    for record in events:
        position = record.get("position")
        if record.get("event") == "fault" and isinstance(position, int) and position not in fired:
            fired.append(position)
    return fired


def unresumable_faults(planned: list[ScheduledFault], fired: list[int]) -> list[str]:
    """One problem per fault a resumed run could not fire faithfully: an `at_s` fault that has
    not fired (the resumed run's clock starts again at 0, so it would hit at another moment)."""
    return [f"faults.schedule.{fault.position} ({fault.kind} at_s {fault.at_s:g}) has not fired, and a time "
            "cannot be resumed (use at_step, which goes on from the resume point)"
            for fault in planned if fault.at_s is not None and fault.position not in fired]
