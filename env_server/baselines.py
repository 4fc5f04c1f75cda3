"""The lines a learning curve is read against: a random policy, and a scripted oracle where the env has one.

At its first evaluation the env server plays these policies itself on the evaluation copies,
from the same seed every evaluation starts from, and writes their mean return per agent per
episode beside the agents' (`eval/random_return_mean`, `eval/oracle_return_mean`): the same
episodes, the same unit, no second program to run. Both take a few tens of milliseconds.

`orchestrate evaluate` prints the same random baseline episode by episode, from this module run
as a command (a subprocess: the orchestrator imports no env code):

    python -m env_server.baselines '{"name": "mpe2.simple_spread_v3", "kwargs": {"N": 3},
        "construction_seed": C, "eval_seed": S, "episodes": 5}'

prints one JSON object, `{"episodes": [{"agent_0": -12.5, ...}, ...]}` (each agent's return in
each episode), or `{"error": "..."}` with exit 2. It builds the copies as the env server builds
its evaluation copies (`make_env` with the run's construction seed, copy i reset from
`eval_seed + i`) and plays them with the same `random_policy`, whose actions for copy i come
from their own stream derived from `eval_seed` and i: so the command and
`eval/random_return_mean` give one number for one run, and episode i's random return does not
depend on how many episodes are played beside it.

The oracle of simple_spread (MPE, `mpe2.simple_spread_v3`, discrete actions): at the episode's
start the Hungarian method assigns the landmarks to the agents (one each, least total distance),
and each agent steers toward its own with the discrete actions, choosing each step the action
whose predicted resting point (one step of the env's physics, then coasting to a stop under its
damping) is nearest its landmark. It knows what no agent does at the start (every agent's
position), so it is a ceiling for agents that agree on an assignment, not the optimum.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import numpy as np
from gymnasium import spaces
from scipy.optimize import linear_sum_assignment

from env_server.evaluation import landmarks_covered, spread_end_state
from env_server.registry import make_env
from env_server.vector import BatchedStep, VectorizedParallelEnv
from protocols.seeds import derive_seed

Policy = Callable[[BatchedStep], dict[str, Any]]

# simple_spread's physics (mpe2 core.py World and simple_spread.py make_world): dt 0.1, damping
# 0.25, unit mass, a discrete action pushes with 5.0 along one axis.
DT, DAMPING, SENSITIVITY = 0.1, 0.25, 5.0
PUSH = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64) * SENSITIVITY


def random_policy(action_spaces: dict[str, spaces.Space], seed: int) -> Policy:
    """Uniformly random actions; copy i draws from its own generator, seeded
    `derive_seed(seed, i, "random_actions")`, so its episode is the same however many copies play."""
    generators: list[np.random.Generator] = []

    def act(result: BatchedStep) -> dict[str, Any]:
        copies = len(result.episode_start)
        while len(generators) < copies:
            generators.append(np.random.default_rng(derive_seed(seed, len(generators), "random_actions")))
        return {agent: np.stack([_sample(space, generators[copy]) for copy in range(copies)])
                for agent, space in action_spaces.items()}

    return act


def _sample(space: spaces.Space, rng: np.random.Generator) -> Any:
    if isinstance(space, spaces.Discrete):
        return np.int64(space.start + rng.integers(space.n))
    if isinstance(space, spaces.Box):
        return rng.uniform(space.low, space.high).astype(space.dtype)
    raise TypeError(f"the random baseline samples Discrete and Box actions, not {space!r}")


def spread_oracle(agents: list[str]) -> Policy:
    """The scripted oracle of simple_spread (module docstring); one assignment per episode start."""
    num_agents = len(agents)
    assigned: dict[int, np.ndarray] = {}

    def act(result: BatchedStep) -> dict[str, Any]:
        obs = np.stack([np.asarray(result.observations[agent], dtype=np.float64) for agent in agents])  # (N, K, D)
        copies = obs.shape[1]
        offsets = obs[:, :, 4:4 + 2 * num_agents].reshape(num_agents, copies, num_agents, 2)  # landmark - agent
        for copy in range(copies):
            if result.episode_start[copy] or copy not in assigned:
                _, columns = linear_sum_assignment(np.linalg.norm(offsets[:, copy], axis=2))
                assigned[copy] = columns
        actions = {}
        for i, agent in enumerate(agents):
            velocity = obs[i, :, 0:2]
            target = np.stack([offsets[i, copy, assigned[copy][i]] for copy in range(copies)])  # (K, 2)
            actions[agent] = np.array([_steer(velocity[k], target[k]) for k in range(copies)], dtype=np.int64)
        return actions

    return act


def _steer(velocity: np.ndarray, offset: np.ndarray) -> int:
    """The action whose resting point is nearest the target (`offset`: target minus position)."""
    next_velocity = velocity * (1 - DAMPING) + PUSH * DT  # (5, 2)
    moved = next_velocity * DT
    coast = next_velocity * DT * (1 - DAMPING) / DAMPING  # the geometric sum of the later steps
    return int(np.argmin(np.linalg.norm(offset - moved - coast, axis=1)))


def oracle_for(env_name: str, action_spaces: dict[str, spaces.Space]) -> Policy | None:
    """The scripted oracle of a named env, or None where there is none (simple_spread's steers with
    its five discrete moves: none for continuous actions)."""
    discrete_moves = all(isinstance(space, spaces.Discrete) and space.n == len(PUSH) for space in action_spaces.values())
    if env_name.endswith("simple_spread_v3") and discrete_moves:
        return spread_oracle(list(action_spaces))
    return None


def play(envs: VectorizedParallelEnv, seed: int, policy: Policy) -> list[dict[str, float]]:
    """One episode in every copy from `seed` (copy i from seed + i; no autoreset): each agent's
    return in each episode, in copy order."""
    if envs.autoreset:
        raise ValueError("baselines play one episode per copy: give evaluation copies (autoreset off)")
    result = envs.reset(seed)
    returns: list[dict[str, float] | None] = [None] * envs.num_copies
    while not envs.all_finished:
        running = [copy for copy in range(envs.num_copies) if envs.copy_running(copy)]
        result = envs.step(policy(result))
        # The copies that ended in this step report in copy order (VectorizedParallelEnv.step).
        ended = [copy for copy in running if not envs.copy_running(copy)]
        for copy, agent_returns in zip(ended, result.episode_agent_returns, strict=True):
            returns[copy] = agent_returns
    return returns  # type: ignore[return-value]  # every copy ended


def mean_return_per_agent(episodes: list[dict[str, float]]) -> float:
    """The mean over episodes of the mean over agents, in plain floats and in this order, as
    `orchestrate evaluate` computes it from the command's rows: the same number to the last bit."""
    per_episode = [sum(episode.values()) / len(episode) for episode in episodes]
    return sum(per_episode) / len(per_episode)


