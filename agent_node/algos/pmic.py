"""PMIC on a decentralized MADDPG-style learner, for one agent with Box observations and Box actions.

References, to check this file against:
- Li et al. 2022, "PMIC: Improving Multi-Agent Reinforcement Learning with Progressive Mutual
  Information Collaboration" (ICML 2022, arXiv 2203.08553); public code `yeshenpy/PMIC`, read
  at commit ab3fee6 (`algorithms/mpe_new_maxminMADDPG.py`, `run_maxminMADDPG.py`, `ma_utils.py`).
- Lowe et al. 2017, "Multi-Agent Actor-Critic for Mixed Cooperative-Competitive Environments"
  (MADDPG): a deterministic actor per agent on its own observation, a critic on the global view
  and the joint action; section 4.2, "inferring policies of other agents", for agents that do
  not know each other's policies.
- The two MI estimators live in `agent_node/algos/mutual_information.py` (their math is there).

## What one agent learns, and from what

Each agent i runs in its own process and sees, per step, its own observation o_i, its own reward
r_i, and what the env server publishes for the roles that ask: the global state s and the joint
action u = (u_1, ..., u_N) of all agents (`Transition.global_state`, `.joint_action`). With
actions normalized to [-1, 1]:

    actor        mu_i(o_i)                   own observation -> own action (tanh)
    critic       Q_i(s, u)                   global state and joint action -> value
    teammates    m_i(s) = (u_j)_{j != i}     a model of the other agents' current actions

MADDPG's critic target needs the other agents' next actions from *their* target policies, which
a decentralized agent does not have. As MADDPG section 4.2 proposes, each agent fits its own
approximation of the others' policies from the actions it sees them take: here one regression
m_i(s) on the global state (the state contains each teammate's observation, so this can express
mu_j(o_j)), fit by least squares, which is maximum likelihood for Gaussian exploration noise
around a deterministic policy. The update, per gradient step on a replay batch:

    critic   y = r + gamma * (1 - terminated) * Q'_i(s', u'),  u'_i = mu'_i(o'_i), u'_j = m_i(s')_j
             y += alpha * I_JSD,k(s, u) - beta * I_CLUB,k(s, u)        (PMIC, once shaping is on)
             L_Q = E[(Q_i(s, u) - y)^2]
    actor    L_mu = -E[Q_i(s, u with u_i := mu_i(o_i))] + action_l2 * E[mu_i(o_i)^2]
             (teammates' actions from the batch, as in MADDPG's policy gradient)
    model    L_m = E[|m_i(s) - u_{-i}|^2]
    targets  Q'_i, mu'_i <- tau * online + (1 - tau) * target

A `truncated` row bootstraps; only `terminated` stops it. `I_JSD,k` and `I_CLUB,k` are the
per-transition estimates for row k of the batch, the other rows serving as negatives (the
reference does exactly this: `mine_policy(state, action)` and `club_policy(state, action)` on the
critic's batch, algorithms/mpe_new_maxminMADDPG.py:836-856).

## PMIC's two buffers (decentralized: every agent keeps its own)

Each agent follows its own episodes (rows grouped by `Transition.copy_index`) and, when one ends,
sorts its (s, u) pairs by the episode's return (the sum of this agent's rewards):

- **superior**: if the return beats both the superior buffer's lowest return and the mean of the
  last `return_average_window` (1,000) episode returns, all its pairs enter the superior buffer,
  which keeps the `superior_capacity` (1,000) pairs of the highest returns. The mean counts only
  once `return_average_min_episodes` (10) episodes were seen; an empty buffer has no lowest.
- **inferior**: every other episode's pairs, first in first out, `inferior_capacity` (1,000).

Once the superior buffer holds `shaping_starts_at` (500) pairs, every gradient step first trains
the JSD critic on a superior batch and CLUB's q(u|s) on an inferior batch (one step each, as the
reference with MI_update_freq = 1, run_maxminMADDPG.py:319-328), then shapes the critic target
with alpha * I_JSD - beta * I_CLUB. The CLUB term waits until the inferior buffer has data.

Facts from the reference code: admission compares the return with the superior buffer's lowest,
raised to the moving average of the last 1,000 returns once 10 are known
(run_maxminMADDPG.py:239-257), the current episode not included (it is appended at :355); a full
superior buffer overwrites its lowest entries first (`rank_storage` sorts ascending and resets the
write pointer to 0 when full, ma_utils.py:132-159); the inferior buffer is a plain ring
(ma_utils.py:211-221); the state is the concatenated observations (run_maxminMADDPG.py:352).
Where we differ: an empty superior buffer admits any episode beating the moving average (the
reference uses a fixed -500, :252, a number tied to its environment); on equal returns the newer
pairs are kept; the reference trains one central critic for all agents, here each agent has its
own; exploration noise is Gaussian, not Ornstein-Uhlenbeck (see PMICConfig).

## How it plugs into an agent node

- `observe(transition)` needs `global_state`, `next_global_state`, `joint_action` (environment
  scale, `possible_agents` order) and `copy_index` on every row, and checks that this agent's slice
  of the joint action is the action it sent (so a wrong `agent_index` or ordering fails loudly).
- The replay buffer `self.replay` stores, per row, the observation with the global state appended
  and the normalized joint action, so the node's `replay.save` / `restore` keep everything.
- `update()` runs one gradient step per `train_every` rows observed after `learning_starts`.
- `get_params` / `set_params` expose the actor. `state_dict` also carries the teammate model, the MI
  estimators and the two PMIC buffers; episodes in flight are not saved, so after a restore each
  copy's first (partial) episode is kept out of the PMIC buffers.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agent_node.algos.config import PMICConfig
from agent_node.algos.learner_parts import (
    OwesGradientSteps,
    check_algorithm,
    check_config,
    check_seed,
    check_space,
    check_tanh_bounds,
    linear_schedule,
    load_optimizer,
    run_gradient_steps,
    steps_to_take,
    trainable_rows,
    update_counters,
)
from agent_node.algos.mutual_information import GaussianCLUB, JSDMutualInformation, mlp
from agent_node.algos.params import load_module_params, module_params
from agent_node.replay import ReplayBuffer
from agent_node.roles import Transition

# The agent's own action must equal its slice of the published joint action; they travel as
# float32, so allow float32 rounding.
ACTION_MATCH_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------- networks


def relu_mlp(in_features: int, hidden_sizes: tuple[int, ...], out_features: int) -> nn.Sequential:
    """PMIC's networks use plain ReLU (the estimators in mutual_information use leaky ReLU)."""
    return mlp(in_features, hidden_sizes, out_features, activation=nn.ReLU)


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: tuple[nn.Module, float] | None = None) -> None:
    """One step of `optimizer` down `loss`; with `clip` (network, max norm), that network's gradient
    norm is clipped first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(clip[0].parameters(), clip[1])
    optimizer.step()


class TanhMLP(nn.Module):
    """A ReLU MLP squashed into [-1, 1] by tanh. Two of PMIC's networks: the actor mu(o), own
    observation -> action in [-1, 1]^A, and the teammate model m(s), global state -> the other
    agents' normalized actions, (B, (N-1) * A)."""

    def __init__(self, in_features: int, out_features: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.net = relu_mlp(in_features, hidden_sizes, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


class CentralizedCritic(nn.Module):
    """Q(s, u): global state and normalized joint action -> one value."""

    def __init__(self, state_dim: int, joint_action_dim: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.net = relu_mlp(state_dim + joint_action_dim, hidden_sizes, 1)

    def forward(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, joint_action], dim=1)).squeeze(1)


# ---------------------------------------------------------------------------------- PMIC buffers


class SuperiorBuffer:
    """The `capacity` (state, joint action) pairs of the highest episode returns seen so far."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int) -> None:
        self.capacity = capacity
        self.states = np.zeros((0, state_dim), np.float32)
        self.actions = np.zeros((0, action_dim), np.float32)
        self.returns = np.zeros((0,), np.float64)  # the return of the episode each pair came from

    def __len__(self) -> int:
        return len(self.returns)

    @property
    def lowest_return(self) -> float | None:
        return float(self.returns.min()) if len(self) else None

    def add_episode(self, states: np.ndarray, actions: np.ndarray, episode_return: float) -> None:
        """Merge an episode's pairs in and keep the `capacity` pairs of the highest returns.

        New pairs go first, so a stable sort keeps them over older pairs of an equal return.
        """
        returns = np.full(len(states), episode_return, np.float64)
        all_states = np.concatenate([states.astype(np.float32), self.states])
        all_actions = np.concatenate([actions.astype(np.float32), self.actions])
        all_returns = np.concatenate([returns, self.returns])
        keep = np.argsort(-all_returns, kind="stable")[: self.capacity]
        self.states, self.actions, self.returns = all_states[keep], all_actions[keep], all_returns[keep]

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        indices = rng.integers(0, len(self), size=batch_size)
        return self.states[indices], self.actions[indices]


class InferiorBuffer:
    """The last `capacity` (state, joint action) pairs of non-superior episodes, first in first out."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int) -> None:
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add_episode(self, states: np.ndarray, actions: np.ndarray) -> None:
        for state, action in zip(states[-self.capacity :], actions[-self.capacity :]):
            self.states[self.position], self.actions[self.position] = state, action
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        indices = rng.integers(0, self.size, size=batch_size)
        return self.states[indices], self.actions[indices]


class ExperienceSorter:
    """Sends each finished episode's pairs to the superior or the inferior buffer (see the module
    docstring for the rule), and remembers recent returns for the moving average."""

    def __init__(self, config: PMICConfig, state_dim: int, action_dim: int) -> None:
        self.config = config
        self.superior = SuperiorBuffer(config.superior_capacity, state_dim, action_dim)
        self.inferior = InferiorBuffer(config.inferior_capacity, state_dim, action_dim)
        self.recent_returns: deque[float] = deque(maxlen=config.return_average_window)

    def threshold(self) -> float:
        """The return an episode must exceed to be superior."""
        bars = [-np.inf]
        if len(self.superior):
            bars.append(self.superior.lowest_return)
        if len(self.recent_returns) >= self.config.return_average_min_episodes:
            bars.append(float(np.mean(self.recent_returns)))
        return max(bars)

    def add_episode(self, states: np.ndarray, actions: np.ndarray, episode_return: float) -> bool:
        """File an episode; True if it went to the superior buffer."""
        superior = episode_return > self.threshold()
        if superior:
            self.superior.add_episode(states, actions, episode_return)
        else:
            self.inferior.add_episode(states, actions)
        self.recent_returns.append(float(episode_return))
        return superior


# ---------------------------------------------------------------------------------- agent


class PMICAgent(OwesGradientSteps):
    """Actor, Learner and ParamSource for PMIC-MADDPG (or plain MADDPG with `pmic: false`)."""

    def __init__(
        self,
        config: PMICConfig,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        seed: int,
        *,
        state_space: gym.spaces.Space,
        num_agents: int,
        agent_index: int,
    ) -> None:
        check_config(config, PMICConfig)
        check_space(observation_space, gym.spaces.Box, "PMIC needs a Box observation space")
        check_space(state_space, gym.spaces.Box, "PMIC needs a Box global state space (the env server's state)")
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise TypeError(
                f"PMIC (a deterministic-actor learner) needs a 1-D Box action space, got {action_space!r}; "
                "for mpe2 environments set continuous_actions=True"
            )
        check_tanh_bounds(action_space, "PMIC")
        if not isinstance(num_agents, int) or num_agents < 2:
            raise ValueError(f"num_agents must be an int >= 2 (PMIC is about joint actions), got {num_agents!r}")
        if not isinstance(agent_index, int) or not 0 <= agent_index < num_agents:
            raise ValueError(f"agent_index must be in [0, {num_agents}), got {agent_index!r}")
        check_seed(seed)

        self.config = config
        self.action_space = action_space
        self.num_agents = num_agents
        self.agent_index = agent_index
        self.obs_shape = tuple(observation_space.shape)
        self.state_shape = tuple(state_space.shape)
        self.obs_dim = int(np.prod(self.obs_shape))
        self.state_dim = int(np.prod(self.state_shape))
        self.action_dim = int(action_space.shape[0])
        # Every agent has this agent's action space (homogeneous teams, as in MPE); the joint
        # action is the N actions concatenated in possible_agents order.
        self.joint_action_dim = num_agents * self.action_dim
        self.own_slice = slice(agent_index * self.action_dim, (agent_index + 1) * self.action_dim)

        low = action_space.low.astype(np.float64)
        high = action_space.high.astype(np.float64)
        self.action_center = (high + low) / 2.0
        self.action_half_range = (high - low) / 2.0
        joint_center = np.tile(self.action_center, num_agents)
        joint_half_range = np.tile(self.action_half_range, num_agents)
        self.joint_center, self.joint_half_range = joint_center, joint_half_range

        init_seed, noise_seed, replay_seed, buffer_seed = np.random.SeedSequence(int(seed)).spawn(4)
        others_dim = self.joint_action_dim - self.action_dim
        with torch.random.fork_rng(devices=[]):  # seed the init without touching global torch RNG
            torch.manual_seed(int(init_seed.generate_state(1)[0]))
            self.actor = TanhMLP(self.obs_dim, self.action_dim, config.actor_hidden_sizes)
            self.actor_target = TanhMLP(self.obs_dim, self.action_dim, config.actor_hidden_sizes)
            self.critic = CentralizedCritic(self.state_dim, self.joint_action_dim, config.critic_hidden_sizes)
            self.critic_target = CentralizedCritic(self.state_dim, self.joint_action_dim, config.critic_hidden_sizes)
            self.teammates = TanhMLP(self.state_dim, others_dim, config.teammate_hidden_sizes)
            self.jsd = JSDMutualInformation(
                self.state_dim, self.joint_action_dim, config.mi_hidden_sizes, config.mi_embedding_dim
            )
            self.club = GaussianCLUB(self.state_dim, self.joint_action_dim, config.mi_hidden_sizes, config.club_log_var_bounds)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_target.requires_grad_(False)
        self.critic_target.requires_grad_(False)

        # fused=True: one kernel per optimizer step instead of one per tensor (as in dqn.py / sac.py).
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, fused=True)
        self.teammate_optimizer = torch.optim.Adam(self.teammates.parameters(), lr=config.teammate_lr, fused=True)
        self.jsd_optimizer = torch.optim.Adam(self.jsd.parameters(), lr=config.mi_lr, fused=True)
        self.club_optimizer = torch.optim.Adam(self.club.parameters(), lr=config.mi_lr, fused=True)
        self.noise_generator = torch.Generator().manual_seed(int(noise_seed.generate_state(1)[0]))
        self.buffer_rng = np.random.default_rng(buffer_seed)

        # One replay row: [own observation, global state] as "obs", the normalized joint action
        # as "action" (this agent's own action is its slice).
        self.replay = ReplayBuffer(
            capacity=config.buffer_size,
            obs_shape=(self.obs_dim + self.state_dim,),
            obs_dtype=np.float32,
            action_shape=(self.joint_action_dim,),
            action_dtype=np.float32,
            seed=int(replay_seed.generate_state(1)[0]),
        )
        self.sorter = ExperienceSorter(config, self.state_dim, self.joint_action_dim)
        # Episodes in flight, per env copy: lists of (state, normalized joint action, reward) rows.
        self.open_episodes: dict[int, list[tuple[np.ndarray, np.ndarray, float]]] = {}
        # After a restore, a copy's first episode is partial: its rows stay out of the PMIC
        # buffers until that copy's first episode end. A fresh agent starts at episode starts.
        self.resynchronizing = False
        self.synchronized_copies: set[int] = set()
        self.rows_observed = 0
        self.gradient_steps = 0
        self.episodes_superior = 0
        self.episodes_inferior = 0

    # ------------------------------------------------------------------ Actor

    @property
    def noise_std(self) -> float:
        cfg = self.config
        return linear_schedule(cfg.noise_start, cfg.noise_end, cfg.noise_decay_rows, self.rows_observed)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        """Actions (K, action_dim) within the Box bounds; Gaussian noise on [-1, 1] when exploring."""
        obs = self._checked(obs, self.obs_shape, "obs")
        with torch.inference_mode():
            unit_action = self.actor(torch.as_tensor(obs, dtype=torch.float32).reshape(len(obs), -1))
            if explore and self.noise_std > 0:
                noise = torch.randn(unit_action.shape, generator=self.noise_generator) * self.noise_std
                unit_action = (unit_action + noise).clamp(-1.0, 1.0)
        env_action = self.action_center + self.action_half_range * unit_action.numpy().astype(np.float64)
        return np.clip(env_action, self.action_space.low, self.action_space.high).astype(self.action_space.dtype)

    # ------------------------------------------------------------------ Learner

    def observe(self, transition: Transition) -> None:
        """Store K rows (with the global view) in the replay buffer and follow each copy's episode."""
        rows = self._validated_rows(transition)
        self.replay.add(
            Transition(
                obs=np.concatenate([rows["obs"], rows["global_state"]], axis=1),
                action=rows["joint_action"],
                reward=rows["reward"],
                next_obs=np.concatenate([rows["next_obs"], rows["next_global_state"]], axis=1),
                terminated=rows["terminated"],
                truncated=rows["truncated"],
            )
        )
        self.rows_observed += len(rows["reward"])
        if not self.config.pmic:
            return
        ended = rows["terminated"] | rows["truncated"]
        for k, copy in enumerate(rows["copy_index"].tolist()):
            if self.resynchronizing and copy not in self.synchronized_copies:
                if ended[k]:
                    self.synchronized_copies.add(copy)  # the next row of this copy starts an episode
                continue
            episode = self.open_episodes.setdefault(copy, [])
            episode.append((rows["global_state"][k], rows["joint_action"][k], float(rows["reward"][k])))
            if ended[k]:
                self._file_episode(self.open_episodes.pop(copy))

    def _file_episode(self, episode: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
        states = np.stack([row[0] for row in episode])
        actions = np.stack([row[1] for row in episode])
        episode_return = float(sum(row[2] for row in episode))
        if self.sorter.add_episode(states, actions, episode_return):
            self.episodes_superior += 1
        else:
            self.episodes_inferior += 1

    @property
    def shaping_active(self) -> bool:
        return self.config.pmic and len(self.sorter.superior) >= self.config.shaping_starts_at

    def gradient_steps_due(self) -> int:
        cfg = self.config
        return trainable_rows(self.rows_observed, cfg.learning_starts, cfg.batch_size) // cfg.train_every - self.gradient_steps

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        """Take the gradient steps due (at most `max_gradient_steps`); metrics averaged over them."""
        steps = steps_to_take(self.gradient_steps_due(), max_gradient_steps)
        metrics = run_gradient_steps(self._gradient_step, steps)
        metrics.update(
            {
                "pmic/gradient_steps": float(steps),
                "pmic/steps_pending": float(self.gradient_steps_due()),
                "pmic/noise_std": self.noise_std,
                "pmic/superior_size": float(len(self.sorter.superior)),
                "pmic/inferior_size": float(len(self.sorter.inferior)),
                "pmic/shaping_active": float(self.shaping_active),
            }
        )
        if len(self.sorter.superior):
            metrics["pmic/superior_lowest_return"] = float(self.sorter.superior.lowest_return)
        return metrics

    def _gradient_step(self) -> dict[str, float]:
        cfg = self.config
        metrics: dict[str, float] = {}
        shaping = self.shaping_active
        use_club = shaping and cfg.mi_beta > 0 and len(self.sorter.inferior) > 0
        use_jsd = shaping and cfg.mi_alpha > 0

        # 1. The MI estimators, one step each on their own buffers (reference order: CLUB, MINE,
        #    then the critic and actor, run_maxminMADDPG.py:319-333).
        if use_club:
            states, actions = self.sorter.inferior.sample(self.buffer_rng, cfg.batch_size)
            club_loss = self.club.nll_loss(torch.as_tensor(states), torch.as_tensor(actions))
            descend(self.club_optimizer, club_loss)
            metrics["pmic/club_nll"] = club_loss.item()
        if use_jsd:
            states, actions = self.sorter.superior.sample(self.buffer_rng, cfg.batch_size)
            jsd_loss = self.jsd.loss(torch.as_tensor(states), torch.as_tensor(actions))
            descend(self.jsd_optimizer, jsd_loss)
            metrics["pmic/jsd_superior_estimate"] = -jsd_loss.item()

        batch = self.replay.sample(cfg.batch_size)
        combined = torch.as_tensor(batch["obs"], dtype=torch.float32)
        next_combined = torch.as_tensor(batch["next_obs"], dtype=torch.float32)
        obs, state = combined[:, : self.obs_dim], combined[:, self.obs_dim :]
        next_obs, next_state = next_combined[:, : self.obs_dim], next_combined[:, self.obs_dim :]
        joint_action = torch.as_tensor(batch["action"], dtype=torch.float32)
        reward = torch.as_tensor(batch["reward"], dtype=torch.float32)
        terminated = torch.as_tensor(batch["terminated"], dtype=torch.float32)

        # 2. The critic, with PMIC's shaping in its target.
        target, shaping_metrics = self.critic_target_values(
            state, joint_action, reward, next_obs, next_state, terminated, use_jsd=use_jsd, use_club=use_club
        )
        metrics.update(shaping_metrics)
        q_value = self.critic(state, joint_action)
        critic_loss = F.mse_loss(q_value, target)
        descend(self.critic_optimizer, critic_loss, clip=(self.critic, cfg.max_grad_norm))

        # 3. The actor through the critic, teammates' actions as they were taken.
        own_action = self.actor(obs)
        others = torch.cat([joint_action[:, : self.own_slice.start], joint_action[:, self.own_slice.stop :]], dim=1)
        actor_loss = -self.critic(state, self._with_own_action(others, own_action)).mean()
        actor_loss = actor_loss + cfg.action_l2 * own_action.pow(2).mean()
        descend(self.actor_optimizer, actor_loss, clip=(self.actor, cfg.max_grad_norm))

        # 4. The teammate model: regress the others' actions on the state.
        teammate_loss = F.mse_loss(self.teammates(state), others)
        descend(self.teammate_optimizer, teammate_loss)

        with torch.no_grad():
            for target_net, online in ((self.critic_target, self.critic), (self.actor_target, self.actor)):
                for target_param, param in zip(target_net.parameters(), online.parameters()):
                    target_param.lerp_(param, cfg.tau)
        self.gradient_steps += 1
        metrics.update(
            {
                "pmic/critic_loss": critic_loss.item(),
                "pmic/actor_loss": actor_loss.item(),
                "pmic/q_mean": q_value.mean().item(),
                "pmic/target_mean": target.mean().item(),
                "pmic/teammate_mse": teammate_loss.item(),
            }
        )
        return metrics

    @torch.no_grad()
    def critic_target_values(
        self,
        state: torch.Tensor,
        joint_action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        next_state: torch.Tensor,
        terminated: torch.Tensor,
        *,
        use_jsd: bool,
        use_club: bool,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """y = r + gamma (1 - terminated) Q'(s', u') [+ alpha I_JSD(s, u)] [- beta I_CLUB(s, u)], per row.

        u' holds this agent's target action mu'(o') and the teammate model's m(s') for the others.
        The MI terms are per-row estimates on this batch (the other rows are the negatives).
        """
        cfg = self.config
        metrics: dict[str, float] = {}
        next_joint = self._with_own_action(self.teammates(next_state), self.actor_target(next_obs))
        target = reward + cfg.gamma * (1.0 - terminated) * self.critic_target(next_state, next_joint)
        if use_jsd:
            lower_bound = self.jsd.pointwise(state, joint_action)
            target = target + cfg.mi_alpha * lower_bound
            metrics["pmic/i_superior_on_batch"] = lower_bound.mean().item()
        if use_club:
            upper_bound = self.club.pointwise(state, joint_action)
            target = target - cfg.mi_beta * upper_bound
            metrics["pmic/i_inferior_on_batch"] = upper_bound.mean().item()
        return target, metrics

    def _with_own_action(self, others: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """The joint action with `own` inserted at this agent's slice, (B, N * A)."""
        split = self.own_slice.start
        return torch.cat([others[:, :split], own, others[:, split:]], dim=1)

    # ------------------------------------------------------------------ persistence

    def counters(self) -> dict[str, float]:
        """The update-ratio contract, cumulative since the start (see roles.Learner.counters)."""
        return update_counters("pmic", self.gradient_steps, self.gradient_steps_due(), self.rows_observed)

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, counters, RNGs and the PMIC buffers (as tensors); the replay
        buffer is saved separately (`self.replay.save`). Loadable with `weights_only=True`."""
        superior, inferior = self.sorter.superior, self.sorter.inferior
        return {
            "algorithm": "pmic",
            "networks": {
                name: module.state_dict()
                for name, module in self._modules_by_name().items()
            },
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self._optimizers_by_name().items()},
            "rows_observed": self.rows_observed,
            "gradient_steps": self.gradient_steps,
            "episodes_superior": self.episodes_superior,
            "episodes_inferior": self.episodes_inferior,
            "noise_generator_state": self.noise_generator.get_state(),
            "buffer_rng_state": self.buffer_rng.bit_generator.state,
            "superior": {
                "states": torch.from_numpy(superior.states.copy()),
                "actions": torch.from_numpy(superior.actions.copy()),
                "returns": torch.from_numpy(superior.returns.copy()),
            },
            "inferior": {
                "states": torch.from_numpy(inferior.states.copy()),
                "actions": torch.from_numpy(inferior.actions.copy()),
                "position": inferior.position,
                "size": inferior.size,
            },
            "recent_returns": torch.tensor(list(self.sorter.recent_returns), dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_algorithm(state, "pmic", "PMIC")
        for name, module in self._modules_by_name().items():
            module.load_state_dict(state["networks"][name])
        learning_rates = {
            "actor": self.config.actor_lr,
            "critic": self.config.critic_lr,
            "teammates": self.config.teammate_lr,
            "jsd": self.config.mi_lr,
            "club": self.config.mi_lr,
        }
        for name, optimizer in self._optimizers_by_name().items():
            load_optimizer(optimizer, state["optimizers"][name], learning_rates[name])
        self.rows_observed = int(state["rows_observed"])
        self.gradient_steps = int(state["gradient_steps"])
        self.episodes_superior = int(state["episodes_superior"])
        self.episodes_inferior = int(state["episodes_inferior"])
        self.noise_generator.set_state(state["noise_generator_state"])
        self.buffer_rng.bit_generator.state = state["buffer_rng_state"]
        superior, inferior = self.sorter.superior, self.sorter.inferior
        superior.states = state["superior"]["states"].numpy().copy()
        superior.actions = state["superior"]["actions"].numpy().copy()
        superior.returns = state["superior"]["returns"].numpy().copy()
        inferior.states[:] = state["inferior"]["states"].numpy()
        inferior.actions[:] = state["inferior"]["actions"].numpy()
        inferior.position = int(state["inferior"]["position"])
        inferior.size = int(state["inferior"]["size"])
        self.sorter.recent_returns.clear()
        self.sorter.recent_returns.extend(state["recent_returns"].tolist())
        self.open_episodes.clear()
        self.resynchronizing = True
        self.synchronized_copies.clear()

    def _modules_by_name(self) -> dict[str, nn.Module]:
        return {
            "actor": self.actor,
            "actor_target": self.actor_target,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "teammates": self.teammates,
            "jsd": self.jsd,
            "club": self.club,
        }

    def _optimizers_by_name(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "actor": self.actor_optimizer,
            "critic": self.critic_optimizer,
            "teammates": self.teammate_optimizer,
            "jsd": self.jsd_optimizer,
            "club": self.club_optimizer,
        }

    # ------------------------------------------------------------------ ParamSource

    def get_params(self) -> dict[str, np.ndarray]:
        """The actor's parameters, named `actor.<layer>.<weight|bias>` (copies)."""
        return module_params(self.actor, "actor")

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        load_module_params(self.actor, "actor", params)

    # ------------------------------------------------------------------ helpers

    def _validated_rows(self, transition: Transition) -> dict[str, np.ndarray]:
        if not isinstance(transition, Transition):
            raise TypeError(f"expected a Transition, got {type(transition).__name__}")
        missing = [
            name
            for name in ("global_state", "next_global_state", "joint_action", "copy_index")
            if getattr(transition, name) is None
        ]
        if missing:
            raise ValueError(
                f"PMIC needs the env server's global view on every transition; Transition fields {missing} "
                "are None (the env server must publish the global state and the joint action to this agent)"
            )
        reward = np.asarray(transition.reward, dtype=np.float32)
        if reward.ndim != 1:
            raise ValueError(f"Transition.reward must have shape (K,), got {reward.shape}")
        count = len(reward)
        rows = {
            "obs": self._checked(transition.obs, self.obs_shape, "Transition.obs", count).reshape(count, -1),
            "next_obs": self._checked(transition.next_obs, self.obs_shape, "Transition.next_obs", count).reshape(count, -1),
            "global_state": self._checked(transition.global_state, self.state_shape, "Transition.global_state", count).reshape(count, -1),
            "next_global_state": self._checked(
                transition.next_global_state, self.state_shape, "Transition.next_global_state", count
            ).reshape(count, -1),
            "reward": reward,
            "terminated": self._checked(transition.terminated, (), "Transition.terminated", count).astype(bool),
            "truncated": self._checked(transition.truncated, (), "Transition.truncated", count).astype(bool),
            "copy_index": self._checked(transition.copy_index, (), "Transition.copy_index", count).astype(np.int64),
        }
        joint = self._checked(transition.joint_action, (self.joint_action_dim,), "Transition.joint_action", count)
        own = self._checked(transition.action, (self.action_dim,), "Transition.action", count)
        if not np.allclose(joint[:, self.own_slice], own, atol=ACTION_MATCH_TOLERANCE, rtol=0.0):
            raise ValueError(
                f"this agent's action differs from slice {self.own_slice.start}:{self.own_slice.stop} of the joint action "
                f"(agent_index {self.agent_index} of {self.num_agents}); the joint action must list the agents in "
                "possible_agents order"
            )
        unit_joint = (joint.astype(np.float64) - self.joint_center) / self.joint_half_range
        rows["joint_action"] = np.clip(unit_joint, -1.0, 1.0).astype(np.float32)
        for name in ("obs", "next_obs", "global_state", "next_global_state"):
            rows[name] = rows[name].astype(np.float32)
        return rows

    @staticmethod
    def _checked(values: Any, row_shape: tuple[int, ...], name: str, count: int | None = None) -> np.ndarray:
        values = np.asarray(values)
        expected_rows = "K" if count is None else str(count)
        if values.ndim != len(row_shape) + 1 or values.shape[1:] != tuple(row_shape) or (
            count is not None and values.shape[0] != count
        ):
            raise ValueError(f"{name} must have shape ({expected_rows}, {', '.join(map(str, row_shape))}), got {values.shape}")
        return values
