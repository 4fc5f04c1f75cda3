"""The consensus session: held observation, engine driving, adoption and metrics (no sockets)."""

from __future__ import annotations

import numpy as np
import pytest

from agent_node.consensus.session import ConsensusSession
from agent_node.consensus.subjects import PolicyParameters
from protocols.codec import messages as m
from protocols.engines.consensus import SyncConsensus
from protocols.net.links import LinkConfig
from protocols.sim.netsim import StepNetwork


class RecordingSubject:
    """A ConsensusSubject over fixed tensors that records what it adopted."""

    def __init__(self, value: float) -> None:
        self.tensors = {"w": np.full(3, value)}
        self.adopted: list = []

    def tick(self, step: int) -> int | None:
        return None if step < 10 else step // 10 * 10

    def prepare(self, tick: int) -> dict[str, np.ndarray]:
        return {name: tensor.copy() for name, tensor in self.tensors.items()}

    def adopt(self, averaged, num_agents):
        self.adopted.append((None if averaged is None else {k: v.copy() for k, v in averaged.items()}, num_agents))
        return {"consensus/adopted": 1.0}


def held(step: int) -> m.EnvObservation:
    return m.EnvObservation(
        step=step, observations={}, rewards={}, terminated={}, truncated={}, active={},
        final_observations={}, episode_start=np.zeros(1, bool),
    )


def pair(rounds: int = 2, timeout: float = 1.0):
    subjects = {"a": RecordingSubject(0.0), "b": RecordingSubject(4.0)}
    sessions = {
        "a": ConsensusSession(SyncConsensus("a", {"b": 0.5}, 0.5, rounds, timeout), subjects["a"], num_agents=2),
        "b": ConsensusSession(SyncConsensus("b", {"a": 0.5}, 0.5, rounds, timeout), subjects["b"], num_agents=2),
    }
    return sessions, subjects


def deliver(sessions, outgoing_by_sender, now):
    """Deliver every message until none is left; returns nothing, sessions progress."""
    queue = [(sender, dest, msg) for sender, out in outgoing_by_sender.items() for dest, msg in out]
    while queue:
        sender, dest, msg = queue.pop(0)
        queue.extend((dest, d, reply) for d, reply in sessions[dest].on_message(sender, msg, now))


def test_two_sessions_average_release_the_held_observation_and_write_round_and_summary_metrics():
    sessions, subjects = pair(rounds=2)
    assert sessions["a"].due(20) == 20
    observation = held(20)
    outgoing = {"a": sessions["a"].begin(observation, 20, now=100.0)}
    assert sessions["a"].due(21) is None  # tick 20 is begun
    assert sessions["a"].averaging and sessions["a"].finish_if_done(100.0) is None
    assert sessions["a"].next_deadline() is not None
    outgoing["b"] = sessions["b"].begin(held(20), 20, now=100.2)
    deliver(sessions, outgoing, now=100.3)

    finished = sessions["a"].finish_if_done(now=100.5)
    assert finished.held is observation and not sessions["a"].averaging
    assert sessions["a"].next_deadline() is None
    averaged, num_agents = subjects["a"].adopted[0]
    np.testing.assert_allclose(averaged["w"], 2.0)
    assert num_agents == 2
    rounds = [r for r in finished.records if "consensus/round" in r]
    assert [r["consensus/round"] for r in rounds] == [0.0, 1.0]
    assert any(r.get("consensus/rounds") == 2.0 for r in finished.records)  # the engine's summary
    assert finished.records[-1] == {"consensus/adopted": 1.0, "consensus/duration_s": pytest.approx(0.5)}
    assert sessions["b"].finish_if_done(now=101.0).held.step == 20
    assert sessions["a"].finish_if_done(now=102.0) is None  # released once


