"""SAC's `reward: own_contribution`, the credit-assignment control for OG-MARL: every real row
carries the agent's own term of the team reward (what OG-MARL's imagined rows carry), computed
with the task's reward model; with the default `reward: team` the row keeps the env's reward.

The oracle is the environment itself: an agent's own term is `collection_reward` of that agent
alone (its position after the move, its clipped action), and the five own terms sum to the team
reward the env paid."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pydantic
import pytest
import torch

from agent_node.algos import LearnerConfig, build_learner
from agent_node.algos.config import OGMARLConfig, SACConfig
from agent_node.algos.sac import SACAgent
from agent_node.reward_models import reward_model_from_spec
from agent_node.roles import Transition
from agent_node.world_models import SparseGPConfig
from env_server.envs.reward_collection import collection_reward, parallel_env

torch.set_num_threads(1)

AGENTS = 5
ROWS = 300  # random actions (random_steps is larger): every row is scored, no network runs
SMALL = SACConfig(hidden_sizes=(16, 16), batch_size=16, buffer_size=1_000, random_steps=10_000, learning_starts=10_000)


def play(env, agents: dict[str, SACAgent], rows: int) -> list[dict]:
    """Step `env` `rows` times with every agent acting and observing; return, per step, the env's
    rewards, each agent's own term as the env computes it, and the actions."""
    observations, _ = env.reset()
    steps = []
    for _ in range(rows):
        actions = {name: agent.act(observations[name][None])[0] for name, agent in agents.items()}
        next_observations, rewards, terminations, truncations, _ = env.step(actions)
        positions = env.positions
        own = {
            name: collection_reward(positions[i : i + 1], np.clip(actions[name], -1, 1)[None], env.action_penalty,
                                    penalty_coef=env.action_penalty_coef)
            for i, name in enumerate(agents)
        }
        for name, agent in agents.items():
            agent.observe(Transition(
                obs=observations[name][None], action=actions[name][None],
                reward=np.array([rewards[name]], np.float32), next_obs=next_observations[name][None],
                terminated=np.array([terminations[name]]), truncated=np.array([truncations[name]]),
            ))
        steps.append({"team": rewards["agent_0"], "own": own})
        observations = next_observations if not truncations["agent_0"] else env.reset()[0]
    return steps


def team_of_agents(env, config: SACConfig) -> dict[str, SACAgent]:
    return {
        name: build_learner(config, env.observation_space(name), env.action_space(name), index, task_spec=env.task_spec())
        for index, name in enumerate(env.possible_agents)
    }


@pytest.mark.parametrize("penalty", [False, True])
def test_each_real_row_carries_the_agents_own_term_and_the_terms_sum_to_the_team_reward(penalty):
    env = parallel_env(num_agents=AGENTS, max_cycles=50, action_penalty=penalty)
    agents = team_of_agents(env, SMALL.model_copy(update={"reward": "own_contribution"}))
    steps = play(env, agents, ROWS)

    stored = {name: agent.replay.reward[:ROWS].astype(np.float64) for name, agent in agents.items()}
    for name, agent in agents.items():
        # The row's reward is the reward model's contribution at the row's next observation and action...
        expected = agent.reward_model.contribution(agent.replay.next_obs[:ROWS], agent.replay.action[:ROWS])
        np.testing.assert_allclose(stored[name], expected, rtol=0, atol=1e-6)
        # ... which is this agent's own term as the environment computes it.
        np.testing.assert_allclose(stored[name], [step["own"][name] for step in steps], rtol=0, atol=1e-5)
    np.testing.assert_allclose(sum(stored.values()), [step["team"] for step in steps], rtol=0, atol=1e-4)
    # Not the team reward: the agents' rows differ from it and from each other.
    team = np.array([step["team"] for step in steps])
    assert all(not np.allclose(stored[name], team) for name in agents)
    if not penalty:  # random walks from the start circle: some rows pay, so the terms are not all zero
        assert any(np.any(values > 0) for values in stored.values())


def test_by_default_a_real_row_keeps_the_env_reward():
    env = parallel_env(num_agents=AGENTS, max_cycles=50, action_penalty=True)
    agents = team_of_agents(env, SMALL)
    steps = play(env, agents, 120)
    team = np.array([step["team"] for step in steps], np.float32)
    for agent in agents.values():
        assert agent.reward_model is None
        np.testing.assert_array_equal(agent.replay.reward[:120], team)


def test_og_marl_real_rows_carry_the_own_term_with_sac_reward_own_contribution():
    env = parallel_env(num_agents=2, max_cycles=50, action_penalty=True)
    config = OGMARLConfig(sac=SMALL.model_copy(update={"reward": "own_contribution"}), real_ratio=0.25,
                          updates_per_step=1, model_buffer_size=1_000, rollout_starts=16)
    agents = {
        name: build_learner(config, env.observation_space(name), env.action_space(name), index,
                            world_model_config=SparseGPConfig(num_inducing=16), task_spec=env.task_spec())
        for index, name in enumerate(env.possible_agents)
    }
    steps = play(env, agents, 60)
    for name, agent in agents.items():
        assert agent.sac.reward_model is agent.reward_model  # one reward model: the imagined rows' one
        np.testing.assert_allclose(agent.replay.reward[:60], [step["own"][name] for step in steps], rtol=0, atol=1e-5)


def test_the_setting_parses_and_bad_values_are_refused():
    parsed = pydantic.TypeAdapter(LearnerConfig).validate_python({"kind": "sac", "reward": "own_contribution"})
    assert parsed.reward == "own_contribution" and SACConfig().reward == "team"
    with pytest.raises(pydantic.ValidationError, match="reward"):
        SACConfig(reward="own")
    # In OG-MARL the setting acts on real rows only: refused where no batch holds one.
    with pytest.raises(pydantic.ValidationError, match="sac.reward='own_contribution'.*would do nothing"):
        OGMARLConfig(sac=SACConfig(reward="own_contribution"), real_ratio=0.0)


def test_own_contribution_is_refused_without_a_reward_model_or_on_other_spaces():
    env = parallel_env(num_agents=2)
    spaces = (env.observation_space("agent_0"), env.action_space("agent_0"))
    own = SMALL.model_copy(update={"reward": "own_contribution"})
    with pytest.raises(ValueError, match="learner.reward 'own_contribution' needs the task's reward function"):
        build_learner(own, *spaces, 0)  # an env that sent no task_spec
    with pytest.raises(ValueError, match="learner.reward 'own_contribution'"):
        SACAgent(own, *spaces, 0)
    model = reward_model_from_spec(env.task_spec())
    with pytest.raises(ValueError, match="does not use it"):
        SACAgent(SMALL, *spaces, 0, reward_model=model)
    wide = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
    with pytest.raises(ValueError, match="observation shape \\(2,\\) and action shape \\(2,\\), got \\(3,\\)"):
        build_learner(own, wide, spaces[1], 0, task_spec=env.task_spec())
