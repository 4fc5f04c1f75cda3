"""The Ray launch backend: each Parley node is a real OS process on a machine of a Ray cluster.

The orchestrator joins an existing cluster (`launch.ray.address`), reserves one placement-group
bundle per node (`launch.ray.strategy`, `launch.ray.pin`; see ray_config.py), and puts in each
bundle a small `NodeRunner` actor. The actor runs `python -m agent_node ...` (or the env server)
as a subprocess on its machine and answers pid / exit code / new log bytes / signal / gather.
Ray's own recovery is off (max_restarts=0, max_task_retries=0): Parley's fault schedule owns
restarts, and a node that dies is seen dead, not silently replaced.

What travels where (as the ssh backend does):
- shipped before start: a tar of resolved.yaml (run dir rewritten to the machine's
  `<workdir>/<run id>`) and, with authentication on, the run's key files and the node's own key;
- the log: pulled from the actor each time the runtime polls the node, appended to the local
  `nodes/<id>/log` (streamed, in poll-sized pieces);
- gathered after exit: the node's directory (metrics, checkpoints, replay) and its tb/ events.
Endpoints are advertised at the Ray machine's IP (the actor's `ray.util.get_node_ip_address()`),
so nodes must bind a non-loopback `network.bind_host` (the config refuses 127.0.0.1 with this
backend: bound there, a node is not listening at the address its peers are given, and they stay
"connecting" — what the first version of this backend did). The node runs with the Ray worker's
interpreter and at nice 0 where the actor may lower it (Ray starts workers at nice 15).
A cluster that cannot be joined, or cannot place the bundles within PLACEMENT_TIMEOUT_S, fails the
launch with BackendUnavailable (one line, `launch_failed` in events.jsonl).

A lost machine. A node whose runner cannot be reached (`RayNodeHandle.lost`) has lost its machine
as far as the run can tell; that machine's IP is taken for lost for the rest of the run. When the
restart policy starts such a node again and `launch.ray.shared_workdir` says every machine mounts
the workdir, a new runner is made on another live machine of the cluster (the one holding the
fewest of the run's nodes; Ray's node affinity, outside the placement group, whose bundle on the
lost machine Ray may be re-placing meanwhile) and the node restores its checkpoints from the
shared directory: `host_unreachable`, then `node_moved` naming both IPs. `prepare` proves the
directory is shared first (a file one runner writes must be read back by a runner on every other
machine). Without a shared workdir the node is not started again (dead on arrival, 255).
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import tarfile
import time
from pathlib import Path

try:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
except ImportError:  # the optional extra is not installed
    ray = None

from orchestrator.backends import BackendUnavailable, DeadOnArrival
from orchestrator.backends.ray_config import placement_bundles
from orchestrator.backends.shipping import extract_replacing, shipped_files
from protocols.run.settings import node_ids as run_node_ids

# Longest wait for the cluster to grant the placement group (calls to the runners: launch.ray.call_timeout_s).
PLACEMENT_TIMEOUT_S = 60.0
# Written by one runner into the run's directory and read back by the others (shared_workdir).
SHARED_PROOF_FILENAME = "shared-workdir-proof"


def require_ray() -> None:
    if ray is None:
        raise BackendUnavailable("launch.backend 'ray' needs Ray, which is not installed: pip install '.[ray]' (ray==2.60.0)")


class NodeRunnerImpl:
    """Runs one Parley node as a subprocess on the Ray machine it was placed on."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.run_dir = ""
        self.log_path = ""
        self.log_offset = 0

    def ip(self) -> str:
        return ray.util.get_node_ip_address()

    def write_text(self, path: str, text: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)

    def read_text(self, path: str) -> str:
        """The file's text; empty when it is not there (on this machine)."""
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return ""

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def start(self, run_dir: str, files: bytes, argv: list[str], env: dict[str, str], node_id: str) -> tuple[int, int]:
        """Unpack the node's files, start it; (its pid, the niceness it runs at)."""
        self.run_dir = run_dir
        node_dir = Path(run_dir) / "nodes" / node_id
        for sub in ("checkpoints", "replay"):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "tb").mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o077)
        try:
            with tarfile.open(fileobj=io.BytesIO(files)) as tar:
                extract_replacing(tar, Path(run_dir))
        finally:
            os.umask(old_umask)
        self.log_path = str(node_dir / "ray.log")
        # The interpreter of this Ray worker (the one `ray start` ran with on this machine), not
        # the orchestrator's path, which need not exist here.
        argv = [sys.executable, *argv[1:]]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=run_dir, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            # Ray runs its workers at nice 15 (its `worker_niceness`), and the node inherits it:
            # on a busy machine it then gets so little CPU that it misses its deadlines (seen:
            # agents needing more than launch.shutdown_timeout_s to exit). Back to normal
            # priority where allowed (root, or RLIMIT_NICE); else say so in the node's log.
            try:
                os.setpriority(os.PRIO_PROCESS, self.process.pid, 0)
            except PermissionError:
                log.write(
                    f"[parley ray backend] this node runs at nice {os.getpriority(os.PRIO_PROCESS, self.process.pid)} "
                    "(Ray's worker niceness) and may not lower it: start the Ray nodes with RAY_worker_niceness=0\n".encode()
                )
                log.flush()
        return self.process.pid, os.getpriority(os.PRIO_PROCESS, self.process.pid)

    def poll(self) -> tuple[int | None, bytes]:
        """The exit code (None while running) and the log bytes written since the last call."""
        code = self.process.poll()
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            new = log.read()
        self.log_offset += len(new)
        return code, new

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def gather(self, node_id: str) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            node_dir = Path(self.run_dir) / "nodes" / node_id
            for path in sorted(node_dir.rglob("*")):
                if path.is_file() and path.name != "ray.log":
                    tar.add(path, arcname=str(path.relative_to(self.run_dir)))
            tb = Path(self.run_dir) / "tb" / node_id
            if tb.exists():
                tar.add(tb, arcname=f"tb/{node_id}")
        return buffer.getvalue()