def test_a_silent_neighbour_lets_the_session_finish_with_local_values_at_its_deadline():
    sessions, subjects = pair(rounds=1, timeout=0.5)
    sessions["a"].begin(held(10), 10, now=0.0)
    deadline = sessions["a"].next_deadline()
    assert deadline == pytest.approx(0.5)
    assert sessions["a"].on_timer(0.2) == [] and sessions["a"].finish_if_done(0.2) is None  # early: nothing
    sessions["a"].on_timer(deadline)
    finished = sessions["a"].finish_if_done(now=deadline)
    assert finished is not None and finished.held.step == 10
    np.testing.assert_allclose(subjects["a"].adopted[0][0]["w"], 0.0)  # nobody was mixed in
    summary = next(r for r in finished.records if "consensus/rounds" in r)
    assert summary["consensus/missing_neighbours"] == 1.0


def test_a_neighbour_declared_down_ends_the_wait_at_once():
    sessions, subjects = pair(rounds=1, timeout=30.0)
    sessions["a"].begin(held(10), 10, now=0.0)
    sessions["a"].on_neighbour_down("b", now=0.1)
    finished = sessions["a"].finish_if_done(now=0.1)
    assert finished is not None
    np.testing.assert_allclose(subjects["a"].adopted[0][0]["w"], 0.0)


def test_without_an_engine_the_local_tensors_are_adopted_at_once():
    subject = RecordingSubject(1.0)
    session = ConsensusSession(None, subject, num_agents=3)
    assert session.begin(held(30), 30, now=5.0) == []
    assert session.on_message("x", object(), now=5.0) == []  # shares with consensus off are dropped
    assert session.next_deadline() is None
    finished = session.finish_if_done(now=5.25)
    assert finished.held.step == 30
    assert subject.adopted == [(None, 3)]
    assert finished.records == [{"consensus/adopted": 1.0, "consensus/duration_s": 0.25}]


def test_beginning_twice_without_finishing_is_refused():
    sessions, _ = pair()
    sessions["a"].begin(held(10), 10, now=0.0)
    with pytest.raises(RuntimeError, match="began tick 20 while the run of tick 10 goes on"):
        sessions["a"].begin(held(20), 20, now=0.1)


def test_a_newer_observation_replaces_the_held_one_while_averaging():
    """The env server stepped on during a long consensus: the session answers the newest."""
    session = ConsensusSession(None, RecordingSubject(1.0), num_agents=1)
    session.begin(held(10), 10, now=0.0)
    session.replace_held(held(11))
    finished = session.finish_if_done(now=1.0)
    assert finished is not None and finished.held.step == 11
    with pytest.raises(RuntimeError, match="not averaging"):
        session.replace_held(held(12))


def test_each_tick_is_due_once_and_one_passed_over_is_caught_up_under_its_own_number():
    session = ConsensusSession(None, RecordingSubject(1.0), num_agents=1)
    assert [session.due(step) for step in (0, 5, 9)] == [None, None, None]
    assert session.due(12) == 10  # step 10 itself was missed (the env server stepped on): still tick 10
    session.begin(held(12), 10, now=0.0)
    session.finish_if_done(now=0.0)
    assert session.due(13) is None and session.due(19) is None
    assert session.due(41) == 40  # ticks 20 and 30 went by while holding: only the newest is run
    with pytest.raises(ValueError, match="tick 10 began again"):
        session.begin(held(41), 10, now=1.0)


def test_a_restarted_agent_does_not_begin_a_tick_that_lies_before_its_first_step():
    """Its neighbours averaged that tick without it long ago; it joins at the next one."""
    late = ConsensusSession(None, RecordingSubject(1.0), num_agents=1)
    assert late.due(1037) is None and late.due(1039) is None
    assert late.due(1040) == 1040
    on_the_tick = ConsensusSession(None, RecordingSubject(1.0), num_agents=1)
    assert on_the_tick.due(1040) == 1040


