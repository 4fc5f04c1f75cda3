"""Hyperparameters of the off-policy learners, as typed and frozen config models.

This module must not import torch: the CLI validates a whole run config through these schemas in
a fraction of a second, long before any learner is built.

Counting convention shared by both learners: an **environment step** means one transition *row*.
An agent served by K vectorized environment copies observes K rows per `observe` call, so
`learning_starts`, `random_steps`, the epsilon schedule and the update ratio all count rows. That
keeps the replay ratio (gradient steps per collected transition) independent of K.

The YAML section of an agent picks its learner with `kind` (dqn | sac | og_marl | pmic | shared_dqn | goal_dqn;
cql | bc to evaluate):

    learner:
      kind: sac
      batch_size: 256

    learner:
      kind: og_marl
      optimism: 0.01
      sac: {hidden_sizes: [256, 256]}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
HiddenSizes = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]


class DQNConfig(BaseModel):
    """Deep Q-learning (Mnih et al. 2015) with Double-DQN targets (van Hasselt et al. 2016).

    Defaults suit small observation vectors and a few discrete actions.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["dqn"] = "dqn"
    hidden_sizes: HiddenSizes = (64, 64)
    # What reads the observation before the hidden layers: "auto" takes the DQN paper's CNN for
    # image observations (a uint8 Box shaped (height, width, channels), at least 36 pixels a
    # side) and flattens anything else; "mlp" always flattens; "cnn" refuses a non-image space.
    encoder: Literal["auto", "mlp", "cnn"] = "auto"
    learning_rate: float = Field(5e-4, gt=0)
    # With both set, the rate falls linearly from learning_rate to learning_rate_end over the
    # first learning_rate_decay_steps gradient steps, then stays there (so a fit to a fixed
    # dataset settles instead of jittering with the batch's noise); neither set: constant.
    learning_rate_end: Annotated[float, Field(gt=0)] | None = None
    learning_rate_decay_steps: PositiveInt | None = None
    gamma: float = Field(0.99, ge=0, le=1)
    batch_size: PositiveInt = 64
    buffer_size: PositiveInt = 100_000
    # No gradient step before this many rows have been observed (and never before the buffer
    # holds one batch).
    learning_starts: int = Field(1_000, ge=0)
    # One gradient step per `train_every` observed rows (after learning_starts).
    train_every: PositiveInt = 1
    # Every `target_update_period` gradient steps: target <- tau * online + (1 - tau) * target.
    # tau = 1 is the classic hard copy.
    target_update_period: PositiveInt = 500
    target_tau: float = Field(1.0, gt=0, le=1)
    # Epsilon-greedy exploration, linear from start to end over the first decay_steps rows.
    epsilon_start: float = Field(1.0, ge=0, le=1)
    epsilon_end: float = Field(0.05, ge=0, le=1)
    epsilon_decay_steps: PositiveInt = 10_000
    double_dqn: bool = True
    # "huber" is the smooth L1 loss with threshold 1 (the DQN paper's error clipping).
    loss: Literal["huber", "mse"] = "huber"
    # Clip the global gradient norm; None disables clipping.
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 10.0
    # Take the gradient steps outside torch, compiled by numba over flat buffers
    # (agent_node/algos/numpy_steps.py): the same update for less CPU per step on small networks,
    # with OpenBLAS's arithmetic, so not bit for bit torch's. A plain MLP only (no CNN encoder).
    numpy_updates: bool = False

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> DQNConfig:
        check_buffer_holds_a_batch(self.buffer_size, self.batch_size)
        check_learning_rate_schedule(self.learning_rate_end, self.learning_rate_decay_steps)
        if self.numpy_updates and self.encoder == "cnn":
            raise ValueError("numpy_updates: numpy updates take a plain MLP; encoder 'cnn' needs torch's "
                             "(set numpy_updates: false, or encoder: mlp)")
        return self


