"""How long a user waits for the main job: `orchestrate up configs/4agents_ring.yaml`, the command
`make run` runs, several times in a row on an idle machine, and the median of what each run's end
line says ("the run took N s from its first step to its end").

    .venv/bin/python bench/main_job_wall.py --save docs/results/main_job_wall.json --page docs/results/main_job_wall.md
    .venv/bin/python bench/main_job_wall.py --runs 1                      # one run, printed only
    .venv/bin/python bench/main_job_wall.py --page-from docs/results/main_job_wall.json --page docs/results/main_job_wall.md

Why a bench: one run's seconds move with the machine's state (two idle runs minutes apart took 85
and 102 s here), so a claim about the main job's time needs a rule. This bench's rule: **the
median over `--runs` runs (5 by default) taken one after another, each started only once the
machine is idle**, the runs and the idleness of each shown beside it.

Idle means that in the `--idle-window-s` seconds (5) before a run, the CPUs were busy less than
`--idle-busy` (10%) of the time, all processes counted (/proc/stat). The 1-minute load average
decays too slowly to say whether the machine is free *now* (after a run it takes about a minute
and a half to fall from 2 to 0.5), so it is recorded, not used. The bench waits for idleness at
most `--wait-s` seconds (600) per run, sleeping between looks; a run it could not start idle
still runs and is marked `busy before`, and the median counts only runs started idle.

The machine's own speed moves between days (mpe2's step cost 0.47 ms of CPU one day and 0.90 two
days later, docs/results/main_job_cpu.md), so the page also says how fast this machine stepped the
main job's env that hour: the CPU microseconds of one step of `mpe2.simple_spread_v3` (N = 4, the
main job's env) with random actions, in this process, before the first run and after the last.
Seconds taken on different days compare only beside that figure.

What each row holds: the run's seconds from its first lockstep step to its end (the report's
`duration_s`, the end line's figure), the seconds it took to start its nodes (`launch_s`), the
whole command from start to exit (what a user waits, report included), the share of the gap
from random to the scripted oracle it closed (its learning, so a faster run that learns less is
seen), and the CPU busy share just before it. A run that did not exit 0 or did not finish its
budget (bench/runs.py's `run_record`) is refused: shown with why, never counted; the bench then
exits 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_page  # noqa: E402
from runs import run_once, run_record  # noqa: E402
from throughput import inprocess_steps_per_s  # noqa: E402

CONFIG = "configs/4agents_ring.yaml"
TARGET_S = 75.0  # seconds of the run itself (first step to end) the project aims the main job at
PAGE_TITLE = "How long the main job takes"


def cpu_busy_share(window_s: float) -> float:
    """The share of the CPUs' time spent busy over the next `window_s` seconds, every process
    counted (the first line of /proc/stat: busy is everything but idle and iowait)."""

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total_before, idle_before = sample()
    time.sleep(window_s)
    total_after, idle_after = sample()
    elapsed = total_after - total_before
    return 1.0 - (idle_after - idle_before) / elapsed if elapsed > 0 else 0.0


def env_step_cost_us(steps: int = 2000) -> float:
    """CPU microseconds per step of the main job's env (N = 4), one copy, random actions: the
    throughput bench's in-process measurement."""
    return inprocess_steps_per_s(4, steps)[1]


def wait_until_idle(busy_limit: float, window_s: float, wait_s: float) -> tuple[bool, float]:
    """Look every `window_s` seconds until the CPUs were busy less than `busy_limit` over one
    look, for at most `wait_s` seconds: (idle, the last look's busy share)."""
    deadline = time.monotonic() + wait_s
    while True:
        busy = cpu_busy_share(window_s)
        if busy < busy_limit or time.monotonic() >= deadline:
            return busy < busy_limit, busy


