"""Goal negotiation and hindsight sharing under peer-link delay, loss and a crashed partner,
through the runtime. Prints a table (and saves JSON, and a plot with --plot).

Two goal-conditioned agents on goal_lines (configs/goals_negotiation_hindsight.yaml:
the naming game for each episode's goal while the env server holds the episode start, then the
achieved goals shared for HER; `--config configs/goals_own_view_hindsight.yaml` for the own
view, where each agent sees only the landmark it touches and a partner's report is the only
news of a pair achieved by accident), one `orchestrate up` per cell and seed, with

- every peer link (agent <-> agent; the env links and the control channel are not emulated)
  given a constant delay and Bernoulli loss (`network.links: [{role: peer_links, ...}]`,
  protocols/net/links.py), swept over `--delays` x `--losses`;
- a `kill` cell: no delay or loss, agent_1 killed (SIGKILL) at the middle training step and
  restarted by the on-failure policy (`faults:`, orchestrator/faults.py); it restores its last
  checkpoint (every `agents.checkpoint_every_steps`) and rejoins at the current step.

Per episode the two agents' `goals/*` records are joined (episodes one agent missed, e.g. while
it was dead, are left out and counted): aligned = both pursued the same goal, success = both were
rewarded. Per cell: alignment and success over all episodes and over the last fifth ("final"),
negotiation time (`negotiation/duration_s`: start to decision, mean and 90th percentile), the
fraction of negotiations that heard no proposal (`timed_out`) or were cut by the env's hold
deadline, and hindsight reports missing per stored episode (`hindsight/partners_missing`).

    PYTHONPATH=. .venv/bin/python bench/goals_faults.py --seeds 1 --steps 8000 --landmarks 3 \\
        --save goals_faults.json --plot docs/results/data/goals_faults.png

`--replot goals_faults.json` draws and prints a saved result without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from runs import records, run_and_record  # noqa: E402  (bench/runs.py)

CONFIG = "configs/goals_negotiation_hindsight.yaml"  # the default of --config
AGENTS = ("agent_0", "agent_1")
KILLED = "agent_1"


def cell_overrides(delay_s: float, loss: float, kill_at_step: int | None) -> list[str]:
    """The --set lines of one cell: the peer links' delay and loss, and the kill/restart fault."""
    overrides = []
    if delay_s > 0 or loss > 0:
        overrides.append(f"network.links=[{{role: peer_links, link: {{delay_s: {delay_s}, loss: {loss}}}}}]")
    if kill_at_step is not None:
        overrides.append("faults={restart: {policy: on-failure, max_restarts: 1, backoff_s: 0.5}, "
                         f"schedule: [{{at_step: {kill_at_step}, kind: kill, nodes: [{KILLED}]}}]}}")
    return overrides


