"""The env server: K copies of one ParallelEnv behind a lockstep barrier, on one socket.

Message flow (agents are DEALERs, the server is a ROUTER):

    agent                           env server
    env.join    ─────────────────▶  claim env agents          ──▶ env.welcome (spaces, K)
    env.reset   ─────────────────▶  reset once all agents are claimed (or join deadline)
                ◀─────────────────  env.observation(step=S)   (to every client, its agents only)
    env.action(step=S) ──────────▶  barrier: every awaited agent's action for S has arrived,
                                    or step_deadline_s passed (missing -> default action)
                ◀─────────────────  env.observation(step=S+1, missing=[...])
    env.state   ─────────────────▶  every copy's state(), for this request only ──▶ env.state_reply
                                    (or error state_failed, naming what the env raised)

A client that asks at join gets env.observation and env.action as packed bodies
(protocols/packed.py, `_grant_packed`); the channel packs and unpacks them, so nothing below
sees the difference. A packed client on this host may get them through shared memory instead
(protocols/shm_lockstep.py, `_grant_transport`, `env.transport`), and for such a client the
server skips the observation objects of the hot path: the barrier's broadcast writes its rows
straight into its slot (`_write_to_shared_memory`); its actions come out of the channel as
env.action envelopes and take the one dispatch, as those that come by zmq do.

This module is the thin loop. The rules live in sans-IO parts with their own unit tests:
`barrier.py` (who drives which agent, the open step, its deadline, default actions, the
absent/rejoin rule, take-over by a restarted node), `episode_hold.py` (announcing who plays an
episode and holding its first observation for the agents' goal negotiation) and `evaluation.py` (when to evaluate, the
held-back training observation, the evaluation's metrics). Here: one dispatch table from message
type to handler, the environment copies, the socket, and the episode bookkeeping (reset, run
budget).

Reset seeds. The first reset of the copies uses the server's seed (or the seed a sole client
sends with env.reset); each later reset without a seed draws a fresh one,
`derive_seed(seed, resets since it, "env_reset")`, so successive episodes start differently (as a
local env's seedless `reset()` does) and the same seed still gives the same sequence of starts.

When `max_steps` lockstep steps have run, the last observation carries `run_finished=True`
(after a final evaluation, if one is due) and the caller tells the orchestrator.

Given a `ResumeFile` (orchestrated runs), the server saves its `ResumePoint` after every
training step and at each evaluation's start and end, and a server started over an existing
point resumes the run from it: same step counter and budget, same evaluation schedule, fresh
episodes (`resume.py`). The agents rejoin it with env.join / env.reset as at the start.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from env_server.barrier import Client, DefaultActions, LockstepBarrier, Outgoing, Refused
from env_server.episode_hold import EpisodeStartHold
from env_server.baselines import baseline_metrics
from env_server.evaluation import EvaluationSchedule, spread_end_state
from env_server.global_view import GlobalView, has_state
from env_server.realtime import LATE_ACTIONS, RealtimeBarrier
from env_server.resume import ResumeFile, ResumePoint
from env_server.step_hold import HeldStep, StepHold
from env_server.vector import BatchedStep, VectorizedParallelEnv, packing_refusal
from protocols import messages as m
from protocols.metrics import MetricsWriter
from protocols.packed import PackedLayout
from protocols.seeds import derive_seed
from protocols.settings import ControlConfig
from protocols.shm_lockstep import ShmLink, ShmUnavailable, host_key, reap_stale_segments
from protocols.spaces import encode_space
from protocols.transport import Hub
from protocols.wire import Envelope

log = logging.getLogger("env_server")

TRANSPORTS = ("auto", "shm", "zmq")  # env.transport (protocols/shm_lockstep.py)


class TransportRefused(ValueError):
    """env.transport asks for what this server cannot do (shm with unpackable spaces, say)."""


@dataclass
class ServerCounters:
    steps: int = 0  # lockstep steps (each steps K copies)
    rejected_requests: int = 0
    episodes: int = 0
    last_return: float | None = None
    started_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class LockstepRules:
    """The env section's lockstep settings, as the server uses them (see env_server/config.py)."""

    max_steps: int | None
    step_deadline_s: float
    join_deadline_s: float
    default_action: str = "noop"
    eval_every_steps: int | None = None
    eval_start_step: int = 0
    episode_start_hold_s: float = 0.0
    # How long a step with a scheduled fault waits for the orchestrator (protocols.control).
    step_hold_timeout_s: float = field(default_factory=lambda: ControlConfig().step_hold_timeout_s)
    # How the lockstep's bodies travel to clients on this host: auto | shm | zmq (env_server/config.py).
    transport: str = "auto"
    # At most this many training steps per second (env.max_steps_per_s); None: unpaced.
    max_steps_per_s: float | None = None
    # The clocks of training and evaluation steps: lockstep | realtime (env.clock, env.eval_clock
    # resolved), the realtime rate and what a late agent gets (env.steps_per_s, env.late_action).
    clock: str = "lockstep"
    eval_clock: str = "lockstep"
    steps_per_s: float | None = None
    late_action: str = "last"


