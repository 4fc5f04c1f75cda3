"""launch.backend ray against real Ray clusters (tcp transport, Ray's restarts off).

- on this machine: a Ray head started with `ray start --head --block` (the test owns its
  process group and ends it by that id; never `ray stop`, which kills every Ray process of the
  machine), configs/tiny_ring.yaml placed on it;
- across network namespaces: a head in one namespace, a worker node in each of two others
  (tests/integration/netns.py), the orchestrator on the head's machine (a Ray driver runs on a
  node of its cluster); the nodes pinned one per machine through `launch.ray.pin`, and every
  node's endpoints advertised at its own machine's address; then one machine vanishes mid-run
  (its bridge link taken down): the run fails naming its node, as with the ssh backend.

Skipped when the `[ray]` extra is not installed, and the namespace test where namespaces
cannot be made (needs root).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, reaped
from tests.integration.netns import NamespaceCluster, unavailable_reason
from tests.integration.test_orchestrate import read_events, wait_for_event

pytest.importorskip("ray", reason="launch.backend ray needs the [ray] extra (pip install '.[ray]')")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

BIN = Path(sys.executable).parent
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
# Ray's smallest object store (bytes): this test moves only small tars through it.
OBJECT_STORE_BYTES = 80 * 1024 * 1024
RAY_READY_TIMEOUT_S = 240.0
# Agents took ~9 s from goodbye to exit at load 15 (torch teardown); the configs' 10 s is too tight.
SHUTDOWN_TIMEOUT_S = 30.0

_netns_reason = unavailable_reason()


def start_ray_node(prefix: list[str], args: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block ...` in its own process group (ended by `stop_ray_node`)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefix, str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
             f"--object-store-memory={OBJECT_STORE_BYTES}", *args],
            env=RAY_ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_ray_node(process: subprocess.Popen) -> None:
    """End the Ray node this test started: its process group (the raylet, GCS and workers it spawned)."""
    # A test cluster need not stop gracefully: 5 s for SIGTERM (a raylet whose machine was cut off
    # waited out the 30 s given before), then SIGKILL.
    for signum, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def wait_for_ray_nodes(prefix: list[str], address: str, count: int, ray_nodes: list[subprocess.Popen], log: Path) -> None:
    """Readiness: a driver on `address` sees `count` alive Ray nodes before the deadline."""
    code = (
        "import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False); deadline = time.monotonic() + float(sys.argv[3])\n"
        "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.monotonic() < deadline: time.sleep(0.5)\n"
        "alive = sum(n['Alive'] for n in ray.nodes()); print('alive', alive); sys.exit(0 if alive >= int(sys.argv[2]) else 1)"
    )
    deadline = time.monotonic() + RAY_READY_TIMEOUT_S
    while True:
        for node in ray_nodes:
            assert node.poll() is None, f"a Ray node exited with {node.returncode}: {log.read_text()[-3000:]}"
        done = subprocess.run([*prefix, sys.executable, "-c", code, address, str(count), "60"],
                              env=RAY_ENV, capture_output=True, text=True, timeout=RAY_READY_TIMEOUT_S)  # fmt: skip
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, f"Ray nodes not up within {RAY_READY_TIMEOUT_S} s: {done.stderr[-2000:]} {log.read_text()[-2000:]}"




# ------------------------------------------------------------------------------ one machine


@pytest.fixture
def local_ray_head(tmp_path):
    temp = Path("/tmp") / f"rayt{os.getpid()}"  # short: Ray's unix socket paths have a length limit
    log = tmp_path / "ray_head.log"
    head = start_ray_node([], ["--head", "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=4",
                               "--include-dashboard=false", f"--temp-dir={temp}"], log)  # fmt: skip
    try:
        deadline = time.monotonic() + RAY_READY_TIMEOUT_S
        while not (temp / "ray_current_cluster").exists():
            assert head.poll() is None, f"ray start --head exited {head.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no Ray head within {RAY_READY_TIMEOUT_S} s: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        address = (temp / "ray_current_cluster").read_text().strip()
        wait_for_ray_nodes([], address, 1, [head], log)
        yield address
    finally:
        stop_ray_node(head)
        subprocess.run(["rm", "-rf", str(temp)], timeout=60)


@pytest.mark.timeout(600)
def test_tiny_ring_through_ray_backend_on_a_local_head(local_ray_head, tmp_path):
    address = local_ray_head
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [str(BIN / "orchestrate"), "up", str(REPO / "configs/tiny_ring.yaml"),
         "--set", "launch.backend=ray", "--set", "network.transport=tcp", "--set", "network.bind_host=0.0.0.0",
         "--set", "launch.control_host=127.0.0.1",
         "--set", f"launch.ray.address={address}", "--set", f"launch.ray.project_root={REPO}",
         "--set", f"launch.ray.workdir={tmp_path / 'remote'}", "--set", "launch.ray.cpus_per_node=0.5",
         "--set", f"launch.shutdown_timeout_s={SHUTDOWN_TIMEOUT_S}", "--run-dir", str(run_dir)],
        env=RAY_ENV, capture_output=True, text=True, timeout=540, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = read_events(run_dir)
    placed = next(e for e in events if e["event"] == "ray_placed")
    assert set(placed["hosts"]) == {"env", "agent_0", "agent_1", "agent_2"}
    for agent in ("agent_0", "agent_1", "agent_2"):
        assert (run_dir / "nodes" / agent / "log").read_text(), f"{agent}: no log streamed back"
        assert (run_dir / "nodes" / agent / "metrics.jsonl").read_text().splitlines(), f"{agent}: no metrics gathered"
        # Written on the Ray machine's copy of the run dir, then gathered.
        run_id = next(e for e in events if e["event"] == "run_started")["run_id"]
        assert (tmp_path / "remote" / run_id / "nodes" / agent / "metrics.jsonl").exists()
    exited = {e["node"]: e["code"] for e in events if e["event"] == "exited"}
    assert exited == {"env": 0, "agent_0": 0, "agent_1": 0, "agent_2": 0}


# ------------------------------------------------------------------------------ namespaces

PLACEMENT = {"h1": ["env", "agent_0"], "h2": ["agent_1"], "h3": ["agent_2"]}


@pytest.fixture(scope="module")
def ray_cluster_in_namespaces(tmp_path_factory):
    """One cluster for the module's tests (starting it costs ~30-60 s): the test that cuts a
    machine off comes last."""
    tmp_path = tmp_path_factory.mktemp("ray_namespaces")
    cluster = NamespaceCluster(directory=tmp_path)
    ray_nodes: list[subprocess.Popen] = []
    temp = Path("/tmp") / f"rayn{os.getpid()}"
    log = tmp_path / "ray_nodes.log"
    try:
        cluster.build(list(PLACEMENT), sshd_on=[])
        head = cluster.hosts["h1"]
        ns = lambda host: ["ip", "netns", "exec", cluster.hosts[host].namespace]  # noqa: E731
        ray_nodes.append(start_ray_node(ns("h1"), ["--head", f"--node-ip-address={head.address}", "--port=6379",
                                                   "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}"], log))  # fmt: skip
        address = f"{head.address}:6379"
        wait_for_ray_nodes(ns("h1"), address, 1, ray_nodes, log)
        # One worker at a time: `ray start` gives its raylet a fixed 30 s to register, which two
        # raylets starting together on a loaded 2-core machine overran.
        for count, host in enumerate(("h2", "h3"), start=2):
            ray_nodes.append(start_ray_node(ns(host), [f"--address={address}", f"--node-ip-address={cluster.hosts[host].address}",
                                                       "--num-cpus=2"], log))  # fmt: skip
            wait_for_ray_nodes(ns("h1"), address, count, ray_nodes, log)
        yield cluster, address
    finally:
        for node in reversed(ray_nodes):
            stop_ray_node(node)
        cluster.close()
        subprocess.run(["rm", "-rf", str(temp)], timeout=60)


@pytest.mark.timeout(900)
@pytest.mark.skipif(_netns_reason is not None, reason=f"multi-host tests: {_netns_reason}")
def test_run_across_three_namespaces_through_ray(ray_cluster_in_namespaces, tmp_path):
    cluster, address = ray_cluster_in_namespaces
    pins = [f"launch.ray.pin.{node}={cluster.hosts[host].address}" for host, nodes in PLACEMENT.items() for node in nodes]
    run_dir = tmp_path / "run"
    result = cluster.exec("h1", [
        str(BIN / "orchestrate"), "up", str(REPO / "configs/tiny_star_tcp.yaml"),
        "--set", "launch.backend=ray", "--set", "network.bind_host=0.0.0.0",
        "--set", f"launch.control_host={cluster.hosts['h1'].address}",
        "--set", f"launch.ray.address={address}", "--set", f"launch.ray.project_root={REPO}",
        "--set", f"launch.ray.workdir={tmp_path / 'remote'}", "--set", "launch.ray.cpus_per_node=0.5",
        "--set", f"launch.shutdown_timeout_s={SHUTDOWN_TIMEOUT_S}", *[arg for pin in pins for arg in ("--set", pin)],
        "--run-dir", str(run_dir)], timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout.decode()[-3000:] + result.stderr.decode()[-3000:]
    events = read_events(run_dir)
    placed = next(e for e in events if e["event"] == "ray_placed")
    for host, nodes in PLACEMENT.items():
        for node in nodes:
            assert placed["hosts"][node] == cluster.hosts[host].address, (node, placed["hosts"])
    # Every node registered with endpoints at its own machine's address, not the wildcard it bound.
    registered = [e for e in events if e["event"] == "registered"]
    assert {e["node"] for e in registered} == {"env", "agent_0", "agent_1", "agent_2"}
    for event in registered:
        host = next(h for h, nodes in PLACEMENT.items() if event["node"] in nodes)
        for endpoint in event["endpoints"].values():
            assert endpoint.startswith(f"tcp://{cluster.hosts[host].address}:"), (event["node"], endpoint)
    for agent in ("agent_0", "agent_1", "agent_2"):
        assert (run_dir / "nodes" / agent / "metrics.jsonl").read_text().splitlines(), f"{agent}: no metrics gathered"
    exited = {e["node"]: e["code"] for e in events if e["event"] == "exited"}
    assert exited == {"env": 0, "agent_0": 0, "agent_1": 0, "agent_2": 0}


@pytest.mark.long
@pytest.mark.timeout(600)
@pytest.mark.skipif(_netns_reason is not None, reason=f"multi-host tests: {_netns_reason}")
def test_a_ray_machine_that_vanishes_mid_run_fails_the_run_naming_its_node(ray_cluster_in_namespaces, tmp_path):
    """h3 (agent_2's machine) drops off the network mid-run: the call to its node's runner fails
    (Ray declares the actor lost, or it goes unanswered for launch.ray.call_timeout_s, 8 s here),
    agent_2 is reported dead with code 255 and the run fails with exit 1, naming it; the other
    nodes are stopped."""
    cluster, address = ray_cluster_in_namespaces
    pins = [f"launch.ray.pin.{node}={cluster.hosts[host].address}" for host, nodes in PLACEMENT.items() for node in nodes]
    run_dir = tmp_path / "run"
    orchestrator = cluster.popen("h1", [
        str(BIN / "orchestrate"), "up", str(REPO / "configs/tiny_star_tcp.yaml"), "--set", "run.steps=1000000",
        "--set", "launch.backend=ray", "--set", "network.bind_host=0.0.0.0",
        "--set", f"launch.control_host={cluster.hosts['h1'].address}",
        "--set", f"launch.ray.address={address}", "--set", f"launch.ray.project_root={REPO}",
        "--set", f"launch.ray.workdir={tmp_path / 'remote'}", "--set", "launch.ray.cpus_per_node=0.5",
        "--set", f"launch.shutdown_timeout_s={SHUTDOWN_TIMEOUT_S}", *[arg for pin in pins for arg in ("--set", pin)],
        "--set", "launch.ray.call_timeout_s=8", "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    with reaped(orchestrator):
        wait_for_event(run_dir, "started", orchestrator, timeout_s=240)
        time.sleep(2.0)
        cluster.cut("h3")  # not healed: the machine is gone for the rest of the run
        stderr = orchestrator.communicate(timeout=300)[1].decode()
    assert orchestrator.returncode == 1, stderr[-4000:]
    events = read_events(run_dir)
    exited = {e["node"]: e for e in events if e["event"] == "exited"}
    assert exited["agent_2"]["code"] == 255 and not exited["agent_2"]["expected"], exited["agent_2"]
    finished = next(e for e in events if e["event"] == "run_finished")
    assert "agent_2" in finished["reason"], finished
    assert "node runner lost" in (run_dir / "nodes/agent_2/log").read_text()
    assert {node for node in exited} == {"env", "agent_0", "agent_1", "agent_2"}, "every node is accounted for"


@pytest.mark.long
@pytest.mark.timeout(600)
@pytest.mark.skipif(_netns_reason is not None, reason=f"multi-host tests: {_netns_reason}")
def test_an_agent_whose_ray_machine_is_lost_is_restarted_on_another_from_its_checkpoint(ray_cluster_in_namespaces, tmp_path):
    """Every process of h2 (its raylet and agent_1) killed once agent_1 has a checkpoint: its runner
    is lost, the restart policy starts agent_1 on another machine (h3, or h1 when the test before
    cut h3 off) from its checkpoint in the shared workdir, its ring neighbours hear it at its
    new address, and the run reaches its budget. Runs last: h2 is gone afterwards."""
    cluster, address = ray_cluster_in_namespaces
    h1, h2 = cluster.hosts["h1"].address, cluster.hosts["h2"].address
    steps = 800
    run_dir, workdir = tmp_path / "run", tmp_path / "shared"
    orchestrator = cluster.popen("h1", [
        str(BIN / "orchestrate"), "up", str(REPO / "configs/tiny_ring.yaml"), "--set", f"run.steps={steps}",
        "--set", "env.max_steps_per_s=20", "--set", "network={transport: tcp, bind_host: 0.0.0.0}",
        "--set", "faults.restart={policy: on-failure, max_restarts: 2, backoff_s: 2.0}",
        "--set", "launch.backend=ray", "--set", f"launch.control_host={h1}",
        "--set", f"launch.ray.address={address}", "--set", f"launch.ray.project_root={REPO}",
        "--set", f"launch.ray.workdir={workdir}", "--set", "launch.ray.shared_workdir=true",
        "--set", "launch.ray.cpus_per_node=0.5", "--set", f"launch.shutdown_timeout_s={SHUTDOWN_TIMEOUT_S}",
        "--set", f"launch.ray.pin={{env: {h1}, agent_0: {h1}, agent_1: {h2}, agent_2: {h1}}}",
        "--set", "launch.ray.call_timeout_s=8", "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    with reaped(orchestrator):
        events = wait_for_event(run_dir, "started", orchestrator, timeout_s=240)
        run_id = next(e for e in events if e["event"] == "run_started")["run_id"]
        deadline = time.monotonic() + 60
        saved = [workdir / run_id / "nodes" / "agent_1" / sub for sub in ("checkpoints", "replay")]
        while not all(list(directory.glob("step-*")) for directory in saved):  # (the checkpoint is written first)
            assert time.monotonic() < deadline and orchestrator.poll() is None, "agent_1 wrote no checkpoint"
            time.sleep(0.2)
        lost_at = time.time()
        assert cluster.kill_everything("h2")
        stderr = orchestrator.communicate(timeout=400)[1].decode()
    assert orchestrator.returncode == 0, stderr[-4000:]
    events = read_events(run_dir)
    mine = [e for e in events if e["node"] == "agent_1"]
    exited = next(e for e in mine if e["event"] == "exited")
    assert exited["code"] == 255 and exited["t"] >= lost_at
    assert next(e for e in mine if e["event"] == "host_unreachable")["host"] == h2
    # To the live machine holding the fewest of the run's nodes: h3 (none) first. When the test
    # before cut h3 off, Ray may still list it alive: the start there goes unanswered for
    # call_timeout_s, h3 is taken for lost too, and agent_1 moves on to h1.
    moves = [(e["from_host"], e["to_host"]) for e in mine if e["event"] == "node_moved"]
    assert moves and moves[0][0] == h2 and all(a[1] == b[0] for a, b in zip(moves, moves[1:])), moves
    new_host = moves[-1][1]
    assert new_host in (h1, cluster.hosts["h3"].address), moves
    assert [e["host"] for e in mine if e["event"] in ("launched", "restarted")] == [h2, new_host]
    peers = [e["endpoints"]["peer"] for e in mine if e["event"] == "registered"]
    assert len(peers) == 2 and peers[1].startswith(f"tcp://{new_host}:"), peers
    assert sorted(next(e for e in mine if e["event"] == "neighbours_told")["told"]) == ["agent_0", "agent_2"]
    rejoined = next(e for e in mine if e["event"] == "rejoined")
    log = (run_dir / "nodes" / "agent_1" / "log").read_text()
    said = re.search(r"lost on restart: restored checkpoint of step (\d+) and (\d+) replay rows, joined the run at step (\d+)", log)
    assert said and int(said.group(1)) > 0 and int(said.group(2)) > 0, log[-3000:]
    rows = [json.loads(line) for line in (run_dir / "nodes/agent_1/metrics.jsonl").read_text().splitlines() if line.strip()]
    after = [r for r in rows if r["t"] > rejoined["t"]]
    assert after and after[-1]["step"] == steps
    alive = [r["membership/peers_alive"] for r in after if "membership/peers_alive" in r]
    assert alive and max(alive) == 2, alive
    print(f"lost Ray machine: agent_1 on {new_host} back {rejoined['t'] - lost_at:.1f} s after h2 was killed (exit seen after "
          f"{exited['t'] - lost_at:.1f} s); restored step {said.group(1)}, joined at step {said.group(3)}")
