"""A PettingZoo `ParallelEnv` whose environment runs in an env server.

`RemoteParallelEnv` claims every agent of a remote environment and drives it like a local one:
`reset` and `step` become `env.reset` / `env.action` messages and block (with a deadline) for
the `env.observation` answer. It exists so code written against PettingZoo's API can run
against Parley's env server unchanged, and so the server's semantics are checked by
PettingZoo's own `parallel_api_test`.

It needs a server that does not autoreset and hosts one copy (K = 1): a PettingZoo env is one
environment whose episodes end until `reset` is called.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pettingzoo import ParallelEnv

from protocols import messages as m
from protocols.spaces import decode_space
from protocols.transport import Hub


class RemoteEnvError(RuntimeError):
    pass


class RemoteParallelEnv(ParallelEnv):
    def __init__(self, endpoint: str, *, client_id: str = "remote-env", timeout_s: float = 10.0) -> None:
        self._hub = Hub(sender=client_id, run_id="remote")
        self._channel = self._hub.connect_dealer(endpoint, name="env", identity=client_id)
        self._timeout_s = timeout_s
        self._channel.send(m.EnvJoin(client_id=client_id, agents=[]))
        welcome: m.EnvWelcome = self._wait(m.EnvWelcome)
        if welcome.num_copies != 1 or welcome.autoreset:
            self.close()
            raise RemoteEnvError(
                "RemoteParallelEnv needs a server with one copy and no autoreset, got "
                f"num_copies={welcome.num_copies}, autoreset={welcome.autoreset}"
            )
        self.metadata = {"name": welcome.env_name, "render_modes": [], "is_parallelizable": True}
        self.possible_agents = list(welcome.possible_agents)
        self.agents: list[str] = []
        self.observation_spaces = {a: decode_space(s) for a, s in welcome.observation_spaces.items()}
        self.action_spaces = {a: decode_space(s) for a, s in welcome.action_spaces.items()}
        self._step_index = 0

    def observation_space(self, agent: str):
        return self.observation_spaces[agent]

    def action_space(self, agent: str):
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._channel.send(m.EnvReset(seed=seed))
        reply: m.EnvObservation = self._wait(m.EnvObservation)
        self._step_index = reply.step
        participants = [a for a in self.possible_agents if reply.active[a][0]]
        self.agents = participants
        observations = {a: _first_row(reply.observations[a]) for a in participants}
        return observations, _first_infos(reply, participants)

    def step(self, actions: dict[str, Any]):
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise ValueError(f"actions for agents that are not live: {sorted(unknown)}; live: {self.agents}")
        batched = {agent: _as_batch(action) for agent, action in actions.items()}
        self._channel.send(m.EnvAction(step=self._step_index, actions=batched))
        reply: m.EnvObservation = self._wait(m.EnvObservation)
        self._step_index = reply.step
        participants = [a for a in self.possible_agents if reply.active[a][0]]
        observations = {a: _first_row(reply.observations[a]) for a in participants}
        rewards = {a: float(reply.rewards[a][0]) for a in participants}
        terminated = {a: bool(reply.terminated[a][0]) for a in participants}
        truncated = {a: bool(reply.truncated[a][0]) for a in participants}
        self.agents = [a for a in participants if not (terminated[a] or truncated[a])]
        return observations, rewards, terminated, truncated, _first_infos(reply, participants)

    def close(self) -> None:
        self._hub.close()

    def _wait(self, message_type: type) -> Any:
        message = self._channel.wait_for(message_type, m.ErrorReply, timeout_s=self._timeout_s)
        if message is None:
            raise RemoteEnvError(f"no {message_type.MSG_TYPE} from the env server within {self._timeout_s} s")
        if isinstance(message, m.ErrorReply):
            raise RemoteEnvError(f"env server refused: {message.code}: {message.message}")
        return message


def _first_row(batched: Any) -> Any:
    if isinstance(batched, dict):
        return {key: _first_row(value) for key, value in batched.items()}
    return np.array(batched[0])  # a writable copy: received buffers are read-only


def _first_infos(reply: m.EnvObservation, agents: list[str]) -> dict[str, dict[str, Any]]:
    """Copy 0's forwarded infos (the server's `forward_infos`; empty without it): a Python
    number for a scalar, else a writable array."""
    infos: dict[str, dict[str, Any]] = {a: {} for a in agents}
    for agent in agents:
        for key, batched in reply.infos.get(agent, {}).items():
            value = batched[0]
            if value is not None:
                value = np.array(value)
                infos[agent][key] = value.item() if value.ndim == 0 else value
    return infos


def _as_batch(action: Any) -> Any:
    if isinstance(action, dict):
        return {key: _as_batch(value) for key, value in action.items()}
    return np.asarray(action)[None, ...]
