"""Link emulation: delay distributions, Gilbert-Elliott loss, in-order delivery, the token
bucket, per-edge config selection, and the live transport holding messages on real sockets."""

from __future__ import annotations

import math
import time
import numpy as np
import pydantic
import pytest

from protocols.net.links import DRAWS_PER_MESSAGE, LinkConfig, LinkModel, PartitionTable, link_seed
from protocols.sim.netsim import NetworkSimulator, links_from
from protocols.run.settings import NetworkConfig
from protocols.net.transport import Hub

# -- delay distributions ----------------------------------------------------------------------


def delays(config: LinkConfig, n: int = 20000, seed: int = 0) -> np.ndarray:
    link = LinkModel(config, seed)
    return np.array([link.decide(now=0.0, size_bytes=10)[0] for _ in range(n)])


def test_constant_delay_is_exact():
    assert np.all(delays(LinkConfig(delay_s=0.02), n=100) == 0.02)


@pytest.mark.parametrize("kind", ["uniform", "normal", "lognormal"])
def test_distribution_has_the_configured_mean_and_std(kind):
    sample = delays(LinkConfig(delay_s=0.05, delay_distribution=kind, delay_std_s=0.01))
    assert sample.mean() == pytest.approx(0.05, rel=0.02)
    assert sample.std() == pytest.approx(0.01, rel=0.05)
    assert sample.min() >= 0.0


def test_uniform_stays_in_its_window():
    sample = delays(LinkConfig(delay_s=0.05, delay_distribution="uniform", delay_std_s=0.01))
    half = math.sqrt(3) * 0.01
    assert sample.min() >= 0.05 - half - 1e-12 and sample.max() <= 0.05 + half + 1e-12


def test_pareto_has_the_mean_and_a_heavy_tail():
    sample = delays(LinkConfig(delay_s=0.05, delay_distribution="pareto", pareto_shape=3.0), n=200000)
    scale = 0.05 * 2 / 3
    assert sample.min() >= scale - 1e-12
    assert sample.mean() == pytest.approx(0.05, rel=0.05)
    # Pareto tail: P(X > x) = (scale / x) ** shape.
    assert np.mean(sample > 4 * scale) == pytest.approx(4.0**-3, rel=0.1)


def test_trace_delays_come_from_the_file(tmp_path):
    trace = tmp_path / "ping.txt"
    trace.write_text("# one-way delays in ms\n10\n20.5\n\n40\n")
    sample = delays(LinkConfig(delay_distribution="trace", delay_trace=str(trace)), n=3000)
    assert set(np.round(sample, 6)) == {0.01, 0.0205, 0.04}
    for value in (0.01, 0.0205, 0.04):
        assert np.mean(np.isclose(sample, value)) == pytest.approx(1 / 3, abs=0.04)


