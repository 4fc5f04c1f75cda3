"""`orchestrate up`, after the plan: launch the nodes, run rendezvous and control, supervise.

The orchestrator is a ROUTER socket and a loop. Its conversation with every node:

    1. launch every node of the plan (env server first) through the backend: forked from the
       zygote (`launch.start_method: fork_server`) or spawned (orchestrator/launcher.py); either
       way each node is our child, its pid in `nodes/<id>/pid`;
    2. rendezvous: collect `control.register` from each node (the endpoints it bound); once all
       have registered, send each its `control.directory` (env endpoint + its neighbours');
    3. collect `control.ready`; once all are ready, send `control.start`; the fault schedule's
       clock starts (orchestrator/faults.py);
    4. supervise: `control.status` updates the live view; a running node silent for three
       status periods is reported `paused` (stopped, state T) or `unresponsive`, and `resumed`
       when heard again; scheduled faults are executed when due (`at_s` after the start, or
       `at_step` when the env server, told those steps after the start, holds that step and
       says `control.step_held`: between that step and the next; env_server/step_hold.py) and
       logged as `fault` events
       (signals for kill/pause/resume/restart; control messages for partition/heal/link, which
       the nodes apply to their emulated links, answer with `control.fault_applied` (a
       `fault_applied` event once all have) and which are replayed to a restarted node; a step
       held for its faults is released once every node applied them, or after
       FAULT_APPLIED_TIMEOUT_S with a `fault_not_applied` event naming who did not);
       a child that exits on its own before the end (not a scheduled kill) fails the run unless
       the restart policy brings it back (agents, the learner node of a centralized run, which
       restores its checkpoint, and the env server when `faults.restart.roles` lists it: see
       "An env-server restart" below), and so does a scheduled kill of the env server that no
       restart covers (nothing can step without it);
       `control.run_complete` from the env server, Ctrl-C or SIGTERM start the shutdown;
    5. shutdown: `control.shutdown` to every registered node — a node that has not registered
       yet may have no connected control socket, so it gets SIGTERM instead — wait up to
       `shutdown_timeout_s` for them to exit, then SIGTERM, then SIGKILL; every child is reaped
       before `run` returns. `exited` events carry the time the exit was seen on SIGCHLD, not
       the (later) time the loop reaped it.

After the run (its `run_finished` event), `report/` in the run directory gets the report's
summary and plot (orchestrator/report.py; the summary only after Ctrl-C); a failure there is a
`report_failed` event, never a different exit code.

An env-server restart (a scheduled `restart` of it, or `faults.restart` with `env_server` in
its roles, after the run started): when its exit is reaped, every running agent gets
`control.env_restarting` — it stops counting the server's silence, ends its episodes in flight
and drops its connection — and an `env_server_restarting` event is written; the server is
started again after the backoff, resumes the run from its resume point (env_server/resume.py),
and says at which step in its `control.ready`; then every running agent gets `control.env_back`
with the endpoint, joins it again and resets, and an `env_server_resumed` event records the
step and the downtime. The agents are told rather than left to notice: an agent cannot tell a
restarting server from a dead one, and the orchestrator, which restarts it, can.

A restarted node over tcp binds a new port, on a new host too when the ssh backend moved it off a
lost one to a spare (backends/ssh.py): when a restarted agent registers at a peer endpoint other
than its last, each of its running neighbours gets `control.neighbour_moved` and sends to it there
from then on (a neighbour that was itself starting again is told once it is ready); a restarted
env server's endpoint reaches the agents in `control.env_back`. The `launched` and `restarted`
events of a remote backend name the host.

A node whose saved state is damaged (protocols/storage/durable_state.py) either falls back to an older
generation, which its `control.ready` says (a `state_damaged` event, a line on the terminal at
the end, a line in the report), or exits with `EXIT_DAMAGED_STATE`, which no restart policy
restarts: it would read the same files again; with `run.on_corrupt_state: start_fresh` it starts
from scratch instead and says so the same way (and in the report's headline).

Exit codes: 0 the run finished its budget and every node exited cleanly (or by a scheduled
kill); 1 a runtime failure (a node died, start-up timed out, a node exited non-zero); 130
interrupted by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from agent_node.registry import extra_nodes
from orchestrator.backends import BackendUnavailable
from orchestrator.config import RestartPolicy, RunConfig
from orchestrator.fault_injection import FaultInjector
from orchestrator.launcher import (
    NODE_PID_FILENAME,
    ORCHESTRATOR_PID_ENV,
    ForkServerLauncher,
    SubprocessLauncher,
    ZygoteError,
    preload_modules,
    process_state,
    write_pid_file,
)
from orchestrator.node_record import NodeRecord, mark_silent, note_exit_times
from orchestrator.plan import LaunchPlan
from orchestrator.rundir import EventLog, code_identity, explain_failure
from orchestrator.status import StatusView
from protocols.codec import messages as m
from protocols.net.auth import load_node_keys
from protocols.storage.durable_state import EXIT_DAMAGED_STATE
from protocols.run.settings import ORCHESTRATOR_ID
from protocols.net.shm_lockstep import reap_stale_segments
from protocols.engines.topology import build_topology
from protocols.net.transport import Hub, SocketOptions

EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130


class LocalBackend:
    """Runs each node as a child process of the orchestrator on this machine."""

    def __init__(self, launcher: SubprocessLauncher | ForkServerLauncher) -> None:
        self.launcher = launcher

    def prepare(self) -> None:
        self.launcher.prepare()

    def start(self, node: NodeRecord) -> None:
        node.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        node.log_file = node.launch.log_path.open("ab")
        node.process = self.launcher.start(node.launch, {ORCHESTRATOR_PID_ENV: str(os.getpid())}, node.log_file)
        write_pid_file(node.launch.node_dir / NODE_PID_FILENAME, node.process.pid)

    def signal(self, node: NodeRecord, signum: int) -> None:
        if node.process is not None and node.process.poll() is None:
            try:
                os.killpg(node.process.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.launcher.close()


def make_launcher(plan: LaunchPlan, config: RunConfig) -> SubprocessLauncher | ForkServerLauncher:
    if config.launch.start_method == "spawn":
        return SubprocessLauncher()
    world_model = config.agents.world_model
    preload = preload_modules(
        {node.role for node in plan.nodes},
        learner_kind=config.agents.learner.kind,
        world_model_kind=None if world_model is None else world_model.kind,
        env_name=config.env.name,
        capability_modules=tuple(module for node in extra_nodes(config) for module in node.preload),
        compiled_updates=bool(getattr(config.agents.learner, "numpy_updates", False)),
    )
    return ForkServerLauncher(plan.run_dir, preload, ready_timeout_s=config.protocols.control.startup_timeout_s)


def make_backend(plan: LaunchPlan, config: RunConfig, events: EventLog):
    if config.launch.backend == "ssh":
        from orchestrator.backends.ssh import SshBackend

        return SshBackend(config.runtime, config.launch.hosts, events)
    if config.launch.backend == "ray":
        from orchestrator.backends.ray import RayBackend

        return RayBackend(config, events)
    return LocalBackend(make_launcher(plan, config))


def with_host(endpoint: str, host: str) -> str:
    """`tcp://<any>:<port>` with its host replaced; other endpoints unchanged."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    port = endpoint.rsplit(":", 1)[1]
    return f"tcp://{host}:{port}"


