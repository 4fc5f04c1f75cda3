"""The global view: the env's global state and every agent's action, for the clients that ask.

Centralized-training learners (PMIC's mutual-information terms, a QMIX mixer, a centralized
critic) need, at each lockstep step, the global state `s` of every environment copy and the
joint action `u` that was taken. A decentralized agent node only sees its own observation; the
env server sees everything, so it publishes the two to the clients that asked for them at join
(`EnvJoin.global_view=True`, which an agent node sets when its YAML section's learner needs the
view or asks for it).

Why fields on `env.observation` and not a separate message: a learner needs the state *of the
same step* as its observation, and the lockstep already delivers exactly one observation per
client per step. Riding on it keeps the two in order without any join logic on the agent side,
and a client that did not ask gets `None` in those fields: not one extra byte, and the server
computes nothing for a run where no client asked (`GlobalView.enabled` stays false).

What is published with the observation of step S (after the actions of step S-1):

- `global_state` (K, *state_shape) float32: the env's `state()` for each copy, or, for envs
  without one, the observations of `possible_agents` flattened and concatenated (zeros for an
  agent that is not present).
- `final_global_state` (K, *state_shape): for copies whose episode just ended and was reset
  (autoreset, `episode_start` true), the state the episode ended in; other rows repeat
  `global_state`. It is the `next_global_state` of the transition that ended the episode, like
  `final_observations` is its `next_obs`.
- `joint_action` (K, joint_action_dim) float32: the actions of step S-1 of every possible agent
  (including defaulted ones), in `possible_agents` order, Box actions flattened as they are and
  Discrete ones one-hot. `None` right after a reset.

Where the env's `state()` raises (a legal env may have no state at some moments), that copy's
state is NaN and the server's log says why, once per kind of failure; the server goes on.

The final state of an autoreset copy is gone once the copy is reset, so the view wraps each env
copy in `StateTracking`, which remembers the state right after each `step` (before the vector env
may reset it). The wrapper only calls `state()` once the view is enabled.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from gymnasium import spaces

from protocols.codec.spaces import encode_space

log = logging.getLogger(__name__)


def flat_action_dim(space: spaces.Space) -> int:
    """How many floats one agent's action takes in the joint action vector."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    raise TypeError(f"the global view flattens Discrete, MultiDiscrete and Box actions, got {space!r}")


def flatten_actions(space: spaces.Space, batched: np.ndarray) -> np.ndarray:
    """(K, *action_shape) actions of one agent -> (K, flat_action_dim) float32."""
    batched = np.asarray(batched)
    count = batched.shape[0]
    if isinstance(space, spaces.Discrete):
        one_hot = np.zeros((count, int(space.n)), dtype=np.float32)
        one_hot[np.arange(count), batched.reshape(count).astype(np.int64) - int(space.start)] = 1.0
        return one_hot
    if isinstance(space, spaces.Box):
        return batched.reshape(count, -1).astype(np.float32)
    if isinstance(space, spaces.MultiDiscrete):
        parts = []
        for column, n in enumerate(np.asarray(space.nvec).reshape(-1)):
            one_hot = np.zeros((count, int(n)), dtype=np.float32)
            one_hot[np.arange(count), batched.reshape(count, -1)[:, column].astype(np.int64)] = 1.0
            parts.append(one_hot)
        return np.concatenate(parts, axis=1)
    raise TypeError(f"the global view flattens Discrete, MultiDiscrete and Box actions, got {space!r}")


def has_state(env: Any) -> bool:
    return callable(getattr(env, "state", None)) and isinstance(getattr(env, "state_space", None), spaces.Box)


_failures_logged: set[str] = set()


def read_state(env: Any) -> np.ndarray:
    """`env.state()` as float32, or NaN of the state's shape where it raises: a legal env may
    have no state at some moments (multiwalker_v9's `state()` raises AttributeError once its
    walkers are gone at an episode's end), and that must not stop the server. Each kind of
    failure is logged once, naming the env and the exception."""
    try:
        return np.asarray(env.state(), dtype=np.float32)
    except Exception as error:  # noqa: BLE001 - any env's own bug; said in the log, NaN on the wire
        what = f"{type(error).__name__}: {error}"
        if what not in _failures_logged:
            _failures_logged.add(what)
            log.error("the env's state() raised %s; the global view sends NaN for that state "
                      "(logged once per kind of failure)", what)
        return np.full(env.state_space.shape, np.nan, dtype=np.float32)


