"""Consensus engines: synchronous rounds and push-sum, driven by hand and through the simulator."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pydantic
import pytest

from protocols.engines.consensus import (
    ConsensusDone,
    ConsensusConfig,
    ConsensusRequest,
    ConsensusShare,
    PushSumConsensus,
    PushSumShare,
    SyncConsensus,
    build_consensus_engine,
    rounds_predicted_by_spectrum,
    rounds_to_tolerance,
)
from protocols.codec import wire
from protocols.net.links import LinkConfig
from protocols.codec.messages import MESSAGE_TYPES
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere
from protocols.engines.topology import (
    Topology,
    exponential,
    grid,
    metropolis_weights,
    random_regular,
    ring,
    second_largest_eigenvalue_modulus,
    uniform_neighbour_weights,
)


def random_tensors(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"J": rng.normal(size=(3, 2)), "h": rng.normal(loc=5.0, size=4)} for _ in range(n)]


def average(tensors: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.mean([t[name] for t in tensors], axis=0) for name in tensors[0]}


def sync_engines(topology: Topology, weights: np.ndarray, rounds: int, timeout: float = 1.0) -> dict[str, SyncConsensus]:
    engines = {}
    for i, node in enumerate(topology.nodes):
        neighbour_weights = {topology.nodes[j]: float(weights[i, j]) for j in topology.neighbours(i)}
        engines[node] = SyncConsensus(node, neighbour_weights, float(weights[i, i]), rounds, timeout)
    return engines


def run_sync(topology, weights, initial, rounds, link=LinkConfig(), timeout=1.0, crashed=(), seed=0):
    engines = sync_engines(topology, weights, rounds, timeout)
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=seed)
    for node in crashed:
        sim.crash(node)
    for i, node in enumerate(topology.nodes):
        if node not in crashed:
            sim.call(node, lambda engine, now, i=i: engine.start(ConsensusRequest(initial[i], 1), now))
    sim.run()
    return engines, sim


def share(epoch: int, round_: int, value: float) -> ConsensusShare:
    return ConsensusShare(epoch=epoch, round=round_, tensors={"x": np.array([value])})


def test_messages_are_registered_and_survive_the_wire():
    assert MESSAGE_TYPES["consensus.share"] is ConsensusShare
    assert MESSAGE_TYPES["consensus.push_sum"] is PushSumShare
    messages = [
        ConsensusShare(epoch=3, round=1, tensors={"J": np.eye(3), "h": np.arange(4, dtype=np.float32)}),
        PushSumShare(epoch=3, seq=17, weight_total=0.75, value_totals={"x": np.array([1.5, -2.0])}),
    ]
    for message in messages:
        frames = wire.encode(message, sender="agent_0", run_id="run", seq=1)
        decoded = wire.decode([bytes(frame) for frame in frames]).message
        assert type(decoded) is type(message)
        for field in dataclasses.fields(message):
            sent, received = getattr(message, field.name), getattr(decoded, field.name)
            if isinstance(sent, dict):
                assert sent.keys() == received.keys()
                for name in sent:
                    assert received[name].dtype == sent[name].dtype
                    np.testing.assert_array_equal(received[name], sent[name])
            else:
                assert received == sent


# -- synchronous rounds ----------------------------------------------------------------------


def test_sync_ring_of_five_reaches_the_exact_average():
    topology = ring(5)
    weights = uniform_neighbour_weights(topology, 0.5)
    initial = random_tensors(5, seed=1)
    engines, sim = run_sync(topology, weights, initial, rounds=80)
    target = average(initial)
    for node, engine in engines.items():
        assert engine.done, node
        for name in target:
            np.testing.assert_allclose(engine.result[name], target[name], rtol=0, atol=1e-12)
    # Exactly what the matrix iteration gives after 3 rounds, node by node.
    engines3, _ = run_sync(topology, weights, initial, rounds=3)
    stacked = np.stack([t["h"] for t in initial])
    expected = np.linalg.matrix_power(weights, 3) @ stacked
    for i, node in enumerate(topology.nodes):
        np.testing.assert_allclose(engines3[node].result["h"], expected[i], rtol=1e-14)
    assert sim.stats["lost_on_link"] == 0 and all(m["consensus/missing_neighbours"] == 0 for m in engines["agent_0"].round_metrics)


def test_sync_keeps_dtypes_and_reports_bytes():
    topology = ring(4)
    initial = [{"w": np.full(10, float(i), dtype=np.float32)} for i in range(4)]
    engines, _ = run_sync(topology, metropolis_weights(topology), initial, rounds=30)
    result = engines["agent_0"].result["w"]
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, 1.5, atol=1e-5)
    assert engines["agent_0"].round_metrics[0]["consensus/bytes_sent"] == 2 * 10 * 4  # two neighbours, 40 bytes each


@pytest.mark.parametrize(
    "topology, weights_of",
    [
        (ring(5), lambda t: uniform_neighbour_weights(t, 0.5)),
        (ring(8), metropolis_weights),
        (grid(3, 3, torus=True), metropolis_weights),
    ],
    ids=["ring5-uniform", "ring8-metropolis", "torus3x3-metropolis"],
)
def test_sync_disagreement_decays_like_lambda_2_to_the_k(topology, weights_of):
    weights = weights_of(topology)
    lambda_2 = second_largest_eigenvalue_modulus(weights)
    rounds = 24
    engines, _ = run_sync(topology, weights, random_tensors(topology.num_nodes, seed=3), rounds=rounds)
    worst = np.array([max(e.round_metrics[r]["consensus/disagreement_max"] for e in engines.values()) for r in range(rounds)])
    fitted_rounds = np.arange(4, rounds)  # skip the transient where faster modes still matter
    slope = np.polyfit(fitted_rounds, np.log(worst[fitted_rounds]), 1)[0]
    assert slope == pytest.approx(math.log(lambda_2), rel=0.10)


def test_stale_shares_are_never_mixed_in_and_future_ones_wait():
    engine = SyncConsensus("a", {"b": 0.25, "c": 0.25}, self_weight=0.5, rounds=3, round_timeout_s=2.0)
    outgoing = engine.start(ConsensusRequest({"x": np.array([0.0])}, 1), now=0.0)
    assert [(dest, msg.epoch, msg.round) for dest, msg in outgoing] == [("b", 1, 0), ("c", 1, 0)]

    assert engine.on_share("b", share(1, 0, 4.0), now=0.1) == []
    outgoing = engine.on_share("c", share(1, 0, 8.0), now=0.2)  # completes round 0
    assert engine.values["x"][0] == pytest.approx(0.5 * 0 + 0.25 * 4 + 0.25 * 8)
    assert [(dest, msg.round, msg.tensors["x"][0]) for dest, msg in outgoing] == [("b", 1, 3.0), ("c", 1, 3.0)]

    assert engine.on_share("b", share(1, 0, 1e9), now=0.3) == []  # old round
    # A run older than any this node remembers (it never ran run 0): dropped, not answered.
    assert engine.on_share("b", share(0, 2, 1e9), now=0.3) == []
    assert engine.counters["stale_dropped"] == 2
    assert engine.on_share("b", share(1, 2, 100.0), now=0.3) == []  # future round: buffered
    assert engine.counters["buffered"] == 1

    engine.on_share("b", share(1, 1, 3.0), now=0.4)
    engine.on_share("b", share(1, 1, -50.0), now=0.4)  # duplicate for the same round
    assert engine.counters["duplicates_dropped"] == 1
    engine.on_share("c", share(1, 1, 3.0), now=0.5)  # round 1 done; round 2 takes b's buffered share
    assert not engine.done
    engine.on_share("c", share(1, 2, 3.0), now=0.6)
    assert engine.done
    assert engine.result["x"][0] == pytest.approx(0.5 * 3 + 0.25 * 100 + 0.25 * 3)
    assert [m["consensus/missing_neighbours"] for m in engine.round_metrics] == [0, 0, 0]
    # After the end: stale, answered with how many rounds went to b (all 3), once.
    assert engine.on_share("b", share(1, 2, 7.0), now=0.7) == [("b", ConsensusDone(epoch=1, rounds_sent=3))]
    assert engine.on_share("b", share(1, 2, 7.0), now=0.8) == []
    assert engine.counters["stale_dropped"] == 4


def test_bad_shares_are_rejected_with_a_reason():
    engine = SyncConsensus("a", {"b": 0.5}, self_weight=0.5, rounds=2, round_timeout_s=1.0)
    engine.start(ConsensusRequest({"x": np.zeros(2)}, 0), now=0.0)
    engine.on_share("b", ConsensusShare(epoch=0, round=0, tensors={"x": np.zeros(3)}), now=0.0)
    assert "shape (3,)" in engine.last_rejection and "expected (2,)" in engine.last_rejection
    engine.on_share("b", ConsensusShare(epoch=0, round=0, tensors={"y": np.zeros(2)}), now=0.0)
    assert "names ['y']" in engine.last_rejection
    engine.on_share("z", share(0, 0, 1.0), now=0.0)
    assert "not a neighbour" in engine.last_rejection
    engine.on_share("b", share(0, 5, 1.0), now=0.0)
    assert "outside 0..1" in engine.last_rejection
    engine.on_message("b", "not a share", now=0.0)
    assert "unexpected message type str" in engine.last_rejection
    assert engine.counters["rejected"] == 5 and engine.round == 0
    # Values are checked as the round is mixed: a NaN share is refused and the round mixes
    # without it, as if it had not come (its weight stays on the node's own value).
    engine.on_share("b", ConsensusShare(epoch=0, round=0, tensors={"x": np.array([np.nan, 0.0])}), now=0.0)
    assert "'x' contains NaN" in engine.last_rejection and engine.counters["rejected"] == 6
    assert engine.round == 1 and engine.missing_by_round == [("b",)] and engine.values["x"].tolist() == [0.0, 0.0]
    assert math.isnan(engine.round_metrics[0]["consensus/disagreement_max"])


def test_a_large_share_with_nan_is_rejected_and_one_whose_distance_overflows_is_not():
    # Above a few entries the NaN check rides on the disagreement probe (a non-finite distance
    # is checked entry by entry): a NaN deep inside is still refused, and finite values whose
    # squared distance overflows float32 are still mixed.
    engine = SyncConsensus("a", {"b": 0.25, "c": 0.25}, self_weight=0.5, rounds=2, round_timeout_s=1.0)
    size = 100_000  # several of the mix's blocks
    engine.start(ConsensusRequest({"w": np.zeros((2, 3), np.float32), "x": np.zeros(size, np.float32)}, 0), now=0.0)
    poisoned = np.ones(size, np.float32)
    poisoned[size - 7] = np.nan  # in the last block
    engine.on_share("b", ConsensusShare(epoch=0, round=0, tensors={"w": np.ones((2, 3), np.float32), "x": poisoned}), now=0.0)
    engine.on_share("c", ConsensusShare(epoch=0, round=0, tensors={"w": np.ones((2, 3), np.float32), "x": np.ones(size, np.float32)}), now=0.0)
    assert "from 'b': tensor 'x' contains NaN or infinite values" in engine.last_rejection and engine.round == 1
    assert engine.missing_by_round == [("b",)] and np.all(engine.values["x"] == 0.25) and np.all(engine.values["w"] == 0.25)
    assert engine.round_metrics[0]["consensus/disagreement_max"] == pytest.approx(math.sqrt(size + 6))  # c's ones against zeros
    huge = np.full(size, 3e38, np.float32)  # its squared distance overflows; the mix does not
    for sender in ("b", "c"):
        engine.on_share(sender, ConsensusShare(epoch=0, round=1, tensors={"w": np.zeros((2, 3), np.float32), "x": huge}), now=0.0)
    assert engine.done and engine.counters["rejected"] == 1 and engine.missing_by_round[1] == ()
    assert np.all(np.isfinite(engine.result["x"])) and engine.result["x"][0] == pytest.approx(0.5 * 0.25 + 0.5 * 3e38, rel=1e-6)
    assert engine.round_metrics[1]["consensus/disagreement_max"] == math.inf


def test_missing_neighbour_round_closes_at_the_deadline():
    engine = SyncConsensus("a", {"b": 0.25, "c": 0.25}, self_weight=0.5, rounds=3, round_timeout_s=2.0)
    engine.start(ConsensusRequest({"x": np.array([1.0])}, 1), now=10.0)
    engine.on_share("b", share(1, 0, 5.0), now=10.1)
    assert engine.next_deadline() == 12.0
    assert engine.on_timer(11.9) == [] and engine.round == 0
    outgoing = engine.on_timer(12.0)
    assert engine.round == 1 and {dest for dest, _ in outgoing} == {"b", "c"}
    assert engine.values["x"][0] == pytest.approx(0.75 * 1.0 + 0.25 * 5.0)  # c's weight stayed on self
    assert engine.round_metrics[0]["consensus/missing_neighbours"] == 1
    assert engine.round_metrics[0]["consensus/round_duration_s"] == pytest.approx(2.0)
    assert engine.missing_by_round == [("c",)]
    for round_ in (1, 2):  # b keeps answering, c never does
        engine.on_share("b", share(1, round_, 2.0), now=engine.next_deadline() - 1.5)
        engine.on_timer(engine.next_deadline())
    assert engine.done and engine.next_deadline() is None
    assert engine.missing_by_round == [("c",), ("c",), ("c",)]


def test_crashed_node_delays_but_never_blocks_the_others():
    topology = ring(5)
    rounds, timeout = 6, 0.5
    engines, sim = run_sync(
        topology, metropolis_weights(topology), random_tensors(5, seed=2), rounds=rounds,
        link=LinkConfig(delay_s=0.01), timeout=timeout, crashed=("agent_2",),
    )
    alive = [node for node in topology.nodes if node != "agent_2"]
    assert all(engines[node].done for node in alive)
    assert sim.now <= rounds * timeout + 0.1
    for node in ("agent_1", "agent_3"):
        assert engines[node].missing_by_round == [("agent_2",)] * rounds
    assert all(m["consensus/missing_neighbours"] == 0 for m in engines["agent_0"].round_metrics)


def test_total_loss_still_finishes_by_the_deadline_with_own_values():
    topology = ring(4)
    initial = random_tensors(4, seed=5)
    engines, sim = run_sync(topology, metropolis_weights(topology), initial, rounds=4, link=LinkConfig(loss=1.0), timeout=0.25)
    assert sim.now == pytest.approx(4 * 0.25)
    for i, node in enumerate(topology.nodes):
        np.testing.assert_array_equal(engines[node].result["J"], initial[i]["J"])
        assert math.isnan(engines[node].round_metrics[0]["consensus/disagreement_max"])


def test_neighbour_declared_dead_is_not_waited_for_and_comes_back_next_round():
    engine = SyncConsensus("a", {"b": 0.25, "c": 0.25}, self_weight=0.5, rounds=3, round_timeout_s=5.0)
    engine.start(ConsensusRequest({"x": np.array([0.0])}, 1), now=0.0)
    engine.on_share("b", share(1, 0, 4.0), now=0.1)
    outgoing = engine.on_neighbour_down("c", now=0.2)  # round 0 can close now
    assert engine.round == 1 and [dest for dest, _ in outgoing] == ["b"]
    assert engine.on_neighbour_up("c", now=0.3) == []
    outgoing = engine.on_share("b", share(1, 1, 0.0), now=0.4)  # c was not expected in round 1
    assert engine.round == 2 and [dest for dest, _ in outgoing] == ["b", "c"]
    assert engine.missing_by_round == [("c",), ("c",)]
    with pytest.raises(ValueError, match="'q' is not a neighbour"):
        engine.on_neighbour_down("q", now=0.5)


def test_sync_constructor_and_start_validate_their_inputs():
    with pytest.raises(ValueError, match="sum to 1"):
        SyncConsensus("a", {"b": 0.3}, self_weight=0.5, rounds=3, round_timeout_s=1.0)
    with pytest.raises(ValueError, match="lists itself"):
        SyncConsensus("a", {"a": 0.5}, self_weight=0.5, rounds=3, round_timeout_s=1.0)
    with pytest.raises(ValueError, match="round_timeout_s"):
        SyncConsensus("a", {"b": 0.5}, self_weight=0.5, rounds=3, round_timeout_s=0.0)
    engine = SyncConsensus("a", {"b": 0.5}, self_weight=0.5, rounds=3, round_timeout_s=1.0)
    with pytest.raises(TypeError, match="floating dtype"):
        engine.start(ConsensusRequest({"x": np.arange(3)}, 1), now=0.0)
    with pytest.raises(TypeError, match="numpy array"):
        engine.start(ConsensusRequest({"x": [1.0, 2.0]}, 1), now=0.0)
    engine.start(ConsensusRequest({"x": np.zeros(3)}, 1), now=0.0)
    with pytest.raises(ValueError, match="epoch must increase"):
        engine.start(ConsensusRequest({"x": np.zeros(3)}, 1), now=0.0)
    with pytest.raises(RuntimeError, match="not finished"):
        engine.result


def test_second_epoch_uses_shares_that_arrived_before_it_started():
    engine = SyncConsensus("a", {"b": 0.5}, self_weight=0.5, rounds=1, round_timeout_s=1.0)
    engine.start(ConsensusRequest({"x": np.array([0.0])}, 1), now=0.0)
    engine.on_share("b", share(1, 0, 2.0), now=0.0)
    assert engine.done and engine.result["x"][0] == 1.0
    engine.on_share("b", share(2, 0, 10.0), now=1.0)  # b is already in the next run
    engine.start(ConsensusRequest({"x": np.array([0.0])}, 2), now=2.0)
    assert engine.done and engine.result["x"][0] == 5.0


# -- push-sum --------------------------------------------------------------------------------


def push_sum_engines(out_neighbours: dict[str, list[str]], period=0.05, duration=20.0) -> dict[str, PushSumConsensus]:
    return {node: PushSumConsensus(node, outs, period_s=period, duration_s=duration) for node, outs in out_neighbours.items()}


def undirected(topology: Topology) -> dict[str, list[str]]:
    return {node: [topology.nodes[j] for j in topology.neighbours(i)] for i, node in enumerate(topology.nodes)}


def start_push_sum(sim, engines, initial, stagger_s=0.0):
    for i, node in enumerate(engines):
        start = lambda node=node, i=i: sim.call(node, lambda engine, now: engine.start(ConsensusRequest(initial[i], 1), now))
        sim.schedule(i * stagger_s, start)


def assert_mass_conserved(engines: dict[str, PushSumConsensus], initial):
    """Mass held by nodes + mass pushed but not yet absorbed == the initial total, exactly."""
    total = sum(t["h"] for t in initial)
    held = sum(engine.value_mass["h"] for engine in engines.values())
    in_flight = 0.0
    for sender, engine in engines.items():
        for destination in engine.out_neighbours:
            sent, _ = engine.sent_totals(destination)
            absorbed = engines[destination].received_totals(sender)
            in_flight = in_flight + sent["h"] - (0.0 if absorbed is None else absorbed[0]["h"])
    np.testing.assert_allclose(held + in_flight, total, rtol=1e-12)


def assert_estimates_equal(engines, target, atol):
    for node, engine in engines.items():
        estimate = engine.result if engine.done else engine.estimate()
        for name in target:
            np.testing.assert_allclose(estimate[name], target[name], rtol=0, atol=atol, err_msg=node)


def test_push_sum_by_hand_ignores_stale_and_duplicate_totals():
    sender = PushSumConsensus("a", ["b"], period_s=1.0, duration_s=10.0)
    outgoing = sender.start(ConsensusRequest({"x": np.array([2.0])}, 1), now=0.0)
    [(destination, first)] = outgoing
    assert destination == "b" and first.seq == 1 and first.weight_total == 0.5 and first.value_totals["x"][0] == 1.0
    assert sender.next_deadline() == 1.0
    [(_, second)] = sender.on_timer(1.0)
    assert second.seq == 2 and second.weight_total == 0.75 and second.value_totals["x"][0] == 1.5  # cumulative

    receiver = PushSumConsensus("b", ["a"], period_s=1.0, duration_s=10.0)
    receiver.start(ConsensusRequest({"x": np.array([6.0])}, 1), now=0.0)  # pushes half of itself to a
    assert receiver.weight_mass == 0.5
    receiver.on_share("a", second, now=1.5)
    receiver.on_share("a", first, now=1.6)  # overtaken: older seq
    receiver.on_share("a", second, now=1.7)  # duplicate
    assert receiver.counters["stale_dropped"] == 2 and receiver.counters["applied"] == 1
    assert receiver.weight_mass == pytest.approx(0.5 + 0.75)
    assert receiver.value_mass["x"][0] == pytest.approx(3.0 + 1.5)
    assert receiver.estimate()["x"][0] == pytest.approx(4.5 / 1.25)


def test_push_sum_exact_with_30_percent_loss_and_random_delays():
    topology = random_regular(10, 3, seed=4)
    engines = push_sum_engines(undirected(topology), period=0.05, duration=25.0)
    initial = random_tensors(10, seed=6)
    link = LinkConfig(delay_s=0.03, jitter_s=0.025, loss=0.3)
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=8)
    start_push_sum(sim, engines, initial, stagger_s=0.013)  # later starters buffer early pushes
    sim.run()
    assert sim.stats["lost_on_link"] > 0.25 * sim.stats["sent"]
    assert all(engine.done for engine in engines.values())
    assert_estimates_equal(engines, average(initial), atol=1e-8)
    assert_mass_conserved(engines, initial)


def test_push_sum_on_a_directed_ring():
    nodes = [f"agent_{i}" for i in range(6)]
    engines = push_sum_engines({node: [nodes[(i + 1) % 6]] for i, node in enumerate(nodes)}, duration=20.0)
    initial = random_tensors(6, seed=7)
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig(delay_s=0.02, jitter_s=0.01)), seed=1)
    start_push_sum(sim, engines, initial)
    sim.run()
    assert_estimates_equal(engines, average(initial), atol=1e-9)
    # Not symmetric: a node only ever hears from its predecessor.
    assert engines["agent_0"].received_totals("agent_1") is None
    assert engines["agent_0"].received_totals("agent_5") is not None


def test_push_sum_duplicates_and_reordering_do_not_bias():
    topology = ring(6)
    engines = push_sum_engines(undirected(topology), duration=20.0)
    initial = random_tensors(6, seed=9)
    link = LinkConfig(delay_s=0.04, jitter_s=0.03, duplicate=0.3, reorder=0.3)
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=2)
    start_push_sum(sim, engines, initial)
    sim.run()
    assert sim.stats["duplicated"] > 0
    assert sum(engine.counters["stale_dropped"] for engine in engines.values()) > sim.stats["duplicated"]
    assert_estimates_equal(engines, average(initial), atol=1e-9)
    assert_mass_conserved(engines, initial)


def test_push_sum_neighbour_that_vanishes_and_returns():
    topology = ring(6)
    initial = random_tensors(6, seed=10)
    link = same_link_everywhere(LinkConfig(delay_s=0.01))

    # Cut off by a partition, unannounced: pushes to it are lost until it heals.
    engines = push_sum_engines(undirected(topology), duration=25.0)
    sim = NetworkSimulator(engines, link, seed=3)
    start_push_sum(sim, engines, initial)
    isolated, others = "agent_2", [node for node in topology.nodes if node != "agent_2"]
    sim.schedule(1.0, lambda: sim.partitions.partition([[isolated], others]))
    sim.run(until=6.0)
    assert sim.stats["blocked_by_partition"] > 0
    sim.partitions.heal()
    sim.run()
    assert_estimates_equal(engines, average(initial), atol=1e-9)

    # Crashed (state kept) and announced dead to its neighbours, then back and announced alive.
    engines = push_sum_engines(undirected(topology), duration=25.0)
    sim = NetworkSimulator(engines, link, seed=3)
    start_push_sum(sim, engines, initial)
    neighbours = ["agent_1", "agent_3"]

    def crash():
        sim.crash(isolated)
        for node in neighbours:
            sim.call(node, lambda engine, now: engine.on_neighbour_down(isolated, now))

    def revive():
        sim.revive(isolated)
        for node in neighbours:
            sim.call(node, lambda engine, now: engine.on_neighbour_up(isolated, now))

    pushed_to_isolated = {}  # weight mass agent_1 has pushed to agent_2, probed over time

    def probe(label):
        pushed_to_isolated[label] = engines["agent_1"].sent_totals(isolated)[1]

    sim.schedule(1.0, crash)
    sim.schedule(2.0, lambda: probe("down early"))
    sim.schedule(5.9, lambda: probe("down late"))
    sim.schedule(6.0, revive)
    sim.schedule(7.0, lambda: probe("back"))
    sim.run()
    assert pushed_to_isolated["down early"] == pushed_to_isolated["down late"] < pushed_to_isolated["back"]
    assert_estimates_equal(engines, average(initial), atol=1e-9)
    assert_mass_conserved(engines, initial)


def test_push_sum_validates_inputs():
    with pytest.raises(ValueError, match="lists itself"):
        PushSumConsensus("a", ["a"], period_s=0.1, duration_s=1.0)
    with pytest.raises(ValueError, match="period_s"):
        PushSumConsensus("a", ["b"], period_s=0.0, duration_s=1.0)
    engine = PushSumConsensus("a", ["b"], period_s=0.1, duration_s=1.0)
    with pytest.raises(RuntimeError, match="not started"):
        engine.estimate()
    engine.start(ConsensusRequest({"x": np.zeros(2)}, 1), now=0.0)
    engine.on_share("b", PushSumShare(epoch=1, seq=1, weight_total=0.5, value_totals={"x": np.zeros(3)}), now=0.0)
    assert "shape (3,)" in engine.last_rejection
    engine.on_share("b", PushSumShare(epoch=1, seq=1, weight_total=float("inf"), value_totals={"x": np.zeros(2)}), now=0.0)
    assert "finite" in engine.last_rejection
    assert engine.counters["rejected"] == 2 and engine.weight_mass == 0.5


# -- config, builders, convergence on an ideal network --------------------------------------


def test_consensus_config_defaults():
    config = ConsensusConfig()
    assert (config.enabled, config.mode, config.rounds, config.weights) == (False, "sync", 10, "metropolis")


@pytest.mark.parametrize(("fields", "match"), [
    ({"round": 3}, "round"),
    ({"self_weight": 1.0}, "consensus.self_weight must be in"),
    ({"push_sum_period_s": 0.0}, "consensus.push_sum_period_s must be > 0"),
    ({"mode": "async"}, "mode"),
])
def test_consensus_config_refuses(fields, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        ConsensusConfig(**fields)


def test_build_consensus_engine_from_config():
    topology = ring(5)
    engine = build_consensus_engine(ConsensusConfig(enabled=True, rounds=7), topology, "agent_0")
    assert isinstance(engine, SyncConsensus) and engine.rounds == 7
    assert engine.neighbour_weights == pytest.approx({"agent_1": 1 / 3, "agent_4": 1 / 3})
    uniform = build_consensus_engine(ConsensusConfig(weights="uniform", self_weight=0.5), topology, "agent_2")
    assert uniform.neighbour_weights == {"agent_1": 0.25, "agent_3": 0.25} and uniform.self_weight == 0.5
    push_sum = build_consensus_engine(ConsensusConfig(mode="push_sum"), topology, "agent_0")
    assert isinstance(push_sum, PushSumConsensus) and push_sum.out_neighbours == ["agent_1", "agent_4"]


@pytest.mark.parametrize(
    "topology, expected_rounds",
    [(ring(16), 133), (grid(4, 4, torus=True), 14), (exponential(16), 10)],
    ids=["ring16", "torus4x4", "exponential16"],
)
def test_rounds_to_tolerance_matches_the_spectral_worst_case(topology, expected_rounds):
    weights = metropolis_weights(topology)
    assert rounds_predicted_by_spectrum(weights, 1e-3) == expected_rounds  # ARCHITECTURE.md's figures
    assert rounds_to_tolerance(topology, 1e-3, initial="slowest_mode") == expected_rounds
    assert rounds_to_tolerance(topology, 1e-3, initial="random", seed=1) <= expected_rounds


# -- the engine interface ---------------------------------------------------------------------


def test_both_engines_implement_the_engine_interface_and_summarize_a_run():
    from protocols.engines.engine import Engine

    topology = ring(4)
    initial = random_tensors(4, seed=3)
    engines, _ = run_sync(topology, metropolis_weights(topology), initial, rounds=12)
    engine = engines["agent_0"]
    assert isinstance(engine, Engine) and engine.message_types == (ConsensusShare, ConsensusDone)
    summary = engine.metrics()
    assert summary["consensus/rounds"] == 12.0 and summary["consensus/missing_neighbours"] == 0.0
    assert summary["consensus/disagreement_last"] < summary["consensus/disagreement_first"]
    assert summary["consensus/engine_duration_s"] >= 0.0

    pushers = {node: PushSumConsensus(node, [topology.nodes[j] for j in topology.neighbours(i)], 0.1, 3.0)
               for i, node in enumerate(topology.nodes)}
    sim = NetworkSimulator(pushers, same_link_everywhere(LinkConfig(delay_s=0.01)), seed=1)
    for i, node in enumerate(topology.nodes):
        sim.call(node, lambda engine, now, i=i: engine.start(ConsensusRequest(initial[i], 1), now))
    sim.run()
    pusher = pushers["agent_0"]
    assert isinstance(pusher, Engine) and pusher.message_types == (PushSumShare,) and pusher.done
    summary = pusher.metrics()
    assert summary["consensus/pushes"] == pytest.approx(30, abs=1) and summary["consensus/applied"] > 0
    assert summary["consensus/missing_neighbours"] == 0.0 and summary["consensus/estimate_change"] < 1e-3
    for name, target in average(initial).items():
        np.testing.assert_allclose(pusher.result[name], target, atol=1e-3)


def test_a_neighbour_that_finished_a_run_alone_is_not_waited_for_after_it_is_back():
    """C, cut off, saw A and B go down and finished run 40 alone; it is back up before A and B
    start run 40. Without `consensus.done` every one of their 20 rounds waited for C's share
    until its 5 s deadline (100 s, seen after a healed partition); with it, C answers their
    first share and they finish at once, mixing each other."""
    names = "ABC"
    engines = {n: SyncConsensus(n, {o: 1 / 3 for o in names if o != n}, 1 / 3, rounds=20, round_timeout_s=5.0) for n in names}
    values = {n: {"w": np.full(4, float(i), dtype=np.float32)} for i, n in enumerate(names)}

    def deliver(outgoing, source, now):
        queue = [(source, destination, message) for destination, message in outgoing]
        sent = []
        while queue:
            sender, destination, message = queue.pop(0)
            sent.append((sender, destination, type(message).__name__))
            queue += [(destination, d, reply) for d, reply in engines[destination].on_message(sender, message, now)]
        return sent

    for peer in "AB":
        engines["C"].on_neighbour_down(peer, 0.0)
    assert engines["C"].start(ConsensusRequest(values["C"], 40), 0.0) == [] and engines["C"].done
    for peer in "AB":
        engines["C"].on_neighbour_up(peer, 1.0)
    sent = []
    for node in "AB":
        sent += deliver(engines[node].start(ConsensusRequest(values[node], 40), 1.0), node, 1.0)
    assert all(engines[node].done for node in "AB"), "A and B waited for C's shares"
    assert sorted(s for s in sent if s[2] == "ConsensusDone") == [("C", "A", "ConsensusDone"), ("C", "B", "ConsensusDone")]
    for node in "AB":
        np.testing.assert_allclose(engines[node].result["w"], np.full(4, 0.5), atol=1e-6)  # A and B averaged; C left out
        assert engines[node].metrics()["consensus/finished_elsewhere"] == 1.0
    # A late share of run 40 is answered while run 60 runs (the previous run is remembered).
    engines["A"].start(ConsensusRequest(values["A"], 60), 2.0)
    assert engines["A"].on_share("B", ConsensusShare(epoch=40, round=19, tensors=values["B"]), 2.0) == [
        ("B", ConsensusDone(epoch=40, rounds_sent=20))
    ]
    # The next run expects C again.
    for node in "BC":
        engines[node].start(ConsensusRequest(values[node], 60), 2.0)
    assert all(engines[node]._expected == set(names) - {node} for node in "ABC")


def test_a_neighbour_that_began_a_newer_run_is_not_waited_for_in_this_one():
    """After a heal C is still in run 40, which A and B finished long ago (and no longer answer
    for); they start run 100. Their round-0 shares of run 100 tell C that nothing more of run
    40 will come from them: C ends run 40 at once instead of waiting out 20 rounds x 5 s,
    keeps their shares of run 100 for when it starts it, and then mixes them."""
    names = "ABC"
    engines = {n: SyncConsensus(n, {o: 1 / 3 for o in names if o != n}, 1 / 3, rounds=20, round_timeout_s=5.0) for n in names}
    values = {n: {"w": np.full(4, float(i), dtype=np.float32)} for i, n in enumerate(names)}
    engines["C"].start(ConsensusRequest(values["C"], 40), 0.0)
    assert not engines["C"].done
    to_c = [message for node in "AB" for destination, message in engines[node].start(ConsensusRequest(values[node], 100), 1.0)
            if destination == "C"]
    assert len(to_c) == 2
    engines["C"].on_message("A", to_c[0], 1.0)
    assert not engines["C"].done, "B may still send run 40"
    engines["C"].on_message("B", to_c[1], 1.0)
    assert engines["C"].done and engines["C"].metrics()["consensus/moved_on"] == 2.0
    np.testing.assert_allclose(engines["C"].result["w"], values["C"]["w"])  # nobody mixed in run 40
    # Run 100 uses the buffered round-0 shares: C's own round 0 needs nothing more.
    outgoing = engines["C"].start(ConsensusRequest(values["C"], 100), 1.5)
    assert engines["C"].round == 1 and {destination for destination, _ in outgoing} == {"A", "B"}
    # The signal is per run: shares of the run in progress or older ones do not end it.
    engine = SyncConsensus("A", {"B": 0.5}, 0.5, rounds=3, round_timeout_s=5.0)
    engine.start(ConsensusRequest(values["A"], 100), 0.0)
    engine.on_share("B", ConsensusShare(epoch=40, round=5 % 3, tensors=values["B"]), 0.0)
    assert not engine.done and engine.metrics()["consensus/moved_on"] == 0.0


def test_a_round_mixes_into_reused_buffers_bitwise_as_the_allocating_form_and_shares_without_copies():
    from protocols.engines.consensus import _RoundScratch

    rng = np.random.default_rng(0)
    own, left, right = (rng.standard_normal(1_000, dtype=np.float32) for _ in range(3))
    weights = (0.3333333, 0.3333333, 0.3333334)
    # The allocating form in the tensors' own dtype (what bench/consensus_worker.py's raw mode does).
    expected = weights[0] * own
    expected += weights[1] * left
    expected += weights[2] * right
    scratch = _RoundScratch({"w": own})
    for _ in range(2):  # the buffers are reused from round to round
        mixed, distances = scratch.mix(weights[0], {"w": own}, [(weights[1], {"w": left}), (weights[2], {"w": right})])
        assert mixed["w"].dtype == np.float32 and np.array_equal(mixed["w"], expected)
        # Within a few float32 roundings of the exact (float64) mix.
        exact = weights[0] * own.astype(np.float64) + weights[1] * left + weights[2] * right
        assert np.max(np.abs(mixed["w"] - exact)) < 4 * np.finfo(np.float32).eps * np.max(np.abs(exact))
        assert distances == pytest.approx([float(np.linalg.norm(own - left)), float(np.linalg.norm(own - right))], rel=1e-6)
    # float16 tensors are summed in float32 and come back as float16.
    half_own, half_left = own.astype(np.float16), left.astype(np.float16)
    half, _ = _RoundScratch({"h": half_own}).mix(0.5, {"h": half_own}, [(0.5, {"h": half_left})])
    assert half["h"].dtype == np.float16
    assert np.array_equal(half["h"], (0.5 * half_own.astype(np.float32) + 0.5 * half_left.astype(np.float32)).astype(np.float16))

    engine = SyncConsensus("a", {"b": 0.5}, 0.5, rounds=2, round_timeout_s=1.0)
    ((_, share),) = engine.start(ConsensusRequest({"w": own}, epoch=0), now=0.0)
    # The share carries the engine's own read-only copy: no copy per round, and nobody can change it.
    assert share.tensors["w"] is engine._values["w"] and not share.tensors["w"].flags.writeable
    assert np.array_equal(share.tensors["w"], own) and share.tensors["w"] is not own


def test_the_finiteness_check_agrees_with_numpy_on_every_size_and_dtype():
    # `_all_finite` loops in Python over small tensors and reduces large ones: both paths must
    # say what `np.isfinite(...).all()` says, overflowing sums and extended precision included.
    from protocols.engines.consensus import _all_finite

    cases = [np.zeros(0), np.array(2.0), np.array([1.0, np.nan]), np.array([np.inf, 1.0]), np.array([1e308, 1e308]),
             np.zeros((2, 3)), np.array([np.nan], dtype=np.float32), np.array([6e4, 6e4], dtype=np.float16),
             np.array([np.nan], dtype=np.longdouble),
             np.array([1e300], dtype=np.longdouble) * np.longdouble(1e300),  # finite where long double is wider
             np.full(100, 1.0), np.append(np.ones(99), -np.inf), np.ones((4, 4))[:, ::2]]
    for value in cases:
        assert _all_finite(value) == bool(np.isfinite(value).all()), (value.dtype, value.shape)
