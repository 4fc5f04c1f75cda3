"""Hindsight sharing: exact HER relabelling on a hand-made episode; the engine by hand and in the
network simulator under duplication, reordering and loss."""

from __future__ import annotations

import numpy as np
import pytest

from env_server.envs.goal_lines import goal_reward
from protocols.codec import wire
from protocols.engines.hindsight import (
    HindsightEngine,
    HindsightReport,
    HindsightRequest,
    SharedTransitions,
    achieved_after_each_step,
    relabel_episode,
)
from protocols.net.links import LinkConfig
from protocols.codec.messages import MESSAGE_TYPES
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere

L = 3  # goals 0,1,2 individual; 3=(0,1), 4=(0,2), 5=(1,2)


def reward(goal, achieved):
    return goal_reward(goal, achieved, L)


# Hand-made episode of 6 transitions: landmark 1 touched after t=1; landmarks 0 and 2 touched
# together after t=3 (goals 0, 2 and the pair 4); landmark 2 again after t=5.
EVENTS = [(1, 1), (3, 0), (3, 2), (3, 4), (5, 2)]


def test_achieved_after_each_step():
    achieved = achieved_after_each_step(EVENTS, 6)
    assert [a.tolist() for a in achieved] == [[], [1], [], [0, 2, 4], [], [2]]
    with pytest.raises(ValueError, match="outside the episode"):
        achieved_after_each_step([(6, 1)], 6)


def test_final_strategy_is_exact():
    relabelled = relabel_episode(6, EVENTS, reward, "final")
    # Final achievement step is 5 (goal 2); goal 2 was first achieved after t=3, so transitions
    # 0..3 are relabelled with it, and only t=3 pays (1/beta = 0.5) and terminates.
    assert relabelled.step.tolist() == [0, 1, 2, 3]
    assert relabelled.goal.tolist() == [2, 2, 2, 2]
    assert relabelled.reward.tolist() == [0.0, 0.0, 0.0, 0.5]
    assert relabelled.terminated.tolist() == [False, False, False, True]


def test_future_strategy_only_draws_goals_still_ahead():
    rng = np.random.default_rng(0)
    relabelled = relabel_episode(6, EVENTS, reward, "future", k=50, rng=rng)
    first = {1: 1, 0: 3, 2: 3, 4: 3}
    pairs = set(zip(relabelled.step.tolist(), relabelled.goal.tolist()))
    for t, goal in pairs:
        assert first[goal] >= t  # never relabelled after its first achievement
        assert any(step >= t and g == goal for step, g in EVENTS)  # drawn from the future
    # With k=50 every admissible pair appears: t=0,1 -> goal 1; t<=3 -> 0, 2, 4.
    assert pairs == {(0, 1), (1, 1), (0, 0), (1, 0), (2, 0), (3, 0), (0, 2), (1, 2), (2, 2), (3, 2), (0, 4), (1, 4), (2, 4), (3, 4)}
    for t, goal, r, done in zip(relabelled.step, relabelled.goal, relabelled.reward, relabelled.terminated):
        expected = {(1, 1): 0.5, (3, 0): 0.5, (3, 2): 0.5, (3, 4): 1.0}.get((int(t), int(goal)), 0.0)
        assert r == expected and done == (expected > 0)


def test_relabel_argument_errors():
    with pytest.raises(ValueError, match="strategy"):
        relabel_episode(6, EVENTS, reward, "episode")
    with pytest.raises(ValueError, match="rng"):
        relabel_episode(6, EVENTS, reward, "future")
    assert len(relabel_episode(6, [], reward, "final")) == 0


def test_report_round_trips_on_the_wire():
    assert MESSAGE_TYPES["hindsight.report"] is HindsightReport
    report = HindsightReport(
        episode=4,
        steps=np.array([1, 3]),
        goals=np.array([1, 4]),
        transition_steps=np.array([0]),
        transition_obs=np.zeros((1, 5), np.float32),
        transition_actions=np.array([2]),
        transition_next_obs=np.ones((1, 5), np.float32),
    )
    frames = wire.encode(report, sender="a", run_id="r", seq=1)
    decoded = wire.decode([bytes(frame) for frame in frames]).message
    assert decoded.episode == 4 and decoded.goals.tolist() == [1, 4]
    np.testing.assert_array_equal(decoded.transition_next_obs, report.transition_next_obs)
    bare = HindsightReport(episode=1, steps=np.array([], np.int64), goals=np.array([], np.int64))
    assert wire.decode([bytes(f) for f in wire.encode(bare, sender="a", run_id="r", seq=2)]).message.transition_obs is None


