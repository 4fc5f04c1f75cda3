"""Compressed consensus shares: the codecs, error feedback, and what each engine keeps exact."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest

from protocols.codec import wire
from protocols.engines.compression import Compression, CompressedTensors, ErrorFeedback, decode, encode
from protocols.engines.consensus import (ConsensusConfig, ConsensusRequest, ConsensusShare, PushSumConsensus, PushSumShare,
                                 SyncConsensus, build_consensus_engine)
from protocols.net.links import LinkConfig
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere
from protocols.engines.topology import Topology, metropolis_weights, ring

CODECS = [Compression("fp16"), Compression("int8"), Compression("topk", 0.1), Compression("topk", 0.01)]
CODEC_IDS = ["fp16", "int8", "topk0.1", "topk0.01"]


def tensors(seed: int, dtype=np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(40, 25)).astype(dtype), "b": rng.normal(loc=3.0, size=7).astype(dtype)}


# -- codecs -----------------------------------------------------------------------------------


def test_fp16_round_trip_is_float16_rounding_and_clips_instead_of_overflowing():
    x = {"w": np.array([0.1, -2.5, 1e-3, 1e6, -1e6, 0.0], dtype=np.float32)}
    encoded = encode(x, Compression("fp16"))
    assert encoded.values["w"].dtype == np.float16
    decoded = decode(encoded, x)["w"]
    assert decoded.dtype == np.float32 and np.isfinite(decoded).all()
    np.testing.assert_array_equal(decoded[:3], x["w"][:3].astype(np.float16).astype(np.float32))
    assert decoded[3] == 65504.0 and decoded[4] == -65504.0 and decoded[5] == 0.0


def test_int8_round_trip_error_is_at_most_half_a_step_of_the_max_abs_scale():
    x = tensors(1)
    encoded = encode(x, Compression("int8"))
    decoded = decode(encoded, x)
    for name, value in x.items():
        scale = np.abs(value).max() / 127
        assert encoded.values[name].dtype == np.int8 and encoded.scales[name] == pytest.approx(scale)
        assert np.abs(decoded[name] - value).max() <= scale / 2 + 1e-12
        assert np.abs(decoded[name]).max() == pytest.approx(np.abs(value).max())  # the largest entry is exact
    zeros = {"z": np.zeros(5)}
    np.testing.assert_array_equal(decode(encode(zeros, Compression("int8")), zeros)["z"], zeros["z"])


@pytest.mark.parametrize("fraction", [0.1, 0.01, 1.0])
def test_topk_keeps_exactly_the_largest_entries(fraction):
    x = tensors(2)
    compression = Compression("topk", fraction)
    encoded = encode(x, compression)
    decoded = decode(encoded, x)
    for name, value in x.items():
        k = max(1, math.ceil(fraction * value.size))
        kept = encoded.indices[name]
        assert kept.dtype == np.int32 and kept.size == k and (np.diff(kept) > 0).all()
        flat, out = value.ravel(), decoded[name].ravel()
        np.testing.assert_array_equal(out[kept], flat[kept].astype(np.float32))
        dropped = np.setdiff1d(np.arange(flat.size), kept)
        assert (out[dropped] == 0).all()
        if dropped.size:
            assert np.abs(flat[dropped]).max() <= np.abs(flat[kept]).min()


def test_decode_refuses_what_does_not_fit_with_the_reason():
    x = tensors(3)
    good = encode(x, Compression("topk", 0.1))
    bad_index = dict(good.indices, b=np.array([0, 9], dtype=np.int32))
    with pytest.raises(ValueError, match="'b'.*ascend strictly within 0..6"):
        decode(CompressedTensors("topk", dict(good.values, b=np.ones(2, np.float32)), indices=bad_index), x)
    int8 = encode(x, Compression("int8"))
    with pytest.raises(ValueError, match="finite scale"):
        decode(CompressedTensors("int8", int8.values, dict(int8.scales, w=math.nan)), x)
    with pytest.raises(ValueError, match="fp16 expects float16 of shape"):
        decode(CompressedTensors("fp16", {name: v.astype(np.float32) for name, v in x.items()}), x)
    with pytest.raises(ValueError, match="tensor names"):
        decode(encode({"w": x["w"]}, Compression("fp16")), x)


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_error_feedback_carries_the_residual_so_nothing_is_lost_for_good(compression):
    like = tensors(4)
    feedback = ErrorFeedback(compression, like)
    rng = np.random.default_rng(5)
    intended_sum = {name: np.zeros_like(v) for name, v in like.items()}
    decoded_sum = {name: np.zeros_like(v) for name, v in like.items()}
    for _ in range(25):
        intended = {name: rng.normal(size=v.shape) for name, v in like.items()}
        target = {name: intended[name] + feedback.residual[name] for name in like}
        _, decoded = feedback.send(intended)
        for name in like:
            intended_sum[name] += intended[name]
            decoded_sum[name] += decoded[name]
        # The new residual is the compression error of this one target (share + old residual).
        target_norm = math.sqrt(sum(float((t ** 2).sum()) for t in target.values()))
        if compression.codec == "topk":  # top-k drops the smallest entries: at most (1 - k/d) of the energy
            kept = min(compression.kept_entries(v.size) / v.size for v in like.values())
            assert feedback.residual_norm() <= math.sqrt(1.0 - kept) * target_norm + 1e-9
        else:
            assert feedback.residual_norm() <= 0.01 * target_norm
    for name in like:  # sent + residual == intended, summed over every share
        np.testing.assert_allclose(decoded_sum[name] + feedback.residual[name], intended_sum[name], rtol=0, atol=1e-10)


# -- the wire: dtypes allowed, bytes saved ----------------------------------------------------


def wire_bytes(message) -> int:
    return sum(memoryview(frame).nbytes for frame in wire.encode(message, sender="agent_0", run_id="run", seq=1))


@pytest.mark.parametrize(("compression", "low", "high"), [
    (Compression("fp16"), 1.9, 2.0),
    (Compression("int8"), 3.8, 4.0),
    (Compression("topk", 0.1), 4.8, 5.0),
    (Compression("topk", 0.01), 45.0, 50.0),
])
def test_compressed_shares_cross_the_wire_and_take_fewer_bytes(compression, low, high):
    x = {"w": np.random.default_rng(6).normal(size=(256, 256)).astype(np.float32)}
    full = ConsensusShare(epoch=3, round=1, tensors=x)
    compressed = ConsensusShare(epoch=3, round=1, tensors={}, compressed=encode(x, compression))
    received = wire.decode([bytes(f) for f in wire.encode(compressed, sender="agent_0", run_id="run", seq=1)]).message
    np.testing.assert_array_equal(decode(received.compressed, x)["w"], decode(compressed.compressed, x)["w"])
    ratio = wire_bytes(full) / wire_bytes(compressed)
    assert low < ratio <= high, ratio
    push = PushSumShare(epoch=3, seq=4, weight_total=0.25, value_totals={}, compressed=encode(x, compression), base_seq=3)
    back = wire.decode([bytes(f) for f in wire.encode(push, sender="agent_0", run_id="run", seq=1)]).message
    assert back.base_seq == 3 and back.weight_total == 0.25 and back.compressed.codec == compression.codec


# -- synchronous rounds: compressed differences from public copies (CHOCO-Gossip) --------------


def run_sync(compression: Compression, initial, rounds: int, step_size=1.0, topology: Topology = ring(8), link=LinkConfig()):
    weights = metropolis_weights(topology)
    engines = {
        node: SyncConsensus(node, {topology.nodes[j]: float(weights[i, j]) for j in topology.neighbours(i)},
                            float(weights[i, i]), rounds, 1.0, compression=compression, step_size=step_size)
        for i, node in enumerate(topology.nodes)
    }
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=1)
    for i, node in enumerate(topology.nodes):
        sim.call(node, lambda engine, now, i=i: engine.start(ConsensusRequest(initial[i], 1), now))
    sim.run()
    return engines


def spread(engines, initial) -> float:
    """Disagreement after the run relative to the start, over all nodes and tensors."""
    def distance(stacks):
        return math.sqrt(sum(float(((s - s.mean(axis=0)) ** 2).sum()) for s in stacks))
    names = list(initial[0])
    after = [np.stack([e.result[n] for e in engines.values()]) for n in names]
    before = [np.stack([t[n] for t in initial]) for n in names]
    return distance(after) / distance(before)


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_sync_compressed_rounds_keep_the_average_exactly(compression):
    initial = [tensors(10 + i) for i in range(8)]
    step = 1.0 if compression.codec != "topk" else 0.3
    engines = run_sync(compression, initial, rounds=20, step_size=step)
    for name in initial[0]:
        start = np.mean([t[name] for t in initial], axis=0)
        now = np.mean([e.result[name] for e in engines.values()], axis=0)
        np.testing.assert_allclose(now, start, rtol=0, atol=1e-12)
    assert spread(engines, initial) < 0.9  # and they did move towards it
    summary = engines["agent_0"].metrics()
    assert summary["consensus/missing_neighbours"] == 0.0 and summary["consensus/compression_residual"] >= 0.0


def test_sync_with_fp16_and_int8_converges_like_uncompressed_and_sends_fewer_bytes():
    initial = [tensors(20 + i, np.float32) for i in range(8)]
    plain = run_sync(Compression(), initial, rounds=30)
    for codec, byte_ratio in (("fp16", 2.0), ("int8", 4.0)):
        engines = run_sync(Compression(codec), initial, rounds=30)
        assert spread(engines, initial) < 1.05 * spread(plain, initial) + 1e-3
        ratio = plain["agent_0"].metrics()["consensus/bytes_sent"] / engines["agent_0"].metrics()["consensus/bytes_sent"]
        assert ratio == pytest.approx(byte_ratio, rel=0.02)  # int8 adds 8 bytes of scale per tensor


def test_sync_compressed_rounds_with_the_plain_step_are_plain_rounds_when_the_codec_is_exact():
    """fp16 of float16-representable values is exact, so CHOCO's step with gamma = 1 must be the
    plain Metropolis round (x_hat == x after every send), up to the order of float additions."""
    rng = np.random.default_rng(3)
    initial = [{"x": rng.integers(-8, 8, size=5).astype(np.float64)} for _ in range(4)]
    topology = ring(4)
    # One round: after it the values are thirds, which float16 no longer holds exactly.
    plain = run_sync(Compression(), initial, rounds=1, topology=topology)
    compressed = run_sync(Compression("fp16"), initial, rounds=1, topology=topology)
    for node in plain:
        np.testing.assert_allclose(compressed[node].result["x"], plain[node].result["x"], rtol=0, atol=1e-14)


def test_sync_a_neighbour_whose_share_is_missing_is_cut_off_for_the_rest_of_the_run():
    initial = [tensors(30 + i) for i in range(8)]
    engines = run_sync(Compression("int8"), initial, rounds=10, link=LinkConfig(loss=0.05))
    assert all(engine.done for engine in engines.values())
    missing = [m["consensus/missing_neighbours"] for e in engines.values() for m in e.round_metrics]
    assert max(missing) >= 1.0
    for engine in engines.values():  # once cut off, never mixed in again this run
        for earlier, later in zip(engine.missing_by_round, engine.missing_by_round[1:]):
            assert set(earlier) <= set(later)


def test_sync_refuses_a_share_of_another_codec_with_the_reason():
    initial = tensors(40)
    engine = SyncConsensus("a", {"b": 0.5}, 0.5, rounds=2, round_timeout_s=1.0, compression=Compression("int8"))
    engine.start(ConsensusRequest(initial, 1), now=0.0)
    engine.on_share("b", ConsensusShare(1, 0, {}, compressed=encode(initial, Compression("fp16"))), now=0.1)
    assert engine.counters["rejected"] == 1 and "codec 'fp16' differs from this node's 'int8'" in engine.last_rejection
    engine.on_share("b", ConsensusShare(1, 0, initial), now=0.2)
    assert engine.counters["rejected"] == 2
    plain = SyncConsensus("a", {"b": 0.5}, 0.5, rounds=2, round_timeout_s=1.0)
    plain.start(ConsensusRequest(initial, 1), now=0.0)
    plain.on_share("b", ConsensusShare(1, 0, {}, compressed=encode(initial, Compression("int8"))), now=0.1)
    assert "compression is 'none'" in plain.last_rejection


# -- push-sum: exact weights, running sums of what was actually sent ---------------------------


def run_push_sum(compression: Compression, initial, link=LinkConfig(delay_s=0.01), duration=3.0, full_every=10, seed=1):
    topology = ring(len(initial))
    engines = {
        node: PushSumConsensus(node, [topology.nodes[j] for j in topology.neighbours(i)], 0.05, duration,
                               compression=compression, full_every=full_every)
        for i, node in enumerate(topology.nodes)
    }
    sim = NetworkSimulator(engines, same_link_everywhere(link), seed=seed)
    for i, node in enumerate(topology.nodes):
        sim.call(node, lambda engine, now, i=i: engine.start(ConsensusRequest(initial[i], 1), now))
    sim.run()
    return engines, sim


def network_masses(engines):
    """Per tensor: value mass held + sent but not absorbed + held back as residual; and the
    weight mass held + sent but not absorbed."""
    value, weight = {}, 0.0
    for sender, engine in engines.items():
        weight += engine.weight_mass
        for name, held in engine.value_mass.items():
            value[name] = value.get(name, 0.0) + held
        for destination in engine.out_neighbours:
            sent, sent_weight = engine.sent_totals(destination)
            absorbed = engines[destination].received_totals(sender)
            residual = engine.residual(destination)
            weight += sent_weight - (0.0 if absorbed is None else absorbed[1])
            for name in sent:
                value[name] = value[name] + sent[name] - (0.0 if absorbed is None else absorbed[0][name]) + residual[name]
    return value, weight


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("loss", [0.0, 0.3])
def test_push_sum_compressed_conserves_weights_and_what_was_sent_exactly(compression, loss):
    initial = [tensors(50 + i) for i in range(8)]
    engines, sim = run_push_sum(compression, initial, link=LinkConfig(delay_s=0.01, loss=loss))
    value, weight = network_masses(engines)
    assert weight == pytest.approx(8.0, rel=0, abs=1e-12)
    for name in value:
        np.testing.assert_allclose(value[name], sum(t[name] for t in initial), rtol=0, atol=1e-10)
    if loss:
        assert sum(e.counters["gaps"] for e in engines.values()) > 0  # increments that waited for a full push
    assert sum(e.metrics()["consensus/gaps"] for e in engines.values()) == sum(e.counters["gaps"] for e in engines.values())


@pytest.mark.parametrize("compression", CODECS, ids=CODEC_IDS)
def test_push_sum_compressed_weights_are_those_of_the_uncompressed_run(compression):
    initial = [tensors(60 + i) for i in range(8)]
    plain, _ = run_push_sum(Compression(), initial)
    compressed, _ = run_push_sum(compression, initial)
    for node in plain:
        assert compressed[node].weight_mass == plain[node].weight_mass  # bitwise: weights travel exact


def test_push_sum_average_error_is_what_the_residuals_hold_back_and_is_reported():
    """Everything delivered, the network's value mass falls short of the initial total by the
    residuals exactly; the average's error is that over the number of nodes, which the nodes'
    `compression_residual` metrics bound."""
    initial = [tensors(70 + i) for i in range(8)]
    engines, _ = run_push_sum(Compression("int8"), initial, link=LinkConfig(), full_every=1000)
    held_back = {name: sum(sum(e.residual(d)[name] for d in e.out_neighbours) for e in engines.values()) for name in initial[0]}
    shortfall = math.sqrt(sum(float((held_back[n] ** 2).sum()) for n in held_back)) / 8
    assert shortfall > 0.0
    reported = sum(e.metrics()["consensus/compression_residual"] for e in engines.values()) / 8
    assert shortfall <= reported + 1e-12
    estimates = [e.result for e in engines.values()]
    for name in initial[0]:
        true_mean = np.mean([t[name] for t in initial], axis=0)
        error = np.abs(np.mean([est[name] for est in estimates], axis=0) - true_mean).max()
        assert error < 0.05  # int8's error on shares of ~1/3 of a value of a few units


def test_push_sum_full_pushes_clear_the_residual_and_bound_the_bytes():
    initial = [tensors(80 + i) for i in range(4)]
    engines, _ = run_push_sum(Compression("topk", 0.01), initial, full_every=5, duration=1.0)
    engine = engines["agent_0"]
    assert engine.counters["pushes"] == 20  # the 20th was full: nothing held back
    assert engine.metrics()["consensus/compression_residual"] == 0.0
    plain, _ = run_push_sum(Compression(), initial, full_every=5, duration=1.0)
    ratio = plain["agent_0"].metrics()["consensus/bytes_sent"] / engine.metrics()["consensus/bytes_sent"]
    assert 3.5 < ratio < 5.0  # one push in 5 full: at most 5x fewer bytes


def test_push_sum_refuses_increments_it_cannot_decode():
    initial = tensors(90)
    engine = PushSumConsensus("b", ["a"], 1.0, 10.0, compression=Compression("int8"))
    engine.start(ConsensusRequest(initial, 1), now=0.0)
    wrong = PushSumShare(1, 1, 0.5, {}, compressed=encode(initial, Compression("fp16")), base_seq=0)
    engine.on_share("a", wrong, now=0.1)
    assert engine.counters["rejected"] == 1 and "codec 'fp16'" in engine.last_rejection
    backwards = PushSumShare(1, 2, 0.5, {}, compressed=encode(initial, Compression("int8")), base_seq=2)
    engine.on_share("a", backwards, now=0.2)
    assert "base_seq must be an int in 0..1" in engine.last_rejection


# -- config ---------------------------------------------------------------------------------


def test_config_with_every_key_spelled_out_at_its_default_is_valid():
    """A resolved config writes every key; the settings that apply only with compression then
    hold their defaults, which must not count as set."""
    assert ConsensusConfig(**ConsensusConfig().model_dump()) == ConsensusConfig()


def test_config_builds_compressed_engines():
    topology = ring(4)
    sync = build_consensus_engine(ConsensusConfig(compression="topk", topk_fraction=0.05, compressed_step_size=0.4), topology, "agent_0")
    assert sync.compression == Compression("topk", 0.05) and sync.step_size == 0.4
    push = build_consensus_engine(ConsensusConfig(mode="push_sum", compression="int8", push_sum_full_every=4), topology, "agent_0")
    assert push.compression == Compression("int8") and push.full_every == 4


@pytest.mark.parametrize(("fields", "match"), [
    ({"compression": "bf16"}, "compression"),
    ({"compression": "topk", "topk_fraction": 0.0}, r"consensus.topk_fraction must be in \(0, 1\]"),
    ({"compression": "int8", "topk_fraction": 0.2}, "consensus.topk_fraction applies only with consensus.compression 'topk'"),
    ({"compression": "int8", "compressed_step_size": 1.5}, r"consensus.compressed_step_size must be in \(0, 1\]"),
    ({"compressed_step_size": 0.5}, "consensus.compressed_step_size applies only with consensus.mode 'sync' with"),
    ({"compression": "fp16", "push_sum_full_every": 5}, "consensus.push_sum_full_every applies only with consensus.mode 'push_sum'"),
    ({"mode": "push_sum", "compression": "fp16", "push_sum_full_every": 0}, "consensus.push_sum_full_every must be >= 1"),
])
def test_config_refuses_bad_compression_settings(fields, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        ConsensusConfig(**fields)
