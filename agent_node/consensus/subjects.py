"""What an agent averages with its neighbours, and when: the `consensus.what` of a run.

The node's loop runs the consensus engine (network, rounds, deadlines); a *subject* supplies
the tensors to average and takes the averaged ones back:

    tick(step)         the latest consensus tick at or before this lockstep step (None before
                       the first): a number computed from the env server's step alone
    prepare(tick)      the named tensors to average (fitting a world model first if needed)
    adopt(averaged, N) use the averaged tensors (None: consensus is off, keep the local ones);
                       returns scalar metrics

Subjects:
- `OGMARLWorldModel`   the OG-MARL learner's GP: refit on fresh data, average the natural
                       parameters, imagine with the fused model (on the learner's refresh ticks).
- `LocalWorldModel`    a world model the node trains beside a model-free learner on samples of
                       its replay buffer (`world_model_statistics` for a GP, `..._parameters`
                       for an ensemble): the shared model of the dynamics the agents build
                       together. A DQN learner reads it only with `agents.world_model_bonus`:
                       an exploration bonus, the ensemble members' disagreement on a row.
- `PolicyParameters`   the learner's policy network parameters (`ParamSource`).

**Symmetric matrices travel as their upper triangle.** A world model whose statistics hold a
symmetric matrix (the sparse GP's precision J: 900 x 900 float64, 6.5 MB, mixed 100 rounds per
refresh, each share signed and checked on both ends) names it in `symmetric_statistics`; the
subject then hands the consensus engine that matrix's upper triangle as a vector, half the bytes,
and rebuilds the matrix from the averaged triangle. Averaging is entry by entry, so the averaged
triangle is the averaged matrix's, and the rebuilt matrix is bitwise the one full matrices would
have given (a model's exported J is exactly symmetric, `SparseGPWorldModel.fit`). What the
engine reports about the shares (their distances) is then over the vectors that travelled.

Why ticks of the env server's step, and nothing an agent counts itself: every agent hears the
same step numbers, so the tick, which is the consensus run's epoch, is the same on all of them
and their runs line up without extra coordination, also for an agent that missed the tick's
own step (cut off by a partition while the env server played its default action, or busy
averaging while it stepped on): it starts the run at the first step it does see, under the same
epoch. A count of the agent's own rows drifts in exactly those cases, and runs with different
epochs wait for each other's shares until their rounds time out (`ConsensusSession` starts each
tick at most once; see `protocols/engines/consensus.py` for a run the neighbours have moved past).
"""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np
from gymnasium import spaces

from agent_node.roles import ModelBasedLearner, ParamSource, ReplayLearner
from agent_node.world_models import build_world_model
from agent_node.world_models.config import WorldModelConfig


class ConsensusSubject(Protocol):
    def tick(self, step: int) -> int | None: ...

    def prepare(self, tick: int) -> dict[str, np.ndarray]: ...

    def adopt(self, averaged: Mapping[str, np.ndarray] | None, num_agents: int) -> dict[str, float]: ...


class OGMARLWorldModel:
    """The learner's refresh ticks, on the row clock step x K (K vectorized env copies: one row
    per copy and step, the rows an agent that saw every step has observed)."""

    def __init__(self, learner: ModelBasedLearner, num_copies: int = 1) -> None:
        _require_role(learner, ModelBasedLearner, "learner kind og_marl (a model-based learner)")
        self.learner = learner
        self.num_copies = num_copies
        self.wire = SymmetricPacking((), {})  # set by each prepare()

    def tick(self, step: int) -> int | None:
        rows = step * self.num_copies
        # A tick the learner refreshed already (before a restart, say) is not run again.
        return self.learner.refresh_tick(rows) if self.learner.model_refresh_due(rows) else None

    def prepare(self, tick: int) -> dict[str, np.ndarray]:
        statistics = self.learner.fit_world_model(rows=tick)
        model = getattr(self.learner, "world_model", None)
        self.wire = SymmetricPacking(getattr(model, "symmetric_statistics", ()), statistics)
        return self.wire.pack(statistics)

    def adopt(self, averaged, num_agents):
        return self.learner.adopt_world_model(None if averaged is None else self.wire.unpack(averaged), num_agents)


