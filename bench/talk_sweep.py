"""What delay, loss and a crash cost the main job when talking takes env steps: its results page.

Runs a sweep file (default `configs/sweeps/main_job_talk.yaml`; the whole grid:
`configs/sweeps/main_job_faults.yaml`) with `orchestrate sweep`, or reads one that ran
(`--sweep-dir`), and writes what `orchestrate report` computes from it (orchestrator/report.py,
orchestrator/sweep_effects.py) as a record and a page: the return per point with its seeds, the
return against each axis beside talking free in env time and no talking, each line's D50, and
after the crash the dip and the steps to recover. Only runs that exited 0 with their budget done
are scored (orchestrator/run_records.py); the others are listed with why.

    python bench/talk_sweep.py --save docs/results/main_job_talk.json --page docs/results/main_job_talk.md
    python bench/talk_sweep.py --sweep-dir runs/sweeps/main_job_talk-<time> --save ... --page ...
    python bench/talk_sweep.py --sweep configs/sweeps/main_job_newcomer.yaml --title "..." --save ... --page ...

The record (`--save`) holds every run's numbers (`sweep_record`), so points or seeds run later join
the page's without its run directories:

    orchestrate sweep configs/sweeps/main_job_faults.yaml --only ge_d5 --sweep-dir runs/sweeps/ge_d5
    orchestrate sweep --merge docs/results/<page>.json runs/sweeps/ge_d5 --sweep-dir runs/sweeps/all
    python bench/talk_sweep.py --sweep-dir runs/sweeps/all --save docs/results/<page>.json --page ...

(Pages written before 2026-11-28 hold only the returns.)

Every point is compared with one (`--against`, default the first); `--pair POINT=OTHER` adds a
comparison of two points of your choosing, paired by seed, e.g. each crash against the same links
without it (`--pair crash_d1=delay_steps1_loss0.0`).

Any sweep of the main job reads the same way (`--title` names the page): the newcomer sweep
(`configs/sweeps/main_job_newcomer.yaml`, a crash without saved state, cold or bootstrapped by
the neighbours) uses only its crash table.

Returns are the env's reward per agent per episode (25 steps of simple_spread, N = 4), the mean of
the last 5 greedy evaluations of `env.eval_episodes` episodes each (the main job's convention:
docs/results/return_conventions.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import results_page  # noqa: E402
from intervals import minimum_detectable_effect  # noqa: E402  (bench/intervals.py)

from orchestrator.intervals import holm  # noqa: E402
from orchestrator.report import (  # noqa: E402
    HOLM_ALPHA, compare_points, plot_sweep, render_comparisons, summarize_sweep, sweep_record)
from orchestrator.config import RESOLVED_FILENAME  # noqa: E402
from orchestrator.overrides import load_yaml  # noqa: E402
from orchestrator.sweep import SWEEP_RECORD_KEY, names_point  # noqa: E402
from orchestrator.sweep_effects import effect_tables  # noqa: E402

DEFAULT_SWEEP = "configs/sweeps/main_job_talk.yaml"
DEFAULT_TITLE = "The main job when talking takes env steps"
RETURN = "eval_return_last5"
GRAPH_KEYS = ("graph_edges_mean", "graph_copy_edges_mean", "graph_connected_share", "graph_range_changes")  # the report's headline
# Whether the talk arrived (the report's headline): the landmark agreements decided on the whole
# team's table and their age in steps, the averages that ran out of time and the age of the rest.
TALK_KEYS = ("landmarks_complete_fraction", "landmarks_decision_age_steps", "consensus_short_sessions", "consensus_age_steps")


def run_sweep(sweep_file: str, sweep_dir: Path) -> None:
    command = [sys.executable, "-m", "orchestrator", "sweep", sweep_file, "--sweep-dir", str(sweep_dir)]
    subprocess.run(command, cwd=REPO, check=False)  # a failed run is recorded in sweep.json and refused below


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _made_by(summary: dict[str, Any], durations: dict[str, float]) -> list[dict[str, Any]]:
    """The code that made the sweep's runs (a merged sweep's seeds may come from other commits or
    machines): per (commit, Python, torch), its seeds, how many runs and their mean wall time."""
    groups: dict[tuple, dict[str, Any]] = {}
    for point in summary["points"]:
        for run in point["runs"]:
            if run["record"] is None:  # never started, or its directory is gone
                continue
            record = run["record"]
            key = ((record["git_commit"] or "?")[:7], record["python"], record["torch"])
            group = groups.setdefault(key, {"commit": key[0], "python": key[1], "torch": key[2], "seeds": set(), "runs": 0,
                                            "seconds": []})  # fmt: skip
            group["seeds"].add(run["seed"])
            group["runs"] += 1
            if Path(run["run_dir"]).name in durations:
                group["seconds"].append(durations[Path(run["run_dir"]).name])
    made_by = []
    for group in groups.values():
        seconds = group.pop("seconds")
        made_by.append({**group, "seeds": sorted(group["seeds"]),
                        "run_seconds_mean": sum(seconds) / len(seconds) if seconds else None})
    return made_by


def _eval_episodes(runs: list[dict[str, Any]]) -> list[int]:
    """The evaluation episodes (env.eval_episodes) the sweep's runs were made with (from a run's
    resolved config, or from the sweep record it was merged from)."""
    counts = set()
    for run in runs:
        resolved = Path(run["run_dir"]) / RESOLVED_FILENAME
        if resolved.exists():
            counts.add(int((load_yaml(resolved.read_text()).get("env") or {}).get("eval_episodes")))
        elif (run.get("summary") or {}).get("eval_episodes") is not None:
            counts.add(int(run["summary"]["eval_episodes"]))
    return sorted(counts)


def paired_with(points: list[dict[str, Any]], pairs: list[str]) -> list[dict[str, Any]]:
    """Each `POINT=OTHER` of `--pair`: POINT minus OTHER on the return, paired by seed (e.g. a
    crash against the same links without it), as the report compares a point with `--against`;
    Holm's correction over the pairs named. A point is named as `--only` names it (`names_point`)."""

    def find(name: str) -> dict[str, Any]:
        for point in points:
            if names_point(name, point["point"]):
                return point
        raise SystemExit(f"--pair: no point named {name!r}; the sweep's points: {', '.join(p['point'] for p in points)}")

    rows = []
    for text in pairs:
        name, equals, other = text.partition("=")
        if not equals or not name or not other:
            raise SystemExit(f"--pair: expected POINT=OTHER (e.g. crash_d1=delay_steps1_loss0.0), got {text!r}")
        point, baseline = find(name), find(other)
        comparison = compare_points([baseline, point], against=baseline["point"])
        if comparison is None:
            raise SystemExit(f"--pair {text}: {baseline['point']} has no scored run to compare with")
        row = comparison["rows"][1]
        if not row.get("seeds"):
            raise SystemExit(f"--pair {text}: {point['point']} and {baseline['point']} have no scored seed in common")
        rows.append({**row, "baseline": baseline["point"], "metric": comparison["metric"]})
    for row, kept in zip(rows, holm([row["p_value"] for row in rows], HOLM_ALPHA)):
        row["survives_holm"] = kept
    return rows


