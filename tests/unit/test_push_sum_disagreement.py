"""Push-sum's disagreement estimate (`consensus/disagreement_first` / `_last` in its metrics):
the distance between a node's estimate and each sender's, as the new part of the sender's
cumulative totals carries it, by hand and over a lossy simulated ring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.engines.consensus import ConsensusRequest, PushSumConsensus, PushSumShare
from protocols.net.links import LinkConfig
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere


def test_the_new_part_of_a_senders_totals_carries_its_estimate():
    receiver = PushSumConsensus("b", ["a"], period_s=1.0, duration_s=10.0)
    receiver.start(ConsensusRequest({"x": np.array([6.0, 0.0])}, 1), now=0.0)  # keeps half: s = [3, 0], w = 0.5
    metrics = receiver.metrics()
    assert math.isnan(metrics["consensus/disagreement_first"]) and math.isnan(metrics["consensus/disagreement_last"])
    # a's first push: half of x_a = [2, 0] -> totals [1, 0] with weight 0.5: its estimate is [2, 0].
    receiver.on_share("a", PushSumShare(epoch=1, seq=1, weight_total=0.5, value_totals={"x": np.array([1.0, 0.0])}), now=0.1)
    assert receiver.metrics()["consensus/disagreement_first"] == pytest.approx(4.0)  # |[6, 0] - [2, 0]|
    # Our estimate is now (3 + 1) / 1 = [4, 0]. a's next push adds [0.9, 0.3] with weight 0.3:
    # its estimate [3, 1], at distance sqrt(1 + 1) from ours.
    receiver.on_share("a", PushSumShare(epoch=1, seq=2, weight_total=0.8, value_totals={"x": np.array([1.9, 0.3])}), now=1.1)
    metrics = receiver.metrics()
    assert metrics["consensus/disagreement_first"] == pytest.approx(4.0)
    assert metrics["consensus/disagreement_last"] == pytest.approx(math.sqrt(2.0))
    # A duplicate carries no new weight and measures nothing.
    receiver.on_share("a", PushSumShare(epoch=1, seq=2, weight_total=0.8, value_totals={"x": np.array([1.9, 0.3])}), now=1.2)
    assert receiver.metrics()["consensus/disagreement_last"] == pytest.approx(math.sqrt(2.0))
    # A new run forgets the last one's measurements.
    receiver.start(ConsensusRequest({"x": np.array([1.0, 1.0])}, 2), now=20.0)
    assert math.isnan(receiver.metrics()["consensus/disagreement_last"])


def test_the_estimate_falls_as_a_lossy_ring_converges():
    nodes = [f"agent_{i}" for i in range(6)]
    ring = {node: [nodes[(i - 1) % 6], nodes[(i + 1) % 6]] for i, node in enumerate(nodes)}
    engines = {node: PushSumConsensus(node, outs, period_s=0.05, duration_s=8.0) for node, outs in ring.items()}
    rng = np.random.default_rng(3)
    initial = [{"w": rng.normal(scale=5.0, size=8)} for _ in nodes]
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig(delay_s=0.02, jitter_s=0.01, loss=0.3)), seed=2)
    for i, node in enumerate(nodes):
        sim.schedule(0.0, lambda node=node, i=i: sim.call(node, lambda engine, now: engine.start(ConsensusRequest(initial[i], 1), now)))
    sim.run()
    spread = max(np.linalg.norm(a["w"] - b["w"]) for a in initial for b in initial)
    for node, engine in engines.items():
        metrics = engine.metrics()
        assert engine.done
        assert 0.1 * spread < metrics["consensus/disagreement_first"] <= spread, node  # the starting spread, seen from here
        assert metrics["consensus/disagreement_last"] < 1e-6 * metrics["consensus/disagreement_first"], (node, metrics)
