"""Links that follow where the agents are (`topology.kind: proximity`): the range rule
(protocols/engines/proximity.py), its place among a step's link decisions (protocols/engines/
step_links.py), the simulator under a mobility model (protocols/sim/netsim.py `StepNetwork`), the
positions the env server publishes (env_server/positions.py), and what validate refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from env_server.barrier import observation_for
from env_server.positions import BUILTIN_POSITIONS, mpe_positions, read_positions
from env_server.registry import make_env
from env_server.vector import VectorizedParallelEnv, packing_refusal
from orchestrator.config import load_config
from protocols.codec import messages as m
from protocols.codec.packed import PackedLayout
from protocols.engines.consensus import ConsensusRequest, PushSumConsensus, SyncConsensus
from protocols.engines.proximity import (
    PathLossConfig, ProximityNeighbours, RangeLink, distance_delay_steps, in_range, in_range_matrix,
    metropolis_from_adjacency, summarize,
)
from protocols.engines.flooding import FloodEngine, FloodRequest, FloodResult, FloodTable
from protocols.engines.hindsight import HindsightRows
from agent_node.landmarks.session import assign, rows_known
from protocols.engines.step_links import TRAINING_CLOCK, PeerStepMark, StepOutbox
from protocols.engines.topology import TopologyConfig, build_topology, metropolis_weights
from protocols.net.links import LinkConfig
from protocols.run.config_errors import ConfigError
from protocols.sim.netsim import StepNetwork

ROOT = Path(__file__).resolve().parents[2]
MAIN_JOB = ROOT / "configs" / "4agents_ring.yaml"
PROXIMITY = ("protocols.talk=env_steps", "topology={kind: proximity, radius: 0.8}", "env.num_copies=1")


# ------------------------------------------------------------------ the rule


def test_two_agents_are_in_range_up_to_the_radius_inclusive_and_never_without_a_position():
    positions = np.array([[0.0, 0.0], [0.6, 0.8], [np.nan, np.nan]])  # 0 and 1 are 1.0 apart
    assert in_range(positions, 0, 1, 1.0) and in_range(positions, 1, 0, 1.0)
    assert not in_range(positions, 0, 1, 0.999)
    assert not in_range(positions, 0, 2, 100.0) and not in_range(positions, 0, 0, 1.0)
    assert in_range_matrix(positions, 1.0).tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_metropolis_weights_of_a_steps_graph_are_those_of_the_same_topology():
    from protocols.engines.topology import from_edges

    line = np.array([[0.0], [1.0], [2.0], [10.0]])
    expected = metropolis_weights(from_edges(4, [(0, 1), (1, 2)]))
    np.testing.assert_allclose(metropolis_from_adjacency(in_range_matrix(line, 1.0)), expected)


def test_a_steps_graph_counts_its_edges_and_its_components():
    line = np.array([[0.0], [1.0], [2.0], [10.0]])  # 0-1-2 chained by radius 1, 3 alone
    assert summarize(line, 1.0) == summarize(line[::-1], 1.0)
    summary = summarize(line, 1.0)
    assert (summary.edges, summary.components) == (2, 2)
    assert (summarize(line, 0.5).edges, summarize(line, 0.5).components) == (0, 4)
    assert (summarize(line, 20.0).edges, summarize(line, 20.0).components) == (6, 1)


def test_a_neighbour_that_leaves_the_range_is_reported_once_and_again_when_it_comes_back():
    tracker = ProximityNeighbours(["a", "b", "c"], "a", radius=1.0)
    assert tracker.reachable("b")  # before any positions: the full graph
    assert tracker.update(np.array([[0.0], [0.5], [0.9]])) == ([], [])
    assert tracker.update(np.array([[0.0], [1.5], [0.9]])) == (["b"], [])
    assert tracker.update(np.array([[0.0], [2.5], [0.9]])) == ([], [])  # still out: no news
    assert not tracker.reachable("b") and tracker.out_of_range("b") and tracker.reachable("c")
    assert tracker.update(np.array([[0.0], [1.0], [3.0]])) == (["c"], ["b"])
    assert tracker.changes == 3
    with pytest.raises(ValueError, match="positions of 3 agents"):
        tracker.update(np.zeros((2, 1)))


def test_a_message_out_of_range_is_dropped_and_counted_its_mark_still_goes_and_the_links_draws_are_untouched():
    """The range is decided before the link's draws, so the fates of the messages that are in
    range are those they would have had if the others had never been sent."""
    lossy = LinkConfig(delay_steps=1, loss=0.5)
    out_steps = {3, 4, 7}
    where = {"b": True}
    gated = StepOutbox("a", 11, lambda s, d: lossy, range_link=lambda dst: RangeLink(0.0, 0) if where[dst] else None)
    plain = StepOutbox("a", 11, lambda s, d: lossy)
    gated_fates, plain_fates = [], []
    for step in range(12):
        where["b"] = step not in out_steps
        gated.queue([("b", step)])
        sent = gated.close_step(TRAINING_CLOCK, step, ["b"])
        mark = sent[-1][1]
        assert isinstance(mark, PeerStepMark) and mark.step == step  # the mark goes whatever the range
        if step in out_steps:
            assert mark.due == [] and len(sent) == 1
            continue
        gated_fates.append(mark.due)
        plain.queue([("b", step)])
        plain_fates.append(plain.close_step(TRAINING_CLOCK, step, ["b"])[-1][1].due)
    assert gated_fates == plain_fates and any(fate == [] for fate in plain_fates)  # (loss did something)
    assert gated.dropped_range["b"] == 3
    assert gated.metrics()["talk/a_to_b/dropped_range"] == 3 and "talk/a_to_b/dropped_range" not in plain.metrics()


def test_path_loss_is_one_half_at_its_distance_and_rises_with_distance_as_the_log_distance_model_says():
    model = PathLossConfig(half_loss_distance=0.5, exponent=2.0, shadowing_db=4.0)
    assert model.loss_probability(0.5) == pytest.approx(0.5)
    # 10 n log10(2) = 6.02 dB over the threshold, 1.505 shadowing deviations: Phi(1.505) = 0.934.
    assert model.loss_probability(1.0) == pytest.approx(0.9339, abs=1e-4)
    assert model.loss_probability(0.25) == pytest.approx(1 - 0.9339, abs=1e-4)
    distances = [0.0, 0.1, 0.3, 0.5, 0.8, 2.0]
    losses = [model.loss_probability(d) for d in distances]
    assert losses == sorted(losses) and losses[0] == 0.0 and losses[-1] > 0.99


def test_path_loss_drops_its_share_of_messages_from_a_seeded_stream_of_its_own():
    def fates(run_seed: int, loss: float) -> list[list[int]]:
        outbox = StepOutbox("a", run_seed, lambda s, d: LinkConfig(delay_steps=2), range_link=lambda dst: RangeLink(loss, 0))
        result = []
        for step in range(4000):
            outbox.queue([("b", step)])
            result.append(outbox.close_step(TRAINING_CLOCK, step, ["b"])[-1][1].due)
        assert outbox.dropped_path_loss["b"] == sum(due == [] for due in result)
        assert outbox.metrics()["talk/a_to_b/dropped_path_loss"] == outbox.dropped_path_loss["b"]
        return result

    seeded = fates(4, 0.3)
    assert seeded == fates(4, 0.3) and seeded != fates(5, 0.3)  # the run seed decides, and only it
    assert sum(due == [] for due in seeded) / len(seeded) == pytest.approx(0.3, abs=0.03)
    assert all(due in ([], [step + 2]) for step, due in enumerate(seeded))  # the link's delay is untouched


# ------------------------------------------------------------------ the simulator under a mobility model


def drifting(step: int) -> np.ndarray:
    """a stays at 0; b is 0.5 away, drifts out to 3.0 during steps 10..19, and comes back."""
    return np.array([[0.0, 0.0], [3.0 if 10 <= step < 20 else 0.5, 0.0]])


class Chatter:
    """An engine that tells every neighbour it believes up the step, each step, and records what it hears."""

    def __init__(self, node: str, neighbours: list[str]) -> None:
        self.node, self.up = node, set(neighbours)
        self.heard: list[tuple[int, str, int]] = []  # (step heard, sender, step sent)
        self.events: list[tuple[int, str, str]] = []

    def on_message(self, sender, message, now):
        self.heard.append((int(now), sender, message))
        return []

    def on_timer(self, now):
        return [(peer, int(now)) for peer in sorted(self.up)]

    def next_deadline(self):
        return None

    def on_neighbour_down(self, peer, now):
        self.up.discard(peer)
        self.events.append((int(now), "down", peer))
        return []

    def on_neighbour_up(self, peer, now):
        self.up.add(peer)
        self.events.append((int(now), "up", peer))
        return []


def test_in_the_simulator_two_agents_drift_apart_and_back_their_edge_disappears_and_returns():
    engines = {"a": Chatter("a", ["b"]), "b": Chatter("b", ["a"])}
    network = StepNetwork(engines, {"a": ["b"], "b": ["a"]}, run_seed=5, config_for=lambda s, d: LinkConfig(delay_steps=1),
                          positions=drifting, radius=1.0)
    network.run_steps(30)
    assert [graph.edges for graph in network.graphs] == [1] * 10 + [0] * 10 + [1] * 10
    assert [graph.components for graph in network.graphs] == [1] * 10 + [2] * 10 + [1] * 10
    for node, other in (("a", "b"), ("b", "a")):
        # Down at the step it left, up at the step it came back (before that step's messages, as
        # in a node); heard until the last message sent in range (step 9, heard at 10: it was in
        # range when sent) and again from the first sent back in range (20, heard at 21).
        assert engines[node].events == [(10, "down", other), (20, "up", other)]
        assert [sent for _, sender, sent in engines[node].heard] == list(range(0, 10)) + list(range(20, 29))
        assert all(heard == sent + 1 for heard, _, sent in engines[node].heard)


def test_in_the_simulator_loss_rises_as_two_agents_drift_apart_within_the_range():
    """b walks away from a, one step at a time, from 0.1 to 1.0 (the radius); messages sent
    near get through more often than those sent far."""
    engines = {"a": Chatter("a", ["b"]), "b": Chatter("b", ["a"])}
    walk = np.linspace(0.1, 1.0, 400)
    network = StepNetwork(engines, {"a": ["b"], "b": ["a"]}, run_seed=2, config_for=lambda s, d: LinkConfig(delay_steps=1),
                          positions=lambda step: np.array([[0.0], [walk[min(step, 399)]]]), radius=1.0,
                          path_loss=PathLossConfig(half_loss_distance=0.5, exponent=3.0, shadowing_db=4.0))
    network.run_steps(401)
    heard = {sent for _, _, sent in engines["a"].heard}
    near, far = sum(step in heard for step in range(0, 100)), sum(step in heard for step in range(300, 400))
    assert near >= 90 and far <= 25, (near, far)  # ~0 lost below 0.33, ~90% lost beyond 0.78
    assert engines["a"].events == []  # lossy, but within range: b stays a neighbour


def sync_engines(nodes: list[str], rounds: int, mixing_row=None) -> dict[str, SyncConsensus]:
    """Synchronous consensus over the full graph of a proximity topology (Metropolis: 1/n each)."""
    weights = metropolis_weights(build_topology(TopologyConfig(kind="proximity", radius=1.0), nodes))
    return {node: SyncConsensus(node, {other: float(weights[i, j]) for j, other in enumerate(nodes) if other != node},
                                float(weights[i, i]), rounds=rounds, round_timeout_s=50.0,
                                mixing_row=None if mixing_row is None else (lambda node=node: mixing_row(node)))
            for i, node in enumerate(nodes)}


def run_sync_on_moving_graph(where, rounds: int, recompute: bool) -> tuple[dict[str, float], StepNetwork]:
    """a, b, c start at 0, 6, 30 and average on the graph `where(step)` gives (radius 1); with
    `recompute`, each mix takes Metropolis weights on its step's graph, as a node does."""
    nodes = ["a", "b", "c"]
    graph = {"now": None}

    def row(node: str):
        weights = metropolis_from_adjacency(in_range_matrix(graph["now"], 1.0))
        i = nodes.index(node)
        return {other: float(weights[i, j]) for j, other in enumerate(nodes) if other != node}, float(weights[i, i])

    engines = sync_engines(nodes, rounds, row if recompute else None)
    network = StepNetwork(engines, {n: [o for o in nodes if o != n] for n in nodes}, run_seed=1,
                          config_for=lambda s, d: LinkConfig(delay_steps=1), positions=where, radius=1.0)
    values = {"a": 0.0, "b": 6.0, "c": 30.0}
    for step in range(rounds + 4):
        graph["now"] = where(step)  # (what the node's tracker holds while it handles the step)
        if step == 1:
            for node in nodes:
                network.begin(node, engines[node].start, ConsensusRequest({"x": np.array([values[node]])}, 0), 1.0)
        network.step()
    assert all(engine.done for engine in engines.values())
    return {node: float(engines[node].result["x"][0]) for node in nodes}, network


