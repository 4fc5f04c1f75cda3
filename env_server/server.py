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

This module is the lockstep core: the barrier, the vector env and the step, with one dispatch
table from message type to handler and the episode bookkeeping (reset, run budget). Every
message comes in the same way, whether it came by zmq or through a client's shared-memory slot.
The rules live in sans-IO parts with their own unit tests (`barrier.py`: who drives which agent,
the open step, its deadline, default actions, the absent/rejoin rule, take-over by a restarted
node), and what a run may add to the lockstep are parts with one declared interface (part.py):
pacing and the real-time clock, evaluation with its baselines and rendering, goals support,
resume, fault holds, state queries and the clients' body transport.

Reset seeds. The first reset of the copies uses the server's seed (or the seed a sole client
sends with env.reset); each later reset without a seed draws a fresh one,
`derive_seed(seed, resets since it, "env_reset")`, so successive episodes start differently (as a
local env's seedless `reset()` does) and the same seed still gives the same sequence of starts.

When `max_steps` lockstep steps have run, the last observation carries `run_finished=True`
(after a final evaluation, if one is due) and the caller tells the orchestrator.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from env_server.barrier import Outgoing, Refused
from env_server.client_bodies import TRANSPORTS, ClientBodies, TransportRefused, note_delivery
from env_server.evaluator import Evaluator
from env_server.fault_hold import FaultHold
from env_server.global_view import GlobalView
from env_server.goal_support import GoalSupport
from env_server.pacing import Pacing
from env_server.part import ServerCounters, dispatch_table
from env_server.rendering import Rendering
from env_server.reporting import LockstepReport
from env_server.resume import ResumeFile
from env_server.resumption import Resumption
from env_server.rules import LockstepRules, clock_refusal, pace_refusal
from env_server.state_queries import StateQueries, state_refusal
from env_server.vector import BatchedStep, VectorizedParallelEnv
from protocols.codec import messages as m
from protocols.storage.metrics import MetricsWriter
from protocols.seeds import derive_seed
from protocols.codec.spaces import encode_space
from protocols.net.transport import Hub
from protocols.codec.wire import Envelope

log = logging.getLogger("env_server")

# (Importable from here as before the parts had modules of their own.)
__all__ = ["EnvServer", "LockstepRules", "ServerCounters", "TRANSPORTS", "TransportRefused", "clock_refusal",
           "pace_refusal", "state_refusal"]


class EnvServer:
    """The lockstep core (module docstring); what parts may use of it is `ServerServices` (part.py)."""

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
        self.envs, self.env_name, self.rules, self.clock, self.hub = envs, env_name, rules, clock, hub
        # Told to clients in the welcome (dataset manifests), with string keys: the wire carries
        # only string map keys (protocols/codec/wire.py), and YAML gives ints where a config writes
        # `per_count_kwargs: {2: ...}` (variable_count accepts both).
        self.env_kwargs = _string_keys(dict(env_kwargs or {}))
        self.seed = seed
        self.resets_since_seed = 0  # training resets since `seed` was set: the next one's derived seed
        self.task = None if envs.task_spec is None else m.SiteCollectionTask(**envs.task_spec)
        self.counters = ServerCounters()
        self.created_at = clock()
        # Agents whose nodes will not come back (control.agents_gone, after a restart of this server).
        self.gone_agents: set[str] = set()
        self.step = 0  # the training step whose actions are being collected
        self.episode_running = self.reset_requested = self.run_finished = False
        # Global state and joint action for the clients that ask (centralized training; off until one does).
        self.global_view = GlobalView(envs, eval_envs)
        # The parts (part.py), checked before binding: a refused setting leaves no socket behind.
        self.pacing = Pacing(self, rules, envs, default_action_seed)
        self.barrier = self.pacing.barrier
        rendering = Rendering(frames_dir, eval_envs, env_name) if frames_dir is not None else None
        self.evaluator = Evaluator(self, eval_envs, every_steps=rules.eval_every_steps, start_step=rules.eval_start_step,
                                   eval_seed=eval_seed, pacing=self.pacing, rendering=rendering)
        self.state = StateQueries(self, self.global_view, envs, self.evaluator, env_name)
        self.bodies = ClientBodies(self, rules.transport, hub.run_id, envs, eval_envs, self.state.global_view_clients)
        self.goals = GoalSupport(self, rules.episode_start_hold_s)
        self.fault_hold = FaultHold(self, rules.step_hold_timeout_s, self.pacing)
        self.resumption = Resumption(self, resume, self.evaluator)
        self.report = LockstepReport(self)
        self.parts = [self.report, self.pacing, self.goals, self.fault_hold, self.state, self.bodies, self.evaluator, self.resumption]
        self.timed_parts = [part for part in self.parts if part.has_timer]  # (the loop asks only these, every poll)
        # One dispatch table: message type -> handler (each handler is named after its message).
        self.handlers = dispatch_table(self.parts, {m.EnvJoin: self.on_join, m.EnvReset: self.on_reset, m.EnvAction: self.on_action})
        self.channel = hub.bind_router(bind_address, name="env", advertise_host=advertise_host)
        self.endpoint = self.channel.endpoint
        self.metrics = MetricsWriter(metrics_path, tensorboard_dir) if metrics_path is not None else None
        self.resumption.take_up()  # a restarted server resumes from its last saved point

    @property
    def evaluating(self) -> bool:
        return self.evaluator.running

    # ------------------------------------------------------------------ the loop

    def poll_once(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for messages, handle them, and fire a due deadline."""
        now = self.clock()
        deadlines = [d for d in (self.barrier.next_deadline(), self._join_deadline_if_waiting(),
                                 *(part.next_deadline() for part in self.timed_parts)) if d is not None]
        if deadlines:
            timeout_s = max(0.0, min(timeout_s, min(deadlines) - now))
        # The hub's other channels (the control channel) also end the wait; the caller reads them.
        if self.channel in self.hub.wait(timeout_s):
            for envelope in self.channel.recv_all():
                self.handle(envelope)
        now = self.clock()
        self.send(self.barrier.on_timer(now))
        for part in self.timed_parts:
            part.on_timer(now)
        if self.barrier.step_due:
            self._step()
        self._reset_once_clients_joined(now)

    def handle(self, envelope: Envelope) -> None:
        """The one way in: every message from a client, by zmq or from its shared-memory slot."""
        handler = self.handlers.get(type(envelope.message))
        try:
            if handler is None:
                raise Refused("unexpected_message", f"the env server does not accept {envelope.msg_type}")
            identity = envelope.identities[0]
            if not isinstance(envelope.message, m.EnvJoin) and self.barrier.client(identity) is None:
                raise Refused("not_joined", f"send env.join before {envelope.msg_type}")
            handler(identity, envelope)
        except Refused as refused:
            self.counters.rejected_requests += 1
            # Aggregated per sender in the hub's refusals (counted in security/refused_messages too):
            # a client repeating a bad request does not flood the log.
            self.hub.refusals.record(envelope.sender, f"{envelope.msg_type} ({refused.code})", refused.text)
            self.channel.reply(envelope, m.ErrorReply(code=refused.code, message=refused.text))

    # ------------------------------------------------------------------ handlers

    def on_join(self, identity: bytes, envelope: Envelope) -> None:
        request: m.EnvJoin = envelope.message
        if self.hub.keys is not None and request.client_id != envelope.sender:
            # With the run's keys the sender is what the transport authenticated (CURVE key or
            # HMAC signing key, see protocols/net/auth.py); the client id in the body is only a claim.
            # (A hub without keys, a standalone server, has nothing to check it against.)
            raise Refused("not_your_id", f"client_id {request.client_id!r} is not the sender {envelope.sender!r}")
        self.state.check_join(request)
        self.bodies.check_join(request)
        agents = self.barrier.join(identity, request)
        state = self.state.joined(identity, request)
        packed = self.bodies.grant_packed(identity, request, agents)
        shm, link = self.bodies.grant_shared_memory(identity, request, agents, packed)
        envs = self.envs
        self.channel.reply(envelope, m.EnvWelcome(
            env_name=self.env_name, num_copies=envs.num_copies, agents=agents, possible_agents=list(envs.possible_agents),
            observation_spaces={a: encode_space(envs.observation_spaces[a]) for a in agents},
            action_spaces={a: encode_space(envs.action_spaces[a]) for a in agents},
            autoreset=envs.autoreset, max_steps=self.rules.max_steps, step=self.step, task=self.task,
            env_kwargs=self.env_kwargs, packed=packed, **state, **shm,
        ))
        self.bodies.use_after_welcome(identity, link)

    def on_reset(self, identity: bytes, envelope: Envelope) -> None:
        client = self.barrier.client(identity)
        self.bodies.on_reset(identity)
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
            self.send(self.barrier.catch_up(identity))

    def on_action(self, identity: bytes, envelope: Envelope) -> None:
        request: m.EnvAction = envelope.message
        if self.run_finished and not self.evaluating:
            self.barrier.client(identity).absent = False
            return
        self.send(self.barrier.on_actions(identity, request.step, request.evaluation, request.actions, self.clock()))
        if self.barrier.step_due:
            self._step()

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
        if self.resumption.rerun_evaluation:
            # Resumed during an evaluation: it runs again from its start; training resumes after it.
            self.resumption.rerun_evaluation = False
            self.evaluator.begin(result, missing=[])
        elif not self.goals.holds(result, missing=[]):  # (an episode start held for the goals, else out)
            self.broadcast(result, missing=[])

    def next_reset_seed(self) -> int:
        """The seed of the next training reset: `seed` for the first since it was set, then a
        fresh derived one each time (a replayed seed would replay the same episode start)."""
        seed = self.seed if self.resets_since_seed == 0 else derive_seed(self.seed, self.resets_since_seed, "env_reset")
        self.resets_since_seed += 1
        return seed

    def _step(self) -> None:
        if not self.pacing.may_step():
            return  # paced: the actions wait in the barrier; the loop wakes at the step's time
        actions, missing = self.barrier.take_actions()
        if self.evaluating:
            self.evaluator.step(actions, missing)
            return
        self.report.step_time.step_begins(self.clock())
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
        if not self.fault_hold.hold_if_marked(result, missing):  # (a fault at this step: it waits for the orchestrator)
            self.after_training_step(result, missing)
        self.report.step_time.step_ends()

    def after_training_step(self, result: BatchedStep, missing: list[str]) -> None:
        """Evaluate if one is due, else send the step's observation (or hold an episode start)."""
        if self.evaluator.due(self.step):
            self.evaluator.begin(result, missing)
        else:
            self.save_resume_point()
            if not self.goals.holds(result, missing):
                self.broadcast(result, missing)

    def broadcast(self, result: BatchedStep, missing: list[str]) -> None:
        evaluating = self.evaluating
        began = self.clock()
        self.send(self.barrier.broadcast(
            result,
            step=self.evaluator.schedule.step if evaluating else self.step,
            evaluation=evaluating,
            # The last training step may be followed by an evaluation: the run ends after it.
            run_finished=self.run_finished and not evaluating,
            missing=missing,
            wait=evaluating or (self.episode_running and not self.run_finished),
            now=began,
            deliver=self.bodies.deliver if self.channel.shm_peers_any else None,
        ))
        if not evaluating:
            self.report.step_time.observation_sent(began, self.clock())

    def send(self, outgoing: list[Outgoing]) -> None:
        if not outgoing:
            return
        outgoing = self.state.dress(outgoing)
        # Encoded first, then sent back to back (see Channel.send_batch).
        for (identity, message), delivered in zip(outgoing, self.channel.send_batch(outgoing)):
            client = self.barrier.client(identity)
            if client is not None and isinstance(message, m.EnvObservation):
                note_delivery(client, delivered)

    def save_resume_point(self) -> None:
        self.resumption.save()

    # ------------------------------------------------------------------ reporting

    def write_metrics(self, values: Mapping[str, float]) -> None:
        if self.metrics is not None and values:
            self.metrics.write(self.step, values)

    def recent_metric(self, key: str) -> float | None:
        return self.metrics.recent_value(key) if self.metrics is not None else None

    def write_periodic_metrics(self) -> None:
        """Every status period and at the end: each link's counters, then every part's metrics
        (the defaulted actions, the clock's), a record each."""
        self.write_metrics(self.hub.link_metrics())
        for part in self.parts:
            self.write_metrics(part.metrics())

    def tell_clients_it_stopped(self, why: str) -> None:
        """Every joined client hears at once that this server is gone (an `error` reply, code
        `env_server_stopped`), instead of waiting out its own timeout; the channel then lingers
        up to a second on close so the replies leave."""
        for identity in list(self.barrier.clients):
            self.channel.send(m.ErrorReply(code="env_server_stopped", message=why), to=identity)
        self.channel.close_linger_s = max(self.channel.close_linger_s, 1.0)

    def close(self) -> None:
        self.hub.close_channel(self.channel)
        self.envs.close()
        for part in self.parts:
            part.close()
        if self.metrics is not None:
            self.metrics.close()


def _string_keys(value: Any) -> Any:
    """`value` with every mapping key, at any depth, turned into a string."""
    if isinstance(value, dict):
        return {str(key): _string_keys(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_string_keys(item) for item in value]
    return value
