"""The supervision engine (protocols/supervision.py): the smallest node id assigns the team's goal."""

from __future__ import annotations

import pytest

from protocols import wire
from protocols.engine import Engine
from protocols.messages import MESSAGE_TYPES
from protocols.supervision import GoalAssignment, SupervisionEngine, SupervisionRequest, supervisor_of


def test_is_an_engine_and_the_supervisor_is_the_smallest_node_id():
    engine = SupervisionEngine("agent_1")
    engine.start(SupervisionRequest(0, [], draw=1), now=0.0)
    assert isinstance(engine, Engine)  # (checked once done: `result` raises before, as the interface says)
    assert supervisor_of("agent_2", ["agent_1", "agent_3"]) == "agent_1"
    assert supervisor_of("agent_0", []) == "agent_0"


def test_the_supervisor_decides_at_once_and_tells_the_team():
    engine = SupervisionEngine("agent_0")
    sent = engine.start(SupervisionRequest(4, ["agent_1", "agent_2"], draw=7), now=0.0)
    assert sent == [("agent_1", GoalAssignment(4, 7)), ("agent_2", GoalAssignment(4, 7))]
    assert engine.done and engine.result.goal == 7 and engine.result.supervised and engine.next_deadline() is None


def test_a_member_takes_the_assignment_buffered_early_and_ignores_foreign_or_stale_ones():
    engine = SupervisionEngine("agent_2", timeout_s=1.0)
    engine.on_message("agent_0", GoalAssignment(4, 9), now=0.0)  # the supervisor started first
    engine.start(SupervisionRequest(4, ["agent_0", "agent_1"], draw=3), now=0.1)
    assert engine.done and engine.result.goal == 9 and not engine.result.timed_out
    engine.on_message("agent_1", GoalAssignment(4, 5), now=0.2)  # not the supervisor, and late
    assert engine.result.goal == 9 and engine.stale_messages == 1
    engine.start(SupervisionRequest(8, ["agent_0"], draw=3), now=1.0)
    engine.on_message("agent_1", GoalAssignment(8, 5), now=1.1)  # not the supervisor
    assert not engine.done and engine.stale_messages == 2


def test_deadline_and_a_dead_supervisor_fall_back_to_the_own_draw():
    engine = SupervisionEngine("agent_1", timeout_s=0.5)
    engine.start(SupervisionRequest(0, ["agent_0"], draw=6), now=10.0)
    assert engine.next_deadline() == 10.5
    engine.on_timer(10.4)
    assert not engine.done
    engine.on_timer(10.5)
    assert engine.result.goal == 6 and engine.result.timed_out and engine.metrics()["supervision/timed_out"] == 1.0
    engine.start(SupervisionRequest(1, ["agent_0"], draw=8), now=11.0)
    engine.on_neighbour_down("agent_0", now=11.1)
    assert engine.result.goal == 8 and engine.result.timed_out
    with pytest.raises(ValueError, match="increase"):
        engine.start(SupervisionRequest(1, ["agent_0"], draw=8), now=12.0)


def test_the_assignment_round_trips_on_the_wire():
    assert MESSAGE_TYPES["goal.assignment"] is GoalAssignment
    frames = wire.encode(GoalAssignment(3, 11), sender="agent_0", run_id="r", seq=1)
    assert wire.decode([bytes(frame) for frame in frames]).message == GoalAssignment(3, 11)
