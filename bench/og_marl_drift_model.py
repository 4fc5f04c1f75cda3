"""Can the `_drift` regime show sharing at all? OG-MARL's GP fitted on one agent's rows against the
GP fused from all five agents' rows, one-step prediction error, no learning and no orchestrator.

    python bench/og_marl_drift_model.py [--seeds 0,1,2] [--amplitudes 0,0.5] [--fit-rows 256,32] [--json]

Per seed and drift amplitude (`env.kwargs.drift_amplitude`, env_server/envs/reward_collection.py):
5 agents play OG-MARL's random phase (5,000 steps of uniformly random commands, episodes of 100
steps from the fixed start circle) and each keeps its own rows. Then, as at OG-MARL's first
refresh, every agent draws `fit-rows` of its rows uniformly (the refit sample, `fit_sampling:
uniform`) and fits the shipped GP (`configs/og_marl_ring5.yaml`'s world model); the *local* model
is that fit, the *fused* one is the GP fitted on the five samples pooled, which is what exact
consensus on the natural parameters gives (`sparse_gp.py`: at exact consensus the fused posterior
is the centralized one; the ring's 100 rounds come close to it).

Each agent's two models are scored by the mean squared one-step error of the next position,
against that agent's true dynamics, on four sets:
- `own`: 256 of the agent's own random-phase rows not in its refit sample (OG-MARL's held-out
  `og_marl/model_mse` is this kind of number);
- `sites`: positions near the ten reward sites (normal, SD 0.3), random commands: where a good
  policy spends its episodes;
- `others`: the other four agents' held-out positions, with this agent's gains: the parts of the
  map the others walked;
- `map`: positions uniform over the whole world.
A row per (amplitude, refit size) gives the mean over agents and seeds of each error and on how
many of the (agent, seed) pairs the fused model's error was the smaller, and how much of the map
the data cover: the fraction of a 40 x 40 grid over the world within COVER_RADIUS (about the RBF's
lengthscale, 2) of one of the agent's refit rows, and of one of the five agents' pooled rows.

This is a check of the world model only: a smaller one-step error does not promise a higher
return (the policy is trained on 2-step imagined rollouts from the agent's own start states, and
its real rows correct it), which only `bench/og_marl.py --variants og_marl_drift,og_marl_local_drift`
measures. A few seconds of CPU per seed and setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RANDOM_STEPS = 5000  # OG-MARL's random phase (configs/og_marl_ring5.yaml, sac.random_steps)
EVALUATION_ROWS = 256  # rows in each scoring set
SITE_SPREAD = 0.3  # SD of the `sites` positions around each site (the site radius is 0.5)
COVER_RADIUS = 1.5  # a grid point within this of a fitted row counts as covered


def random_phase(env, steps: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Each agent's rows (obs, action, next_obs) from `steps` lockstep steps of uniform commands."""
    rows = [{"obs": [], "action": [], "next_obs": []} for _ in env.possible_agents]
    observations, _ = env.reset()
    for _ in range(steps):
        actions = {name: rng.uniform(-1.0, 1.0, 2) for name in env.possible_agents}
        next_observations, *_ = env.step(actions)
        for index, name in enumerate(env.possible_agents):
            rows[index]["obs"].append(observations[name])
            rows[index]["action"].append(actions[name])
            rows[index]["next_obs"].append(next_observations[name])
        observations = next_observations if env.agents else env.reset()[0]
    return [{key: np.asarray(value, dtype=np.float64) for key, value in agent.items()} for agent in rows]


def fitted(gp_config, samples: list[dict[str, np.ndarray]]):
    from agent_node.world_models.sparse_gp import SparseGPWorldModel

    model = SparseGPWorldModel(gp_config, state_dim=2, action_dim=2)
    model.fit(*(np.concatenate([sample[key] for sample in samples]) for key in ("obs", "action", "next_obs")))
    return model


def one_step_mse(model, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> float:
    predicted, _ = model.predict(obs, action)
    return float(np.mean((predicted - next_obs) ** 2))


def covered_fraction(positions: np.ndarray) -> float:
    """The fraction of a 40 x 40 grid over the world within COVER_RADIUS of one of `positions`."""
    from env_server.envs.reward_collection import WORLD_HIGH, WORLD_LOW

    half_cell = (WORLD_HIGH - WORLD_LOW) / 80
    axis = np.linspace(WORLD_LOW + half_cell, WORLD_HIGH - half_cell, 40)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 1, 2)
    nearest = np.min(np.linalg.norm(grid - positions[np.newaxis], axis=-1), axis=1)
    return float(np.mean(nearest < COVER_RADIUS))


