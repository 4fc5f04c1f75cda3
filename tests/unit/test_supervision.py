"""The supervision engines (protocols/engines/supervision.py): the team's smallest node id, or an external
supervisor node, assigns the team's goal."""

from __future__ import annotations

import pytest

from agent_node.goals.modules import SupervisorAssignment
from agent_node.goals.supervisor import restore_checkpoint, save_checkpoint
from protocols.storage.durable_state import DamagedStateError
from protocols.codec import wire
from protocols.goal_spaces.goal_space import goal_set
from protocols.engines.engine import Engine
from protocols.codec.messages import MESSAGE_TYPES
from protocols.engines.supervision import (
    GoalAssignment,
    GoalRequest,
    SupervisionEngine,
    SupervisionRequest,
    SupervisorService,
    supervisor_of,
)


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


# ---------------------------------------------------------------- an external supervisor node


def test_with_an_external_supervisor_a_member_asks_it_and_takes_only_its_answer():
    engine = SupervisionEngine("agent_1", timeout_s=1.0, external_supervisor="supervisor")
    sent = engine.start(SupervisionRequest(4, ["agent_2", "agent_0"], draw=3), now=0.0)
    assert sent == [("supervisor", GoalRequest(4, ["agent_0", "agent_1", "agent_2"]))], "the whole team, sorted"
    assert not engine.done and engine.next_deadline() == 1.0
    engine.on_message("agent_0", GoalAssignment(4, 5), now=0.1)  # a teammate is not the supervisor here
    assert not engine.done and engine.stale_messages == 1
    engine.on_message("supervisor", GoalAssignment(4, 9), now=0.2)
    assert engine.result.goal == 9 and not engine.result.supervised and not engine.result.timed_out
    assert engine.result.supervisor == "supervisor"


def test_an_external_supervisor_that_never_answers_leaves_the_own_draw():
    engine = SupervisionEngine("agent_0", timeout_s=0.5, external_supervisor="supervisor")
    engine.start(SupervisionRequest(0, ["agent_1"], draw=6), now=0.0)
    engine.on_timer(0.5)
    assert engine.result.goal == 6 and engine.result.timed_out
    with pytest.raises(ValueError, match="cannot be its own external supervisor"):
        SupervisionEngine("supervisor", external_supervisor="supervisor")


def test_an_answer_that_came_before_the_members_own_start_is_taken_at_its_start():
    engine = SupervisionEngine("agent_1", timeout_s=1.0, external_supervisor="supervisor")
    engine.on_message("supervisor", GoalAssignment(2, 4), now=0.0)
    sent = engine.start(SupervisionRequest(2, ["agent_0"], draw=3), now=0.1)
    assert sent == [("supervisor", GoalRequest(2, ["agent_0", "agent_1"]))] and engine.result.goal == 4


def test_the_supervisor_node_draws_once_per_team_and_episode_and_answers_every_member_alike():
    draws = []

    def draw(episode, team):
        draws.append((episode, tuple(team)))
        return 10 + len(draws)

    service = SupervisorService(draw)
    team = ["agent_0", "agent_1"]
    first = service.on_message("agent_1", GoalRequest(0, team), now=0.0)
    second = service.on_message("agent_0", GoalRequest(0, list(reversed(team))), now=0.1)
    assert first == [("agent_1", GoalAssignment(0, 11))] and second == [("agent_0", GoalAssignment(0, 11))]
    other_team = service.on_message("agent_2", GoalRequest(0, ["agent_2", "agent_3"]), now=0.2)
    next_episode = service.on_message("agent_0", GoalRequest(40, team), now=0.3)
    assert other_team == [("agent_2", GoalAssignment(0, 12))] and next_episode == [("agent_0", GoalAssignment(40, 13))]
    assert draws == [(0, ("agent_0", "agent_1")), (0, ("agent_2", "agent_3")), (40, ("agent_0", "agent_1"))]
    assert service.metrics()["supervisor/requests"] == 4.0 and service.metrics()["supervisor/teams_assigned"] == 3.0