def check_buffer_holds_a_batch(buffer_size: int, batch_size: int) -> None:
    """One batch must fit in the replay buffer: a smaller buffer makes every batch repeat rows, which
    is almost surely a slip in the config (DQN, SAC and PMIC refuse it)."""
    if buffer_size < batch_size:
        raise ValueError(f"buffer_size ({buffer_size}) must be at least batch_size ({batch_size})")


def check_learning_rate_schedule(end: float | None, decay_steps: int | None) -> None:
    """A learning-rate schedule needs both its end and its length (one alone would do nothing)."""
    if (end is None) != (decay_steps is None):
        raise ValueError(
            "learning_rate_end and learning_rate_decay_steps go together (a linear decay needs its end and its length); "
            f"got learning_rate_end={end!r}, learning_rate_decay_steps={decay_steps!r}"
        )


class SACConfig(BaseModel):
    """Soft actor-critic (Haarnoja et al. 2018, "SAC: Algorithms and Applications").

    Defaults are the paper's and OG-MARL's: tanh-Gaussian actor, twin critics 256x256,
    lr 3e-4, gamma 0.99, tau 0.005, batch 256, automatic entropy tuning with target -|A|.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sac"] = "sac"
    hidden_sizes: HiddenSizes = (256, 256)
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    alpha_lr: float = Field(3e-4, gt=0)
    gamma: float = Field(0.99, ge=0, le=1)
    # Polyak averaging of the target critics after every gradient step.
    tau: float = Field(0.005, gt=0, le=1)
    batch_size: PositiveInt = 256
    buffer_size: PositiveInt = 1_000_000
    # Uniformly random actions (when exploring) for the first random_steps rows.
    random_steps: int = Field(5_000, ge=0)
    # No gradient step before this many rows have been observed (and never before the buffer
    # holds one batch).
    learning_starts: int = Field(5_000, ge=0)
    # Gradient steps per observed row after learning_starts (OG-MARL's model-based agents use 10).
    updates_per_step: PositiveInt = 1
    # Entropy temperature: tuned automatically towards target_entropy (None means -|A|), starting
    # from initial_alpha; with autotune_alpha false it stays at initial_alpha.
    autotune_alpha: bool = True
    initial_alpha: float = Field(1.0, gt=0)
    target_entropy: float | None = None
    # A row cut by a time limit (`truncated`) bootstraps from its next state when true (the
    # textbook treatment: the task goes on, only the episode was cut). False treats it as terminal,
    # as the OG-MARL reference does: it stores `done = 1` at step 100 (`odmar.py` lines 646 and
    # 1002, `float(done)` with `env.py` line 150, `done = current_step >= max_steps`) and its
    # target is `r + (1 - done) * gamma * Q'` (`odmar.py` line 530).
    bootstrap_on_truncation: bool = True
    # The reward a real row carries. "team": the env's reward as it comes (in a team task, the
    # team's summed reward, the same for every agent). "own_contribution": this agent's own term
    # of that sum, computed from the task's reward function (the `task_spec` the env server sends,
    # `agent_node/reward_models.py`, the same model OG-MARL scores imagined steps with) at the
    # row's next observation and action: the credit-assignment control for OG-MARL, whose
    # imagined rows carry that term. Needs an env that describes its reward (reward_collection_v0).
    reward: Literal["team", "own_contribution"] = "team"

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> SACConfig:
        check_buffer_holds_a_batch(self.buffer_size, self.batch_size)
        return self


class OGMARLConfig(BaseModel):
    """OG-MARL: SAC trained mostly on short imagined rollouts through a world model that the agents
    fuse by consensus, with an optimism bonus on the model's uncertainty (ALGORITHMS.md section 1;
    reference code `ManuelWendl/OG-MARL`, `odmar.py`, whose constants are quoted below).

    Every default is the reference's value unless its comment says otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["og_marl"] = "og_marl"
    # The policy learner. Its defaults already are the reference's (256x256, lr 3e-4, gamma 0.99,
    # tau 0.005, batch 256, 5,000 random steps before learning). Its `updates_per_step` is set
    # from the field below; giving sac.updates_per_step a different value is an error.
    sac: SACConfig = Field(default_factory=SACConfig)
    # Environment steps (rows) between world-model refreshes (MODEL_TRAIN_FREQ = 250). A refresh
    # is: refit on real data, average by consensus, imagine new rollouts.
    model_every: PositiveInt = 250
    # Real transitions per refit (MODEL_BATCH_SIZE = 256).
    fit_transitions: PositiveInt = 256
    # Which real transitions a refit uses: "latest" takes the newest rows (fresh data, as the
    # OG-MARL description says); "uniform" draws them without replacement from the whole replay
    # buffer, as the reference code actually does.
    fit_sampling: Literal["latest", "uniform"] = "latest"
    # Real transitions held out of each refit to score the model (`og_marl/model_mse`): drawn from
    # the same pool, never fitted. Not in the reference, which scores the model on its fit data.
    holdout_transitions: PositiveInt = 64
    # Real start states per refresh (BATCH_SIZE = 256 in the reference's rollout loop), drawn
    # uniformly from the whole replay buffer.
    rollout_starts: PositiveInt = 256
    # Imagined steps from each start through the model mean (IMAGINARY_ROLLOUT_LENGTH = 2).
    rollout_horizon: PositiveInt = 2
    # c in the bonus c * sqrt(var) added to an imagined reward (OPTIMISM_SCALE = 0.01; 0 is the
    # non-optimistic ablation).
    optimism: float = Field(0.01, ge=0)
    # Which variance the bonus takes the square root of (world model kind sparse_gp only):
    # "reference" is what the reference computes, k(x,x) - k(x,Z) S k(Z,x) (`odmar.py` line 260),
    # dominated by the prior k(x,x); "epistemic" is the posterior variance of f, k(x,Z) S k(Z,x),
    # about two orders of magnitude smaller, so the same c gives a far smaller bonus
    # (see `world_models/sparse_gp.py` and configs/og_marl_ring5_epistemic.yaml for a c calibrated
    # to the reference's bonus).
    optimism_variance: Literal["reference", "epistemic"] = "reference"
    # Distance to the exact consensus average, measurable in full runs: at every refresh the agent
    # logs `consensus_probes` random bilinear projections u_k^T J v_k and u_k^T h w_k of its own
    # statistics before consensus and of the averaged ones after (`og_marl/probe/...`). The
    # directions come from `consensus_probe_seed`, the same on every agent of a run (they share
    # the config), and a projection is linear, so averaging the agents' "before" projections gives
    # the projection of the exact average; bench/og_marl.py reports each agent's relative distance
    # to it. 0 turns the probes off. Not in the reference (which averages in one process).
    consensus_probes: int = Field(16, ge=0, le=256)
    consensus_probe_seed: int = Field(0, ge=0)
    # Fraction of real rows in each SAC batch, the rest imagined (REAL_RATIO = 0.0). The reference
    # rounds its real share up to at least one row (1 of 256); here 0.0 means no real row at all.
    real_ratio: float = Field(0.0, ge=0, le=1)
    # SAC gradient steps per environment step after learning starts (UPDATES_PER_STEP = 10).
    updates_per_step: PositiveInt = 10
    # Imagined rows kept, oldest overwritten first (the reference's model buffers hold
    # BUFFER_SIZE = 1,000,000, so they keep every rollout of a 10,000-step run).
    model_buffer_size: PositiveInt = 1_000_000

    @model_validator(mode="after")
    def _consistent(self) -> OGMARLConfig:
        if "updates_per_step" in self.sac.model_fields_set and self.sac.updates_per_step != self.updates_per_step:
            raise ValueError(
                f"sac.updates_per_step ({self.sac.updates_per_step}) differs from updates_per_step "
                f"({self.updates_per_step}); set only og_marl's updates_per_step"
            )
        if not self.sac.bootstrap_on_truncation and self.real_ratio == 0.0:
            raise ValueError(
                "sac.bootstrap_on_truncation=false changes only real rows (imagined rows are never "
                "truncated), and real_ratio=0.0 puts no real row in any batch, so it would do nothing; "
                "set real_ratio > 0 (the reference's batches hold one real row: real_ratio 0.00390625 "
                "with batch_size 256) or leave bootstrap_on_truncation true"
            )
        if self.sac.reward == "own_contribution" and self.real_ratio == 0.0:
            raise ValueError(
                "sac.reward='own_contribution' changes only real rows (imagined rows always carry the "
                "agent's own term), and real_ratio=0.0 puts no real row in any batch, so it would do "
                "nothing; set real_ratio > 0 or leave sac.reward 'team'"
            )
        imagined_per_refresh = self.rollout_starts * self.rollout_horizon
        if self.model_buffer_size < imagined_per_refresh:
            raise ValueError(
                f"model_buffer_size ({self.model_buffer_size}) must hold one refresh's imagined rows, "
                f"rollout_starts * rollout_horizon = {imagined_per_refresh}"
            )
        return self

    def first_refresh_row(self) -> int:
        """The row count at which the first refresh is due: once SAC's random steps are over and
        the buffer holds one refit's data plus its held-out rows."""
        return max(self.sac.random_steps, self.fit_transitions + self.holdout_transitions)

    def sac_config(self) -> SACConfig:
        """The SAC config the agent runs: `sac` with this config's `updates_per_step`."""
        return self.sac.model_copy(update={"updates_per_step": self.updates_per_step})