def test_engine_by_hand_merges_partner_events_and_ignores_duplicates():
    a = HindsightEngine("a", timeout_s=1.0)
    b = HindsightEngine("b", timeout_s=1.0)
    shared = SharedTransitions(np.array([2]), np.zeros((1, 4)), np.array([3]), np.ones((1, 4)))
    out_a = a.start(HindsightRequest(0, ["b"], [(1, 1)]), 0.0)
    out_b = b.start(HindsightRequest(0, ["a"], [(3, 4)], shared=shared), 0.0)
    assert [dest for dest, _ in out_a] == ["b"]
    a.on_message("b", out_b[0][1], 0.1)
    a.on_message("b", out_b[0][1], 0.2)  # duplicate
    assert a.done and a.duplicates_ignored == 1 and a.applied == {("b", 0): 1}
    assert a.result.events == [(1, 1), (3, 4)]
    assert a.result.from_partners == {"b": [(3, 4)]}
    assert a.result.partner_transitions["b"].actions.tolist() == [3]
    assert a.metrics()["hindsight/events_from_partners_only"] == 1.0
    assert not b.done and b.next_deadline() == 1.0
    b.on_timer(1.0)
    assert b.done and b.result.missing == ["a"] and b.result.events == [(3, 4)]
    b.on_message("a", out_a[0][1], 1.5)  # too late: never applied
    assert b.late_dropped == 1 and ("a", 0) not in b.applied


def test_reports_for_a_later_episode_wait_for_it():
    a = HindsightEngine("a")
    early = HindsightReport(episode=1, steps=np.array([0]), goals=np.array([2]))
    a.on_message("b", early, 0.0)
    a.on_message("b", early, 0.0)  # duplicate while buffered
    assert a.duplicates_ignored == 1 and not a.done
    a.start(HindsightRequest(0, ["b"], []), 0.0)
    a.on_neighbour_down("b", 0.1)
    assert a.done and a.result.missing == ["b"]
    a.start(HindsightRequest(1, ["b"], []), 1.0)
    assert a.done and a.result.events == [(0, 2)] and a.applied[("b", 1)] == 1


def test_engine_refuses_bad_input():
    a = HindsightEngine("a")
    with pytest.raises(ValueError, match="lists itself"):
        a.start(HindsightRequest(0, ["a"], []), 0.0)
    with pytest.raises(TypeError, match="takes HindsightReport"):
        a.on_message("b", object(), 0.0)
    with pytest.raises(ValueError, match="one length"):
        a.on_message("b", HindsightReport(0, np.array([1, 2]), np.array([1])), 0.0)
    with pytest.raises(RuntimeError, match="not finished"):
        a.result


@pytest.mark.parametrize(
    "link, expect_all",
    [
        (LinkConfig(delay_s=0.05, jitter_s=0.04, duplicate=0.5, reorder=0.3), True),
        (LinkConfig(delay_s=0.05, jitter_s=0.04, duplicate=0.5, reorder=0.3, loss=0.3), False),
    ],
    ids=["duplicate+reorder", "with-30pct-loss"],
)
def test_in_the_simulator_every_report_is_applied_exactly_once(link, expect_all):
    nodes = ["n0", "n1", "n2", "n3"]
    engines = {node: HindsightEngine(node, timeout_s=1.0) for node in nodes}
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=3)
    rng = np.random.default_rng(0)
    sent_events = {}
    missing_reports = 0
    for episode in range(30):
        for node in nodes:
            events = [(int(rng.integers(40)), int(rng.integers(21))) for _ in range(rng.integers(0, 4))]
            sent_events[(node, episode)] = sorted(set(events))
            partners = [other for other in nodes if other != node]
            request = HindsightRequest(episode, partners, events)
            sim.call(node, lambda engine, now, request=request: engine.start(request, now))
        sim.run(stop_when=lambda: all(engine.done for engine in engines.values()))
        for node, engine in engines.items():
            result = engine.result
            for partner, events in result.from_partners.items():
                assert events == sent_events[(partner, episode)]
            expected = set(sent_events[(node, episode)])
            for partner in result.from_partners:
                expected |= set(sent_events[(partner, episode)])
            assert set(result.events) == expected
            missing_reports += len(result.missing)
            if expect_all:
                assert result.missing == []
        sim.run(until=sim.now + 0.5)
    assert sim.stats["duplicated"] > 0
    for engine in engines.values():
        assert engine.applied and set(engine.applied.values()) == {1}
    total_duplicates = sum(engine.duplicates_ignored for engine in engines.values())
    assert total_duplicates > 0
    if not expect_all:
        assert sim.stats["lost_on_link"] > 0
        assert missing_reports > 0  # lost reports are missing, never applied twice or wrongly


def test_complete_events_rebuilds_the_joint_view_from_every_agents_own_landmarks():
    """What `complete_events` makes of the agents' "own" views equals what the joint view lists,
    step by step, for random placements of 2 to 4 agents."""
    import itertools as _itertools

    from env_server.envs.goal_lines import achieved_goals
    from protocols.goal_spaces.goal_space import complete_events

    rng = np.random.default_rng(0)
    for _ in range(200):
        agents = int(rng.integers(2, 5))
        touched_per_step = [rng.integers(-1, 6, size=agents).tolist() for _ in range(5)]
        own_reports = [(step, landmark) for step, touched in enumerate(touched_per_step) for landmark in touched if landmark >= 0]
        joint = sorted((step, int(goal)) for step, touched in enumerate(touched_per_step) for goal in achieved_goals(touched, 6))
        assert complete_events(own_reports, 6) == joint
    # One agent's report alone implies no pair; cooperative events pass through unchanged.
    assert complete_events([(0, 1), (0, 1)], 6) == [(0, 1)]
    assert complete_events([(3, 7)], 6) == [(3, 7)]
    assert complete_events([(2, 0), (2, 5)], 6) == [(2, 0), (2, 5), (2, 6 + list(_itertools.combinations(range(6), 2)).index((0, 5)))]