class Orchestrator:
    def __init__(self, plan: LaunchPlan, config: RunConfig) -> None:
        self.config = config
        self.events = EventLog(plan.run_dir / "events.jsonl")
        self.backend = make_backend(plan, config, self.events)
        if isinstance(self.backend, LocalBackend):
            self.backend.launcher.should_stop = lambda: self.interrupted is not None
        self.hub = Hub(
            sender=ORCHESTRATOR_ID,
            run_id=plan.run_id,
            options=SocketOptions(config.network.zmq_heartbeat_ivl_s, config.network.zmq_heartbeat_timeout_s),
            keys=None if config.runtime is None or config.runtime.keys_dir is None
            else load_node_keys(config.runtime.keys_dir, ORCHESTRATOR_ID),
            limits=config.protocols.limits,
        )
        control_host = config.launch.control_host or config.network.advertised_host()
        self.control = self.hub.bind_router(plan.control_endpoint, name="control", advertise_host=control_host)
        # With tcp the plan asks for any free port; the nodes must be told the one we got.
        self.plan = plan = plan.with_control_endpoint(self.control.endpoint)
        self.nodes = {launch.node_id: NodeRecord(launch) for launch in plan.nodes}
        agent_ids = [n.node_id for n in plan.nodes if n.role == "agent"]
        self.topology = build_topology(config.topology, agent_ids)
        self.interrupted: str | None = None
        self.interrupted_by: tuple[str, float] | None = None  # the signal's name and when it came
        self.interruption_logged = False
        self.run_complete = False
        self.failure: str | None = None
        self.state_damaged: list[tuple[str, str, bool]] = []  # (node, what, started fresh) from `control.ready`
        self.started = False
        self.shutting_down = False
        self.faults = FaultInjector(config, plan.run_dir, self.nodes, self.backend, self.control, self.events)
        # While the env server is being restarted: when it exited (unix time), else None.
        self.env_server_down_since: float | None = None
        self.directories_sent = False
        self.status_view = StatusView(self.nodes, live=config.launch.live_view, run_name=config.run.name,
                                      total_steps=config.run.steps)

    # ------------------------------------------------------------------ top level

    def run(self) -> int:
        (self.plan.run_dir / "orchestrator.pid").write_text(str(os.getpid()))
        previous_handlers = self._install_signal_handlers()
        self.events.write("run_started", None, run_id=self.plan.run_id, run_dir=str(self.plan.run_dir),
                          start_method=self.config.launch.start_method, code=code_identity())
        try:
            # The view closes after the shutdown, so its last table shows every exit code.
            with self.status_view:
                try:
                    self._launch_all()
                    self._supervise()
                except (ZygoteError, BackendUnavailable) as error:
                    if not self.interrupted:
                        self.failure = f"cannot launch the nodes: {error}"
                        self.events.write("launch_failed", None, error=str(error))
                finally:
                    self._shutdown_all()
                    self.backend.close()
                    # Shared-memory segments an env server killed between a welcome and the
                    # agent's mapping left in this host's /dev/shm (protocols/net/shm_lockstep.py).
                    reap_stale_segments(self.plan.run_id)
        finally:
            self._restore_signal_handlers(previous_handlers)
            self.hub.close()
        unfired = self.faults.clock.pending + self.faults.clock.pending_steps
        if unfired:  # the run ended first (or never started): say which faults never happened
            self.events.write("faults_not_fired", None, positions=[f.position for f in unfired],
                              when=[f.when for f in unfired], last_step=self.faults.env_step())
        self._log_interruption()  # a signal that came during the shutdown itself
        code = self._exit_code()
        self.events.write("run_finished", None, exit_code=code, reason=self.failure or self.interrupted or "budget spent")
        return code

    def _exit_code(self) -> int:
        if self.failure:
            return EXIT_FAILURE
        if self.interrupted:
            return EXIT_INTERRUPTED
        if any(node.exit_code != 0 and not node.killed_by_schedule for node in self.nodes.values()):
            return EXIT_FAILURE
        return EXIT_OK

    # ------------------------------------------------------------------ launch and supervise

    def _launch_all(self) -> None:
        launcher = getattr(self.backend, "launcher", None)  # the local backend's; none over ssh
        self.backend.prepare()
        if isinstance(launcher, ForkServerLauncher):
            report = launcher.preload_report
            self.events.write("zygote_ready", None, pid=launcher.process.pid, seconds=round(report.get("seconds", 0.0), 3),
                              preloaded=report.get("preloaded"), failed=report.get("failed"))
        # The env server first: agents connect to it as soon as they learn its endpoint.
        for node in sorted(self.nodes.values(), key=lambda n: n.launch.role != "env_server"):
            if self.interrupted:
                return  # Ctrl-C during the launch: start no more
            self.backend.start(node)
            node.last_heard = time.monotonic()
            self.events.write("launched", node.launch.node_id, pid=node.process.pid, role=node.launch.role,
                              seed=node.launch.seed, argv=node.launch.argv, start_method=launcher.name if launcher else self.config.launch.backend,
                              **self._placed_on(node))

    def _supervise(self) -> None:
        startup_timeout_s = self.config.protocols.control.startup_timeout_s
        startup_deadline = time.monotonic() + startup_timeout_s
        while not (self.run_complete or self.failure or self.interrupted):
            wait_s = self.config.launch.status_every_s / 2
            next_fault_s = self.faults.seconds_to_next()  # a fault due, or a held step to release
            if next_fault_s is not None:
                wait_s = min(wait_s, next_fault_s)
            restarts_at = [n.restart_at for n in self.nodes.values() if n.restart_at is not None]
            if restarts_at:  # a restart's backoff ends: start it then, not at the next status tick
                wait_s = max(0.0, min(wait_s, min(restarts_at) - time.monotonic()))
            if self.hub.wait(wait_s):
                for envelope in self.control.recv_all():
                    self._handle(envelope)
            self.faults.fire_due()
            self._reap_exited()
            self._restart_due()
            if self.events.failed is not None and not self.failure:
                self.failure = self.events.failed.strerror
            if self.started:  # nodes report every status_every_s once running: three missed is a silence
                mark_silent(self.nodes, 3 * self.config.protocols.control.status_every_s, self.events)
            if self.nodes and all(
                n.exit_code is not None and n.restart_at is None for n in self.nodes.values() if n.launch.role == "agent"
            ):
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
        if node.silent is not None:
            self.events.write("resumed", node_id, was=node.silent)
            node.silent = None
        message = envelope.message
        if isinstance(message, m.Register):
            self.on_register(node, message)
        elif isinstance(message, m.Ready):
            if message.state_damaged:
                # A node fell back to an older generation of its saved state, or found none and
                # started from scratch (run.on_corrupt_state: start_fresh; protocols/storage/durable_state.py).
                self.state_damaged.append((node_id, message.state_damaged, message.state_started_fresh))
                self.events.write("state_damaged", node_id, what=message.state_damaged,
                                  started_fresh=message.state_started_fresh)
            self.on_ready(node, message.resumed_step)
        elif isinstance(message, m.Status):
            node.last_status = message
            causes = {key.split("/", 1)[1] for key in message.extra if key.startswith("reproducibility/")}
            if new_causes := causes - node.reproducibility_broken:
                node.reproducibility_broken |= new_causes
                self.events.write("reproducibility_broken", node_id, causes=sorted(new_causes), step=message.step)
        elif isinstance(message, m.StepHeld):
            self.faults.on_step_held(node, message.step)
        elif isinstance(message, m.FaultApplied):
            self.faults.on_fault_applied(node, message.position)
        elif isinstance(message, m.RunComplete):
            self.events.write("run_complete", node_id, steps=message.steps)
            self.run_complete = True
        elif isinstance(message, m.Goodbye):
            node.said_goodbye = True
            node.goodbye_reason = message.reason
            self.events.write("goodbye", node_id, reason=message.reason)
        else:
            self.events.write("unexpected_message", node_id, msg_type=envelope.msg_type)

    def on_register(self, node: NodeRecord, message: m.Register) -> None:
        previous_endpoints = node.endpoints
        node.endpoints = dict(message.endpoints)
        advertised_host = getattr(self.backend, "advertised_host", None)
        if advertised_host is not None:
            # On another host the node binds e.g. 0.0.0.0; peers reach it at its host's address.
            node.endpoints = {name: with_host(endpoint, advertised_host(node.launch.node_id)) for name, endpoint in node.endpoints.items()}
        node.registered = True
        self.events.write("registered", node.launch.node_id, endpoints=node.endpoints, pid=message.pid, host=message.host)
        if self.shutting_down:
            self.control.send(m.Shutdown(reason="the run is shutting down"), to=node.launch.node_id)
        elif self.directories_sent:
            # A restarted node needs its own directory. Over ipc the others know it at the same
            # endpoint; over tcp it got a new port (or a new host): its neighbours are told.
            self.control.send(self._directory_for(node), to=node.launch.node_id)
            if node.launch.role == "agent" and previous_endpoints.get("peer") != node.endpoints["peer"]:
                self._tell_neighbours_moved(node)
        elif all(n.registered for n in self.nodes.values()):
            self._send_directories()

    def _tell_neighbours_moved(self, node: NodeRecord) -> None:
        """`control.neighbour_moved` to each running neighbour of a restarted agent. One that is
        itself starting again learns the new endpoint from its directory instead."""
        agent_ids = list(self.topology.nodes)
        told = []
        for j in self.topology.neighbours(agent_ids.index(node.launch.node_id)):
            neighbour = self.nodes[agent_ids[j]]
            if neighbour.ready and neighbour.exit_code is None:
                self._send_neighbour_moved(neighbour, node)
                told.append(agent_ids[j])
        self.events.write("neighbours_told", node.launch.node_id, endpoint=node.endpoints["peer"], told=told)

    def _send_neighbour_moved(self, to: NodeRecord, moved: NodeRecord) -> None:
        moved_id, endpoint = moved.launch.node_id, moved.endpoints["peer"]
        self.control.send(m.NeighbourMoved(neighbour=moved_id, endpoint=endpoint), to=to.launch.node_id)
        to.neighbour_endpoints[moved_id] = endpoint

    def _send_directories(self) -> None:
        for node_id, node in self.nodes.items():
            self.control.send(self._directory_for(node), to=node_id)
        self.directories_sent = True
        self.events.write("directory_sent", None, edges=[list(e) for e in self.topology.edge_list()])

    def _directory_for(self, node: NodeRecord) -> m.Directory:
        env_endpoint = next(n.endpoints["env"] for n in self.nodes.values() if n.launch.role == "env_server")
        # The nodes the run's capabilities added (a learner node, a goal supervisor), by service.
        services = {extra.service: self.nodes[extra.node_id].endpoints[extra.service] for extra in extra_nodes(self.config)}
        agent_ids = list(self.topology.nodes)
        neighbours = {}
        if node.launch.role == "agent":
            index = agent_ids.index(node.launch.node_id)
            neighbours = {agent_ids[j]: self.nodes[agent_ids[j]].endpoints["peer"] for j in self.topology.neighbours(index)}
        node.neighbour_endpoints = dict(neighbours)
        return m.Directory(env_endpoint=env_endpoint, neighbours=neighbours, num_agents=len(agent_ids), services=services)

    def on_ready(self, node: NodeRecord, resumed_step: int | None = None) -> None:
        node.ready = True
        self.events.write("ready", node.launch.node_id)
        if self.started:
            self.control.send(m.Start(), to=node.launch.node_id)  # a restarted node rejoins the running run
            # Its link table is fresh from the config: replay the run-time network faults so far,
            # after the start (before it, the node's start-up waits drop other control messages).
            for message in self.faults.network_faults:
                self.control.send(message, to=node.launch.node_id)
            self.events.write("rejoined", node.launch.node_id, restarts=node.restarts,
                              network_faults_replayed=len(self.faults.network_faults))
            # A neighbour that moved (tcp) between this node's directory and now: its start-up
            # waits dropped the news, so it is told again.
            for neighbour_id, endpoint in list(node.neighbour_endpoints.items()):
                if self.nodes[neighbour_id].endpoints.get("peer", endpoint) != endpoint:
                    self._send_neighbour_moved(node, self.nodes[neighbour_id])
            if node.launch.role == "env_server":
                self.faults.hold_at_step_faults(node)
                self._env_server_back(node, resumed_step)
            elif self.env_server_down_since is not None and node.launch.role == "agent":
                # An agent restarted while the env server is down: it waits with the others.
                self.control.send(self._env_restarting_message(), to=node.launch.node_id)
            return
        if all(n.ready for n in self.nodes.values()) and not self.started:
            self.started = True
            for node_id in self.nodes:
                self.control.send(m.Start(), to=node_id)
                # A resumed run: the network faults its earlier orchestrators fired, as a
                # restarted node gets them (after the start, which its start-up waits for).
                for message in self.faults.network_faults:
                    self.control.send(message, to=node_id)
            self.events.write("started", None, network_faults_replayed=len(self.faults.network_faults))
            # The fault clock starts after the `started` event is stamped, so no fault reads as
            # earlier than its at_s against that event (sending Start to every node takes time).
            self.faults.clock.start(time.monotonic())
            for node in self.nodes.values():
                if node.launch.role == "env_server":
                    self.faults.hold_at_step_faults(node)

    def _reap_exited(self) -> None:
        for node_id, node in self.nodes.items():
            if node.exit_code is None and node.process is not None and (code := node.process.poll()) is not None:
                node.exit_code = code
                # An agent that saw the end of the budget drains, says goodbye and exits 0.
                expected = (code == 0 and (node.said_goodbye or self.shutting_down)) or node.killed_by_schedule
                exited_at = node.exited_at or time.time()
                self.events.write("exited", node_id, at=exited_at, code=code, expected=expected,
                                  scheduled_kill=node.killed_by_schedule)
                if not self.shutting_down and restart_wanted(node, code, self.config.faults.restart, run_started=self.started,
                                                              run_complete=self.run_complete):
                    delay_s = 0.0 if node.restart_requested else self.config.faults.restart.backoff_s * 2**node.restarts
                    node.restart_at = time.monotonic() + delay_s
                    self.events.write("restart_scheduled", node_id, in_s=delay_s, restarts=node.restarts,
                                      policy=self.config.faults.restart.policy, requested=node.restart_requested)
                    if node.launch.role == "env_server" and self.env_server_down_since is None:
                        self._env_server_restarting(node)
                    continue
                if not expected and not self.shutting_down and not self.failure:
                    said = failure_said(node)
                    self.failure = f"node {node_id} exited unexpectedly with code {code}" + (
                        f": {said}" if said else "") + f" (see nodes/{node_id}/log)"
                    if node.launch.role == "learner":
                        self.failure += "; the agents train centrally and cannot go on without their learner node"
                elif node.launch.role == "env_server" and node.killed_by_fault is not None and not self.shutting_down and not self.failure:
                    # A scheduled kill of the env server that no restart covers: the agents cannot
                    # step without it, so the run ends here, as a failure with the reason.
                    self.failure = (f"the env server ({node_id}) was killed by the fault schedule "
                                    f"(faults.schedule.{node.killed_by_fault.position}, {node.killed_by_fault.setting}); "
                                    "the agents cannot step without it, so the run ends (no restart covers it: "
                                    "list env_server in faults.restart.roles, or schedule a restart)")
                    self.events.write("env_server_lost", node_id, reason=self.failure)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for node_id, node in self.nodes.items():
            if node.restart_at is None or node.restart_at > now or self.shutting_down:
                continue
            node.start_again()
            self.backend.start(node)
            node.last_heard = time.monotonic()
            self.events.write("restarted", node_id, pid=node.process.pid, restarts=node.restarts, **self._placed_on(node))

    def _placed_on(self, node: NodeRecord) -> dict[str, str]:
        """`{"host": address}` for a node another machine runs (ssh, ray): a restart may have
        moved it off a lost host (backends/ssh.py). Empty for the local backend."""
        advertised_host = getattr(self.backend, "advertised_host", None)
        return {} if advertised_host is None else {"host": advertised_host(node.launch.node_id)}

    # ------------------------------------------------------------------ an env-server restart

    def _running_agents(self) -> list[str]:
        return [node_id for node_id, node in self.nodes.items()
                if node.launch.role == "agent" and node.ready and node.exit_code is None]

    def _env_restarting_message(self) -> m.EnvServerRestarting:
        return m.EnvServerRestarting(restarts=next(n.restarts for n in self.nodes.values() if n.launch.role == "env_server"))

    def _env_server_restarting(self, node: NodeRecord) -> None:
        """The env server exited and will be restarted: the agents wait for it (see the module doc)."""
        # When its exit was seen (on SIGCHLD when that came first, else now, on reaping).
        self.env_server_down_since = node.exited_at or time.time()
        agents = self._running_agents()
        for agent in agents:
            self.control.send(self._env_restarting_message(), to=agent)
        self.events.write("env_server_restarting", node.launch.node_id, restarts=node.restarts, agents_told=agents)

    def _env_server_back(self, node: NodeRecord, resumed_step: int | None) -> None:
        """The restarted env server is ready: every running agent joins it again."""
        down_since, self.env_server_down_since = self.env_server_down_since, None
        agents = self._running_agents()
        # No resume point (it died before its first step was saved): it starts the run from step 0.
        # Agents down for good (a scheduled kill that no restart follows) will not join it: say so,
        # or it would wait env.join_deadline_s for them before its first step.
        gone = [n for n in self.nodes.values() if n.launch.role == "agent" and n.exit_code is not None and n.restart_at is None]
        # The event first: its time then precedes every step of the resumed server, which a reader
        # of the metrics may split on (the agents step as soon as they are told, below).
        self.events.write("env_server_resumed", node.launch.node_id, step=resumed_step, restarts=node.restarts,
                          downtime_s=None if down_since is None else round(time.time() - down_since, 3),
                          agents_told=agents, agents_gone=[n.launch.node_id for n in gone])
        back = m.EnvServerBack(env_endpoint=node.endpoints["env"], step=resumed_step or 0)
        for agent in agents:
            self.control.send(back, to=agent)
        if gone:
            self.control.send(m.AgentsGone(indices=[n.launch.index for n in gone]), to=node.launch.node_id)

    # ------------------------------------------------------------------ shutdown

    def _log_interruption(self) -> None:
        """The `interrupted` event, stamped when the signal came, written once from the main
        thread (see on_signal)."""
        if self.interrupted_by is not None and not self.interruption_logged:
            self.interruption_logged = True
            name, at = self.interrupted_by
            self.events.write("interrupted", None, at=at, signal=name)

    def _shutdown_all(self) -> None:
        self._log_interruption()
        reason = self.failure or self.interrupted or "run budget spent"
        self.shutting_down = True
        self.events.write("shutdown", None, reason=reason)
        for node_id, node in self.nodes.items():
            if node.process is None or node.process.poll() is not None:
                continue
            if node.paused_by_schedule:
                self.backend.signal(node, signal.SIGCONT)  # a stopped node cannot act on the shutdown
                node.paused_by_schedule = False
            if node.registered:
                self.control.send(m.Shutdown(reason=reason), to=node_id)
            if not (self.started and node.ready):
                # Still starting: its control socket may not be connected yet (a message would
                # wait in our queue), and its start-up waits (for the env server's welcome, say)
                # do not read the control channel. A signal reaches it now; nodes stop on SIGTERM.
                why = "still starting" if node.registered else "not registered yet"
                self.events.write("signalled", node_id, signal="SIGTERM", why=why)
                self.backend.signal(node, signal.SIGTERM)
        deadline = time.monotonic() + self.config.launch.shutdown_timeout_s
        self._wait_for_exits(deadline)
        for signum, grace_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = [n for n in self.nodes.values() if n.process is not None and n.process.poll() is None]
            if not alive:
                break
            for node in alive:
                self.events.write("signalled", node.launch.node_id, signal=signal.Signals(signum).name)
                if node.silent == "paused" or process_state(node.process.pid) in ("T", "t"):
                    self.backend.signal(node, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
                self.backend.signal(node, signum)
            self._wait_for_exits(time.monotonic() + grace_s)
        for node_id, node in self.nodes.items():
            if node.process is not None:
                node.process.wait()
                self._reap_exited()
            if hasattr(self.backend, "finish"):
                self.backend.finish(node)
            if node.log_file is not None:
                node.log_file.close()

    def _wait_for_exits(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._reap_exited()
            if all(n.process is None or n.exit_code is not None for n in self.nodes.values()):
                return
            # Goodbyes arrive meanwhile; drain them so they are logged.
            if self.hub.wait(0.05):
                for envelope in self.control.recv_all():
                    self._handle(envelope)

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self):
        def on_signal(signum, frame):
            # Only flags here. A handler runs between two bytecodes of the main thread, which may
            # be inside EventLog.write holding its lock: writing the event from here deadlocked a
            # Ctrl-C that came while a `registered` event was written. The shutdown writes it.
            if not self.interrupted:
                self.interrupted_by = (signal.Signals(signum).name, time.time())
                self.interrupted = f"interrupted by {self.interrupted_by[0]}"

        def on_child_exit(signum, frame):
            note_exit_times(self.nodes)

        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, on_child_exit)
        return handlers

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def restart_wanted(node: NodeRecord, code: int, policy: RestartPolicy, *, run_started: bool, run_complete: bool) -> bool:
    """Whether a node that exited with `code` is started again: a scheduled restart always, else
    as `faults.restart` says. A learner restores its checkpoint; an env server resumes the run
    (env_server/resume.py)."""
    if run_complete:
        return False
    if node.launch.role == "env_server" and not run_started:
        return False  # during start-up the agents are still joining it: the run fails instead
    if code == EXIT_DAMAGED_STATE:
        return False  # it would read the same damaged files again: a crash loop
    if node.restart_requested:
        return True
    if policy.policy == "never" or node.launch.role not in policy.roles or node.restarts >= policy.max_restarts:
        return False
    if policy.policy == "on-failure":
        return code != 0
    return not node.said_goodbye  # "always": any exit before the end of the run


