"""PMIC against the same learner without the mutual-information shaping, through full Parley runs.

    python bench/pmic.py [--seeds 0,1,2,3,4] [--steps 25000] [--config configs/pmic_spread3.yaml]
                         [--last-evals 3] [--root DIR] [--json]

Each (variant, seed) is one `orchestrate up` of the config, run one after the other so they do not
compete for the cores: `pmic` as configured, `no_mi` with `agents.learner.pmic=false` (the same
decentralized MADDPG learner, no superior/inferior buffers, no MI estimators). The env server
evaluates with greedy episodes every `env.eval_every_steps`; a run's score is the mean of its last
`--last-evals` evaluations (`eval/return_mean`, the mean over agents of the episode return).

Target (ALGORITHMS.md section 4): PMIC >= 5 % better final return than without it, 5 seeds, on
mpe2.simple_spread_v3 N=3. Returns are negative, so "better by x %" is
(score_pmic - score_no_mi) / |score_no_mi|. The table shows every seed, the mean, the sample std
and that ratio computed from the means of the same invocation.

A run that exits non-zero or has no evaluation is reported as failed and left out of the means;
the script then exits 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import plot_variants, print_json, print_summaries, run_and_score, run_cells, summarize_variants  # noqa: E402  (the shared run helpers)

VARIANTS = {"pmic": [], "no_mi": ["agents.learner.pmic=false"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=None, help="lockstep steps per run (default: the config's)")
    parser.add_argument("--config", default="configs/pmic_spread3.yaml")
    parser.add_argument("--last-evals", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per run")
    parser.add_argument("--root", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="also draw the evaluation curves (mean and 95%% CI over seeds) into this PNG")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_pmic_"))
    rows = []
    for variant, extra in VARIANTS.items():
        for seed in seeds:
            run_dir = root / f"{variant}_seed{seed}"
            overrides = [f"run.seed={seed}", *extra] + ([f"run.steps={args.steps}"] if args.steps else [])
            run = run_and_score(args.config, overrides, run_dir, args.timeout, args.last_evals)
            rows.append({"variant": variant, "seed": seed, **run})
    summary = summarize_variants(rows, VARIANTS)
    base, pmic = summary["no_mi"]["mean"], summary["pmic"]["mean"]
    # Returns are negative; PMIC is better when its return is higher: (pmic - base) / |base|.
    improvement = (pmic - base) / abs(base) if base and not (math.isnan(base) or math.isnan(pmic)) else math.nan
    result = {"config": args.config, "steps": args.steps, "seeds": seeds, "last_evals": args.last_evals,
              "runs": rows, "summary": summary, "pmic_improvement_fraction": improvement, "target": 0.05}  # fmt: skip
    if args.plot:
        plot_variants(rows, VARIANTS, args.plot, args.config, args.steps, seeds)
    if args.json:
        print_json(result)
    else:
        print(f"config {args.config}, steps {args.steps or 'config'}, score = mean of last {args.last_evals} evaluations")
        print(f"{'variant':8} {'seed':>4} {'score':>10} {'evals':>5} {'wall s':>7}  status")
        for r in rows:
            score, status = run_cells(r)
            print(f"{r['variant']:8} {r['seed']:>4} {score:>10} {len(r['evaluations']):>5} {r['wall_s']:>7}  {status}")
        print_summaries(summary)
        print(f"PMIC vs no MI: {improvement:+.1%} (target >= +5 %)")
        print(f"runs in {root}")
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
