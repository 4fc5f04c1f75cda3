"""Which runs may be scored, and what a saved result says about each.

Every bench that scores `orchestrate up` runs (bench/runs.py and the benches on it, bench/og_marl.py,
bench/goals.py, ...) and `orchestrate report` over a sweep go through `run_record` and `refusal`
(tests/unit/test_bench_refusal.py feeds each a failed run): a run is scored only when the
orchestrator recorded exit 0 for it (and the process that ran it, when a bench ran it, exited 0
too) and its env server reported the whole budget (`run.steps`) done. A scheduled kill of every
agent, for one, ends a run with exit 0 before its budget; a run killed from outside leaves no
`run_finished` at all. The record a bench saves beside each score names its exit code, the
commit that ran it and whether it ran with `run.reproducible` (and what broke that, if anything).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import RESOLVED_FILENAME
from orchestrator.overrides import load_yaml
from orchestrator.rundir import EVENTS_FILENAME, read_jsonl


def run_record(run_dir: Path, process_exit_code: int | None = None) -> dict:
    """What a saved result holds about one run, read from its run directory (events.jsonl,
    resolved.yaml): `exit_code` (the orchestrator's, or the process's when that one is non-zero
    or the orchestrator recorded none), `reason`, `steps_done` and `budget` (lockstep steps),
    `budget_spent`, `git_commit`, `git_dirty`, `python` and `torch` (the build that ran it),
    `reproducible` (run.reproducible) and
    `reproducibility_broken_by` (the causes the run reported), and `refused`: why the run may not
    be scored (`refusal`), or None."""
    events = read_jsonl(run_dir / EVENTS_FILENAME)
    finished = next((e for e in reversed(events) if e.get("event") == "run_finished"), None)
    started = next((e for e in events if e.get("event") == "run_started"), {})
    completed = [e.get("steps") for e in events if e.get("event") == "run_complete" and e.get("steps") is not None]
    resolved_path = run_dir / RESOLVED_FILENAME
    run = ((load_yaml(resolved_path.read_text()) or {}).get("run") or {}) if resolved_path.exists() else {}
    recorded = finished.get("exit_code") if finished else None
    exit_code = process_exit_code if process_exit_code not in (None, 0) or recorded is None else recorded
    budget = run.get("steps")
    steps_done = max(completed) if completed else None
    code = started.get("code") or {}
    record = {
        "run_dir": str(run_dir),
        "exit_code": exit_code,
        "reason": finished.get("reason") if finished else None,
        "steps_done": steps_done,
        "budget": budget,
        "budget_spent": steps_done is not None and budget is not None and steps_done >= budget,
        "git_commit": code.get("git_commit"),
        "git_dirty": code.get("git_dirty"),
        "python": code.get("python"),
        "torch": code.get("torch"),
        "reproducible": bool(run.get("reproducible", False)) if run else None,
        "reproducibility_broken_by": sorted({cause for e in events if e.get("event") == "reproducibility_broken"
                                             for cause in e.get("causes") or []}),
        "finished": finished is not None,
    }
    record["refused"] = refusal(record)
    return record


def refusal(record: dict) -> str | None:
    """Why the run of `record` (`run_record`) may not be scored, or None when it may: it must
    have finished, with exit 0, its whole budget done."""
    if not record["finished"] and record["exit_code"] in (None, 0):
        return "it did not finish (no run_finished event: still running, or killed)"
    if record["exit_code"] != 0:
        return f"it exited {record['exit_code']}" + (f" ({record['reason']})" if record.get("reason") else "")
    if record["budget"] is None:
        return "its budget is unknown (no run.steps in its resolved.yaml)"
    if not record["budget_spent"]:
        done = "no step reported" if record["steps_done"] is None else f"{record['steps_done']} steps"
        return f"it stopped before its budget: {done} of {record['budget']}"
    return None
