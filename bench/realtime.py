"""The main job on a realtime clock: the share of late actions and the return against the rate.

    python bench/realtime.py [--config configs/4agents_ring.yaml] [--rates 10,20,40] [--pauses-s 0,2]
                             [--act-delays-s 0,0.02] [--steps 400] [--seeds 0] [--set FIELD=VALUE ...] [--runs-dir DIR]
                             [--save docs/results/realtime.json --page docs/results/realtime.md]
    python bench/realtime.py --page-of docs/results/realtime.json [--plot docs/results/realtime.png]
                                                                      # the page of a saved record, nothing run

Each point is an ordinary `orchestrate up` of the config (real processes, real sockets) for
`--steps` training steps with one greedy evaluation at the end, on the lockstep (the baseline:
the env waits for every agent) and at each rate of `--rates` (`env.clock: realtime`,
`env.steps_per_s`, `env.late_action: last`; the evaluation on the same clock). The second axis is
a straggler, agent_1, stopped for a while or slow throughout: with `--pauses-s P` > 0 it is paused
(SIGSTOP, the fault schedule's `pause`) from 1 s after the start for P seconds; with
`--act-delays-s D` > 0 it waits D seconds before each answer (`agents.act_delay_s`, a slower
machine). The lockstep waits for it (up to env.step_deadline_s a step), a realtime clock does not:
an agent behind the clock acts on its newest observation.

Columns (from the env server's metrics, nodes/env/metrics.jsonl):
- steps/s: training steps per second between the first and the last status row before the end;
- late share: late agent-steps (`env/late_actions/*`, added over env-server incarnations) over
  training steps x agents; in the lockstep, the defaulted ones (`env/default_actions/*`);
- age mean / max: the action age in steps (`env/action_age_steps[_max]/*`): each agent's mean of
  its per-period means, averaged over agents, and the largest (late share and age are
  `orchestrate report`'s numbers for the run);
- slips: steps the server itself opened after their time (`env/clock_slips`);
- eval return: `eval/return_mean` of the final evaluation (per agent per episode);
- eval age max: the largest age in steps of an action that evaluation played on a realtime clock
  (`eval/action_age_max`; "-" in the lockstep, and in records from before it was measured).

Above the runs, the page summarizes each clock and straggler over its seeds: the mean of each
column with its 95% t-interval, and the return's difference from the lockstep with the same
straggler, paired by seed. `--plot` draws the return and the late share against the steps per
second each clock ran at: a realtime clock whose server cannot keep its rate (slips) runs below it.

Runs of a few hundred steps on a shared machine say how the mechanism behaves, not what an agent
learns at a rate: the learning measurement (a full budget, several seeds, intervals) is the
bench's own run with `--steps 10000 --seeds 0,1,2`. Its time is wall time, so it is measured on
an idle machine: load slows the agents and moves the rate at which they fall behind. `--reuse`
measures a run already finished under `--runs-dir` instead of running it again (a batch cut short
goes on where it stopped, or a record gets points it lacked), and refuses one that the config with
this invocation's settings no longer resolves to (bench/runs.py `check_made_with`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import results_page
from intervals import mean_ci  # noqa: E402
from runs import numbers, records, reusable_exit_code  # noqa: E402
from orchestrator.report import summarize_run  # noqa: E402
from orchestrator.run_records import run_record  # noqa: E402

STRAGGLER = "agent_1"
PAUSE_AT_S = 1.0


def point_settings(rate: float | None, pause_s: float, steps: int, seed: int, act_delay_s: float = 0.0) -> list[str]:
    """The `--set` overrides of one point (rate None: the lockstep)."""
    settings = [f"run.seed={seed}", f"run.steps={steps}", f"env.eval_every_steps={steps}", "launch.live_view=off"]
    if rate is not None:
        settings += ["env.clock=realtime", f"env.steps_per_s={rate:g}", "env.late_action=last"]
    if pause_s > 0:
        settings.append(f"faults.schedule=[{{at_s: {PAUSE_AT_S:g}, kind: pause, nodes: [{STRAGGLER}]}}, "
                        f"{{at_s: {PAUSE_AT_S + pause_s:g}, kind: resume, nodes: [{STRAGGLER}]}}]")
    if act_delay_s > 0:
        settings.append(f"agents.act_delay_s.{STRAGGLER}={act_delay_s:g}")
    return settings


def run_point(config: str, run_dir: Path, settings: list[str]) -> int:
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    process = subprocess.run(
        [sys.executable, "-m", "orchestrator", "up", config, "--run-dir", str(run_dir), *overrides],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    if process.returncode != 0:
        print(process.stderr.decode()[-2000:], file=sys.stderr)
    return process.returncode


def measure(run_dir: Path, steps: int) -> dict[str, Any]:
    """The point's columns, from the env server's metrics. Late actions and their age are the
    report's (`orchestrate report`, orchestrator/report.py `summarize_run`), so this page and a
    run's report give one number for one run; a lockstep run has none, and its late share is the
    default actions the env played."""
    rows = records(run_dir, "env")
    status = [row for row in rows if any(key.startswith("env/default_actions/") for key in row)]
    training = [row for row in status if 0 < row["step"] < steps]
    rate = None
    if len(training) >= 2:
        rate = (training[-1]["step"] - training[0]["step"]) / max(1e-9, training[-1]["t"] - training[0]["t"])
    summary = summarize_run(run_dir)
    realtime = summary["realtime"]
    if realtime is not None:
        late = {agent: entry["late"] for agent, entry in realtime["agents"].items()}
        late_share = realtime["late_share"]
        age_mean = realtime["age_mean"]
        age_max = max((entry["age_max"] for entry in realtime["agents"].values() if entry["age_max"] is not None),
                      default=None)
    else:
        late = {agent: count or 0.0 for agent, count in summary["default_actions"].items()}
        late_share = sum(late.values()) / max(1, steps * len(late)) if late else None
        age_mean = age_max = None
    evaluations = [row["eval/return_mean"] for row in rows if "eval/return_mean" in row]
    evaluation_ages = [row["eval/action_age_max"] for row in rows if "eval/action_age_max" in row]
    return {
        "steps_per_s": rate,
        "late_share": late_share,
        "late_by_agent": late,
        "age_mean": age_mean,
        "age_max": age_max,
        "clock_slips": max((row["env/clock_slips"] for row in rows if "env/clock_slips" in row), default=None),
        "eval_return": evaluations[-1] if evaluations else None,
        "eval_age_max": evaluation_ages[-1] if evaluation_ages else None,
    }


def scored(row: dict[str, Any]) -> bool:
    """Whether a run's numbers may be summarized: it exited 0 with its budget done."""
    return row["returncode"] == 0 and not row.get("refused")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per straggler setting and clock, over the seeds whose run may be scored: each
    column's mean and 95% t half-width, and the return minus the lockstep's with the same
    straggler, paired by seed (seeds without both runs left out of the difference)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["pause_s"], row.get("act_delay_s", 0.0), row["rate"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (pause_s, act_delay_s, rate), group in groups.items():
        runs = [row for row in group if scored(row)]
        lockstep = {row["seed"]: row["eval_return"] for row in groups.get((pause_s, act_delay_s, None), [])
                    if scored(row) and row["eval_return"] is not None}
        differences = [row["eval_return"] - lockstep[row["seed"]] for row in runs
                       if rate is not None and row["seed"] in lockstep and row["eval_return"] is not None]

        def interval(column: str) -> list[float] | None:
            values = [row[column] for row in runs if row.get(column) is not None]
            return list(mean_ci(values)) if values else None

        summary.append({
            "rate": rate, "pause_s": pause_s, "act_delay_s": act_delay_s, "seeds": [row["seed"] for row in runs],
            "runs": len(group), "steps_per_s": interval("steps_per_s"), "late_share": interval("late_share"),
            "age_mean": interval("age_mean"), "clock_slips": interval("clock_slips"), "eval_return": interval("eval_return"),
            "minus_lockstep": list(mean_ci(differences)) if differences else None,
        })  # fmt: skip
    return summary


def straggler_label(entry: dict[str, Any]) -> str:
    if entry.get("act_delay_s"):
        return f"{STRAGGLER} {entry['act_delay_s'] * 1000:g} ms per answer"
    if entry["pause_s"]:
        return f"{STRAGGLER} paused {entry['pause_s']:g} s"
    return "no straggler"


def plot(record: dict[str, Any], path: Path) -> None:
    """The return and the late share against the steps per second each clock ran at (a realtime
    clock that slips runs below its rate, labelled beside its point), one line per straggler
    setting, means and 95% t-intervals over seeds; the lockstep as a square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [entry for entry in summarize(record["rows"]) if entry["steps_per_s"] and entry["eval_return"]]
    figure, (returns, late) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    colors = iter(plt.get_cmap("tab10").colors)
    for label in dict.fromkeys(straggler_label(entry) for entry in summary):
        color = next(colors)
        entries = [entry for entry in summary if straggler_label(entry) == label]
        clocked = sorted((entry for entry in entries if entry["rate"] is not None), key=lambda entry: entry["rate"])
        for axes, column in ((returns, "eval_return"), (late, "late_share")):
            points = [(entry["steps_per_s"], entry[column], entry["rate"]) for entry in clocked if entry[column]]
            if not points:
                continue
            axes.errorbar([speed[0] for speed, _, _ in points], [value[0] for _, value, _ in points],
                          xerr=[speed[1] for speed, _, _ in points], yerr=[value[1] for _, value, _ in points],
                          marker="o", capsize=3, color=color, label=f"realtime, {label}")
            for speed, value, rate in points:
                axes.annotate(f"{rate:g}/s", (speed[0], value[0]), textcoords="offset points", xytext=(4, 4),
                              fontsize=7, color=color)
        for entry in entries:
            if entry["rate"] is None:
                returns.errorbar([entry["steps_per_s"][0]], [entry["eval_return"][0]], xerr=[entry["steps_per_s"][1]],
                                 yerr=[entry["eval_return"][1]], marker="s", capsize=3, color=color, linestyle="none",
                                 label=f"lockstep, {label}")
    seeds = sorted({seed for entry in summary for seed in entry["seeds"]})
    for axes in (returns, late):
        axes.set_xlabel("steps per second as run (a label: the clock's rate)")
        axes.legend(fontsize=7)
    returns.set_ylabel("final greedy evaluation return")
    late.set_ylabel("late agent-steps, share of all")
    late.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    figure.suptitle(f"{record['settings']['config']}, {record['settings']['steps']} training steps, seeds {seeds}: "
                    "mean and 95% t-interval", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summary_table(record: dict[str, Any]) -> str:
    def cell(interval: list[float] | None, spec: str, scale: float = 1.0, sign: str = "") -> str:
        if interval is None:
            return "-"
        mean, half = interval
        return f"{format(mean * scale, sign + spec)} ± {format(half * scale, spec)}"

    columns = [
        ("clock", "left", lambda entry: "lockstep" if entry["rate"] is None else f"realtime {entry['rate']:g}/s"),
        ("straggler", "left", straggler_label),
        ("seeds", "left", lambda entry: ", ".join(map(str, entry["seeds"])) + (
            f" ({entry['runs'] - len(entry['seeds'])} not scored)" if entry["runs"] > len(entry["seeds"]) else "")),
        ("steps/s", "right", lambda entry: cell(entry["steps_per_s"], ".1f")),
        ("late share %", "right", lambda entry: cell(entry["late_share"], ".1f", 100.0)),
        ("age mean", "right", lambda entry: cell(entry["age_mean"], ".2f")),
        ("slips", "right", lambda entry: cell(entry.get("clock_slips"), ".0f")),
        ("eval return", "right", lambda entry: cell(entry["eval_return"], ".2f")),
        ("minus the lockstep", "right", lambda entry: cell(entry["minus_lockstep"], ".2f", sign="+")),
    ]
    return results_page.table(columns, summarize(record["rows"]))


def render(record: dict[str, Any], source: str) -> str:
    settings = record["settings"]
    fmt = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    columns = [
        ("clock", "left", lambda row: "lockstep" if row["rate"] is None else f"realtime {row['rate']:g}/s"),
        ("straggler pause s", "right", lambda row: f"{row['pause_s']:g}"),
        ("straggler act delay s", "right", lambda row: f"{row.get('act_delay_s', 0.0):g}"),
        ("seed", "right", lambda row: str(row["seed"])),
        ("ok", "left", lambda row: f"refused: {row['refused']}" if row.get("refused")
         else "yes" if row["returncode"] == 0 else f"exit {row['returncode']}"),
        ("steps/s", "right", lambda row: fmt(row["steps_per_s"], ".3g")),
        ("late share", "right", lambda row: fmt(row["late_share"], ".1%")),
        ("late of agent_1", "right", lambda row: fmt(row["late_by_agent"].get(STRAGGLER), "g")),
        ("age mean", "right", lambda row: fmt(row["age_mean"], ".2g")),
        ("age max", "right", lambda row: fmt(row["age_max"], "g")),
        ("slips", "right", lambda row: fmt(row["clock_slips"], "g")),
        ("eval return", "right", lambda row: fmt(row["eval_return"], ".4g")),
        ("eval age max", "right", lambda row: fmt(row.get("eval_age_max"), "g")),
    ]
    intro = (
        f"{settings['config']}" + "".join(f" with `{setting}`" for setting in settings.get("set", []))
        + f", {settings['steps']} training steps, one greedy evaluation at the end; a realtime "
        f"clock plays a late agent's newest action (`env.late_action: last`). Straggler: {STRAGGLER} paused "
        f"{PAUSE_AT_S:g} s after the start for the given seconds, or waiting the given act delay before each answer. "
        "The columns are bench/realtime.py's docstring's."
    )
    overview = (
        "Each clock and straggler over its seeds (runs that exited 0 with their budget done): mean ± the 95% "
        "t-interval's half-width; \"minus the lockstep\" is the final evaluation's return less the lockstep's with "
        "the same straggler, paired by seed.\n\n" + summary_table(record)
    )
    if record.get("plot"):
        overview += f"\n![return and late share against the rate]({record['plot']})\n"
    return (results_page.header(record, "The main job on a realtime clock", source) + intro + "\n\n" + overview
            + "\nThe runs:\n\n" + results_page.table(columns, record["rows"]) + "\n" + record.get("note", "") + "\n")


def plot_reference(plot_path: Path, page_path: Path | None) -> str:
    """How the page names the plot: relative to the page's folder when it has one."""
    if page_path is None:
        return str(plot_path)
    return os.path.relpath(plot_path.resolve(), page_path.resolve().parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/4agents_ring.yaml")
    parser.add_argument("--rates", default="10,20,40", help="realtime steps per second, comma-separated (the lockstep always runs too)")
    parser.add_argument("--pauses-s", default="0,2", help="how long the straggler is paused, comma-separated (0: none)")
    parser.add_argument("--act-delays-s", default="0",
                        help="how long the straggler waits before each answer, comma-separated (0: not slowed)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a setting for every run, beside the config (repeatable; e.g. agents.learner.numpy_updates=false "
                             "to add points to a record of that learner path)")
    parser.add_argument("--runs-dir", help="where the runs go (default: a new temporary directory, kept)")
    parser.add_argument("--note", default="", help="a sentence for the page (what this run is and is not)")
    parser.add_argument("--save", type=Path, help="write the record (JSON) here")
    parser.add_argument("--page", type=Path, help="write the results page (markdown) here")
    parser.add_argument("--plot", type=Path, help="draw the return and the late share against the rate here (PNG)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure a run already finished under --runs-dir instead of running it again")
    parser.add_argument("--page-of", type=Path, metavar="RECORD", help="run nothing: write --page (or print) from a saved record")
    args = parser.parse_args()
    if args.page_of:
        record = results_page.load(args.page_of)
        if args.plot:  # the record names its plot, so the page renders again from the record alone
            plot(record, args.plot)
            record["plot"] = plot_reference(args.plot, args.page)
            results_page.save(record, args.page_of)
        page = render(record, args.page_of.name)
        args.page.write_text(page) if args.page else print(page)
        return 0

    record = results_page.begin("bench/realtime.py", sys.argv[1:])
    record["settings"] = {"config": args.config, "steps": args.steps, "set": args.set}
    record["note"] = args.note
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="parley-bench-realtime-"))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for pause_s, act_delay_s in itertools.product(numbers(args.pauses_s), numbers(args.act_delays_s)):
            for rate in [None, *numbers(args.rates)]:
                name = (f"seed{seed}_pause{pause_s:g}" + (f"_delay{act_delay_s:g}" if act_delay_s else "") + "_"
                        + ("lockstep" if rate is None else f"rt{rate:g}"))
                settings = [*args.set, *point_settings(rate, pause_s, args.steps, seed, act_delay_s)]
                returncode = reusable_exit_code(runs_dir / name, settings, args.config) if args.reuse else None
                if returncode is None:
                    returncode = run_point(args.config, runs_dir / name, settings)
                # A run that did not exit 0 with its budget done is shown, never scored (its return is left out).
                refused = run_record(runs_dir / name, returncode)["refused"]
                row = {"rate": rate, "pause_s": pause_s, "act_delay_s": act_delay_s, "seed": seed, "returncode": returncode, "run": name,
                       "refused": refused, **measure(runs_dir / name, args.steps)}
                if refused is not None:
                    row["eval_return"] = None
                rows.append(row)
                print(json.dumps(row), flush=True)
    record["rows"] = rows
    if args.plot:
        plot(record, args.plot)
        record["plot"] = plot_reference(args.plot, args.page)
    results_page.finish(record, args.save, args.page, render)
    print(f"runs: {runs_dir}")
    return 0 if all(row["returncode"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
