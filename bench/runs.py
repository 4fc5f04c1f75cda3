"""Helpers shared by the benches that run whole `orchestrate up` runs and read their metrics
(bench/pmic.py, bench/ctde.py, bench/offline.py, bench/transfer.py): start one run, read a node's
metric records, the env server's greedy evaluations, a mean with its sample standard deviation,
and a plot of the evaluation curves (each bench's `--plot`).

The plot also draws from finished runs, without running anything (e.g. a bench's `--root`):

    python bench/runs.py plot curves.png --title "..." 'qmix=/tmp/ctde/qmix_seed*' 'iql=/tmp/ctde/iql_seed*' \
        [--level 'zero-shot=/tmp/transfer/zero_shot_2_seed*' --last-evals 2]
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the orchestrator's readers (run_finished events, --set overrides), imported where used


def run_once(config: str, overrides: list[str], run_dir: Path, timeout_s: float,
             extra_paths: tuple[Path, ...] = ()) -> tuple[int, str]:
    """`orchestrate up CONFIG --set ...` into run_dir; (exit code, the end of its stderr).
    `extra_paths` go on the run's PYTHONPATH after the repository (a plugin not installed)."""
    argv = [sys.executable, "-m", "orchestrator", "up", config, "--run-dir", str(run_dir)]
    for override in overrides:
        argv += ["--set", override]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(path) for path in (REPO, *extra_paths))}
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout_s} s"
    return done.returncode, done.stderr[-2000:]


