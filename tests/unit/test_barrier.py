"""The env server's lockstep barrier and evaluation schedule, driven by hand without sockets."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from env_server.barrier import DefaultActions, LockstepBarrier, Refused
from env_server.evaluation import EvaluationSchedule
from env_server.vector import BatchedStep
from protocols.codec import messages as m

AGENTS = ["a0", "a1", "a2"]
K = 2


def make_barrier(default_action: str = "noop", deadline_s: float = 1.0) -> LockstepBarrier:
    action_spaces = {a: spaces.Discrete(5) for a in AGENTS}
    return LockstepBarrier(AGENTS, action_spaces, DefaultActions(action_spaces, default_action, seed=3), step_deadline_s=deadline_s)


def result(returns: list[float] = ()) -> BatchedStep:
    rows = {a: np.full((K, 2), i, np.float32) for i, a in enumerate(AGENTS)}
    flags = {a: np.zeros(K, bool) for a in AGENTS}
    return BatchedStep(
        observations=rows,
        rewards={a: np.zeros(K, np.float32) for a in AGENTS},
        terminated=flags,
        truncated=flags,
        active={a: np.ones(K, bool) for a in AGENTS},
        final_observations={},
        episode_start=np.zeros(K, bool),
        episode_returns=list(returns),
    )


def joined(barrier: LockstepBarrier) -> None:
    for i, agent in enumerate(AGENTS):
        barrier.join(agent.encode(), m.EnvJoin(client_id=agent, agents=[agent]))


def act(agent: str, step: int, value: int = 1, evaluation: bool = False) -> m.EnvAction:
    return m.EnvAction(step=step, actions={agent: np.full(K, value, np.int64)}, evaluation=evaluation)


def test_broadcast_sends_each_client_its_own_agents_and_opens_the_step():
    barrier = make_barrier()
    joined(barrier)
    outgoing = barrier.broadcast(result(), step=4, evaluation=False, run_finished=False, missing=[], wait=True, now=10.0)
    assert [identity for identity, _ in outgoing] == [b"a0", b"a1", b"a2"]
    for identity, observation in outgoing:
        assert isinstance(observation, m.EnvObservation) and observation.step == 4
        assert list(observation.observations) == [identity.decode()]
    assert barrier.open_step == 4 and barrier.next_deadline() == 11.0


def test_a_client_handed_its_rows_directly_gets_no_message_and_the_step_still_opens():
    """The env server writes a shared-memory client's rows into its slot (`deliver`): that client
    is left out of the messages, the others get theirs, and the step opens for everyone."""
    barrier = make_barrier()
    joined(barrier)
    handed = []

    def deliver(client, step_result, step, missing, run_finished, evaluation):
        handed.append((client.client_id, step, missing, run_finished, evaluation))
        return client.client_id == "a1"

    outgoing = barrier.broadcast(result(), step=4, evaluation=True, run_finished=False, missing=["a2"], wait=True,
                                 now=10.0, deliver=deliver)
    assert [identity for identity, _ in outgoing] == [b"a0", b"a2"]
    assert handed == [(a, 4, ["a2"], False, True) for a in AGENTS]
    assert barrier.open_step == 4 and barrier.open_evaluation


def test_the_step_is_due_when_every_agent_has_acted():
    barrier = make_barrier()
    joined(barrier)
    barrier.broadcast(result(), step=0, evaluation=False, run_finished=False, missing=[], wait=True, now=0.0)
    for agent in AGENTS[:2]:
        barrier.on_action(agent.encode(), act(agent, 0), now=0.1)
        assert not barrier.step_due
    barrier.on_action(b"a2", act("a2", 0, value=4), now=0.2)
    assert barrier.step_due and barrier.next_deadline() is None
    actions, missing = barrier.take_actions()
    assert missing == [] and actions["a2"].tolist() == [4, 4]
    assert barrier.open_step is None, "taking the actions closes the step"


def test_deadline_defaults_the_missing_agent_and_stops_waiting_for_it_until_it_acts():
    barrier = make_barrier(deadline_s=0.5)
    joined(barrier)
    barrier.broadcast(result(), step=0, evaluation=False, run_finished=False, missing=[], wait=True, now=0.0)
    barrier.on_action(b"a0", act("a0", 0), now=0.1)
    barrier.on_action(b"a1", act("a1", 0), now=0.1)
    barrier.on_timer(0.4)
    assert not barrier.step_due, "before the deadline nothing happens"
    barrier.on_timer(0.5)
    assert barrier.step_due
    actions, missing = barrier.take_actions()
    assert missing == ["a2"] and actions["a2"].tolist() == [0, 0], "noop default: Discrete's start"
    assert barrier.missing_actions == 1
    assert barrier.client(b"a2").absent

    # Next step: the absent agent is not waited for; the step is due without it.
    barrier.broadcast(result(), step=1, evaluation=False, run_finished=False, missing=missing, wait=True, now=1.0)
    barrier.on_action(b"a0", act("a0", 1), now=1.1)
    barrier.on_action(b"a1", act("a1", 1), now=1.1)
    assert barrier.step_due
    assert barrier.take_actions()[1] == ["a2"]

    # It acts again: awaited again from then on.
    barrier.broadcast(result(), step=2, evaluation=False, run_finished=False, missing=["a2"], wait=True, now=2.0)
    barrier.on_action(b"a2", act("a2", 2), now=2.05)
    assert not barrier.client(b"a2").absent
    barrier.on_action(b"a0", act("a0", 2), now=2.1)
    barrier.on_action(b"a1", act("a1", 2), now=2.1)
    assert barrier.step_due and barrier.take_actions()[1] == []


def test_random_default_actions_are_valid_and_seeded():
    first, second = make_barrier("random"), make_barrier("random")
    draws = [b.defaults.batched("a0", 64) for b in (first, second)]
    assert draws[0].shape == (64,) and ((0 <= draws[0]) & (draws[0] < 5)).all()
    assert np.array_equal(draws[0], draws[1]), "same seed, same default actions"
    assert len(set(draws[0].tolist())) > 1


def test_actions_for_another_step_or_kind_are_stale():
    barrier = make_barrier()
    joined(barrier)
    barrier.on_action(b"a0", act("a0", 0), now=0.0)  # nothing open yet
    barrier.broadcast(result(), step=3, evaluation=False, run_finished=False, missing=[], wait=True, now=0.0)
    barrier.on_action(b"a0", act("a0", 2), now=0.1)
    barrier.on_action(b"a0", act("a0", 3, evaluation=True), now=0.1)
    assert barrier.stale_actions == 3 and barrier.pending == {}


def test_bad_actions_and_foreign_agents_are_refused_with_a_code():
    barrier = make_barrier()
    joined(barrier)
    barrier.broadcast(result(), step=0, evaluation=False, run_finished=False, missing=[], wait=True, now=0.0)
    with pytest.raises(Refused) as refused:
        barrier.on_action(b"a0", act("a0", 0, value=7), now=0.1)
    assert refused.value.code == "bad_action" and "outside Discrete(5)" in refused.value.text
    with pytest.raises(Refused) as refused:
        barrier.on_action(b"a0", act("a1", 0), now=0.1)
    assert refused.value.code == "not_your_agent"
    with pytest.raises(Refused) as refused:
        barrier.on_action(b"a0", m.EnvAction(step=0, actions={"a0": np.zeros(K + 1, np.int64)}), now=0.1)
    assert refused.value.code == "bad_action" and "expected shape (2,)" in refused.value.text
    assert barrier.pending == {}


def test_join_by_index_name_or_all_and_refusals():
    barrier = make_barrier()
    assert barrier.join(b"x", m.EnvJoin(client_id="x", agent_indices=[1])) == ["a1"]
    assert not barrier.all_claimed
    with pytest.raises(Refused, match="out of range") as refused:
        barrier.join(b"y", m.EnvJoin(client_id="y", agent_indices=[3]))
    assert refused.value.code == "unknown_agent"
    with pytest.raises(Refused, match="unknown agents"):
        barrier.join(b"y", m.EnvJoin(client_id="y", agents=["nobody"]))
    with pytest.raises(Refused, match=r"driven by another client") as refused:
        barrier.join(b"y", m.EnvJoin(client_id="y", agents=["a1"]))
    assert refused.value.code == "agent_taken"
    with pytest.raises(Refused, match="driven by another client"):
        barrier.join(b"z", m.EnvJoin(client_id="z"))  # no agents named: all of them, a1 included
    everything = make_barrier()
    assert everything.join(b"z", m.EnvJoin(client_id="z")) == AGENTS and everything.all_claimed


def test_agents_gone_for_good_are_not_waited_for():
    barrier = make_barrier()
    barrier.join(b"x", m.EnvJoin(client_id="x", agent_indices=[0, 1]))
    assert not barrier.all_claimed and not barrier.all_claimed_but(set())
    assert barrier.all_claimed_but({"a2"}) and not barrier.all_claimed_but({"a1"})


def test_a_restarted_client_takes_its_agents_over_and_catches_up():
    barrier = make_barrier()
    joined(barrier)
    barrier.broadcast(result(), step=5, evaluation=False, run_finished=False, missing=[], wait=True, now=0.0)
    # agent a1's node restarts: new socket identity, same client id.
    assert barrier.join(b"a1-reborn", m.EnvJoin(client_id="a1", agents=["a1"])) == ["a1"]
    assert barrier.client(b"a1") is None and barrier.owner["a1"] == b"a1-reborn"
    (identity, observation), = barrier.catch_up(b"a1-reborn")
    assert identity == b"a1-reborn" and observation.step == 5 and list(observation.observations) == ["a1"]
    # The new incarnation's actions complete the step.
    for identity, agent in ((b"a0", "a0"), (b"a1-reborn", "a1"), (b"a2", "a2")):
        barrier.on_action(identity, act(agent, 5), now=0.1)
    assert barrier.step_due


def test_closed_step_has_no_deadline_and_takes_no_actions():
    barrier = make_barrier()
    joined(barrier)
    barrier.broadcast(result(), step=9, evaluation=False, run_finished=True, missing=[], wait=False, now=0.0)
    assert barrier.next_deadline() is None
    barrier.on_timer(100.0)
    assert not barrier.step_due
    barrier.on_action(b"a0", act("a0", 9), now=0.1)
    assert barrier.stale_actions == 1


def test_evaluation_schedule_holds_back_training_and_reports_the_mean_return():
    schedule = EvaluationSchedule(every_steps=10, start_step=20)
    assert [s for s in range(1, 41) if schedule.due(s)] == [20, 30, 40]
    assert not EvaluationSchedule(every_steps=None).due(10)
    held = result()
    schedule.begin(held, ["a2"], now=5.0)
    assert schedule.running and schedule.step == 0
    schedule.record(result(returns=[-3.0]))
    schedule.record(result(returns=[-1.0, -2.0]))
    held_back, metrics = schedule.finish(now=7.5)
    assert held_back.result is held and held_back.missing == ["a2"]
    assert metrics["eval/return_mean"] == pytest.approx(-2.0)
    assert metrics["eval/return_std"] == pytest.approx(np.std([-3.0, -1.0, -2.0]))
    assert metrics["eval/episodes"] == 3 and metrics["eval/duration_s"] == pytest.approx(2.5)
    assert not schedule.running and schedule.completed == 1
    with pytest.raises(RuntimeError):
        schedule.finish(now=8.0)


def result_with_active(active: dict[str, list[bool]]) -> BatchedStep:
    step = result()
    step.active.update({a: np.array(rows, bool) for a, rows in active.items()})
    return step


def test_agents_inactive_in_every_copy_are_not_waited_for_nor_missing():
    # A population env that drew a0 and a1 for this episode: a2 sits out in both copies.
    barrier = make_barrier()
    joined(barrier)
    barrier.broadcast(result_with_active({"a2": [False, False]}), step=0, evaluation=False, run_finished=False,
                      missing=[], wait=True, now=0.0)
    assert sorted(barrier.awaited_agents()) == ["a0", "a1"]
    barrier.on_action(b"a0", act("a0", 0), now=0.1)
    assert not barrier.step_due
    barrier.on_action(b"a1", act("a1", 0), now=0.1)
    assert barrier.step_due, "the client driving only the inactive a2 is not waited for"
    actions, missing = barrier.take_actions()
    assert missing == [] and barrier.missing_actions == 0
    assert actions["a2"].shape == (K,), "the inactive agent still gets a (default) row the env ignores"


def test_an_agent_active_in_one_copy_is_waited_for():
    barrier = make_barrier()
    joined(barrier)
    barrier.broadcast(result_with_active({"a2": [False, True]}), step=0, evaluation=False, run_finished=False,
                      missing=[], wait=True, now=0.0)
    barrier.on_action(b"a0", act("a0", 0), now=0.1)
    barrier.on_action(b"a1", act("a1", 0), now=0.1)
    assert not barrier.step_due
    barrier.on_action(b"a2", act("a2", 0), now=0.2)
    assert barrier.step_due and barrier.take_actions()[1] == []


def test_one_client_with_live_and_finished_agents_sends_only_the_live_ones():
    # RemoteParallelEnv's case: one client drives every agent and acts only for live ones.
    barrier = make_barrier(deadline_s=0.5)
    barrier.join(b"all", m.EnvJoin(client_id="all"))
    barrier.broadcast(result_with_active({"a1": [False, False], "a2": [False, False]}), step=3, evaluation=False,
                      run_finished=False, missing=[], wait=True, now=0.0)
    barrier.on_action(b"all", act("a0", 3), now=0.1)
    assert barrier.step_due
    assert barrier.take_actions()[1] == []


def test_at_the_deadline_only_clients_with_late_active_agents_become_absent():
    barrier = make_barrier(deadline_s=0.5)
    joined(barrier)
    barrier.broadcast(result_with_active({"a2": [False, False]}), step=0, evaluation=False, run_finished=False,
                      missing=[], wait=True, now=0.0)
    barrier.on_action(b"a0", act("a0", 0), now=0.1)
    barrier.on_timer(0.5)
    assert barrier.step_due
    assert barrier.client(b"a1").absent and not barrier.client(b"a2").absent
    assert barrier.take_actions()[1] == ["a1"]
    # Next episode a2 is drawn again: it is awaited (it was never marked absent).
    barrier.broadcast(result(), step=1, evaluation=False, run_finished=False, missing=["a1"], wait=True, now=1.0)
    assert sorted(barrier.awaited_agents()) == ["a0", "a2"]


def test_an_evaluation_reports_each_agents_returns_per_episode_and_their_means():
    schedule = EvaluationSchedule(every_steps=10)
    schedule.begin(result(), [], now=0.0)
    first = result(returns=[-2.0])
    first.episode_agent_returns = [{"a0": -1.0, "a1": -2.0, "a2": -3.0}]
    second = result(returns=[0.0])
    second.episode_agent_returns = [{"a0": 1.0, "a1": 0.0, "a2": -1.0}]
    schedule.record(first)
    schedule.record(second)
    _, metrics = schedule.finish(now=1.0)
    assert (metrics["eval/return/a0"], metrics["eval/return/a2"]) == (0.0, -2.0)
    assert schedule.episode_rows() == [
        {"eval_episode/index": 0.0, "eval_episode/return/a0": -1.0, "eval_episode/return/a1": -2.0, "eval_episode/return/a2": -3.0},
        {"eval_episode/index": 1.0, "eval_episode/return/a0": 1.0, "eval_episode/return/a1": 0.0, "eval_episode/return/a2": -1.0},
    ]


def test_the_step_is_due_exactly_when_every_awaited_agent_has_acted():
    """The due check stops at the first awaited agent without an action; it must agree with
    its definition (every agent of `awaited_agents()` acted) whatever is absent or inactive."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        barrier = make_barrier()
        joined(barrier)
        step = result()
        step.active = {a: rng.random(K) < 0.8 for a in AGENTS}
        barrier.broadcast(step, step=trial, evaluation=False, run_finished=False, missing=[], wait=True, now=0.0)
        for agent in AGENTS:
            barrier.clients[agent.encode()].absent = bool(rng.random() < 0.3)
        for agent in rng.permutation(AGENTS):
            if rng.random() < 0.3:
                continue  # never acts this step
            absent = {a: barrier.clients[a.encode()].absent for a in AGENTS}
            barrier.on_action(agent.encode(), act(agent, trial), now=0.0)
            expected = all(a in barrier.pending for a in barrier.awaited_agents())
            assert barrier.step_due == expected, (trial, agent, absent, sorted(barrier.pending))
