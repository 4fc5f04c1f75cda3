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

A lost machine. When the restart policy starts a node again and its host cannot be reached (ssh
itself fails: no route, connection refused, no answer), the host is taken for lost for the rest
of the run and the node is started on a spare host (`spare: true` in `launch.hosts`) instead: a
`host_unreachable` event, then `node_moved` naming both hosts. Every later start of a node of the
lost host goes to a spare at once. The moved node restores its newest checkpoint because, with a
spare, every host's workdir is the one directory all hosts share (config check), and `prepare`
proves it is shared before the first node starts: a file written there from one host must be
read back from every other. The moved node registers at its new address; the orchestrator tells
its neighbours (`control.neighbour_moved`), or, for the env server, the agents (`control.env_back`).
What is not done: a host that is cut off but alive keeps running its node (nothing fences it),
so a partition longer than a restart's backoff can leave two incarnations writing to the shared
node directory; and a host, once lost, is not used again in the run.
"""

from __future__ import annotations

import io
import math
import secrets
import shlex
import signal
import subprocess
import tarfile
from pathlib import Path

from orchestrator.backends import BackendUnavailable, DeadOnArrival
from orchestrator.backends.hosts import SshHost
from orchestrator.backends.shipping import shipped_config, shipped_files
from protocols.net.auth import KEYS_DIRNAME, NODE_KEYS_DIRNAME
from protocols.run.settings import RunLayout

CONNECT_TIMEOUT_S = 5
ALIVE_INTERVAL_S = 2
# Longest wait for one short command (ship files, send a signal, gather files).
COMMAND_TIMEOUT_S = 60.0
PID_FILENAME = "pid"
# The exit status of the ssh client itself when it failed (could not connect, log in, or lost the
# connection), as against the remote command's own.
SSH_FAILED = 255
# Written from one host into the run's directory and read back from the others (prepare, with a
# spare): proof that the workdir is really shared.
SHARED_PROOF_FILENAME = "shared-workdir-proof"


class SshError(RuntimeError):
    """A command over ssh failed; the message names the host and what ssh said. `unreachable`:
    ssh itself failed or nothing answered in time (the host is down or cut off), as against a
    command that ran there and failed."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


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
        raise SshError(f"host {host.address}: {remote_command!r} did not finish within {COMMAND_TIMEOUT_S} s",
                       unreachable=True) from error
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-500:]
        raise SshError(f"host {host.address}: {remote_command!r} exited {done.returncode}: {said}",
                       unreachable=done.returncode == SSH_FAILED)
    return done.stdout


