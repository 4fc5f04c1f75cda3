"""`network.port_range` end to end: a tcp run whose every listener is inside a narrow range, on
one host and (as root, skipped otherwise) over ssh across network namespaces."""

from __future__ import annotations

import socket
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.netns import NamespaceCluster, unavailable_reason
from tests.integration.test_orchestrate import orchestrate, read_events, stderr_after_exit
from tests.unit.test_port_range import free_port_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# tiny_star_tcp: env server + 3 agents, each with one listener, and the orchestrator's control.
LISTENERS = 5


def port_of(endpoint: str) -> int:
    assert endpoint.startswith("tcp://127.0.0.1:"), endpoint
    return int(endpoint.rpartition(":")[2])


def test_every_endpoint_of_a_tcp_run_is_in_a_range_just_big_enough(tmp_path):
    low, high = free_port_block(LISTENERS)
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_star_tcp.yaml", "--run-dir", str(run_dir),
                          "--set", "run.steps=20", "--set", f"network.port_range=[{low},{high}]")
    stderr = stderr_after_exit(process, timeout_s=150)
    assert process.returncode == 0, stderr.decode()[-3000:]

    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    assert resolved["network"]["port_range"] == [low, high]
    events = read_events(run_dir)
    # The rendezvous directory: what every node bound and advertised.
    registered = {e["node"]: e["endpoints"] for e in events if e["event"] == "registered"}
    assert set(registered) == {"env", "agent_0", "agent_1", "agent_2"}
    node_ports = [port_of(endpoint) for endpoints in registered.values() for endpoint in endpoints.values()]
    # The orchestrator's control socket, as every node was told it (`--control` of its command).
    launched = [e for e in events if e["event"] == "launched"]
    assert len(launched) == 4
    control_ports = {port_of(argv[argv.index("--control") + 1]) for argv in (e["argv"] for e in launched)}
    assert len(control_ports) == 1
    every_port = node_ports + list(control_ports)
    assert all(low <= port <= high for port in every_port), (low, high, registered, control_ports)
    assert sorted(every_port) == list(range(low, high + 1))  # one listener per port, the range full


def test_a_range_held_by_other_programs_fails_the_run_before_any_node_starts(tmp_path):
    low, high = free_port_block(LISTENERS)
    holders = []
    try:
        for port in range(low, high + 1):
            holder = socket.socket()
            holders.append(holder)
            holder.bind(("127.0.0.1", port))
            holder.listen()
        run_dir = tmp_path / "run"
        process = orchestrate("up", "configs/tiny_star_tcp.yaml", "--run-dir", str(run_dir),
                              "--set", f"network.port_range=[{low},{high}]")
        stderr = stderr_after_exit(process, timeout_s=60)
    finally:
        for holder in holders:
            holder.close()
    assert process.returncode == 1
    assert f"no free tcp port on 127.0.0.1 in the port range {low}-{high} (network.port_range): all {LISTENERS} are in use" in stderr.decode()
    assert not [e for e in read_events(run_dir) if e["event"] == "launched"]


_namespaces_unavailable = unavailable_reason()


@pytest.fixture
def cluster(tmp_path):
    cluster = NamespaceCluster(directory=tmp_path, prefix="ports")
    try:
        cluster.build(["launcher", "h1", "h2"], sshd_on=["h1", "h2"])
        for host in ("h1", "h2"):
            cluster.wait_for_ssh("launcher", host)
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(300)
@pytest.mark.skipif(_namespaces_unavailable is not None, reason=f"multi-host tests: {_namespaces_unavailable}")
def test_an_ssh_run_over_namespaces_keeps_every_endpoint_in_the_range(cluster, tmp_path):
    # Two listeners per host at most (h1: env + agent_0; the launcher: the control socket): a
    # range of two ports is enough, and each host's nodes must share it.
    placement = {"h1": ["env", "agent_0"], "h2": ["agent_1", "agent_2"]}
    low, high = 23_500, 23_501  # a fresh namespace has every port free
    config = yaml.safe_load((REPO / "configs/tiny_star_tcp.yaml").read_text())
    config["run"]["steps"] = 20
    config["network"] = {"transport": "tcp", "bind_host": "0.0.0.0", "port_range": [low, high]}
    config["launch"] = {
        "backend": "ssh", "shutdown_timeout_s": 10.0, "live_view": "off",
        "control_host": cluster.hosts["launcher"].address,
        "hosts": [
            {"address": cluster.hosts[name].address, "user": "root", "identity_file": str(cluster.client_key),
             "known_hosts_file": str(cluster.known_hosts), "python": sys.executable, "project_root": str(REPO),
             "workdir": str(tmp_path / f"remote_{name}"), "nodes": nodes}
            for name, nodes in placement.items()
        ],
    }
    config_path = tmp_path / "ports_ssh.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = tmp_path / "run"
    done = cluster.exec("launcher", [sys.executable, "-m", "orchestrator", "up", str(config_path), "--run-dir", str(run_dir)], timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-4000:]

    events = read_events(run_dir)
    registered = {e["node"]: e["endpoints"] for e in events if e["event"] == "registered"}
    assert set(registered) == {"env", "agent_0", "agent_1", "agent_2"}
    control = {argv[argv.index("--control") + 1] for argv in (e["argv"] for e in events if e["event"] == "launched")}
    assert control == {f"tcp://{cluster.hosts['launcher'].address}:{low}"}
    for host, nodes in placement.items():
        ports = sorted(
            int(endpoint.rpartition(":")[2])
            for node in nodes for endpoint in registered[node].values()
            if endpoint.startswith(f"tcp://{cluster.hosts[host].address}:")
        )
        assert ports == [low, high], (host, registered)