class PolicyParameters:
    """The policy's parameters. With `keep_local_progress` (talking in env steps: the average
    lands some steps after the tick, while the learner went on learning) the agent adopts the
    average as a change, params + (average - params at the tick), and keeps what it learned
    meanwhile; otherwise (the run held the learner) it takes the average itself."""

    def __init__(self, learner: ParamSource, period_steps: int, keep_local_progress: bool = False) -> None:
        _require_role(learner, ParamSource, "consensus.what: policy_parameters")
        self.learner = learner
        self.period_steps = period_steps
        self.keep_local_progress = keep_local_progress
        self._at_tick: dict[str, np.ndarray] = {}

    def tick(self, step: int) -> int | None:
        return _period_tick(step, self.period_steps)

    def prepare(self, tick: int) -> dict[str, np.ndarray]:
        params = self.learner.get_params()
        if self.keep_local_progress:
            self._at_tick = {name: np.array(value, copy=True) for name, value in params.items()}
        return params

    def adopt(self, averaged, num_agents):
        if averaged is None:
            return {}
        if not self.keep_local_progress:
            self.learner.set_params(averaged)
            return {}
        now = self.learner.get_params()
        self.learner.set_params({name: now[name] + (averaged[name] - self._at_tick[name]).astype(now[name].dtype)
                                 for name in averaged})
        drift = sum(float(np.sum((now[name] - self._at_tick[name]) ** 2)) for name in averaged) ** 0.5
        return {"consensus/local_drift_since_tick": drift}