class RayNodeHandle:
    """pid/poll/wait (subprocess.Popen's meaning) of a node that runs inside a NodeRunner actor.

    `poll` never blocks the orchestrator's loop: it sends the actor a poll call, and reads the
    answer at a later `poll` once it is there. A call unanswered for `call_timeout_s` (the actor's
    machine is gone or cut off) or failed (Ray declared the actor dead) makes the node dead with
    code 255, the ssh backend's code for an unreachable host."""

    def __init__(self, actor, pid: int, log_file, call_timeout_s: float) -> None:
        self.actor = actor
        self.pid = pid
        self.log_file = log_file
        self.call_timeout_s = call_timeout_s
        self.returncode: int | None = None
        self.lost: str | None = None  # why the runner could not be reached, once it could not
        self._pending = None  # the poll call in flight
        self._pending_since = 0.0

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self._pending is None:
            self._pending, self._pending_since = self.actor.poll.remote(), time.monotonic()
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            if time.monotonic() - self._pending_since < self.call_timeout_s:
                return None
            return self._lose(f"no answer from the node runner within {self.call_timeout_s:g} s (launch.ray.call_timeout_s)")
        try:
            code, new = ray.get(self._pending)
        except ray.exceptions.RayError as error:
            return self._lose(str(error))
        finally:
            self._pending = None
        if new:
            self.log_file.write(new)
            self.log_file.flush()
        self.returncode = code
        return code

    def _lose(self, reason: str) -> int:
        """The actor (or its machine) is gone: the node is dead as far as the run can tell."""
        self.log_file.write(f"[parley ray backend] node runner lost: {reason}\n".encode())
        self.log_file.flush()
        self.lost, self._pending, self.returncode = reason, None, 255
        return 255

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("ray node", timeout)
            time.sleep(0.1)
        return self.returncode