def test_consensus_with_c_out_of_range_does_not_wait_for_it_and_keeps_the_teams_mean():
    """c is out of range all along: nobody waits for it (its own run ends at once, alone, with its
    own value), a and b agree on their mean, and the team's mean is kept exactly (both ends of
    an edge drop it at the same step, so W stays symmetric). What is lost: agreement across
    components. Metropolis weights of each step's graph give a and b their mean in one round;
    the full graph's fixed weights (1/3 each, c's share kept on one's own value) only approach it."""
    apart = lambda step: np.array([[0.0], [0.5], [9.0]])
    recomputed, network = run_sync_on_moving_graph(apart, rounds=4, recompute=True)
    fixed, _ = run_sync_on_moving_graph(apart, rounds=4, recompute=False)
    for results in (recomputed, fixed):
        assert results["c"] == 30.0 and sum(results.values()) == pytest.approx(36.0, abs=1e-9)
    assert recomputed["a"] == recomputed["b"] == 3.0
    assert 0 < abs(fixed["a"] - fixed["b"]) < 6.0 / 3 ** 4 * 1.01  # (contracts by 1/3 per round)
    assert max(step for step, *_ in network.deliveries) <= 4 + 1  # one round per step: nobody waited


def test_consensus_on_a_graph_that_changes_between_its_rounds_keeps_the_teams_mean():
    """b is in range of a and c only in some steps (it drifts across), so every round mixes on
    another graph; Metropolis weights of each round's graph keep W symmetric and the mean exact."""
    crossing = lambda step: np.array([[0.0], [0.6 if step % 3 else 5.0], [1.2]])
    results, network = run_sync_on_moving_graph(crossing, rounds=6, recompute=True)
    assert sum(results.values()) == pytest.approx(36.0, abs=1e-9)
    assert len({graph.edges for graph in network.graphs}) > 1  # (the graph did change)
    assert max(results.values()) - min(results.values()) < 30.0  # (and they moved towards each other)


