"""`orchestrate up`, after the plan: launch the nodes, run rendezvous and control, supervise.

The orchestrator is a ROUTER socket and a loop. Its conversation with every node:

    1. launch every node of the plan (env server first) through the backend;
    2. rendezvous: collect `control.register` from each node (the endpoints it bound); once all
       have registered, send each its `control.directory` (env endpoint + its neighbours');
    3. collect `control.ready`; once all are ready, send `control.start`;
    4. supervise: `control.status` updates the live view; a child that exits on its own before
       the end is reported and fails the run; `control.run_complete` from the env server, Ctrl-C
       or SIGTERM start the shutdown;
    5. shutdown: `control.shutdown` to every node, wait up to `shutdown_timeout_s` for them to
       exit, then SIGTERM, then SIGKILL; every child is reaped before `run` returns.

Exit codes: 0 the run finished its budget and every node exited cleanly; 1 a runtime failure
(a node died, start-up timed out, a node exited non-zero); 130 interrupted by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO

from orchestrator.config import RunConfig
from orchestrator.plan import LaunchPlan, NodeLaunch
from orchestrator.rundir import EventLog
from orchestrator.status import StatusView
from protocols import messages as m
from protocols.auth import load_node_keys
from protocols.settings import ORCHESTRATOR_ID
from protocols.topology import build_topology
from protocols.transport import Hub, SocketOptions

EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class NodeRecord:
    launch: NodeLaunch
    process: subprocess.Popen | None = None
    log_file: IO | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    registered: bool = False
    ready: bool = False
    said_goodbye: bool = False
    exit_code: int | None = None
    last_status: m.Status | None = None
    last_heard: float = 0.0


class LocalBackend:
    """Runs each node as a child process of the orchestrator on this machine."""

    def start(self, node: NodeRecord) -> None:
        node.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        node.log_file = node.launch.log_path.open("ab")
        node.process = subprocess.Popen(
            node.launch.argv,
            env={**os.environ, **node.launch.env},
            stdin=subprocess.DEVNULL,
            stdout=node.log_file,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C in the terminal reaches the orchestrator only,
            # which then shuts the nodes down in order instead of all dying at once.
            start_new_session=True,
        )

    def signal(self, node: NodeRecord, signum: int) -> None:
        if node.process is not None and node.process.poll() is None:
            try:
                os.killpg(node.process.pid, signum)
            except ProcessLookupError:
                pass


class Orchestrator:
    def __init__(self, plan: LaunchPlan, config: RunConfig) -> None:
        self.config = config
        self.events = EventLog(plan.run_dir / "events.jsonl")
        self.backend = LocalBackend()
        self.hub = Hub(
            sender=ORCHESTRATOR_ID,
            run_id=plan.run_id,
            options=SocketOptions(config.network.zmq_heartbeat_ivl_s, config.network.zmq_heartbeat_timeout_s),
            keys=None if config.runtime is None or config.runtime.keys_dir is None
            else load_node_keys(config.runtime.keys_dir, ORCHESTRATOR_ID),
            limits=config.protocols.limits,
        )
        self.control = self.hub.bind_router(plan.control_endpoint, name="control", advertise_host=config.network.advertised_host())
        # With tcp the plan asks for any free port; the nodes must be told the one we got.
        self.plan = plan = plan.with_control_endpoint(self.control.endpoint)
        self.nodes = {launch.node_id: NodeRecord(launch) for launch in plan.nodes}
        agent_ids = [n.node_id for n in plan.nodes if n.role == "agent"]
        self.topology = build_topology(config.topology, agent_ids)
        self.interrupted: str | None = None
        self.run_complete = False
        self.failure: str | None = None
        self.started = False
        self.status_view = StatusView(self.nodes, live=config.launch.live_view, run_name=config.run.name,
                                      total_steps=config.run.steps)

    # ------------------------------------------------------------------ top level

    def run(self) -> int:
        (self.plan.run_dir / "orchestrator.pid").write_text(str(os.getpid()))
        previous_handlers = self._install_signal_handlers()
        self.events.write("run_started", None, run_id=self.plan.run_id, run_dir=str(self.plan.run_dir))
        try:
            # The view closes after the shutdown, so its last table shows every exit code.
            with self.status_view:
                try:
                    self._launch_all()
                    self._supervise()
                finally:
                    self._shutdown_all()
        finally:
            self._restore_signal_handlers(previous_handlers)
            self.hub.close()
        code = self._exit_code()
        self.events.write("run_finished", None, exit_code=code, reason=self.failure or self.interrupted or "budget spent")
        return code

    def _exit_code(self) -> int:
        if self.failure:
            return EXIT_FAILURE
        if self.interrupted:
            return EXIT_INTERRUPTED
        if any(node.exit_code != 0 for node in self.nodes.values()):
            return EXIT_FAILURE
        return EXIT_OK

    # ------------------------------------------------------------------ launch and supervise

    def _launch_all(self) -> None:
        # The env server first: agents connect to it as soon as they learn its endpoint.
        for node in sorted(self.nodes.values(), key=lambda n: n.launch.role != "env_server"):
            self.backend.start(node)
            node.last_heard = time.monotonic()
            self.events.write("launched", node.launch.node_id, pid=node.process.pid, role=node.launch.role,
                              seed=node.launch.seed, argv=node.launch.argv)

    def _supervise(self) -> None:
        startup_timeout_s = self.config.protocols.control.startup_timeout_s
        startup_deadline = time.monotonic() + startup_timeout_s
        while not (self.run_complete or self.failure or self.interrupted):
            if self.hub.wait(self.config.launch.status_every_s / 2):
                for envelope in self.control.recv_all():
                    self._handle(envelope)
            self._reap_exited()
            if self.nodes and all(n.exit_code is not None for n in self.nodes.values() if n.launch.role == "agent"):
                self.run_complete = True  # every agent finished; nothing left to supervise
            if not self.started and time.monotonic() > startup_deadline:
                missing = [n for n, r in self.nodes.items() if not r.ready]
                self.failure = f"start-up timed out after {startup_timeout_s:.0f} s; not ready: {missing}"
                self.events.write("startup_timeout", None, not_ready=missing)
            self.status_view.refresh()

    def _handle(self, envelope) -> None:
        node_id = envelope.identities[0].decode(errors="replace")
        node = self.nodes.get(node_id)
        if node is None:
            self.events.write("unknown_node", node_id, msg_type=envelope.msg_type)
            return
        node.last_heard = time.monotonic()
        message = envelope.message
        if isinstance(message, m.Register):
            self.on_register(node, message)
        elif isinstance(message, m.Ready):
            self.on_ready(node)
        elif isinstance(message, m.Status):
            node.last_status = message
        elif isinstance(message, m.RunComplete):
            self.events.write("run_complete", node_id, steps=message.steps)
            self.run_complete = True
        elif isinstance(message, m.Goodbye):
            node.said_goodbye = True
            self.events.write("goodbye", node_id, reason=message.reason)
        else:
            self.events.write("unexpected_message", node_id, msg_type=envelope.msg_type)

    def on_register(self, node: NodeRecord, message: m.Register) -> None:
        node.endpoints = dict(message.endpoints)
        node.registered = True
        self.events.write("registered", node.launch.node_id, endpoints=node.endpoints, pid=message.pid, host=message.host)
        if all(n.registered for n in self.nodes.values()):
            self._send_directories()

    def _send_directories(self) -> None:
        env_endpoint = next(n.endpoints["env"] for n in self.nodes.values() if n.launch.role == "env_server")
        agent_ids = list(self.topology.nodes)
        for node_id, node in self.nodes.items():
            neighbours = {}
            if node.launch.role == "agent":
                index = agent_ids.index(node_id)
                neighbours = {agent_ids[j]: self.nodes[agent_ids[j]].endpoints["peer"] for j in self.topology.neighbours(index)}
            directory = m.Directory(env_endpoint=env_endpoint, neighbours=neighbours, num_agents=len(agent_ids))
            self.control.send(directory, to=node_id)
        self.events.write("directory_sent", None, edges=[list(e) for e in self.topology.edge_list()])

    def on_ready(self, node: NodeRecord) -> None:
        node.ready = True
        self.events.write("ready", node.launch.node_id)
        if all(n.ready for n in self.nodes.values()) and not self.started:
            self.started = True
            for node_id in self.nodes:
                self.control.send(m.Start(), to=node_id)
            self.events.write("started", None)

    def _reap_exited(self) -> None:
        for node_id, node in self.nodes.items():
            if node.exit_code is None and node.process is not None and (code := node.process.poll()) is not None:
                node.exit_code = code
                # An agent that saw the end of the budget drains, says goodbye and exits 0.
                expected = code == 0 and node.said_goodbye
                self.events.write("exited", node_id, code=code, expected=expected)
                if not expected:
                    self.failure = f"node {node_id} exited unexpectedly with code {code} (see nodes/{node_id}/log)"

    # ------------------------------------------------------------------ shutdown

    def _shutdown_all(self) -> None:
        reason = self.failure or self.interrupted or "run budget spent"
        for node_id, node in self.nodes.items():
            if node.process is not None and node.process.poll() is None:
                self.control.send(m.Shutdown(reason=reason), to=node_id)
        self.events.write("shutdown", None, reason=reason)
        deadline = time.monotonic() + self.config.launch.shutdown_timeout_s
        self._wait_for_exits(deadline)
        for signum, grace_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = [n for n in self.nodes.values() if n.process is not None and n.process.poll() is None]
            if not alive:
                break
            for node in alive:
                self.events.write("signalled", node.launch.node_id, signal=signal.Signals(signum).name)
                self.backend.signal(node, signum)
            self._wait_for_exits(time.monotonic() + grace_s)
        for node_id, node in self.nodes.items():
            if node.process is not None:
                code = node.process.wait()
                if node.exit_code is None:
                    node.exit_code = code
                    self.events.write("exited", node_id, code=code, expected=True)
            if node.log_file is not None:
                node.log_file.close()

    def _wait_for_exits(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if all(n.process is None or n.process.poll() is not None for n in self.nodes.values()):
                return
            # Goodbyes arrive meanwhile; drain them so they are logged.
            if self.hub.wait(0.05):
                for envelope in self.control.recv_all():
                    self._handle(envelope)

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self):
        def on_signal(signum, frame):
            name = signal.Signals(signum).name
            if not self.interrupted:
                self.interrupted = f"interrupted by {name}"
                self.events.write("interrupted", None, signal=name)

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(plan: LaunchPlan, config: RunConfig) -> int:
    orchestrator = Orchestrator(plan, config)
    code = orchestrator.run()
    print(f"run directory: {plan.run_dir}", file=sys.stderr)
    return code
