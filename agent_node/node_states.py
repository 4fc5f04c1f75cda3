"""The agent node's states and the transitions allowed between them (agent_node/node.py's loop).

    booting ─▶ connecting ─▶ ready ─▶ running ─▶ draining ─▶ stopped
                   │           │        │  ▲
                   │           │        ▼  │  (averaging, negotiating, sharing: a capability
                   └───────────┴──▶ draining   holds the observation meanwhile)
"""

from __future__ import annotations

import enum


class NodeState(enum.Enum):
    BOOTING = "booting"
    CONNECTING = "connecting"
    READY = "ready"
    NEGOTIATING = "negotiating"
    RUNNING = "running"
    SHARING = "sharing"
    AVERAGING = "averaging"
    DRAINING = "draining"
    STOPPED = "stopped"


S = NodeState
ALLOWED_TRANSITIONS: dict[NodeState, set[NodeState]] = {
    S.BOOTING: {S.CONNECTING, S.STOPPED},
    S.CONNECTING: {S.READY, S.DRAINING},
    S.READY: {S.RUNNING, S.DRAINING},
    S.RUNNING: {S.NEGOTIATING, S.SHARING, S.AVERAGING, S.DRAINING},
    S.NEGOTIATING: {S.RUNNING, S.DRAINING},
    S.SHARING: {S.RUNNING, S.DRAINING},
    S.AVERAGING: {S.RUNNING, S.DRAINING},
    S.DRAINING: {S.STOPPED},
    S.STOPPED: set(),
}


class IllegalTransition(RuntimeError):
    pass


def check_transition(old: NodeState, new: NodeState) -> None:
    if new not in ALLOWED_TRANSITIONS[old]:
        allowed = ", ".join(sorted(state.value for state in ALLOWED_TRANSITIONS[old])) or "none"
        raise IllegalTransition(f"{old.value} -> {new.value} is not an allowed transition (from {old.value}: {allowed})")
