"""The SSH launch backend: each node runs on the host `launch.hosts` places it on.

Why the `ssh` client and not asyncssh/paramiko: the client is on every machine that can be
reached over SSH at all, it honours the user's ~/.ssh/config, agent, jump hosts and key types
without Parley re-implementing them, and a node then is simply one `ssh` child process of the
orchestrator, whose exit code is the node's (or 255 when the connection fails), so supervision
stays the same as for a local child. A Python SSH library would add a dependency and a thread or
event loop per connection to the orchestrator's single loop.

What travels where:
- shipped before start: `resolved.yaml`, with `runtime.run_dir` (and `keys_dir`) rewritten to
  the host's `<workdir>/<run id>`, and with authentication on the run's key files and the node's
  own key (a tar stream over ssh's stdin, unpacked on the host by `backends/shipping.py`, each
  file renamed into place, 0600 under umask 077);
- streamed while running: the node's stdout and stderr, through ssh into the local
  `nodes/<id>/log`, so `orchestrate logs` follows a remote node like a local one; its status
  reaches `orchestrate status` through the control channel as for a local node;
- gathered after it exits: everything else under the node's directory on the host (metrics,
  checkpoints, replay) and its tb/ events, copied back as a tar stream into the local run dir.
  Gathered rather than streamed because these files are written in place (checkpoints are
  replaced, replay chunks are large) and only their final state matters to `report`; the live
  figures a run needs while it goes come over the control channel anyway.

A host that cannot be reached makes its node's ssh exit 255: the orchestrator sees that node
exit and reports it dead, like a crashed local node. ssh's ServerAlive probes end the
connection of a host that vanishes mid-run after its `alive_timeout_s` (default 6 s).
"""

from __future__ import annotations

import io
import math
import shlex
import signal
import subprocess
import tarfile
from pathlib import Path

from orchestrator.backends.hosts import SshHost
from orchestrator.backends.shipping import shipped_config, shipped_files
from protocols.net.auth import KEYS_DIRNAME, NODE_KEYS_DIRNAME
from protocols.run.settings import RunLayout

CONNECT_TIMEOUT_S = 5
ALIVE_INTERVAL_S = 2
# Longest wait for one short command (ship files, send a signal, gather files).
COMMAND_TIMEOUT_S = 60.0
PID_FILENAME = "pid"


class SshError(RuntimeError):
    """A command over ssh failed; the message names the host and what ssh said."""


def ssh_argv(host: SshHost, remote_command: str) -> list[str]:
    """The `ssh` command line that runs `remote_command` (a shell string) on `host`."""
    argv = [
        "ssh",
        "-o", "BatchMode=yes",  # never prompt: a missing key is an error, not a hang
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", f"ServerAliveInterval={ALIVE_INTERVAL_S}",
        "-o", f"ServerAliveCountMax={max(1, math.ceil(host.alive_timeout_s / ALIVE_INTERVAL_S))}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
        "-p", str(host.port),
    ]  # fmt: skip
    if host.identity_file:
        argv += ["-i", host.identity_file, "-o", "IdentitiesOnly=yes"]
    if host.known_hosts_file:
        argv += ["-o", f"UserKnownHostsFile={host.known_hosts_file}"]
    return [*argv, host.destination(), remote_command]


def run_over_ssh(host: SshHost, remote_command: str, stdin: bytes = b"") -> bytes:
    """Run a short command on `host`; its stdout, or SshError naming the host and ssh's stderr."""
    try:
        done = subprocess.run(
            ssh_argv(host, remote_command), input=stdin, capture_output=True, timeout=COMMAND_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        raise SshError(f"host {host.address}: {remote_command!r} did not finish within {COMMAND_TIMEOUT_S} s") from error
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-500:]
        raise SshError(f"host {host.address}: {remote_command!r} exited {done.returncode}: {said}")
    return done.stdout


class DeadOnArrival:
    """The handle of a node whose host could not be reached: already exited with ssh's 255."""

    pid = -1
    returncode = 255

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode


class SshBackend:
    """Starts, signals and gathers nodes over ssh; same duck type as the runtime's LocalBackend
    (`start(node)` sets `node.process`, a handle with pid/poll/wait, and `node.log_file`)."""

    def __init__(self, runtime: RunLayout, hosts: list[SshHost], events) -> None:
        """`runtime`: the resolved run's layout; `hosts`: `launch.hosts`, which node runs where."""
        self.runtime = runtime
        self.events = events
        self.run_id = runtime.run_id
        self.local_run_dir = Path(runtime.run_dir)
        self.host_of = {node: host for host in hosts for node in host.nodes}

    # ------------------------------------------------------------------ where things are

    def remote_run_dir(self, node_id: str) -> str:
        return f"{self.host_of[node_id].workdir.rstrip('/')}/{self.run_id}"

    def advertised_host(self, node_id: str) -> str:
        """The host every endpoint of `node_id` is reachable at."""
        return self.host_of[node_id].address

    def shipped_config(self, node_id: str) -> bytes:
        """resolved.yaml as the node on its host reads it: the run dir (and key dir) are the host's copy."""
        return shipped_config(self.local_run_dir, self.remote_run_dir(node_id))

    def shipped_files(self, node_id: str) -> bytes:
        """A tar of what the node needs on its host (shipping.shipped_files)."""
        return shipped_files(self.runtime, self.remote_run_dir(node_id), node_id)

    # ------------------------------------------------------------------ the backend interface

    def prepare(self) -> None:
        """Nothing to prepare ahead: each host is reached when its first node starts."""

    def close(self) -> None:
        """Nothing held between nodes: every ssh session belongs to one node and is reaped with it."""

    def start(self, node) -> None:
        launch = node.launch
        host = self.host_of[launch.node_id]
        run_dir = self.remote_run_dir(launch.node_id)
        node_dir = f"{run_dir}/nodes/{launch.node_id}"
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        node.log_file = launch.log_path.open("ab")
        try:
            # Unpacked by Parley on the host, each file renamed into place (backends/shipping.py):
            # `tar -x` would rewrite the resolved.yaml a node started before on this host reads.
            ship = (
                f"umask 077 && mkdir -p {shlex.quote(node_dir)}/checkpoints {shlex.quote(node_dir)}/replay "
                f"{shlex.quote(run_dir)}/tb {shlex.quote(run_dir)}/{KEYS_DIRNAME}/{NODE_KEYS_DIRNAME} "
                f"&& PYTHONPATH={shlex.quote(host.project_root)} {shlex.quote(host.python)} "
                f"-m orchestrator.backends.shipping {shlex.quote(run_dir)}"
            )
            run_over_ssh(host, ship, stdin=self.shipped_files(launch.node_id))
        except SshError as error:
            node.log_file.write(f"[parley ssh backend] {error}\n".encode())
            node.log_file.flush()
            self.events.write("host_unreachable", launch.node_id, host=host.address, error=str(error))
            node.process = DeadOnArrival()
            return
        node.process = subprocess.Popen(
            ssh_argv(host, self.remote_command(launch)),
            stdin=subprocess.DEVNULL,
            stdout=node.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def remote_command(self, launch) -> str:
        """`sh -c` on the host: record the pid, then become the node (exec keeps the pid)."""
        host = self.host_of[launch.node_id]
        run_dir = self.remote_run_dir(launch.node_id)
        env = {**launch.env, "PYTHONPATH": host.project_root}
        argv = list(launch.argv)
        argv[0] = host.python
        argv[argv.index("--config") + 1] = f"{run_dir}/resolved.yaml"
        pid_path = f"{run_dir}/nodes/{launch.node_id}/{PID_FILENAME}"
        assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        inner = f"echo $$ > {shlex.quote(pid_path)} && cd {shlex.quote(run_dir)} && exec env {assignments} {shlex.join(argv)}"
        return f"sh -c {shlex.quote(inner)}"

    def signal(self, node, signum: int) -> None:
        """Signal the node on its host (killing the local ssh alone would leave it running)."""
        if node.process is None or node.process.poll() is not None:
            return
        host = self.host_of[node.launch.node_id]
        pid_path = f"{self.remote_run_dir(node.launch.node_id)}/nodes/{node.launch.node_id}/{PID_FILENAME}"
        try:
            run_over_ssh(host, f"kill -{signal.Signals(signum).name[3:]} $(cat {shlex.quote(pid_path)})")
        except SshError as error:
            self.events.write("signal_failed", node.launch.node_id, host=host.address, error=str(error))
            # The host is gone or refuses: end our side of the connection at least.
            node.process.kill()

    def finish(self, node) -> None:
        """Gather the node's files back into the local run dir (not its log: that was streamed)."""
        if isinstance(node.process, DeadOnArrival):
            return
        node_id = node.launch.node_id
        host = self.host_of[node_id]
        run_dir = self.remote_run_dir(node_id)
        command = (
            f"cd {shlex.quote(run_dir)} && tar -cf - --exclude=nodes/{node_id}/{PID_FILENAME} "
            f"nodes/{shlex.quote(node_id)} $(ls -d tb/{shlex.quote(node_id)} 2>/dev/null)"
        )
        try:
            archive = run_over_ssh(host, command)
        except SshError as error:
            self.events.write("gather_failed", node_id, host=host.address, error=str(error))
            return
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            members = [m for m in tar.getmembers() if m.name.split("/")[0] in ("nodes", "tb")]
            tar.extractall(self.local_run_dir, members=members, filter="data")
        self.events.write("gathered", node_id, host=host.address, files=sum(1 for m in members if m.isfile()))