def test_an_agent_that_missed_the_tick_step_averages_with_its_neighbours_under_the_same_epoch():
    """b was cut off at step 20 (the env server played its default action): it first sees step 21,
    and still runs tick 20 with a, so neither waits out round deadlines for the other."""
    sessions, subjects = pair(rounds=3, timeout=5.0)
    assert sessions["a"].due(19) is None and sessions["b"].due(19) is None
    outgoing = {"a": sessions["a"].begin(held(20), sessions["a"].due(20), now=0.0)}
    tick = sessions["b"].due(21)
    assert tick == 20
    outgoing["b"] = sessions["b"].begin(held(21), tick, now=0.5)
    deliver(sessions, outgoing, now=0.6)
    for name in ("a", "b"):
        finished = sessions[name].finish_if_done(now=0.6)
        assert finished is not None, f"{name} still waits"
        np.testing.assert_allclose(subjects[name].adopted[0][0]["w"], 2.0)
        summary = next(r for r in finished.records if "consensus/rounds" in r)
        assert summary["consensus/missing_neighbours"] == 0.0


def test_the_final_average_is_due_once_at_the_last_step_and_only_when_asked_for():
    sessions, _ = pair()
    assert sessions["a"].due_at_end(60) is None  # average_at_end is off
    subject = RecordingSubject(0.0)
    session = ConsensusSession(SyncConsensus("a", {"b": 0.5}, 0.5, 2, 1.0), subject, num_agents=2, average_at_end=True)
    session.begin(held(50), session.due(50), now=0.0)
    for now in (1.0, 2.0):  # the neighbour never answers: both rounds run out
        session.on_timer(now)
    assert session.finish_if_done(now=2.0).held.step == 50
    assert session.due_at_end(60) == 60  # after the last periodic tick (50): one more run
    session.begin(held(60), 60, now=10.0)
    assert session.due_at_end(60) is None  # begun: not again
    # A last step that is itself a periodic tick already begun needs no final run.
    session = ConsensusSession(SyncConsensus("a", {"b": 0.5}, 0.5, 2, 1.0), RecordingSubject(0.0), num_agents=2, average_at_end=True)
    session.begin(held(60), 60, now=0.0)
    assert session.due_at_end(60) is None
    # Without an engine (sharing off) there is nothing to average with.
    assert ConsensusSession(None, RecordingSubject(0.0), num_agents=1, average_at_end=True).due_at_end(60) is None


def test_talking_in_steps_a_session_holds_nothing_and_adopts_when_the_shares_land():
    sessions, subjects = pair(rounds=2, timeout=5.0)
    network = StepNetwork(sessions, {"a": ["b"], "b": ["a"]}, run_seed=0, config_for=lambda s, d: LinkConfig(delay_steps=3))
    network.run_steps(20)
    network.begin("a", sessions["a"].begin, None, 20, 20.0)
    network.begin("b", sessions["b"].begin, None, 20, 20.0)
    network.step()  # step 20, the tick: both begin, holding nothing
    assert sessions["a"].averaging and sessions["a"].held is None
    finished = None
    while finished is None:
        network.step()
        finished = sessions["a"].finish_if_done(float(network.step_number - 1))
    assert finished.held is None  # nothing to release: the agent acted meanwhile
    assert network.step_number - 1 == 26  # two rounds of three steps
    np.testing.assert_allclose(subjects["a"].adopted[-1][0]["w"], np.full(3, 2.0))
    assert finished.records[-1]["consensus/decision_age_steps"] == 6.0


class Learner:
    def __init__(self, value: float) -> None:
        self.w = np.full(2, value, dtype=np.float32)

    def get_params(self):
        return {"w": self.w.copy()}

    def set_params(self, params):
        self.w = params["w"].copy()


def test_a_late_average_keeps_what_the_policy_learned_since_its_tick():
    learner = Learner(1.0)
    subject = PolicyParameters(learner, period_steps=10, keep_local_progress=True)
    sent = subject.prepare(10)
    learner.w += 0.5  # learning went on while the shares travelled
    metrics = subject.adopt({"w": sent["w"] + 2.0}, num_agents=4)  # the average moved it by +2
    np.testing.assert_allclose(learner.w, [3.5, 3.5])
    assert metrics["consensus/local_drift_since_tick"] == pytest.approx(0.5 * 2 ** 0.5)
    holding = PolicyParameters(Learner(1.0), period_steps=10)
    holding.adopt({"w": np.full(2, 7.0, np.float32)}, 4)
    np.testing.assert_allclose(holding.learner.w, [7.0, 7.0])  # free talk: the average itself