class LocalWorldModel:
    """A world model fit on samples of the learner's replay buffer, every `period_steps`."""

    def __init__(
        self,
        learner: ReplayLearner,
        world_model_config: WorldModelConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *,
        period_steps: int,
        fit_transitions: int,
        average: str,  # "world_model_statistics" | "world_model_parameters"
        seed: int,
        sampler_seed: int,
        num_copies: int = 1,
        bonus_weight: float = 0.0,
    ) -> None:
        """`seed` builds the model (its initial weights, its own draws); `sampler_seed` draws the
        replay rows it is fit on. Separate streams: changing how often the model is fit does not
        change the learner's minibatches or the model's initialization. `bonus_weight`: see
        `exploration_bonus`."""
        _require_role(learner, ReplayLearner, f"consensus.what: {average} (a world model fit on the replay buffer)")
        if not callable(getattr(learner.replay, "sample", None)):
            # A learner's `replay` may be only what persistence saves (an on-policy rollout).
            raise TypeError(f"consensus.what: {average} fits the world model on rows sampled from the learner's replay, "
                            f"and {type(learner).__name__}.replay ({type(learner.replay).__name__}) has no sample()")
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"a world model needs a Box observation space, got {observation_space}")
        self.learner = learner
        self.action_space = action_space
        self.period_steps = period_steps
        self.fit_transitions = fit_transitions
        self.num_copies = num_copies
        self.average = average
        state_dim = int(np.prod(observation_space.shape))
        # Discrete actions enter the model one-hot.
        action_dim = int(action_space.n) if isinstance(action_space, spaces.Discrete) else int(np.prod(action_space.shape))
        self.model = build_world_model(world_model_config, state_dim, action_dim, seed)
        self.sampler = np.random.default_rng(sampler_seed)
        self.wire = SymmetricPacking((), {})  # set by each prepare()
        self.bonus_weight = bonus_weight
        # The members' mean disagreement on the rows of the last refresh: the bonus's unit (None
        # before the first refresh, when the members disagree only by their initial draws).
        self.disagreement_scale: float | None = None

    def tick(self, step: int) -> int | None:
        """Every `period_steps`, from the first tick by which an agent that saw every step holds
        `fit_transitions` rows (step x K copies)."""
        tick = _period_tick(step, self.period_steps)
        return tick if tick is not None and tick * self.num_copies >= self.fit_transitions else None

    def _sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = self.learner.replay.sample(self.fit_transitions, rng=self.sampler)
        next_states = batch["next_obs"].reshape(len(batch["next_obs"]), -1)
        return *self._model_inputs(batch["obs"], batch["action"]), next_states

    def _model_inputs(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replay rows as the model takes them: flat states, and discrete actions one-hot. A replay
        holds a discrete action as its index 0..n-1 (the DQN family's `observe`), not as the env's
        value from `start` on."""
        if isinstance(self.action_space, spaces.Discrete):
            actions = np.eye(self.action_space.n, dtype=np.float32)[actions.astype(np.int64)]
        return obs.reshape(len(obs), -1), actions.reshape(len(actions), -1)

    def disagreement(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Per row, the spread of the members' predicted next states: the square root of their
        variance summed over the state's dimensions (every member, not only the elites: the
        spread is the signal, Pathak et al. 2019, "Self-Supervised Exploration via Disagreement")."""
        member_means, _ = self.model.member_predictions(states, actions)
        return np.sqrt(member_means.var(axis=0).sum(axis=1))

    def exploration_bonus(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The reward bonus of replay rows (`obs`, `actions` as the learner's replay stores them):
        `bonus_weight` x the members' disagreement in units of its mean on the last refresh's
        rows, so the weight is in reward units; zeros before the first refresh."""
        if self.disagreement_scale is None:
            return np.zeros(len(obs), np.float32)
        return (self.bonus_weight / self.disagreement_scale * self.disagreement(*self._model_inputs(obs, actions))).astype(np.float32)

    def prepare(self, tick: int) -> dict[str, np.ndarray]:
        # An empty buffer (an agent that saw no step yet) has nothing to fit: it shares the
        # model as it is, as its neighbours expect a share from it at this tick.
        self.fit_metrics = self.model.fit(*self._sample()) if len(self.learner.replay) > 0 else {}
        if self.average == "world_model_parameters":
            tensors = self.model.get_params()
            self.wire = SymmetricPacking((), tensors)
        else:
            tensors = self.model.export_statistics()
            self.wire = SymmetricPacking(getattr(self.model, "symmetric_statistics", ()), tensors)
        return self.wire.pack(tensors)

    def adopt(self, averaged, num_agents):
        metrics = {f"world_model/{k.split('/')[-1]}": float(v) for k, v in self.fit_metrics.items()}
        if len(self.learner.replay) == 0:
            if averaged is not None:
                self._set(averaged, num_agents)
            return metrics
        states, actions, next_states = self._sample()  # fresh local data, to score both models
        metrics["world_model/local_mse"] = self._mse(states, actions, next_states)
        if averaged is not None:
            self._set(averaged, num_agents)
            metrics["world_model/averaged_mse"] = self._mse(states, actions, next_states)
        if self.bonus_weight > 0:
            self.disagreement_scale = max(float(self.disagreement(states, actions).mean()), _SMALLEST_DISAGREEMENT)
            metrics["world_model/disagreement_mean"] = self.disagreement_scale
        return metrics

    def _set(self, averaged, num_agents) -> None:
        averaged = self.wire.unpack(averaged)
        if self.average == "world_model_parameters":
            self.model.set_params(averaged)
        else:
            self.model.import_statistics(averaged, num_agents)

    def _mse(self, states, actions, next_states) -> float:
        mean, _ = self.model.predict(states, actions)
        return float(np.mean((mean - next_states) ** 2))


class SymmetricPacking:
    """The wire form of one consensus run's tensors: each named symmetric matrix as its upper
    triangle (row by row, diagonal included), everything else as it is. See the module docstring."""

    def __init__(self, names: tuple[str, ...], tensors: Mapping[str, np.ndarray]) -> None:
        # name -> (rows, columns) of the upper triangle, the order its entries travel in.
        self.triangles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in names:
            matrix = tensors.get(name)
            if matrix is None:
                continue
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
                raise ValueError(f"{name!r} is declared symmetric but has shape {matrix.shape} (expected a square matrix)")
            self.triangles[name] = np.triu_indices(matrix.shape[0])

    def pack(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        packed = dict(tensors)
        for name, triangle in self.triangles.items():
            packed[name] = tensors[name][triangle]
        return packed

    def unpack(self, averaged: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unpacked = dict(averaged)
        for name, (rows, columns) in self.triangles.items():
            values = averaged[name]
            size = int(rows[-1]) + 1
            if values.shape != rows.shape:
                raise ValueError(f"averaged {name!r}: expected the upper triangle of a {size} x {size} matrix "
                                 f"({rows.size} entries), got shape {values.shape}")
            matrix = np.empty((size, size), values.dtype)
            matrix[rows, columns] = values
            matrix[columns, rows] = values
            unpacked[name] = matrix
        return unpacked


# A floor under the bonus's unit: members that agree to float precision must not blow it up.
_SMALLEST_DISAGREEMENT = 1e-8


def _period_tick(step: int, period_steps: int) -> int | None:
    """The latest multiple of `period_steps` at or before `step`, from `period_steps` on."""
    return None if step < period_steps else step // period_steps * period_steps


def _require_role(learner: object, role: type, needed_by: str) -> None:
    if not isinstance(learner, role):
        raise TypeError(f"{needed_by} needs a learner that is a {role.__name__} (agent_node/roles.py); "
                        f"{type(learner).__name__} is not")
