"""The link model, the partition table and the virtual-clock network simulator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydantic
import pytest

from protocols.net.links import LinkConfig, LinkModel, PartitionTable
from protocols.sim.netsim import NetworkSimulator, approximate_size, same_link_everywhere

# -- link model ------------------------------------------------------------------------------


def test_ideal_link_delivers_once_immediately():
    link = LinkModel(LinkConfig(), seed=0)
    assert [link.decide(now=t, size_bytes=100) for t in (0.0, 1.5)] == [[0.0], [1.5]]


def test_fixed_delay():
    link = LinkModel(LinkConfig(delay_s=0.25), seed=0)
    assert link.decide(now=2.0, size_bytes=10) == [2.25]


def test_jitter_stays_in_its_window_and_never_goes_back_in_time():
    link = LinkModel(LinkConfig(delay_s=0.1, jitter_s=0.05), seed=3)
    delays = np.array([link.decide(now=10.0, size_bytes=10)[0] - 10.0 for _ in range(2000)])
    assert delays.min() >= 0.05 - 1e-12 and delays.max() <= 0.15 + 1e-12
    assert delays.std() > 0.02  # spread, roughly uniform (std 0.0289)
    clipped = LinkModel(LinkConfig(delay_s=0.01, jitter_s=0.05), seed=3)
    assert all(clipped.decide(now=1.0, size_bytes=10)[0] >= 1.0 for _ in range(500))


@pytest.mark.parametrize("loss", [0.0, 0.3, 1.0])
def test_loss_rate(loss):
    link = LinkModel(LinkConfig(loss=loss), seed=11)
    lost = sum(link.decide(now=0.0, size_bytes=10) == [] for _ in range(5000)) / 5000
    assert lost == pytest.approx(loss, abs=0.025)


def test_duplication_rate_and_copies_have_their_own_delay():
    link = LinkModel(LinkConfig(duplicate=0.25, delay_s=0.1, jitter_s=0.05), seed=5)
    outcomes = [link.decide(now=0.0, size_bytes=10) for _ in range(4000)]
    doubled = [times for times in outcomes if len(times) == 2]
    assert all(len(times) in (1, 2) for times in outcomes)
    assert len(doubled) / len(outcomes) == pytest.approx(0.25, abs=0.025)
    assert all(times == sorted(times) for times in doubled)
    assert any(times[0] != times[1] for times in doubled)


def test_reordering_lets_later_messages_overtake_earlier_ones():
    link = LinkModel(LinkConfig(delay_s=0.1, reorder=0.3), seed=2)
    send_times = np.arange(1000) * 0.01
    arrivals = np.array([link.decide(now=t, size_bytes=10)[0] for t in send_times])
    skipped_delay = np.isclose(arrivals, send_times)
    assert skipped_delay.mean() == pytest.approx(0.3, abs=0.05)
    assert np.all(np.isclose(arrivals[~skipped_delay], send_times[~skipped_delay] + 0.1))
    overtaken = np.sum(np.diff(arrivals) < 0)
    assert overtaken > 100


def test_bandwidth_cap_serializes_messages():
    link = LinkModel(LinkConfig(delay_s=0.01, bandwidth_bytes_per_s=1000.0), seed=0)
    assert link.decide(now=0.0, size_bytes=500) == pytest.approx([0.51])
    assert link.decide(now=0.0, size_bytes=500) == pytest.approx([1.01])  # waits for the first
    assert link.decide(now=0.2, size_bytes=100) == pytest.approx([1.11])
    assert link.decide(now=5.0, size_bytes=100) == pytest.approx([5.11])  # idle link: no wait


def test_same_seed_same_decisions_and_common_random_numbers():
    config = LinkConfig(delay_s=0.1, jitter_s=0.05, loss=0.2, duplicate=0.1)
    first, second, other = LinkModel(config, 9), LinkModel(config, 9), LinkModel(config, 10)
    run = [first.decide(t, 10) for t in range(300)]
    assert run == [second.decide(t, 10) for t in range(300)]
    assert run != [other.decide(t, 10) for t in range(300)]
    # Changing the loss rate does not change the delays of the messages that get through.
    lossless = LinkModel(config.model_copy(update={"loss": 0.0}), 9)
    lossless_run = [lossless.decide(t, 10) for t in range(300)]
    assert all(a == b for a, b in zip(run, lossless_run) if a)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"loss": 1.5}, "loss is a probability"),
        ({"duplicate": -0.1}, "duplicate is a probability"),
        ({"delay_s": -1.0}, "delay_s must be >= 0"),
        ({"jitter_s": float("nan")}, "jitter_s must be >= 0"),
        ({"bandwidth_bytes_per_s": 0.0}, "bandwidth_bytes_per_s must be > 0"),
        ({"reorder": 0.2}, "reorder=0.2 needs delay_s > 0"),
        ({"latency": 0.1}, "latency"),
    ],
)
def test_link_config_errors_name_the_field(fields, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        LinkConfig(**fields)


def test_link_model_rejects_bad_arguments():
    with pytest.raises(TypeError, match="LinkConfig"):
        LinkModel({"delay_s": 0.1}, seed=0)
    with pytest.raises(ValueError, match="size"):
        LinkModel(LinkConfig(), seed=0).decide(0.0, -1)


# -- partitions ------------------------------------------------------------------------------


def test_partition_blocks_across_groups_only():
    table = PartitionTable()
    table.partition([["a", "b"], ["c"]])
    assert table.blocks("a", "c") and table.blocks("c", "a") and table.blocks("b", "c")
    assert not table.blocks("a", "b") and not table.blocks("a", "d") and not table.blocks("d", "c")
    table.heal()
    assert not table.blocks("a", "c") and table.blocked_pairs == frozenset()


def test_single_links_can_be_cut_one_way():
    table = PartitionTable()
    table.block("a", "b", both_directions=False)
    assert table.blocks("a", "b") and not table.blocks("b", "a")
    table.unblock("a", "b")
    assert not table.blocks("a", "b")


def test_partition_groups_must_be_disjoint():
    with pytest.raises(ValueError, match="partition: node 'b' is in groups 0 and 1"):
        PartitionTable().partition([["a", "b"], ["b", "c"]])


# -- simulator -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    text: str


class Recorder:
    """Test engine: records what it receives, optionally answers, fires timers at given times."""

    def __init__(self, timer_times=(), reply_to=None):
        self.received: list[tuple[float, str, str]] = []
        self.fired: list[float] = []
        self._timer_times = list(timer_times)
        self._reply_to = reply_to

    def on_message(self, sender, message, now):
        self.received.append((now, sender, message.text))
        if self._reply_to is not None and message.text.startswith("ping"):
            return [(self._reply_to, Note("pong " + message.text))]
        return []

    def on_timer(self, now):
        self.fired.append(now)
        self._timer_times.pop(0)
        return []

    def next_deadline(self):
        return self._timer_times[0] if self._timer_times else None


def test_messages_arrive_after_the_link_delay_and_replies_route_back():
    engines = {"a": Recorder(), "b": Recorder(reply_to="a")}
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig(delay_s=0.1)))
    sim.send("a", [("b", Note("ping 1"))])
    sim.run()
    assert engines["b"].received == [(0.1, "a", "ping 1")]
    assert engines["a"].received == [(pytest.approx(0.2), "b", "pong ping 1")]
    assert sim.stats["sent"] == 2 and sim.stats["delivered"] == 2


def test_timers_fire_at_their_deadlines():
    engines = {"a": Recorder(timer_times=[0.5, 1.25, 3.0])}
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig()))
    sim.send("a", [])  # registers the engine's first deadline
    sim.run(until=2.0)
    assert engines["a"].fired == [0.5, 1.25]
    assert sim.now == 2.0
    sim.run()
    assert engines["a"].fired == [0.5, 1.25, 3.0]


def test_partition_blocks_messages_until_healed():
    engines = {"a": Recorder(), "b": Recorder()}
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig()))
    sim.partitions.partition([["a"], ["b"]])
    sim.send("a", [("b", Note("cut"))])
    sim.partitions.heal()
    sim.send("a", [("b", Note("healed"))])
    sim.run()
    assert [text for _, _, text in engines["b"].received] == ["healed"]
    assert sim.stats["blocked_by_partition"] == 1


def test_crashed_node_receives_nothing_and_its_timers_wait_for_revival():
    engines = {"a": Recorder(), "b": Recorder(timer_times=[1.0])}
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig(delay_s=0.5)))
    sim.send("b", [])
    sim.crash("b")
    sim.send("a", [("b", Note("lost"))])
    sim.run(until=3.0)
    assert engines["b"].received == [] and engines["b"].fired == []
    assert sim.stats["lost_to_crashed_node"] == 1
    sim.revive("b")
    sim.send("a", [("b", Note("after"))])
    sim.run()
    assert engines["b"].fired == [3.0]  # the overdue timer fires on revival
    assert engines["b"].received == [(3.5, "a", "after")]


def test_revive_with_a_fresh_engine_models_a_restart():
    old, new = Recorder(), Recorder()
    sim = NetworkSimulator({"a": Recorder(), "b": old}, same_link_everywhere(LinkConfig()))
    sim.crash("b")
    sim.revive("b", engine=new)
    sim.send("a", [("b", Note("hello"))])
    sim.run()
    assert old.received == [] and new.received == [(0.0, "a", "hello")]


def test_scheduled_actions_run_at_their_time():
    engines = {"a": Recorder(), "b": Recorder()}
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig(delay_s=0.01)))
    sim.schedule(1.0, lambda: sim.send("a", [("b", Note("at one"))]))
    sim.run()
    assert engines["b"].received == [(pytest.approx(1.01), "a", "at one")]
    with pytest.raises(ValueError, match="past"):
        sim.schedule(0.5, lambda: None)


def test_unknown_nodes_are_errors():
    sim = NetworkSimulator({"a": Recorder()}, same_link_everywhere(LinkConfig()))
    with pytest.raises(ValueError, match="unknown node 'z'"):
        sim.send("a", [("z", Note("x"))])
    with pytest.raises(ValueError, match="unknown node 'z'"):
        sim.crash("z")


def lossy_run(seed: int) -> list[tuple[float, str, str, str]]:
    engines = {name: Recorder() for name in "abc"}
    config = LinkConfig(delay_s=0.05, jitter_s=0.04, loss=0.3, duplicate=0.2, reorder=0.1)
    sim = NetworkSimulator(engines, same_link_everywhere(config), seed=seed, record_trace=True)
    for step in range(50):
        sim.schedule(step * 0.01, lambda step=step: sim.send("a", [("b", Note(f"{step}")), ("c", Note(f"{step}"))]))
    sim.run()
    return [(r.time, r.sender, r.destination, r.message.text) for r in sim.trace]


def test_same_seed_replays_the_same_run():
    trace = lossy_run(seed=4)
    assert trace == lossy_run(seed=4)
    assert trace != lossy_run(seed=5)
    texts_at_b = [text for _, _, destination, text in trace if destination == "b"]
    assert len(set(texts_at_b)) < 50  # some were lost
    assert len(texts_at_b) > len(set(texts_at_b))  # some were duplicated
    assert texts_at_b != sorted(texts_at_b, key=int)  # some were reordered


def test_traffic_on_one_link_does_not_change_another():
    def arrivals_at_c(extra_traffic: bool) -> list[float]:
        engines = {name: Recorder() for name in "abc"}
        sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig(delay_s=0.1, jitter_s=0.05)), seed=1)
        for step in range(20):
            outgoing = [("c", Note("x"))] + ([("b", Note("y"))] if extra_traffic else [])
            sim.send("a", outgoing)
        sim.run()
        return [time for time, _, _ in engines["c"].received]

    assert arrivals_at_c(False) == arrivals_at_c(True)


def test_approximate_size_counts_array_payloads():
    @dataclass(frozen=True)
    class WithArrays:
        tensors: dict
        tag: str

    small = approximate_size(WithArrays({"w": np.zeros(10)}, "t"))
    large = approximate_size(WithArrays({"w": np.zeros(1000)}, "t"))
    assert large - small == 990 * 8