def test_push_sum_on_a_graph_that_follows_positions_reaches_the_exact_team_mean_once_the_graph_joins_again():
    """Push-sum over running sums keeps its guarantee on a changing graph: c is out of everyone's
    range for steps 0..39 (a and b mix alone, the mass c holds waits with it), then comes back;
    with path loss on top (messages lost within the range, made good by the next push), every
    estimate ends at the exact mean of the three starting values."""
    nodes = ["a", "b", "c"]
    engines = {node: PushSumConsensus(node, [o for o in nodes if o != node], period_s=1.0, duration_s=150.0) for node in nodes}
    values = {"a": 0.0, "b": 6.0, "c": 30.0}
    network = StepNetwork(engines, {n: [o for o in nodes if o != n] for n in nodes}, run_seed=8,
                          config_for=lambda s, d: LinkConfig(delay_steps=1),
                          positions=lambda step: np.array([[0.0], [0.4], [9.0 if step < 40 else 0.2]]), radius=1.0,
                          path_loss=PathLossConfig(half_loss_distance=0.4, exponent=2.0, shadowing_db=4.0))
    network.run_steps(1)
    for node in nodes:
        network.begin(node, engines[node].start, ConsensusRequest({"x": np.array([values[node]])}, 0), 1.0)
    network.run_steps(39)
    middle = {node: float(engines[node].estimate()["x"][0]) for node in nodes}
    assert middle["c"] == 30.0 and abs(middle["a"] - 3.0) < 0.1 and abs(middle["b"] - 3.0) < 0.1  # two components
    network.run_steps(160)
    dropped = sum(outbox.dropped_path_loss[dst] for outbox in network.outboxes.values() for dst in nodes)
    assert dropped > 10  # (the path loss did lose messages)
    for node in nodes:
        assert engines[node].done and float(engines[node].result["x"][0]) == pytest.approx(12.0, abs=1e-6), node