def test_the_supervisor_node_refuses_a_request_from_outside_the_team_it_names():
    service = SupervisorService(lambda episode, team: 1)
    assert service.on_message("agent_5", GoalRequest(0, ["agent_0", "agent_1"]), now=0.0) == []
    assert service.metrics()["supervisor/refused_requests"] == 1.0 and service.metrics()["supervisor/teams_assigned"] == 0.0


def test_the_supervisor_node_forgets_old_episodes_and_redraws_for_a_very_late_member():
    counter = iter(range(100))
    service = SupervisorService(lambda episode, team: next(counter), keep_episodes=2)
    for episode in range(4):
        service.on_message("agent_0", GoalRequest(episode, ["agent_0", "agent_1"]), now=float(episode))
    assert service.on_message("agent_1", GoalRequest(3, ["agent_0", "agent_1"]), now=4.0) == [("agent_1", GoalAssignment(3, 3))]
    late = service.on_message("agent_1", GoalRequest(0, ["agent_0", "agent_1"]), now=5.0)
    assert late == [("agent_1", GoalAssignment(0, 4))], "episode 0 was forgotten: a new draw"
    assert service.metrics()["supervisor/redrawn_for_late_members"] == 1.0
    with pytest.raises(ValueError, match="keep_episodes"):
        SupervisorService(lambda episode, team: 0, keep_episodes=0)


def test_the_request_round_trips_on_the_wire():
    assert MESSAGE_TYPES["goal.request"] is GoalRequest
    frames = wire.encode(GoalRequest(3, ["agent_0", "agent_1"]), sender="agent_0", run_id="r", seq=1)
    assert wire.decode([bytes(frame) for frame in frames]).message == GoalRequest(3, ["agent_0", "agent_1"])


def supervisor_pair(seed=7):
    """The supervisor node's two parts, as agent_node/goals/supervisor.py builds them."""
    draws = SupervisorAssignment(goal_set("all", 3), seed=seed)
    return draws, SupervisorService(lambda episode, team: draws.assign(episode, team)[team[0]])


def test_a_restored_supervisor_answers_late_members_alike_and_draws_on_as_if_never_stopped(tmp_path):
    team = ["agent_0", "agent_1"]
    uninterrupted_draws, uninterrupted = supervisor_pair()
    draws, service = supervisor_pair()
    for episode in range(5):
        expected = uninterrupted.on_message("agent_0", GoalRequest(episode, team), now=0.0)
        assert service.on_message("agent_0", GoalRequest(episode, team), now=0.0) == expected
    path = tmp_path / "checkpoint.json"
    save_checkpoint(path, draws, service)

    restored_draws, restored = supervisor_pair(seed=99)  # another seed: everything must come from the file
    assert restore_checkpoint(path, restored_draws, restored)
    # agent_1 asks for episode 4 only after the restart: its team's goal, not a new draw.
    late = restored.on_message("agent_1", GoalRequest(4, team), now=1.0)
    assert late == uninterrupted.on_message("agent_1", GoalRequest(4, team), now=1.0)
    assert restored.metrics() == uninterrupted.metrics()
    for episode in range(5, 30):
        assert restored.on_message("agent_0", GoalRequest(episode, team), now=2.0) == \
            uninterrupted.on_message("agent_0", GoalRequest(episode, team), now=2.0)


