"""Why VDN's Q_tot on the non-monotonic game misses the analytic projection: the data's share and
the optimizer's, measured apart (docs/ctde_games.md).

    python bench/vdn_projection.py data [--rows 51200,204800,819200] [--draws 2000]
    python bench/vdn_projection.py optimizer [--rows 819200] [--seeds 0,1,2] [--train-every 256]

VDN fits Q_0(u_0) + Q_1(u_1) to the team reward by least squares over the rows it trained on.
The analytic projection (row mean + column mean - grand mean) is that fit when all nine joint
actions are equally frequent; uniformly *drawn* actions are not, so two errors add up:

- `data`: the least-squares additive fit of R uniformly drawn joint actions (nine multinomial
  cell counts, the payoff deterministic), against the analytic projection: the distribution of
  the largest cell distance over `--draws` draws. No learning; seconds.
- `optimizer`: the learner node's `CentralizedMixerLearner` (VDN, the config's 16-unit networks,
  Adam, batch 1,024, MSE) trained online as the learner node trains it (rows arrive in chunks of
  512, one gradient step per `--train-every` rows, every row kept), with the config's constant
  rate 5e-4 and with it decayed linearly to 1e-5 over the run: the distance of the final table
  to the fit of its own rows (the optimizer's share) and to the analytic projection (the sum).
  No sockets: it isolates the fit from the runtime, which bench/ctde_games.py then runs in full.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from env_server.envs import nonmonotonic  # noqa: E402

PAYOFF = np.asarray(nonmonotonic.PAYOFF, float)
PROJECTION = nonmonotonic.additive_projection(PAYOFF)
CHUNK = 512  # rows per lockstep step (the config's 512 copies)


def data_share(rows: int, draws: int, seed: int = 0) -> np.ndarray:
    """The largest cell distance between the fit of `rows` uniformly drawn joint actions and the
    analytic projection, for each of `draws` draws. The fit is weighted least squares over the nine
    cells with their counts as weights (the same solution as over the rows themselves)."""
    rng = np.random.default_rng(seed)
    cells = np.array([(r, c) for r in range(3) for c in range(3)])
    distances = np.empty(draws)
    for draw in range(draws):
        counts = rng.multinomial(rows, np.full(9, 1 / 9))
        design = np.zeros((9, 6))
        design[np.arange(9), cells[:, 0]] = 1.0
        design[np.arange(9), 3 + cells[:, 1]] = 1.0
        weights = np.sqrt(counts)
        coefficients = np.linalg.lstsq(design * weights[:, None], PAYOFF.ravel() * weights, rcond=None)[0]
        fit = coefficients[:3, None] + coefficients[None, 3:]
        distances[draw] = np.abs(fit - PROJECTION).max()
    return distances


def optimizer_share(rows: int, seed: int, train_every: int, decay: bool) -> dict[str, float]:
    """Train VDN online on `rows` uniformly drawn joint actions; distances of its final table."""
    import torch

    from agent_node.algos.config import MixerConfig
    from agent_node.algos.mixers import CentralizedMixerLearner

    torch.set_num_threads(1)
    env = nonmonotonic.parallel_env()
    agent = env.possible_agents[0]
    obs = env.stage_observation("matrix")
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 3, (rows, 2))
    rewards = PAYOFF[actions[:, 0], actions[:, 1]].astype(np.float32)
    learning_starts = 1024
    steps = (rows - learning_starts) // train_every
    config = MixerConfig(mixer="vdn", agent_hidden_sizes=(16,), learning_rate=5e-4, batch_size=1024, target_update_period=100,
                         loss="mse", learning_rate_end=1e-5 if decay else None, learning_rate_decay_steps=steps if decay else None)
    learner = CentralizedMixerLearner(config, env.observation_space(agent), env.action_space(agent), env.state_space,
                                      num_agents=2, seed=seed)
    replay = learner.make_replay(rows)
    owed = 0.0
    for start in range(0, rows, CHUNK):
        count = min(CHUNK, rows - start)
        same = np.tile(obs, (count, 1))
        replay.add({"state": same, "obs": np.stack([same, same], axis=1), "action": actions[start:start + count],
                    "reward": rewards[start:start + count], "next_state": same, "next_obs": np.stack([same, same], axis=1),
                    "terminated": np.ones(count, bool)})
        if len(replay) < learning_starts:
            continue
        owed += count / train_every
        while owed >= 1.0:
            owed -= 1.0
            learner.train_step(replay.sample(config.batch_size))
    learned = learner.joint_q_table(np.stack([obs, obs]), obs)
    data_fit = nonmonotonic.empirical_additive_fit(actions, rewards)
    return {"gradient_steps": learner.gradient_steps, "data": float(np.abs(data_fit - PROJECTION).max()),
            "optimizer": float(np.abs(learned - data_fit).max()), "total": float(np.abs(learned - PROJECTION).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["data", "optimizer"])
    parser.add_argument("--rows", default=None, help="comma-separated row counts (data: 51200,102400,204800,409600,819200,1638400; optimizer: 819200)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-every", type=int, default=256)
    args = parser.parse_args(argv)
    default_rows = "51200,102400,204800,409600,819200,1638400" if args.part == "data" else "819200"
    rows_list = [int(r) for r in (args.rows or default_rows).split(",")]
    if any(r < 2048 for r in rows_list) or args.draws < 1 or args.train_every < 1:
        parser.error(f"expected rows >= 2048, --draws >= 1, --train-every >= 1; got {rows_list}, {args.draws}, {args.train_every}")
    started = time.monotonic()
    if args.part == "data":
        print(f"The least-squares additive fit of R uniformly drawn joint actions against the analytic projection "
              f"(largest cell distance; {args.draws} draws per R)\n")
        print("| rows R | median | 90th percentile | 99th percentile | P(> 0.1) | P(> 0.05) |\n| --- | --- | --- | --- | --- | --- |")
        for rows in rows_list:
            d = data_share(rows, args.draws)
            print(f"| {rows:,} | {np.median(d):.3f} | {np.quantile(d, 0.9):.3f} | {np.quantile(d, 0.99):.3f} | {(d > 0.1).mean():.3f} | {(d > 0.05).mean():.3f} |")
    else:
        print(f"VDN trained online on uniformly drawn rows (batch 1,024, one gradient step per {args.train_every} rows, "
              "every row kept); largest cell distances\n")
        print("| rows | seed | rate | gradient steps | the rows' fit to the analytic projection (data) "
              "| learned to the rows' fit (optimizer) | learned to the analytic projection |\n| --- | --- | --- | --- | --- | --- | --- |")
        for rows in rows_list:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for decay in (False, True):
                    r = optimizer_share(rows, seed, args.train_every, decay)
                    rate = "5e-4 -> 1e-5 linear" if decay else "5e-4 constant"
                    print(f"| {rows:,} | {seed} | {rate} | {r['gradient_steps']} | {r['data']:.3f} | {r['optimizer']:.3f} | {r['total']:.3f} |", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
