"""Fault plans over many simulated agents (protocols/sim/simplan.py): a 64-agent plan with faults keeps
every invariant; a deliberately broken engine is caught and its plan shrunk to the events that
break it, printed as config sections the orchestrator accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config import read_yaml, validate_config
from orchestrator.faults import plan_faults
from protocols.engines.consensus import PushSumConsensus
from protocols.net.links import LinkConfig
from protocols.sim.simfaults import Crash, LinkSpike, Partition
from protocols.sim.simplan import (
    HEAVY_TAILED_LOSSY, FaultPlan, PlanSettings, Shrunk, replay_sections, replay_yaml, run_plan, shrink_plan, standard_plan,
)
from protocols.engines.topology import grid, one_peer_hypercube, ring, small_world

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_ring.yaml"


@pytest.mark.parametrize("engine", ["push_sum", "sync"])
def test_64_agents_under_the_fault_plan_keep_every_invariant(engine):
    plan = standard_plan(grid(8, 8, torus=True), "torus", engine, seed=3, fault_window_s=5.0, link=HEAVY_TAILED_LOSSY,
                         settings=PlanSettings(rounds=60, push_sum_periods=150))
    kinds = {type(event) for event in plan.events}
    assert kinds == {Crash, Partition} and sum(isinstance(e, Crash) for e in plan.events) == 3  # 5% of 64
    result = run_plan(plan)
    assert result.violations == []
    assert result.stats["lost_on_link"] > 0.25 * result.stats["sent"]  # the 30% loss is there
    assert result.stats["blocked_by_partition"] > 0 and result.stats["lost_to_crashed_node"] > 0
    if engine == "push_sum":
        assert result.rounds_to[1e-3] is not None  # agreement after the heal
        assert result.max_weight_drift <= 1e-12
        assert result.final_error < 1e-3  # push-sum reaches the true average despite the faults
    else:
        # Synchronous rounds under 30% loss and crashes: agreement on some value, not the average.
        assert result.disagreement[40] < result.disagreement[5]


class ForgetfulPushSum(PushSumConsensus):
    """Broken on purpose: when a neighbour that was declared down comes back, it forgets the totals
    it had absorbed from it, so that neighbour's next share is counted in full (mass created)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.went_down: set[str] = set()

    def on_neighbour_down(self, node, now):
        self.went_down.add(node)
        return super().on_neighbour_down(node, now)

    def on_neighbour_up(self, node, now):
        if node in self.went_down:
            self._seen_values.pop(node, None)
            self._seen_weight.pop(node, None)
            self._seen_seq.pop(node, None)
        return super().on_neighbour_up(node, now)


def forgetful(node, neighbour_weights, self_weight, settings):
    return ForgetfulPushSum(node, list(neighbour_weights), settings.push_sum_period_s, settings.push_sum_period_s * settings.push_sum_periods)


def _eight_event_plan() -> FaultPlan:
    topology = ring(12)
    nodes = topology.nodes
    # Only the crash of agent_7 outlasts the membership timeout (2 s): its neighbours declare it
    # down and see it come back, the one path on which the broken engine goes wrong.
    events = (
        Crash(nodes[1], 0.5, 1.2),
        LinkSpike(0.8, 1.3, 0.05, 0.2),
        Partition((nodes[:6], nodes[6:]), 1.0, 1.8),
        Crash(nodes[7], 1.1, 4.0),
        Crash(nodes[4], 1.5, 2.0),
        LinkSpike(2.0, 2.4, 0.02, 0.1),
        Partition((nodes[::2], nodes[1::2]), 2.5, 3.0),
        Crash(nodes[10], 3.0, 3.6),
    )
    link = LinkConfig(delay_s=0.01, delay_distribution="pareto", pareto_shape=1.5)
    return FaultPlan(5, topology, "ring", "push_sum", link, events, PlanSettings(push_sum_periods=60))


def test_the_correct_engine_keeps_the_eight_event_plan():
    assert run_plan(_eight_event_plan(), stop_at=None).violations == []


def test_a_broken_engine_is_caught_and_its_plan_shrunk_to_at_most_three_events():
    plan = _eight_event_plan()
    violations_of = lambda candidate: run_plan(candidate, stop_at=None, engine_factory=forgetful).violations  # noqa: E731
    full = violations_of(plan)
    assert any("weight mass" in violation for violation in full)
    shrunk = shrink_plan(plan, violations_of, still_failing=lambda found: any("weight mass" in v for v in found))
    assert 1 <= len(shrunk.plan.events) <= 3
    assert Crash(plan.topology.nodes[7], 1.1, 4.0) in shrunk.plan.events
    assert any("weight mass" in violation for violation in violations_of(shrunk.plan))
    # 1-minimal: dropping any one remaining event makes the failure go away.
    for event in shrunk.plan.events:
        rest = [other for other in shrunk.plan.events if other != event]
        assert not any("weight mass" in v for v in violations_of(plan.with_events(rest)))
    text = replay_yaml(shrunk)
    assert text.startswith("# Shrunk fault plan: ") and "weight mass" in text
    assert "kind: pause" in text and "kind: resume" in text