# ------------------------------------------------------------------------------------------------
# The centralized-training learners (PMIC, centralized mixing, agent-count transfer, offline RL). PMIC and the
# shared DQN are in `LearnerConfig` (the node gives them the global view and their agent index).
# CQL and BC are in it for evaluation only: they train from a dataset (`python -m
# agent_node.offline`), and a run's agents may name them only with `learning: false` and
# `load_checkpoints` (AgentsConfig checks). The mixer needs a learner node, which is not built
# yet, so it stays out of the union (a YAML naming it fails validation).
# ------------------------------------------------------------------------------------------------


class PMICConfig(BaseModel):
    """PMIC on a decentralized MADDPG-style learner (ALGORITHMS.md section 4; Li et al. 2022,
    arXiv 2203.08553; reference code `yeshenpy/PMIC`, whose values are quoted with file:line).

    `pmic: false` runs the same learner without the mutual-information shaping (plain MADDPG with
    inferred teammate policies), the like-for-like baseline for the benchmark.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pmic"] = "pmic"
    # False: no superior/inferior buffers are kept and no MI estimator is trained or used.
    pmic: bool = True
    # Network widths: the reference's actor and critic are 64x64
    # (algorithms/mpe_new_maxminMADDPG.py:209, :244-246). The teammate model (not in the
    # reference, which trains all actors in one process) uses the same width.
    actor_hidden_sizes: HiddenSizes = (64, 64)
    critic_hidden_sizes: HiddenSizes = (64, 64)
    teammate_hidden_sizes: HiddenSizes = (64, 64)
    # Learning rates: actor 1e-4 (:270), critic 1e-3 (:281), both MI estimators 1e-4 (:273, :276).
    # Teammate model: ours, the critic's rate (it is a plain regression like the critic).
    actor_lr: float = Field(1e-4, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    teammate_lr: float = Field(1e-3, gt=0)
    mi_lr: float = Field(1e-4, gt=0)
    # Discount 0.95 and Polyak rate 0.01 (run_maxminMADDPG.py:138-139).
    gamma: float = Field(0.95, ge=0, le=1)
    tau: float = Field(0.01, gt=0, le=1)
    # Batch 1024 (run_maxminMADDPG.py:137), used for the critic, the actor and both MI estimators.
    batch_size: PositiveInt = 1024
    buffer_size: PositiveInt = 1_000_000
    # One gradient step per 100 environment steps once 1,024 steps were taken
    # (run_maxminMADDPG.py:295 checks `total_timesteps >= 1024 and total_timesteps % 100 == 0`).
    learning_starts: int = Field(1024, ge=0)
    train_every: PositiveInt = 100
    # Gradient-norm clipping 0.5 for critic and actors (:865, :908).
    max_grad_norm: float = Field(0.5, gt=0)
    # Penalty on the squared actions in the actor loss: the reference adds 1e-3 * (1e-3 * mean a^2)
    # (:877-878), i.e. 1e-6.
    action_l2: float = Field(1e-6, ge=0)
    # Gaussian exploration noise on the tanh output, its standard deviation decaying linearly over
    # `noise_decay_rows` rows. The reference uses Ornstein-Uhlenbeck noise (theta 0.15, sigma 0.2,
    # :12) scaled by 0.3, decaying linearly to 0 over 25,000 episodes of 25 steps
    # (run_maxminMADDPG.py:362-363); its stationary standard deviation is
    # 0.3 * 0.2 / sqrt(1 - 0.85^2) = 0.11, hence 0.1 here (uncorrelated noise needs no per-copy
    # state and no reset at episode boundaries).
    noise_start: float = Field(0.1, ge=0)
    noise_end: float = Field(0.0, ge=0)
    noise_decay_rows: PositiveInt = 625_000
    # Superior buffer: 1,000 transitions kept sorted by episode return; inferior: FIFO, 1,000
    # (run_maxminMADDPG.py:198-199). Shaping starts once the superior buffer holds 500 (:306).
    superior_capacity: PositiveInt = 1_000
    inferior_capacity: PositiveInt = 1_000
    shaping_starts_at: PositiveInt = 500
    # An episode is superior if its return beats the superior buffer's lowest and the mean of the
    # last 1,000 episode returns (:241); that mean is used once 10 episodes were seen (:240).
    return_average_window: PositiveInt = 1_000
    return_average_min_episodes: PositiveInt = 10
    # alpha (weight of the JSD lower bound on superior data) 0.01 and beta (weight of the CLUB
    # upper bound on inferior data) 0.1 (run.sh: --max_adv_c=0.01 --min_adv_c=0.1).
    mi_alpha: float = Field(0.01, ge=0)
    mi_beta: float = Field(0.1, ge=0)
    # MI estimators: 32-d separable critic embeddings (:142-143). The hidden layer is ours (the
    # reference has none for the JSD critic and 32 units for CLUB, :169-176); 64 units let the
    # critic represent the log density ratio's quadratic terms (see the estimator unit tests).
    mi_embedding_dim: PositiveInt = 32
    mi_hidden_sizes: HiddenSizes = (64,)
    # Soft bounds (low, high) on the log-variance of CLUB's q(u | s). Unset: the estimator's own
    # (LOG_VAR_MIN, LOG_VAR_MAX) in agent_node/algos/mutual_information.py, wide enough for the
    # estimator tests' sharp conditionals. The reference bounds it with tanh to (-1, 1) (variances
    # 0.37-2.7), which also caps the CLUB estimate a near-deterministic policy's joint actions reach.
    club_log_var_bounds: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PMICConfig:
        if self.club_log_var_bounds is not None and not self.club_log_var_bounds[0] < self.club_log_var_bounds[1]:
            raise ValueError(f"club_log_var_bounds must be (low, high) with low < high, got {self.club_log_var_bounds}")
        check_buffer_holds_a_batch(self.buffer_size, self.batch_size)
        if self.shaping_starts_at > self.superior_capacity:
            raise ValueError(
                f"shaping_starts_at ({self.shaping_starts_at}) can never be reached by a superior buffer "
                f"of superior_capacity {self.superior_capacity}"
            )
        if self.noise_end > self.noise_start:
            raise ValueError(f"noise_end ({self.noise_end}) must not exceed noise_start ({self.noise_start})")
        return self


class MixerConfig(BaseModel):
    """Centralized value-decomposition learning over the agents' Q-networks: VDN (Sunehag et al.
    2018) or QMIX (Rashid et al. 2018). Defaults are pymarl's QMIX settings (`oxwhirl/pymarl`,
    src/config/algs/qmix.yaml: mixing_embed_dim 32, hypernet_layers 2, hypernet_embed 64,
    double_q, target_update_interval 200; src/config/default.yaml: lr 0.0005, gamma 0.99,
    grad_norm_clip 10). pymarl counts its target interval in episodes with one update per
    episode, so 200 gradient steps here. Its batch is 32 whole episodes of a recurrent agent
    (thousands of transitions); here a batch is 256 single transitions of a feed-forward agent,
    and Adam replaces its RMSprop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["mixer"] = "mixer"
    mixer: Literal["vdn", "qmix"] = "qmix"
    # Each agent's Q-network (observation -> one value per action).
    agent_hidden_sizes: HiddenSizes = (64, 64)
    # QMIX: width of the mixing layer and of the hypernetworks that produce its weights;
    # hypernet_layers 1 is the paper's single linear map, 2 adds a ReLU hidden layer.
    mixing_embed_dim: PositiveInt = 32
    hypernet_layers: Literal[1, 2] = 2
    hypernet_hidden: PositiveInt = 64
    learning_rate: float = Field(5e-4, gt=0)
    # Linear decay of the rate over gradient steps, as DQNConfig's (both or neither).
    learning_rate_end: Annotated[float, Field(gt=0)] | None = None
    learning_rate_decay_steps: PositiveInt | None = None
    gamma: float = Field(0.99, ge=0, le=1)
    batch_size: PositiveInt = 256
    # Hard copy of online to target networks every this many gradient steps.
    target_update_period: PositiveInt = 200
    # Double-Q target: the online agent networks pick the next actions, the targets evaluate them.
    double_q: bool = True
    # The TD loss on Q_tot: "mse" as in pymarl (its masked squared TD error); "huber" (smooth L1,
    # threshold 1) as DQN's default, so a centralized run can take the agents' DQN setting.
    loss: Literal["mse", "huber"] = "mse"
    # Clip the global gradient norm; None disables clipping.
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 10.0

    @model_validator(mode="after")
    def _schedule_is_whole(self) -> MixerConfig:
        check_learning_rate_schedule(self.learning_rate_end, self.learning_rate_decay_steps)
        return self