def test_trace_file_errors_say_where(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("10\nfast\n")
    with pytest.raises(pydantic.ValidationError, match=r"bad.txt:2: expected a delay in milliseconds, got 'fast'"):
        LinkConfig(delay_distribution="trace", delay_trace=str(bad))
    with pytest.raises(pydantic.ValidationError, match="cannot read"):
        LinkConfig(delay_distribution="trace", delay_trace=str(tmp_path / "missing.txt"))
    with pytest.raises(pydantic.ValidationError, match="needs delay_trace"):
        LinkConfig(delay_distribution="trace")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"delay_distribution": "normal", "delay_s": 0.01}, "needs delay_std_s > 0"),
        ({"delay_distribution": "pareto"}, "needs a mean delay_s > 0"),
        ({"delay_distribution": "uniform", "delay_s": 0.01, "delay_std_s": 0.01}, "would reach below 0"),
        ({"loss_model": "gilbert_elliott", "loss": 0.1}, "loss=0.1 is the bernoulli rate"),
        ({"ge_p_good_to_bad": 0.1}, "only apply with loss_model: gilbert_elliott"),
        ({"delay_s": 0.1, "reorder": 0.1, "in_order": True}, "contradicts in_order"),
        ({"queue_limit_bytes": 100}, "set bandwidth_bytes_per_s too"),
        ({"pareto_shape": 1.0}, "pareto_shape"),
        ({"delay_s": float("inf")}, "delay_s must be >= 0 and finite"),
    ],
)
def test_inconsistent_configs_are_refused(fields, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        LinkConfig(**fields)


# -- loss --------------------------------------------------------------------------------------


def test_gilbert_elliott_loss_comes_in_bursts_at_the_stationary_rate():
    config = LinkConfig(loss_model="gilbert_elliott", ge_p_good_to_bad=0.02, ge_p_bad_to_good=0.2, ge_loss_bad=1.0)
    link = LinkModel(config, seed=4)
    lost = np.array([link.decide(0.0, 10) == [] for _ in range(100000)])
    stationary_bad = 0.02 / (0.02 + 0.2)
    assert lost.mean() == pytest.approx(stationary_bad, rel=0.1)
    # Runs of consecutive losses last 1 / p_bad_to_good = 5 messages on average (Bernoulli: ~1.1).
    edges = np.diff(np.concatenate([[0], lost.astype(int), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    assert runs.mean() == pytest.approx(5.0, rel=0.1)


def test_same_draws_whatever_the_probabilities():
    """Two links differing only in loss and duplication see the same delay for every message
    both deliver: each decide() consumes a fixed number of draws."""
    base = dict(delay_s=0.05, delay_distribution="normal", delay_std_s=0.01, jitter_s=0.005)
    clean = LinkModel(LinkConfig(**base), seed=9)
    lossy = LinkModel(LinkConfig(**base, loss=0.4, duplicate=0.3), seed=9)
    both = 0
    for i in range(2000):
        a, b = clean.decide(i * 0.01, 10), lossy.decide(i * 0.01, 10)
        if b:
            assert a[0] in b
            both += 1
    assert 1000 < both < 1400
    # And the generators are in the same state after the same calls, whatever happened.
    rng = np.random.default_rng(9)
    for _ in range(2000):
        rng.random(DRAWS_PER_MESSAGE)
        rng.standard_normal(2)
    assert clean._rng.bit_generator.state == rng.bit_generator.state == lossy._rng.bit_generator.state


# -- ordering and bandwidth --------------------------------------------------------------------


def test_in_order_never_lets_a_message_overtake():
    config = LinkConfig(delay_s=0.05, jitter_s=0.04, duplicate=0.2, in_order=True)
    link = LinkModel(config, seed=1)
    arrivals = [t for i in range(3000) for t in link.decide(i * 0.001, 10)]
    assert np.all(np.diff(arrivals) >= 0)
    jittery = LinkModel(config.model_copy(update={"in_order": False}), seed=1)
    unordered = [t for i in range(3000) for t in jittery.decide(i * 0.001, 10)]
    assert np.any(np.diff(unordered) < 0)  # without it, jitter reorders


def test_token_bucket_passes_a_burst_then_the_rate():
    link = LinkModel(LinkConfig(bandwidth_bytes_per_s=1000.0, burst_bytes=300.0), seed=0)
    departures = [link.decide(0.0, 100)[0] for _ in range(5)]
    # Three fit in the bucket at once; the next ones wait 0.1 s each for 100 bytes of tokens.
    assert departures == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])
    # After an idle second the bucket is full again (capped at the burst).
    assert [link.decide(5.0, 100)[0] for _ in range(4)] == pytest.approx([5.0, 5.0, 5.0, 5.1])


def test_full_queue_drops_at_the_tail_and_counts_it():
    link = LinkModel(LinkConfig(bandwidth_bytes_per_s=1000.0, queue_limit_bytes=250.0), seed=0)
    outcomes = [link.decide(0.0, 100) for _ in range(4)]
    assert [len(o) for o in outcomes] == [1, 1, 0, 0]  # 100 + 100 queued; a third would make 300
    assert link.counters.dropped_queue == 2 and link.counters.sent == 4
    assert link.decide(0.15, 100) == [pytest.approx(0.3)]  # the first has left by 0.15: room again


# -- which link gets which config ----------------------------------------------------------------


def network(**fields) -> NetworkConfig:
    return NetworkConfig.model_validate(fields)


def test_overrides_select_by_pair_node_and_role_and_the_last_wins():
    net = network(
        default_link={"delay_s": 0.001},
        links=[
            {"role": "env_links", "link": {"delay_s": 0.01}},
            {"role": "peer_links", "link": {"delay_s": 0.02}},
            {"node": "agent_3", "link": {"loss": 0.5}},
            {"between": ["agent_0", "agent_1"], "link": {"delay_s": 0.05}},
            {"src": "agent_1", "dst": "agent_0", "link": {"delay_s": 0.07}},
        ],
    )
    assert net.link_between("env", "agent_2").delay_s == 0.01
    assert net.link_between("agent_2", "agent_4").delay_s == 0.02
    assert net.link_between("agent_3", "env") == LinkConfig(loss=0.5)  # replaces, does not merge
    assert net.link_between("agent_2", "agent_3").loss == 0.5
    assert net.link_between("agent_0", "agent_1").delay_s == 0.05
    assert net.link_between("agent_1", "agent_0").delay_s == 0.07


@pytest.mark.parametrize(
    "override, message",
    [
        ({"link": {}}, "expected exactly one link selector .* got none"),
        ({"node": "agent_1", "role": "env_links", "link": {}}, "got node, role"),
        ({"src": "agent_1", "link": {}}, "src and dst go together"),
        ({"between": ["agent_1", "agent_1"], "link": {}}, "two different nodes"),
        ({"role": "all", "link": {}}, "env_links"),
        ({"node": "agent_1", "link": {"latency": 1}}, "latency"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        network(links=[override])


def test_repeated_selector_and_overlapping_partitions_are_refused():
    with pytest.raises(pydantic.ValidationError, match=r"links\[1\] repeats the selector of links\[0\]"):
        network(links=[{"node": "agent_1", "link": {}}, {"node": "agent_1", "link": {"loss": 0.1}}])
    with pytest.raises(pydantic.ValidationError, match="node 'agent_1' is in groups 0 and 1"):
        network(partitions=[["agent_1"], ["agent_1", "agent_2"]])


def test_unknown_node_ids_are_named():
    net = network(links=[{"node": "agent_9", "link": {}}], partitions=[["agent_0"], ["ghost"]])
    assert net.node_id_problems(["env", "agent_0", "agent_1"]) == [
        "network.links.0.node: expected a node id (env, agent_0, agent_1), got 'agent_9'",
        "network.partitions.1: expected node ids (env, agent_0, agent_1), got 'ghost'",
    ]


def test_a_configured_partition_blocks_only_between_groups():
    table = network(partitions=[["agent_0"], ["agent_1", "agent_2"]]).link_table("agent_0", run_seed=0)
    assert table.decide("agent_1", 0.0, 10) == []
    assert table.decide("env", 0.0, 10) == [0.0]
    assert table.metrics()["link/agent_0_to_agent_1/dropped_partition"] == 1


# -- the live transport --------------------------------------------------------------------------


def connected_pair(hubs, tmp_path, net: NetworkConfig, clock=time.monotonic):
    sender = hubs("agent_0", links=net.link_table("agent_0", run_seed=3), clock=clock)
    receiver = hubs("agent_1", links=net.link_table("agent_1", run_seed=3))
    inbox = receiver.bind_router(f"ipc://{tmp_path}/agent_1.peer", name="peers")
    channel = sender.connect_dealer(inbox.endpoint, name="peer:agent_1", identity="agent_0", peer="agent_1")
    return sender, receiver, inbox, channel


def receive_one(receiver: Hub, inbox, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if inbox in receiver.wait(left):
            for envelope in inbox.recv_all():
                return envelope
    return None


def some_message():
    from protocols.codec import messages as m

    return m.Heartbeat(node_id="agent_0", incarnation=1, state="running")


def test_live_hub_holds_a_message_for_its_delay_and_wakes_for_it(hubs, tmp_path):
    net = network(default_link={"delay_s": 0.15})
    sender, receiver, inbox, channel = connected_pair(hubs, tmp_path, net)
    started = time.monotonic()
    channel.send(some_message())
    assert receive_one(receiver, inbox, timeout_s=0.05) is None  # held, not on the wire yet
    assert sender.link_metrics()["link/agent_0_to_agent_1/in_flight"] == 1
    # The sender's wait(5 s) returns when the message falls due, and sends it: no polling loop.
    sender.wait(5.0)
    woke_after = time.monotonic() - started
    assert 0.14 <= woke_after < 4.0  # woke for the due message, not at the 5 s timeout
    envelope = receive_one(receiver, inbox, timeout_s=2.0)
    assert envelope is not None and time.monotonic() - started >= 0.15
    sent = sender.link_metrics()
    assert (sent["link/agent_0_to_agent_1/sent"], sent["link/agent_0_to_agent_1/delivered"], sent["link/agent_0_to_agent_1/in_flight"]) == (1, 1, 0)
    assert sent["link/agent_0_to_agent_1/bytes"] > 0
    received = receiver.link_metrics()
    assert received["link/agent_0_to_agent_1/received"] == 1
    assert received["link/agent_0_to_agent_1/age_p50_ms"] >= 150.0


def test_live_hub_drops_lost_and_partitioned_messages(hubs, tmp_path):
    net = network(default_link={"loss": 0.5}, partitions=[["agent_0"], ["agent_2"]])
    sender, receiver, inbox, channel = connected_pair(hubs, tmp_path, net)
    for _ in range(200):
        channel.send(some_message())
    got = 0
    while receive_one(receiver, inbox, timeout_s=0.3) is not None:
        got += 1
    row = sender.link_metrics()
    assert row["link/agent_0_to_agent_1/dropped_loss"] == 200 - got
    assert 60 < got < 140
    assert row["link/agent_0_to_agent_1/delivered"] == got


def test_simulator_and_live_transport_make_the_same_decisions(hubs, tmp_path):
    """Same run seed, same link config: the live hub releases each message at the very time the
    simulator delivers it (a controlled clock drives the hub; the sockets are real)."""
    net = network(default_link={"delay_s": 0.05, "delay_distribution": "lognormal", "delay_std_s": 0.03,
                                "loss": 0.2, "duplicate": 0.1, "reorder": 0.1})
    fake_now = [0.0]
    sender, receiver, inbox, channel = connected_pair(hubs, tmp_path, net, clock=lambda: fake_now[0])
    send_times = np.arange(300) * 0.01

    # Live: send at the controlled times; step the clock through every due time, recording
    # what leaves when (a message's Heartbeat incarnation carries its index).
    from protocols.codec import messages as m

    live: list[tuple[float, int]] = []
    for index, t in enumerate(send_times):
        fake_now[0] = t
        before = channel.stats.sent
        channel.send(m.Heartbeat(node_id="agent_0", incarnation=index, state="running"))
        live.extend((t, index) for _ in range(channel.stats.sent - before))
    while (due := channel.next_due()) is not None:
        fake_now[0] = due
        pending = [entry for entry in channel.emulation.delayed if entry[0] <= due]
        indices = sorted(_incarnation(entry[2]) for entry in pending)
        channel.flush_due(due)
        live.extend((due, index) for index in indices)

    # Simulated: one engine sends the same messages at the same times.
    class Sender:
        def __init__(self):
            self.pending = list(enumerate(send_times))

        def on_message(self, sender, message, now):
            return []

        def on_timer(self, now):
            out = []
            while self.pending and self.pending[0][1] <= now:
                index, _ = self.pending.pop(0)
                out.append(("agent_1", index))
            return out

        def next_deadline(self):
            return self.pending[0][1] if self.pending else None

    class Receiver:
        def on_message(self, sender, message, now):
            return []

        def on_timer(self, now):
            return []

        def next_deadline(self):
            return None

    sim = NetworkSimulator({"agent_0": Sender(), "agent_1": Receiver()}, links_from(net.link_between), seed=3,
                           message_size=lambda message: 100, record_trace=True)  # sizes matter only with a bandwidth cap
    sim.call("agent_0", lambda engine, now: [])
    sim.run()
    simulated = sorted((record.time, record.message) for record in sim.trace)
    live = sorted((round(t, 9), index) for t, index in live)
    simulated = sorted((round(t, 9), index) for t, index in simulated)
    assert len(live) == len(simulated) > 200
    assert live == simulated
    drops = 300 - len({index for _, index in live})
    assert drops > 30  # loss 0.2 did act, identically


def _incarnation(frames) -> int:
    from protocols.codec import wire

    envelope = wire.decode([memoryview(f) for f in frames])
    return envelope.message.incarnation


def test_router_replies_go_through_the_link_to_the_routed_node(hubs, tmp_path):
    """The env server's side: a ROUTER sends to the node named by the routing id, through that
    node's link (here env -> agent_0 delayed, env -> agent_1 ideal)."""
    net = network(links=[{"src": "env", "dst": "agent_0", "link": {"delay_s": 0.1}}])
    server = hubs("env", links=net.link_table("env", run_seed=0))
    router = server.bind_router(f"ipc://{tmp_path}/env.env", name="env")
    clients = {}
    for agent in ("agent_0", "agent_1"):
        hub = hubs(agent, links=net.link_table(agent, run_seed=0))
        clients[agent] = (hub, hub.connect_dealer(router.endpoint, name="env", identity=agent, peer="env"))
        clients[agent][1].send(some_message())
    requests = []
    while len(requests) < 2:
        assert router in server.wait(5.0)
        requests.extend(router.recv_all())
    started = time.monotonic()
    for request in requests:
        router.reply(request, some_message())
    fast = receive_one(clients["agent_1"][0], clients["agent_1"][1], timeout_s=2.0)
    assert fast is not None
    assert receive_one(clients["agent_0"][0], clients["agent_0"][1], timeout_s=0.05) is None  # still held
    server.wait(5.0)  # wakes when the held reply is due and sends it
    assert receive_one(clients["agent_0"][0], clients["agent_0"][1], timeout_s=2.0) is not None
    assert time.monotonic() - started >= 0.1
    metrics = server.link_metrics()
    assert metrics["link/env_to_agent_0/delivered"] == metrics["link/env_to_agent_1/delivered"] == 1


def test_wait_for_sends_the_held_request_it_waits_on(hubs, tmp_path):
    """A request/answer exchange before the main loop (join, welcome) over a delayed link: the
    request is held by the link, and `wait_for` must send it when due, or no answer ever comes."""
    from protocols.codec import messages as m

    net = network(default_link={"delay_s": 0.05})
    server = hubs("env", links=net.link_table("env", run_seed=0))
    router = server.bind_router(f"ipc://{tmp_path}/env.env", name="env")
    client_hub = hubs("agent_0", links=net.link_table("agent_0", run_seed=0))
    client = client_hub.connect_dealer(router.endpoint, name="env", identity="agent_0", peer="env")
    client.send(some_message())
    request = receive_one(server, router, timeout_s=0.01)
    assert request is None  # held on the client side
    answered = []

    import threading

    def answer():
        envelope = receive_one(server, router, timeout_s=5.0)
        if envelope is not None:
            router.reply(envelope, m.Heartbeat(node_id="env", incarnation=2, state="running"))
            answered.append(True)
            server.wait(2.0)  # the reply is held 50 ms too; this wait sends it

    thread = threading.Thread(target=answer)
    thread.start()
    reply = client.wait_for(m.Heartbeat, timeout_s=5.0)
    thread.join(10.0)
    assert answered and reply is not None and reply.incarnation == 2


def test_a_link_change_between_agents_that_talk_in_env_steps_stays_ideal_in_wall_time() -> None:
    """A scheduled link change without delay_steps, in a run that talks in env steps: the env-step
    layer applies its loss (protocols/engines/step_links.py); the wall-clock link must not lose the
    messages (and the step marks) a second time."""
    network = NetworkConfig.model_validate({})
    table = network.link_table("agent_0", run_seed=0, talk_in_steps=True)
    assert table.counts_steps("agent_1")
    table.set_config("agent_1", LinkConfig(loss=1.0))
    assert table.counts_steps("agent_1")
    assert all(table.decide("agent_1", now=1.0, size_bytes=100) == [1.0] for _ in range(20))
    # Without env steps the same change loses every message.
    wall = network.link_table("agent_0", run_seed=0)
    wall.set_config("agent_1", LinkConfig(loss=1.0))
    assert all(wall.decide("agent_1", now=1.0, size_bytes=100) == [] for _ in range(20))
