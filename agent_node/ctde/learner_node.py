"""`python -m agent_node.ctde.learner_node`: the centralized learner process (CTDE).

A ROUTER that agent nodes connect DEALERs to. Each agent announces itself (`ctde.join`: its index
and spaces; the node builds its networks from the first and answers every join with that agent's
current Q-network), then sends `ctde.transitions`; the node joins them into joint rows, trains a
VDN or QMIX mixer over all agents' Q networks and sends each agent its Q-network parameters
(`ctde.params`) every `params_every` gradient steps, through the routing id that agent's messages
came from. All the learning logic is in agent_node/ctde/learner.py; this file is the socket loop
around it. Every `ctde.params` also acknowledges the rows taken in from that agent; an agent
sent nothing while it streamed the rows of `params_every` gradient steps gets a bare
acknowledgement. The agents keep acting with the newest parameters they have while few enough
of their rows are unacknowledged (protocols/codec/ctde.py, flow control).

**Restarts.** In an orchestrated run the node keeps a checkpoint in its node dir
(`checkpoints/`: the spaces, every agent's Q network and target, the mixer and its
target, the optimizer, the gradient step counter; `replay/`: the joint replay buffer),
on the agents' schedule (`agents.checkpoint_every_steps` / `agents.replay_save_every_steps`
lockstep steps, counted by the env steps of the transitions it receives), once as soon as the
first agent has joined (so a restarted learner knows the spaces: agents do not join again), and
at the end. Started again by `faults.restart` or a scheduled `restart`, it restores both and
goes on from that gradient step; the agents' DEALERs reconnect to the same ipc endpoint by
themselves and the rows they queued meanwhile arrive. What came after the last checkpoint is
lost: those gradient steps are taken again on newer rows, and agents holding parameters newer
than the restored step ignore the learner's until it passes them. Both files are kept as an
agent's are (agent_node/persistence.py): sealed, in `agents.keep_generations` generations named by
env step (`checkpoints/step-<env step>.pt` and `replay/step-<env step>.npz`, with `latest.pt` and
`joint.npz` links to the newest). A damaged newest generation is set aside (`.damaged`) and the
newest good one restored, said in its log, its metrics (`persistence/restored_from_step`,
`persistence/steps_lost`, in env steps), its `control.ready` and so the run's report; with no good
generation it stops with exit code 3 naming the file and is not restarted, or, with
`run.on_corrupt_state: start_fresh`, starts from scratch and says so.

Two ways to start it:

- by the orchestrator, in a run with `training.mode: centralized` (node id `learner`):
  `--config <run dir>/resolved.yaml --node-id learner --control <endpoint>`. It registers its
  `ctde` endpoint (the orchestrator puts it in every agent's directory), reports status like any
  node, writes `nodes/learner/metrics.jsonl` (the `learner/...` counters and `mixer/...` losses at
  every parameter broadcast and at the end) and on `control.shutdown` first takes in what the
  agents sent before they stopped, then exits 0. The mixer and schedule come from the run's
  `training` and `agents.learner` sections (agent_node/ctde/config.py).
- standalone (tests, benchmarks): spaces and hyperparameters from the command line; it prints
  `READY <endpoint>` once bound, serves until SIGTERM / SIGINT, and prints its final metrics as
  one JSON line (`METRICS {...}`) before it exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agent_node.algos.config import MixerConfig
from agent_node.algos.mixers import CentralizedMixerLearner
from agent_node.ctde.learner import CentralizedLearnerCore, restore_joint_replay, save_joint_replay
from agent_node.persistence import Generations, load_checkpoint, save_checkpoint, state_notice
from agent_node.service_loop import WAKE_S
from protocols.net.auth import BadInputLog
from protocols.codec.ctde import CTDEJoin, CTDEParams, CTDETransitions
from protocols.storage.durable_state import DamagedStateError, StateNotice
from protocols.run.node_config import bind_address
from protocols.seeds import derive_seed
from protocols.codec.spaces import decode_space, encode_space
from protocols.net.transport import Channel, Hub

log = logging.getLogger("learner_node")

# After control.shutdown: how long the node keeps taking in what the agents sent before they
# stopped (their last transitions may still be in flight), once nothing more arrives.
_DRAIN_QUIET_S = 0.5
_DRAIN_MAX_S = 5.0


class LearnerService:
    """The learner node's message handling: joins, transitions, parameters out. Builds its
    `CentralizedLearnerCore` on the first `ctde.join` (the spaces come from the agents), or at
    once when given the spaces (standalone). Where an agent's parameters go is learned from its
    messages (`routes`)."""

    def __init__(self, num_agents: int, make_core, inbox: Channel, spaces: tuple | None = None,
                 refusals: BadInputLog | None = None) -> None:
        """`refusals`: where refused messages are recorded (the node's `Hub.refusals`: one line
        per agent per 5 s, counted in security/refused_messages); by default a log of its own."""
        self.num_agents = num_agents
        self.refusals = refusals if refusals is not None else BadInputLog(log, "learner", one="refused a message",
                                                                          many="refused {n} messages")
        self.make_core = make_core  # (observation_space, action_space, state_space) -> CentralizedLearnerCore
        self.inbox = inbox
        # Standalone mode knows the spaces from its command line and builds the core at once.
        self.spaces = spaces
        self.core: CentralizedLearnerCore | None = None if spaces is None else make_core(*spaces)
        # Agent index -> the routing id its parameters go to: the one its newest message (by the
        # header's sent_at) came from. Each incarnation of an agent node connects under a routing
        # id of its own (transport.incarnation_routing_id), so a restarted agent's first message
        # moves the route, and what a dead incarnation sent before it (read later, from a
        # connection that is gone) cannot move it back.
        self.routes: dict[int, bytes] = {}
        self.route_sent_at: dict[int, float] = {}
        # Flow control (protocols/codec/ctde.py): per agent, the rows_sent of its newest message taken
        # in, and its rows taken in since it was last sent anything (a bare ack is due at params_every).
        self.rows_taken: dict[int, int] = {}
        self.rows_unacknowledged: dict[int, int] = {}
        self.acks_sent = 0
        self.last_env_step = -1  # the newest env step of any transitions taken in (the checkpoint clock)
        self.refused = 0
        self.messages = 0

    def handle(self, envelope) -> bool:
        """Take one message; True when it was used (False: refused and logged)."""
        self.messages += 1
        message = envelope.message
        if isinstance(message, CTDEJoin):
            return self._on_join(envelope, message)
        if isinstance(message, CTDETransitions):
            if self.core is None:
                return self._refuse(envelope, f"ctde.transitions from agent {message.agent_index} before any ctde.join")
            try:
                outgoing = self.core.on_transitions(message)
            except ValueError as error:
                return self._refuse(envelope, str(error))
            agent = int(message.agent_index)
            self._learn_route(agent, envelope)
            self.rows_taken[agent] = int(message.rows_sent)
            self.rows_unacknowledged[agent] = self.rows_unacknowledged.get(agent, 0) + len(message.reward)
            self.last_env_step = max(self.last_env_step, int(message.env_step))
            self._send(outgoing)
            if self.rows_unacknowledged[agent] >= math.ceil(self.core.params_every / self.core.gradient_steps_per_row):
                # No parameters went to this agent for a while (the learner waits for rows to
                # join, or for learning_starts): tell it its rows arrived, so it does not hold.
                self._send([(agent, CTDEParams(gradient_step=self.core.learner.gradient_steps, params={}))])
                self.acks_sent += 1
            return True
        return self._refuse(envelope, f"a learner node takes ctde.join and ctde.transitions, not {envelope.msg_type}")

    def _on_join(self, envelope, message: CTDEJoin) -> bool:
        index = int(message.agent_index)
        if not 0 <= index < self.num_agents:
            return self._refuse(envelope, f"ctde.join: agent_index must lie in [0, {self.num_agents - 1}], got {index}")
        try:
            spaces = tuple(decode_space(getattr(message, name), name) for name in ("observation_space", "action_space", "state_space"))
        except Exception as error:  # noqa: BLE001 - a bad space is the sender's problem, reported
            return self._refuse(envelope, f"ctde.join: {error}")
        if self.spaces is None:
            try:
                self.core = self.make_core(*spaces)
            except (TypeError, ValueError) as error:
                return self._refuse(envelope, f"ctde.join: cannot train these spaces centrally: {error}")
            self.spaces = spaces
            log.info("built the %s learner for %d agents: obs %s, actions %s, state %s",
                     self.core.learner.config.mixer, self.num_agents, *spaces)
        elif spaces != self.spaces:
            return self._refuse(envelope, f"ctde.join: agent {index}'s spaces {spaces} differ from the first agent's {self.spaces}")
        self._learn_route(index, envelope)
        # Everything this agent sent before the join has been taken in by now, or is lost.
        self.rows_taken[index] = int(message.rows_sent)
        learner = self.core.learner
        self._send([(index, CTDEParams(gradient_step=learner.gradient_steps, params=learner.agent_params(index)))])
        return True

    def _learn_route(self, agent: int, envelope) -> None:
        sent_at = envelope.header.sent_at
        if sent_at >= self.route_sent_at.get(agent, -math.inf):
            self.routes[agent], self.route_sent_at[agent] = envelope.identities[0], sent_at

    def _send(self, outgoing: list[tuple[int, CTDEParams]]) -> None:
        for agent, params in outgoing:
            if agent in self.routes:
                self.inbox.send(replace(params, rows_taken=self.rows_taken.get(agent, -1)), to=self.routes[agent])
                self.rows_unacknowledged[agent] = 0

    def _refuse(self, envelope, why: str) -> bool:
        self.refused += 1
        self.refusals.record(envelope.header.sender, envelope.msg_type, why)
        return False

    def metrics(self) -> dict[str, float]:
        base = {"learner/agents_joined": float(len(self.routes)), "learner/messages_refused": float(self.refused),
                "learner/acks_sent": float(self.acks_sent)}
        if self.core is None:
            return base
        return {**self.core.metrics(), **base}


class LearnerPersistence:
    """The learner node's checkpoint and joint replay in its node dir (see the module doc), due by
    the env steps of the transitions it takes in, like an agent's by its lockstep steps. Both are
    kept as an agent's are (agent_node/persistence.py `Generations`): sealed, the last
    `keep_generations` good saves of each, named by the env step they hold, a damaged one set
    aside and the newest good one restored; `notice` says what was skipped and lost."""

    def __init__(self, node_dir: Path, *, checkpoint_every_steps: int, replay_save_every_steps: int,
                 keep_generations: int = 2, start_fresh: bool = False) -> None:
        self.checkpoints = Generations(node_dir / "checkpoints", ".pt", "latest.pt", keep_generations)
        self.replays = Generations(node_dir / "replay", ".npz", "joint.npz", keep_generations)
        self.checkpoint_path, self.replay_path = self.checkpoints.latest, self.replays.latest
        self.checkpoint_every_steps = checkpoint_every_steps
        self.replay_save_every_steps = replay_save_every_steps
        self.start_fresh = start_fresh  # run.on_corrupt_state: start_fresh
        self.last_checkpoint_step: int | None = None  # None: nothing saved by this incarnation yet
        self.last_replay_step: int | None = None
        self.notice: StateNotice | None = None  # set by `restore` when damaged files were met

    def maybe_save(self, service: LearnerService) -> None:
        """Save what is due: the first checkpoint as soon as the core exists, then on schedule."""
        if service.core is None:
            return
        step = service.last_env_step
        if self.last_checkpoint_step is None or step - self.last_checkpoint_step >= self.checkpoint_every_steps:
            self.save_checkpoint(service)
        if self.last_replay_step is None:
            self.last_replay_step = step  # the first replay save waits for its period (an empty buffer is nothing to keep)
        elif step - self.last_replay_step >= self.replay_save_every_steps:
            self.save_replay(service)

    def save_all(self, service: LearnerService) -> None:
        if service.core is not None:
            self.save_checkpoint(service)
            self.save_replay(service)

    @staticmethod
    def _generation(service: LearnerService) -> int:
        # The first checkpoint comes with the first join, before any transition (env step -1).
        return max(0, service.last_env_step)

    def save_checkpoint(self, service: LearnerService) -> None:
        spaces = dict(zip(("observation_space", "action_space", "state_space"), service.spaces))
        state = {
            "spaces": {name: encode_space(space, name) for name, space in spaces.items()},
            "num_agents": service.num_agents,
            "core": service.core.state_dict(),
            "env_step": service.last_env_step,
        }
        self.checkpoints.save(self._generation(service), lambda path: save_checkpoint(path, state))
        self.last_checkpoint_step = service.last_env_step

    def save_replay(self, service: LearnerService) -> None:
        self.replays.save(self._generation(service), lambda path: save_joint_replay(service.core.replay, path))
        self.last_replay_step = service.last_env_step

    def restore(self, service: LearnerService) -> dict[str, float] | None:
        """Build `service`'s core from the newest good checkpoint and fill its replay from the newest
        good joint replay; None when there is no checkpoint. `DamagedStateError` when one of them
        exists and no generation of it verifies (unless `start_fresh`: then `notice` says so)."""
        for generations in (self.checkpoints, self.replays):
            for leftover in generations.remove_leftover_temporaries():
                log.info("removed %s, left by a save that was interrupted", leftover)
        checkpoint = self.checkpoints.restore_newest(lambda path: self._read_checkpoint(path, service.num_agents),
                                                     start_fresh=self.start_fresh)
        skipped: list = []
        replay_step = None
        if checkpoint is not None:
            step, state, skipped = checkpoint
            service.spaces = tuple(decode_space(state["spaces"][name], name) for name in ("observation_space", "action_space", "state_space"))
            service.core = service.make_core(*service.spaces)
            service.core.load_state_dict(state["core"])
            service.last_env_step = int(state["env_step"])
            replay = self.replays.restore_newest(lambda path: _restore_joint(service.core.replay, path), start_fresh=self.start_fresh)
            if replay is not None:
                replay_step, _, replay_skipped = replay
                skipped = skipped + replay_skipped
        restored = "nothing" if checkpoint is None else f"checkpoint of env step {checkpoint[0]}" + (
            "" if replay_step is None else f", joint replay of env step {replay_step}")
        self.notice = state_notice(skipped, self.checkpoints.started_fresh + self.replays.started_fresh,
                                   restored_step=0 if checkpoint is None else checkpoint[0], restored=restored,
                                   primary_suffix=".pt", unit="env steps of learning")
        if checkpoint is None:
            return None
        self.last_checkpoint_step = self.last_replay_step = service.last_env_step
        return {
            "learner/restored_gradient_step": float(service.core.learner.gradient_steps),
            "learner/restored_env_step": float(service.last_env_step),
            "learner/restored_replay_rows": float(len(service.core.replay)),
        }

    @staticmethod
    def _read_checkpoint(path: Path, num_agents: int) -> dict:
        checkpoint = load_checkpoint(path)
        if checkpoint is None:  # removed between the listing and the read
            raise DamagedStateError(path, "disappeared while it was being restored")
        missing = {"spaces", "num_agents", "core", "env_step"} - set(checkpoint)
        if missing:
            raise DamagedStateError(path, f"a learner checkpoint without {sorted(missing)}")
        if checkpoint["num_agents"] != num_agents:  # a config mistake, not damage: refused, not set aside
            raise ValueError(f"{path}: saved for {checkpoint['num_agents']} agents, this run has {num_agents}")
        return checkpoint


def _restore_joint(replay, path: Path) -> None:
    try:
        restore_joint_replay(replay, path)
    except (ValueError, KeyError, OSError) as error:  # sealed, yet not a joint buffer this learner can take
        raise DamagedStateError(path, f"sealed, but not a joint replay this learner can restore: {error}") from None


def make_core_factory(config: MixerConfig, num_agents: int, seed: int, replay_capacity: int, learning_starts: int,
                      gradient_steps_per_row: float, params_every: int, max_pending_rows: int = 10_000):
    def make_core(observation_space, action_space, state_space) -> CentralizedLearnerCore:
        learner = CentralizedMixerLearner(config, observation_space, action_space, state_space, num_agents=num_agents, seed=seed)
        return CentralizedLearnerCore(learner, replay_capacity, learning_starts, gradient_steps_per_row, params_every,
                                      max_pending=max_pending_rows)

    return make_core


def load_trained_learner(run_dir: str | Path, node_id: str = "learner") -> CentralizedMixerLearner:
    """The mixer learner a centralized run's learner node last checkpointed (the node saves at the
    end, so after a finished run: the final one), rebuilt from the run's resolved.yaml and
    `nodes/<node_id>/checkpoints/latest.pt`. For reading what was learned (bench/ctde_games.py
    prints Q_tot tables from it); ValueError naming the file when there is no checkpoint."""
    import yaml

    from agent_node.config import AgentNodeConfig
    from agent_node.ctde.config import mixer_config

    run_dir = Path(run_dir)
    # Only the learning sections are read (not load_node_config: the run's keys and endpoints do
    # not matter to reading a checkpoint, and a run directory may have been moved since).
    config = AgentNodeConfig.model_validate(yaml.safe_load((run_dir / "resolved.yaml").read_text()))
    if config.training.mode != "centralized":
        raise ValueError(f"{run_dir}: training.mode is {config.training.mode!r}; only a centralized run has a learner node")
    path = run_dir / "nodes" / node_id / "checkpoints" / "latest.pt"
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        raise ValueError(f"{path}: no learner checkpoint (did the run start its learner node?)")
    spaces = [decode_space(checkpoint["spaces"][name], name) for name in ("observation_space", "action_space", "state_space")]
    learner = CentralizedMixerLearner(mixer_config(config.training, config.agents.learner), *spaces,
                                      num_agents=int(checkpoint["num_agents"]), seed=0)
    learner.load_state_dict(checkpoint["core"]["learner"])
    return learner


# ---------------------------------------------------------------------------------- orchestrated


class OrchestratedLearner:
    """The learner node in an orchestrated run, as the shared service loop runs it
    (agent_node/service_loop.py): its inbox and checkpoints, a metrics record at each new
    parameter broadcast, and the rows still in flight taken in at the end."""

    role = "learner"
    log = log

    @property
    def state_notice(self) -> StateNotice | None:
        """What its restore met (agent_node/service_loop.py puts it in the node's control.ready)."""
        return None if self.persistence is None else self.persistence.notice

    def __init__(self, run, identity, make_core, metrics) -> None:
        self.run, self.identity, self.make_core, self.metrics = run, identity, make_core, metrics
        self.service: LearnerService | None = None
        self.hub = self.inbox = self.persistence = None
        self.logged = 0  # parameter broadcasts already in metrics.jsonl (restored ones too)

    def bind(self, hub: Hub) -> dict[str, str]:
        run, node_id, training = self.run, self.identity.node_id, self.run.training
        self.hub = hub
        # The agents connect under routing ids of their incarnations (transport.incarnation_routing_id):
        # a restarted agent is heard at once although this ROUTER reads behind.
        self.inbox = hub.bind_router(bind_address(run, node_id, "ctde"), name="transitions", advertise_host=run.network.advertised_host())
        self.service = service = LearnerService(run.agents.count, self.make_core, self.inbox, refusals=hub.refusals)
        self.persistence = LearnerPersistence(self.identity.node_dir, checkpoint_every_steps=run.agents.checkpoint_every_steps,
                                              replay_save_every_steps=run.agents.replay_save_every_steps,
                                              keep_generations=run.agents.keep_generations,
                                              start_fresh=run.run.on_corrupt_state == "start_fresh")
        restored = self.persistence.restore(service)
        if (notice := self.persistence.notice) is not None:  # damaged files skipped or set aside: said, and counted
            log.error("%s", notice.what)
            self.metrics.write(notice.restored_from_step, notice.metrics())
        if restored is not None:
            log.info("restored the %s learner: gradient step %d, env step %d, %d joint rows in replay", training.mixer,
                     restored["learner/restored_gradient_step"], restored["learner/restored_env_step"],
                     restored["learner/restored_replay_rows"])
            self.metrics.write(service.core.learner.gradient_steps, restored)
        self.logged = 0 if service.core is None else service.core.params_sent
        log.info("learner %s running: %s mixer for %d agents at %s", node_id, training.mixer, run.agents.count, self.inbox.endpoint)
        return {"ctde": self.inbox.endpoint}

    def handle(self, channel: Channel, envelope) -> None:
        self.service.handle(envelope)

    def after_message(self) -> None:
        """Checkpoint when due, metrics at each new parameter broadcast."""
        self.persistence.maybe_save(self.service)
        self.hub.flush_logs()  # the aggregated lines of a flood, on time although `hub.wait` may not come soon
        core = self.service.core
        if core is not None and core.params_sent > self.logged:
            self.logged = core.params_sent
            self.metrics.write(core.learner.gradient_steps, self.service.metrics())

    def _step(self) -> int:
        return 0 if self.service.core is None else self.service.core.learner.gradient_steps

    def status(self) -> tuple[int, float, dict[str, float]]:
        return self._step(), self.service.messages, self.service.metrics()

    def status_metrics(self) -> tuple[int, dict[str, float]]:
        return self._step(), self.hub.link_metrics()  # the security drop counters (security/*), like every node's

    def finish(self, reason: str) -> None:
        _take_in_the_rest(self.hub, self.inbox, self.service)
        self.persistence.save_all(self.service)

    def final_metrics(self, reason: str) -> tuple[int, dict[str, float]] | None:
        if self.service is None:
            return None
        final = self.service.metrics()
        log.info("learner stopping (%s): %s", reason, json.dumps(final))
        return self._step(), {**final, **self.hub.link_metrics()}


def run_in_orchestrated_run(config_path: str, node_id: str, control_endpoint: str) -> int:
    from agent_node.config import load_agent_side_config
    from agent_node.ctde.config import learner_schedule, mixer_config
    from agent_node.service_loop import run_service
    from protocols.storage.metrics import MetricsWriter

    if (loaded := load_agent_side_config(config_path, node_id, "learner")) is None:
        return 2
    run, identity = loaded
    training = run.training
    if training.mode != "centralized":
        print(f"learner {node_id}: training.mode is {training.mode!r}; a learner node runs only with 'centralized'", file=sys.stderr)
        return 2
    torch.set_num_threads(training.torch_threads)
    dqn = run.agents.learner
    make_core = make_core_factory(
        mixer_config(training, dqn), run.agents.count, identity.seed("learner"), params_every=training.params_every,
        max_pending_rows=training.max_pending_rows, **learner_schedule(dqn),
    )
    metrics = MetricsWriter(identity.node_dir / "metrics.jsonl", identity.run_dir / "tb" / node_id)
    return run_service(OrchestratedLearner(run, identity, make_core, metrics), run, identity, control_endpoint, metrics)


def _take_in_the_rest(hub: Hub, inbox: Channel, service: LearnerService) -> None:
    """After the shutdown: train on what the agents sent before they stopped (it may still be in
    flight), until the inbox has been quiet for _DRAIN_QUIET_S (at most _DRAIN_MAX_S)."""
    deadline = time.monotonic() + _DRAIN_MAX_S
    while time.monotonic() < deadline:
        ready = hub.wait(_DRAIN_QUIET_S)
        if inbox not in ready:
            return
        for envelope in inbox.recv_all():
            service.handle(envelope)


# ---------------------------------------------------------------------------------- standalone


def run_standalone(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    config = MixerConfig(mixer=args.mixer, batch_size=args.batch_size)
    spaces = (
        gym.spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32),
        gym.spaces.Discrete(args.num_actions),
        gym.spaces.Box(-np.inf, np.inf, (args.state_dim,), np.float32),
    )
    make_core = make_core_factory(
        config, args.num_agents, derive_seed(args.seed, args.num_agents + 1, "learner"), args.replay_capacity,
        args.learning_starts, args.gradient_steps_per_row, args.params_every,
    )

    from protocols.run.control import stop_on_signals

    stop = stop_on_signals()
    hub = Hub(sender=args.node_id, run_id="standalone")
    service = None
    try:
        inbox = hub.bind_router(args.bind, name="learner")
        service = LearnerService(args.num_agents, make_core, inbox, spaces=spaces, refusals=hub.refusals)
        print(f"READY {inbox.endpoint}", flush=True)
        while not stop:
            hub.wait(WAKE_S)
            for envelope in inbox.recv_all():
                service.handle(envelope)
            hub.flush_due()
    finally:
        print("METRICS " + json.dumps({} if service is None else service.metrics()), flush=True)
        hub.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_node.ctde.learner_node", description=__doc__.split("\n")[0])
    orchestrated = parser.add_argument_group("started by the orchestrator")
    orchestrated.add_argument("--config", help="resolved.yaml of the run (then --node-id and --control; no standalone options)")
    orchestrated.add_argument("--control", help="the orchestrator's control endpoint")
    parser.add_argument("--node-id", default="learner")
    standalone = parser.add_argument_group("standalone")
    standalone.add_argument("--bind", default="tcp://127.0.0.1:0")
    standalone.add_argument("--mixer", choices=("vdn", "qmix"), default="qmix")
    standalone.add_argument("--num-agents", type=int)
    standalone.add_argument("--obs-dim", type=int)
    standalone.add_argument("--num-actions", type=int)
    standalone.add_argument("--state-dim", type=int)
    standalone.add_argument("--batch-size", type=int, default=MixerConfig.model_fields["batch_size"].default)
    standalone.add_argument("--replay-capacity", type=int, default=100_000)
    standalone.add_argument("--learning-starts", type=int, default=1_000)
    standalone.add_argument("--gradient-steps-per-row", type=float, default=0.25)
    standalone.add_argument("--params-every", type=int, default=50)
    standalone.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.config is not None:
        if args.control is None:
            parser.error("--config needs --control (the orchestrator's control endpoint)")
        return run_in_orchestrated_run(args.config, args.node_id, args.control)
    missing = [f"--{name.replace('_', '-')}" for name in ("num_agents", "obs_dim", "num_actions", "state_dim") if getattr(args, name) is None]
    if missing:
        parser.error(f"standalone mode needs {', '.join(missing)} (or --config/--control when started by the orchestrator)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_standalone(args)


if __name__ == "__main__":
    raise SystemExit(main())
