"""OG-MARL: optimistic gossiping, distributed model-based multi-agent RL, for one agent.

What it is (ALGORITHMS.md section 1; reference code `ManuelWendl/OG-MARL`, `odmar.py`). Every
agent runs its own soft actor-critic, but trains it mostly on *imagined* transitions: short
rollouts of its current policy through a learned model of its own dynamics. The agents build that
model together: each fits a sparse GP to its own transitions, and consensus averages the GPs'
natural parameters over the communication graph, so every agent ends up with (nearly) the posterior
given everybody's data. Imagined rewards get an optimism bonus `c * sqrt(model variance)`, which
pays the policy for going where the shared model is still unsure.

One model refresh, driven by the agent node (which owns the network and the consensus engine):

    if agent.model_refresh_due():                   # once per `model_every` env steps
        stats = agent.fit_world_model()             # refit on this agent's own real data -> J_i, h_i
        averaged = <consensus rounds over the graph on stats>   (None when nothing is shared)
        metrics = agent.adopt_world_model(averaged, num_agents)  # fuse, then imagine

and between refreshes the node calls `act`, `observe` and `update` as for plain SAC.

`adopt_world_model` imports the averaged statistics (S = (K_ZZ + N Jbar)^-1, m = S N hbar, see
`world_models/sparse_gp.py`), then from `rollout_starts` real start states rolls the current
(stochastic) policy `rollout_horizon` steps through the model mean:

    a_t ~ pi(.|s_t)
    s_{t+1} = clip(mean(s_t, a_t), observation bounds)
    r_t = reward_own(s_{t+1}, a_t) + c * sqrt(var(s_t, a_t))

and stores every (s_t, a_t, r_t, s_{t+1}) in the model buffer with `terminated = truncated =
False`. SAC then samples each batch as `real_ratio` real rows and the rest from that buffer
(`SACAgent.set_model_buffer`).

Decisions, each checked against the reference:

- **Reward of an imagined step.** The team reward is a sum of per-agent terms, and an agent
  observes only its own position. The reference scores an imagined step by deep-copying the
  environment, parking the other agents at the origin (where no site pays) with zero actions, and
  stepping the copy with this agent's action: the reward is only this agent's *own* term (its
  site value, minus its own action penalty when the penalty is on), but evaluated at the *true*
  next position, computed with the environment's hidden gains `eta`. Our agents do not know `eta`
  (learning it is the task) and never import the environment, so we take the same own term from
  the task spec (`reward_models.py`) at the position the *model* predicts. With an accurate model
  the two agree except within rounding distance of a site's edge.
- **Optimism bonus.** `c * sqrt(v)` where `v` is a variance of the model at (s_t, a_t), as the
  reference (`odmar.py` line 771, `OPTIMISM_SCALE * np.sqrt(np.sum(delta_state_var))`). The GP's
  outputs share one kernel, so there is one variance per input; the reference adds the square root
  of that single number (its `np.sum` runs over a length-1 array). Which variance is
  `optimism_variance`: `"reference"` (default) is what the reference computes,
  k(x,x) - k(x,Z) S k(Z,x) (`odmar.py` line 260), dominated by the prior k(x,x);
  `"epistemic"` is the posterior variance of f, k(x,Z) S k(Z,x) (see `sparse_gp.py`), far smaller,
  so it needs a far larger `c` for the same bonus. Both square roots are logged at every refresh
  (`og_marl/sqrt_variance_reference`, `og_marl/sqrt_variance_epistemic`), with the bonus's size
  against the task reward, `og_marl/bonus_over_reward` = mean bonus / mean |task reward| of the
  imagined rows (the absolute value because with the action penalty the mean task reward is
  negative, and a signed mean near zero would make the ratio meaningless).
- **Distance to the exact average** (not in the reference, which averages in one process). An
  agent cannot know the exact average of everybody's statistics, but a projection is linear: each
  agent logs `consensus_probes` random bilinear projections p_k(X) = u_k^T X v_k of its own J (and
  u_k^T h w_k of its h) at the fit ("before") and of the averaged J, h it adopts ("after"), with
  directions seeded by `consensus_probe_seed`, the same on every agent. The mean over agents of
  the "before" projections is the projection of the exact average, and for u, v independent
  standard normal E[(u^T A v)^2] = ||A||_F^2, so sum_k (after_ik - mean_before_k)^2 / sum_k
  mean_before_k^2 estimates agent i's squared relative Frobenius distance to the exact average
  (bench/og_marl.py computes it).
- **Bootstrapping at the end of a rollout.** Imagined rows are neither terminated nor truncated,
  as in the reference (`done = False`). SAC bootstraps every non-terminated row from its next
  state with the target critics, so the last imagined step bootstraps from Q(s_H, .) like any
  other: stopping the rollout is a cut of an imagined trajectory, not an end of the task.
- **The time limit.** The reference stores `done = 1` on the real row at step 100 (`odmar.py`
  line 1002) and never on imagined rows (line 774); SAC here bootstraps through a time-limit cut
  unless `sac.bootstrap_on_truncation` is false. Either way it reaches the critic only through
  real rows, so with `real_ratio = 0` the option would do nothing and the config refuses it; the
  reference's batches hold one real row (line 917), `real_ratio = 1/256`.
- **Model mean, clipped.** Rollouts follow the model mean (no sampled noise), as the reference.
  We clip the predicted position to the observation space (the world box is known; the true
  dynamics clip there too); the reference does not.
- **Mixed batches.** The reference's REAL_RATIO is 0.0, which its sampler rounds up to one real
  row per batch of 256; `real_ratio = 0.0` here means no real row. Real rows carry the *team*
  reward (every agent's term) while imagined rows carry this agent's own term, so a large
  `real_ratio` mixes two reward scales; the reference avoids that by staying at (nearly) 0.
  `sac.reward: own_contribution` (not the reference's) puts the own term on the real rows too.
- **Data for a refit.** The newest `fit_transitions + holdout_transitions` real rows of this
  agent (`fit_sampling="latest"`), or that many drawn uniformly from its whole replay buffer
  (`"uniform"`, what the reference's code does); `holdout_transitions` of them, chosen at random,
  are kept out of the fit to score the model after adoption (`og_marl/model_mse`).
- **Start states**: `rollout_starts` observations drawn uniformly from the whole real replay
  buffer (without replacement when it is large enough), as the reference.
- **When a refresh is due.** Counting environment steps as transition rows (SAC's convention),
  the first refresh is due at row R0 = max(sac.random_steps, fit_transitions +
  holdout_transitions), then at the ticks R0 + k * model_every for k = 1, 2, ...:
  `model_refresh_due(rows)` turns True once the row clock reaches a tick not refreshed yet and
  False again when `fit_world_model` has run. Ticks missed (K vectorized copies can jump over
  one) are not made up. With the reference settings the first refresh comes at row 5,000, right
  before SAC's first gradient step, as the reference fits and imagines once between its random
  phase and its training loop. The clock is the rows this agent observed unless the caller
  passes one: the agent node passes the env server's step times K, the same number on every
  agent, so agents refresh (and average) at the same ticks even when one of them missed steps
  (cut off by a partition, its answer played by default); `refresh_tick` names the tick, which
  is the consensus run's epoch. A refresh due while the buffer holds less than one refit's data
  (such an agent) shares the statistics it has without refitting (`og_marl/refit_skipped`).

Cost, measured on this project's 2-core machine (shared with other jobs), one thread, reference
sizes (sparse GP with 900 grid inducing points, 256 + 64 transitions per refit, 256 starts x 2
steps, SAC 256x256 with batch 256): a refit takes ~30 ms, an adoption (import, held-out score and
imagination) ~50-65 ms, and a SAC gradient step ~13 ms. At 10 updates per environment step the
gradient steps dominate: ~130 ms of learning per environment step, ~130 s per 1,000 training steps
for one agent on a core of its own; the refresh every 250 steps adds well under 1 %.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch

from agent_node.algos.config import OGMARLConfig
from agent_node.algos.learner_parts import check_algorithm, check_config, check_seed
from agent_node.algos.sac import SACAgent
from agent_node.replay import ReplayBuffer
from agent_node.reward_models import reward_model_from_spec
from agent_node.roles import Transition
from agent_node.world_models import build_world_model
from agent_node.world_models.config import EnsembleConfig, SparseGPConfig

_BUFFER_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


class OGMARLAgent:
    """Actor, Learner and ParamSource for OG-MARL (see the module docstring)."""

    def __init__(
        self,
        config: OGMARLConfig,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        seed: int,
        *,
        world_model_config: SparseGPConfig | EnsembleConfig,
        task_spec: Mapping[str, Any],
    ) -> None:
        check_config(config, OGMARLConfig)
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise TypeError(f"OG-MARL needs a 1-D Box observation space (the agent's state), got {observation_space!r}")
        if not (np.all(np.isfinite(observation_space.low)) and np.all(np.isfinite(observation_space.high))):
            raise ValueError(
                f"OG-MARL clips imagined states to the observation bounds, which must be finite; got {observation_space!r}"
            )
        check_seed(seed)
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.reward_model = reward_model_from_spec(task_spec)
        state_dim = int(observation_space.shape[0])
        # SACAgent checks the action space (a finite 1-D Box) when it is built below.
        action_dim = int(np.prod(action_space.shape)) if isinstance(action_space, gym.spaces.Box) else -1
        self.reward_model.check_shapes(observation_space.shape, getattr(action_space, "shape", None), "OG-MARL")

        # Independent streams: SAC (which splits its own further), the world model's local
        # randomness, and this file's draws (start states, held-out rows, uniform refit samples).
        sac_entropy, model_entropy, own_entropy = np.random.SeedSequence(int(seed)).spawn(3)
        self.sac = SACAgent(
            config.sac_config(), observation_space, action_space, int(sac_entropy.generate_state(1)[0]),
            reward_model=self.reward_model if config.sac.reward == "own_contribution" else None,
        )
        self.replay = self.sac.replay  # the real transitions; the node saves and restores it
        self.world_model_config = _with_input_box(world_model_config, observation_space, action_space)
        self.world_model = build_world_model(
            self.world_model_config, state_dim, action_dim, int(model_entropy.generate_state(1)[0])
        )
        self.rng = np.random.default_rng(own_entropy)
        self.model_buffer = ReplayBuffer(
            capacity=config.model_buffer_size,
            obs_shape=self.sac.obs_shape,
            obs_dtype=observation_space.dtype,
            action_shape=(action_dim,),
            action_dtype=np.float32,  # like SAC's replay: environment-scale actions
            seed=int(self.rng.integers(2**32)),
        )
        self.sac.set_model_buffer(self.model_buffer, config.real_ratio)

        self.next_refresh_row = config.first_refresh_row()
        self.refreshes = 0  # completed adopt_world_model calls
        # Set by fit_world_model, consumed by adopt_world_model: the rows kept out of the fit and
        # the fit's own metrics.
        self.pending_holdout: dict[str, np.ndarray] | None = None
        self.last_fit_metrics: dict[str, float] = {}

        if config.optimism_variance == "reference" and not hasattr(self.world_model, "reference_variance"):
            raise ValueError(
                "learner.optimism_variance 'reference' is k(x,x) - k(x,Z) S k(Z,x), defined for world "
                f"model kind 'sparse_gp'; got kind {self.world_model_config.kind!r} (use optimism_variance: epistemic)"
            )
        # Probe directions for the distance to the exact average (see the module docstring).
        self.probe_directions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if config.consensus_probes > 0 and isinstance(self.world_model_config, SparseGPConfig):
            probe_rng = np.random.default_rng(config.consensus_probe_seed)
            count, size = config.consensus_probes, self.world_model.num_inducing
            self.probe_directions = {
                "J": (probe_rng.standard_normal((count, size)), probe_rng.standard_normal((count, size))),
                "h": (probe_rng.standard_normal((count, size)), probe_rng.standard_normal((count, state_dim))),
            }
        self.pending_probe: dict[str, float] = {}  # "before" projections, from fit to adoption

    @property
    def rows_observed(self) -> int:
        return self.sac.rows_observed

    # ------------------------------------------------------------------ Actor and Learner (SAC)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        return self.sac.act(obs, explore)

    def observe(self, transition: Transition) -> None:
        self.sac.observe(transition)

    def gradient_steps_due(self) -> int:
        return self.sac.gradient_steps_due()

    def forgive_gradient_steps(self, steps: int) -> None:
        self.sac.forgive_gradient_steps(steps)

    def update(self, max_gradient_steps: int | None = None) -> dict[str, float]:
        """SAC's gradient steps due (`updates_per_step` per row), on mixed real/imagined batches."""
        return self.sac.update(max_gradient_steps)

    def counters(self) -> dict[str, float]:
        """SAC's cumulative update counters (`sac/gradient_steps`, `sac/steps_pending`, ...) and
        the number of completed model refreshes."""
        return {**self.sac.counters(), "og_marl/refreshes": float(self.refreshes)}

    # ------------------------------------------------------------------ model refresh

    def refresh_tick(self, rows: int | None = None) -> int | None:
        """The latest refresh tick R0 + k * model_every at or before the row clock `rows` (default:
        the rows this agent observed); None before the first."""
        rows = self.sac.rows_observed if rows is None else int(rows)
        first, period = self.config.first_refresh_row(), self.config.model_every
        if rows < first:
            return None
        return first + (rows - first) // period * period

    def model_refresh_due(self, rows: int | None = None) -> bool:
        """True once the row clock (default: the rows observed) reaches a tick not refreshed yet,
        until `fit_world_model` runs."""
        tick = self.refresh_tick(rows)
        return tick is not None and tick >= self.next_refresh_row

    def fit_world_model(self, rows: int | None = None) -> dict[str, np.ndarray]:
        """Refit the world model on this agent's own real transitions; return what consensus
        averages. `rows`: the row clock `model_refresh_due` was asked with.

        With less than one refit's data in the replay buffer (an agent that missed steps reaches
        a tick its neighbours reach with enough), nothing is refit: the statistics of the last
        fit (none yet: zero, no information) are shared, so the neighbours' run is not left
        waiting for this agent, and the adoption skips the held-out score."""
        cfg = self.config
        pool_size = cfg.fit_transitions + cfg.holdout_transitions
        self._advance_refresh_tick(rows)
        if len(self.replay) < pool_size:
            self.pending_holdout = {}
            self.last_fit_metrics = {"og_marl/refit_skipped": 1.0}
            statistics = self.world_model.export_statistics()
            self.pending_probe = self._probe(statistics, "before")
            return statistics
        if cfg.fit_sampling == "latest":
            # The ring's newest row sits just before `position` (also before it has wrapped).
            pool = (self.replay.position - pool_size + np.arange(pool_size)) % self.replay.capacity
        else:
            pool = self.rng.choice(len(self.replay), size=pool_size, replace=False)
        pool = self.rng.permutation(pool)
        holdout_rows, fit_rows = pool[: cfg.holdout_transitions], pool[cfg.holdout_transitions :]

        states, actions, next_states = self._real_rows(fit_rows)
        self.last_fit_metrics = self.world_model.fit(states, actions, next_states)
        holdout_states, holdout_actions, holdout_next_states = self._real_rows(holdout_rows)
        self.pending_holdout = {"obs": holdout_states, "action": holdout_actions, "next_obs": holdout_next_states}
        self.last_fit_metrics["og_marl/refit_skipped"] = 0.0
        statistics = self.world_model.export_statistics()
        self.pending_probe = self._probe(statistics, "before")
        return statistics

    def adopt_world_model(self, averaged: Mapping[str, np.ndarray] | None, num_agents: int) -> dict[str, float]:
        """Use the averaged statistics (None: keep the local model), then imagine new rollouts."""
        if isinstance(num_agents, bool) or not isinstance(num_agents, (int, np.integer)) or num_agents < 1:
            raise ValueError(f"num_agents: expected a positive int, got {num_agents!r}")
        if self.pending_holdout is None:
            raise RuntimeError("adopt_world_model needs fit_world_model first (one adoption per fit)")
        if averaged is not None:
            self.world_model.import_statistics(averaged, int(num_agents))

        holdout, self.pending_holdout = self.pending_holdout, None
        model_mse = math.nan  # no refit, no held-out rows (see fit_world_model)
        if holdout:
            predicted_next, _ = self.world_model.predict(holdout["obs"], holdout["action"])
            model_mse = float(np.mean((predicted_next - holdout["next_obs"]) ** 2))

        self.refreshes += 1
        metrics = dict(self.last_fit_metrics)
        metrics.update(self.pending_probe)
        self.pending_probe = {}
        if averaged is not None:
            metrics.update(self._probe(averaged, "after"))
        if len(self.replay) == 0:  # no real start state to imagine from (an agent that saw no step)
            return {**metrics, "og_marl/shared": float(averaged is not None), "og_marl/refreshes": float(self.refreshes)}
        imagined = self._imagine()
        mean_abs_reward = float(np.abs(imagined["task_reward"]).mean())
        mean_bonus = float(imagined["bonus"].mean())
        metrics.update(
            {
                "og_marl/model_mse": model_mse,
                "og_marl/imagined_reward": float(imagined["task_reward"].mean()),
                "og_marl/imagined_reward_abs": mean_abs_reward,
                "og_marl/optimism_bonus": mean_bonus,
                # NaN (not logged) when no imagined row earned or paid anything.
                "og_marl/bonus_over_reward": mean_bonus / mean_abs_reward if mean_abs_reward > 0 else float("nan"),
                "og_marl/model_buffer_size": float(len(self.model_buffer)),
                "og_marl/shared": float(averaged is not None),
                "og_marl/refreshes": float(self.refreshes),
            }
        )
        for form in ("epistemic", "reference"):
            if form in imagined:
                metrics[f"og_marl/sqrt_variance_{form}"] = float(np.sqrt(imagined[form]).mean())
        return metrics

    def _probe(self, statistics: Mapping[str, np.ndarray], when: str) -> dict[str, float]:
        """The bilinear projections u_k^T X v_k of J and h, as metrics `og_marl/probe/<when>/<name>/<k>`."""
        probes = {}
        for name, (left, right) in self.probe_directions.items():
            values = np.einsum("km,mn,kn->k", left, np.asarray(statistics[name], dtype=np.float64), right)
            probes.update({f"og_marl/probe/{when}/{name}/{k:02d}": float(v) for k, v in enumerate(values)})
        return probes

    def _imagine(self) -> dict[str, np.ndarray]:
        """Roll the policy through the model mean from real start states; store every step.

        Returns, per imagined row, the task reward, the optimism bonus and the variances
        ("epistemic", and "reference" where the world model has it).
        """
        cfg = self.config
        num_starts = cfg.rollout_starts
        starts = self.rng.choice(len(self.replay), size=num_starts, replace=num_starts > len(self.replay))
        states = self.replay.obs[starts].astype(self.observation_space.dtype)
        rows: dict[str, list[np.ndarray]] = {"task_reward": [], "bonus": [], "epistemic": []}
        if hasattr(self.world_model, "reference_variance"):
            rows["reference"] = []
        never = np.zeros(num_starts, dtype=bool)
        for _ in range(cfg.rollout_horizon):
            actions = self.sac.act(states, explore=True)  # the current stochastic policy
            model_states, model_actions = states.astype(np.float64), actions.astype(np.float64)
            mean_next, variance = self.world_model.predict(model_states, model_actions)
            next_states = np.clip(mean_next, self.observation_space.low, self.observation_space.high).astype(
                self.observation_space.dtype
            )
            task_reward = self.reward_model.contribution(next_states, actions)
            # One variance per input: the outputs share the kernel (the mean over dimensions is it).
            variances = {"epistemic": np.clip(variance, 0.0, None).mean(axis=1).astype(np.float64)}
            if "reference" in rows:
                variances["reference"] = self.world_model.reference_variance(model_states, model_actions)
            bonus = cfg.optimism * np.sqrt(variances[cfg.optimism_variance])
            self.model_buffer.add(
                Transition(
                    obs=states,
                    action=actions,
                    reward=(task_reward + bonus).astype(np.float32),
                    next_obs=next_states,
                    terminated=never,
                    truncated=never,
                )
            )
            rows["task_reward"].append(task_reward)
            rows["bonus"].append(bonus)
            for form, value in variances.items():
                rows[form].append(value)
            states = next_states
        return {name: np.concatenate(parts) for name, parts in rows.items()}

    def _real_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(states, actions, next states) of these replay rows, float64, flattened per row."""
        count = len(rows)
        return (
            self.replay.obs[rows].reshape(count, -1).astype(np.float64),
            self.replay.action[rows].reshape(count, -1).astype(np.float64),
            self.replay.next_obs[rows].reshape(count, -1).astype(np.float64),
        )

    def _advance_refresh_tick(self, rows: int | None = None) -> None:
        """Move the next refresh to the first tick R0 + k * model_every after the row clock."""
        if (tick := self.refresh_tick(rows)) is not None:
            self.next_refresh_row = tick + self.config.model_every

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """SAC (networks, optimizers, counters), the world model, the model buffer's contents and
        this file's counters and RNG; loadable with `torch.load(..., weights_only=True)`.

        The real replay buffer is saved separately (`self.replay.save`), as for SAC. The model
        buffer goes in here: it is small next to the real one at the reference's schedule (about
        512 rows per refresh, ~20 k rows after 10,000 steps, ~0.6 MB), and without it a restarted
        agent would train on the latest refresh's rollouts alone until the next one.
        """
        buffer = self.model_buffer
        return {
            "algorithm": "og_marl",
            "sac": self.sac.state_dict(),
            "world_model": self.world_model.state_dict(),
            "model_buffer": {
                **{name: torch.from_numpy(getattr(buffer, name)[: buffer.size].copy()) for name in _BUFFER_FIELDS},
                "position": buffer.position,
                "size": buffer.size,
                "rng_state": buffer.rng.bit_generator.state,
            },
            "next_refresh_row": self.next_refresh_row,
            "refreshes": self.refreshes,
            "rng_state": self.rng.bit_generator.state,
            "pending_holdout": (
                None
                if self.pending_holdout is None
                else {name: torch.from_numpy(array.copy()) for name, array in self.pending_holdout.items()}
            ),
            "last_fit_metrics": dict(self.last_fit_metrics),
            "pending_probe": dict(self.pending_probe),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_algorithm(state, "og_marl", "OG-MARL")
        saved_buffer = state["model_buffer"]
        buffer = self.model_buffer
        size, position = int(saved_buffer["size"]), int(saved_buffer["position"])
        if not 0 <= size <= buffer.capacity or not 0 <= position < buffer.capacity:
            raise ValueError(
                f"saved model buffer (size {size}, position {position}) does not fit "
                f"model_buffer_size {buffer.capacity}"
            )
        for name in _BUFFER_FIELDS:
            expected = (size, *getattr(buffer, name).shape[1:])
            if tuple(saved_buffer[name].shape) != expected:
                raise ValueError(
                    f"saved model buffer field {name!r}: expected shape {expected}, "
                    f"got {tuple(saved_buffer[name].shape)}"
                )

        self.sac.load_state_dict(state["sac"])
        self.world_model.load_state_dict(state["world_model"])
        for name in _BUFFER_FIELDS:
            column = getattr(buffer, name)
            column[:size] = saved_buffer[name].numpy()
            column[size:] = 0
        buffer.size, buffer.position = size, position
        buffer.rng.bit_generator.state = saved_buffer["rng_state"]
        self.next_refresh_row = int(state["next_refresh_row"])
        self.refreshes = int(state["refreshes"])
        self.rng.bit_generator.state = state["rng_state"]
        pending = state["pending_holdout"]
        self.pending_holdout = (
            None if pending is None else {name: tensor.numpy().copy() for name, tensor in pending.items()}
        )
        self.last_fit_metrics = {str(name): float(value) for name, value in state["last_fit_metrics"].items()}
        # Checkpoints written before the probes existed have none.
        self.pending_probe = {str(name): float(value) for name, value in state.get("pending_probe", {}).items()}

    # ------------------------------------------------------------------ ParamSource (the policy)

    def get_params(self) -> dict[str, np.ndarray]:
        return self.sac.get_params()

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        self.sac.set_params(params)


def probe_distances(before: list[Mapping[str, float]], after: list[Mapping[str, float]]) -> dict[str, list[float]]:
    """Each agent's estimated relative distance to the exact average, from one refresh's probes.

    `before[i]` and `after[i]` are agent i's metrics of that refresh (the `og_marl/probe/...`
    keys; other keys are ignored). Returns, per statistic ("J", "h"), one number per agent of
    `after`: sqrt(sum_k (after_ik - mean_i before_ik)^2 / sum_k (mean_i before_ik)^2), an estimate
    of ||X_i - Xbar||_F / ||Xbar||_F (see the module docstring). `before` must hold every agent of
    the run, or the mean is not the average everybody should reach.
    """
    distances: dict[str, list[float]] = {}
    for name in ("J", "h"):
        prefix_before, prefix_after = f"og_marl/probe/before/{name}/", f"og_marl/probe/after/{name}/"
        keys = sorted(key[len(prefix_before):] for key in before[0] if key.startswith(prefix_before))
        if not keys:
            continue
        exact = np.array([[agent[prefix_before + key] for key in keys] for agent in before]).mean(axis=0)
        scale = float(np.sqrt(np.sum(exact**2)))
        distances[name] = [
            float(np.sqrt(np.sum((np.array([agent[prefix_after + key] for key in keys]) - exact) ** 2)) / scale)
            for agent in after
        ]
    return distances


def _with_input_box(
    config: SparseGPConfig | EnsembleConfig, observation_space: gym.spaces.Box, action_space: gym.spaces.Box
) -> SparseGPConfig | EnsembleConfig:
    """Fill a sparse GP's state-action box from the spaces when the config leaves it unset.

    The GP derives its inducing points from that box, so every agent must get the same one: the
    spaces come from the env server and are the same for every agent of a homogeneous team.
    """
    if not isinstance(config, SparseGPConfig) or config.input_low is not None:
        return config
    low = np.concatenate([observation_space.low.ravel(), action_space.low.ravel()]).astype(np.float64)
    high = np.concatenate([observation_space.high.ravel(), action_space.high.ravel()]).astype(np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(
            "world_model.input_low / input_high are unset and the observation or action space is "
            f"unbounded (low {low.tolist()}, high {high.tolist()}); set the state-action box in the config"
        )
    # Validate again: the grid's budget check depends on the box's dimension.
    filled = {**config.model_dump(), "input_low": low.tolist(), "input_high": high.tolist()}
    return SparseGPConfig.model_validate(filled)
