"""PMIC's two mutual-information estimators on Gaussians whose mutual information is known.

    python bench/mi_estimators.py [--seeds 0,1,2,3,4] [--dims 1,8] [--rhos 0,0.5,0.9,0.99]
                                  [--steps 1000] [--eval-batches 20] [--json FILE]

The estimators are those of `agent_node/algos/mutual_information.py`, as PMIC builds them
(`agent_node/algos/pmic.py` with `PMICConfig`'s defaults): the Jensen-Shannon estimator with a
separable critic (PMIC's *lower* bound, raised on superior experience) and CLUB with a Gaussian
q(u | s) (its *upper* bound, lowered on inferior experience); hidden layer (64,), 32-d critic
embeddings, CLUB's default log-variance bounds, Adam at PMIC's `mi_lr` (1e-4), batches of PMIC's
`batch_size` (1024). Each is trained for `--steps` gradient steps on fresh batches of

    s ~ N(0, I_d),   u = rho * s + sqrt(1 - rho^2) * noise,   I(S; U) = -d/2 * log(1 - rho^2),

then read as PMIC reads it: the batch estimate over one batch of 1024 pairs (the other pairs of
the batch serve as the negatives), averaged over `--eval-batches` fresh batches. One seed, one
estimate; the table gives the mean over seeds with a 95 % t-interval.

Two oracles beside the truth say what each estimator could reach with a perfect critic / q:
- JSD: 2 * JSD(p(s, u) || p(s) p(u)) (Monte Carlo from the known density ratio), at most
  2 log 2 = 1.386 nats whatever the MI; it is the estimator's ceiling, and below I here.
- CLUB with the exact conditional p(u | s): d * rho^2 / (1 - rho^2), at or above I.

"on its side" is judged within sampling error: the lower bound is on its side when the interval's
low end is at or below the truth, the upper bound when the interval's high end is at or above it.
"bias" is the mean estimate minus the truth at PMIC's batch size. Per-step cost is dominated by
the JSD critic's 1024 x 1024 score matrix (tens of milliseconds a step on one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent_node.algos.config import PMICConfig  # noqa: E402
from agent_node.algos.mutual_information import GaussianCLUB, JSDMutualInformation  # noqa: E402

LOG_2 = math.log(2.0)


def true_mi(rho: float, dims: int) -> float:
    return -0.5 * dims * math.log(1.0 - rho**2)


def exact_club(rho: float, dims: int) -> float:
    """CLUB's value with q = p(u | s): d rho^2 / (1 - rho^2) (Cheng et al. 2020, Theorem 3.1's gap added to I)."""
    return dims * rho**2 / (1.0 - rho**2)


def optimal_jsd(rho: float, dims: int, samples: int = 400_000) -> float:
    """2 * JSD(p(s,u) || p(s)p(u)) by Monte Carlo: the JSD estimator's value at the optimal critic."""
    rng = np.random.default_rng(12345)
    state = rng.standard_normal((samples, dims))
    joint_action = rho * state + math.sqrt(1.0 - rho**2) * rng.standard_normal((samples, dims))
    independent_action = rng.standard_normal((samples, dims))

    def log_ratio(s: np.ndarray, u: np.ndarray) -> np.ndarray:  # log p(s,u) / (p(s) p(u))
        quadratic = (rho**2 * s**2 - 2.0 * rho * s * u + rho**2 * u**2) / (2.0 * (1.0 - rho**2))
        return (-quadratic - 0.5 * math.log(1.0 - rho**2)).sum(axis=1)

    on_joint = np.mean(LOG_2 - np.logaddexp(0.0, -log_ratio(state, joint_action)))
    on_product = np.mean(LOG_2 - np.logaddexp(0.0, log_ratio(state, independent_action)))
    return float(on_joint + on_product)


