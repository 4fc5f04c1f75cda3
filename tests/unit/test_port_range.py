"""`network.port_range`: validation of the setting, and how a bind picks a port of the range."""

from __future__ import annotations

import random
import socket

import pytest
import yaml

from orchestrator.config import listeners_per_machine, load_config, validate_config
from orchestrator.plan import build_plan
from protocols.run.config_errors import ConfigError
from protocols.run.node_config import bind_address
from protocols.net.transport import Hub, PortRangeExhausted
from tests.conftest import REPO

TCP_CONFIG = REPO / "configs/tiny_star_tcp.yaml"  # 3 agents + env server: 4 nodes


def tcp_config(**network):
    data = yaml.safe_load(TCP_CONFIG.read_text())
    data["network"].update(network)
    return data


def ssh_config(port_range, hosts):
    data = tcp_config(bind_host="0.0.0.0", port_range=port_range)
    data["launch"] = {
        "backend": "ssh",
        "control_host": "192.0.2.1",
        "hosts": [
            {"address": address, "python": "/usr/bin/python3", "project_root": "/opt/parley", "workdir": "/tmp/p", "nodes": nodes}
            for address, nodes in hosts
        ],
    }
    return data


def ray_config(port_range, strategy, pin=None):
    data = tcp_config(bind_host="0.0.0.0", port_range=port_range)
    data["launch"] = {"backend": "ray", "control_host": "192.0.2.1",
                      "ray": {"project_root": "/opt/parley", "strategy": strategy, "pin": pin or {}}}
    return data