def detectable(row: dict[str, Any]) -> float | None:
    """The difference a `--pair` row's seeds detect with 80% power (two-sided 5%), from the pairs'
    spread, which the row's t-interval holds: its half-width is t(0.975, n-1) * sd / sqrt(n).
    None for fewer than two seeds."""
    n = len(row["seeds"])
    if n < 2:
        return None
    low, high = row["difference_ci95"]
    sd = (high - low) / 2 * math.sqrt(n) / stats.t.ppf(0.975, n - 1)
    return minimum_detectable_effect(sd, n)


def record_of(sweep_dir: Path, argv: list[str], against: str | None = None, pairs: list[str] = ()) -> dict[str, Any]:
    """The record: the bench's own fields (results_page), the sweep's times, and per point its
    runs (seed, return, why refused), the report's effects (axes, D50, crashes) and the pairs
    asked for (`paired_with`)."""
    record = results_page.begin("bench/talk_sweep.py", argv)
    index = json.loads((sweep_dir / "sweep.json").read_text())
    runs = index["runs"]
    started = min(run["started_at"] for run in runs if run.get("started_at"))
    finished = max(run["started_at"] + run["duration_s"] for run in runs if run.get("duration_s"))
    summary = summarize_sweep(sweep_dir, against)
    timed = [r["duration_s"] for r in runs if r.get("duration_s")]
    record["sweep"] = {"file": index["sweep"], "dir": str(sweep_dir), "grid": index["grid"], "seeds": index["seeds"],
                       "runs_started_utc": _utc(started), "runs_finished_utc": _utc(finished),
                       "run_seconds_mean": sum(timed) / len(timed),
                       "eval_episodes": _eval_episodes(runs),
                       "parallel": sorted({source.get("parallel") or 1 for source in index.get("merged_from") or [index]}),
                       "merged": index.get("state") == "merged",
                       "made_by": _made_by(summary, {Path(r["run_dir"]).name: r["duration_s"] for r in runs if r.get("duration_s")})}
    record["rows"] = [
        {"point": point["point"], "runs": [
            {"seed": run["seed"], "return": (run["headline"] or {}).get(RETURN), "refused": run["refused"],
             "default_actions": (run["headline"] or {}).get("default_actions"),
             **{key: (run["headline"] or {}).get(key) for key in (*GRAPH_KEYS, *TALK_KEYS)}}
            for run in point["runs"]]}
        for point in summary["points"]
    ]
    record["effects"] = [[title, columns, rows] for title, columns, rows in effect_tables(summary["effects"])]
    record["comparisons"] = summary.get("comparisons")
    record["pairs"] = paired_with(summary["points"], list(pairs))
    # Every run's numbers, so that seeds or points run later join these without their run
    # directories: `orchestrate sweep --merge THIS.json LATER_SWEEP_DIR --sweep-dir OUT`.
    record[SWEEP_RECORD_KEY] = sweep_record(sweep_dir, summary)
    results_page.end(record)
    return record


