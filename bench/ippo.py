"""IPPO (the example plugin, examples/parley_ippo) against the main job's plain DQN agents, on the
main job's task at equal env steps.

Both are ordinary `orchestrate up` runs of MPE simple_spread N = 4 with 8 copies, 10,000 lockstep
steps (80,000 rows per agent) and 8 greedy evaluation episodes every 500 steps:

- `ippo`: examples/parley_ippo/configs/spread4_ippo.yaml, every agent an independent PPO learner;
- `plain_dqn`: bench/main_job.py's variant of that name (configs/4agents_ring.yaml without the
  landmark agreement, buffer 100,000: independent Double DQN on the same observation). Its runs
  are read from `--dqn-root` (bench/main_job.py's layout, `<root>/plain_dqn/seed_<S>`), and run
  there first when missing.

A run's score is the mean of its last 5 evaluations (`eval/return_mean`, per agent per episode),
as in bench/main_job.py; the seeds are paired (the same seed gives both the same evaluation
episodes), and the table gives each learner's mean with its 95% t-interval and the paired
difference IPPO minus DQN with its interval.

    .venv/bin/python bench/ippo.py --seeds 5 --root runs/bench_ippo --dqn-root runs/bench_main_job --save docs/results/data/ippo.json
    .venv/bin/python bench/ippo.py --seeds 5 --analyse                   # tables from finished runs

The plugin is imported from examples/parley_ippo when it is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import mean_ci  # noqa: E402
from main_job import (  # noqa: E402
    CONFIG as DQN_CONFIG, LAST_EVALS, VARIANTS, finished_runs, print_per_seed, publish, reference_line, references, run_dir_of,
    scored, seeds_and_score,
)
from runs import REPO, fmt, plot_evaluations, run_and_score  # noqa: E402

IPPO_CONFIG = "examples/parley_ippo/configs/spread4_ippo.yaml"
EXAMPLE = REPO / "examples" / "parley_ippo"
LAUNCH_ATTEMPTS = 3


def launch_failed(run_dir: Path) -> bool:
    """Did the run stop before any node ran (its `launch_failed` event)?"""
    from orchestrator.rundir import EVENTS_FILENAME, read_jsonl

    return any(event.get("event") == "launch_failed" for event in read_jsonl(run_dir / EVENTS_FILENAME))


def run_batch(root: Path, dqn_root: Path, seeds: list[int], timeout_s: float) -> None:
    extra = () if importlib.util.find_spec("parley_ippo") is not None else (EXAMPLE,)
    for seed in seeds:
        for name, config, overrides, where, paths in (
            ("ippo", IPPO_CONFIG, [], root, extra),
            ("plain_dqn", DQN_CONFIG, VARIANTS["plain_dqn"], dqn_root, ()),
        ):
            started = time.strftime("%H:%M:%S")
            run_dir = run_dir_of(where, name, seed)
            for attempt in range(LAUNCH_ATTEMPTS):
                result = run_and_score(config, [f"run.seed={seed}", "launch.live_view=off", *overrides],
                                       run_dir, timeout_s, LAST_EVALS, reuse=True, extra_paths=paths)
                if not (result["failed"] and launch_failed(run_dir)) or attempt + 1 == LAUNCH_ATTEMPTS:
                    break
                # Nothing ran (on a loaded machine the node processes' preload can outlast its
                # deadline): keep the directory aside and launch again.
                print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: launch failed, again", flush=True)
                run_dir.rename(run_dir.with_name(f"{run_dir.name}.launch-failed-{time.strftime('%Y%m%dT%H%M%S')}"))
            state = "FAILED" if result["failed"] else f"score {result['score']:.2f}"
            print(f"[{started}] {name} seed {seed}: {state}, wall {result['wall_s']} s"
                  + (" (reused)" if result.get("reused") else ""), flush=True)


def analyse(root: Path, dqn_root: Path, seeds: list[int]) -> dict:
    learners: dict[str, dict] = {}
    every_run: list[dict] = []
    for name, where in (("ippo", root), ("plain_dqn", dqn_root)):
        summaries = finished_runs(where, name, seeds)
        every_run += summaries.values()
        learners[name] = {**scored(summaries), "run_dirs": {seed: str(run_dir_of(where, name, seed)) for seed in summaries}}
    paired = sorted(set(learners["ippo"]["scores"]) & set(learners["plain_dqn"]["scores"]))
    differences = [learners["ippo"]["scores"][s] - learners["plain_dqn"]["scores"][s] for s in paired]
    mean, half = mean_ci(differences)
    return {"ippo_config": IPPO_CONFIG, "dqn_config": DQN_CONFIG, "dqn_overrides": VARIANTS["plain_dqn"],
            "seeds": seeds, "last_evals": LAST_EVALS,
            "random": reference_line(every_run, "random"), "oracle": reference_line(every_run, "oracle"),
            "learners": learners, "ippo_minus_dqn": {"seeds": paired, "mean": mean, "ci95": half}}


def print_tables(summary: dict) -> None:
    print(f"{references(summary)} (return per agent per episode on the evaluation episodes, mean over the runs)")
    print(f"\n| learner | seeds | last-{summary['last_evals']} eval (mean ± 95% CI) | run s |")
    print("|---|---|---|---|")
    for name, entry in summary["learners"].items():
        print(f"| {name} | {seeds_and_score(entry)} | {fmt(entry['run_s_mean'], '.0f')} |")
    diff = summary["ippo_minus_dqn"]
    print(f"\nIPPO minus DQN, paired over {len(diff['seeds'])} seeds: {fmt(diff['mean'])} "
          f"[{fmt(diff['mean'] - diff['ci95'])}, {fmt(diff['mean'] + diff['ci95'])}] (95% t-interval)")
    print_per_seed(summary["learners"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench_ippo")
    parser.add_argument("--dqn-root", type=Path, default=REPO / "runs" / "bench_main_job")
    parser.add_argument("--analyse", action="store_true", help="only read the finished runs")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--save", type=Path, help="the summary as JSON")
    parser.add_argument("--plot", type=Path, help="both learners' evaluation curves (PNG)")
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if not args.analyse:
        run_batch(args.root, args.dqn_root, seeds, args.timeout_s)
    summary = analyse(args.root, args.dqn_root, seeds)
    publish(summary, print_tables, args.save)
    if args.plot:
        curves = {name: [Path(d) for d in entry["run_dirs"].values()] for name, entry in summary["learners"].items()}
        lines = {label: summary[key] for label, key in (("random policy", "random"), ("scripted oracle", "oracle"))
                 if summary[key] is not None}
        plot_evaluations({k: v for k, v in curves.items() if v}, args.plot,
                         "simple_spread N=4: IPPO and DQN, greedy evaluation (mean, 95% CI over seeds)", lines=lines)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