# ------------------------------------------------------------------ several env copies


def two_worlds(step: int = 0) -> np.ndarray:
    """Two copies of a three-agent world (1-D): in copy 0 all three are in range of each other
    (radius 1); in copy 1 c is far away, and a and b are 0.8 apart."""
    return np.array([[[0.0], [0.3], [0.6]],
                     [[0.0], [0.8], [9.0]]])


def test_with_several_copies_a_neighbour_is_in_range_while_it_is_in_range_in_some_copy():
    tracker = ProximityNeighbours(["a", "b", "c"], "a", radius=1.0)
    assert tracker.update(two_worlds()) == ([], [])  # c is in range in copy 0
    assert tracker.num_copies == 2
    far = two_worlds().copy()
    far[0, 2] = 5.0  # c now out of range in both copies
    assert tracker.update(far) == (["c"], [])
    assert tracker.adjacency().tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert tracker.update(two_worlds()) == ([], ["c"])
    # The team's graph is the union (3 edges, one component); each copy has its own (3 and 1 edges).
    assert (tracker.summary().edges, tracker.summary().components) == (3, 1)
    assert tracker.edges_per_copy() == 2.0


def test_each_copys_link_has_its_own_loss_and_delay_and_a_message_about_no_copy_takes_the_nearest():
    tracker = ProximityNeighbours(["a", "b", "c"], "a", radius=1.0,
                                  path_loss=PathLossConfig(half_loss_distance=0.5), delay_steps_per_unit=5.0)
    tracker.update(two_worlds())
    to_b, to_c = tracker.link("b"), tracker.link("c")
    model = PathLossConfig(half_loss_distance=0.5)
    np.testing.assert_allclose(to_b.copy_loss, [model.loss_probability(0.3), model.loss_probability(0.8)])
    assert to_b.copy_extra_delay_steps.tolist() == [2, 4]  # round(1.5) = 2 (half up), round(4.0) = 4
    assert (to_b.loss, to_b.extra_delay_steps) == (model.loss_probability(0.3), 2)  # the nearest copy's link
    assert np.isnan(to_c.copy_loss[1]) and to_c.copy_loss[0] == model.loss_probability(0.6)
    assert tracker.range_loss("c") == model.loss_probability(0.6)
    # One copy: no per-copy link, so the outbox takes the one-copy path it always took.
    tracker.update(two_worlds()[0])
    assert tracker.num_copies == 1 and tracker.link("b").copy_loss is None


def flood_table(nodes: list[str], k: int = 2) -> FloodTable:
    values = np.arange(len(nodes) * k * 3, dtype=np.float32).reshape(len(nodes), k, 3)
    return FloodTable("train:0", 1, nodes, values, copy_axis=0)


