"""A lost machine survived (ssh backend): its agent is restarted on a spare host and the run goes on.

Network namespaces with an sshd each stand for the machines (tests/integration/netns.py): the
orchestrator runs in `launcher`; h1 runs the env server and agents 0 and 2, h2 runs agent_1, h3
is a spare. All hosts share one workdir, as a network file system would be shared (namespaces
share this machine's files). After agent_1 has written a checkpoint, every process of h2 is
killed, its sshd too: the machine is gone. The orchestrator sees agent_1's ssh session end, the
restart policy starts it again, h2 refuses the connection, and agent_1 starts on h3, restores its
newest checkpoint from the shared workdir and rejoins at its new address, where its neighbours
(agent_0 and agent_2 on the ring) are told to reach it. The run reaches its budget and exits 0.

Skipped, with the reason, where namespaces or sshd are not available (needs root).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.rundir import read_jsonl
from tests.conftest import REPO, reaped
from tests.integration.netns import NamespaceCluster, unavailable_reason
from tests.integration.test_orchestrate import read_events, wait_for_event

_reason = unavailable_reason()
pytestmark = [
    pytest.mark.integration, pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(360),
    pytest.mark.skipif(_reason is not None, reason=f"multi-host tests: {_reason}"),
]

PLACEMENT = {"h1": ["env", "agent_0", "agent_2"], "h2": ["agent_1"]}
SPARE = "h3"
STEPS = 800
STEPS_PER_S = 20.0  # paced: the run lasts ~40 s whatever the machine's load, long enough to see the move


@pytest.fixture
def cluster(tmp_path):
    cluster = NamespaceCluster(directory=tmp_path)
    try:
        cluster.build(["launcher", "h1", "h2", SPARE], sshd_on=["h1", "h2", SPARE])
        for host in [*PLACEMENT, SPARE]:
            cluster.wait_for_ssh("launcher", host)
        yield cluster
    finally:
        cluster.close()


def lost_machine_config(cluster: NamespaceCluster, tmp_path: Path, shared: Path, placement: dict[str, list[str]] = PLACEMENT,
                        roles: tuple[str, ...] = ("agent",)) -> Path:
    config = yaml.safe_load((REPO / "configs/tiny_ring.yaml").read_text())
    config["run"] = {**config["run"], "name": "ssh_lost_machine", "steps": STEPS}
    config["env"]["max_steps_per_s"] = STEPS_PER_S
    config["network"] = {"transport": "tcp", "bind_host": "0.0.0.0"}
    # agent_1's silence counts after 3 s, so its neighbours see it go down before it is back
    # (the restart waits backoff_s = 2 s, then a fresh python starts on h3).
    config["protocols"]["membership"] = {"heartbeat_every_s": 0.5, "timeout_s": 3.0}
    config["faults"] = {"restart": {"policy": "on-failure", "max_restarts": 2, "backoff_s": 2.0, "roles": list(roles)}}

    def host(name: str, **placement) -> dict:
        return {
            "address": cluster.hosts[name].address, "user": "root", "identity_file": str(cluster.client_key),
            "known_hosts_file": str(cluster.known_hosts), "python": sys.executable, "project_root": str(REPO),
            "workdir": str(shared), **placement,
        }  # fmt: skip

    config["launch"] = {
        "backend": "ssh", "shutdown_timeout_s": 10.0, "live_view": "off",
        "control_host": cluster.hosts["launcher"].address,
        "hosts": [host(name, nodes=nodes) for name, nodes in placement.items()] + [host(SPARE, spare=True)],
    }  # fmt: skip
    path = tmp_path / "lost_machine.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# agent_1's first checkpoint and replay generation (step 50): the checkpoint is written first, so
# a kill right after it alone may find no replay to restore.
SAVED = ("agent_1/checkpoints/step-*.pt", "agent_1/replay/step-*.npz")


def run_losing_h2(cluster: NamespaceCluster, tmp_path: Path, saved: tuple[str, ...] = SAVED, **config) -> tuple[Path, float]:
    """Run the config, kill every process of h2 once each of `saved` (globs under the node
    directories of the shared workdir) exists, wait for the run to end, and check it exited 0;
    returns the run directory and when h2 was lost."""
    shared = tmp_path / "shared"
    run_dir = tmp_path / "run"
    orchestrator = cluster.popen(
        "launcher", [sys.executable, "-m", "orchestrator", "up", str(lost_machine_config(cluster, tmp_path, shared, **config)),
                     "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    with reaped(orchestrator):
        events = wait_for_event(run_dir, "started", orchestrator, timeout_s=180)
        run_id = next(e for e in events if e["event"] == "run_started")["run_id"]
        deadline = time.monotonic() + 60
        while not all(list((shared / run_id / "nodes").glob(pattern)) for pattern in saved):
            assert time.monotonic() < deadline, f"no {saved} in the shared workdir within 60 s"
            assert orchestrator.poll() is None, orchestrator.communicate()[1].decode()[-3000:]
            time.sleep(0.2)
        lost_at = time.time()  # (before: the orchestrator may see the exit before kill_everything returns)
        killed = cluster.kill_everything("h2")
        stderr = orchestrator.communicate(timeout=300)[1]
    assert killed, "nothing ran in h2's namespace"
    assert orchestrator.returncode == 0, stderr.decode()[-4000:]
    return run_dir, lost_at


def test_an_agent_whose_machine_is_lost_is_restarted_on_the_spare_from_its_checkpoint(cluster, tmp_path):
    run_dir, lost_at = run_losing_h2(cluster, tmp_path)
    events = read_events(run_dir)
    h2, h3 = cluster.hosts["h2"].address, cluster.hosts[SPARE].address
    mine = [e for e in events if e["node"] == "agent_1"]

    # The orchestrator noticed: agent_1's ssh session ended (255) and the restart policy took it.
    exited = next(e for e in mine if e["event"] == "exited")
    assert exited["code"] == 255 and not exited["expected"] and exited["t"] >= lost_at
    assert next(e for e in mine if e["event"] == "restart_scheduled")["in_s"] == 2.0
    # The restart found h2 gone and moved agent_1 to the spare; the events say which host.
    unreachable = next(e for e in mine if e["event"] == "host_unreachable")
    assert unreachable["host"] == h2 and unreachable["lost"]
    moved = next(e for e in mine if e["event"] == "node_moved")
    assert (moved["from_host"], moved["to_host"]) == (h2, h3)
    assert [e["host"] for e in mine if e["event"] in ("launched", "restarted")] == [h2, h3]
    peers = [e["endpoints"]["peer"] for e in mine if e["event"] == "registered"]
    assert len(peers) == 2 and peers[0].startswith(f"tcp://{h2}:") and peers[1].startswith(f"tcp://{h3}:"), peers
    told = next(e for e in mine if e["event"] == "neighbours_told")
    assert sorted(told["told"]) == ["agent_0", "agent_2"] and told["endpoint"] == peers[1]
    rejoined = next(e for e in mine if e["event"] == "rejoined")

    # It restored its newest checkpoint, written on h2, from the shared workdir.
    log = (run_dir / "nodes" / "agent_1" / "log").read_text()
    said = re.search(r"lost on restart: restored checkpoint of step (\d+) and (\d+) replay rows, joined the run at "
                     r"step (\d+): (\d+) steps of learning lost", log)
    assert said, log[-3000:]
    restored_step, replay_rows, joined_step, steps_lost = map(int, said.groups())
    assert restored_step > 0 and replay_rows > 0 and steps_lost == joined_step - restored_step

    # The run went on: the moved agent stepped to the end of the budget ...
    after = [r for r in read_jsonl(run_dir / "nodes" / "agent_1" / "metrics.jsonl") if r["t"] > rejoined["t"]]
    assert after and after[-1]["step"] == STEPS
    assert next(e for e in events if e["event"] == "run_complete")["steps"] == STEPS
    # ... it hears both neighbours at its new address ...
    alive = [r["membership/peers_alive"] for r in after if "membership/peers_alive" in r]
    assert alive and max(alive) == 2, alive
    # ... and they, who saw it go down, hear it again.
    for neighbour in ("agent_0", "agent_2"):
        rows = [r for r in read_jsonl(run_dir / "nodes" / neighbour / "metrics.jsonl") if "membership/peers_alive" in r]
        down = [r for r in rows if lost_at < r["t"] < rejoined["t"] and r["membership/peers_alive"] < 2]
        # (it may hear the agent before the orchestrator writes `rejoined`; it writes a row only on a change)
        back = [r for r in rows if down and r["t"] > down[0]["t"] and r["membership/peers_alive"] == 2]
        assert down and back, (neighbour, rows)
        assert f"neighbour agent_1 moved: sending to {peers[1]}" in (run_dir / "nodes" / neighbour / "log").read_text()

    # What the lost machine cost, for the guide (printed with -s).
    print(f"lost machine: agent_1 back {rejoined['t'] - lost_at:.1f} s after h2 was killed "
          f"(ssh session ended after {exited['t'] - lost_at:.1f} s, backoff 2.0 s); restored step {restored_step}, "
          f"joined at step {joined_step}: {steps_lost} steps of learning lost")


def test_an_env_server_whose_machine_is_lost_resumes_the_run_on_the_spare(cluster, tmp_path):
    """The env server alone on h2, the agents on h1: h2 lost, the env server is started on the
    spare, resumes the run from its resume point in the shared workdir, and the agents join it
    at its new address."""
    placement = {"h1": ["agent_0", "agent_1", "agent_2"], "h2": ["env"]}
    # Lost once the agents' first checkpoints are written (step 50): the env server has saved
    # resume points past it.
    run_dir, lost_at = run_losing_h2(cluster, tmp_path, placement=placement, roles=("agent", "env_server"))
    events = read_events(run_dir)
    h2, h3 = cluster.hosts["h2"].address, cluster.hosts[SPARE].address
    mine = [e for e in events if e["node"] == "env"]
    exited = next(e for e in mine if e["event"] == "exited")
    assert exited["code"] == 255 and not exited["expected"] and exited["t"] >= lost_at
    assert (next(e for e in mine if e["event"] == "node_moved")["to_host"]) == h3
    assert [e["host"] for e in mine if e["event"] in ("launched", "restarted")] == [h2, h3]
    endpoints = [e["endpoints"]["env"] for e in mine if e["event"] == "registered"]
    assert len(endpoints) == 2 and endpoints[1].startswith(f"tcp://{h3}:"), endpoints
    resumed = next(e for e in mine if e["event"] == "env_server_resumed")
    assert resumed["step"] >= 50 and sorted(resumed["agents_told"]) == ["agent_0", "agent_1", "agent_2"]
    assert next(e for e in events if e["event"] == "run_complete")["steps"] == STEPS
    for agent in ("agent_0", "agent_1", "agent_2"):
        rows = read_jsonl(run_dir / "nodes" / agent / "metrics.jsonl")
        assert rows[-1]["step"] == STEPS and any("env/server_downtime_s" in r for r in rows), agent
    print(f"lost machine (env server): resumed at step {resumed['step']} on the spare, "
          f"{resumed['downtime_s']:.1f} s after its exit was seen")