def test_no_checkpoint_is_a_first_start_and_a_broken_one_is_an_error_naming_the_file(tmp_path):
    from protocols.storage.files import atomic_write

    draws, service = supervisor_pair()
    assert not restore_checkpoint(tmp_path / "checkpoint.json", draws, service)
    broken = tmp_path / "broken.json"
    # Unsealed (another program's, or cut short): refused before JSON reads it.
    broken.write_text('{"format": 1, "draws": {}, "service": {}}')
    with pytest.raises(DamagedStateError, match="broken.json: no Parley seal"):
        restore_checkpoint(broken, *supervisor_pair())
    # Sealed, but not a state this supervisor can take.
    for text in ("{not json", '{"format": 0}', '{"format": 1, "draws": {}, "service": {"draws": 3}}'):
        atomic_write(broken, lambda file: file.write(text.encode()), sealed=True)
        with pytest.raises(DamagedStateError, match="broken.json: sealed, but the supervisor's state cannot be restored"):
            restore_checkpoint(broken, *supervisor_pair())
    # A state over another goal set is refused too (SupervisorAssignment checks its goals).
    other_draws = SupervisorAssignment(goal_set("all", 6), seed=7)
    save_checkpoint(broken, other_draws, SupervisorService(lambda episode, team: 0))
    with pytest.raises(DamagedStateError, match="cannot be restored"):
        restore_checkpoint(broken, *supervisor_pair())


def _draw(service, episodes) -> None:
    team = ["agent_0", "agent_1"]
    for episode in episodes:
        service.on_message("agent_0", GoalRequest(episode, team), now=0.0)


def test_the_supervisor_keeps_k_generations_and_falls_back_past_a_damaged_one_counting_the_draws_lost(tmp_path):
    from agent_node.goals.supervisor import SupervisorPersistence

    draws, service = supervisor_pair()
    saving = SupervisorPersistence(tmp_path, keep_generations=2)
    for episode in range(4):
        _draw(service, [episode])
        saving.save(draws, service)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest.json", "step-000000003.json", "step-000000004.json"]
    newest = checkpoints / "step-000000004.json"
    newest.write_bytes(newest.read_bytes()[:-5])  # cut short
    damaged = newest.read_bytes()

    restoring = SupervisorPersistence(tmp_path, keep_generations=2)
    restored_draws, restored = supervisor_pair(seed=99)
    assert restoring.restore(restored_draws, restored)
    assert restored.teams_assigned == 3
    notice = restoring.notice
    assert notice.restored_from_step == 3 and notice.steps_lost == 1 and not notice.started_fresh
    assert str(newest) in notice.what and "1 team goal draws lost" in notice.what
    # Set aside as it was, never written over; the next save takes its place.
    assert (checkpoints / "step-000000004.json.damaged").read_bytes() == damaged
    _draw(restored, [3])
    restoring.save(restored_draws, restored)
    assert (checkpoints / "step-000000004.json.damaged").read_bytes() == damaged
    assert restore_checkpoint(checkpoints / "latest.json", *supervisor_pair())


def test_the_supervisor_with_no_good_generation_stops_or_with_start_fresh_starts_from_scratch_saying_so(tmp_path):
    from agent_node.goals.supervisor import SupervisorPersistence

    draws, service = supervisor_pair()
    saving = SupervisorPersistence(tmp_path)
    for episode in range(2):
        _draw(service, [episode])
        saving.save(draws, service)
    for path in (tmp_path / "checkpoints").glob("step-*.json"):
        path.write_bytes(b"random bytes, not a checkpoint")
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("step-*")}
    with pytest.raises(DamagedStateError, match="no good generation is left"):
        SupervisorPersistence(tmp_path).restore(*supervisor_pair())
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("step-*")} == before  # untouched

    fresh = SupervisorPersistence(tmp_path, start_fresh=True)
    fresh_draws, fresh_service = supervisor_pair()
    assert not fresh.restore(fresh_draws, fresh_service)
    assert fresh_service.teams_assigned == 0
    assert fresh.notice.started_fresh and fresh.notice.steps_lost == 2 and fresh.notice.restored_from_step == 0
    assert "started from scratch (run.on_corrupt_state: start_fresh)" in fresh.notice.what
    assert {p.name.removesuffix(".damaged"): p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.damaged")} == before
