"""The fault schedule (`faults.schedule`): which fault hits which nodes when, as pure data.

`plan_faults(config)` resolves every event's targets — node ids as given, every node of a role,
or a seeded random draw (derive_seed(run.seed, <position in the schedule>, "faults")) — once,
before the run, so the same config and seed always hit the same nodes. `FaultClock` hands the
orchestrator the faults that are due, counted from the moment the run started (every node
ready); the orchestrator (orchestrator/runtime.py) sends the signals and writes a `fault` event
for each to events.jsonl.

Executed: kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT). Known but refused by
`orchestrate up`: restart, partition, heal (`refused_faults` says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.config import EXECUTED_FAULTS, REFUSED_FAULTS, RunConfig
from protocols.seeds import derive_seed
from protocols.settings import ENV_NODE_ID, agent_node_ids

FAULT_SEED_STREAM = "faults"


@dataclass(frozen=True)
class ScheduledFault:
    position: int  # in faults.schedule
    at_s: float  # after the run started
    kind: str  # kill | pause | resume
    targets: tuple[str, ...]
    chosen_by: str  # nodes | role | random


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
            targets, chosen_by = (), "nodes"
        planned.append(ScheduledFault(position, event.at_s, event.kind, targets, chosen_by))
    return sorted(planned, key=lambda fault: (fault.at_s, fault.position))


class FaultClock:
    """Which planned faults are due, `started_at` being the run's start (monotonic seconds)."""

    def __init__(self, faults: list[ScheduledFault]) -> None:
        self.pending = list(faults)
        self.started_at: float | None = None

    def start(self, now: float) -> None:
        self.started_at = now

    def due(self, now: float) -> list[ScheduledFault]:
        if self.started_at is None:
            return []
        ready = [fault for fault in self.pending if self.started_at + fault.at_s <= now]
        self.pending = self.pending[len(ready) :]
        return ready

    def seconds_to_next(self, now: float) -> float | None:
        if self.started_at is None or not self.pending:
            return None
        return max(0.0, self.started_at + self.pending[0].at_s - now)