def state_refusal(envs: Any, eval_envs: Any | None, env_name: str) -> str | None:
    """Why the server cannot answer `env.state` for these copies (training and evaluation), or None."""
    if not hasattr(envs, "copies") or (eval_envs is not None and not hasattr(eval_envs, "copies")):
        return "the env copies run in worker processes (env.num_workers > 1); env.state needs them in the server process"
    if not has_state(envs.copies[0]):
        return f"the env {env_name} has no state() (with a Box state_space)"
    return None


def clock_refusal(rules: LockstepRules) -> str | None:
    """Why the server cannot run `rules`' clocks (the env section's checks, for a server started
    without it), or None."""
    clocks = (rules.clock, rules.eval_clock)
    if any(clock not in ("lockstep", "realtime") for clock in clocks):
        return f"clock: expected lockstep or realtime for training and evaluation, got {clocks}"
    if "realtime" not in clocks:
        return None
    if rules.steps_per_s is None or not (math.isfinite(rules.steps_per_s) and rules.steps_per_s > 0):
        return f"steps_per_s: a realtime clock needs a positive number of steps per second, got {rules.steps_per_s}"
    if rules.clock == "realtime" and rules.max_steps_per_s is not None:
        return "max_steps_per_s: paces the lockstep; a realtime clock steps at steps_per_s"
    if rules.clock == "realtime" and rules.episode_start_hold_s > 0:
        return "episode_start_hold_s: a realtime clock does not hold episode starts"
    if rules.late_action not in LATE_ACTIONS:
        return f"late_action: expected one of {LATE_ACTIONS}, got {rules.late_action!r}"
    return None


def pace_refusal(max_steps_per_s: float | None) -> str | None:
    """Why `max_steps_per_s` cannot pace the lockstep, or None (None itself: unpaced)."""
    if max_steps_per_s is None or (math.isfinite(max_steps_per_s) and max_steps_per_s > 0):
        return None
    return f"expected a positive number of steps per second, got {max_steps_per_s}"