def test_a_message_about_copies_keeps_only_the_copies_in_range_and_a_message_about_none_follows_the_union():
    tracker = ProximityNeighbours(["a", "b", "c"], "a", radius=1.0)
    tracker.update(two_worlds())
    outbox = StepOutbox("a", 1, lambda s, d: LinkConfig(delay_steps=1), range_link=tracker.link)
    table = flood_table(["a", "b"])
    outbox.queue([("b", table), ("c", table), ("c", "a share about no copy")])
    sent = dict((dst, []) for dst in "bc")
    for dst, message in outbox.close_step(TRAINING_CLOCK, 0, ["b", "c"]):
        sent[dst].append(message)
    assert sent["b"][0] is table  # in range in every copy: the very message
    to_c = sent["c"][0]
    assert np.isnan(to_c.values[:, 1]).all() and np.array_equal(to_c.values[:, 0], table.values[:, 0])  # copy 1 cut
    assert sent["c"][1] == "a share about no copy" and sent["c"][2].due == [1, 1]
    assert dict(outbox.copies_cut) == {"b": 0, "c": 1} and outbox.metrics()["talk/a_to_c/copies_cut"] == 1
    # An evaluation's copies are not the training world's: its messages follow the union, whole.
    outbox.queue([("c", table)])
    assert outbox.close_step("eval:0", 0, ["c"])[0][1] is table


def test_each_copy_has_its_own_path_loss_draw_and_a_message_about_copies_waits_for_its_farthest_copy():
    """b is 0.01 from a in copy 0 (no loss) and 0.8 in copy 1 (lost nearly always): a table keeps
    copy 0 and loses copy 1; with a distance delay a table carrying both copies is due at the
    farther copy's delay, a message about no copy at the nearer's."""
    worlds = np.array([[[0.0], [0.01], [5.0]], [[0.0], [0.8], [5.0]]])
    steep = PathLossConfig(half_loss_distance=0.1, exponent=4.0, shadowing_db=1.0)
    tracker = ProximityNeighbours(["a", "b", "c"], "a", radius=1.0, path_loss=steep)
    tracker.update(worlds)
    outbox = StepOutbox("a", 1, lambda s, d: LinkConfig(delay_steps=1), range_link=tracker.link)
    table = flood_table(["a"])
    for step in range(50):
        outbox.queue([("b", table)])
        sent = outbox.close_step(TRAINING_CLOCK, step, ["b"])
        assert np.isnan(sent[0][1].values[:, 1]).all() and not np.isnan(sent[0][1].values[:, 0]).any()
    assert outbox.copies_cut["b"] == 50 and outbox.dropped_path_loss["b"] == 0
    only_far = HindsightRows("train:0", np.zeros((1, 4), np.float32), np.zeros(1, np.int64), np.zeros((1, 4), np.float32),
                             np.zeros(1, bool), np.zeros(1, np.int64), np.zeros(1, np.int64), copies=np.array([1]))
    outbox.queue([("b", only_far)])
    assert outbox.close_step(TRAINING_CLOCK, 50, ["b"])[-1][1].due == []
    assert outbox.dropped_path_loss["b"] == 1  # its one copy in range was lost to the distance

    delayed = ProximityNeighbours(["a", "b", "c"], "a", radius=1.0, delay_steps_per_unit=5.0)
    delayed.update(two_worlds())  # a-b: 0.3 in copy 0 (2 steps), 0.8 in copy 1 (4 steps)
    outbox = StepOutbox("a", 1, lambda s, d: LinkConfig(delay_steps=1), range_link=delayed.link)
    outbox.queue([("b", flood_table(["a"])), ("b", "about no copy")])
    assert outbox.close_step(TRAINING_CLOCK, 10, ["b"])[-1][1].due == [10 + 1 + 4, 10 + 1 + 2]


def test_a_message_with_nothing_left_in_range_is_dropped_and_counted_for_range():
    tracker = ProximityNeighbours(["a", "b", "c"], "a", radius=1.0)
    tracker.update(two_worlds())
    outbox = StepOutbox("a", 1, lambda s, d: LinkConfig(delay_steps=1), range_link=tracker.link)
    rows_of_copy_1 = HindsightRows("train:0", np.zeros((2, 4), np.float32), np.zeros(2, np.int64), np.zeros((2, 4), np.float32),
                                   np.zeros(2, bool), np.zeros(2, np.int64), np.zeros(2, np.int64), copies=np.array([1, 1]))
    outbox.queue([("c", rows_of_copy_1)])
    assert outbox.close_step(TRAINING_CLOCK, 0, ["c"])[-1][1].due == []
    assert outbox.dropped_range["c"] == 1 and outbox.copies_cut["c"] == 0


def test_hindsight_rows_restricted_to_copies_keep_the_rows_of_those_copies():
    rows = HindsightRows("train:0", np.arange(8, dtype=np.float32).reshape(4, 2), np.arange(4), np.zeros((4, 2), np.float32),
                         np.zeros(4, bool), np.zeros(4, np.int64), np.ones(4, np.int64), copies=np.array([0, 1, 0, 2]))
    kept = rows.restricted_to_copies(np.array([True, False, True]))
    assert kept.actions.tolist() == [0, 2, 3] and kept.copies.tolist() == [0, 0, 2] and kept.obs.shape == (3, 2)
    assert rows.restricted_to_copies(np.array([False, True, False])).actions.tolist() == [1]
    assert rows.restricted_to_copies(np.array([False, False, True])).copies.tolist() == [2]
    assert HindsightRows(*[getattr(rows, f) for f in ("episode", "obs", "actions", "next_obs", "terminated", "pursued",
                                                      "reached")], copies=np.array([1, 1, 1, 1])
                         ).restricted_to_copies(np.array([True, False])) is None


