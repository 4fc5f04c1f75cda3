"""The `training` section of a run config: decentralized (every agent trains itself) or centralized
(a `learner` node trains every agent's Q-network through a VDN or QMIX mixer).

    training: {mode: decentralized}                      # the default: each agent node learns alone
    training: {mode: centralized, mixer: qmix}           # CTDE through a learner node
    training: {mode: centralized, mixer: vdn, params_every: 25}

**One set of hyperparameters, two ways to train.** In centralized mode the agents' learner stays
`agents.learner: {kind: dqn, ...}` and its values keep their meaning: `hidden_sizes` shapes every
agent's Q-network, the epsilon schedule drives each agent's exploration (it still acts in its own
process), and the learning values (`learning_rate` and its schedule, `gamma`, `batch_size`, `buffer_size`,
`learning_starts`, `train_every`, `target_update_period`, `double_dqn`, `loss`, `max_grad_norm`)
are taken by the learner node for the joint update instead (`mixer_config`, `learner_schedule`).
So switching `training.mode` on the same YAML compares independent DQN (IQL) with VDN / QMIX at
equal hyperparameters. What the centralized learner does not implement is refused
(agent_node/ctde/description.py, which reads the other sections too) rather than ignored.

No torch here: the orchestrator validates this section in a fraction of a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from agent_node.algos.config import DQNConfig, MixerConfig


class DecentralizedTraining(BaseModel):
    """Every agent node trains its own learner from its own transitions (IQL with `kind: dqn`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["decentralized"] = "decentralized"


class CentralizedTraining(BaseModel):
    """A `learner` node joins the agents' transitions of each env step into one joint row with the
    env's global state and trains all agents' Q-networks through a mixer; each agent loads its
    network's parameters when they come back (agent_node/ctde/learner_node.py, agent_node/ctde/client.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["centralized"]
    mixer: Literal["vdn", "qmix"] = "qmix"
    # QMIX only (refused with vdn, which has no parameters): the mixing layer's width and its
    # hypernetworks (see MixerConfig).
    mixing_embed_dim: Annotated[int, Field(gt=0)] | None = None
    hypernet_layers: Literal[1, 2] | None = None
    hypernet_hidden: Annotated[int, Field(gt=0)] | None = None
    # The learner sends every agent its Q-network after every this many gradient steps (and once
    # when the agent joins, so every agent acts with the learner's network from the start).
    params_every: int = Field(50, gt=0)
    # torch.set_num_threads in the learner node.
    torch_threads: int = Field(1, ge=1)
    # Pieces of env steps that wait for the other agents' pieces; beyond this many (an agent that
    # died or dropped a copy) the oldest are dropped and counted (`learner/rows_evicted`).
    max_pending_rows: int = Field(10_000, gt=0)

    def qmix_settings(self) -> dict[str, int]:
        """The QMIX fields given (the rest keep MixerConfig's defaults)."""
        given = {
            "mixing_embed_dim": self.mixing_embed_dim,
            "hypernet_layers": self.hypernet_layers,
            "hypernet_hidden": self.hypernet_hidden,
        }
        return {name: value for name, value in given.items() if value is not None}


TrainingConfig = Annotated[DecentralizedTraining | CentralizedTraining, Field(discriminator="mode")]


# The DQN settings a MixerConfig takes under the same name.
_TAKEN_FROM_DQN = ("learning_rate", "learning_rate_end", "learning_rate_decay_steps", "gamma", "batch_size",
                   "target_update_period", "loss", "max_grad_norm")


def mixer_config(training: CentralizedTraining, dqn: DQNConfig) -> MixerConfig:
    """The learner node's MixerConfig: the mixer from `training`, the rest from the agents' DQN."""
    from agent_node.algos.config import MixerConfig

    same_name = {name: getattr(dqn, name) for name in _TAKEN_FROM_DQN}
    return MixerConfig(mixer=training.mixer, agent_hidden_sizes=dqn.hidden_sizes, double_q=dqn.double_dqn, **same_name,
                       **training.qmix_settings())


def learner_schedule(dqn: DQNConfig) -> dict[str, float | int]:
    """The learner node's replay and update schedule from the agents' DQN: joint rows kept, rows
    before the first gradient step, gradient steps per joint row (one per `train_every` rows, as
    each DQN agent takes one per `train_every` of its own rows)."""
    return {
        "replay_capacity": dqn.buffer_size,
        "learning_starts": max(dqn.learning_starts, dqn.batch_size),
        "gradient_steps_per_row": 1.0 / dqn.train_every,
    }