class StateTracking:
    """A thin ParallelEnv wrapper that remembers the global state right after each `step`.

    Everything else is passed through to the wrapped env (`__getattr__`), so the vector env sees
    the same env. `track` is switched on by `GlobalView.enable`; until then `step` is untouched.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.track = False
        self.state_after_step: np.ndarray | None = None

    def step(self, actions):
        result = self.env.step(actions)
        if self.track and has_state(self.env):
            self.state_after_step = read_state(self.env)
        return result

    def reset(self, *args, **kwargs):
        return self.env.reset(*args, **kwargs)

    @property
    def agents(self) -> list[str]:
        # Read twice per copy and step by the vector env: `__getattr__` runs only after the usual
        # lookup has failed, which costs ~1 us each time.
        return self.env.agents

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


class GlobalView:
    """Computes the global-view fields of the observations from the vector env's copies.

    The constructor wraps the vector envs' copies in `StateTracking` (once, when the server is
    built); with copies in worker processes the view is unavailable and a join that asks is refused. `enable` is called when the first client asks for the view; before that
    `after_reset` / `after_step` return at once.
    """

    def __init__(self, envs: Any, eval_envs: Any | None = None) -> None:
        self.envs = envs
        self.possible_agents: list[str] = list(envs.possible_agents)
        self.enabled = False
        self._held_training: dict[str, np.ndarray | None] | None = None
        # The view reads state() from the env copies, so they must live in this process.
        self.available = hasattr(envs, "copies") and (eval_envs is None or hasattr(eval_envs, "copies"))
        self.unavailable_reason = (
            "the global view needs the env copies in the server process (env.num_workers: 1); "
            "this server steps them in worker processes"
        )
        if not self.available:
            return
        first = envs.copies[0]
        self.uses_env_state = has_state(first)
        not_box = [a for a in self.possible_agents if not isinstance(envs.observation_spaces[a], spaces.Box)]
        if not self.uses_env_state and not_box:
            # Unavailable, not an error: a server of such an env serves every client that does
            # not ask for the view (a join that asks is refused with this reason).
            self.available = False
            self.unavailable_reason = (f"env without state(): the global view concatenates Box observations, but "
                                       f"{not_box[0]!r} observes {envs.observation_spaces[not_box[0]]!r}")
            return
        self.wrap(envs)
        if eval_envs is not None:
            self.wrap(eval_envs)
        if self.uses_env_state:
            self.state_space: spaces.Box = first.state_space
        else:
            dims = [int(np.prod(envs.observation_spaces[a].shape)) for a in self.possible_agents]
            self.state_space = spaces.Box(-np.inf, np.inf, (sum(dims),), np.float32)
        self.joint_action_dim = sum(flat_action_dim(envs.action_spaces[a]) for a in self.possible_agents)
        self.global_state: np.ndarray | None = None
        self.final_global_state: np.ndarray | None = None
        self.joint_action: np.ndarray | None = None

    @staticmethod
    def wrap(envs: Any) -> None:
        """Wrap each copy so the state an episode ended in survives the autoreset."""
        envs.copies = [c if isinstance(c, StateTracking) else StateTracking(c) for c in envs.copies]

    def enable(self) -> None:
        if not self.enabled:
            self.enabled = True
            for copy in self.envs.copies:
                if isinstance(copy, StateTracking):
                    copy.track = True

    def welcome(self) -> dict[str, Any]:
        """What the welcome tells a subscriber (`EnvWelcome.global_view`)."""
        return {
            "state_space": encode_space(self.state_space),
            "source": "env.state()" if self.uses_env_state else "concatenated observations",
            "joint_action_dim": self.joint_action_dim,
        }

    def after_reset(self, result: Any, envs: Any | None = None) -> None:
        """Record the first states. A reset of other copies (the evaluation copies) sets the
        training view aside until `restore_training`: the held-back training observation is
        sent after the evaluation with its own fields."""
        if not self.enabled:
            return
        if envs is not None and envs is not self.envs:
            self._held_training = self.fields()
        self.global_state = self._current_states(result.observations, envs)
        self.final_global_state = self.global_state
        self.joint_action = None

    def after_step(self, actions: dict[str, Any], result: Any, envs: Any | None = None) -> None:
        """Record the state after the step and the joint action that led there.

        `envs` is the vector env that was stepped (the evaluation copies differ from training).
        """
        if not self.enabled:
            return
        envs = envs if envs is not None else self.envs
        self.joint_action = np.concatenate(
            [flatten_actions(envs.action_spaces[a], actions[a]) for a in self.possible_agents], axis=1
        )
        self.global_state = self._current_states(result.observations, envs)
        starts = np.asarray(result.episode_start, dtype=bool)
        if not starts.any():
            self.final_global_state = self.global_state
            return
        final = self.global_state.copy()
        if self.uses_env_state:
            for index in np.flatnonzero(starts):
                copy = envs.copies[index]
                recorded = getattr(copy, "state_after_step", None)
                if recorded is None:
                    raise RuntimeError("global view: an env copy is not wrapped in StateTracking; call GlobalView.wrap")
                final[index] = recorded
        else:
            final_obs = {a: result.final_observations.get(a, result.observations[a]) for a in self.possible_agents}
            final[starts] = self._concatenated(final_obs)[starts]
        self.final_global_state = final

    def restore_training(self) -> None:
        if self._held_training is not None:
            self.global_state = self._held_training["global_state"]
            self.final_global_state = self._held_training["final_global_state"]
            self.joint_action = self._held_training["joint_action"]
            self._held_training = None

    def fields(self) -> dict[str, np.ndarray | None]:
        """The observation fields for a subscriber."""
        return {
            "global_state": self.global_state,
            "final_global_state": self.final_global_state,
            "joint_action": self.joint_action,
        }

    def _current_states(self, observations: dict[str, Any], envs: Any | None = None) -> np.ndarray:
        envs = envs if envs is not None else self.envs
        if self.uses_env_state:
            return np.stack([read_state(copy) for copy in envs.copies])
        return self._concatenated(observations)

    def _concatenated(self, observations: dict[str, Any]) -> np.ndarray:
        parts = [np.asarray(observations[a], dtype=np.float32) for a in self.possible_agents]
        return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)
