"""The node side of run-time network faults: `apply_network_fault` on a node's `LinkTable`
(protocols/run/control.py), as the agent node and the env server call it from their control handlers."""

from __future__ import annotations

import pytest

from protocols.codec import messages as m
from protocols.run.control import apply_network_fault
from protocols.net.links import LinkConfig, LinkModel, LinkTable, link_seed
from protocols.run.settings import LinkOverride, NetworkConfig

RUN_SEED = 7


def table(node: str, network: NetworkConfig | None = None) -> LinkTable:
    return (network or NetworkConfig()).link_table(node, RUN_SEED)


def send(links: LinkTable, dst: str, count: int, start: float = 0.0) -> int:
    """How many of `count` messages to `dst` the link lets through."""
    return sum(bool(links.decide(dst, start + i * 0.01, 100)) for i in range(count))


def test_partition_drops_between_groups_and_counts_it_heal_restores() -> None:
    links = table("agent_0")
    assert send(links, "agent_1", 5) == 5 and send(links, "env", 5) == 5
    line = apply_network_fault(links, m.Partition(groups=[["agent_0"], ["agent_1", "env"]], position=2))
    assert "faults.schedule.2" in line and "agent_0 cannot reach ['agent_1', 'env']" in line
    assert send(links, "agent_1", 4) == 0 and send(links, "env", 3) == 0
    assert send(links, "agent_2", 3) == 3  # in no group: not affected
    assert links.model_for("agent_1").counters.dropped_partition == 4 and links.model_for("env").counters.dropped_partition == 3
    assert links.metrics()["link/agent_0_to_agent_1/dropped"] == 4 and links.metrics()["link/agent_0_to_agent_1/sent"] == 9

    apply_network_fault(links, m.Heal(nodes=[]))
    assert send(links, "agent_1", 4) == 4 and send(links, "env", 2) == 2
    assert links.model_for("agent_1").counters.dropped_partition == 4  # counters carry on, nothing new dropped


def test_partitions_add_up_and_a_named_heal_restores_only_links_touching_its_nodes() -> None:
    links = table("agent_0")
    apply_network_fault(links, m.Partition(groups=[["agent_0", "env"], ["agent_1"]]))
    apply_network_fault(links, m.Partition(groups=[["agent_0"], ["agent_2"]]))
    assert send(links, "agent_1", 2) == 0 and send(links, "agent_2", 2) == 0 and send(links, "env", 2) == 2
    line = apply_network_fault(links, m.Heal(nodes=["agent_2"]))
    assert "still cut off from ['agent_1']" in line
    assert send(links, "agent_2", 2) == 2 and send(links, "agent_1", 2) == 0


def test_the_other_side_of_a_partition_drops_too() -> None:
    """Each node drops what it sends: the partition reaches both sides' tables."""
    message = m.Partition(groups=[["agent_2"], ["env", "agent_0", "agent_1"]])
    env, agent = table("env"), table("agent_2")
    for links in (env, agent):
        apply_network_fault(links, message)
    assert send(env, "agent_2", 3) == 0 and send(env, "agent_0", 3) == 3 and send(agent, "env", 3) == 0


def test_a_heal_also_ends_the_configured_partitions() -> None:
    links = table("agent_0", NetworkConfig(partitions=[["agent_0"], ["agent_1"]]))
    assert send(links, "agent_1", 2) == 0
    apply_network_fault(links, m.Heal())
    assert send(links, "agent_1", 2) == 2


def test_set_link_changes_only_this_nodes_outgoing_edges_and_keeps_the_seeded_stream() -> None:
    network = NetworkConfig(links=[LinkOverride(role="peer_links", link=LinkConfig(loss=0.3))])
    links = table("agent_0", network)
    reference = LinkModel(LinkConfig(loss=0.3), link_seed(RUN_SEED, "agent_0", "agent_1"))
    first = [links.decide("agent_1", 0.01 * i, 50) for i in range(20)]
    assert first == [reference.decide(0.01 * i, 50) for i in range(20)]

    new_profile = {"delay_s": 0.05, "loss": 0.5}
    line = apply_network_fault(links, m.SetLink(edges=[["agent_0", "agent_1"], ["agent_1", "agent_0"], ["agent_2", "env"]],
                                                link=new_profile, position=4))
    assert "agent_0 -> ['agent_1']" in line
    # The same stream goes on under the new profile: a model with that profile, fed the same
    # draws so far, decides the same from here.
    reference.config = LinkConfig(**new_profile)
    later = [links.decide("agent_1", 1.0 + 0.01 * i, 50) for i in range(40)]
    assert later == [reference.decide(1.0 + 0.01 * i, 50) for i in range(40)]
    delivered = [i for i, times in enumerate(later) if times]
    assert 5 < len(delivered) < 35  # about half of 40 lost
    assert all(later[i] == [pytest.approx(1.0 + 0.01 * i + 0.05)] for i in delivered)  # 50 ms later
    counters = links.model_for("agent_1").counters
    lost_before = sum(not times for times in first)
    assert counters.sent == 60 and counters.dropped_loss == lost_before + (40 - len(delivered))
    assert links.model_for("env").config == LinkConfig()  # not this node's edge in the message: unchanged


def test_a_bad_link_profile_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"faults.schedule.1.link: expected a link profile .*loss"):
        apply_network_fault(table("agent_0"), m.SetLink(edges=[["agent_0", "agent_1"]], link={"loss": 3.0}, position=1))
    with pytest.raises(ValueError, match=r"edges: expected \[src, dst\] pairs"):
        apply_network_fault(table("agent_0"), m.SetLink(edges=[["agent_0"]], link={}))
    with pytest.raises(TypeError, match="control.partition"):
        apply_network_fault(table("agent_0"), m.Shutdown(reason="x"))
