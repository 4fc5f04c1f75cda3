"""Goal modules: how an autotelic agent picks the goal it pursues in an episode.

ALGORITHMS.md section 2 (Dec-IMSAP). Every module plays one role, `GoalModule`:
`propose(episode)` gives the goal for the coming episode and `observe_outcome(episode, goal,
reward)` tells it how that went. Goals are integer indices (goal_lines: `goal_table(L)`). The
modules are plain Python and numpy, so the agent node, the in-process benchmark and the tests
drive the same objects; the ones that talk to peers (negotiation) wrap a
sans-IO engine of `protocols/` and leave the sending to the node.

Modules:
- `UniformGoals`: independent uniform sampling (the lower bound; alignment at chance).
- `LearningProgressGoals`: sample in proportion to |learning progress| per goal, epsilon-uniform.
- `PAlignedGoals`: with probability p the team shares one goal, drawn from a stream every member
  seeds the same way (no messages); otherwise each samples its own.
- `SupervisorAssignment` (the supervisor's logic: one goal per team per episode) and
  `SupervisedGoals` (the agent's side: pursue what the supervisor assigned). In a run the
  supervisor is the team member with the smallest node id, which sends its draw over the wire
  (`protocols/engines/supervision.py`, driven by `agent_node/goals/session.py`).
- `NegotiatedGoals`: adapter to `protocols/engines/negotiation.py`'s engine; an inner module draws the
  agent's own goal (kept when it leads or hears nothing).

Every module takes its seed from the caller, who derives it with
`derive_seed(run_seed, node_index, stream)`.

What survives a restart: each module that keeps state has `state_dict()` / `load_state_dict()`
(numpy generator states as their plain dict of ints and strings, windows as lists of floats), so
that a node's checkpoint, loaded with `torch.load(..., weights_only=True)`, puts a module back
where it was: the same next draws and the same learning progress. A state from another kind of
module, or for another goal set, is refused with a clear error.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from protocols.engines.negotiation import NegotiationEngine, NegotiationOutcome, NegotiationRequest
from protocols.engines.team_negotiation import TeamNegotiationEngine


@runtime_checkable
class GoalModule(Protocol):
    """Picks this agent's goal for each episode and hears how it went."""

    def propose(self, episode: int) -> int: ...

    def observe_outcome(self, episode: int, goal: int, reward: float) -> None: ...


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as plain data (PCG64: a dict of ints and a name), copied."""
    return copy.deepcopy(rng.bit_generator.state)


def _load_rng_state(rng: np.random.Generator, state: Mapping[str, Any], what: str) -> None:
    name = type(rng.bit_generator).__name__
    if not isinstance(state, Mapping) or state.get("bit_generator") != name:
        raise ValueError(f"{what}: expected the state of a {name} generator, got {state!r}")
    rng.bit_generator.state = copy.deepcopy(dict(state))


def _check_kind(state: Mapping[str, Any], kind: str, goals: np.ndarray) -> None:
    """A state saved by another module kind or over another goal set would be wrong silently."""
    if state.get("kind") != kind:
        raise ValueError(f"expected a {kind} goal module state, got one of kind {state.get('kind')!r}")
    saved = [int(goal) for goal in state["goals"]]
    if saved != goals.tolist():
        raise ValueError(f"{kind} state is over goals {saved}, this module's goals are {goals.tolist()}")


def _goal_array(goals: Sequence[int]) -> np.ndarray:
    array = np.array(sorted(set(int(g) for g in goals)), dtype=np.int64)
    if array.size == 0 or array.min() < 0:
        raise ValueError(f"goals must be a non-empty set of non-negative indices, got {list(goals)!r}")
    return array


# ------------------------------------------------------------------------------------------
# Independent selection
# ------------------------------------------------------------------------------------------


class UniformGoals:
    """Each episode a goal drawn uniformly from `goals`, independently of everyone else."""

    KIND = "uniform"  # the state's kind (a checkpoint of another module is refused)
    DRAWS = "uniform goals"  # whose generator a bad saved state is named after

    def __init__(self, goals: Sequence[int], seed: int) -> None:
        self.goals = _goal_array(goals)
        self._rng = np.random.default_rng(seed)

    def propose(self, episode: int) -> int:
        return int(self._rng.choice(self.goals))

    def observe_outcome(self, episode: int, goal: int, reward: float) -> None:
        pass  # uniform sampling learns nothing

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "goals": self.goals.tolist(), "rng": _rng_state(self._rng)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_kind(state, self.KIND, self.goals)
        _load_rng_state(self._rng, state["rng"], self.DRAWS)


class LearningProgressGoals:
    """Learning-progress sampling (Dec-IMSAP's optional mode, after Colas et al.'s CURIOUS).

    Competence of a goal = its success rate (reward > 0). For each goal the last `window`
    attempts are kept; its learning progress is the difference between the success rate of the
    newer half and of the older half of that window. With probability `epsilon` a goal is drawn
    uniformly, otherwise in proportion to |LP| (uniformly while every |LP| is zero). The absolute
    value sends the agent back to goals it is forgetting.
    """

    def __init__(self, goals: Sequence[int], seed: int, *, window: int = 100, epsilon: float = 0.2) -> None:
        if window < 2 or window % 2:
            raise ValueError(f"window must be an even number >= 2, got {window}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.goals = _goal_array(goals)
        self.window = window
        self.epsilon = epsilon
        self._attempts = {int(goal): deque(maxlen=window) for goal in self.goals}
        self._rng = np.random.default_rng(seed)

    def learning_progress(self) -> np.ndarray:
        """|LP| per goal, in the order of `self.goals`."""
        progress = np.zeros(len(self.goals))
        for index, goal in enumerate(self.goals):
            attempts = np.array(self._attempts[int(goal)], dtype=np.float64)
            if attempts.size >= 2:
                half = attempts.size // 2
                progress[index] = abs(attempts[half:].mean() - attempts[:half].mean())
        return progress

    def propose(self, episode: int) -> int:
        progress = self.learning_progress()
        if self._rng.random() < self.epsilon or progress.sum() == 0:
            return int(self._rng.choice(self.goals))
        return int(self._rng.choice(self.goals, p=progress / progress.sum()))

    def observe_outcome(self, episode: int, goal: int, reward: float) -> None:
        if goal not in self._attempts:
            raise ValueError(f"goal {goal} is not one of this module's goals {self.goals.tolist()}")
        self._attempts[goal].append(1.0 if reward > 0 else 0.0)

    def state_dict(self) -> dict[str, Any]:
        """The windows (per goal, in the order of `self.goals`, oldest attempt first) and the generator."""
        return {
            "kind": "learning_progress",
            "goals": self.goals.tolist(),
            "window": self.window,
            "attempts": [list(self._attempts[int(goal)]) for goal in self.goals],
            "rng": _rng_state(self._rng),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_kind(state, "learning_progress", self.goals)
        attempts = [[float(outcome) for outcome in window] for window in state["attempts"]]
        if len(attempts) != len(self.goals):
            raise ValueError(f"learning_progress state has {len(attempts)} windows, this module {len(self.goals)} goals")
        if int(state["window"]) != self.window:
            # A shorter window would drop attempts, a longer one hold fewer than it should: both
            # change the learning progress the module would have computed.
            raise ValueError(f"learning_progress state has window {int(state['window'])}, this module {self.window} (goals.lp_window)")
        _load_rng_state(self._rng, state["rng"], "learning progress goals")
        self._attempts = {int(goal): deque(window, maxlen=self.window) for goal, window in zip(self.goals, attempts)}


class PAlignedGoals:
    """With probability `p` the whole team pursues one goal, otherwise each its own.

    The team's draws (aligned or not, and the shared goal) come from a generator every member
    seeds with the same `team_seed` (e.g. `derive_seed(run_seed, 0, "p_aligned/<team>")`) and
    advances once per episode, so the members agree without talking. `own_seed` drives the
    agent's independent draws. Not aligned means independent: the two may still agree by chance.
    """

    def __init__(self, goals: Sequence[int], p: float, *, team_seed: int, own_seed: int) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.goals = _goal_array(goals)
        self.p = p
        self._team_seed = team_seed
        self._own_rng = np.random.default_rng(own_seed)

    def propose(self, episode: int) -> int:
        # Seeded per episode so an agent that missed episodes stays in step with its team.
        team_rng = np.random.default_rng([self._team_seed, episode])
        aligned = team_rng.random() < self.p
        shared_goal = int(team_rng.choice(self.goals))
        own_goal = int(self._own_rng.choice(self.goals))
        return shared_goal if aligned else own_goal

    def observe_outcome(self, episode: int, goal: int, reward: float) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Only the own generator: the team's draws are seeded per episode and need no state."""
        return {"kind": "p_aligned", "goals": self.goals.tolist(), "own_rng": _rng_state(self._own_rng)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_kind(state, "p_aligned", self.goals)
        _load_rng_state(self._own_rng, state["own_rng"], "p-aligned goals")


# ------------------------------------------------------------------------------------------
# External supervisor
# ------------------------------------------------------------------------------------------


class SupervisorAssignment(UniformGoals):
    """The supervisor's logic: one goal, drawn uniformly (UniformGoals' draw), for the whole team
    each episode."""

    KIND = "supervisor"
    DRAWS = "supervisor draws"

    def assign(self, episode: int, team: Sequence[str]) -> dict[str, int]:
        if not team:
            raise ValueError(f"episode {episode}: a supervisor assigns goals to a non-empty team")
        goal = self.propose(episode)
        return {agent: goal for agent in team}


class SupervisedGoals:
    """The agent's side of supervision: pursue the goal assigned for the episode."""

    def __init__(self, goals: Sequence[int]) -> None:
        self.goals = _goal_array(goals)
        self._assigned: dict[int, int] = {}

    def receive(self, episode: int, goal: int) -> None:
        if goal not in self.goals:
            raise ValueError(f"supervisor assigned goal {goal} for episode {episode}; allowed goals are {self.goals.tolist()}")
        self._assigned[episode] = int(goal)

    def propose(self, episode: int) -> int:
        try:
            return self._assigned.pop(episode)
        except KeyError:
            raise RuntimeError(f"no goal assigned for episode {episode} (have {sorted(self._assigned)})") from None

    def observe_outcome(self, episode: int, goal: int, reward: float) -> None:
        pass


# ------------------------------------------------------------------------------------------
# Negotiation
# ------------------------------------------------------------------------------------------


class NegotiatedGoals:
    """Adapter between the node and `NegotiationEngine` (the naming game) or
    `TeamNegotiationEngine` (protocols/engines/team_negotiation.py, the team flood).

    Per episode: `request(episode, team_neighbours, rounds, team_size)` draws the own goal from `inner` and
    returns the `NegotiationRequest` the node passes to `engine.start`; once `engine.done`,
    `propose(episode)` returns the negotiated goal; after the episode `observe_outcome` closes the
    engine's record (feeding the M update) and tells `inner`.
    """

    def __init__(self, engine: NegotiationEngine | TeamNegotiationEngine, inner: GoalModule) -> None:
        self.engine = engine
        self.inner = inner

    def request(self, episode: int, team_neighbours: Sequence[str], rounds: int, team_size: int | None = None) -> NegotiationRequest:
        return NegotiationRequest(episode, self.inner.propose(episode), list(team_neighbours), rounds, team_size)

    def propose(self, episode: int) -> int:
        if not self.engine.done:
            raise RuntimeError(f"episode {episode}: negotiation has not decided yet")
        outcome: NegotiationOutcome = self.engine.result
        if outcome.episode != episode:
            raise RuntimeError(f"negotiation decided episode {outcome.episode}, not {episode}")
        return outcome.goal

    def observe_outcome(self, episode: int, goal: int, reward: float) -> None:
        self.engine.end_episode(episode, reward)
        self.inner.observe_outcome(episode, goal, reward)

    def state_dict(self) -> dict[str, Any]:
        """The inner module's state (the engine's matrix is saved beside it by the session)."""
        return {"kind": "negotiated", "inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != "negotiated":
            raise ValueError(f"expected a negotiated goal module state, got one of kind {state.get('kind')!r}")
        self.inner.load_state_dict(state["inner"])
