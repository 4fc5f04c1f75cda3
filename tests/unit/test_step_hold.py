"""env_server/step_hold.py: holding the lockstep at a step with a scheduled fault, sans-IO."""

from __future__ import annotations

import pytest

from env_server.step_hold import StepHold


def test_only_marked_steps_are_held_and_each_mark_holds_once():
    hold = StepHold(timeout_s=10.0)
    hold.set_marks([5, 9])
    assert [step for step in range(12) if hold.should_hold(step)] == [5, 9]
    hold.hold(5, "payload of 5", now=100.0)
    assert hold.holding and hold.next_deadline() == 110.0
    assert hold.release(5).payload == "payload of 5"
    # After a restart the run may come back to step 5: it is not held a second time.
    assert not hold.should_hold(5) and hold.should_hold(9)


def test_new_marks_replace_the_old_ones():
    hold = StepHold(timeout_s=10.0)
    hold.set_marks([5, 9])
    hold.set_marks([12])
    assert not hold.should_hold(5) and not hold.should_hold(9) and hold.should_hold(12)


def holding(step: int, *, timeout_s: float, now: float) -> StepHold:
    """A hold marked at `step` alone and holding the payload "held" there since `now`."""
    hold = StepHold(timeout_s=timeout_s)
    hold.set_marks([step])
    hold.hold(step, "held", now=now)
    return hold


def test_a_release_for_another_step_or_a_second_release_is_ignored():
    hold = holding(5, timeout_s=10.0, now=0.0)
    assert hold.release(4) is None and hold.holding
    released = hold.release(5)
    assert released.step == 5 and released.payload == "held" and not released.timed_out
    assert hold.release(5) is None
    assert hold.released_by_orchestrator == 1 and hold.released_by_timeout == 0


def test_the_hold_ends_by_itself_at_its_deadline():
    hold = holding(3, timeout_s=2.5, now=10.0)
    assert hold.on_timer(12.4) is None and hold.holding
    released = hold.on_timer(12.5)
    assert released.payload == "held" and released.timed_out and released.since == 10.0
    assert not hold.holding and hold.next_deadline() is None
    assert hold.release(3) is None, "a release that comes after the deadline finds nothing held"
    assert hold.released_by_timeout == 1


def test_nothing_held_means_no_deadline_and_nothing_on_the_timer():
    hold = StepHold(timeout_s=1.0)
    assert hold.next_deadline() is None and hold.on_timer(1e9) is None


def test_a_second_hold_while_one_is_held_is_a_bug_not_a_silent_overwrite():
    hold = StepHold(timeout_s=1.0)
    hold.set_marks([1, 2])
    hold.hold(1, "first", now=0.0)
    with pytest.raises(RuntimeError, match="step 2 reached while step 1 is still held"):
        hold.hold(2, "second", now=0.1)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_the_timeout_must_be_positive(timeout_s):
    with pytest.raises(ValueError, match="step_hold_timeout_s must be > 0"):
        StepHold(timeout_s)
