"""The lockstep barrier of the env server, sans-IO: requests and time in, replies and steps out.

It owns who drives which env agent and when a step may happen; it never touches a socket, a
clock or the environment. The server's loop feeds it decoded requests with the identity of the
client that sent them and the current time, sends the `(identity, message)` pairs it returns,
steps the environment when `step_due` is set, and hands the result back through `broadcast`.

Rules (the architecture's lockstep contract):

- join: a client claims env agents by name or index (none: all of them). An agent already driven
  by another client is refused, unless the claim comes with the same `client_id` — a restarted
  node takes its agents over from its dead incarnation.
- a step is due when every awaited agent's action for the open step has arrived, or when the step
  deadline passes. Awaited are the claimed agents active in the open step of at least one copy
  whose client is not absent: an agent that sits out this episode (a population env that draws
  who plays) or finished before the others is not waited for, and a client that drives only such
  agents is not waited for at all. A missing active agent's action is the default
  (`DefaultActions`) and the step records it in `missing`; inactive agents get the default too
  (the env ignores it) but are not missing.
- absent / rejoin: an agent whose client missed a deadline is not waited for any more (its client
  is "absent"), so one dead agent slows down one step, not every step; the client is awaited again
  as soon as it sends an action or a reset.
- actions for another step, or while nothing is open, are dropped and counted as stale; malformed
  ones get an `error` reply and count as missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from gymnasium import spaces

from env_server.vector import BatchedStep, check_batched, zeros_like_space
from protocols.codec import messages as m

log = logging.getLogger("env_server")

Outgoing = tuple[bytes, object]  # (routing identity of a client, message)


class Refused(Exception):
    """A request that gets an `error` reply with `code` (stable tag) and a sentence."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


@dataclass
class Client:
    client_id: str
    identity: bytes
    agents: list[str]
    absent: bool = False  # missed a deadline; not waited for until it acts again
    has_current: bool = False  # got the latest observation (else it joined after it was sent)
    unreachable: bool = False  # the last send found no connection (logged once, not per step)


# Hands a client its observation without a message: (client, result, step, missing, run_finished,
# evaluation) -> delivered (LockstepBarrier.broadcast).
Deliver = Callable[[Client, BatchedStep, int, list[str], bool, bool], bool]


class DefaultActions:
    """The action of an agent whose action did not arrive: the no-op (zeros / the first
    discrete action) or a uniformly random one, batched over K copies."""

    def __init__(self, action_spaces: dict[str, spaces.Space], mode: str, seed: int) -> None:
        if mode not in ("noop", "random"):
            raise ValueError(f"default_action must be 'noop' or 'random', got {mode!r}")
        self.action_spaces = action_spaces
        self.mode = mode
        # The spaces sample from their own generators: seed them from the run's derived seed.
        if mode == "random":
            for offset, space in enumerate(action_spaces.values()):
                space.seed(seed + offset)

    def batched(self, agent: str, num_copies: int) -> Any:
        space = self.action_spaces[agent]
        if self.mode == "random":
            rows = [space.sample() for _ in range(num_copies)]
        else:
            rows = [zeros_like_space(space) for _ in range(num_copies)]
        if isinstance(rows[0], dict):
            return {key: np.stack([r[key] for r in rows]) for key in rows[0]}
        return np.stack([np.asarray(r) for r in rows])


