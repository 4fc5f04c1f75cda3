"""Goal-conditioned Double DQN with hindsight experience replay (HER), for one agent.

References, to check this file against:
- Schaul et al. 2015, "Universal Value Function Approximators": one Q-network over (state, goal);
  here the goal enters as a one-hot vector appended to the observation (or, for cell goals, the
  cell's coordinates: `goal_features`).
- Andrychowicz et al. 2017, "Hindsight Experience Replay": store each episode a second time with
  goals it achieved (`final`, `future` with k draws per transition), so sparse goal rewards turn
  into signal. The relabelling itself is `protocols/engines/hindsight.py`'s `relabel_episode`, shared with
  the hindsight engine, so goals learned from partners go through the same code.
- Mnih et al. 2015 / van Hasselt et al. 2016: replay, target network, epsilon-greedy, Double-DQN
  targets, Huber loss (as `agent_node/algos/dqn.py`).

How it is used (the goal-lines benchmark, and the agent node through
`agent_node/goals/session.py`, which conditions it on each episode's goal):
- `act(obs, goals)`: epsilon-greedy actions for K observations, each with its goal.
- `observe_episode(...)`: at the end of an episode, the agent's transitions (up to the step it
  terminated), the goal it pursued and the achieved-goal events `(step, goal)` (its own and its
  partners', merged by the hindsight engine or not) are stored: once with the pursued goal, and
  again for every (transition, goal) pair HER adds. Rewards come from `reward_fn(goal, achieved)`
  (goal_lines: `goal_reward`), and a transition terminates when its reward is positive.
- `update()`: the gradient steps due, one per `train_every` environment steps after
  `learning_starts` (relabelled rows add data, not environment steps).

The agent never sees messages or partner goals: goals are an input, the rest is plain DQN.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agent_node.algos.config import GoalDQNConfig
# DQN's network, its input the observation and the goal's features side by side.
from agent_node.algos.dqn import QNetwork
from agent_node.algos.learner_parts import (OwesGradientSteps, StateLayout, check_config, linear_schedule, steps_to_take,
                                            trainable_rows, update_counters)
from protocols.storage.files import atomic_write, read_sealed
from protocols.engines.hindsight import achieved_after_each_step, relabel_episode


RewardFn = Callable[[int, np.ndarray], float]


class GoalReplay:
    """A ring buffer of (obs, goal, action, reward, next_obs, terminated) rows."""

    def __init__(self, capacity: int, obs_dim: int, seed: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.goal = np.zeros(capacity, np.int64)
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.size = 0
        self.position = 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, goal, action, reward, next_obs, terminated) -> None:
        for index in range(len(goal)):
            slot = self.position
            self.obs[slot], self.next_obs[slot] = obs[index], next_obs[index]
            self.goal[slot], self.action[slot] = goal[index], action[index]
            self.reward[slot], self.terminated[slot] = reward[index], terminated[index]
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        indices = self.rng.integers(0, self.size, size=batch_size)
        return {name: getattr(self, name)[indices] for name in self.FIELDS}

    def __len__(self) -> int:
        return self.size

    FIELDS = ("obs", "goal", "action", "reward", "next_obs", "terminated")

    def save(self, path) -> None:
        """The filled rows, ring position and sampling RNG state, as an .npz written atomically
        (temporary file, fsync, rename) and sealed (agent_node/persistence.py), never pickled."""
        contents = {name: getattr(self, name)[: self.size] for name in self.FIELDS}
        contents["position"] = np.array(self.position, np.int64)
        contents["capacity"] = np.array(self.capacity, np.int64)
        contents["rng_state"] = np.array(json.dumps(self.rng.bit_generator.state))
        atomic_write(Path(path), lambda file: np.savez(file, **contents), sealed=True)

    def restore(self, path) -> None:
        with np.load(io.BytesIO(read_sealed(path)), allow_pickle=False) as saved:
            if int(saved["capacity"]) != self.capacity or saved["obs"].shape[1:] != self.obs.shape[1:]:
                raise ValueError(
                    f"{path}: a goal replay of capacity {int(saved['capacity'])} and obs {saved['obs'].shape[1:]}, "
                    f"this buffer has capacity {self.capacity} and obs {self.obs.shape[1:]}"
                )
            size = saved["goal"].shape[0]
            for name in self.FIELDS:
                getattr(self, name)[:size] = saved[name]
            self.size, self.position = size, int(saved["position"])
            self.rng.bit_generator.state = json.loads(str(saved["rng_state"]))


class GoalDQNAgent(OwesGradientSteps):
    """Actor and learner for goal-conditioned Double DQN with HER (see the module docstring)."""

    STATE = StateLayout("goal_dqn", "goal DQN", modules=("q_network", "target_network"), optimizers=("optimizer",),
                        counters=("env_steps", "gradient_steps", "rows_relabelled"))

    def __init__(
        self, config: GoalDQNConfig, obs_dim: int, num_actions: int, num_goals: int, reward_fn: RewardFn, seed: int,
        goal_features: np.ndarray | None = None,
    ) -> None:
        check_config(config, GoalDQNConfig)
        self.config = config
        self.obs_dim, self.num_actions, self.num_goals = obs_dim, num_actions, num_goals
        self.reward_fn = reward_fn
        # Row g: what the network sees of goal g. One-hot by default; AMIGo's cell goals may use
        # the cell's coordinates instead (protocols/goal_spaces/cell_space.py `cell_features`).
        self.goal_features = np.eye(num_goals, dtype=np.float32) if goal_features is None else np.asarray(goal_features, np.float32)
        if self.goal_features.ndim != 2 or self.goal_features.shape[0] != num_goals:
            raise ValueError(f"goal_features must have one row per goal, shape ({num_goals}, d); got {self.goal_features.shape}")
        input_dim = obs_dim + self.goal_features.shape[1]
        init_seed, explore_seed, replay_seed, her_seed = np.random.SeedSequence(seed).spawn(4)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed.generate_state(1)[0]))
            self.q_network = QNetwork(input_dim, num_actions, config.hidden_sizes)
            self.target_network = QNetwork(input_dim, num_actions, config.hidden_sizes)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.target_network.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=config.learning_rate)
        self.explore_rng = np.random.default_rng(explore_seed)
        self.her_rng = np.random.default_rng(her_seed)
        self.replay = GoalReplay(config.buffer_size, obs_dim, int(replay_seed.generate_state(1)[0]))
        self.env_steps = 0
        self.gradient_steps = 0
        self.rows_relabelled = 0

    # ------------------------------------------------------------------ acting

    @property
    def epsilon(self) -> float:
        cfg = self.config
        return linear_schedule(cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_decay_steps, self.env_steps)

    def _inputs(self, obs: np.ndarray, goals: np.ndarray) -> torch.Tensor:
        goals = np.asarray(goals, dtype=np.int64)
        if goals.min(initial=0) < 0 or goals.max(initial=0) >= self.num_goals:
            raise ValueError(f"goals must lie in [0, {self.num_goals}), got {goals.tolist()}")
        return torch.as_tensor(np.concatenate([np.asarray(obs, np.float32), self.goal_features[goals]], axis=1))

    def act(self, obs: np.ndarray, goals: np.ndarray, explore: bool = True) -> np.ndarray:
        with torch.inference_mode():
            actions = self.q_network(self._inputs(obs, goals)).argmax(dim=1).numpy()
        if explore:
            random_rows = self.explore_rng.random(actions.shape[0]) < self.epsilon
            actions[random_rows] = self.explore_rng.integers(0, self.num_actions, size=int(random_rows.sum()))
        return actions

    # ------------------------------------------------------------------ learning

    def observe_episode(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        next_obs: np.ndarray,
        goal: int,
        events: Sequence[tuple[int, int]],
        extra_goal_events: Sequence[tuple[int, int]] = (),
    ) -> None:
        """Store one finished episode of this agent: `obs`, `actions`, `next_obs` have one row
        per transition it took (up to its termination); `events` are the achieved goals it saw,
        `extra_goal_events` those its partners reported (used for HER only)."""
        num_steps = len(actions)
        if not (len(obs) == len(next_obs) == num_steps):
            raise ValueError(f"obs, actions, next_obs must have one row per transition, got {len(obs)}, {num_steps}, {len(next_obs)}")
        if num_steps == 0:
            return
        own_events = [(s, g) for s, g in events if s < num_steps]
        achieved = achieved_after_each_step(own_events, num_steps)
        rewards = np.array([self.reward_fn(goal, achieved[t]) for t in range(num_steps)], np.float32)
        self.replay.add(obs, np.full(num_steps, goal), actions, rewards, next_obs, rewards > 0)
        self.env_steps += num_steps
        if self.config.her_strategy != "none":
            all_events = sorted({(int(s), int(g)) for s, g in list(own_events) + list(extra_goal_events) if s < num_steps})
            relabelled = relabel_episode(num_steps, all_events, self.reward_fn, self.config.her_strategy, k=self.config.her_k, rng=self.her_rng)
            keep = relabelled.goal != goal  # the pursued goal is stored already
            steps = relabelled.step[keep]
            self.replay.add(obs[steps], relabelled.goal[keep], actions[steps], relabelled.reward[keep], next_obs[steps], relabelled.terminated[keep])
            self.rows_relabelled += int(keep.sum())

    def observe_rows(self, obs, goals, actions, rewards, next_obs, terminated) -> None:
        """Store transitions whose rewards the caller computed (AMIGo's student: the reward
        depends on the time since the goal was proposed, which `reward_fn` cannot see); no HER."""
        goals = np.asarray(goals, dtype=np.int64)
        if goals.min(initial=0) < 0 or goals.max(initial=0) >= self.num_goals:
            raise ValueError(f"goals must lie in [0, {self.num_goals}), got {goals.tolist()}")
        self.replay.add(obs, goals, actions, np.asarray(rewards, np.float32), next_obs, np.asarray(terminated, np.float32))
        self.env_steps += len(goals)

    def gradient_steps_due(self) -> int:
        cfg = self.config
        return trainable_rows(self.env_steps, cfg.learning_starts, cfg.batch_size) // cfg.train_every - self.gradient_steps

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        steps = steps_to_take(max(self.gradient_steps_due(), 0), max_gradient_steps)
        losses = [self._gradient_step() for _ in range(steps)]
        # Steps of this call; the cumulative count is counters()["goal_dqn/gradient_steps"].
        metrics = {"goal_dqn/epsilon": self.epsilon, "goal_dqn/gradient_steps_this_update": float(len(losses))}
        if losses:
            metrics["goal_dqn/loss"] = float(np.mean(losses))
        return metrics

    def counters(self) -> dict[str, float]:
        """The update-ratio contract (agent_node/roles.py `Learner.counters`)."""
        counters = update_counters("goal_dqn", self.gradient_steps, max(self.gradient_steps_due(), 0), self.env_steps)
        return {**counters, "goal_dqn/rows_relabelled": float(self.rows_relabelled)}

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer and counters (`STATE`); the replay buffer is saved apart."""
        return self.STATE.save(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.STATE.load(self, state, {"optimizer": self.config.learning_rate})

    def _gradient_step(self) -> float:
        cfg = self.config
        batch = self.replay.sample(cfg.batch_size)
        inputs = self._inputs(batch["obs"], batch["goal"])
        next_inputs = self._inputs(batch["next_obs"], batch["goal"])
        action = torch.as_tensor(batch["action"])
        reward = torch.as_tensor(batch["reward"])
        terminated = torch.as_tensor(batch["terminated"])
        with torch.no_grad():
            next_action = self.q_network(next_inputs).argmax(dim=1, keepdim=True)  # Double DQN
            next_value = self.target_network(next_inputs).gather(1, next_action).squeeze(1)
            target = reward + cfg.gamma * (1.0 - terminated) * next_value
        q_taken = self.q_network(inputs).gather(1, action.unsqueeze(1)).squeeze(1)
        loss = F.smooth_l1_loss(q_taken, target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % cfg.target_update_period == 0:
            self.target_network.load_state_dict(self.q_network.state_dict())
        return float(loss.item())