def records(run_dir: Path, node: str) -> list[dict]:
    """Every metric record a node wrote (none if it wrote no file)."""
    path = run_dir / "nodes" / node / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluations(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean greedy return) of each evaluation the env server ran."""
    return [(r["step"], r["eval/return_mean"]) for r in records(run_dir, "env") if "eval/return_mean" in r]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, std


def finished_exit_code(run_dir: Path) -> int | None:
    """The exit code the orchestrator recorded when `run_dir`'s run ended (its `run_finished`
    event), or None if the run never finished (or never started)."""
    from orchestrator.rundir import EVENTS_FILENAME, read_jsonl

    finished = [event for event in read_jsonl(run_dir / EVENTS_FILENAME) if event.get("event") == "run_finished"]
    return int(finished[-1]["exit_code"]) if finished else None


def run_record(run_dir: Path, process_exit_code: int | None = None) -> dict:
    """orchestrator/run_records.py's `run_record`: the one rule every bench's scores go through
    (`refused`: why a run may not be scored, None when it may) and what a saved result holds about
    a run (its exit code, budget, commit, run.reproducible)."""
    from orchestrator.run_records import run_record as record_of

    return record_of(run_dir, process_exit_code)


def run_and_record(config: str, overrides: list[str], run_dir: Path, timeout_s: float,
                   extra_paths: tuple[Path, ...] = ()) -> dict:
    """`run_once`, then the run's `run_record` (with `stderr_tail` when it is refused): for the
    benches that score a run from its metrics in their own way."""
    code, stderr = run_once(config, overrides, run_dir, timeout_s, extra_paths)
    record = run_record(run_dir, code)
    return {**record, "stderr_tail": stderr} if record["refused"] is not None else record


def run_and_score(config: str, overrides: list[str], run_dir: Path, timeout_s: float, last_evals: int,
                  reuse: bool = False, extra_paths: tuple[Path, ...] = ()) -> dict:
    """One run, scored by the mean of its last `last_evals` greedy evaluations; `failed` (and no
    score) when it is refused (`refusal`: not exit 0, or its budget not done) or evaluated nothing,
    with the end of its stderr; `record` is its `run_record`.

    `reuse`: a run that already finished in `run_dir` (an earlier invocation of the bench with
    the same root) is scored as it is instead of run again (`reused` in the result, no wall
    time); a run directory left unfinished is renamed `<name>.unfinished-<time>`, not deleted, and
    the run starts afresh. A finished run made with other settings than `config` with `overrides`
    resolves to now is refused (ValueError), not scored."""
    code = reusable_exit_code(run_dir, overrides, config) if reuse else None
    if code is not None:
        return {**_scored(run_dir, code, last_evals, "the reused run exited non-zero or evaluated nothing"),
                "wall_s": None, "reused": True}
    started = time.monotonic()
    code, stderr = run_once(config, overrides, run_dir, timeout_s, extra_paths)
    return {**_scored(run_dir, code, last_evals, stderr), "wall_s": round(time.monotonic() - started, 1)}


def reusable_exit_code(run_dir: Path, overrides: list[str], config: str | None = None) -> int | None:
    """The exit code of a run that already finished in `run_dir` with `overrides` (ValueError if
    it was made with others, or, given `config`, from another version of that file:
    `check_made_with`), or None: nothing there, or a run left unfinished, which is renamed
    `<name>.unfinished-<time>` (kept, not deleted) so the run starts afresh."""
    if not run_dir.exists():
        return None
    code = finished_exit_code(run_dir)
    if code is None:
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.unfinished-{time.strftime('%Y%m%dT%H%M%S')}"))
        return None
    check_made_with(run_dir, overrides, config)
    return code


def check_made_with(run_dir: Path, overrides: list[str], config: str | None = None) -> None:
    """Raise ValueError unless every `--set` in `overrides` holds in `run_dir`'s resolved.yaml and,
    given `config`, unless `config` with `overrides` resolves now to the run's whole config: a
    config file edited since the run (a learner setting it did not have) makes another experiment,
    which the overrides alone do not show. Given `config`, the run's file is read through today's
    schema, so a field added since the run counts as its default."""
    from orchestrator.config import RESOLVED_FILENAME, ConfigError, load_config, load_resolved, resolve, resolve_data
    from orchestrator.overrides import load_yaml, parse_override

    path = run_dir / RESOLVED_FILENAME
    if config is None:
        made = load_yaml(path.read_text())
    else:
        try:
            made = resolve_data(load_resolved(path))
        except ConfigError as error:
            raise ValueError(f"{run_dir} cannot be reused: its config no longer loads: {error}") from None
    for text in overrides:
        segments, wanted = parse_override(text)
        node = made
        for segment in segments:
            node = node.get(segment) if isinstance(node, dict) else None
        if node != wanted:
            raise ValueError(f"{run_dir} cannot be reused: it was run with {'.'.join(segments)}={node!r}, "
                             f"this invocation asks for {text!r}")
    if config is None:
        return
    made_leaves, now_leaves = _dotted(made), _dotted(resolve(load_config(config, overrides)))
    # Where the run lived (its directory, sockets, keys: `runtime`) is no setting of the experiment.
    differing = sorted(key for key in made_leaves.keys() | now_leaves.keys()
                       if key.split(".")[0] != "runtime" and made_leaves.get(key, "(absent)") != now_leaves.get(key, "(absent)"))
    if differing:
        shown = "; ".join(f"{key}: {made_leaves.get(key, '(absent)')!r} in the run, {now_leaves.get(key, '(absent)')!r} now"
                          for key in differing[:4])
        more = f" (and {len(differing) - 4} more)" if len(differing) > 4 else ""
        raise ValueError(f"{run_dir} cannot be reused: {config} with this invocation's settings no longer "
                         f"resolves to the run's config: {shown}{more}")


def _dotted(data: object, prefix: str = "") -> dict[str, object]:
    """A nested mapping's leaves by dotted path (lists are leaves)."""
    if not isinstance(data, dict):
        return {prefix: data}
    leaves: dict[str, object] = {}
    for key, value in data.items():
        leaves.update(_dotted(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def _scored(run_dir: Path, code: int, last_evals: int, stderr: str) -> dict:
    """A run's score and its record (`run_record`): `failed` when the run is refused or
    evaluated nothing, and then no score."""
    record = run_record(run_dir, code)
    evals = evaluations(run_dir)
    last = [value for _, value in evals[-last_evals:]]
    failed = record["refused"] is not None or not last
    return {"exit_code": record["exit_code"], "failed": failed, "score": None if failed else sum(last) / len(last),
            "evaluations": evals, "run_dir": str(run_dir), "record": record,
            **({"stderr_tail": stderr, "refused": record["refused"] or "it evaluated nothing"} if failed else {})}


def plot_evaluations(curves: dict[str, list[Path]], path: Path, title: str, *,
                     levels: dict[str, list[Path]] | None = None, last_evals: int = 1,
                     lines: dict[str, float] | None = None) -> list[str]:
    """Greedy evaluation return against lockstep step, mean and 95% t-interval over the runs of
    each group in `curves`, one line per group (cut to the group's shortest run). `levels` are
    groups of evaluation-only runs (a fixed policy: their evaluations only repeat the same test),
    drawn as a horizontal line at the mean of their scores, with its interval. Returns the labels
    of the groups left out because none of their runs holds an evaluation. `lines` are fixed
    values drawn as dashed horizontal lines (e.g. the env server's random and oracle returns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from intervals import curve_band, mean_ci

    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    left_out = []
    # One color per curve and line, chosen here (axhline does not advance matplotlib's color
    # cycle): tab20's 20, since a bench can draw more than the default cycle's 10.
    colors = iter(plt.get_cmap("tab20").colors)
    for label, run_dirs in curves.items():
        color = next(colors)
        runs = [evaluations(run_dir) for run_dir in run_dirs]
        runs = [run for run in runs if run]
        if not runs:
            left_out.append(label)
            continue
        length = min(len(run) for run in runs)
        steps = [step for step, _ in runs[0][:length]]
        mean, half = curve_band([[value for _, value in run[:length]] for run in runs])
        axes.plot(steps, mean, marker=".", color=color, label=f"{label} ({len(runs)} runs)")
        axes.fill_between(steps, mean - half, mean + half, color=color, alpha=0.2)
    for label, run_dirs in (levels or {}).items():
        scores = [np.mean([value for _, value in run[-last_evals:]]) for run in map(evaluations, run_dirs) if run]
        if not scores:
            left_out.append(label)
            continue
        mean, half = mean_ci(scores)
        color = next(colors)
        axes.axhline(mean, linestyle="--", color=color, label=f"{label} ({len(scores)} runs)")
        axes.axhspan(mean - half, mean + half, color=color, alpha=0.12)
    for label, value in (lines or {}).items():
        axes.axhline(value, linestyle="--", color=next(colors), label=label)
    axes.set_xlabel("lockstep step")
    axes.set_ylabel("greedy evaluation return")
    axes.legend(fontsize=7)
    axes.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    if left_out:
        print(f"{path}: left out {left_out}: none of their runs holds an evaluation", file=sys.stderr)
    return left_out


def _group(spec: str) -> tuple[str, list[Path]]:
    """LABEL=GLOB -> (label, the matching run directories, sorted)."""
    label, _, pattern = spec.partition("=")
    if not label or not pattern:
        raise SystemExit(f"expected LABEL=GLOB (e.g. 'qmix=/tmp/runs/qmix_seed*'), got {spec!r}")
    run_dirs = sorted(Path(p) for p in glob.glob(pattern))
    if not run_dirs:
        raise SystemExit(f"{label}: no run directory matches {pattern!r}")
    return label, run_dirs


def main(argv: list[str] | None = None) -> None:
    """`python bench/runs.py plot OUT.png --title T LABEL=GLOB ... [--level LABEL=GLOB ...]`: the
    evaluation curves of finished runs (e.g. a bench's `--root`), without running anything."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("command", choices=["plot"])
    parser.add_argument("out", type=Path)
    parser.add_argument("groups", nargs="+", metavar="LABEL=GLOB", help="runs drawn as one curve (mean and 95%% CI)")
    parser.add_argument("--level", action="append", default=[], metavar="LABEL=GLOB",
                        help="evaluation-only runs drawn as a level (the mean of their scores)")
    parser.add_argument("--last-evals", type=int, default=1, help="--level: a run's score is the mean of its last N evaluations")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    left_out = plot_evaluations(dict(map(_group, args.groups)), args.out, args.title,
                                levels=dict(map(_group, args.level)), last_evals=args.last_evals)
    if left_out:
        raise SystemExit(1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/intervals.py
    main()


# The env and the CPU clock of bench/throughput.py and bench/throughput_hosts.py.
def env_kwargs(agents: int) -> dict:
    return {"N": agents, "max_cycles": 25, "continuous_actions": False}


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of `pid` and its live children, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pids = 0.0, [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(c) for c in children)
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def summarize_variants(rows: list[dict], variants) -> dict[str, dict]:
    """Per variant, the mean, sample standard deviation and count of its runs' scores (rows of
    `run_and_score` with a "variant" key; failed runs left out)."""
    summary = {}
    for variant in variants:
        scores = [r["score"] for r in rows if r["variant"] == variant and not r["failed"]]
        mean, std = mean_std(scores)
        summary[variant] = {"mean": mean, "std": std, "n": len(scores)}
    return summary


def plot_variants(rows: list[dict], variants, path: Path, config: str, steps: int | None, seeds: list[int]) -> None:
    """`plot_evaluations` of each variant's runs that did not fail (a bench's `--plot`)."""
    plot_evaluations({variant: [Path(r["run_dir"]) for r in rows if r["variant"] == variant and not r["failed"]] for variant in variants},
                     path, f"{config}, {steps or 'config'} steps, seeds {seeds}, mean and 95% CI")


def run_cells(row: dict) -> tuple[str, str]:
    """A run's score ("-" when it has none) and status ("ok", or "FAILED: why") as table cells."""
    score = "-" if row["score"] is None else f"{row['score']:.2f}"
    why = row.get("refused") or f"exit {row['exit_code']}"
    return score, f"FAILED: {why}" if row["failed"] else "ok"


def print_summaries(summary: dict[str, dict]) -> None:
    """One line per variant of `summarize_variants`: mean, standard deviation, runs."""
    for variant, s in summary.items():
        print(f"{variant:8} mean {s['mean']:.2f}  std {s['std']:.2f}  n={s['n']}")


def print_json(result: dict) -> None:
    """A bench's `--json`: the result with NaN written as null."""
    print(json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))


def kill_leftovers(processes: list[subprocess.Popen]) -> None:
    """Kill and reap the bench's child processes that still run (a measurement that failed half
    way), so none outlives the bench."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def numbers(text: str) -> list[float]:
    """A command line's comma-separated numbers ("0,5,20"; empty parts skipped)."""
    return [float(part) for part in text.split(",") if part.strip()]


def ready_endpoint(line: str) -> str:
    """The endpoint an env server prints on its `READY <endpoint>` line, its first line of
    stdout; a RuntimeError saying what came instead ("did not start")."""
    if not line.startswith("READY "):
        raise RuntimeError(f"env server did not start: {line!r}")
    return line.split(" ", 1)[1]


def fmt(value, spec: str = ".2f") -> str:
    """A table cell: `value` formatted by `spec`, or "-" when it is missing or not finite."""
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)
