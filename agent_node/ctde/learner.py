"""The socket-free core of a centralized learner node: join agents' transitions, train a mixer,
hand out parameters.

Agents send `protocols.codec.ctde.CTDETransitions` (one agent, one env step, one row per env copy it
took part in). `JointRowAssembler` keeps the pieces of each (env_step, copy) until every agent's
piece has come, then emits one joint row in `JointReplayBuffer` layout (agent_node/algos/mixers.py):
obs/action/next_obs stacked in agent-index order, the global state taken from the pieces (all
agents were sent the same one; a mismatch is an error), the team reward the **sum** of the agents'
rewards, and `terminated` true if any agent's episode ended. Rows that never complete (an agent
dropped a copy, or died) are evicted oldest-first past `max_pending` keys and counted.

`CentralizedLearnerCore` feeds the rows to a `CentralizedMixerLearner`, takes
`gradient_steps_per_row` gradient steps per completed row once `learning_starts` rows are in,
and every `params_every` gradient steps returns one `CTDEParams` per agent for the node to send.
It never touches a socket or a clock, so it is tested with lists of messages (tests/unit/test_ctde_learner.py).

**What survives a restart of the learner node.** `state_dict` holds the mixer learner's state
(every agent's Q network and its target, the mixer and its target, the optimizer, the gradient
step counter) and the core's counters; `save_joint_replay` / `restore_joint_replay` keep the
joint replay buffer (its rows, ring position and sampling RNG) in an .npz, written atomically
like an agent's replay (agent_node/persistence.py). Rows waiting for other agents' pieces are
not kept: the agents stream on, and the pieces of the steps around the restart never join.
The process around it is agent_node/ctde/learner_node.py (the orchestrator's `learner` role); the
agents' side is agent_node/ctde/client.py.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from agent_node.algos.mixers import CentralizedMixerLearner, JointReplayBuffer
from protocols.codec.ctde import CTDEParams, CTDETransitions
from protocols.storage.files import atomic_write, read_sealed


class JointRowAssembler:
    """Collect per-agent pieces keyed by (env_step, copy); emit rows when all agents have sent."""

    def __init__(self, num_agents: int, max_pending: int = 10_000) -> None:
        if num_agents < 1:
            raise ValueError(f"num_agents must be a positive int, got {num_agents!r}")
        self.num_agents = num_agents
        self.max_pending = max_pending
        # (env_step, copy) -> {agent_index: (obs, action, reward, next_obs, terminated, state, next_state)}
        self.pending: OrderedDict[tuple[int, int], dict[int, tuple]] = OrderedDict()
        self.rows_completed = 0
        self.rows_evicted = 0

    def add(self, message: CTDETransitions) -> dict[str, np.ndarray] | None:
        """Take one agent's piece; return the joint rows it completed (JointReplayBuffer.add layout)."""
        agent = int(message.agent_index)
        if not 0 <= agent < self.num_agents:
            raise ValueError(f"ctde.transitions: agent_index must lie in [0, {self.num_agents - 1}], got {agent}")
        copies = np.asarray(message.copy_index, dtype=np.int64).reshape(-1)
        count = len(copies)
        for name in ("obs", "action", "reward", "next_obs", "terminated", "global_state", "next_global_state"):
            rows = len(np.asarray(getattr(message, name)))
            if rows != count:
                raise ValueError(f"ctde.transitions from agent {agent}: {name!r} has {rows} rows, copy_index has {count}")
        completed = []
        for row, copy in enumerate(copies):
            key = (int(message.env_step), int(copy))
            pieces = self.pending.setdefault(key, {})
            if agent in pieces:
                raise ValueError(f"ctde.transitions: agent {agent} sent env step {key[0]} copy {key[1]} twice")
            pieces[agent] = (
                np.asarray(message.obs[row], np.float32).reshape(-1),
                int(np.asarray(message.action[row]).reshape(())),
                float(message.reward[row]),
                np.asarray(message.next_obs[row], np.float32).reshape(-1),
                bool(message.terminated[row]),
                np.asarray(message.global_state[row], np.float32).reshape(-1),
                np.asarray(message.next_global_state[row], np.float32).reshape(-1),
            )
            if len(pieces) == self.num_agents:
                completed.append(self._join(key, self.pending.pop(key)))
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
            self.rows_evicted += 1
        if not completed:
            return None
        self.rows_completed += len(completed)
        return {name: np.stack([row[name] for row in completed]) for name in completed[0]}

    def _join(self, key: tuple[int, int], pieces: dict[int, tuple]) -> dict[str, np.ndarray]:
        ordered = [pieces[i] for i in range(self.num_agents)]
        state, next_state = ordered[0][5], ordered[0][6]
        for agent, piece in enumerate(ordered[1:], start=1):
            if piece[5].shape != state.shape or not np.allclose(piece[5], state):
                raise ValueError(f"env step {key[0]} copy {key[1]}: agent {agent}'s global_state differs from agent 0's")
        return {
            "state": state,
            "obs": np.stack([piece[0] for piece in ordered]),
            "action": np.array([piece[1] for piece in ordered], np.int64),
            "reward": np.float32(sum(piece[2] for piece in ordered)),
            "next_state": next_state,
            "next_obs": np.stack([piece[3] for piece in ordered]),
            "terminated": np.bool_(any(piece[4] for piece in ordered)),
        }