class EnvServer:
    def __init__(
        self,
        envs: VectorizedParallelEnv,
        *,
        hub: Hub,
        env_name: str,
        bind_address: str,
        rules: LockstepRules,
        seed: int,
        eval_seed: int,
        default_action_seed: int,
        advertise_host: str | None = None,
        eval_envs: VectorizedParallelEnv | None = None,
        metrics_path: Path | None = None,
        frames_dir: Path | None = None,
        tensorboard_dir: Path | None = None,
        env_kwargs: dict[str, Any] | None = None,
        resume: ResumeFile | None = None,
        clock=time.monotonic,
    ) -> None:
        self.envs = envs
        self.eval_envs = eval_envs
        self.env_name = env_name
        # Told to clients in the welcome (dataset manifests), with string keys: the wire carries
        # only string map keys (protocols/wire.py), and YAML gives ints where a config writes
        # `per_count_kwargs: {2: ...}` (variable_count accepts both).
        self.env_kwargs = _string_keys(dict(env_kwargs or {}))
        if (refusal := pace_refusal(rules.max_steps_per_s)) is not None:
            raise ValueError(f"max_steps_per_s: {refusal}")
        if (refusal := clock_refusal(rules)) is not None:
            raise ValueError(refusal)
        self.rules = rules
        self.seed = seed
        self.resets_since_seed = 0  # training resets since `seed` was set: the next one's derived seed
        self.eval_seed = eval_seed
        self.clock = clock
        self.hub = hub
        self._setup_transport()  # (before binding: a refused env.transport leaves no socket behind)
        self.channel = hub.bind_router(bind_address, name="env", advertise_host=advertise_host)
        self.endpoint = self.channel.endpoint
        self.metrics = MetricsWriter(metrics_path, tensorboard_dir) if metrics_path is not None else None
        defaults = DefaultActions(envs.action_spaces, rules.default_action, default_action_seed)
        if "realtime" in (rules.clock, rules.eval_clock):  # (realtime.py; the lockstep is the plain barrier)
            self.barrier: LockstepBarrier = RealtimeBarrier(
                envs.possible_agents, envs.action_spaces, defaults, step_deadline_s=rules.step_deadline_s,
                steps_per_s=rules.steps_per_s, late_action=rules.late_action,
                realtime_for={False: rules.clock == "realtime", True: rules.eval_clock == "realtime"},
            )
        else:
            self.barrier = LockstepBarrier(envs.possible_agents, envs.action_spaces, defaults,
                                           step_deadline_s=rules.step_deadline_s)
        self.evaluation = EvaluationSchedule(rules.eval_every_steps if eval_envs is not None else None, rules.eval_start_step)
        self.baselines_written = False  # eval/random_return_mean (and the oracle's), at the first evaluation
        self.task = None if envs.task_spec is None else m.SiteCollectionTask(**envs.task_spec)
        self.counters = ServerCounters()
        self.created_at = clock()
        # Agents whose nodes will not come back (control.agents_gone, after a restart of this server).
        self.gone_agents: set[str] = set()
        self.step = 0  # the training step whose actions are being collected
        # With env.max_steps_per_s: the earliest time the next training step may be taken.
        self.next_step_at: float | None = None
        self.episode_running = False
        self.reset_requested = False
        self.run_finished = False
        # One dispatch table: message type -> handler (each handler is named after its message).
        self.handlers = {m.EnvJoin: self.on_join, m.EnvReset: self.on_reset, m.EnvAction: self.on_action,
                         m.GoalReady: self.on_goal_ready, m.EnvStateRequest: self.on_state_request}
        self.episode_hold = EpisodeStartHold(rules.episode_start_hold_s)
        # Training steps with a fault scheduled at them (step_hold.py), and what the server has to
        # tell the orchestrator about them; the caller's loop owns the control channel.
        self.step_hold = StepHold(rules.step_hold_timeout_s)
        self.control_outbox: list[object] = []
        # Global state and joint action for the clients that ask (centralized training; off until one does).
        self.global_view = GlobalView(envs, eval_envs)
        self.global_view_clients: set[bytes] = set()
        # Why `env.state` cannot be answered, or None (then the welcome tells every client the state space).
        self.state_unavailable = state_refusal(envs, eval_envs, env_name)
        # A restarted server resumes from its last saved point (resume.py); None: a fresh run.
        self.resume = resume
        # Frames of each evaluation's first episode (copy 0), saved when the evaluation ends.
        self.frames_dir = frames_dir
        self.frames: list[np.ndarray] = []
        self.incarnation = 0
        self.rerun_evaluation = False  # resumed in the middle of an evaluation
        self.resumed_from = resume.load() if resume is not None else None
        if self.resumed_from is not None:
            self._resume_from(self.resumed_from)

    @property
    def evaluating(self) -> bool:
        return self.evaluation.running

    # ------------------------------------------------------------------ the loop

    def poll_once(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for messages, handle them, and fire a due deadline."""
        now = self.clock()
        deadlines = [
            d for d in (self.barrier.next_deadline(), self._join_deadline_if_waiting(), self.episode_hold.next_deadline(),
                        self.step_hold.next_deadline(), self._paced_step_at())
            if d is not None
        ]
        if deadlines:
            timeout_s = max(0.0, min(timeout_s, min(deadlines) - now))
        # The hub's other channels (the control channel) also end the wait; the caller reads them.
        if self.channel in self.hub.wait(timeout_s):
            for envelope in self.channel.recv_all():
                self.handle(envelope)
        now = self.clock()
        self._send(self.barrier.on_timer(now))
        if self.episode_hold.on_timer(now):
            self._release_episode_start()
        if (held := self.step_hold.on_timer(now)) is not None:
            self._step_on_after_hold(held, now)
        if self.barrier.step_due:
            self._step()
        self._reset_once_clients_joined(now)

    def handle(self, envelope: Envelope) -> None:
        handler = self.handlers.get(type(envelope.message))
        try:
            if handler is None:
                raise Refused("unexpected_message", f"the env server does not accept {envelope.msg_type}")
            identity = envelope.identities[0]
            if not isinstance(envelope.message, m.EnvJoin):
                self._require_joined(identity, envelope.msg_type)
            handler(identity, envelope)
        except Refused as refused:
            self._refused(envelope.sender, envelope.msg_type, refused)
            self.channel.reply(envelope, m.ErrorReply(code=refused.code, message=refused.text))

    def _require_joined(self, identity: bytes, msg_type: str) -> None:
        if self.barrier.client(identity) is None:
            raise Refused("not_joined", f"send env.join before {msg_type}")

    def _refused(self, sender: str, msg_type: str, refused: Refused) -> None:
        self.counters.rejected_requests += 1
        # Aggregated per sender in the hub's refusals (counted in security/refused_messages too):
        # a client repeating a bad request does not flood the log.
        self.hub.refusals.record(sender, f"{msg_type} ({refused.code})", refused.text)

    # ------------------------------------------------------------------ handlers

    def on_join(self, identity: bytes, envelope: Envelope) -> None:
        request: m.EnvJoin = envelope.message
        if self.hub.keys is not None and request.client_id != envelope.sender:
            # With the run's keys the sender is what the transport authenticated (CURVE key or
            # HMAC signing key, see protocols/auth.py); the client id in the body is only a claim.
            # (A hub without keys, a standalone server, has nothing to check it against.)
            raise Refused("not_your_id", f"client_id {request.client_id!r} is not the sender {envelope.sender!r}")
        if request.global_view and not self.global_view.available:
            raise Refused("global_view_unavailable", self.global_view.unavailable_reason)
        if self.rules.transport == "shm" and (refusal := self._shm_refusal(request)) is not None:
            raise Refused("shm_unavailable", f"env.transport is shm and this client cannot have it: {refusal}")
        agents = self.barrier.join(identity, request)
        if request.global_view:
            self.global_view_clients.add(identity)
            self.global_view.enable()
        packed = self._grant_packed(identity, request, agents)
        shm, link = self._grant_transport(identity, request, agents, packed)
        self.channel.reply(
            envelope,
            m.EnvWelcome(
                env_name=self.env_name,
                num_copies=self.envs.num_copies,
                agents=agents,
                possible_agents=list(self.envs.possible_agents),
                observation_spaces={a: encode_space(self.envs.observation_spaces[a]) for a in agents},
                action_spaces={a: encode_space(self.envs.action_spaces[a]) for a in agents},
                autoreset=self.envs.autoreset,
                max_steps=self.rules.max_steps,
                step=self.step,
                task=self.task,
                global_view=self.global_view.welcome() if request.global_view else None,
                state_space=None if self.state_unavailable else encode_space(self.envs.copies[0].state_space),
                state_unavailable=self.state_unavailable or "",
                env_kwargs=self.env_kwargs,
                packed=packed,
                **shm,
            ),
        )
        if link is not None:
            # From the message after the welcome on: the client counts the zmq messages it gets
            # from the moment it maps the segment, which is after the welcome (protocols/shm_lockstep.py).
            self.channel.use_shm(link, identity)

    def _grant_packed(self, identity: bytes, request: m.EnvJoin, agents: list[str]) -> bool:
        """Whether this client's lockstep bodies travel packed (protocols/packed.py): asked for,
        and nothing but the packed fields travels with its observations. Connections of clients
        that were taken over (a restarted node joined again) lose their layouts here."""
        for stale in self.channel.packed_peers - set(self.barrier.clients):
            self.channel.forget_packed(stale)
        refusal = (
            "not asked for" if not request.packed
            else "the global view travels with its observations" if request.global_view
            else packing_refusal(self.envs, agents, shared_memory=self._shm_refusal(request) is None)
        )
        if refusal is not None:
            self.channel.forget_packed(identity)
            log.info("client %s: lockstep bodies in msgpack (%s)", request.client_id, refusal)
            return False
        layout = PackedLayout(agents, self.envs.observation_spaces, self.envs.action_spaces, self.envs.possible_agents)
        self.channel.use_packed(layout, identity)
        log.info("client %s: lockstep bodies packed", request.client_id)
        return True

    def _setup_transport(self) -> None:
        """Check `env.transport` against what this server can do (shm: packable spaces, no
        forwarded infos), and remove segments a killed server of this run left behind."""
        if self.rules.transport not in TRANSPORTS:
            raise TransportRefused(f"env.transport must be one of {', '.join(TRANSPORTS)}, got {self.rules.transport!r}")
        self.host_key = host_key() if self.rules.transport != "zmq" else ""
        self.segments_made = 0
        if self.rules.transport == "zmq":
            return
        reap_stale_segments(self.hub.run_id)
        if self.rules.transport == "shm":
            # (per agent: a client of one agent is the least any client asks for; one that claims
            # several is refused at its join if their observations together cannot be packed)
            refusal = "there is no /dev/shm on this machine" if not self.host_key else next(
                (r for agent in self.envs.possible_agents
                 if (r := packing_refusal(self.envs, [agent], self._most_copies(), shared_memory=True))), None)
            if refusal is not None:
                raise TransportRefused(f"env.transport: shm cannot work here: {refusal}; use auto or zmq")

    def _most_copies(self) -> int:
        return max(self.envs.num_copies, self.eval_envs.num_copies if self.eval_envs is not None else 0)

    def _shm_refusal(self, request: m.EnvJoin) -> str | None:
        """Why this join cannot have the shared-memory path (before packing: what packing refuses
        is checked at the server's start), or None."""
        if self.rules.transport == "zmq":
            return "env.transport is zmq"
        if not request.packed:
            return "the client did not ask for packed bodies"
        if request.global_view:
            return "the global view travels with its observations"
        if not request.shm_host:
            return "the client did not offer shared memory"
        if request.shm_host != self.host_key:
            return "the client is on another host"
        possible = self.envs.possible_agents  # the agents it claims (barrier.join refuses bad ones)
        claimed = request.agents + [possible[i] for i in request.agent_indices if 0 <= i < len(possible)] or list(possible)
        return packing_refusal(self.envs, [a for a in claimed if a in possible], self._most_copies(), shared_memory=True)

    def _grant_transport(self, identity: bytes, request: m.EnvJoin, agents: list[str],
                         packed: bool) -> tuple[dict[str, Any], ShmLink | None]:
        """The welcome's shared-memory fields for this client and its new segment, when it may
        have one (the caller puts it to use once the welcome is sent)."""
        self.channel.forget_shm(identity)  # a client that joins again gets a new segment
        for stale in self.channel.shm_peers - set(self.barrier.clients):
            self.channel.forget_shm(stale)  # taken over: the dead incarnation's segment goes
        refusal = self._shm_refusal(request) or (None if packed else "its bodies are not packed")
        if refusal is not None:
            if packed:
                log.info("client %s: lockstep over zmq (%s)", request.client_id, refusal)
            return {}, None
        copies = self._most_copies()
        layout = self.channel.packed_layout(identity)
        capacities = (PackedLayout.largest_observation_bytes(agents, self.envs.observation_spaces, copies),
                      layout.largest_action_bytes(copies))
        self.segments_made += 1
        try:
            link = ShmLink.create(self.hub.run_id, self.segments_made, capacities=capacities, peer_sender=request.client_id)
        except ShmUnavailable as error:
            if self.rules.transport == "shm":
                raise Refused("shm_unavailable", str(error)) from None
            log.warning("client %s: lockstep over zmq (%s)", request.client_id, error)
            return {}, None
        log.info("client %s: lockstep through shared memory (%s)", request.client_id, link.name)
        return {"shm_segment": link.name, "shm_capacities": list(capacities)}, link

    def on_reset(self, identity: bytes, envelope: Envelope) -> None:
        client = self.barrier.client(identity)
        if (link := self.channel.shm_link(identity)) is not None:
            link.unlink()  # the client mapped it before this reset (protocols/shm_lockstep.py)
        client.absent = False
        sole_client = set(client.agents) == set(self.envs.possible_agents)
        if sole_client and envelope.message.seed is not None:
            self.seed = envelope.message.seed
            self.resets_since_seed = 0
        if not self.episode_running or sole_client or (not self.envs.autoreset and self.envs.all_finished):
            self.reset_requested = True
            self.episode_running = False
            self.barrier.close_step()
            if self._may_start(self.clock()):
                self._reset()
        elif not client.has_current:
            # A (re)joining client in a running lockstep: it catches up at the current step.
            # Clients that already have it asked at the same time as the one that started the
            # episode; they need nothing more.
            self._send(self.barrier.catch_up(identity))

    def on_action(self, identity: bytes, envelope: Envelope) -> None:
        request: m.EnvAction = envelope.message
        self._actions(identity, request.step, request.actions, request.evaluation)

    def _actions(self, identity: bytes, step: int, actions: dict[str, Any], evaluation: bool) -> None:
        if self.run_finished and not self.evaluating:
            self.barrier.client(identity).absent = False
            return
        self._send(self.barrier.on_actions(identity, step, evaluation, actions, self.clock()))
        if self.barrier.step_due:
            self._step()

    def on_state_request(self, identity: bytes, envelope: Envelope) -> None:
        """`env.state`: every copy's `state()`, called now and only for this request (a client
        that needs the state every step joins with the global view instead). An env whose
        `state()` raises gets a `state_failed` error reply naming the exception; the server goes
        on serving (a legal env may have no state at some moments: multiwalker_v9's raises once
        its walkers are gone)."""
        if self.state_unavailable:
            raise Refused("state_unavailable", self.state_unavailable)
        envs = self.eval_envs if self.evaluating else self.envs
        try:
            state = np.stack([np.asarray(copy.state()) for copy in envs.copies])
        except Exception as error:  # noqa: BLE001 - the env's own failure, told to the client that asked
            what = f"{type(error).__name__}: {error}"
            log.info("the env's state() raised %s; answered env.state with state_failed", what)
            self.channel.reply(envelope, m.ErrorReply(code="state_failed", message=f"the env's state() raised {what}"))
            return
        if state.dtype.str not in m.WIRE_DTYPES:
            raise Refused("state_failed", f"the env's state() gave dtype {state.dtype}, which the wire cannot carry "
                                          "(a numeric or boolean array is expected)")
        step = self.evaluation.step if self.evaluating else self.step
        self.channel.reply(envelope, m.EnvStateReply(step=step, evaluation=self.evaluating, state=state))

    def on_goal_ready(self, identity: bytes, envelope: Envelope) -> None:
        request: m.GoalReady = envelope.message
        client = self.barrier.client(identity)
        foreign = [a for a in request.agents if a not in client.agents]
        if foreign:
            raise Refused("not_your_agent", f"{client.client_id} does not drive {foreign}")
        if not self.episode_hold.enabled:
            raise Refused("no_episode_hold", "goal.ready needs env.episode_start_hold_s > 0 on the env server")
        if request.goals:
            self._assign_goals(request)
        if self.episode_hold.on_ready(request.agents, request.step):
            self._release_episode_start()

    def _assign_goals(self, request: m.GoalReady) -> None:
        """The env pays these agents their goals in the held episode (`agents.goals.paid_by: env`).
        Only while that episode's first observation is held: a goal that comes after the
        episode started would be paid for part of it, so it is refused and the agent earns
        nothing this episode."""
        if len(request.goals) != len(request.agents):
            raise Refused("bad_goals", f"goal.ready names {len(request.agents)} agents and {len(request.goals)} goals")
        held = self.episode_hold.held
        if held is None or held.step != request.step:
            raise Refused("late_goals", f"goal.ready for step {request.step} came after that episode started: "
                                        "the env pays no goal in it")
        starting = np.flatnonzero(held.result.episode_start)
        if len(starting) != 1:
            raise Refused("bad_goals", f"paid goals need one starting env copy, got {len(starting)}")
        try:
            self.envs.assign_goals(int(starting[0]), dict(zip(request.agents, (int(g) for g in request.goals))))
        except ValueError as error:
            raise Refused("bad_goals", str(error)) from None

    # ------------------------------------------------------------------ lockstep

    def _may_start(self, now: float) -> bool:
        return self.barrier.all_claimed_but(self.gone_agents) or now - self.created_at >= self.rules.join_deadline_s

    def agents_gone(self, indices: list[int]) -> None:
        """The orchestrator says the nodes driving these agents will not come back
        (control.agents_gone): start without them instead of waiting out the join deadline."""
        possible = self.barrier.possible_agents
        bad = [i for i in indices if not 0 <= i < len(possible)]
        if bad:
            raise ValueError(f"control.agents_gone: indices {bad} out of range; this env has {len(possible)} agents")
        self.gone_agents |= {possible[i] for i in indices}
        log.warning("agents %s are gone for good: not waiting for them to join", sorted(self.gone_agents))
        self._reset_once_clients_joined(self.clock())

    def _reset_once_clients_joined(self, now: float) -> None:
        """A reset was asked for and waits on the clients: start the episode once every agent
        still expected has joined, or the join deadline has passed."""
        if self.reset_requested and not self.episode_running and self._may_start(now):
            self._reset()

    def _join_deadline_if_waiting(self) -> float | None:
        if self.reset_requested and not self.episode_running:
            return self.created_at + self.rules.join_deadline_s
        return None

    def _reset(self) -> None:
        self.reset_requested = False
        self.episode_running = True
        result = self.envs.reset(self.next_reset_seed())
        self.global_view.after_reset(result)
        if self.rerun_evaluation:
            # Resumed during an evaluation: it runs again from its start; training resumes after it.
            self.rerun_evaluation = False
            self._begin_evaluation(result, missing=[])
            return
        self._broadcast_or_hold(result, missing=[])

    def next_reset_seed(self) -> int:
        """The seed of the next training reset: `seed` for the first since it was set, then a
        fresh derived one each time (a replayed seed would replay the same episode start)."""
        seed = self.seed if self.resets_since_seed == 0 else derive_seed(self.seed, self.resets_since_seed, "env_reset")
        self.resets_since_seed += 1
        return seed

    def _paced_step_at(self) -> float | None:
        """When a due training step that env.max_steps_per_s holds back may be taken (the loop's
        wake-up for it), or None."""
        if self.next_step_at is not None and self.barrier.step_due and not self.evaluating:
            return self.next_step_at
        return None

    def _step(self) -> None:
        if self.rules.max_steps_per_s is not None and not self.evaluating:
            # Paced: a due step waits for its time (`poll_once` wakes for it); the actions wait
            # in the barrier, and a deadline no longer runs for them.
            now = self.clock()
            if self.next_step_at is not None and now < self.next_step_at:
                return
            self.next_step_at = now + 1.0 / self.rules.max_steps_per_s
        actions, missing = self.barrier.take_actions()
        if self.evaluating:
            rendering = self.frames_dir is not None and self.eval_envs.copy_running(0)
            result = self.eval_envs.step(actions)
            if rendering:  # copy 0 played this step (its final frame included)
                self._render_first_copy()
            self.global_view.after_step(actions, result, self.eval_envs)
            self.evaluation.record(result)
            if not self.eval_envs.all_finished:
                self._broadcast(result, missing)
                return
            # Every evaluation copy played one episode and is not reset until the next evaluation.
            held_back, metrics = self.evaluation.finish(self.clock(), [spread_end_state(env) for env in self.eval_envs.copies])
            metrics.update(self._evaluation_clock_metrics())
            self._save_frames()
            self._save_resume_point()
            for row in self.evaluation.episode_rows():
                self.write_metrics(row)
            self.write_metrics(metrics)
            self.global_view.restore_training()
            log.info("evaluation %d at step %d: return %.2f", self.evaluation.completed, self.step, metrics["eval/return_mean"])
            self._broadcast(held_back.result, held_back.missing)
            return
        result = self.envs.step(actions)
        self.global_view.after_step(actions, result, self.envs)
        self.step += 1
        self.counters.steps += 1
        for episode_return in result.episode_returns:
            self.counters.episodes += 1
            self.counters.last_return = episode_return
        if self.rules.max_steps is not None and self.step >= self.rules.max_steps:
            self.run_finished = True
        if not self.envs.autoreset and self.envs.all_finished:
            self.episode_running = False
        if self.step_hold.should_hold(self.step):
            # A fault is scheduled at this step: its observation waits for the orchestrator's go-ahead.
            self._save_resume_point()
            self.step_hold.hold(self.step, (result, missing), self.clock())
            self.control_outbox.append(m.StepHeld(step=self.step))
            return
        self._after_training_step(result, missing)

    def _after_training_step(self, result: BatchedStep, missing: list[str]) -> None:
        """Evaluate if one is due, else send the step's observation (or hold an episode start)."""
        if self.evaluation.due(self.step):
            self._begin_evaluation(result, missing)
        else:
            self._save_resume_point()
            self._broadcast_or_hold(result, missing)

    def release_step(self, step: int) -> None:
        """The orchestrator has issued the faults of `step` (control.release_step): step on."""
        if (held := self.step_hold.release(step)) is not None:
            self._step_on_after_hold(held, self.clock())

    def _step_on_after_hold(self, held: HeldStep, now: float) -> None:
        self.write_metrics({"env/step_hold_s": now - held.since, "env/step_hold_timed_out": float(held.timed_out)})
        self.barrier.restart_clock()  # a realtime clock pauses for the fault's hold
        self._after_training_step(*held.payload)

    def _begin_evaluation(self, held_back: BatchedStep, missing: list[str]) -> None:
        self.evaluation.begin(held_back, missing, self.clock())
        self._save_resume_point()
        if not self.baselines_written:
            # The lines the curve is read against, on the very episodes the agents will play.
            self.baselines_written = True
            self.write_metrics(baseline_metrics(self.eval_envs, self.eval_seed, self.env_name))
        # Every evaluation starts from the same seed: the curve compares policies, not luck.
        eval_result = self.eval_envs.reset(self.eval_seed)
        self.frames = []
        self._render_first_copy()
        self.global_view.after_reset(eval_result, self.eval_envs)
        self._broadcast(eval_result, missing=[])

    def _broadcast_or_hold(self, result: BatchedStep, missing: list[str]) -> None:
        """A training result: broadcast it, or, when it starts an episode in some copy and the
        hold is on, announce who plays and hold it (episode_hold.py)."""
        if self.run_finished or not self.episode_hold.should_hold(result):
            self._broadcast(result, missing)
            return
        active = self.episode_hold.begin(result, missing, step=self.step, claimed=set(self.barrier.owner), now=self.clock())
        self.barrier.close_step()  # no actions until the observation is out
        announcement = m.EnvEpisodeStart(step=self.step, episode_start=result.episode_start, active=active,
                                         hold_s=self.episode_hold.hold_s)
        self._send([(identity, announcement) for identity in self.barrier.clients])
        if not self.episode_hold.held.waiting:  # no claimed agent plays: nobody to wait for
            self._release_episode_start()

    def _release_episode_start(self) -> None:
        held = self.episode_hold.release()
        self._broadcast(held.result, held.missing)

    def _broadcast(self, result: BatchedStep, missing: list[str]) -> None:
        evaluating = self.evaluating
        waiting = evaluating or (self.episode_running and not self.run_finished)
        self._send(
            self.barrier.broadcast(
                result,
                step=self.evaluation.step if evaluating else self.step,
                evaluation=evaluating,
                # The last training step may be followed by an evaluation: the run ends after it.
                run_finished=self.run_finished and not evaluating,
                missing=missing,
                wait=waiting,
                now=self.clock(),
                deliver=self._write_to_shared_memory if self.channel.shm_peers_any else None,
            )
        )

    def _write_to_shared_memory(self, client: Client, result: BatchedStep, step: int, missing: list[str],
                                run_finished: bool, evaluation: bool) -> bool:
        """A shared-memory client's observation packed straight into its slot, without the
        `EnvObservation` the barrier would build and the channel's layers around it (the
        lockstep's hot path; bench/PROFILE.md round 9 measures the saving); False: the message
        goes the usual way."""
        if client.identity in self.global_view_clients or result.infos:  # (infos do not pack)
            return False
        written = self.channel.write_packed(client.identity, m.EnvObservation.MSG_TYPE, lambda layout: layout.pack_step_result(
            result, step=step, missing=missing, run_finished=run_finished, evaluation=evaluation))
        if written:
            self._delivered(client, True)
        return written

    def _send(self, outgoing: list[Outgoing]) -> None:
        if not outgoing:
            return
        if self.global_view_clients:
            outgoing = [
                (identity, dataclasses.replace(message, **self.global_view.fields()))
                if identity in self.global_view_clients and isinstance(message, m.EnvObservation) else (identity, message)
                for identity, message in outgoing
            ]
        # Encoded first, then sent back to back (see Channel.send_batch).
        for (identity, message), delivered in zip(outgoing, self.channel.send_batch(outgoing)):
            client = self.barrier.client(identity)
            if client is not None and isinstance(message, m.EnvObservation):
                self._delivered(client, delivered)

    @staticmethod
    def _delivered(client: Client, delivered: bool) -> None:
        """Whether `client` got the latest observation (a send can find no connection)."""
        client.has_current = delivered
        if delivered == client.unreachable:  # log the changes, not every step
            client.unreachable = not delivered
            if client.unreachable:
                log.warning("client %s is unreachable; its observations are dropped until it is back", client.client_id)
            else:
                log.info("client %s is reachable again", client.client_id)

    # ------------------------------------------------------------------ resuming (resume.py)

    def _save_resume_point(self) -> None:
        if self.resume is not None:
            self.resume.save(ResumePoint(
                step=self.step, episodes=self.counters.episodes, last_return=self.counters.last_return,
                evaluations_completed=self.evaluation.completed, evaluation_running=self.evaluation.running,
                incarnation=self.incarnation,
            ))

    def _resume_from(self, point: ResumePoint) -> None:
        """Take up the run where `point` left it; the copies start fresh episodes at the first reset."""
        self.step = self.counters.steps = point.step
        self.counters.episodes, self.counters.last_return = point.episodes, point.last_return
        self.evaluation.completed = point.evaluations_completed
        self.rerun_evaluation = point.evaluation_running and self.eval_envs is not None
        self.incarnation = point.incarnation + 1
        # New episodes, not a replay of the run's first ones: a seed of this incarnation.
        self.seed = derive_seed(self.seed, self.incarnation, "env_resume")
        self.resets_since_seed = 0
        self.run_finished = self.rules.max_steps is not None and self.step >= self.rules.max_steps
        self._save_resume_point()  # the incarnation counts even if this one dies before its first step
        log.warning("resumed at step %d (incarnation %d, %d episodes, %d evaluations done%s); every copy starts a new episode",
                    point.step, self.incarnation, point.episodes, point.evaluations_completed,
                    ", the interrupted evaluation runs again" if self.rerun_evaluation else "")

    def _render_first_copy(self) -> None:
        if self.frames_dir is None:
            return
        frame = self.eval_envs.copies[0].render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise RuntimeError(f"env.render_evaluation: {self.env_name}'s render() with render_mode 'rgb_array' "
                               f"should give an image (height, width, 3), got {type(frame).__name__}")
        self.frames.append(frame)

    def _save_frames(self) -> None:
        if self.frames_dir is None or not self.frames:
            return
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        path = self.frames_dir / f"evaluation_{self.evaluation.completed}.npz"
        np.savez_compressed(path, frames=np.stack(self.frames))
        log.info("saved %d frames of evaluation %d to %s", len(self.frames), self.evaluation.completed, path)
        self.frames = []

    # ------------------------------------------------------------------ reporting

    def write_metrics(self, values: dict[str, float]) -> None:
        if self.metrics is not None and values:
            self.metrics.write(self.step, values)

    def default_action_metrics(self) -> dict[str, float]:
        """`env/default_actions/<agent>`: the steps each agent's action was defaulted because it was
        dead, paused or late from its own compute (the env never waits on a protocol when talking
        takes env steps), every possible agent listed, 0 included."""
        counts = self.barrier.default_actions
        return {f"env/default_actions/{agent}": float(counts.get(agent, 0)) for agent in self.barrier.possible_agents}

    def clock_metrics(self) -> dict[str, float]:
        """With a realtime training clock (realtime.py): `env/late_actions/<agent>`, the training
        steps each agent's action was not there at its time (cumulative, every possible agent,
        0 included); `env/action_age_steps/<agent>` and `env/action_age_steps_max/<agent>`, the
        mean and largest age in steps of the actions played since the last call; and
        `env/clock_slips`, the steps the server itself was too slow to open on time. Nothing in
        the lockstep."""
        barrier = self.barrier
        if not isinstance(barrier, RealtimeBarrier) or not barrier.realtime_for[False]:
            return {}
        late = barrier.late_actions()
        return {
            **{f"env/late_actions/{agent}": float(late.get(agent, 0)) for agent in barrier.possible_agents},
            **barrier.age_metrics(),
            "env/clock_slips": float(barrier.clock_slips),
        }

    def _evaluation_clock_metrics(self) -> dict[str, float]:
        """An evaluation on the realtime clock: how many of its agent-steps had an action that
        was not there at its time (`eval/late_actions`) and their share (`eval/late_action_share`)."""
        barrier = self.barrier
        if not isinstance(barrier, RealtimeBarrier) or not barrier.realtime_for[True]:
            return {}
        counts = barrier.counts[True]
        return {"eval/late_actions": float(counts.late), "eval/late_action_share": counts.late / max(1, counts.played)}

    def status_extra(self) -> dict[str, float]:
        elapsed = max(1e-9, self.clock() - self.counters.started_at)
        return {
            "env/steps_per_s": self.counters.steps * self.envs.num_copies / elapsed,
            "env/missing_actions": float(self.barrier.missing_actions),
            "env/stale_actions": float(self.barrier.stale_actions),
            "env/rejected_requests": float(self.counters.rejected_requests),
        }

    def tell_clients_it_stopped(self, why: str) -> None:
        """Every joined client hears at once that this server is gone (an `error` reply, code
        `env_server_stopped`), instead of waiting out its own timeout; the channel then lingers
        up to a second on close so the replies leave."""
        for identity in list(self.barrier.clients):
            self.channel.send(m.ErrorReply(code="env_server_stopped", message=why), to=identity)
        self.channel.close_linger_s = max(self.channel.close_linger_s, 1.0)

    def close(self) -> None:
        if self.resume is not None:
            self.resume.close()
        self.hub.close_channel(self.channel)
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()
        if self.metrics is not None:
            self.metrics.close()


def _string_keys(value: Any) -> Any:
    """`value` with every mapping key, at any depth, turned into a string."""
    if isinstance(value, dict):
        return {str(key): _string_keys(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_string_keys(item) for item in value]
    return value
