"""`python -m env_server`: run one env server.

Two ways to start it:

- under the orchestrator: `--config RUN_DIR/resolved.yaml --node-id env --control ENDPOINT`;
  it registers its endpoint, reports status, and stops on `control.shutdown`. It saves a resume
  point in its node directory after every step; started again over one (the orchestrator
  restarted it), it resumes the run at that step and says so in its `control.ready`
  (env_server/resume.py); over one that cannot be read it exits with code 3
  (`EXIT_DAMAGED_STATE`, protocols/storage/durable_state.py), naming the file, and is not restarted.
- standalone (tests, benchmarks, a notebook): `--env NAME [--kwargs JSON] [--copies K]
  [--bind ADDRESS]`; it prints `READY <endpoint>` on stdout once bound and serves until
  SIGTERM / SIGINT.

Both start the server the same way (`start_server`: the exit code of a server that refuses to
start) and run the same loop (`serve`); an orchestrated server does its duties to the
orchestrator after each poll (`OrchestratorDuties`: control messages, held steps, the run's end,
status and periodic metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Callable

from env_server.config import EnvConfig, EnvNodeConfig
from env_server.positions import PositionsReader, load_positions_reader, positions_reader_path
from env_server.registry import make_env
from env_server.resume import RESUME_FILENAME, ResumeFile
from env_server.client_bodies import TransportRefused
from env_server.rules import LockstepRules, clock_refusal, pace_refusal
from env_server.server import EnvServer
from env_server.vector import ALL_INFOS, InfoKeys, VectorizedParallelEnv, info_keys
from env_server.workers import SplitVectorEnv
from protocols.codec import messages as m
from protocols.run.control import NETWORK_FAULTS, ControlClient, ControlTimeout, ShutdownRequested, apply_network_fault, stop_on_signals
from protocols.run.config_errors import ConfigError
from protocols.storage.durable_state import EXIT_DAMAGED_STATE, DamagedStateError
from protocols.storage.jsonlines import FileWriteError
from protocols.run.node_config import bind_address, load_node_config, node_hub
from protocols.seeds import derive_seed
from protocols.net.transport import Hub

log = logging.getLogger("env_server")

# Standalone mode's defaults are the env section's: no default lives in two places.
_DEFAULTS = {name: info.default for name, info in EnvConfig.model_fields.items()}
# The command line's flag for a setting whose flag is not its name in dashes.
_FLAGS = {"episode_start_hold_s": "--episode-start-hold"}
# How often the standalone loop wakes up with nothing to do, to notice SIGTERM / SIGINT promptly.
_STANDALONE_WAKE_S = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m env_server", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="resolved.yaml of a run (orchestrated mode)")
    parser.add_argument("--node-id", default="env")
    parser.add_argument("--control", help="the orchestrator's control endpoint")
    parser.add_argument("--env", help="standalone: registry name or package.module:factory")
    parser.add_argument("--kwargs", default="{}", help="standalone: factory kwargs as JSON")
    parser.add_argument("--copies", type=int, default=1, help="standalone: K vectorized copies")
    parser.add_argument("--workers", type=int, default=_DEFAULTS["num_workers"], help="standalone: processes stepping the copies")
    parser.add_argument("--no-autoreset", action="store_true", help="standalone: wait for env.reset after episodes")
    parser.add_argument("--bind", default="tcp://127.0.0.1:0", help="standalone: bind address")
    parser.add_argument("--step-deadline", type=float, default=_DEFAULTS["step_deadline_s"], help="standalone: step deadline (s)")
    parser.add_argument(
        "--join-deadline", type=float, default=_DEFAULTS["join_deadline_s"],
        help="standalone: how long the first reset waits for every agent to join (s)",
    )
    parser.add_argument("--forward-infos", default=None,
                        help="standalone: comma-separated info keys to send to agents, 'all' (every numeric key, as "
                             "a local env hands them over: the default with --no-autoreset, the RemoteParallelEnv "
                             "server) or '' (none: the default otherwise, so that lockstep bodies can be packed)")
    parser.add_argument("--episode-start-hold", type=float, default=0.0,
                        help="standalone: hold each episode's first observation up to this long for goal.ready (s)")
    parser.add_argument("--transport", choices=("auto", "shm", "zmq"), default=_DEFAULTS["transport"],
                        help="standalone: how lockstep bodies reach clients on this host (env.transport)")
    parser.add_argument("--max-steps", type=int, default=None, help="standalone: lockstep budget")
    parser.add_argument("--max-steps-per-s", type=float, default=None,
                        help="standalone: at most this many training lockstep steps per second (env.max_steps_per_s)")
    parser.add_argument("--clock", choices=("lockstep", "realtime"), default=_DEFAULTS["clock"],
                        help="standalone: lockstep, or realtime: step at --steps-per-s whatever the agents do "
                             "(env.clock; evaluation steps on the same clock)")
    parser.add_argument("--steps-per-s", type=float, default=None, help="standalone: the realtime clock's rate (env.steps_per_s)")
    parser.add_argument("--late-action", choices=("last", "default"), default=_DEFAULTS["late_action"],
                        help="standalone: what a realtime clock plays for an agent whose action is late (env.late_action)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (refusal := pace_refusal(args.max_steps_per_s)) is not None:
        parser.error(f"--max-steps-per-s: {refusal}")
    if (refusal := clock_refusal(_standalone_rules(args))) is not None:
        setting, _, why = refusal.partition(": ")
        parser.error(f"{_FLAGS.get(setting, '--' + setting.replace('_', '-'))}: {why}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.config:
        if not args.control:
            parser.error("--config needs --control")
        return run_orchestrated(args.config, args.node_id, args.control)
    if not args.env:
        parser.error("give --config (orchestrated) or --env (standalone)")
    return run_standalone(args)


def standalone_info_keys(option: str | None, transport: str, autoreset: bool) -> InfoKeys:
    """`--forward-infos` as the vector env takes it. Unset: a server for one client driving every
    agent (`--no-autoreset`, what RemoteParallelEnv needs) forwards every numeric key, as a local
    env hands its infos over; a lockstep server for agent processes forwards none, so that its
    bodies can be packed (and travel through shared memory), unless asked."""
    if option is None:
        return ALL_INFOS if not autoreset and transport != "shm" else ()
    return info_keys(ALL_INFOS if option == ALL_INFOS else [key for key in option.split(",") if key])


def make_copies(factory, num_copies: int, *, autoreset: bool, num_workers: int, forward_infos: InfoKeys = (),
                positions_reader: PositionsReader | None = None):
    """K copies in this process, or split over `num_workers` processes (forked here, before the
    server makes its hub: a zmq context must not cross a fork). Positions are read in this process
    only, from all K copies (a proximity topology: the config refuses more than one worker)."""
    if num_workers == 1:
        return VectorizedParallelEnv(factory, num_copies, autoreset=autoreset, forward_infos=forward_infos,
                                     positions_reader=positions_reader)
    if positions_reader is not None:
        raise ValueError("env.num_workers: positions are read by the server's own copies; expected 1 worker "
                         f"with topology.kind proximity, got {num_workers}")
    return SplitVectorEnv(factory, num_copies, autoreset=autoreset, num_workers=num_workers, forward_infos=forward_infos)


def run_standalone(args: argparse.Namespace) -> int:
    kwargs = json.loads(args.kwargs)
    # Standalone runs are node 0 of a run seeded with --seed; every copy is built with the same
    # construction seed (the registry hands it to environments that draw their dynamics).
    construction_seed = derive_seed(args.seed, 0, "env_construction")
    envs = make_copies(
        lambda: make_env(args.env, kwargs, construction_seed=construction_seed), args.copies,
        autoreset=not args.no_autoreset, num_workers=args.workers,
        forward_infos=standalone_info_keys(args.forward_infos, args.transport, autoreset=not args.no_autoreset),
    )
    hub = Hub(sender=args.node_id, run_id="standalone")
    server = start_server(lambda: _standalone_server(args, envs, hub), hub, envs)
    if isinstance(server, int):
        return server
    stop = stop_on_signals()
    print(f"READY {server.endpoint}", flush=True)
    try:
        serve(server, stop, _STANDALONE_WAKE_S)
    except Exception as error:
        # Its clients (RemoteParallelEnv) would otherwise learn of it only at their timeout. (An
        # orchestrated server says nothing: the orchestrator may restart it, and its agents wait.)
        server.tell_clients_it_stopped(f"the env server stopped on an error: {type(error).__name__}: {error}")
        raise
    finally:
        server.close()
        hub.close()
    return 0


def start_server(build: Callable[[], EnvServer], hub: Hub, *envs: object) -> EnvServer | int:
    """The server `build` makes, or, when it refuses to start, the exit code (its copies and hub
    closed): 2 for an env.transport it cannot have, `EXIT_DAMAGED_STATE` for a resume point that
    exists but cannot be read (never a silent restart of the run from step 0: resume.py; the
    orchestrator does not restart this exit code)."""
    try:
        return build()
    except DamagedStateError as error:
        log.error("stopping: %s", error)
        code = EXIT_DAMAGED_STATE
    except TransportRefused as error:  # env.transport: shm where it cannot work
        log.error("%s", error)
        code = 2
    for copies in envs:
        if copies is not None:
            copies.close()
    hub.close()
    return code


def serve(server: EnvServer, stop: list[str], wake_s: float, after_poll: Callable[[], None] | None = None) -> None:
    """The loop of both entry points: poll the server (it sleeps until its next deadline, at most
    `wake_s`) until something appends to `stop` (a signal, the orchestrator's shutdown); an
    orchestrated server does its duties to the orchestrator after each poll (`after_poll`)."""
    while not stop:
        server.poll_once(wake_s)
        if after_poll is not None:
            after_poll()


def _standalone_rules(args: argparse.Namespace) -> LockstepRules:
    return LockstepRules(
        max_steps=args.max_steps,
        step_deadline_s=args.step_deadline,
        # Without autoreset a single client (RemoteParallelEnv) drives every agent: no waiting.
        join_deadline_s=0.0 if args.no_autoreset else args.join_deadline,
        default_action=_DEFAULTS["default_action"],
        episode_start_hold_s=args.episode_start_hold,
        transport=args.transport,
        max_steps_per_s=args.max_steps_per_s,
        clock=args.clock,
        eval_clock=args.clock,
        steps_per_s=args.steps_per_s,
        late_action=args.late_action,
    )


def _standalone_server(args: argparse.Namespace, envs, hub: Hub) -> EnvServer:
    return EnvServer(
        envs,
        hub=hub,
        env_name=args.env,
        bind_address=args.bind,
        rules=_standalone_rules(args),
        seed=derive_seed(args.seed, 0, "env"),
        eval_seed=derive_seed(args.seed, 0, "eval_env"),
        default_action_seed=derive_seed(args.seed, 0, "default_actions"),
    )


def run_orchestrated(config_path: str, node_id: str, control_endpoint: str) -> int:
    try:
        config, identity = load_node_config(config_path, node_id, EnvNodeConfig)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    env_config = config.env
    status_every_s = config.protocols.control.status_every_s
    startup_timeout_s = config.protocols.control.startup_timeout_s
    log.info("env server %s starting: %s x%d, run seed %d", node_id, env_config.name, env_config.num_copies, identity.run_seed)

    # Every copy (training and evaluation) is built with the same construction seed, so they
    # are the same task (e.g. the same dynamics) and differ only by their reset seeds.
    construction_seed = identity.seed("env_construction")

    def build() -> object:
        return make_env(env_config.name, dict(env_config.kwargs), construction_seed=construction_seed)

    forward_infos = info_keys(env_config.forward_infos)
    # Links that follow positions (topology.kind: proximity) need every agent's position with each
    # step; the config's validation made sure this env has a reader (env_server/positions.py).
    positions_reader = None
    if config.topology.kind == "proximity":
        path = positions_reader_path(env_config.name, env_config.positions)
        if path is None:
            log.error("env.positions: topology.kind proximity needs the agents' positions, and %s has no built-in "
                      "reader; expected an import path 'package.module:function', got none", env_config.name)
            return 2
        positions_reader = load_positions_reader(path)
    envs = make_copies(build, env_config.num_copies, autoreset=env_config.autoreset, num_workers=env_config.num_workers,
                       forward_infos=forward_infos, positions_reader=positions_reader)
    # One agent node drives each possible agent. The orchestrator checked the count on an env it
    # built before launch (orchestrator/prelaunch.py); this env, built with the run's construction
    # seed, is the one the agents will meet, so a mismatch stops the run here, not at a join deadline.
    agent_nodes = sum(1 for entry in config.nodes.values() if entry.role == "agent")
    if len(envs.possible_agents) != agent_nodes:
        log.error("agents.count: expected %d, the possible agents of %s (%s), got %d agent nodes",
                  len(envs.possible_agents), env_config.name, ", ".join(envs.possible_agents), agent_nodes)
        envs.close()
        return 2
    eval_envs = None
    if env_config.eval_every_steps:
        def build_evaluation_copy() -> object:
            kwargs = dict(env_config.kwargs)
            if env_config.render_evaluation:
                kwargs.setdefault("render_mode", "rgb_array")
            return make_env(env_config.name, kwargs, construction_seed=construction_seed)

        eval_envs = VectorizedParallelEnv(build_evaluation_copy, env_config.eval_episodes, autoreset=False,
                                          forward_infos=forward_infos)
    hub = node_hub(config, identity)
    resume = ResumeFile(identity.node_dir / RESUME_FILENAME, start_fresh=config.run.on_corrupt_state == "start_fresh")
    def make_server() -> EnvServer:
        return EnvServer(
            envs,
            hub=hub,
            env_name=env_config.name,
            bind_address=bind_address(config, node_id, "env"),
            rules=LockstepRules(
                max_steps=config.run.steps,
                step_deadline_s=env_config.step_deadline_s,
                max_steps_per_s=env_config.max_steps_per_s,
                join_deadline_s=env_config.join_deadline_s,
                default_action=env_config.default_action,
                eval_every_steps=env_config.eval_every_steps,
                eval_start_step=env_config.eval_start_step,
                episode_start_hold_s=env_config.episode_start_hold_s,
                step_hold_timeout_s=config.protocols.control.step_hold_timeout_s,
                transport=env_config.transport,
                clock=env_config.clock,
                eval_clock=env_config.evaluation_clock,
                steps_per_s=env_config.steps_per_s,
                late_action=env_config.late_action,
            ),
            seed=identity.seed("env"),
            eval_seed=identity.seed("eval_env"),
            default_action_seed=identity.seed("default_actions"),
            advertise_host=config.network.advertised_host(),
            eval_envs=eval_envs,
            metrics_path=identity.node_dir / "metrics.jsonl",
            frames_dir=identity.node_dir / "frames" if env_config.render_evaluation else None,
            tensorboard_dir=identity.run_dir / "tb" / identity.node_id,  # eval/*, link counters, lockstep
            env_kwargs=env_config.kwargs,
            resume=resume,
        )

    server = start_server(make_server, hub, envs, eval_envs)
    if isinstance(server, int):
        return server
    resumed = server.resumption.resumed_from
    if resume.notice is not None:  # a damaged slot skipped, or the file set aside: in its metrics, like an agent's
        server.write_metrics(resume.notice.metrics())
    control = ControlClient(hub, control_endpoint, node_id=node_id)
    stop = stop_on_signals()
    try:
        control.register("env_server", {"env": server.endpoint}, incarnation=server.resumption.incarnation)
        control.wait_for(m.Directory, startup_timeout_s)
        control.ready(resumed_step=None if resumed is None else resumed.step, notice=resume.notice)
        serve(server, stop, status_every_s, OrchestratorDuties(server, control, stop, status_every_s).after_poll)
        control.goodbye(stop[0])
        return 0
    except ShutdownRequested as request:
        log.info("shutdown before start: %s", request.reason)
        return 0
    except ControlTimeout as error:
        log.error("%s", error)
        return 1
    except FileWriteError as error:
        # Its metrics file refused (disk full): one line here, and the orchestrator hears why.
        log.error("stopping: %s", error.strerror)
        control.goodbye(f"failure: {error.strerror}")
        return 1
    finally:
        try:
            server.write_periodic_metrics()
        except FileWriteError as error:
            log.error("the last metrics were not written: %s", error.strerror)
        server.close()
        hub.close()


class OrchestratorDuties:
    """What an orchestrated server does after each poll: obey the control messages (shutdown,
    network faults, fault holds, agents gone), tell the orchestrator of held steps and of the
    run's end, and report its status and periodic metrics."""

    def __init__(self, server: EnvServer, control: ControlClient, stop: list[str], status_every_s: float) -> None:
        self.server, self.control, self.stop, self.status_every_s = server, control, stop, status_every_s
        self.reported_complete = False

    def after_poll(self) -> None:
        server, control, hub = self.server, self.control, self.server.hub
        now = time.monotonic()
        for envelope in control.channel.recv_all():
            self.obey(envelope.message)
        for message in server.fault_hold.control_outbox:  # control.step_held
            control.channel.send(message)
        server.fault_hold.control_outbox.clear()
        # A final evaluation may still be running after the last training step; the last
        # observations, held back by link emulation (network: delay), go out first: the
        # orchestrator stops every node once it hears the run is complete.
        if server.run_finished and not server.evaluating and not self.reported_complete and hub.next_due() is None:
            control.channel.send(m.RunComplete(steps=server.counters.steps))
            self.reported_complete = True
        if control.status_due(now, self.status_every_s):
            control.send_status(
                now,
                state="finished" if server.run_finished else ("running" if server.episode_running else "waiting"),
                step=server.counters.steps,
                episode=server.counters.episodes,
                last_return=server.counters.last_return,
                msgs_per_s=server.channel.stats.received / max(1e-9, now - server.created_at),
                extra=server.report.status(),
            )
            server.write_periodic_metrics()  # per-link counters, defaulted actions, the clock's

    def obey(self, message: object) -> None:
        server = self.server
        if isinstance(message, m.Shutdown):
            self.stop.append(message.reason)
        elif isinstance(message, NETWORK_FAULTS):  # faults.schedule: partition, heal, link
            log.warning("%s", apply_network_fault(server.hub.links, message))
            server.write_metrics(server.hub.link_metrics())
            self.control.channel.send(m.FaultApplied(position=message.position))
        elif isinstance(message, m.HoldAtSteps):  # faults.schedule at_step (fault_hold.py)
            server.fault_hold.set_marks(message.steps)
        elif isinstance(message, m.ReleaseStep):
            server.fault_hold.release_step(message.step)
        elif isinstance(message, m.AgentsGone):  # restarted: who will not rejoin
            try:
                server.agents_gone(message.indices)
            except ValueError as error:  # the server goes on waiting for them, as before
                log.error("%s", error)


if __name__ == "__main__":
    sys.exit(main())
