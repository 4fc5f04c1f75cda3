"""QMIX and VDN through the learner node against independent DQN (IQL), through full Parley runs.

    python bench/ctde.py [--seeds 0,1] [--steps 600] [--config configs/ctde_spread3.yaml]
                         [--last-evals 2] [--set KEY=VALUE ...] [--root DIR] [--json]

Each (variant, seed) is one `orchestrate up` of the config, one after the other so they do not
compete for the cores:

- `qmix`: `training: {mode: centralized, mixer: qmix}`: the agents act with their own Q-networks
  and stream transitions to a `learner` node, which trains all of them through a QMIX mixer on
  the env's global state and sends each its network back (agent_node/ctde/learner_node.py);
- `vdn`: the same with `mixer: vdn` (Q_tot = the sum of the agents' Q-values);
- `iql`: `training: {mode: decentralized}`: every agent trains its own DQN on its own reward.

All three take the same `agents.learner` DQN hyperparameters (network, learning rate, batch,
replay size, learning_starts, one gradient step per `train_every` rows, target period, epsilon
schedule; agent_node/ctde/config.py) and the same number of env steps; the centralized learner
is held to the same update ratio (an agent waits while the rows the learner has not yet
acknowledged owe too many gradient steps, as a decentralized agent learns first). What differs is what is learned: IQL fits each agent's
Q to its own reward, QMIX / VDN fit Q_tot to the team reward (the sum of the agents' rewards).

The env server evaluates with greedy episodes every `env.eval_every_steps`; a run's score is the
mean of its last `--last-evals` evaluations (`eval/return_mean`: the mean over agents of the
episode return, simple_spread's per-agent reward, the same measure for all three). The table shows
every run, the per-variant mean and sample std, and the gradient steps each variant took (the
learner node's, or agent_0's own) as the check that the budgets matched.

A run that exits non-zero or has no evaluation is reported as failed and left out of the means;
the script then exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import plot_variants, print_json, print_summaries, records, run_and_score, run_cells, summarize_variants  # noqa: E402  (the shared run helpers)

VARIANTS = {
    "qmix": ["training={mode: centralized, mixer: qmix, params_every: 10}"],
    "vdn": ["training={mode: centralized, mixer: vdn, params_every: 10}"],
    "iql": ["training={mode: decentralized}"],
}


def gradient_steps(run_dir: Path, variant: str) -> float | None:
    """The learner node's gradient steps (centralized) or agent_0's own DQN's (IQL), at the end."""
    node, key = ("agent_0", "dqn/gradient_steps") if variant == "iql" else ("learner", "learner/gradient_steps")
    values = [r[key] for r in records(run_dir, node) if key in r]
    return values[-1] if values else None


def run_seconds(run_dir: Path) -> float | None:
    """From the orchestrator's `started` (every node ready) to `run_complete`: the run without start-up."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return None
    events = {e["event"]: e["t"] for e in map(json.loads, path.read_text().splitlines()) if e["event"] in ("started", "run_complete")}
    return round(events["run_complete"] - events["started"], 1) if len(events) == 2 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=None, help="lockstep steps per run (default: the config's)")
    parser.add_argument("--config", default="configs/ctde_spread3.yaml")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--last-evals", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--root", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="also draw the evaluation curves (mean and 95%% CI over seeds) into this PNG")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every variant's runs (orchestrate up --set), repeatable")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: expected some of {', '.join(VARIANTS)}, got {unknown}")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_ctde_"))
    rows = []
    for seed in seeds:  # seed-major: an interrupted benchmark still has every variant of the first seeds
        for variant in variants:
            run_dir = root / f"{variant}_seed{seed}"
            overrides = [f"run.seed={seed}", *VARIANTS[variant], *args.set] + ([f"run.steps={args.steps}"] if args.steps else [])
            run = run_and_score(args.config, overrides, run_dir, args.timeout, args.last_evals)
            rows.append({"variant": variant, "seed": seed, **run, "gradient_steps": gradient_steps(run_dir, variant), "run_s": run_seconds(run_dir)})
    summary = summarize_variants(rows, variants)
    result = {"config": args.config, "steps": args.steps, "seeds": seeds, "last_evals": args.last_evals, "overrides": args.set,
              "runs": rows, "summary": summary}  # fmt: skip
    if args.plot:
        plot_variants(rows, variants, args.plot, args.config, args.steps, seeds)
    if args.json:
        print_json(result)
    else:
        print(f"config {args.config}, steps {args.steps or 'config'}, score = mean of last {args.last_evals} evaluations "
              "(eval/return_mean, higher is better)" + (f"; overrides {' '.join(args.set)}" if args.set else ""))
        print(f"{'variant':8} {'seed':>4} {'score':>9} {'evals':>5} {'grad steps':>10} {'run s':>6} {'wall s':>7}  status")
        for r in rows:
            score, status = run_cells(r)
            steps = "-" if r["gradient_steps"] is None else f"{r['gradient_steps']:.0f}"
            print(f"{r['variant']:8} {r['seed']:>4} {score:>9} {len(r['evaluations']):>5} {steps:>10} {r['run_s'] or '-':>6} {r['wall_s']:>7}  {status}")
        print_summaries(summary)
        print(f"runs in {root}")
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
