"""OG-MARL against its SAC baseline on the reward-collection task, through full Parley runs.

    python bench/og_marl.py [--seeds 0,1,2] [--methods sac,og_marl,og_marl_c0]
                            [--train-steps 2400] [--random-steps 5000] [--no-penalty] [--json]

Each (method, seed) is one `orchestrate up` of its config (`configs/sac_ring5.yaml`,
`configs/og_marl_ring5.yaml`, `configs/og_marl_ring5_no_optimism.yaml`) with the budget set
from the flags, run one after the other so they do not compete for the two cores. The env
server evaluates every 200 lockstep steps on 5 greedy episodes; a run's score is the mean of
its last 5 evaluations, and the table shows mean ± std of that score over seeds.

Seconds per 1,000 training steps: wall time between the evaluation at the end of the random
steps and the last evaluation, less the time of the evaluations in between, divided by the
training steps in between. Evaluations start when the random steps end.

JSON keys: with the action penalty (the reference's setting) `og_marl_return_penalty`,
`sac_return_penalty`, `og_marl_s_per_1000_steps`; without it (`--no-penalty`) `sac_return`,
`og_marl_return`, `og_marl_no_opt_return`, `ratio_og_marl_over_sac`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "sac": "configs/sac_ring5.yaml",
    "og_marl": "configs/og_marl_ring5.yaml",
    "og_marl_c0": "configs/og_marl_ring5_no_optimism.yaml",
}
EVAL_EVERY = 200


def run_once(method: str, seed: int, random_steps: int, train_steps: int, penalty: bool, root: Path) -> dict:
    run_dir = root / f"{method}-seed{seed}"
    learner_random = "agents.learner.sac.random_steps" if method != "sac" else "agents.learner.random_steps"
    learner_starts = "agents.learner.sac.learning_starts" if method != "sac" else "agents.learner.learning_starts"
    overrides = [
        f"run.seed={seed}",
        f"run.steps={random_steps + train_steps}",
        f"env.kwargs.action_penalty={str(penalty).lower()}",
        f"env.eval_every_steps={EVAL_EVERY}",
        f"env.eval_start_step={random_steps}",
        f"{learner_random}={random_steps}",
        f"{learner_starts}={random_steps}",
        "launch.live_view=\"off\"",
    ]
    argv = [sys.executable, "-m", "orchestrator", "up", CONFIGS[method], "--run-dir", str(run_dir)]
    for override in overrides:
        argv += ["--set", override]
    started = time.monotonic()
    completed = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    evaluations = [
        json.loads(line)
        for line in (run_dir / "nodes" / "env" / "metrics.jsonl").read_text().splitlines()
        if "eval/return_mean" in line
    ]
    last5 = [e["eval/return_mean"] for e in evaluations[-5:]]
    at_start = next(e for e in evaluations if e["step"] >= random_steps)
    at_end = evaluations[-1]
    trained = at_end["step"] - at_start["step"]
    # Training time only: the evaluation episodes in between are taken out.
    eval_time = sum(e["eval/duration_s"] for e in evaluations if at_start["step"] < e["step"] <= at_end["step"])
    return {
        "method": method,
        "seed": seed,
        "last5_mean": float(np.mean(last5)),
        "evaluations": [(e["step"], round(e["eval/return_mean"], 2)) for e in evaluations if e["step"] >= random_steps],
        "s_per_1000_train_steps": (at_end["t"] - at_start["t"] - eval_time) / trained * 1000 if trained else float("nan"),
        "wall_s": time.monotonic() - started,
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="sac,og_marl")
    parser.add_argument("--random-steps", type=int, default=5000)
    parser.add_argument("--train-steps", type=int, default=2400)
    parser.add_argument("--no-penalty", action="store_true", help="the setting without action penalty")
    parser.add_argument("--root", default=None, help="where the run directories go (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    penalty = not args.no_penalty
    root = Path(args.root or tempfile.mkdtemp(prefix="parley-bench-og-marl-"))

    runs, failures = [], []
    for method in methods:
        for seed in seeds:
            try:
                result = run_once(method, seed, args.random_steps, args.train_steps, penalty, root)
            except RuntimeError as error:  # reported, not hidden: the summary says which runs failed
                failures.append({"method": method, "seed": seed, "error": str(error)[-2000:]})
                print(f"# {method} seed {seed} FAILED: {error}", file=sys.stderr, flush=True)
                continue
            runs.append(result)
            print(
                f"# {method} seed {seed}: last-5 {result['last5_mean']:.1f}, "
                f"{result['s_per_1000_train_steps']:.0f} s/1000 steps, evals {result['evaluations']}",
                file=sys.stderr, flush=True,
            )

    summary = {}
    for method in methods:
        scores = [r["last5_mean"] for r in runs if r["method"] == method]
        speed = [r["s_per_1000_train_steps"] for r in runs if r["method"] == method]
        if not scores:
            continue
        summary[method] = (float(np.mean(scores)), float(np.std(scores)), float(np.mean(speed)))

    suffix = "_penalty" if penalty else ""
    result = {"setting": "penalty" if penalty else "no_penalty", "seeds": seeds,
              "random_steps": args.random_steps, "train_steps": args.train_steps, "runs": runs,
              "failures": failures}
    names = {"sac": "sac_return", "og_marl": "og_marl_return", "og_marl_c0": "og_marl_no_opt_return"}
    for method, (mean, std, speed) in summary.items():
        result[names[method] + suffix] = round(mean, 2)
        result[names[method] + suffix + "_std"] = round(std, 2)
        result[f"{method}_s_per_1000_steps"] = round(speed, 1)
    if "sac" in summary and "og_marl" in summary and not penalty:
        result["ratio_og_marl_over_sac"] = round(summary["og_marl"][0] / summary["sac"][0], 3)

    if args.json:
        print(json.dumps(result))
        return
    print(f"reward collection, 5 agents, action penalty {'on' if penalty else 'off'}, "
          f"{args.random_steps} random + {args.train_steps} training steps, seeds {seeds}")
    print(f"{'method':<12}{'last-5 eval return':>22}{'s / 1000 train steps':>24}")
    for method, (mean, std, speed) in summary.items():
        print(f"{method:<12}{mean:>14.1f} ± {std:<6.1f}{speed:>24.0f}")
    for failure in failures:
        print(f"FAILED: {failure['method']} seed {failure['seed']}")


if __name__ == "__main__":
    main()