def measure_run(index: int, root: Path, overrides: list[str], timeout_s: float, busy_limit: float,
                window_s: float, wait_s: float) -> dict[str, Any]:
    """One run of the main job once the machine is idle (or `wait_s` has passed): its row."""
    from orchestrator.report import summarize_run

    idle, busy = wait_until_idle(busy_limit, window_s, wait_s)
    load_before = round(os.getloadavg()[0], 2)
    run_dir = root / f"run{index}"
    started = time.monotonic()
    code, stderr = run_once(CONFIG, overrides, run_dir, timeout_s)
    command_s = time.monotonic() - started
    record = run_record(run_dir, code)
    row: dict[str, Any] = {"run": index, "idle_before": idle, "busy_before": round(busy, 3), "load_before": load_before,
                           "command_s": round(command_s, 1), "refused": record["refused"], "exit_code": record["exit_code"]}
    if record["refused"] is not None:
        row["stderr_tail"] = stderr[-500:]
        return row
    summary = summarize_run(run_dir)
    evaluation = summary.get("evaluation") or {}
    row.update(run_s=round(summary["duration_s"], 1), launch_s=round(summary["launch_s"], 1),
               gap_closed=evaluation.get("gap_closed"))
    return row


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run time over the runs started idle and not refused, against the target."""
    counted = [row["run_s"] for row in rows if row["refused"] is None and row["idle_before"]]
    if not counted:
        return {"counted": 0, "median_s": None, "met": None}
    median = statistics.median(counted)
    return {"counted": len(counted), "median_s": median, "least_s": min(counted), "most_s": max(counted),
            "target_s": TARGET_S, "met": median <= TARGET_S}


def _described(row: dict[str, Any]) -> str:
    if row["refused"]:
        return f"refused ({row['refused']})"
    gap = "no evaluation" if row["gap_closed"] is None else f"gap closed {row['gap_closed']:.0%}"
    return f"{row['run_s']:.0f} s (nodes {row['launch_s']:.0f} s, command {row['command_s']:.0f} s), {gap}"


def render(record: dict[str, Any], source: str) -> str:
    settings, outcome = record["settings"], record["verdict"]

    def seconds(key: str):
        return lambda row: "-" if row.get(key) is None else f"{row[key]:.0f}"

    columns = [
        ("run", "right", lambda row: str(row["run"])),
        ("CPU busy before", "right", lambda row: f"{row['busy_before']:.0%}" + ("" if row["idle_before"] else " (busy before)")),
        ("load (1 min) before", "right", lambda row: f"{row['load_before']:.2f}"),
        ("the run, first step to end, s", "right", seconds("run_s")),
        ("starting its nodes, s", "right", seconds("launch_s")),
        ("the whole command, s", "right", seconds("command_s")),
        ("gap closed", "right", lambda row: "-" if row.get("gap_closed") is None else f"{row['gap_closed']:.0%}"),
        ("refused", "left", lambda row: row["refused"] or ""),
    ]
    overrides = " ".join(f"--set {item}" for item in settings["overrides"]) or "no overrides"
    intro = (f"`orchestrate up {CONFIG}` ({overrides}), {len(record['rows'])} runs one after another, each started once "
             f"the CPUs were busy less than {settings['idle_busy']:.0%} of {settings['idle_window_s']:g} s (waiting at most "
             f"{settings['wait_s']:g} s). How it is measured: bench/main_job_wall.py's docstring.")
    if outcome["median_s"] is None:
        reading = "No run was started idle and finished: no median."
    else:
        reading = (f"**Median of the {outcome['counted']} runs started idle: {outcome['median_s']:.0f} s** from the first "
                   f"step to the end ({outcome['least_s']:.0f}-{outcome['most_s']:.0f}); the target, "
                   f"{outcome['target_s']:.0f} s, is {'met' if outcome['met'] else 'not met'}.")
    reading += (f"\n\nThis machine's speed that hour: one step of the main job's env (`mpe2.simple_spread_v3`, N = 4, "
                f"random actions, one copy) cost {record['env_step_us_before']:.0f} µs of CPU before the first run and "
                f"{record['env_step_us_after']:.0f} after the last.")
    if record.get("note"):
        reading += "\n\n" + record["note"]
    return results_page.page(record, PAGE_TITLE, source, intro, columns, reading)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs one after another (default 5)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, as `orchestrate up --set`")
    parser.add_argument("--idle-busy", type=float, default=0.10, help="idle: CPUs busy less than this share (default 0.10)")
    parser.add_argument("--idle-window-s", type=float, default=5.0, help="over this many seconds (default 5)")
    parser.add_argument("--wait-s", type=float, default=600.0, help="wait at most this long for idleness per run (default 600)")
    parser.add_argument("--timeout-s", type=float, default=1200.0, help="a run taking longer is stopped and refused")
    parser.add_argument("--keep", type=Path, help="keep the runs here (default: a temporary directory, removed)")
    parser.add_argument("--note", default="", help="what the page's reader must know of these runs")
    results_page.add_page_options(parser)
    args = parser.parse_args(argv)
    if results_page.render_saved_page(parser, args, render):
        return 0
    if args.runs < 1:
        parser.error(f"--runs: expected at least 1, got {args.runs}")
    if not 0 < args.idle_busy <= 1:
        parser.error(f"--idle-busy: expected a share in (0, 1], got {args.idle_busy}")
    record = results_page.begin("bench/main_job_wall.py", sys.argv[1:] if argv is None else argv)
    record["settings"] = {"runs": args.runs, "overrides": args.overrides, "idle_busy": args.idle_busy,
                          "idle_window_s": args.idle_window_s, "wait_s": args.wait_s}
    record["note"] = args.note
    record["env_step_us_before"] = env_step_cost_us()
    root = args.keep or Path(tempfile.mkdtemp(prefix="parley-wall-"))
    try:
        rows = []
        for index in range(args.runs):
            row = measure_run(index, root, args.overrides, args.timeout_s, args.idle_busy, args.idle_window_s, args.wait_s)
            rows.append(row)
            print(f"run {index}: {_described(row)}; CPU busy before {row['busy_before']:.0%}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    record["env_step_us_after"] = env_step_cost_us()
    record["rows"] = rows
    record["verdict"] = verdict(rows)
    results_page.finish(record, args.save, args.page, render)
    print(render(record, "stdout").split("\n\n")[-1])
    return 1 if any(row["refused"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
