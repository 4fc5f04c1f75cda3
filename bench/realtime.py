"""The main job on a realtime clock: the share of late actions and the return against the rate.

    python bench/realtime.py [--config configs/4agents_ring.yaml] [--rates 10,20,40] [--pauses-s 0,2]
                             [--act-delays-s 0,0.02] [--steps 400] [--seeds 0] [--runs-dir DIR]
                             [--save docs/results/realtime.json --page docs/results/realtime.md]
    python bench/realtime.py --page-of docs/results/realtime.json     # the page of a saved record, nothing run

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

Runs of a few hundred steps on a shared machine say how the mechanism behaves, not what an agent
learns at a rate: the learning measurement (a full budget, several seeds, intervals) is the
bench's own run with `--steps 10000 --seeds 0,1,2`.
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
from runs import numbers, records  # noqa: E402
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
        f"{settings['config']}, {settings['steps']} training steps, one greedy evaluation at the end; a realtime "
        f"clock plays a late agent's newest action (`env.late_action: last`). Straggler: {STRAGGLER} paused "
        f"{PAUSE_AT_S:g} s after the start for the given seconds, or waiting the given act delay before each answer. "
        "The columns are bench/realtime.py's docstring's."
    )
    return results_page.page(record, "The main job on a realtime clock", source, intro, columns, record.get("note", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/4agents_ring.yaml")
    parser.add_argument("--rates", default="10,20,40", help="realtime steps per second, comma-separated (the lockstep always runs too)")
    parser.add_argument("--pauses-s", default="0,2", help="how long the straggler is paused, comma-separated (0: none)")
    parser.add_argument("--act-delays-s", default="0",
                        help="how long the straggler waits before each answer, comma-separated (0: not slowed)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runs-dir", help="where the runs go (default: a new temporary directory, kept)")
    parser.add_argument("--note", default="", help="a sentence for the page (what this run is and is not)")
    parser.add_argument("--save", type=Path, help="write the record (JSON) here")
    parser.add_argument("--page", type=Path, help="write the results page (markdown) here")
    parser.add_argument("--page-of", type=Path, metavar="RECORD", help="run nothing: write --page (or print) from a saved record")
    args = parser.parse_args()
    if args.page_of:
        record = results_page.load(args.page_of)
        page = render(record, args.page_of.name)
        args.page.write_text(page) if args.page else print(page)
        return 0

    record = results_page.begin("bench/realtime.py", sys.argv[1:])
    record["settings"] = {"config": args.config, "steps": args.steps}
    record["note"] = args.note
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="parley-bench-realtime-"))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for pause_s, act_delay_s in itertools.product(numbers(args.pauses_s), numbers(args.act_delays_s)):
            for rate in [None, *numbers(args.rates)]:
                name = (f"seed{seed}_pause{pause_s:g}" + (f"_delay{act_delay_s:g}" if act_delay_s else "") + "_"
                        + ("lockstep" if rate is None else f"rt{rate:g}"))
                settings = point_settings(rate, pause_s, args.steps, seed, act_delay_s)
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
    results_page.finish(record, args.save, args.page, render)
    print(f"runs: {runs_dir}")
    return 0 if all(row["returncode"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