def gaussian_pairs(rng: np.random.Generator, count: int, dims: int, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    state = rng.standard_normal((count, dims))
    action = rho * state + math.sqrt(1.0 - rho**2) * rng.standard_normal((count, dims))
    return torch.as_tensor(state, dtype=torch.float32), torch.as_tensor(action, dtype=torch.float32)


def train_and_read(rho: float, dims: int, seed: int, steps: int, eval_batches: int, config: PMICConfig) -> dict[str, float]:
    """Both estimators trained as PMIC trains them; each read (the mean of its batch estimates over
    `eval_batches` fresh batches) at half the steps and at the end."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        jsd = JSDMutualInformation(dims, dims, config.mi_hidden_sizes, config.mi_embedding_dim)
        club = GaussianCLUB(dims, dims, config.mi_hidden_sizes, config.club_log_var_bounds)
    jsd_optimizer = torch.optim.Adam(jsd.parameters(), lr=config.mi_lr)
    club_optimizer = torch.optim.Adam(club.parameters(), lr=config.mi_lr)

    def read() -> tuple[float, float]:
        read_rng = np.random.default_rng([seed, 1])  # the same evaluation batches at both readings
        jsd_values, club_values = [], []
        with torch.no_grad():
            for _ in range(eval_batches):
                state, action = gaussian_pairs(read_rng, config.batch_size, dims, rho)
                jsd_values.append(jsd.estimate(state, action).item())
                club_values.append(club.estimate(state, action).item())
        return float(np.mean(jsd_values)), float(np.mean(club_values))

    result = {}
    for step in range(1, steps + 1):
        state, action = gaussian_pairs(rng, config.batch_size, dims, rho)
        jsd_optimizer.zero_grad(set_to_none=True)
        jsd.loss(state, action).backward()
        jsd_optimizer.step()
        club_optimizer.zero_grad(set_to_none=True)
        club.nll_loss(state, action).backward()
        club_optimizer.step()
        if step == steps // 2:
            result["jsd_half"], result["club_half"] = read()
    result["jsd"], result["club"] = read()
    return result


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval over seeds (0 for a single seed)."""
    from scipy import stats

    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def summarize(cells: list[dict]) -> list[str]:
    lines = ["| d | rho | true MI | JSD (lower): estimate, 95% CI | JSD at half the steps | JSD optimum (2 JSD) | below truth? "
             "| JSD bias | CLUB (upper): estimate, 95% CI | CLUB at half the steps | CLUB, exact q | above truth? | CLUB bias |",
             "| --- |" * 1 + " --- |" * 12]
    for cell in cells:
        truth = cell["true_mi"]
        jsd_mean, jsd_hw = interval([r["jsd"] for r in cell["seeds"]])
        club_mean, club_hw = interval([r["club"] for r in cell["seeds"]])
        jsd_half = np.mean([r["jsd_half"] for r in cell["seeds"]])
        club_half = np.mean([r["club_half"] for r in cell["seeds"]])
        lines.append(
            f"| {cell['dims']} | {cell['rho']:g} | {truth:.3f} | {jsd_mean:.3f} ± {jsd_hw:.3f} | {jsd_half:.3f} | {cell['jsd_optimum']:.3f} | "
            f"{'yes' if jsd_mean - jsd_hw <= truth else 'NO'} | {jsd_mean - truth:+.3f} | {club_mean:.3f} ± {club_hw:.3f} | {club_half:.3f} | "
            f"{cell['club_exact']:.3f} | {'yes' if club_mean + club_hw >= truth else 'NO'} | {club_mean - truth:+.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--dims", default="1,8")
    parser.add_argument("--rhos", default="0,0.5,0.9,0.99")
    parser.add_argument("--steps", type=int, default=1000, help="gradient steps per estimator (at least 2)")
    parser.add_argument("--eval-batches", type=int, default=20, help="batches of PMIC's batch size each reading averages")
    parser.add_argument("--json", type=Path, default=None, help="also write every seed's readings to this file")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    dims_list = [int(d) for d in args.dims.split(",")]
    rhos = [float(r) for r in args.rhos.split(",")]
    if args.steps < 2 or args.eval_batches < 1 or not seeds:
        parser.error(f"expected --steps >= 2, --eval-batches >= 1 and some seeds; got {args.steps}, {args.eval_batches}, {seeds}")
    if any(d < 1 for d in dims_list) or any(not 0 <= r < 1 for r in rhos):
        parser.error(f"expected dimensions >= 1 and correlations in [0, 1); got {dims_list}, {rhos}")
    torch.set_num_threads(1)
    config = PMICConfig()
    started = time.monotonic()
    cells = []
    for dims in dims_list:
        for rho in rhos:
            cell = {"dims": dims, "rho": rho, "true_mi": true_mi(rho, dims), "jsd_optimum": optimal_jsd(rho, dims),
                    "club_exact": exact_club(rho, dims), "seeds": []}
            for seed in seeds:
                cell["seeds"].append({"seed": seed, **train_and_read(rho, dims, seed, args.steps, args.eval_batches, config)})
            cells.append(cell)
            print(f"d {dims} rho {rho:g}: done at {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"PMIC's estimators (hidden {list(config.mi_hidden_sizes)}, embedding {config.mi_embedding_dim}, Adam lr {config.mi_lr:g}, "
          f"batch {config.batch_size}, CLUB log-variance bounds {config.club_log_var_bounds or 'the estimator default'}), "
          f"{args.steps} gradient steps, read on {args.eval_batches} batches of {config.batch_size}; "
          f"{len(seeds)} seeds (mean ± 95% t-interval); nats\n")
    print("\n".join(summarize(cells)))
    print(f"\n{len(cells) * len(seeds)} trainings in {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "eval_batches": args.eval_batches, "cells": cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