class SharedDQNConfig(BaseModel):
    """A DQN whose input is the observation zero-padded to `max_obs_dim` plus a one-hot agent index
    padded to `max_agents`, so that one set of parameters serves any agent of any run whose agents
    and observations fit those maxima (ALGORITHMS.md section 5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["shared_dqn"] = "shared_dqn"
    dqn: DQNConfig = Field(default_factory=DQNConfig)
    # The largest flattened observation and the largest agent count any run of this policy will
    # have; a checkpoint moves between runs only if both are the same.
    max_obs_dim: PositiveInt
    max_agents: PositiveInt
    # Start the weights of the agent-index inputs at zero. An index never seen in training then
    # keeps zero weights (its input is 0 on every training row, so its gradient is 0), and a policy
    # trained with 2 agents treats agents 2 and 3 exactly as if they had no index input.
    zero_init_agent_index: bool = True


class CQLConfig(BaseModel):
    """Conservative Q-learning for discrete actions, CQL(H) (Kumar et al. 2020, eq. 4 with the
    log-sum-exp regularizer), on a Double-DQN backbone, trained from a dataset with no env."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["cql"] = "cql"
    hidden_sizes: HiddenSizes = (64, 64)
    learning_rate: float = Field(5e-4, gt=0)
    gamma: float = Field(0.99, ge=0, le=1)
    batch_size: PositiveInt = 64
    # Weight of the conservative term E_s[logsumexp_a Q(s, a)] - E_(s,a)~D[Q(s, a)]; the paper's
    # discrete-action experiments use 1.0 and 4.0 (Atari); 0 turns CQL into offline Double DQN.
    cql_alpha: float = Field(1.0, ge=0)
    # Gradient steps of one offline training run (the learner reports them as due until done).
    gradient_steps: PositiveInt = 20_000
    target_update_period: PositiveInt = 500
    loss: Literal["huber", "mse"] = "huber"
    max_grad_norm: Annotated[float, Field(gt=0)] | None = 10.0


