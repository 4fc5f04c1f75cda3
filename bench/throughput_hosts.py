"""Lockstep throughput across hosts: `python bench/throughput.py --hosts 3`.

The same lockstep as bench/throughput.py (mpe2 simple_spread_v3, a standalone env server and N
bench/random_client.py processes answering with random actions), measured twice in one run:

- spread: the env server and the N agents over H "hosts" (env on host 1, agent i on host
  (i + 1) mod H, so most agents talk to the server across the network);
- one host: the same processes all on host 1, to the same address (the kernel short-cuts it
  through loopback).

The hosts are Linux network namespaces on this machine, joined by veth pairs and a bridge, each
with its own address and its own sshd (tests/integration/netns.py, the fixture of the ssh
backend's tests). Every process, in both rows, is started the same way: from a launcher
namespace over ssh with the ssh backend's command line (orchestrator/backends/ssh.py
`ssh_argv`), transport tcp, so the rows differ only in where the processes run. Not through
`orchestrate up`: an orchestrated run steps learners too, which would hide the network.

Needs root (namespaces) and sshd; says why and exits 2 otherwise. All hosts share this
machine's CPUs and PID namespace: the remote pids are local ones, which is how the CPU time per
env step (server + clients, from /proc) is read. Rows alternate (one host, spread) `--repeats`
times per K so both see the same load drift.

Columns: env steps/s (summed over K copies), ratio = spread / one host, µs per lockstep round
(K=1: one observation out to every agent and every action back, the per-step latency), CPU µs
per env step of all Parley processes, defaulted observations (must be 0 for a valid row).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from orchestrator.backends.hosts import SshHost  # noqa: E402
from orchestrator.backends.ssh import ssh_argv  # noqa: E402
from tests.integration.netns import NamespaceCluster, unavailable_reason  # noqa: E402
from runs import env_kwargs, kill_leftovers, process_tree_cpu_s  # noqa: E402  (bench/ is the script's directory)

LAUNCHER = "launcher"
# Longest wait for the env server's READY line (imports on a loaded machine) and for a client.
SERVER_READY_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 900.0


class SshLauncher:
    """Starts bench processes on the cluster's hosts over ssh, from the launcher namespace."""

    def __init__(self, cluster: NamespaceCluster) -> None:
        self.cluster = cluster

    def host(self, name: str) -> SshHost:
        return SshHost(
            address=self.cluster.hosts[name].address, user="root", identity_file=str(self.cluster.client_key),
            known_hosts_file=str(self.cluster.known_hosts), python=sys.executable, project_root=str(REPO),
            workdir="/tmp", nodes=[name],
        )  # fmt: skip

    def start(self, host_name: str, argv: list[str], stderr=subprocess.PIPE) -> subprocess.Popen:
        """`argv` on `host_name`; the first stdout line is `PID <pid>` (the shell exec's into it)."""
        inner = (f"echo PID $$ && cd {shlex.quote(str(REPO))} && exec env PYTHONPATH={shlex.quote(str(REPO))} "
                 f"OMP_NUM_THREADS=1 {shlex.join(argv)}")  # fmt: skip
        command = ssh_argv(self.host(host_name), f"sh -c {shlex.quote(inner)}")
        # Unbuffered (bufsize=0): select() on the pipe then sees every line not read yet.
        return self.cluster.popen(LAUNCHER, command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=stderr, bufsize=0)


def read_pid(process: subprocess.Popen, what: str) -> int:
    line = process.stdout.readline().decode().strip()
    if not line.startswith("PID "):
        raise RuntimeError(f"{what}: expected 'PID <pid>' first over ssh, got {line!r} (exit {process.poll()})")
    return int(line.split()[1])