def compare(seeds: list[int], amplitudes: list[float], fit_rows: list[int]) -> list[dict]:
    import torch

    from env_server.envs.reward_collection import SITE_POSITIONS, WORLD_HIGH, WORLD_LOW, drift_at, parallel_env
    from orchestrator.config import load_config

    torch.set_num_threads(1)
    gp_config = load_config(REPO / "configs" / "og_marl_ring5.yaml").agents.world_model

    def true_next(env, agent: int, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        moved = obs + action * env.eta[agent] + drift_at(obs, env.drift_amplitude)
        return np.clip(moved, WORLD_LOW, WORLD_HIGH)

    table = []
    for amplitude in amplitudes:
        for rows_per_fit in fit_rows:
            pairs: dict[str, list[tuple[float, float]]] = {"own": [], "sites": [], "others": [], "map": []}
            own_cover, pooled_cover = [], []
            for seed in seeds:
                rng = np.random.default_rng(seed)
                env = parallel_env(dynamics_seed=seed, drift_amplitude=amplitude)
                rows = random_phase(env, RANDOM_STEPS, rng)
                samples, held_out = [], []
                for agent_rows in rows:
                    order = rng.permutation(len(agent_rows["obs"]))
                    fit_index, held_index = order[:rows_per_fit], order[rows_per_fit : rows_per_fit + EVALUATION_ROWS]
                    samples.append({key: value[fit_index] for key, value in agent_rows.items()})
                    held_out.append({key: value[held_index] for key, value in agent_rows.items()})
                fused = fitted(gp_config, samples)
                own_cover += [covered_fraction(sample["obs"]) for sample in samples]
                pooled_cover.append(covered_fraction(np.concatenate([sample["obs"] for sample in samples])))
                for agent in range(env.n_agents):
                    local = fitted(gp_config, [samples[agent]])
                    near_sites = SITE_POSITIONS[rng.integers(0, len(SITE_POSITIONS), EVALUATION_ROWS)]
                    near_sites = near_sites + rng.normal(0.0, SITE_SPREAD, near_sites.shape)
                    anywhere = rng.uniform(WORLD_LOW, WORLD_HIGH, (EVALUATION_ROWS, 2))
                    others = np.concatenate([held_out[other]["obs"] for other in range(env.n_agents) if other != agent])
                    scoring = {"own": (held_out[agent]["obs"], held_out[agent]["action"])}
                    for name, obs in (("sites", near_sites), ("others", others), ("map", anywhere)):
                        scoring[name] = (obs, rng.uniform(-1.0, 1.0, obs.shape))
                    for name, (obs, action) in scoring.items():
                        target = true_next(env, agent, obs, action)
                        pairs[name].append((one_step_mse(local, obs, action, target), one_step_mse(fused, obs, action, target)))
            row = {
                "drift_amplitude": amplitude,
                "fit_rows": rows_per_fit,
                "seeds": seeds,
                "covered_by_own_rows": float(np.mean(own_cover)),
                "covered_by_pooled_rows": float(np.mean(pooled_cover)),
            }
            for name, values in pairs.items():
                local_errors, fused_errors = np.array(values).T
                row[name] = {
                    "local_mse": float(local_errors.mean()),
                    "fused_mse": float(fused_errors.mean()),
                    "fused_smaller": int(np.sum(fused_errors < local_errors)),
                    "pairs": len(values),
                }
            print(json.dumps(row), file=sys.stderr, flush=True)
            table.append(row)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--amplitudes", default="0,0.5", help="drift amplitudes, comma-separated (0: the reference's task)")
    parser.add_argument("--fit-rows", default="256,32", help="rows per refit, comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    amplitudes = [float(value) for value in args.amplitudes.split(",")]
    fit_rows = [int(value) for value in args.fit_rows.split(",")]
    if any(value < 1 for value in fit_rows):
        parser.error(f"--fit-rows must all be >= 1, got {fit_rows}")
    table = compare(seeds, amplitudes, fit_rows)
    if args.json:
        print(json.dumps(table))
        return 0
    print(f"one-step MSE of the next position, local GP / fused GP (fused smaller in k of n agent-seeds), seeds {seeds}")
    print(f"{'drift':>6}{'rows':>6}" + "".join(f"{name:>28}" for name in ("own", "sites", "others", "map"))
          + f"{'map covered, own / pooled':>28}")
    for row in table:
        cells = "".join(
            f"{row[name]['local_mse']:>11.4f} /{row[name]['fused_mse']:.4f} ({row[name]['fused_smaller']}/{row[name]['pairs']})"
            for name in ("own", "sites", "others", "map")
        )
        cover = f"{row['covered_by_own_rows']:.2f} / {row['covered_by_pooled_rows']:.2f}"
        print(f"{row['drift_amplitude']:>6g}{row['fit_rows']:>6}{cells}{cover:>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
