"""The env server: K copies of one ParallelEnv behind a lockstep barrier.

Message flow (agents are DEALERs, the server is a ROUTER):

    agent                           env server
    env.join    ─────────────────▶  claim env agents          ──▶ env.welcome (spaces, K)
    env.reset   ─────────────────▶  reset once all agents are claimed (or join deadline)
                ◀─────────────────  env.observation(step=S)   (to every client, its agents only)
    env.action(step=S) ──────────▶  barrier: every awaited agent's action for S has arrived,
                                    or step_deadline_s passed (missing -> default action)
                ◀─────────────────  env.observation(step=S+1, missing=[...])

An agent that missed a deadline is no longer waited for (its owner is "absent") until it sends
an action again, so one dead agent slows down one step, not every step. Actions for an old step
are dropped and counted; malformed requests get an `error` reply and count as missing.

When `max_steps` lockstep steps have run, the last observation carries `run_finished=True`
and the orchestrator is told with `control.run_complete`.

Evaluation (optional): every `eval_every_steps` training steps the server holds the training
copies where they are and runs `eval_episodes` episodes on separate copies through the same
barrier, with observations flagged `evaluation=True` (agents act deterministically and learn
nothing). Their mean return goes to `eval/return_mean` in the server's metrics; then training
resumes with the observation that was held back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from env_server.vector import BatchedStep, VectorizedParallelEnv, check_batched, zeros_like_space
from protocols import messages as m
from protocols.auth import BadInputLog
from protocols.spaces import encode_space
from protocols.transport import Hub
from protocols.wire import Envelope

log = logging.getLogger("env_server")


@dataclass
class Client:
    client_id: str
    identity: bytes
    agents: list[str]
    absent: bool = False  # missed a deadline; not waited for until it acts again
    has_current: bool = False  # got the latest observation (else it joined after it was sent)
    unreachable: bool = False  # the last send found no connection (logged once, not per step)


@dataclass
class ServerCounters:
    steps: int = 0  # lockstep steps (each steps K copies)
    missing_actions: int = 0
    stale_actions: int = 0
    rejected_requests: int = 0
    episodes: int = 0
    last_return: float | None = None
    started_at: float = field(default_factory=time.monotonic)


class EnvServer:
    def __init__(
        self,
        envs: VectorizedParallelEnv,
        *,
        hub: Hub,
        env_name: str,
        bind_address: str,
        seed: int,
        eval_seed: int,
        max_steps: int | None,
        step_deadline_s: float,
        join_deadline_s: float,
        default_action: str,
        advertise_host: str | None = None,
        eval_envs: VectorizedParallelEnv | None = None,
        eval_every_steps: int | None = None,
        eval_start_step: int = 0,
        metrics_path: Path | None = None,
    ) -> None:
        self.envs = envs
        self.eval_envs = eval_envs
        self.eval_every_steps = eval_every_steps if eval_envs is not None else None
        self.eval_start_step = eval_start_step
        self.metrics_file = None
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            self.metrics_file = metrics_path.open("a", buffering=1)
        self.env_name = env_name
        self.seed = seed
        self.eval_seed = eval_seed
        self.max_steps = max_steps
        self.step_deadline_s = step_deadline_s
        self.join_deadline_s = join_deadline_s
        self.default_action = default_action
        self.hub = hub
        self.channel = hub.bind_router(bind_address, name="env", advertise_host=advertise_host)
        self.endpoint = self.channel.endpoint
        self.clients: dict[bytes, Client] = {}
        self.owner: dict[str, bytes] = {}  # env agent -> identity of the client that drives it
        self.counters = ServerCounters()
        self.rejections = BadInputLog(log, "env", one="rejected a request", many="rejected {n} requests")
        self.rng = np.random.default_rng(seed)
        self.created_at = time.monotonic()
        self.step = 0  # the training step whose actions we are collecting
        self.evaluating = False  # an evaluation is running; training is held at `self.step`
        self.eval_step = 0
        self.evaluations = 0
        self.held_back: tuple[BatchedStep, list[str]] | None = None
        self.episode_running = False
        self.reset_requested = False
        self.run_finished = False
        self.pending: dict[str, Any] = {}
        self.step_deadline: float | None = None
        self.last_result: BatchedStep | None = None
        self.last_missing: list[str] = []

    # ------------------------------------------------------------------ the loop

    def poll_once(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for messages, handle them, and fire a due step deadline."""
        now = time.monotonic()
        deadlines = [d for d in (self.step_deadline, self._join_deadline_if_waiting()) if d is not None]
        if deadlines:
            timeout_s = max(0.0, min(timeout_s, min(deadlines) - now))
        # The hub's other channels (the control channel) also end the wait; the caller reads them.
        if self.channel in self.hub.wait(timeout_s):
            for envelope in self.channel.recv_all():
                self.handle(envelope)
        now = time.monotonic()
        self.rejections.flush(now)
        if self.step_deadline is not None and now >= self.step_deadline:
            self._step_now(deadline_passed=True)
        if self.reset_requested and not self.episode_running and self._may_start(now):
            self._reset(self.seed)

    def handle(self, envelope: Envelope) -> None:
        handler = {
            m.EnvJoin: self.on_join,
            m.EnvReset: self.on_reset,
            m.EnvAction: self.on_action,
        }.get(type(envelope.message))
        if handler is None:
            self._reject(envelope, "unexpected_message", f"the env server does not accept {envelope.msg_type}")
            return
        handler(envelope)

    # ------------------------------------------------------------------ handlers

    def on_join(self, envelope: Envelope) -> None:
        request: m.EnvJoin = envelope.message
        identity = envelope.identities[0]
        if self.hub.keys is not None and request.client_id != envelope.sender:
            # With the run's keys the sender is what the transport authenticated (CURVE key or
            # HMAC signing key, see protocols/auth.py); the client id in the body is only a claim.
            # (A hub without keys, a standalone server, has nothing to check it against.)
            self._reject(envelope, "not_your_id", f"client_id {request.client_id!r} is not the sender {envelope.sender!r}")
            return
        possible = self.envs.possible_agents
        bad_indices = [i for i in request.agent_indices if not 0 <= i < len(possible)]
        if bad_indices:
            self._reject(envelope, "unknown_agent", f"agent indices {bad_indices} out of range; this env has {len(possible)} agents")
            return
        wanted = request.agents + [possible[i] for i in request.agent_indices]
        wanted = wanted or list(possible)
        unknown = [a for a in wanted if a not in possible]
        if unknown:
            self._reject(envelope, "unknown_agent", f"unknown agents {unknown}; this env has {self.envs.possible_agents}")
            return
        taken = [a for a in wanted if self.owner.get(a, identity) != identity]
        if taken:
            # A restarted node comes back with the same client id (which it can only send with its
            # own key): it takes its agents back. The answer to anyone else does not say who
            # drives them, so it cannot be used to learn whose key to try.
            previous = {self.clients[self.owner[a]].client_id for a in taken}
            if previous != {request.client_id}:
                self._reject(envelope, "agent_taken", f"agents {taken} are driven by another client")
                return
            for agent in taken:
                self.clients.pop(self.owner[agent], None)
        self.clients[identity] = Client(request.client_id, identity, wanted)
        for agent in wanted:
            self.owner[agent] = identity
        log.info("client %s joined, driving %s", request.client_id, wanted)
        self.channel.reply(
            envelope,
            m.EnvWelcome(
                env_name=self.env_name,
                num_copies=self.envs.num_copies,
                agents=wanted,
                possible_agents=list(self.envs.possible_agents),
                observation_spaces={a: encode_space(self.envs.observation_spaces[a]) for a in wanted},
                action_spaces={a: encode_space(self.envs.action_spaces[a]) for a in wanted},
                autoreset=self.envs.autoreset,
                max_steps=self.max_steps,
                metadata={"step": self.step, "task": self.envs.task_spec},
            ),
        )

    def on_reset(self, envelope: Envelope) -> None:
        client = self._client_of(envelope)
        if client is None:
            return
        client.absent = False
        sole_client = set(client.agents) == set(self.envs.possible_agents)
        if sole_client and envelope.message.seed is not None:
            self.seed = envelope.message.seed
        if not self.episode_running or sole_client or (not self.envs.autoreset and self.envs.all_finished):
            self.reset_requested = True
            self.episode_running = False
            self.step_deadline = None
            if self._may_start(time.monotonic()):
                self._reset(self.seed)
        elif self.last_result is not None and not client.has_current:
            # A (re)joining client in a running lockstep: it catches up at the current step.
            # Clients that already have it asked at the same time as the one that started the
            # episode; they need nothing more.
            self._send_observation(client, self.last_result, self.last_missing)

    def on_action(self, envelope: Envelope) -> None:
        client = self._client_of(envelope)
        if client is None:
            return
        request: m.EnvAction = envelope.message
        client.absent = False
        if self.run_finished and not self.evaluating:
            return
        expected_step = self.eval_step if self.evaluating else self.step
        if request.evaluation != self.evaluating or request.step != expected_step or not self.episode_running:
            self.counters.stale_actions += 1
            return
        for agent, action in request.actions.items():
            if agent not in client.agents:
                self._reject(envelope, "not_your_agent", f"{client.client_id} does not drive {agent!r}")
                return
            try:
                check_batched(self.envs.action_spaces[agent], action, self._current_envs().num_copies, f"actions[{agent!r}]")
            except ValueError as error:
                self._reject(envelope, "bad_action", str(error))
                return
        self.pending.update(request.actions)
        if all(agent in self.pending for agent in self._awaited_agents()):
            self._step_now(deadline_passed=False)

    # ------------------------------------------------------------------ lockstep

    def _awaited_agents(self) -> list[str]:
        return [a for a, identity in self.owner.items() if not self.clients[identity].absent]

    def _may_start(self, now: float) -> bool:
        all_claimed = len(self.owner) == len(self.envs.possible_agents)
        return all_claimed or now - self.created_at >= self.join_deadline_s

    def _join_deadline_if_waiting(self) -> float | None:
        if self.reset_requested and not self.episode_running:
            return self.created_at + self.join_deadline_s
        return None

    def _reset(self, seed: int | None) -> None:
        self.reset_requested = False
        self.episode_running = True
        self.pending = {}
        result = self.envs.reset(seed)
        self._broadcast(result, missing=[])

    def _current_envs(self) -> VectorizedParallelEnv:
        return self.eval_envs if self.evaluating else self.envs

    def _step_now(self, deadline_passed: bool) -> None:
        envs = self._current_envs()
        missing = [a for a in envs.possible_agents if a not in self.pending]
        if deadline_passed:
            for agent in missing:
                if agent in self.owner:
                    self.clients[self.owner[agent]].absent = True
            log.warning("step %d deadline passed; default actions for %s", self.step, missing)
        actions = dict(self.pending)
        for agent in missing:
            actions[agent] = self._default_actions(agent, envs.num_copies)
        self.counters.missing_actions += len(missing)
        self.pending = {}
        result = envs.step(actions)
        if self.evaluating:
            self._after_eval_step(result, missing)
        else:
            self._after_training_step(result, missing)

    def _after_training_step(self, result: BatchedStep, missing: list[str]) -> None:
        self.step += 1
        self.counters.steps += 1
        for episode_return in result.episode_returns:
            self.counters.episodes += 1
            self.counters.last_return = episode_return
        if self.max_steps is not None and self.step >= self.max_steps:
            self.run_finished = True
        if not self.envs.autoreset and self.envs.all_finished:
            self.episode_running = False
        if self.eval_every_steps and self.step % self.eval_every_steps == 0 and self.step >= self.eval_start_step:
            self._start_evaluation(result, missing)
        else:
            self._broadcast(result, missing)

    def _start_evaluation(self, held_back: BatchedStep, missing: list[str]) -> None:
        self.held_back = (held_back, missing)
        self.evaluating = True
        self.eval_step = 0
        self.eval_returns: list[float] = []
        self.eval_started_at = time.monotonic()
        # Every evaluation starts from the same seeds: the curve compares policies, not luck.
        self._broadcast(self.eval_envs.reset(self.eval_seed), missing=[])

    def _after_eval_step(self, result: BatchedStep, missing: list[str]) -> None:
        self.eval_step += 1
        self.eval_returns.extend(result.episode_returns)
        if not self.eval_envs.all_finished:
            self._broadcast(result, missing)
            return
        self.evaluating = False
        self.evaluations += 1
        returns = np.asarray(self.eval_returns)
        self.write_metrics(
            {
                "eval/return_mean": float(returns.mean()),
                "eval/return_std": float(returns.std()),
                "eval/episodes": len(returns),
                "eval/duration_s": time.monotonic() - self.eval_started_at,
            }
        )
        log.info("evaluation %d at step %d: return %.2f +- %.2f", self.evaluations, self.step, returns.mean(), returns.std())
        result, missing = self.held_back
        self.held_back = None
        self._broadcast(result, missing)

    def write_metrics(self, values: dict[str, float]) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({"step": self.step, "t": round(time.time(), 3), **values}) + "\n")

    def _default_actions(self, agent: str, num_copies: int) -> Any:
        space = self.envs.action_spaces[agent]
        if self.default_action == "random":
            rows = [space.sample() for _ in range(num_copies)]
        else:
            rows = [zeros_like_space(space) for _ in range(num_copies)]
        if isinstance(rows[0], dict):
            return {key: np.stack([r[key] for r in rows]) for key in rows[0]}
        return np.stack([np.asarray(r) for r in rows])

    def _broadcast(self, result: BatchedStep, missing: list[str]) -> None:
        self.last_result, self.last_missing = result, missing
        for client in list(self.clients.values()):
            self._send_observation(client, result, missing)
        waiting = self.episode_running and not self.run_finished
        self.step_deadline = time.monotonic() + self.step_deadline_s if waiting else None

    def _send_observation(self, client: Client, result: BatchedStep, missing: list[str]) -> None:
        agents = client.agents
        observation = m.EnvObservation(
            step=self.eval_step if self.evaluating else self.step,
            observations={a: result.observations[a] for a in agents},
            rewards={a: result.rewards[a] for a in agents},
            terminated={a: result.terminated[a] for a in agents},
            truncated={a: result.truncated[a] for a in agents},
            active={a: result.active[a] for a in agents},
            final_observations={a: result.final_observations[a] for a in agents if a in result.final_observations},
            episode_start=result.episode_start,
            missing=missing,
            # The last training step may be followed by an evaluation: the run ends after it.
            run_finished=self.run_finished and not self.evaluating,
            evaluation=self.evaluating,
        )
        client.has_current = self.channel.send(observation, to=client.identity)
        if client.has_current == client.unreachable:  # log the changes, not every step
            client.unreachable = not client.has_current
            if client.unreachable:
                log.warning("client %s is unreachable; its observations are dropped until it is back", client.client_id)
            else:
                log.info("client %s is reachable again", client.client_id)

    # ------------------------------------------------------------------ helpers

    def _client_of(self, envelope: Envelope) -> Client | None:
        client = self.clients.get(envelope.identities[0])
        if client is None:
            self._reject(envelope, "not_joined", f"send env.join before {envelope.msg_type}")
        return client

    def _reject(self, envelope: Envelope, code: str, text: str) -> None:
        self.counters.rejected_requests += 1
        # Aggregated per sender: a client repeating a bad request does not flood the log.
        self.rejections.record(envelope.sender, f"{envelope.msg_type} ({code})", text)
        self.channel.reply(envelope, m.ErrorReply(code=code, message=text))

    def status_extra(self) -> dict[str, float]:
        elapsed = max(1e-9, time.monotonic() - self.counters.started_at)
        return {
            "env/steps_per_s": self.counters.steps * self.envs.num_copies / elapsed,
            "env/missing_actions": float(self.counters.missing_actions),
            "env/stale_actions": float(self.counters.stale_actions),
            "env/rejected_requests": float(self.counters.rejected_requests),
        }

    def close(self) -> None:
        self.rejections.flush(force=True)
        self.hub.close_channel(self.channel)
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()
        if self.metrics_file is not None:
            self.metrics_file.close()

