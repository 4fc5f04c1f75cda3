"""Offline RL from a Parley run's own dataset: DQN run -> dataset -> CQL and BC -> evaluated runs.

    python bench/offline.py [--seeds 0,1,2,3,4] [--steps 20000] [--gradient-steps 20000]
                            [--config configs/tiny_record.yaml] [--root DIR] [--json]

Per seed, all through real processes:
1. `orchestrate up` of the recording config (DQN agents with `agents.record_dataset: true`): the
   dataset lands in `<run>/dataset/`. The behaviour policy's return is the mean of the training
   episodes' returns in that run (the policy that made the data, exploration included), beside
   the run's own greedy evaluations (the last `--last-evals`).
2. `python -m agent_node.offline` trains CQL and, separately, behaviour cloning per agent shard.
3. `orchestrate up` of the same env with `agents.learning=false` and the trained checkpoints: the
   env server's greedy evaluations are the offline learner's score (mean of the last
   `--last-evals`).
The table puts the three side by side, per seed and as means (returns are negative here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import REPO, evaluations, mean_std, plot_evaluations, print_json, run_and_record  # noqa: E402  (the shared run helpers)


def behaviour_return(run_dir: Path) -> float | None:
    returns = []
    for metrics in sorted((run_dir / "nodes").glob("agent_*/metrics.jsonl")):
        returns += [json.loads(line)["env/episode_return"] for line in metrics.read_text().splitlines() if "env/episode_return" in line]
    return sum(returns) / len(returns) if returns else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=None, help="lockstep steps of the recording run")
    parser.add_argument("--eval-steps", type=int, default=None, help="lockstep steps of each evaluation run")
    parser.add_argument("--gradient-steps", type=int, default=20000)
    parser.add_argument("--hidden-sizes", default="32", help="offline learners' widths (the eval config uses the same)")
    parser.add_argument("--config", default="configs/tiny_record.yaml")
    parser.add_argument("--last-evals", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=6 * 3600)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="also draw the evaluation curves (mean and 95%% CI over seeds) into this PNG")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_offline_"))
    hidden = "[" + args.hidden_sizes + "]"
    rows, failed = [], False
    for seed in [int(s) for s in args.seeds.split(",")]:
        row: dict = {"seed": seed}
        record_dir = root / f"record_seed{seed}"
        record = run_and_record(args.config, [f"run.seed={seed}"] + ([f"run.steps={args.steps}"] if args.steps else []), record_dir, args.timeout)
        row["records"] = {"recording": record}
        if record["refused"] is not None:
            row["error"] = f"recording run refused: {record['refused']}: {record['stderr_tail'][-500:]}"
            rows.append(row)
            failed = True
            continue
        row["behaviour_train_return"] = behaviour_return(record_dir)
        greedy = [v for _, v in evaluations(record_dir)[-args.last_evals :]]
        row["behaviour_greedy_eval"] = sum(greedy) / len(greedy) if greedy else None
        for learner in ("cql", "bc"):
            out = root / f"{learner}_seed{seed}_checkpoints"
            trained = subprocess.run(
                [sys.executable, "-m", "agent_node.offline", "--dataset", str(record_dir / "dataset"), "--learner", learner,
                 "--gradient-steps", str(args.gradient_steps), "--hidden-sizes", args.hidden_sizes, "--seed", str(seed),
                 "--out", str(out)],
                cwd=REPO, capture_output=True, text=True, timeout=args.timeout,
            )  # fmt: skip
            if trained.returncode != 0:
                row[learner] = None
                row["error"] = f"{learner} training exit {trained.returncode}: {trained.stderr[-500:]}"
                failed = True
                continue
            eval_dir = root / f"{learner}_seed{seed}_eval"
            overrides = [f"run.seed={seed}", f"agents.learner={{kind: {learner}, hidden_sizes: {hidden}}}",
                         "agents.learning=false", "agents.record_dataset=false", f"agents.load_checkpoints={out}"]  # fmt: skip
            overrides += [f"run.steps={args.eval_steps}"] if args.eval_steps else []
            record = row["records"][learner] = run_and_record(args.config, overrides, eval_dir, args.timeout)
            scores = [v for _, v in evaluations(eval_dir)[-args.last_evals :]]
            if record["refused"] is not None or not scores:
                row[learner] = None
                row["error"] = f"{learner} evaluation refused: {record['refused'] or 'it evaluated nothing'}: {record.get('stderr_tail', '')[-500:]}"
                failed = True
                continue
            row[learner] = sum(scores) / len(scores)
        rows.append(row)
    columns = ("behaviour_train_return", "behaviour_greedy_eval", "cql", "bc")
    summary = {c: dict(zip(("mean", "std"), mean_std([r[c] for r in rows if r.get(c) is not None]))) for c in columns}
    result = {"config": args.config, "steps": args.steps, "gradient_steps": args.gradient_steps, "rows": rows, "summary": summary, "root": str(root)}
    if args.plot:
        # The recording run learns (a curve); the offline learners' evaluation runs do not (a level each).
        seeds = [r["seed"] for r in rows if "error" not in r]
        plot_evaluations({"behaviour (the recording run)": [root / f"record_seed{s}" for s in seeds]}, args.plot,
                         f"{args.config}: recording run; CQL, BC from its dataset; seeds {seeds}, 95% CI",
                         levels={f"{learner} from the dataset": [root / f"{learner}_seed{s}_eval" for s in seeds] for learner in ("cql", "bc")},
                         last_evals=args.last_evals)
    if args.json:
        print_json(result)
    else:
        print(f"config {args.config}; offline gradient steps {args.gradient_steps}; scores = mean of last {args.last_evals} greedy evaluations")
        print(f"{'seed':>4} {'behaviour (train)':>18} {'behaviour (greedy)':>19} {'CQL':>9} {'BC':>9}")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        for r in rows:
            print(f"{r['seed']:>4} {fmt(r.get(columns[0])):>18} {fmt(r.get(columns[1])):>19} {fmt(r.get('cql')):>9} {fmt(r.get('bc')):>9}"
                  + (f"  ERROR {r['error']}" if "error" in r else ""))  # fmt: skip
        print("mean " + "  ".join(f"{c} {summary[c]['mean']:.2f}" for c in columns))
        print(f"runs in {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