def failure_said(node: NodeRecord) -> str | None:
    """What a node said in its goodbye when it stopped for a failure, else None."""
    reason = node.goodbye_reason or ""
    return reason.removeprefix("failure: ") if reason.startswith("failure: ") else None


def run(plan: LaunchPlan, config: RunConfig) -> int:
    orchestrator = Orchestrator(plan, config)
    code = orchestrator.run()
    # Why each node that failed said it stopped, from memory (a full disk may have kept it out
    # of events.jsonl): "node agent_0 stopped: cannot write to ...: no space left on its file system".
    node_reasons = {node_id: said for node_id, node in orchestrator.nodes.items() if (said := failure_said(node))}
    for node_id, what, started_fresh in orchestrator.state_damaged:
        said = "STARTED FROM SCRATCH over damaged saved state" if started_fresh else "restored older saved state"
        print(f"node {node_id} {said}: {what}", file=sys.stderr)
    if orchestrator.events.failed is not None:
        print(f"run failed: {orchestrator.events.failed.strerror}", file=sys.stderr)
        for node_id, said in node_reasons.items():
            print(f"node {node_id} stopped: {said}", file=sys.stderr)
    elif code != 0:
        # Say why on the terminal (which node, how it exited, what it logged last), not only
        # the exit code in the status table.
        for line in explain_failure(plan.run_dir, node_reasons):
            print(line, file=sys.stderr)
    if orchestrator.events.failed is None:  # (no report onto a disk that refused the events)
        # After Ctrl-C the user is waiting for the prompt: the summary only, no plots (matplotlib
        # takes seconds to load on a busy machine); `orchestrate report --save` draws them.
        write_report(plan.run_dir, orchestrator.events, plots=orchestrator.interrupted is None)
    print(f"run directory: {plan.run_dir}", file=sys.stderr)
    return code


def write_report(run_dir: Path, events: EventLog, plots: bool = True) -> None:
    """The run's `report/` (summary.md, timeline.png), written after `run_finished` so that it
    shows how the run ended. A report that fails is said on the terminal and as a
    `report_failed` event; the run's exit code stays what the run earned."""
    try:
        from orchestrator.report import write_run_report

        written, problems, result_lines = write_run_report(run_dir, plots=plots)
    except Exception as error:  # noqa: BLE001 - write_run_report never raises; its import might
        written, problems, result_lines = [], [f"report: {type(error).__name__}: {error}"], []
    if written:
        print(f"report: {', '.join(str(path) for path in written)}", file=sys.stderr)
    for line in result_lines:  # the greedy evaluation against random and the oracle
        print(line, file=sys.stderr)
    for problem in problems:
        print(f"report not complete: {problem}", file=sys.stderr)
    if problems:
        events.write("report_failed", None, problems=problems, written=[str(path) for path in written])