def free_port_block(count: int) -> tuple[int, int]:
    """`count` consecutive ports that are free on 127.0.0.1 now, below Linux's ephemeral range
    (so outgoing connections do not wander into it)."""
    for _ in range(200):
        low = random.randrange(20_000, 30_000 - count)
        probes = []
        try:
            for port in range(low, low + count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return low, low + count - 1
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free ports found between 20000 and 30000")


# ------------------------------------------------------------------ validation


def test_a_range_gives_every_tcp_listener_a_range_bind_address():
    config = validate_config(tcp_config(port_range=[41000, 41009]))
    assert config.network.tcp_bind_address() == "tcp://127.0.0.1:41000-41009"
    assert bind_address(config, "agent_0", "peer") == "tcp://127.0.0.1:41000-41009"
    assert bind_address(config, "env", "env") == "tcp://127.0.0.1:41000-41009"


def test_without_a_range_listeners_take_any_free_port():
    config = validate_config(tcp_config())
    assert config.network.port_range is None
    assert bind_address(config, "agent_0", "peer") == "tcp://127.0.0.1:0"


def test_the_orchestrator_control_endpoint_is_not_final_until_bound(tmp_path):
    from orchestrator.rundir import prepare_run

    resolved, run_dir = prepare_run(load_config(TCP_CONFIG, ["network.port_range=[41000,41009]"]), tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    assert plan.control_endpoint == "tcp://127.0.0.1:41000-41009"
    assert not plan.control_endpoint_is_final
    final = plan.with_control_endpoint("tcp://127.0.0.1:41000")
    assert final.control_endpoint_is_final
    assert all("tcp://127.0.0.1:41000" in node.argv for node in final.nodes)


@pytest.mark.parametrize(
    "port_range, expected",
    [
        ([1000, 2000], "1024 <= low <= high <= 65535"),
        ([42000, 41000], "got [42000, 41000]"),
        ([60000, 70000], "got [60000, 70000]"),
    ],
)
def test_a_range_outside_the_usable_ports_is_refused(port_range, expected):
    with pytest.raises(ConfigError) as caught:
        validate_config(tcp_config(port_range=port_range))
    assert "network.port_range" in str(caught.value) and expected in str(caught.value)


def test_a_range_with_ipc_is_refused_as_doing_nothing():
    data = tcp_config(port_range=[41000, 41009])
    data["network"]["transport"] = "ipc"
    with pytest.raises(ConfigError, match=r"network.port_range: only used with transport 'tcp'.*got transport 'ipc'"):
        validate_config(data)


def test_a_local_run_needs_a_port_per_node_plus_the_control_socket():
    validate_config(tcp_config(port_range=[41000, 41004]))  # 4 nodes + control: exactly enough
    with pytest.raises(ConfigError, match=r"expected at least 5 ports \(this machine runs 5 tcp listeners.*got \[41000, 41003\] \(4 ports\)"):
        validate_config(tcp_config(port_range=[41000, 41003]))


def test_an_ssh_run_needs_ports_for_its_busiest_host():
    hosts = [("192.0.2.10", ["env", "agent_0"]), ("192.0.2.11", ["agent_1", "agent_2"])]
    config = validate_config(ssh_config([41000, 41001], hosts))  # two listeners per host, one on the launcher
    assert listeners_per_machine(config) == {"192.0.2.10": 2, "192.0.2.11": 2, "192.0.2.1": 1}
    crowded = [("192.0.2.10", ["env", "agent_0", "agent_1"]), ("192.0.2.11", ["agent_2"])]
    with pytest.raises(ConfigError, match=r"expected at least 3 ports \(192.0.2.10 runs 3 tcp listeners"):
        validate_config(ssh_config([41000, 41001], crowded))


def test_the_launching_machine_counts_its_control_socket_when_it_also_hosts_nodes():
    hosts = [("192.0.2.1", ["env", "agent_0"]), ("192.0.2.11", ["agent_1", "agent_2"])]
    with pytest.raises(ConfigError, match=r"expected at least 3 ports \(192.0.2.1 runs 3 tcp listeners"):
        validate_config(ssh_config([41000, 41001], hosts))


def test_a_packed_ray_run_needs_ports_for_every_node_on_one_machine():
    with pytest.raises(ConfigError, match=r"expected at least 4 ports \(one Ray machine runs 4 tcp listeners"):
        validate_config(ray_config([41000, 41002], "pack"))
    spread = validate_config(ray_config([41000, 41001], "spread", pin={"env": "10.0.0.2", "agent_0": "10.0.0.2"}))
    assert listeners_per_machine(spread) == {"10.0.0.2": 2, "192.0.2.1": 1}


# ------------------------------------------------------------------ allocation (real sockets)


def test_listeners_take_the_lowest_free_ports_of_the_range_in_turn():
    low, high = free_port_block(3)
    hub = Hub(sender="test", run_id="test")
    try:
        first = hub.bind_router(f"tcp://127.0.0.1:{low}-{high}", name="a")
        second = hub.bind_router(f"tcp://127.0.0.1:{low}-{high}", name="b", advertise_host="192.0.2.7")
        assert first.endpoint == f"tcp://127.0.0.1:{low}"
        assert second.endpoint == f"tcp://192.0.2.7:{low + 1}"  # the advertised host, the bound port
    finally:
        hub.close()


def test_a_port_held_by_another_program_is_skipped():
    low, high = free_port_block(3)
    stranger = socket.socket()
    stranger.bind(("127.0.0.1", low))
    stranger.listen()
    hub = Hub(sender="test", run_id="test")
    try:
        assert hub.bind_router(f"tcp://127.0.0.1:{low}-{high}", name="a").endpoint == f"tcp://127.0.0.1:{low + 1}"
    finally:
        hub.close()
        stranger.close()


def test_an_exhausted_range_raises_naming_the_range_and_the_host():
    low, high = free_port_block(2)
    hub = Hub(sender="test", run_id="test")
    try:
        hub.bind_router(f"tcp://127.0.0.1:{low}-{high}", name="a")
        hub.bind_router(f"tcp://127.0.0.1:{low}-{high}", name="b")
        with pytest.raises(PortRangeExhausted, match=rf"no free tcp port on 127.0.0.1 in the port range {low}-{high} \(network.port_range\): all 2 are in use"):
            hub.bind_router(f"tcp://127.0.0.1:{low}-{high}", name="c")
    finally:
        hub.close()


@pytest.mark.parametrize("bad", ["41000-", "x-41001", "41001-41000", "0-10"])
def test_a_malformed_range_in_a_bind_address_is_refused(bad):
    hub = Hub(sender="test", run_id="test")
    try:
        with pytest.raises(ValueError, match="port range"):
            hub.bind_router(f"tcp://127.0.0.1:{bad}", name="a")
    finally:
        hub.close()


def test_an_address_error_is_not_mistaken_for_a_busy_port():
    hub = Hub(sender="test", run_id="test")
    try:  # 192.0.2.1 (TEST-NET-1) is not an address of this machine: EADDRNOTAVAIL at once
        with pytest.raises(Exception) as caught:
            hub.bind_router("tcp://192.0.2.1:41000-41005", name="a")
        assert not isinstance(caught.value, PortRangeExhausted)
    finally:
        hub.close()
