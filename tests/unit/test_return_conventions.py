"""bench/conventions.py against the conventions computed directly from simple_spread episodes: the
episode played in mpe2, and each project's figure built from the env's world step by step as its
code builds it (EPyMARL's summed common reward, MAPPO's on-policy shared reward with its
self-collision term, BenchMARL's per-agent mean)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from mpe2 import simple_spread_v3

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from conventions import to_conventions  # noqa: E402

N, T = 4, 25


def play(seed: int, crowded: bool) -> dict[str, float]:
    """One random episode: Parley's figure and the others', each from its own definition.
    `crowded`: the agents start within 0.2 of one point, so that they collide (random agents
    spread over the square seldom do)."""
    env = simple_spread_v3.parallel_env(N=N, max_cycles=T, continuous_actions=False)
    env.reset(seed=seed)
    raw = env.unwrapped
    rng = np.random.default_rng(seed)
    if crowded:
        for agent in raw.world.agents:
            agent.state.p_pos = rng.uniform(-0.1, 0.1, 2)
    returns = np.zeros(N)
    mappo_team, collisions = 0.0, 0
    for _ in range(T):
        rewards = env.step({agent: int(rng.integers(5)) for agent in env.agents})[1]
        returns += [rewards[f"agent_{i}"] for i in range(N)]
        world = raw.world
        distance = sum(min(np.linalg.norm(a.state.p_pos - lm.state.p_pos) for a in world.agents) for lm in world.landmarks)
        for agent in world.agents:
            touching = sum(raw.scenario.is_collision(other, agent) for other in world.agents if other is not agent)
            collisions += touching
            mappo_team += -distance - touching - 1  # on-policy's reward: is_collision(agent, agent) is true too
    env.close()
    return {"parley": float(returns.mean()), "epymarl_sum": float(returns.sum()), "mappo": mappo_team,
            "benchmarl": float(returns.mean()), "collisions": collisions}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("crowded", [False, True])
def test_the_conversions_match_each_projects_definition_on_real_episodes(seed, crowded):
    played = play(seed, crowded)
    converted = to_conventions(played["parley"], N, T)
    for convention in ("epymarl_sum", "mappo", "benchmarl"):
        assert converted[convention] == pytest.approx(played[convention], abs=1e-6), convention
    assert converted["epymarl_mean"] == pytest.approx(played["parley"])


def test_the_crowded_episodes_collide():
    # The collision terms cancel only if the MAPPO conversion is right: episodes with collisions test it.
    assert all(play(seed, crowded=True)["collisions"] > 10 for seed in range(3))


def test_what_cannot_be_converted_is_refused():
    with pytest.raises(ValueError, match="local_ratio"):
        to_conventions(-14.1, local_ratio=0.3)
    with pytest.raises(ValueError, match="agents and steps"):
        to_conventions(-14.1, agents=0)