def test_a_plan_whose_violations_are_known_is_not_run_again():
    plan = _eight_event_plan()
    culprit = plan.events[3]
    tried = []

    def violations_of(candidate):
        tried.append(candidate.events)
        return ["restores"] if culprit in candidate.events else []

    shrunk = shrink_plan(plan, violations_of, known_violations=["restores"])
    assert shrunk.plan.events == (culprit,)
    assert plan.events not in tried and shrunk.runs == len(tried)


def test_shrinking_refuses_a_plan_that_does_not_fail():
    with pytest.raises(ValueError, match="does not fail"):
        shrink_plan(_eight_event_plan())


def test_replay_sections_are_a_valid_run_config_with_the_same_fault_schedule():
    plan = _eight_event_plan()
    sections = yaml.safe_load(replay_yaml(Shrunk(plan, ["a violation"], len(plan.events), 1)))
    assert sections == replay_sections(plan)
    data = read_yaml(TINY)
    data["env"]["kwargs"]["N"] = len(plan.topology.nodes)
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    config = validate_config(data, "replay")
    scheduled = plan_faults(config)
    # Every crash is a pause and a resume, every partition a partition and a heal, every spike two link changes.
    assert sorted(fault.kind for fault in scheduled) == sorted(["pause", "resume"] * 4 + ["partition", "heal"] * 2 + ["link"] * 4)
    pause = next(fault for fault in scheduled if fault.kind == "pause" and fault.targets == ("agent_7",))
    assert pause.at_s == 1.1
    partition = next(fault for fault in scheduled if fault.kind == "partition")
    assert partition.groups == (tuple(plan.topology.nodes[:6]), tuple(plan.topology.nodes[6:]))
    assert config.topology.kind == "edges" and len(config.topology.edges) == 12
    assert config.protocols.consensus.mode == "push_sum" and config.protocols.membership.timeout_s == 2.0


def test_small_world_is_seeded_connected_and_keeps_the_edge_count():
    first = small_world(200, 4, 0.1, seed=1)
    assert first == small_world(200, 4, 0.1, seed=1) and first != small_world(200, 4, 0.1, seed=2)
    assert first.is_connected() and len(first.edges) == 400  # rewiring moves edges, never adds or drops
    assert first != ring(200)  # some edges moved
    assert small_world(20, 4, 0.0, seed=0).edges == {(min(i, j), max(i, j)) for i in range(20) for j in ((i + 1) % 20, (i + 2) % 20)}
    with pytest.raises(ValueError, match="even degree"):
        small_world(10, 3, 0.1, seed=0)
    with pytest.raises(ValueError, match="probability"):
        small_world(10, 4, 1.5, seed=0)


def test_one_peer_hypercube_pairs_every_node_once_per_round():
    schedule = one_peer_hypercube(8)
    assert len(schedule) == 3
    assert schedule[2].edges == {(0, 4), (1, 5), (2, 6), (3, 7)}
    assert all(set(graph.degrees().tolist()) == {1} for graph in schedule)
    with pytest.raises(ValueError, match="power of two"):
        one_peer_hypercube(12)


def test_the_stacks_kept_membership_deadline_and_the_size_memo_change_nothing(monkeypatch):
    # ConsensusStack keeps membership's deadline between its timers and _SizeMemo sizes consensus
    # messages by type; a run that scans membership after every message and sizes every message
    # afresh must be identical, event for event (only the count of early wake-ups may differ).
    from protocols.sim import simplan
    from protocols.sim.netsim import approximate_size

    plan = standard_plan(ring(16), "ring", "push_sum", seed=2, fault_window_s=4.0, settings=PlanSettings(push_sum_periods=50))
    kept = run_plan(plan, stop_at=None)

    class FreshScan(simplan.ConsensusStack):
        def next_deadline(self):
            a, b = self.membership.next_deadline(), self.consensus.next_deadline()
            return b if a is None else (a if b is None else min(a, b))

    class EveryMessage:
        def __init__(self):
            self.total_bytes = 0

        def __call__(self, message):
            size = approximate_size(message)
            self.total_bytes += size
            return size

    monkeypatch.setattr(simplan, "ConsensusStack", FreshScan)
    monkeypatch.setattr(simplan, "_SizeMemo", EveryMessage)
    fresh = run_plan(plan, stop_at=None)
    assert kept.violations == fresh.violations == []
    assert (kept.disagreement == fresh.disagreement).all()
    assert kept.bytes_per_node == fresh.bytes_per_node
    assert {k: v for k, v in kept.stats.items() if k != "timers_fired"} == {k: v for k, v in fresh.stats.items() if k != "timers_fired"}


@pytest.mark.parametrize("engine", ["push_sum", "sync"])
def test_the_same_seed_gives_the_same_figures_and_another_seed_other_ones(engine):
    # The bench's figures are a function of the plan and its seed alone: nothing carried between
    # runs in one process (the size memo, message-layout caches, link streams) may change them.
    def figures(seed):
        plan = standard_plan(grid(4, 4, torus=True), "torus", engine, seed=seed, fault_window_s=4.0,
                             settings=PlanSettings(rounds=20, push_sum_periods=40))
        result = run_plan(plan, stop_at=None)
        return (result.disagreement.tolist(), result.rounds_to, result.messages_per_node, result.bytes_per_node,
                result.simulated_s, result.final_error, result.stats)

    first = figures(3)
    assert figures(3) == first
    assert figures(4) != first