def score_run(run_dir: Path) -> dict:
    """Per-episode alignment and success joined over both agents, and the protocol counters."""
    episodes: dict[float, dict[str, dict]] = defaultdict(dict)
    missing, applied, durations, timed_out, cut = [], [], [], [], []
    for agent in AGENTS:
        for record in records(run_dir, agent):
            if "goals/goal" in record:
                episodes[record["goals/episode"]][agent] = record
                if "negotiation/duration_s" in record:
                    durations.append(record["negotiation/duration_s"])
                timed_out.append(record.get("negotiation/timed_out", 0.0))
                cut.append(record.get("negotiation/cut_by_env", 0.0))
            if "hindsight/partners_missing" in record:
                missing.append(record["hindsight/partners_missing"])
                applied.append(record["hindsight/reports_applied"])
    both = [episodes[e] for e in sorted(episodes) if len(episodes[e]) == len(AGENTS)]
    aligned = np.array([float(ep[AGENTS[0]]["goals/goal"] == ep[AGENTS[1]]["goals/goal"]) for ep in both])
    success = np.array([float(all(ep[a]["goals/reward"] > 0 for a in AGENTS)) for ep in both])
    last = max(1, len(both) // 5)
    return {
        "episodes_joined": len(both), "episodes_one_side_only": len(episodes) - len(both),
        "aligned_all": float(aligned.mean()) if both else None, "aligned_final": float(aligned[-last:].mean()) if both else None,
        "success_all": float(success.mean()) if both else None, "success_final": float(success[-last:].mean()) if both else None,
        "negotiation_s_mean": float(np.mean(durations)) if durations else None,
        "negotiation_s_p90": float(np.percentile(durations, 90)) if durations else None,
        "timed_out": float(np.mean(timed_out)) if timed_out else None,
        "cut_by_env": float(np.mean(cut)) if cut else None,
        "hindsight_missing_per_episode": float(np.mean(missing)) if missing else None,
        "hindsight_applied_per_episode": float(np.mean(applied)) if applied else None,
        "aligned_curve": aligned.tolist(), "success_curve": success.tolist(),
    }


def cells(delays: list[float], losses: list[float], with_kill: bool, with_sweep: bool = True) -> list[tuple[str, float, float, bool]]:
    out = [(f"delay {d * 1000:g} ms, loss {l * 100:g}%", d, l, False) for d in delays for l in losses] if with_sweep else []
    if with_kill:
        out.append(("kill + restart agent_1 (no delay, no loss)", 0.0, 0.0, True))
    return out


def run_all(args) -> dict:
    results = {"conditions": {
        "config": args.config, "steps": args.steps, "episodes_per_run": args.steps // 40, "landmarks": args.landmarks,
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)), "overrides": args.set,
        "kill_at_step": args.steps // 2, "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }, "cells": []}
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench_goals_faults_"))
    plan = cells(args.delays, args.losses, not args.no_kill, not args.no_sweep)
    results["cells"] = [{"name": name, "delay_s": delay_s, "loss": loss, "kill": kill, "per_seed": []}
                        for name, delay_s, loss, kill in plan]
    # Seed by seed, every cell: a sweep cut off by the clock has whole sweeps of the first seeds.
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for cell in results["cells"]:
            delay_s, loss, kill = cell["delay_s"], cell["loss"], cell["kill"]
            run_dir = root / f"d{delay_s:g}_l{loss:g}{'_kill' if kill else ''}_s{seed}"
            overrides = [f"run.seed={seed}", f"run.steps={args.steps}", f"env.kwargs.num_landmarks={args.landmarks}",
                         f"agents.goals.num_landmarks={args.landmarks}", *args.set,
                         *cell_overrides(delay_s, loss, args.steps // 2 if kill else None)]
            started = time.monotonic()
            record = run_and_record(args.config, overrides, run_dir, args.timeout_s)
            scored = {"seed": seed, "exit_code": record["exit_code"], "refused": record["refused"], "record": record,
                      "wall_s": round(time.monotonic() - started, 1), "run_dir": str(run_dir), **score_run(run_dir)}
            if kill:
                scored["restarted"] = _restarts(run_dir)
            cell["per_seed"].append(scored)
            print(f"# {cell['name']} seed {seed}: " + json.dumps({k: v for k, v in scored.items() if not k.endswith("_curve")}),
                  file=sys.stderr, flush=True)
            if args.save:  # after every run: a cut-off sweep keeps what it ran
                Path(args.save).write_text(json.dumps(results, indent=1))
    results["conditions"]["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1))
    return results


def merge(results: dict, more: dict) -> None:
    """Add `more`'s runs to `results`' cells of the same name (a cell `results` lacks is appended)."""
    by_name = {cell["name"]: cell for cell in results["cells"]}
    for cell in more["cells"]:
        if cell["name"] in by_name:
            by_name[cell["name"]]["per_seed"] += cell["per_seed"]
        else:
            results["cells"].append(cell)
    results["conditions"].setdefault("merged", []).append(more["conditions"])


def _restarts(run_dir: Path) -> int:
    """How many times the killed agent came back (its `rejoined` events)."""
    from orchestrator.rundir import EVENTS_FILENAME, read_jsonl

    return sum(1 for event in read_jsonl(run_dir / EVENTS_FILENAME)
               if event.get("event") == "rejoined" and event.get("node") == KILLED)


def scorable(run: dict) -> bool:
    """A run counts in a cell's means only when the shared rule accepted it (bench/runs.py,
    `run_record`); a result saved before runs were recorded so: when it exited 0."""
    return run.get("refused") is None and run.get("exit_code") == 0


def _mean(per_seed: list[dict], key: str) -> float:
    values = [run[key] for run in per_seed if scorable(run) and run.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def report(results: dict) -> None:
    c = results["conditions"]
    print(f"goal negotiation + hindsight under peer-link faults ({c['config']}, goal_lines L={c['landmarks']}, 2 agents, "
          f"{c['steps']} steps = {c['episodes_per_run']} episodes per run; 'final' = last fifth; "
          f"mean over the seeds that ran (column 'seeds'){'; overrides ' + ' '.join(c['overrides']) if c['overrides'] else ''})")
    header = ("cell", "seeds", "aligned all", "aligned final", "success all", "success final", "negot. s mean", "negot. s p90",
              "timed out", "cut by env", "hs missing/ep", "joined eps", "wall s")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for cell in results["cells"]:
        runs = cell["per_seed"]
        if not runs:
            continue
        values = [_mean(runs, k) for k in ("aligned_all", "aligned_final", "success_all", "success_final",
                                           "negotiation_s_mean", "negotiation_s_p90", "timed_out", "cut_by_env",
                                           "hindsight_missing_per_episode")]
        failed = [run["seed"] for run in runs if not scorable(run)]
        name = cell["name"] + (f" (refused, left out: seeds {failed})" if failed else "")
        print(f"| {name} | {','.join(str(run['seed']) for run in runs if scorable(run))} | " + " | ".join(f"{v:.3f}" for v in values)
              + f" | {_mean(runs, 'episodes_joined'):.0f} | {_mean(runs, 'wall_s'):.0f} |")


def report_per_seed(results: dict) -> None:
    keys = ("aligned_all", "aligned_final", "success_all", "success_final", "negotiation_s_mean", "timed_out",
            "hindsight_missing_per_episode")
    print("| cell | seed | exit | " + " | ".join(keys) + " | joined eps | one side only | wall s |")
    print("|" + " --- |" * (len(keys) + 6))
    for cell in results["cells"]:
        for run in cell["per_seed"]:
            extra = f" (rejoined {run['restarted']}x)" if "restarted" in run else ""
            print(f"| {cell['name']}{extra} | {run['seed']} | {run['exit_code']} | "
                  + " | ".join("–" if run.get(k) is None else f"{run[k]:.3f}" for k in keys)
                  + f" | {run['episodes_joined']} | {run['episodes_one_side_only']} | {run['wall_s']:.0f} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [cell for cell in results["cells"] if not cell["kill"]]
    killed = [cell for cell in results["cells"] if cell["kill"]]
    delays = sorted({cell["delay_s"] for cell in swept})
    losses = sorted({cell["loss"] for cell in swept})
    panels = (("aligned_final", "alignment (final fifth)"), ("success_final", "success, both rewarded (final fifth)"),
              ("negotiation_s_mean", "negotiation time, mean (s)"), ("hindsight_missing_per_episode", "hindsight reports missing / episode"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for axis, (key, title) in zip(axes, panels):
        for loss in losses:
            ys = [_mean(next(c for c in swept if c["delay_s"] == d and c["loss"] == loss)["per_seed"], key)
                  if any(c["delay_s"] == d and c["loss"] == loss for c in swept) else np.nan for d in delays]
            axis.plot([d * 1000 for d in delays], ys, marker="o", label=f"loss {loss * 100:g}%")
        for cell in killed:
            axis.axhline(_mean(cell["per_seed"], key), color="grey", linestyle="--", label="kill + restart (0 ms, 0%)")
        axis.set_xlabel("peer-link delay (ms)")
        axis.set_title(title, fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    c = results["conditions"]
    seeds = sorted({run["seed"] for cell in results["cells"] for run in cell["per_seed"]})
    figure.suptitle(f"negotiation + hindsight through the runtime, goal_lines L={c['landmarks']}, {c['episodes_per_run']} episodes, "
                    f"seeds {seeds} (mean; kill: dashed)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=CONFIG, help="a two-agent goal config (goal_lines; default %(default)s)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=8000, help="lockstep steps per run (40 per episode)")
    parser.add_argument("--landmarks", type=int, choices=(3, 6), default=3)
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.05, 0.2], help="peer-link delays, seconds")
    parser.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.1, 0.3], help="peer-link loss probabilities")
    parser.add_argument("--no-kill", action="store_true", help="leave out the kill + restart cell")
    parser.add_argument("--no-sweep", action="store_true", help="run the kill + restart cell only")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="with --replot: add these saved results' runs to the replotted one, cell by cell (by name)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    parser.add_argument("--root", default=None, help="keep the run directories here (default: a temporary folder, kept)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per run")
    parser.add_argument("--save", default=None, help="write the results as JSON here (after every cell)")
    parser.add_argument("--plot", default=None, help="draw alignment, success, negotiation time and missing reports here")
    parser.add_argument("--replot", default=None, metavar="JSON", help="print and plot a saved result; run nothing")
    parser.add_argument("--per-seed", action="store_true", help="also print one row per run")
    args = parser.parse_args()
    for loss in args.losses:
        if not 0.0 <= loss <= 1.0:
            parser.error(f"--losses: expected probabilities in [0, 1], got {loss}")
    if any(delay < 0 for delay in args.delays):
        parser.error(f"--delays: expected seconds >= 0, got {args.delays}")
    if args.no_kill and args.no_sweep:
        parser.error("--no-kill with --no-sweep leaves nothing to run")
    results = json.loads(Path(args.replot).read_text()) if args.replot else run_all(args)
    for path in args.merge or []:
        merge(results, json.loads(Path(path).read_text()))
    report(results)
    if args.per_seed:
        report_per_seed(results)
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