def test_flooding_merges_a_values_copies_from_the_tables_that_have_them_and_is_complete_only_when_all_are_known():
    engine = FloodEngine("a", round_timeout_s=5)
    own = np.zeros((2, 3), np.float32)
    engine.start(FloodRequest("train:0", own, ["b", "c"], team_size=3, rounds=1, copy_axis=0), 0.0)
    b_value = np.ones((2, 3), np.float32)
    only_copy_0 = FloodTable("train:0", 1, ["b"], b_value[None].copy(), copy_axis=0).restricted_to_copies(np.array([True, False]))
    only_copy_1 = FloodTable("train:0", 1, ["b", "c"], np.stack([b_value, 2 * b_value]), copy_axis=0
                             ).restricted_to_copies(np.array([False, True]))
    engine.on_message("b", only_copy_0, 1.0)
    engine.on_message("c", only_copy_1, 1.0)
    result = engine.result
    np.testing.assert_array_equal(result.values["b"], b_value)  # copy 0 from b, copy 1 from c's table
    assert np.isnan(result.values["c"][0]).all() and (result.values["c"][1] == 2).all()
    assert not result.complete  # c's row of copy 0 is unknown


def test_the_assignment_of_a_copy_uses_only_the_rows_known_in_that_copy():
    nan = np.full(2, np.nan)
    table = {"a": np.array([[0.1, 0.9], [0.1, 0.9]]), "b": np.array([[0.2, 5.0], nan])}
    # Copy 0: b's row says it must take landmark 0, so a takes 1; copy 1: a alone takes its nearest.
    assert assign(table, "a").tolist() == [1, 0]
    assert rows_known(table) == 1.5


def run_flooding(positions, values: dict[str, np.ndarray], rounds: int) -> dict[str, FloodResult]:
    nodes = sorted(values)
    engines = {node: FloodEngine(node, round_timeout_s=4) for node in nodes}
    network = StepNetwork(engines, {n: [o for o in nodes if o != n] for n in nodes}, run_seed=3,
                          config_for=lambda s, d: LinkConfig(delay_steps=1), positions=positions, radius=1.0)
    network.run_steps(1)  # (the first positions: a run begins on its step's graph, as in a node)
    for node in nodes:
        live = [o for o in nodes if o != node and not network.proximity[node].out_of_range(o)]
        request = FloodRequest("train:1", values[node], live, team_size=len(nodes), rounds=rounds, copy_axis=0)
        network.begin(node, engines[node].start, request, 1.0)
    network.run_steps(20)
    assert all(engine.done for engine in engines.values())
    return {node: engine.result for node, engine in engines.items()}


def test_in_the_simulator_each_copy_floods_over_its_own_graph_as_one_copy_runs_would():
    """The oracle: K one-copy runs. a-b-c on a line in copy 0 (a and c only through b), c far
    away in copy 1: each copy's values reach exactly whom they reach in a run of that copy alone."""
    worlds = np.array([[[0.0], [0.9], [1.8]], [[0.0], [0.8], [9.0]]])
    values = {node: np.array([[i, 10.0 + i], [20.0 + i, 30.0 + i]], np.float32) for i, node in enumerate("abc")}
    both = run_flooding(lambda step: worlds, values, rounds=2)
    for copy in range(2):
        alone = run_flooding(lambda step: worlds[copy], {n: v[copy:copy + 1] for n, v in values.items()}, rounds=2)
        for node in "abc":
            known_alone = {o: v for o, v in alone[node].values.items()}
            known_both = {o: v[copy:copy + 1] for o, v in both[node].values.items() if np.isfinite(v[copy]).all()}
            assert known_both.keys() == known_alone.keys(), (copy, node)
            for other in known_alone:
                np.testing.assert_array_equal(known_both[other], known_alone[other])
    assert both["a"].values.keys() == {"a", "b", "c"} and np.isnan(both["a"].values["c"][1]).all()
    assert both["c"].values.keys() == {"a", "b", "c"} and not both["c"].complete


# ------------------------------------------------------------------ delay rising with distance


def test_a_distance_adds_its_steps_rounded_half_up():
    assert distance_delay_steps(None, 3.0) == 0
    assert [distance_delay_steps(4.0, d) for d in (0.0, 0.1, 0.125, 0.3, 1.0)] == [0, 0, 1, 1, 4]