def lockstep(launcher: SshLauncher, placement: list[str], server_host: str, lockstep_steps: int, copies: int) -> dict:
    """One lockstep measurement: env server on `server_host`, agent i on `placement[i]`."""
    agents = len(placement)
    address = launcher.cluster.hosts[server_host].address
    server_log = launcher.cluster.directory / "env_server.log"  # a file, not a pipe nobody drains
    with server_log.open("ab") as log:
        server = launcher.start(server_host, [
            sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps(env_kwargs(agents)),
            "--copies", str(copies), "--max-steps", str(lockstep_steps), "--bind", f"tcp://{address}:0"], stderr=log)  # fmt: skip
    clients: list[subprocess.Popen] = []
    server_pid = None
    try:
        server_pid = read_pid(server, "env server")
        # The READY line, with a deadline: a server that hangs must not hang the bench.
        ready, _, _ = select.select([server.stdout], [], [], SERVER_READY_TIMEOUT_S)
        line = server.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"env server on {server_host} did not start: {line!r}; its stderr: {server_log.read_text()[-500:]}")
        endpoint = line.split(" ", 1)[1]
        server_cpu_at_start = process_tree_cpu_s(server_pid)
        clients = [
            launcher.start(host, [sys.executable, str(REPO / "bench" / "random_client.py"), endpoint, str(i), str(i)])
            for i, host in enumerate(placement)
        ]
        spans, defaulted, client_cpu = [], 0, 0.0
        for i, client in enumerate(clients):
            out, err = client.communicate(timeout=CLIENT_TIMEOUT_S)
            timing = [row for row in out.decode().splitlines() if row.startswith("TIMING ")]
            if client.returncode != 0 or not timing:
                raise RuntimeError(f"bench client {i} on {placement[i]} failed (exit {client.returncode}): {err.decode()[-500:]!r}")
            _, _answered, missing, seconds, cpu_seconds = timing[-1].split()[:5]
            spans.append(float(seconds))
            defaulted += int(missing)
            client_cpu += float(cpu_seconds)
        server_cpu = process_tree_cpu_s(server_pid) - server_cpu_at_start
    finally:
        kill_leftovers(clients)
        if server_pid is not None:
            try:  # same PID namespace: the server's pid is a local one
                os.kill(server_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    env_steps = lockstep_steps * copies
    return {
        "steps_per_s": env_steps / max(spans),
        "us_per_round": max(spans) / lockstep_steps * 1e6,
        "cpu_us_per_step": (server_cpu + client_cpu) / env_steps * 1e6,
        "defaulted": defaulted,
    }


def measure(hosts: int, agents: int, steps: int, repeats: int) -> dict:
    host_names = [f"h{i + 1}" for i in range(hosts)]
    with tempfile.TemporaryDirectory(prefix="parley-hosts-") as directory:
        cluster = NamespaceCluster(directory=Path(directory))
        try:
            cluster.build([LAUNCHER, *host_names], sshd_on=host_names)
            for name in host_names:
                cluster.wait_for_ssh(LAUNCHER, name)
            launcher = SshLauncher(cluster)
            spread = [host_names[(i + 1) % hosts] for i in range(agents)]
            one_host = [host_names[0]] * agents
            runs: list[dict] = []
            for copies, lockstep_steps in ((1, steps), (8, steps // 8)):
                for repeat in range(repeats):
                    for layout, placement in (("one_host", one_host), ("spread", spread)):
                        result = lockstep(launcher, placement, host_names[0], lockstep_steps, copies)
                        runs.append({"k": copies, "repeat": repeat, "layout": layout, **{k: round(v, 1) for k, v in result.items()}})
        finally:
            cluster.close()
    return {"hosts": hosts, "agents": agents, "env_steps": steps, "placement": {"env": host_names[0], **{f"agent_{i}": h for i, h in enumerate(spread)}}, "runs": runs}


def print_table(result: dict, load: float) -> None:
    print(f"mpe2 simple_spread_v3 N={result['agents']}, random actions, tcp, {result['env_steps']} env steps per row; "
          f"{result['hosts']} network namespaces over veth + bridge, every process started over ssh; "
          f"load average {load:.2f} after the run")  # fmt: skip
    print("placement (spread): " + ", ".join(f"{node} on {host}" for node, host in result["placement"].items()))
    print(f"{'K':>2}  {'rep':>3}  {'one host st/s':>13}  {'spread st/s':>11}  {'ratio':>5}  "
          f"{'µs/round 1h':>11}  {'µs/round sp':>11}  {'CPU µs/st 1h':>12}  {'CPU µs/st sp':>12}  {'defaulted':>9}")
    by_key = {(r["k"], r["repeat"], r["layout"]): r for r in result["runs"]}
    for k, repeat in sorted({(r["k"], r["repeat"]) for r in result["runs"]}):
        one, spread = by_key[(k, repeat, "one_host")], by_key[(k, repeat, "spread")]
        print(f"{k:>2}  {repeat + 1:>3}  {one['steps_per_s']:>13.0f}  {spread['steps_per_s']:>11.0f}  "
              f"{spread['steps_per_s'] / one['steps_per_s']:>5.2f}  {one['us_per_round']:>11.0f}  {spread['us_per_round']:>11.0f}  "
              f"{one['cpu_us_per_step']:>12.0f}  {spread['cpu_us_per_step']:>12.0f}  {one['defaulted'] + spread['defaulted']:>9}")


def run_across_hosts(hosts: int, agent_counts: list[int], steps: int, repeats: int, as_json: bool) -> int:
    reason = unavailable_reason()
    if reason is not None:
        print(f"--hosts: cannot make network namespaces here: {reason}", file=sys.stderr)
        return 2
    started = time.time()
    results = [measure(hosts, agents, steps, repeats) for agents in agent_counts]
    load = os.getloadavg()[0]
    if as_json:
        print(json.dumps({"transport": "tcp", "results": results, "load_avg_1m": round(load, 2), "seconds": round(time.time() - started, 1)}))
    else:
        for result in results:
            print_table(result, load)
    return 0