def covered_at_end(envs: VectorizedParallelEnv) -> float | None:
    """The share of landmarks covered at the end of the episode every copy just played (simple_spread
    only: env_server/evaluation.py), None for other envs."""
    ends = [spread_end_state(env) for env in envs.copies]
    if any(end is None for end in ends):
        return None
    return float(np.mean([landmarks_covered(agents, landmarks) / len(landmarks) for agents, landmarks in ends]))


def baseline_metrics(envs: VectorizedParallelEnv, seed: int, env_name: str) -> dict[str, float]:
    """`eval/random_return_mean` and, where the env has an oracle, `eval/oracle_return_mean`; on
    simple_spread also the landmarks each covered at the end (`eval/random_landmarks_covered`,
    `eval/oracle_landmarks_covered`), the lines the agents' `eval/landmarks_covered` is read against."""
    metrics = {"eval/random_return_mean": mean_return_per_agent(play(envs, seed, random_policy(envs.action_spaces, seed)))}
    if (covered := covered_at_end(envs)) is not None:
        metrics["eval/random_landmarks_covered"] = covered
    oracle = oracle_for(env_name, {agent: envs.action_spaces[agent] for agent in envs.possible_agents})
    if oracle is not None:
        metrics["eval/oracle_return_mean"] = mean_return_per_agent(play(envs, seed, oracle))
        if (covered := covered_at_end(envs)) is not None:
            metrics["eval/oracle_landmarks_covered"] = covered
    return metrics


def random_returns(name: str, kwargs: dict[str, Any], construction_seed: int, eval_seed: int,
                   episodes: int) -> list[dict[str, float]]:
    """Each agent's return in each of `episodes` episodes of `random_policy`, on copies built and
    reset as the env server's evaluation copies (the module docstring)."""
    envs = VectorizedParallelEnv(lambda: make_env(name, kwargs, construction_seed=construction_seed), episodes,
                                 autoreset=False)
    try:
        return play(envs, eval_seed, random_policy(envs.action_spaces, eval_seed))
    finally:
        envs.close()


def main(argv: list[str]) -> int:
    try:
        request = json.loads(argv[0])
        rows = random_returns(request["name"], request.get("kwargs") or {}, request["construction_seed"],
                              request["eval_seed"], request["episodes"])
    except Exception as error:  # any failure is reported to the orchestrator as one line
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 2
    print(json.dumps({"episodes": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