def render(record: dict[str, Any], source: str) -> str:
    sweep = record["sweep"]
    lines = [results_page.header(record, record.get("title", DEFAULT_TITLE), source),
             f"The runs: `{sweep['file']}`, seeds {sweep['seeds']}, run "
             f"{sweep['runs_started_utc']} to {sweep['runs_finished_utc']} UTC, {_at_once(sweep.get('parallel', [1]))}, "
             f"{sweep['run_seconds_mean']:.0f} s a run on average (the machine's load in that time is not recorded; "
             "the times above are the page's). Returns: per agent per episode, the mean of the last 5 greedy "
             f"evaluations ({' or '.join(map(str, sweep['eval_episodes']))} episodes each), the env's reward; only runs that exited 0 with their budget done.\n"]
    if record.get("note"):
        lines.append(record["note"] + "\n")
    made_by = sweep.get("made_by") or []
    if len(made_by) > 1:
        # A merged sweep's parts ran apart; an unmerged one's code changed while it ran. (Records
        # written before `merged` was kept hold more than one build only as merged sweeps.)
        why = ("a merged sweep, `orchestrate sweep --merge`" if sweep.get("merged", True)
               else "the checkout changed while the sweep ran")
        lines.append(f"The runs were made by more than one build ({why}):\n")
        lines += [f"- commit {g['commit']}, Python {g['python']}, torch {g['torch']}: seeds {g['seeds']}, {g['runs']} runs"
                  + (f", {g['run_seconds_mean']:.0f} s a run" if g.get("run_seconds_mean") else "") for g in made_by]
        lines.append("")

    def cell(run: dict[str, Any]) -> str:
        if run["refused"] is not None:
            return f"seed {run['seed']}: refused ({run['refused']})"
        return f"seed {run['seed']}: {run['return']:.2f}" if run["return"] is not None else f"seed {run['seed']}: -"

    lines.append(results_page.table(
        [("point", "left", lambda row: row["point"]), ("runs", "left", lambda row: "; ".join(cell(r) for r in row["runs"]))],
        record["rows"]))
    if record.get("comparisons"):
        lines.append(_comparisons_markdown(record["comparisons"]))
    lines += _pairs_table(record.get("pairs") or [])
    lines += _graph_table(record["rows"])
    lines += _talk_table(record["rows"])
    for title, columns, rows in record["effects"]:
        lines.append(f"\n**{title}**\n")
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("| " + " | ".join("---" for _ in columns) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _spread(runs: list[dict[str, Any]], key: str, spec: str, scale: float = 1.0) -> str:
    """The mean of `key` over `runs` and its range, or "-" where no run has it."""
    values = [run[key] * scale for run in runs if run.get(key) is not None]
    return f"{sum(values) / len(values):{spec}} ({min(values):{spec}}–{max(values):{spec}})" if values else "-"


def _per_point_table(rows: list[dict[str, Any]], intro: str, columns: list[tuple[str, str, str, float]]) -> list[str]:
    """A table of figures the runs recorded: per point, for each (title, key, format, scale) of
    `columns`, the mean over the point's scored runs that have any of the keys (their range);
    nothing when no run has them (a record made before they were kept, or a sweep without them)."""
    keys = [key for _, key, _, _ in columns]
    points = [(row["point"], [run for run in row["runs"] if run["refused"] is None
                              and any(run.get(key) is not None for key in keys)]) for row in rows]
    points = [(point, runs) for point, runs in points if runs]
    if not points:
        return []

    def cell(key: str, spec: str, scale: float) -> Callable[[tuple[str, list[dict[str, Any]]]], str]:
        return lambda item: _spread(item[1], key, spec, scale)

    return ["", intro, "", results_page.table(
        [("point", "left", lambda item: item[0]), ("seeds", "right", lambda item: str(len(item[1]))),
         *[(title, "right", cell(key, spec, scale)) for title, key, spec, scale in columns]],
        points)]


def _talk_table(rows: list[dict[str, Any]]) -> list[str]:
    """Talking in env steps: per point, whether its talk arrived (TALK_KEYS)."""
    return _per_point_table(rows, (
        "**What arrived**: the share of landmark agreements decided on the whole team's table and how many "
        "steps after its episode's start an agreement landed (talking in env steps), the share of averaging "
        "sessions in which some round ran out before a neighbour's share came, and how many steps after its "
        "tick an average landed; the mean over the point's scored runs (their range). A round's deadline is "
        "counted from its start (docs/guide/talk.md, \"Deadlines and delay\")."), [
        ("whole tables %", "landmarks_complete_fraction", ".0f", 100.0),
        ("agreement age, steps", "landmarks_decision_age_steps", ".1f", 1.0),
        ("averages short %", "consensus_short_sessions", ".0f", 100.0),
        ("average age, steps", "consensus_age_steps", ".1f", 1.0)])


def _graph_table(rows: list[dict[str, Any]]) -> list[str]:
    """Links that follow positions: each point's graph over its scored runs (the report's
    headline: orchestrator/report.py `_proximity_summary`)."""
    return _per_point_table(rows, (
        "**The team's graph** (links from positions): the mean edges of the union of the env copies' graphs "
        "(what consensus and every message about no copy follow) and of each copy's own (what that copy's "
        "landmark agreement and hindsight follow), the share of metric periods the union was one component "
        "throughout, and how often a neighbour left or came into range; the mean over the point's scored runs "
        "(their range)."), [
        ("edges", "graph_edges_mean", ".2f", 1.0),
        ("edges per copy", "graph_copy_edges_mean", ".2f", 1.0),
        ("one component %", "graph_connected_share", ".0f", 100.0),
        ("range changes", "graph_range_changes", ".0f", 1.0)])


def _comparisons_markdown(comparisons: dict[str, Any]) -> str:
    """The report's paired comparisons with the sweep's first point (how many, which survive
    Holm's correction), as `orchestrate report --save` writes them to summary.md."""
    from rich.console import Console

    out = io.StringIO()
    render_comparisons(comparisons, Console(file=out, width=400, color_system=None), markdown=True)
    verdict, heading, *table = [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
    return "\n".join(["", verdict, "", heading, "", *table])


def _pairs_table(pairs: list[dict[str, Any]]) -> list[str]:
    """The `--pair` comparisons: each point minus the one named beside it, paired by seed."""
    if not pairs:
        return []
    lines = [f"\n**Paired as asked** (`--pair`): each point minus the other on {pairs[0]['metric']}, paired by seed, "
             f"95% t-interval; Holm's correction over these {len(pairs)} at {HOLM_ALPHA}\n",
             "| point | minus | seeds | difference [95% t-CI] | p | survives Holm | detectable (80% power) |",
             "| --- | --- | ---: | --- | ---: | --- | ---: |"]
    for row in pairs:
        low, high = row["difference_ci95"] or (None, None)
        interval = f"{row['difference']:+.2f} [{low:+.2f}, {high:+.2f}]" if low is not None else "-"
        lines.append(f"| {row['point']} | {row['baseline']} | {len(row['seeds'])} | {interval} | {row['p_value']:.3g} | "
                     f"{'yes' if row['survives_holm'] else 'no'} | {_detectable_cell(detectable(row))} |")
    return lines


def _detectable_cell(mde: float | None) -> str:
    return "-" if mde is None else f"{mde:.2f}"


def _at_once(parallel: list[int]) -> str:
    return "one at a time" if parallel == [1] else f"{' or '.join(map(str, parallel))} at a time"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default=DEFAULT_SWEEP, help="the sweep file to run (without --sweep-dir)")
    parser.add_argument("--sweep-dir", type=Path, help="read this sweep directory instead of running one")
    parser.add_argument("--save", type=Path, help="write the record (JSON) here")
    parser.add_argument("--page", type=Path, help="write the results page (markdown) here")
    parser.add_argument("--plot", type=Path, help="copy the report's return-against-axes plot here")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="the page's title")
    parser.add_argument("--note", default="", help="what the page's reader must know of these runs (markdown)")
    parser.add_argument("--against", metavar="POINT", help="compare the points with this one (its name or pNN), not the first")
    parser.add_argument("--pair", metavar="POINT=OTHER", action="append", default=[],
                        help="also compare POINT with OTHER, paired by seed (e.g. a crash with the same links "
                             "without it); repeatable")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir
    if sweep_dir is None:
        sweep_dir = REPO / "runs" / "sweeps" / f"talk-{dt.datetime.now():%Y%m%d-%H%M%S}"
        run_sweep(args.sweep, sweep_dir)
    record = record_of(sweep_dir, sys.argv[1:] if argv is None else argv, args.against, args.pair)
    record["title"] = args.title
    record["note"] = args.note
    print(render(record, "stdout"))
    if args.plot is not None:
        plots = {path.name: path for path in plot_sweep(summarize_sweep(sweep_dir), sweep_dir / "report")}
        if "sweep_axes.png" in plots:
            shutil.copyfile(plots["sweep_axes.png"], args.plot)
    if args.save is not None:
        results_page.save(record, args.save)
    if args.page is not None:
        args.page.write_text(render(record, args.save.name if args.save is not None else "its run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