class LockstepBarrier:
    """Clients, their agents and the open step. See the module docstring."""

    def __init__(
        self,
        possible_agents: list[str],
        action_spaces: dict[str, spaces.Space],
        defaults: DefaultActions,
        *,
        step_deadline_s: float,
    ) -> None:
        self.possible_agents = list(possible_agents)
        self.action_spaces = action_spaces
        self.defaults = defaults
        self.step_deadline_s = step_deadline_s
        self.clients: dict[bytes, Client] = {}
        self.owner: dict[str, bytes] = {}  # env agent -> identity of the client that drives it
        self.pending: dict[str, Any] = {}
        # Agents active in the open step of at least one copy (from the broadcast's `active`).
        self.active_agents: set[str] = set(possible_agents)
        # The open step: which step number, of which kind, over how many copies.
        self.open_step: int | None = None
        self.open_evaluation = False
        self.num_copies = 1
        self.deadline: float | None = None
        self.step_due = False
        self._last: tuple | None = None  # the latest broadcast, for clients that join late
        self.missing_actions = 0
        self.default_actions: dict[str, int] = {}  # agent -> steps its action was defaulted (dead, paused or late)
        self.stale_actions = 0

    # ------------------------------------------------------------------ membership

    @property
    def all_claimed(self) -> bool:
        return len(self.owner) == len(self.possible_agents)

    def all_claimed_but(self, gone: set[str]) -> bool:
        """Every agent has a client, except those in `gone` (whose nodes will not come back)."""
        return all(agent in self.owner or agent in gone for agent in self.possible_agents)

    def client(self, identity: bytes) -> Client | None:
        return self.clients.get(identity)

    def join(self, identity: bytes, request: m.EnvJoin) -> list[str]:
        """The agents `identity` now drives; raises `Refused` (unknown_agent, agent_taken)."""
        possible = self.possible_agents
        bad_indices = [i for i in request.agent_indices if not 0 <= i < len(possible)]
        if bad_indices:
            raise Refused("unknown_agent", f"agent indices {bad_indices} out of range; this env has {len(possible)} agents")
        wanted = request.agents + [possible[i] for i in request.agent_indices]
        wanted = wanted or list(possible)
        unknown = [a for a in wanted if a not in possible]
        if unknown:
            raise Refused("unknown_agent", f"unknown agents {unknown}; this env has {possible}")
        taken = [a for a in wanted if self.owner.get(a, identity) != identity]
        if taken:
            # A restarted node comes back with the same client id (which, with the run's keys, it
            # can only send with its own key): it takes its agents back. The answer to anyone else
            # does not say who drives them, so it cannot be used to learn whose key to try.
            previous = {self.clients[self.owner[a]].client_id for a in taken}
            if previous != {request.client_id}:
                raise Refused("agent_taken", f"agents {taken} are driven by another client")
            for agent in taken:
                self.clients.pop(self.owner[agent], None)
        self.clients[identity] = Client(request.client_id, identity, wanted)
        for agent in wanted:
            self.owner[agent] = identity
        log.info("client %s joined, driving %s", request.client_id, wanted)
        return wanted

    def awaited_agents(self) -> list[str]:
        return [
            a for a, identity in self.owner.items()
            if a in self.active_agents and not self.clients[identity].absent
        ]

    # ------------------------------------------------------------------ the open step

    def broadcast(self, result: BatchedStep, *, step: int, evaluation: bool, run_finished: bool,
                  missing: list[str], wait: bool, now: float, deliver: Deliver | None = None) -> list[Outgoing]:
        """Each client's observation of `result`; opens `step` for actions when `wait`.

        `deliver(client, result, step, missing, run_finished, evaluation)` may hand a client its
        rows without a message (the server's write into a shared-memory slot): a client it
        returns True for is left out of the returned messages."""
        self.pending = {}
        self.step_due = False
        self.open_step = step if wait else None
        self.open_evaluation = evaluation
        self.num_copies = len(result.episode_start)
        # (`any` of a list: for the few copies of a lockstep, ~4x cheaper than ndarray.any)
        self.active_agents = {a for a, rows in result.active.items() if any(rows.tolist())}
        self.deadline = now + self.step_deadline_s if wait else None
        self._last = (result, step, missing, run_finished, evaluation)
        return [
            (client.identity, observation_for(client.agents, result, step, missing, run_finished, evaluation))
            for client in self.clients.values()
            if deliver is None or not deliver(client, result, step, missing, run_finished, evaluation)
        ]

    def catch_up(self, identity: bytes) -> list[Outgoing]:
        """The latest observation for a client that (re)joined after it was broadcast."""
        if self._last is None:
            return []  # nothing broadcast yet: the client gets the first observation with everyone
        client = self.clients[identity]
        result, *rest = self._last
        return [(identity, observation_for(client.agents, result, *rest))]

    def close_step(self) -> None:
        """Nothing is open (the run is over, or an episode waits for a reset)."""
        self.open_step, self.deadline, self.pending, self.step_due = None, None, {}, False

    def on_action(self, identity: bytes, request: m.EnvAction, now: float) -> list[Outgoing]:
        """Record a client's actions; sets `step_due` once every awaited agent has acted."""
        return self.on_actions(identity, request.step, request.evaluation, request.actions, now)

    def on_actions(self, identity: bytes, step: int, evaluation: bool, actions: dict[str, Any], now: float) -> list[Outgoing]:
        """`on_action` on an env.action's fields (the server's shared-memory path has no message)."""
        client = self.clients[identity]
        client.absent = False
        if self.open_step is None or step != self.open_step or evaluation != self.open_evaluation:
            self.stale_actions += 1
            return []
        self._check_actions(client, actions)
        self.pending.update(actions)
        if self._every_awaited_agent_acted():
            self.step_due = True
        return []

    def _check_actions(self, client: Client, actions: dict[str, Any]) -> None:
        """Raises `Refused` (not_your_agent, bad_action) unless every action is the client's own
        agent's and fits its space over the open step's copies."""
        for agent, action in actions.items():
            if agent not in client.agents:
                raise Refused("not_your_agent", f"{client.client_id} does not drive {agent!r}")
            try:
                check_batched(self.action_spaces[agent], action, self.num_copies, f"actions[{agent!r}]")
            except ValueError as error:
                raise Refused("bad_action", str(error)) from None

    def restart_clock(self) -> None:
        """The next step's time counts from its broadcast, not from the last step's (after a step
        hold). The lockstep has no step times: nothing to do (a realtime barrier has them)."""

    def _every_awaited_agent_acted(self) -> bool:
        """`all(a in pending for a in awaited_agents())`, stopping at the first that has not
        acted: it runs on every action, and a scan of all N agents each time cost O(N²) per step."""
        pending, clients, active = self.pending, self.clients, self.active_agents
        for agent, identity in self.owner.items():
            if agent not in pending and agent in active and not clients[identity].absent:
                return False
        return True

    def next_deadline(self) -> float | None:
        return None if self.step_due else self.deadline

    def on_timer(self, now: float) -> list[Outgoing]:
        """A passed step deadline: the step is due with defaults, latecomers become absent."""
        if self.deadline is not None and now >= self.deadline and not self.step_due:
            late = [a for a in self.awaited_agents() if a not in self.pending]
            for agent in late:
                self.clients[self.owner[agent]].absent = True
            log.warning("step %s deadline passed; default actions for %s", self.open_step, late)
            self.step_due = True
        return []

    def take_actions(self) -> tuple[dict[str, Any], list[str]]:
        """Every agent's batched action for the due step (defaults filled in) and who missed it."""
        missing = [a for a in self.possible_agents if a not in self.pending and a in self.active_agents]
        actions = dict(self.pending)
        for agent in self.possible_agents:
            if agent not in actions:  # missing, or inactive in every copy (the env ignores it)
                actions[agent] = self.defaults.batched(agent, self.num_copies)
        self.missing_actions += len(missing)
        for agent in missing:
            self.default_actions[agent] = self.default_actions.get(agent, 0) + 1
        self.close_step()
        return actions, missing


def observation_for(agents: list[str], result: BatchedStep, step: int, missing: list[str],
                    run_finished: bool, evaluation: bool) -> m.EnvObservation:
    """The part of `result` one client sees: its own agents' rows."""
    finals = result.final_observations
    return m.EnvObservation(
        step=step,
        observations={a: result.observations[a] for a in agents},
        rewards={a: result.rewards[a] for a in agents},
        terminated={a: result.terminated[a] for a in agents},
        truncated={a: result.truncated[a] for a in agents},
        active={a: result.active[a] for a in agents},
        final_observations={a: finals[a] for a in agents if a in finals} if finals else {},
        episode_start=result.episode_start,
        missing=missing,
        run_finished=run_finished,
        evaluation=evaluation,
        infos={a: result.infos[a] for a in agents if a in result.infos} if result.infos else {},
        positions=result.positions,  # every agent's (a proximity topology's links: env_server/positions.py)
    )