class BCConfig(BaseModel):
    """Behaviour cloning for discrete actions: maximum likelihood of the dataset's actions, the
    baseline an offline RL learner has to beat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bc"] = "bc"
    hidden_sizes: HiddenSizes = (64, 64)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: PositiveInt = 64
    gradient_steps: PositiveInt = 10_000


class GoalDQNConfig(BaseModel):
    """Goal-conditioned DQN with hindsight relabelling (agent_node/algos/goal_dqn.py).

    In `LearnerConfig`: an agent node runs it with its goal session (agent_node/goals/session.py),
    which the run's `agents.goals` section configures (agent_node/goals/config.py); a run with
    this learner and no goals section, or the reverse, is refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["goal_dqn"] = "goal_dqn"
    hidden_sizes: HiddenSizes = (128, 128)
    learning_rate: float = Field(1e-3, gt=0)
    gamma: float = Field(0.95, ge=0, le=1)
    batch_size: PositiveInt = 128
    buffer_size: PositiveInt = 200_000
    learning_starts: int = Field(1_000, ge=0)
    train_every: PositiveInt = 2
    target_update_period: PositiveInt = 250
    epsilon_start: float = Field(1.0, ge=0, le=1)
    epsilon_end: float = Field(0.05, ge=0, le=1)
    epsilon_decay_steps: PositiveInt = 20_000
    her_strategy: Literal["none", "final", "future"] = "future"
    her_k: PositiveInt = 4


