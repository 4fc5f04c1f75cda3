"""The returns of uniformly random actions on the episodes an evaluation plays: the baseline that
`orchestrate evaluate` prints beside the trained agents' returns.

    python -m env_server.random_policy '{"name": "mpe2.simple_spread_v3", "kwargs": {"N": 3},
        "construction_seed": C, "eval_seed": S, "episodes": 5}'

prints one JSON object, `{"episodes": [{"agent_0": -12.5, ...}, ...]}` (each agent's return in each
episode), or `{"error": "..."}` with exit 2. Episode i is played on an env built and reset as the
env server builds and resets its evaluation copy i (`make_env` with the run's construction seed,
`reset(seed=eval_seed + i)`, env_server/__main__.py and vector.py), so row i starts where the
agents' row i started. Each agent's actions are drawn from its own action space, seeded from
`eval_seed`, so the baseline is the same every time. A subprocess for the same reason as the
pre-launch check (env_server/precheck.py): the orchestrator imports no env code.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from env_server.registry import make_env
from protocols.seeds import derive_seed


def random_returns(name: str, kwargs: dict[str, Any], construction_seed: int, eval_seed: int, episodes: int) -> list[dict[str, float]]:
    """Each possible agent's return in each of `episodes` episodes of uniformly random actions."""
    env = make_env(name, kwargs, construction_seed=construction_seed)
    try:
        spaces = {agent: env.action_space(agent) for agent in env.possible_agents}
        for index, agent in enumerate(env.possible_agents):
            spaces[agent].seed(derive_seed(eval_seed, index, "random_policy"))
        rows = []
        for episode in range(episodes):
            env.reset(seed=eval_seed + episode)
            returns = {str(agent): 0.0 for agent in env.possible_agents}
            while env.agents:
                _, rewards, _, _, _ = env.step({agent: spaces[agent].sample() for agent in env.agents})
                for agent, reward in rewards.items():
                    returns[str(agent)] += float(reward)
            rows.append(returns)
        return rows
    finally:
        env.close()


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