class CentralizedLearnerCore:
    """Assembler + joint replay + mixer learner + the parameter schedule, with no I/O."""

    def __init__(
        self,
        learner: CentralizedMixerLearner,
        replay_capacity: int,
        learning_starts: int,
        gradient_steps_per_row: float,
        params_every: int,
        max_pending: int = 10_000,
    ) -> None:
        if learning_starts < 1 or params_every < 1 or gradient_steps_per_row <= 0:
            raise ValueError(
                "learning_starts and params_every must be positive ints and gradient_steps_per_row > 0, got "
                f"{learning_starts!r}, {params_every!r}, {gradient_steps_per_row!r}"
            )
        self.learner = learner
        self.assembler = JointRowAssembler(learner.num_agents, max_pending)
        self.replay: JointReplayBuffer = learner.make_replay(replay_capacity)
        self.learning_starts = learning_starts
        self.gradient_steps_per_row = gradient_steps_per_row
        self.params_every = params_every
        self.owed_steps = 0.0
        self.params_sent = 0
        self.last_losses: dict[str, float] = {}

    def on_transitions(self, message: CTDETransitions) -> list[tuple[int, CTDEParams]]:
        """Take one agent's piece; return (agent_index, params) messages to send now."""
        rows = self.assembler.add(message)
        if rows is None:
            return []
        self.replay.add(rows)
        if len(self.replay) < self.learning_starts:
            return []
        self.owed_steps += self.gradient_steps_per_row * len(rows["reward"])
        outgoing: list[tuple[int, CTDEParams]] = []
        while self.owed_steps >= 1.0:
            self.owed_steps -= 1.0
            self.last_losses = self.learner.train_step(self.replay.sample(self.learner.config.batch_size))
            if self.learner.gradient_steps % self.params_every == 0:
                step = self.learner.gradient_steps
                outgoing.extend((i, CTDEParams(gradient_step=step, params=self.learner.agent_params(i))) for i in range(self.learner.num_agents))
                self.params_sent += 1
        return outgoing

    def metrics(self) -> dict[str, float]:
        return {
            "learner/gradient_steps": float(self.learner.gradient_steps),
            "learner/joint_rows": float(self.assembler.rows_completed),
            "learner/rows_evicted": float(self.assembler.rows_evicted),
            "learner/pending_keys": float(len(self.assembler.pending)),
            "learner/params_broadcasts": float(self.params_sent),
            **self.last_losses,
        }

    def state_dict(self) -> dict[str, Any]:
        """The mixer learner's state and the core's counters (the replay buffer is saved apart)."""
        return {
            "learner": self.learner.state_dict(),
            "owed_steps": float(self.owed_steps),
            "params_sent": int(self.params_sent),
            "rows_completed": int(self.assembler.rows_completed),
            "rows_evicted": int(self.assembler.rows_evicted),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.owed_steps = float(state["owed_steps"])
        self.params_sent = int(state["params_sent"])
        self.assembler.rows_completed = int(state["rows_completed"])
        self.assembler.rows_evicted = int(state["rows_evicted"])


JOINT_REPLAY_FORMAT_VERSION = 1


def save_joint_replay(replay: JointReplayBuffer, path: str | os.PathLike[str]) -> None:
    """Write the filled rows, ring position and sampling RNG of `replay` to `path` (.npz), atomically."""
    contents = {
        "format_version": np.array(JOINT_REPLAY_FORMAT_VERSION, np.int64),
        "capacity": np.array(replay.capacity, np.int64),
        "position": np.array(replay.position, np.int64),
        "size": np.array(replay.size, np.int64),
        "rng_state": np.array(json.dumps(replay.rng.bit_generator.state)),
    }
    contents.update({name: values[: replay.size] for name, values in replay.data.items()})
    atomic_write(path, lambda file: np.savez(file, **contents), sealed=True)


def restore_joint_replay(replay: JointReplayBuffer, path: str | os.PathLike[str]) -> None:
    """Fill `replay` from `path`; its capacity and row shapes must be those saved (else ValueError naming both).
    A file that fails its seal is a `DamagedStateError` naming it (agent_node/persistence.py)."""
    with np.load(io.BytesIO(read_sealed(path)), allow_pickle=False) as saved:
        version = int(saved["format_version"])
        if version != JOINT_REPLAY_FORMAT_VERSION:
            raise ValueError(f"{path}: joint replay format {version}, expected {JOINT_REPLAY_FORMAT_VERSION}")
        capacity, size, position = int(saved["capacity"]), int(saved["size"]), int(saved["position"])
        if capacity != replay.capacity:
            raise ValueError(f"{path}: saved with capacity {capacity}, this buffer has {replay.capacity}")
        rows = {}
        for name, values in replay.data.items():
            rows[name] = saved[name]
            if rows[name].shape != (size, *values.shape[1:]):
                raise ValueError(f"{path}: {name!r} has shape {rows[name].shape}, expected {(size, *values.shape[1:])}")
        rng_state = json.loads(str(saved["rng_state"]))
    for name, values in replay.data.items():
        values[:size] = rows[name]
        values[size:] = 0
    replay.size, replay.position = size, position
    replay.rng.bit_generator.state = rng_state