def test_in_the_simulator_delay_rises_as_two_agents_drift_apart_and_draws_nothing():
    """b walks from 0.1 to 1.0 away from a (radius 1): each message arrives 1 step (the link's
    delay) plus round(10 d) steps after it was sent, and the link's loss draws are those of a
    run without the distance delay (the delay is a function of the positions)."""
    walk = np.linspace(0.1, 1.0, 100)

    def heard(delay_steps_per_unit):
        engines = {"a": Chatter("a", ["b"]), "b": Chatter("b", ["a"])}
        network = StepNetwork(engines, {"a": ["b"], "b": ["a"]}, run_seed=2,
                              config_for=lambda s, d: LinkConfig(delay_steps=1, loss=0.2),
                              positions=lambda step: np.array([[0.0], [walk[min(step, 99)]]]), radius=1.0,
                              delay_steps_per_unit=delay_steps_per_unit)
        network.run_steps(130)
        return engines["a"].heard

    delayed, plain = heard(10.0), heard(None)
    extra = lambda sent: distance_delay_steps(10.0, walk[min(sent, 99)])
    assert all(at == sent + 1 + extra(sent) for at, _, sent in delayed)
    # The same messages got through (the loss draws are untouched), those due within the run.
    assert {sent for *_, sent in delayed} == {sent for *_, sent in plain if sent + 1 + extra(sent) <= 129}
    assert len(plain) < 129  # (the loss did lose some)
    assert {at - sent for at, _, sent in delayed} == set(range(2, 12))  # 1 + round(1) .. 1 + round(10)


def test_delay_by_distance_is_validated_naming_the_field():
    config = load_config(MAIN_JOB, [*PROXIMITY, "topology.delay_steps_per_unit=4"])
    assert config.topology.delay_steps_per_unit == 4.0
    for bad in (0, -1, "inf"):
        with pytest.raises(ValidationError, match="topology.delay_steps_per_unit must be a finite number"):
            TopologyConfig(kind="proximity", radius=1.0, delay_steps_per_unit=bad)
    with pytest.raises(ValidationError, match="topology.delay_steps_per_unit does not apply to kind 'ring'"):
        TopologyConfig(kind="ring", delay_steps_per_unit=2.0)


# ------------------------------------------------------------------ positions from the env


def test_mpe_positions_are_published_with_every_step_and_observation_and_keep_bodies_out_of_the_packed_layout():
    envs = VectorizedParallelEnv(lambda: make_env("mpe2.simple_spread_v3", {"N": 3}), 1, autoreset=True,
                                 positions_reader=mpe_positions)
    world = envs.copies[0].unwrapped.world
    result = envs.reset(seed=4)
    assert result.positions.shape == (1, 3, 2)
    np.testing.assert_array_equal(result.positions[0], [agent.state.p_pos for agent in world.agents])
    for _ in range(30):  # past an episode's end (25 steps): positions after the autoreset
        result = envs.step({agent: np.array([1]) for agent in envs.possible_agents})
        np.testing.assert_array_equal(result.positions[0], [agent.state.p_pos for agent in world.agents])
    observation = observation_for(["agent_0"], result, 30, [], False, False)
    np.testing.assert_array_equal(observation.positions, result.positions)  # every agent's, to each client
    assert packing_refusal(envs, ["agent_0"]) == "positions are published (topology.kind: proximity)"
    layout = PackedLayout(["agent_0"], envs.observation_spaces, envs.action_spaces, envs.possible_agents)
    assert not layout.fits(observation)
    plain = VectorizedParallelEnv(lambda: make_env("mpe2.simple_spread_v3", {"N": 3}), 1, autoreset=True)
    assert plain.reset(seed=4).positions is None and packing_refusal(plain, ["agent_0"]) is None


def test_a_users_positions_reader_is_checked_naming_env_positions():
    agents = ["x", "y"]
    read = read_positions(lambda env: {"x": [1.0, 2.0]}, None, agents)
    assert read[0].tolist() == [1.0, 2.0] and np.isnan(read[1]).all()  # y left out: nowhere
    with pytest.raises(ValueError, match="env.positions: .* not among the env's"):
        read_positions(lambda env: {"z": [1.0]}, None, agents)
    with pytest.raises(ValueError, match="env.positions: expected one position of the same length"):
        read_positions(lambda env: {"x": [1.0], "y": [1.0, 2.0]}, None, agents)
    with pytest.raises(ValueError, match="env.positions: expected the reader to return a mapping"):
        read_positions(lambda env: [1.0], None, agents)


def test_positions_travel_in_an_env_observation_through_the_codec():
    from protocols.codec.wire import Envelope, decode, encode

    positions = np.array([[[0.5, -0.25], [1.0, 2.0]]])
    observation = m.EnvObservation(step=3, observations={}, rewards={}, terminated={}, truncated={}, active={},
                                   final_observations={}, episode_start=np.zeros(1, bool), positions=positions)
    frames = encode(observation, sender="env", run_id="r", seq=0)
    np.testing.assert_array_equal(decode(frames).message.positions, positions)


# ------------------------------------------------------------------ config


def problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(MAIN_JOB, list(overrides))
    return list(caught.value.problems)


def test_the_main_job_validates_with_links_that_follow_positions_in_its_eight_copies():
    assert load_config(MAIN_JOB, list(PROXIMITY[:2])).env.num_copies == 8
    config = load_config(MAIN_JOB, list(PROXIMITY))
    assert config.topology.radius == 0.8 and config.env.positions is None
    assert BUILTIN_POSITIONS[config.env.name] == "env_server.positions:mpe_positions"
    assert len(config.build_topology().edges) == 6  # every pair may talk
    lossy = load_config(MAIN_JOB, [*PROXIMITY, "topology.path_loss={half_loss_distance: 0.6, exponent: 3}"])
    assert lossy.topology.path_loss == PathLossConfig(half_loss_distance=0.6, exponent=3.0, shadowing_db=4.0)


