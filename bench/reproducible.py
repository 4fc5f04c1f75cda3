"""What `run.reproducible` costs: lockstep steps per second of one config with and without it.

Without the mode an agent answers an observation while it owes up to
`agents.max_pending_gradient_steps` gradient steps and takes them while the env server waits for
the others; with it, every agent finishes what it owes before it acts, so learning no longer
overlaps the other agents' waiting. Both runs do the same work in the end (a run takes every step
still owed before it exits), so the table compares equal work: the learners' gradient steps are
printed beside the speed.

    .venv/bin/python bench/reproducible.py                       # tiny_star_tcp, 400 steps, seed 0
    .venv/bin/python bench/reproducible.py --config configs/sac_ring5.yaml --steps 300 --repeats 2

Steps per second are lockstep steps from the orchestrator's `started` event to the env server's
`run_complete` (start-up and shutdown excluded). The machine's load average is printed with them:
label every figure with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.runs import mean_std, records, run_and_record  # noqa: E402


def steps_per_second(run_dir: Path) -> float:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    started = next(e["t"] for e in events if e["event"] == "started")
    complete = next(e for e in events if e["event"] == "run_complete")
    return complete["steps"] / (complete["t"] - started)


def gradient_steps(run_dir: Path) -> int:
    """Gradient steps of every agent at its end (the counters each writes last)."""
    total = 0
    for node_dir in sorted((run_dir / "nodes").glob("agent_*")):
        counters = [r for r in records(run_dir, node_dir.name) if any(k.endswith("/gradient_steps") for k in r)]
        if counters:
            total += int(next(v for k, v in counters[-1].items() if k.endswith("/gradient_steps")))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny_star_tcp.yaml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="more --set overrides for both")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()

    results: dict[str, list[tuple[float, int]]] = {"default": [], "reproducible": []}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench_reproducible_") as tmp:
        for repeat in range(args.repeats):
            for mode in results:
                run_dir = Path(tmp) / f"{mode}_{repeat}"
                overrides = [f"run.steps={args.steps}", f"run.seed={args.seed}", "launch.live_view=off", *args.overrides]
                if mode == "reproducible":
                    overrides.append("run.reproducible=true")
                record = run_and_record(args.config, overrides, run_dir, args.timeout_s)
                if record["refused"] is not None:
                    print(f"{mode} run {repeat} refused: {record['refused']}:\n{record['stderr_tail']}", file=sys.stderr)
                    return 1
                results[mode].append((steps_per_second(run_dir), gradient_steps(run_dir)))
                loads.append(os.getloadavg()[0])

    print(f"{args.config}, {args.steps} steps, seed {args.seed}, {args.repeats} runs per mode (alternating); "
          f"1-min load average {min(loads):.2f} to {max(loads):.2f} over the runs (2 cores)")
    print(f"{'mode':<14}{'steps/s mean':>14}{'std':>8}{'runs':>30}{'gradient steps':>16}")
    base = mean_std([speed for speed, _ in results["default"]])[0]
    for mode, runs in results.items():
        mean, std = mean_std([speed for speed, _ in runs])
        each = ", ".join(f"{speed:.1f}" for speed, _ in runs)
        work = sorted({steps for _, steps in runs})
        print(f"{mode:<14}{mean:>14.1f}{std:>8.1f}{each:>30}{'/'.join(map(str, work)):>16}")
    print(f"reproducible / default: {mean_std([s for s, _ in results['reproducible']])[0] / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