class SshBackend:
    """Starts, signals and gathers nodes over ssh; same duck type as the runtime's LocalBackend
    (`start(node)` sets `node.process`, a handle with pid/poll/wait, and `node.log_file`)."""

    def __init__(self, runtime: RunLayout, hosts: list[SshHost], events) -> None:
        """`runtime`: the resolved run's layout; `hosts`: `launch.hosts`, which node runs where."""
        self.runtime = runtime
        self.events = events
        self.run_id = runtime.run_id
        self.local_run_dir = Path(runtime.run_dir)
        self.hosts = list(hosts)
        self.host_of = {node: host for host in hosts for node in host.nodes}  # where each node runs now
        self.spares = [host for host in hosts if host.spare]
        self.lost: set[str] = set()  # addresses of hosts taken for lost (module docstring)

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
        """Without a spare, nothing: each host is reached when its first node starts. With one,
        prove that the workdir is shared (module docstring); a host that cannot be reached now is
        taken for lost, and its nodes start on a spare."""
        if not self.spares:
            return
        token = secrets.token_hex(16)
        proof = f"{self.hosts[0].workdir.rstrip('/')}/{self.run_id}/{SHARED_PROOF_FILENAME}"
        writer = None
        for position, host in enumerate(self.hosts):
            try:
                if writer is None:
                    run_over_ssh(host, f"umask 077 && mkdir -p {shlex.quote(proof.rsplit('/', 1)[0])} && "
                                       f"printf %s {token} > {shlex.quote(proof)}")
                    writer = position
                    continue
                read = run_over_ssh(host, f"cat {shlex.quote(proof)} 2>/dev/null || true").decode(errors="replace")
            except SshError as error:
                if not error.unreachable:
                    raise BackendUnavailable(f"launch.hosts.{position}: {error}") from error
                self._lose(host, None, error)
                continue
            if read != token:
                first = self.hosts[writer]
                raise BackendUnavailable(
                    f"launch.hosts.{position}.workdir: {host.workdir!r} is not shared: the file that launch.hosts.{writer} "
                    f"({first.address}) wrote at {proof} is not there on {host.address}; with a spare host every host's "
                    "workdir must be one directory all of them mount (see the guide's several-machines page)"
                )
        if writer is None:
            raise BackendUnavailable("launch.hosts: no host could be reached to check the shared workdir")
        try:
            run_over_ssh(self.hosts[writer], f"rm -f {shlex.quote(proof)}")
        except SshError:
            pass  # a file of 32 bytes left in the run's directory; the run does not depend on it

    def close(self) -> None:
        """Nothing held between nodes: every ssh session belongs to one node and is reaped with it."""

    def _lose(self, host: SshHost, node_id: str | None, error: SshError) -> None:
        """`host` cannot be reached: taken for lost for the rest of the run (module docstring)."""
        self.lost.add(host.address)
        self.events.write("host_unreachable", node_id, host=host.address, error=str(error), lost=bool(self.spares))

    def _spare_for(self, node_id: str) -> SshHost | None:
        """Where `node_id` goes now that its host is lost: the first spare not lost itself."""
        spare = next((host for host in self.spares if host.address not in self.lost), None)
        if spare is not None:
            self.events.write("node_moved", node_id, from_host=self.host_of[node_id].address, to_host=spare.address)
            self.host_of[node_id] = spare
        return spare

    def _ship(self, host: SshHost, node_id: str) -> None:
        """Make the node's directory on `host` and unpack its config and keys there."""
        run_dir = self.remote_run_dir(node_id)
        node_dir = f"{run_dir}/nodes/{node_id}"
        # Unpacked by Parley on the host, each file renamed into place (backends/shipping.py):
        # `tar -x` would rewrite the resolved.yaml a node started before on this host reads.
        ship = (
            f"umask 077 && mkdir -p {shlex.quote(node_dir)}/checkpoints {shlex.quote(node_dir)}/replay "
            f"{shlex.quote(run_dir)}/tb {shlex.quote(run_dir)}/{KEYS_DIRNAME}/{NODE_KEYS_DIRNAME} "
            f"&& PYTHONPATH={shlex.quote(host.project_root)} {shlex.quote(host.python)} "
            f"-m orchestrator.backends.shipping {shlex.quote(run_dir)}"
        )
        run_over_ssh(host, ship, stdin=self.shipped_files(node_id))

    def start(self, node) -> None:
        launch = node.launch
        node_id = launch.node_id
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        node.log_file = launch.log_path.open("ab")
        host = self._reachable_host(node)
        if host is None:
            node.process = DeadOnArrival()
            return
        node.process = subprocess.Popen(
            ssh_argv(host, self.remote_command(launch)),
            stdin=subprocess.DEVNULL,
            stdout=node.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _reachable_host(self, node) -> SshHost | None:
        """The host `node` starts on, its files shipped there: its own, or a spare once its own is
        lost (module docstring). None when none can be reached: the node is dead on arrival."""
        node_id = node.launch.node_id
        while True:
            host = self.host_of[node_id]
            if host.address in self.lost:
                if self._spare_for(node_id) is None:
                    self._say(node, f"host {host.address} is lost and no spare host is left")
                    self.events.write("no_spare_host", node_id, lost_host=host.address)
                    return None
                continue
            try:
                self._ship(host, node_id)
                return host
            except SshError as error:
                self._say(node, str(error))
                if not (error.unreachable and self.spares):  # without a spare: the node is reported dead
                    self.events.write("host_unreachable", node_id, host=host.address, error=str(error), lost=False)
                    return None
                self._lose(host, node_id, error)

    @staticmethod
    def _say(node, line: str) -> None:
        """A line in the node's local log, where its own output would be."""
        node.log_file.write(f"[parley ssh backend] {line}\n".encode())
        node.log_file.flush()

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
        if host.address in self.lost:
            # Its host is gone (no spare took the node, or none was left); with a spare the
            # workdir is shared, so any host still here reads the node's files.
            host = next((h for h in self.hosts if h.address not in self.lost), host)
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