LearnerConfig = Annotated[
    DQNConfig | SACConfig | OGMARLConfig | PMICConfig | SharedDQNConfig | CQLConfig | BCConfig | GoalDQNConfig,
    Field(discriminator="kind"),
]

# Learners that need the env server's global view (state and joint action) on every observation.
NEEDS_GLOBAL_VIEW = frozenset({"pmic"})
# Learners trained from a dataset, never from a run's own transitions.
OFFLINE_KINDS = frozenset({"cql", "bc"})
# The action space each learner acts in: "discrete" (a Discrete space: one of n actions) or "box"
# (a 1-D Box: a vector of continuous actions). Each learner's constructor refuses any other; the
# orchestrator holds the env's action spaces against this table before launch
# (orchestrator/prelaunch.py), so a mismatch is a config error rather than a crash of every node.
LEARNER_ACTION_SPACE: dict[str, Literal["discrete", "box"]] = {
    "dqn": "discrete",
    "shared_dqn": "discrete",
    "goal_dqn": "discrete",
    "cql": "discrete",
    "bc": "discrete",
    "sac": "box",
    "og_marl": "box",
    "pmic": "box",
}
# The built-in learners that read image observations through a CNN (agent_node/algos/encoders.py).
# The others would flatten the pixels into their first layer (tens of millions of weights for
# pistonball, and no locality), so the orchestrator refuses them on image observations before
# launch. A plugin learner encodes its observations itself and is not checked.
IMAGE_ENCODER_KINDS = frozenset({"dqn"})
