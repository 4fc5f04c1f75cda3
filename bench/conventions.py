"""Parley's simple_spread return in the conventions other projects report (docs/results/return_conventions.md).

What Parley reports (`eval/return_mean`, env_server/evaluation.py and vector.py): each agent's
reward from the env summed over the episode, averaged over the agents, then over the evaluation
episodes ("per agent per episode"). The env is mpe2's simple_spread_v3 with its default
local_ratio 0.5, so each agent's reward per step is

    r_i = 0.5 * (-D_t) + 0.5 * (-c_i,t)

with D_t the sum over landmarks of the nearest agent's distance and c_i,t the number of other
agents touching agent i. Over an episode of T steps with N agents, writing D = sum_t D_t and
C = sum_t sum_i c_i,t, Parley's figure is R = -D/2 - C/(2N).

- **EPyMARL** (uoe-agents/epymarl, `common_reward: True`, `reward_scalarisation: "sum"` by
  default): the env's rewards summed over the agents each step, the episode's return the sum over
  its steps: N * R. With `reward_scalarisation: "mean"`: R.
- **MAPPO's paper** (marlbenchmark/on-policy, its own MPE code): every agent gets the team's
  summed reward (`shared_reward`), each agent's term being -D_t minus one for every agent touching
  it, itself included (its `is_collision(a, agent)` does not skip a == agent); it reports the mean
  step reward times the episode length. Per agent per episode: -N*D - C - N*T. Since
  -N*D = 2N*R + C, that is 2N*R - N*T exactly: the collision terms cancel (local_ratio 0.5 only).
- **BenchMARL** (facebookresearch/BenchMARL): the evaluation return is each agent's reward summed
  over the episode, averaged over the agents, Parley's statistic; its simple_spread task
  defaults to N = 3 and max_cycles = 100, another task than Parley's N = 4, 25 steps.

Each is a function of Parley's number only for the same task (N, T, the env's landmark draws):
a converted number is comparable to another project's number for that task, not to a number
published for N = 3 (MAPPO's on-policy env also draws landmarks in 0.8 of the square, mpe2 in
all of it).
"""

from __future__ import annotations

PARLEY_CONVENTION = ("per agent per episode: each agent's env reward summed over the episode, averaged over the agents "
                     "and the evaluation episodes")


def to_conventions(per_agent_return: float, agents: int = 4, steps: int = 25, local_ratio: float = 0.5) -> dict[str, float]:
    """Parley's simple_spread figure (`per_agent_return`: per agent per episode, `agents` agents,
    `steps`-step episodes, the env's `local_ratio`) as EPyMARL (default sum and the mean
    scalarisation), MAPPO's paper (its on-policy code's `average_episode_rewards`) and BenchMARL
    (its `eval/reward/episode_reward_mean`) report the same episodes."""
    if agents < 1 or steps < 1:
        raise ValueError(f"agents and steps: expected positive counts, got agents={agents}, steps={steps}")
    if local_ratio != 0.5:
        # MAPPO's number weighs the distance term N times and each collision once; Parley's single
        # figure fixes their sum only when the env weighs them equally (local_ratio 0.5).
        raise ValueError(f"local_ratio: the conversion holds for mpe2's default 0.5, got {local_ratio}")
    return {
        "parley": per_agent_return,
        "epymarl_sum": agents * per_agent_return,
        "epymarl_mean": per_agent_return,
        "mappo": 2 * agents * per_agent_return - agents * steps,
        "benchmarl": per_agent_return,
    }


def main(argv: list[str] | None = None) -> None:
    """`python bench/conventions.py RETURN [RETURN ...] [--agents N] [--steps T]`: a table."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("returns", type=float, nargs="+", help="Parley's per-agent per-episode returns")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args(argv)
    print("| Parley (per agent) | EPyMARL (sum, default) | EPyMARL (mean) | MAPPO paper | BenchMARL |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for value in args.returns:
        c = to_conventions(value, args.agents, args.steps)
        print(f"| {c['parley']:.1f} | {c['epymarl_sum']:.1f} | {c['epymarl_mean']:.1f} | {c['mappo']:.1f} | {c['benchmarl']:.1f} |")


if __name__ == "__main__":
    main()