@pytest.mark.parametrize("overrides, expected", [
    (("topology={kind: proximity, radius: 0.8}", "env.num_copies=1"),
     "protocols.talk: topology.kind proximity delivers a peer message only if its agents were in range"),
    (("topology={kind: proximity, radius: 0.8, delay_steps_per_unit: 4}", "env.num_copies=1"),
     "topology.delay_steps_per_unit: a delay counted in env steps needs protocols.talk: env_steps"),
    ((*PROXIMITY, "agents.landmarks=null", "env.name=reward_collection_v0", "env.kwargs={num_agents: 4}"),
     "env.positions: topology.kind proximity needs every agent's position, and reward_collection_v0 has no built-in reader"),
    ((*PROXIMITY[:2], "env.num_workers=2"),
     "env.num_workers: positions are read by the env server's own copies"),
    ((*PROXIMITY, "protocols.consensus.weights=uniform"),
     "protocols.consensus.weights: synchronous rounds on a graph that follows positions mix with Metropolis weights"),
    (("env.positions=my_env.world:positions",),
     "env.positions: names where the agents are for links that follow them, which only topology.kind proximity uses"),
])
def test_validate_refuses_what_links_from_positions_cannot_do_naming_the_field(overrides, expected):
    found = problems(*overrides)
    assert any(expected in problem for problem in found), found


def test_a_users_env_with_a_positions_reader_may_follow_positions():
    config = load_config(ROOT / "configs" / "tiny_sac_reward_collection.yaml",
                         [*PROXIMITY, "env.positions=my_env.world:positions"])
    assert config.env.positions == "my_env.world:positions"


@pytest.mark.parametrize("fields, expected", [
    ({"kind": "proximity"}, "topology.radius is required for kind 'proximity'"),
    ({"kind": "proximity", "radius": 0.0}, "topology.radius must be a finite distance > 0"),
    ({"kind": "ring", "radius": 1.0}, "topology.radius does not apply to kind 'ring'"),
    ({"kind": "proximity", "radius": 1.0, "degree": 2}, "topology.degree does not apply to kind 'proximity'"),
    ({"kind": "ring", "path_loss": {"half_loss_distance": 1.0}}, "topology.path_loss does not apply to kind 'ring'"),
    ({"kind": "proximity", "radius": 1.0, "path_loss": {"half_loss_distance": 0.5, "sigma": 4}}, "path_loss.sigma"),
    ({"kind": "proximity", "radius": 1.0, "path_loss": {"exponent": 2.0}}, "path_loss.half_loss_distance"),
])
def test_the_topology_section_refuses_a_proximity_without_its_radius_and_a_radius_elsewhere(fields, expected):
    with pytest.raises(ValidationError, match=expected):
        TopologyConfig(**fields)


def test_env_positions_must_be_an_import_path():
    with pytest.raises(ConfigError) as caught:
        load_config(MAIN_JOB, [*PROXIMITY, "env.positions=positions"])
    assert any(problem.startswith("env.positions: expected an import path") for problem in caught.value.problems)


def test_the_report_shows_the_teams_graph_over_time_from_the_agents_metrics():
    from orchestrator.report import _proximity_summary, proximity_lines

    rows = [{"step": 5, "proximity/edges": 3.0, "proximity/components": 1.0},
            {"step": 10, "proximity/edges": 0.4, "proximity/components": 3.6},
            {"step": 10, "proximity/range_changes": 4.0, "talk/agent_0_to_agent_1/dropped_range": 2.0,
             "talk/agent_0_to_agent_1/dropped_path_loss": 1.0}]
    other = [{"step": 10, "proximity/range_changes": 2.0, "talk/agent_1_to_agent_0/dropped_range": 1.0}]
    graph = _proximity_summary({"agent_0": rows, "agent_1": other})
    assert graph["series"] == [[5, 3.0, 1.0], [10, 0.4, 3.6]]
    assert (graph["edges_mean"], graph["components_mean"], graph["connected_fraction"]) == (1.7, 2.3, 0.5)
    assert (graph["range_changes"], graph["dropped_range"], graph["dropped_path_loss"]) == (6.0, 3.0, 1.0)
    assert "one component throughout 50% of them" in proximity_lines({"proximity": graph})[0]
    assert _proximity_summary({"agent_0": [{"step": 5, "env/episode_return": -3.0}]}) is None
    assert "each copy's own" not in proximity_lines({"proximity": graph})[0]
    copies = [{**row, "proximity/edges_per_copy": 1.0} if "proximity/edges" in row else row for row in rows]
    copies[-1] = {**copies[-1], "talk/agent_0_to_agent_1/copies_cut": 7.0}
    graph = _proximity_summary({"agent_0": copies, "agent_1": other})
    assert (graph["edges_per_copy_mean"], graph["copies_cut"]) == (1.0, 7.0)
    assert "each copy's own had 1 edges on average, and 7 copies were cut out" in proximity_lines({"proximity": graph})[0]
