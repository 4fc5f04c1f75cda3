"""What peer-link delay and loss do to consensus and to learning, on real runs: a small sweep.

    python bench/faults.py [--modes sync,push_sum] [--delays-ms 0,50,200] [--losses 0,0.1,0.3]
                           [--seeds 0] [--agents 4] [--steps 60] [--rounds 8] [--round-timeout-s 1.0]
                           [--push-sum-duration-s 2.0] [--push-sum-period-s 0.05] [--parallel 1]
                           [--sweep-dir DIR] [--json]
    python bench/faults.py --table-of SWEEP_DIR      # the table of an earlier run, nothing run

It writes a sweep file and runs `orchestrate sweep` on it (every point an ordinary `orchestrate
up`: real processes, real sockets, the emulated links of protocols/net/links.py), then reads the runs
back with `orchestrate report`'s summaries (orchestrator/report.py) and prints one row per
(consensus mode, delay, loss): the base is configs/tiny_ring_links.yaml (DQN agents on a ring,
simple_spread, consensus on the policy parameters every 20 steps) with `--agents` agents (4: a
ring that is not a complete graph, so averaging takes several rounds), every agent <-> agent
link given the swept constant delay and Bernoulli loss (the env links stay ideal, so the
lockstep is not slowed by the link model itself), and each `--modes`:
- `sync`: `--rounds` synchronous Metropolis rounds per session, each waiting up to
  `--round-timeout-s` for the neighbours' shares;
- `push_sum`: asynchronous push-sum for `--push-sum-duration-s` per session, a push to every
  neighbour each `--push-sum-period-s` (exact under loss: lost mass arrives with the next
  cumulative total).

Columns, each a mean over agents, then over seeds (± sample std with >1 seed). The consensus
columns are each agent's FIRST session (at step 20): every point has it, starting from the same
parameters for the same seed, whereas later sessions differ in number and starting spread.
- sessions/agent: consensus sessions an agent finished in the run (a session still running when
  the run's budget is spent writes none);
- disagree before / after: sync, the largest distance between an agent's parameters and a
  neighbour's at the first round of the session, and at its last round; push-sum, its
  disagreement estimate (protocols/engines/consensus.py, `PushSumConsensus.metrics`): the largest
  distance between the agent's estimate and a neighbour's as that neighbour's pushes carry it,
  at the first push heard from each and at the latest (an estimate from the pushes that
  arrived, not the exact spread);
- rounds to 1e-3 and to 1e-6: the first round at which that distance was <= 1e-3 (1e-6) of the
  first round's (over the agents that got there), and the share of agents that got there within
  `--rounds` (sync only: push-sum has no rounds; its session lasts `--push-sum-duration-s`);
- session s: wall time of that session; steps/s: lockstep steps per second of the run;
- return: the mean episode return over each agent's last 20% of episodes (short runs: learning
  has barely started, so this says more about the stalls than about skill);
- peer drop: the dropped fraction the links counted (the emulated loss, as realised).

The runs are a few seconds of training each on a shared machine; the table is a cheap, honest
picture of the mechanism, not a learning benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.report import summarize_sweep  # noqa: E402
from runs import numbers  # noqa: E402  (bench/runs.py; bench/ is the script's directory)

BASE_CONFIG = REPO / "configs" / "tiny_ring_links.yaml"
DELAY_KEY = "network.links.0.link.delay_s"
LOSS_KEY = "network.links.0.link.loss"
MODE_KEY = "protocols.consensus.mode"
COLUMNS = (
    ("consensus_sessions", "sessions/agent", ".2g"),
    ("consensus_first_disagreement_before", "disagree before", ".2e"),
    ("consensus_first_disagreement_after", "disagree after", ".2e"),
    ("consensus_first_rounds_to_1e-3", "rounds to 1e-3", ".3g"),
    ("consensus_first_reached_1e-3", "reached", ".0%"),
    ("consensus_first_rounds_to_1e-6", "rounds to 1e-6", ".3g"),
    ("consensus_first_reached_1e-6", "reached", ".0%"),
    ("consensus_first_duration_s", "session s", ".3g"),
    ("steps_per_s", "steps/s", ".3g"),
    ("return_last20", "return", ".3g"),
    ("peer_dropped_fraction", "peer drop", ".1%"),
)


def sweep_spec(args: argparse.Namespace) -> dict:
    return {
        "name": "bench_faults",
        "base": str(BASE_CONFIG),
        "grid": {MODE_KEY: args.modes.split(","), DELAY_KEY: [d / 1000.0 for d in numbers(args.delays_ms)],
                 LOSS_KEY: numbers(args.losses)},
        "seeds": [int(s) for s in args.seeds.split(",")],
        "set": {
            "network.links": [{"role": "peer_links", "link": {}}],
            "agents.count": args.agents,
            "env.kwargs.N": args.agents,
            "run.steps": args.steps,
            "protocols.consensus.rounds": args.rounds,
            "protocols.consensus.round_timeout_s": args.round_timeout_s,
            "protocols.consensus.push_sum_duration_s": args.push_sum_duration_s,
            "protocols.consensus.push_sum_period_s": args.push_sum_period_s,
        },
        "parallel": args.parallel,
    }


def cell(aggregate: dict, spec: str) -> str:
    if aggregate["mean"] is None:
        return "-"
    text = format(aggregate["mean"], spec)
    return f"{text} ± {format(aggregate['std'], spec)}" if aggregate["n"] > 1 else text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="sync,push_sum", help="consensus modes, comma-separated: sync, push_sum")
    parser.add_argument("--delays-ms", default="0,50,200")
    parser.add_argument("--losses", default="0,0.1,0.3")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--round-timeout-s", type=float, default=1.0)
    parser.add_argument("--push-sum-duration-s", type=float, default=2.0)
    parser.add_argument("--push-sum-period-s", type=float, default=0.05)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--sweep-dir", help="where the runs go (default: a new temporary directory, kept)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--table-of", metavar="SWEEP_DIR", help="run nothing: print the table of an earlier run of this bench")
    args = parser.parse_args()
    if args.table_of:
        index = json.loads((Path(args.table_of) / "sweep.json").read_text())
        fixed = index["set"]
        args.agents, args.steps = fixed["agents.count"], fixed["run.steps"]
        args.rounds, args.round_timeout_s = fixed["protocols.consensus.rounds"], fixed["protocols.consensus.round_timeout_s"]
        # (runs of this bench from before push-sum had no mode in their grid: sync)
        args.modes = ",".join(index["grid"].get(MODE_KEY, ["sync"]))
        args.push_sum_duration_s = fixed.get("protocols.consensus.push_sum_duration_s", 2.0)
        args.push_sum_period_s = fixed.get("protocols.consensus.push_sum_period_s", 0.05)
        started = datetime.fromisoformat(index["started"]).astimezone()
        finished = datetime.fromisoformat(index["updated"]).astimezone()
        return print_result(args, Path(args.table_of), started, (finished - started).total_seconds(), returncode=0)

    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else Path(tempfile.mkdtemp(prefix="parley-bench-faults-"))
    spec_path = Path(tempfile.mkdtemp(prefix="parley-bench-faults-spec-")) / "bench_faults.yaml"
    spec_path.write_text(yaml.safe_dump(sweep_spec(args), sort_keys=False))
    started = datetime.now()
    # The CLI, as a user would run it: its progress goes to stderr; Ctrl-C stops it cleanly.
    sweep = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "sweep", str(spec_path), "--sweep-dir", str(sweep_dir)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=sys.stderr,
    )  # fmt: skip
    try:
        returncode = sweep.wait()
    except KeyboardInterrupt:
        # The sweep got the same Ctrl-C and is stopping its runs; killing it now (as
        # subprocess.run would) would leave them running. Wait for it instead.
        sweep.wait()
        return 130
    if returncode == 2:
        return 2  # the sweep was refused (its message is above); nothing ran
    return print_result(args, sweep_dir, started, (datetime.now() - started).total_seconds(), returncode)


def print_result(args: argparse.Namespace, sweep_dir: Path, started: datetime, wall_s: float, returncode: int) -> int:
    summary = summarize_sweep(sweep_dir)
    rows = []
    for point in summary["points"]:
        rows.append({
            "mode": point["grid_values"].get(MODE_KEY, "sync"),
            "delay_ms": point["grid_values"][DELAY_KEY] * 1000.0,
            "loss": point["grid_values"][LOSS_KEY],
            "runs_ok": point["ok"],
            "runs": len(point["runs"]),
            **{key: point["metrics"][key] for key, _, _ in COLUMNS},
        })  # fmt: skip
    result = {"sweep_dir": str(sweep_dir), "agents": args.agents, "steps": args.steps, "rounds": args.rounds,
              "round_timeout_s": args.round_timeout_s, "push_sum_duration_s": args.push_sum_duration_s,
              "push_sum_period_s": args.push_sum_period_s, "seeds": summary["seeds"], "wall_s": round(wall_s, 1),
              "date": started.strftime("%Y-%m-%d %H:%M %Z").strip(), "cpus": os.cpu_count(),
              "load_avg_1min_now": round(os.getloadavg()[0], 2), "rows": rows}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"bench/faults.py, {result['date']}, {result['cpus']} cores, load {result['load_avg_1min_now']} (1 min) now; "
              f"{args.agents} DQN agents on a ring, {args.steps} steps, consensus every 20 steps: sync {args.rounds} rounds "
              f"(timeout {args.round_timeout_s:g} s), push-sum {args.push_sum_duration_s:g} s (a push every "
              f"{args.push_sum_period_s:g} s); seeds {summary['seeds']}; {wall_s:.0f} s in all")
        header = ["consensus", "delay ms", "loss", "ok"] + [title for _, title, _ in COLUMNS]
        lines = [[row["mode"], f"{row['delay_ms']:g}", f"{row['loss']:g}", f"{row['runs_ok']}/{row['runs']}"]
                 + [cell(row[key], spec) for key, _, spec in COLUMNS] for row in rows]  # fmt: skip
        widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
        print("| " + " | ".join(h.rjust(w) for h, w in zip(header, widths)) + " |")
        print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
        for line in lines:
            print("| " + " | ".join(c.rjust(w) for c, w in zip(line, widths)) + " |")
        print(f"runs: {sweep_dir} (`orchestrate report {sweep_dir}`)")
    return 0 if returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