class RayBackend:
    """Starts, signals and gathers nodes on a Ray cluster; the runtime's backend duck type."""

    def __init__(self, config, events) -> None:
        require_ray()
        assert config.runtime is not None, "the ray backend needs a resolved config"
        self.config = config
        self.events = events
        self.placement = config.launch.ray
        self.run_id = config.runtime.run_id
        self.local_run_dir = Path(config.runtime.run_dir)
        self.remote_run_dir = f"{self.placement.workdir.rstrip('/')}/{self.run_id}"
        self.actors: dict = {}
        self.ips: dict[str, str] = {}  # the machine each node runs on now
        self.lost_ips: set[str] = set()  # machines taken for lost (module docstring)
        self.group = None
        self.runner = None  # the NodeRunner actor class, once Ray is joined

    def prepare(self) -> None:
        node_ids = list(run_node_ids(self.config.agents.count))
        try:
            ray.init(address=self.placement.address, namespace=f"parley-{self.run_id}", log_to_driver=False)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as error:
            raise BackendUnavailable(f"launch.ray.address {self.placement.address!r}: cannot join the Ray cluster: {error}") from error
        bundles, strategy = placement_bundles(node_ids, self.placement)
        self.group = placement_group(bundles, strategy=strategy)
        try:
            ray.get(self.group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as error:
            raise BackendUnavailable(
                f"the Ray cluster did not grant the placement group within {PLACEMENT_TIMEOUT_S:.0f} s: bundles {bundles}, "
                f"strategy {strategy} (free resources: {ray.available_resources()})"
            ) from error
        self.runner = ray.remote(max_restarts=0, max_task_retries=0, num_cpus=0)(NodeRunnerImpl)
        for index, node_id in enumerate(node_ids):
            self.actors[node_id] = self.runner.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)
            ).remote()
        ips = ray.get([self.actors[n].ip.remote() for n in node_ids], timeout=PLACEMENT_TIMEOUT_S)
        self.ips = dict(zip(node_ids, ips))
        self.events.write("ray_placed", None, strategy=strategy, hosts=self.ips)
        if self.placement.shared_workdir:
            self._prove_shared_workdir()

    def _prove_shared_workdir(self) -> None:
        """One runner writes a random token into the run's directory; a runner on every other
        machine must read it back, or the launch fails naming `launch.ray.shared_workdir`."""
        one_per_machine = {ip: self.actors[node_id] for node_id, ip in reversed(list(self.ips.items()))}
        (writer_ip, writer), *readers = one_per_machine.items()
        proof, token = f"{self.remote_run_dir}/{SHARED_PROOF_FILENAME}", secrets.token_hex(16)
        timeout = self.placement.call_timeout_s
        ray.get(writer.write_text.remote(proof, token), timeout=timeout)
        for ip, reader in readers:
            if ray.get(reader.read_text.remote(proof), timeout=timeout) != token:
                raise BackendUnavailable(
                    f"launch.ray.shared_workdir: {self.placement.workdir!r} is not shared: the file written at {proof} on "
                    f"{writer_ip} is not there on {ip}; mount one file system at that path on every Ray machine, or set "
                    "shared_workdir: false"
                )
        ray.get(writer.remove.remote(proof), timeout=timeout)

    def close(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        if self.group is not None:
            remove_placement_group(self.group)
        ray.shutdown()

    def advertised_host(self, node_id: str) -> str:
        return self.ips[node_id]

    def start(self, node) -> None:
        launch = node.launch
        node_id = launch.node_id
        previous = node.process  # a restart: the handle of the run before
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        node.log_file = launch.log_path.open("ab")
        argv = list(launch.argv)
        argv[argv.index("--config") + 1] = f"{self.remote_run_dir}/resolved.yaml"
        env = {**launch.env, "PYTHONPATH": self.placement.project_root}
        if isinstance(previous, RayNodeHandle) and previous.lost is not None:
            self._lose(node_id, previous.lost)
        while True:
            if self.ips[node_id] in self.lost_ips and not self._move(node):
                node.process = DeadOnArrival()
                return
            actor = self.actors[node_id]
            try:
                pid, niceness = ray.get(
                    actor.start.remote(self.remote_run_dir, shipped_files(self.config.runtime, self.remote_run_dir, node_id),
                                       argv, env, node_id),
                    timeout=self.placement.call_timeout_s,
                )  # fmt: skip
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
                self._say(node, f"node runner lost: {error}")
                self._lose(node_id, str(error))
                # Best effort: a start still queued on a machine that comes back must not run
                # the node a second time beside the one started elsewhere.
                ray.kill(actor, no_restart=True)
        if niceness != 0:
            self.events.write("ray_niceness", node_id, niceness=niceness)
        node.process = RayNodeHandle(actor, pid, node.log_file, self.placement.call_timeout_s)

    def _lose(self, node_id: str, why: str) -> None:
        """`node_id`'s runner could not be reached: its machine is taken for lost."""
        ip = self.ips[node_id]
        if ip not in self.lost_ips:
            self.lost_ips.add(ip)
            self.events.write("host_unreachable", node_id, host=ip, error=why, lost=True)

    def _move(self, node) -> bool:
        """A new runner for `node` on a live machine that is not lost (module docstring); False
        when it may not move (no shared workdir) or no machine is left."""
        node_id = node.launch.node_id
        lost_ip = self.ips[node_id]
        if not self.placement.shared_workdir:
            self._say(node, f"its machine {lost_ip} is lost and launch.ray.shared_workdir is false: not started elsewhere")
            self.events.write("no_spare_host", node_id, lost_host=lost_ip, why="launch.ray.shared_workdir is false")
            return False
        load = {ip: list(self.ips.values()).count(ip) for ip in self.ips.values()}
        alive = sorted((n for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] not in self.lost_ips),
                       key=lambda n: load.get(n["NodeManagerAddress"], 0))
        if not alive:
            self._say(node, f"its machine {lost_ip} is lost and no other Ray machine is alive")
            self.events.write("no_spare_host", node_id, lost_host=lost_ip, why="no other Ray machine is alive")
            return False
        target = alive[0]
        actor = self.runner.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=target["NodeID"], soft=False)).remote()
        self.actors[node_id], self.ips[node_id] = actor, target["NodeManagerAddress"]
        self.events.write("node_moved", node_id, from_host=lost_ip, to_host=self.ips[node_id])
        return True

    @staticmethod
    def _say(node, line: str) -> None:
        node.log_file.write(f"[parley ray backend] {line}\n".encode())
        node.log_file.flush()

    def signal(self, node, signum: int) -> None:
        """Forwarded through the node's actor to the process on its machine."""
        if node.process is None or node.process.poll() is not None:
            return
        ray.get(node.process.actor.signal.remote(signum), timeout=self.placement.call_timeout_s)

    def finish(self, node) -> None:
        node_id = node.launch.node_id
        if node_id not in self.actors or not isinstance(node.process, RayNodeHandle):
            return  # never placed or never started: nothing on a Ray machine to gather
        if node.process.lost is not None:  # its machine is gone: asking again would wait out call_timeout_s
            self.events.write("gather_failed", node_id, error=f"node runner lost: {node.process.lost}")
            return
        try:
            archive = ray.get(self.actors[node_id].gather.remote(node_id), timeout=self.placement.call_timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
            self.events.write("gather_failed", node_id, error=str(error))
            return
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(self.local_run_dir, filter="data")
