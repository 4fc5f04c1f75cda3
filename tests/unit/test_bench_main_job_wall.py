"""bench/main_job_wall.py: which runs its median counts, and its page."""

from __future__ import annotations

from tests.conftest import load_bench

wall = load_bench("main_job_wall.py")


def row(index: int, run_s: float | None, idle: bool = True, refused: str | None = None) -> dict:
    done = refused is None
    return {"run": index, "idle_before": idle, "busy_before": 0.02 if idle else 0.6, "load_before": 0.3,
            "command_s": 110.0, "refused": refused, "exit_code": 0 if done else 1,
            **({"run_s": run_s, "launch_s": 9.0, "gap_closed": 0.8} if done else {})}


def test_the_median_counts_only_runs_started_idle_that_finished():
    rows = [row(0, 90.0), row(1, 70.0), row(2, 60.0, idle=False), row(3, None, refused="exit code 1"), row(4, 74.0)]
    outcome = wall.verdict(rows)
    assert outcome["counted"] == 3 and outcome["median_s"] == 74.0
    assert (outcome["least_s"], outcome["most_s"], outcome["met"]) == (70.0, 90.0, True)
    assert wall.verdict([row(0, 80.0), row(1, 76.0)])["met"] is False  # median 78 > 75
    assert wall.verdict([row(0, 60.0, idle=False)]) == {"counted": 0, "median_s": None, "met": None}


def test_the_page_shows_every_run_and_marks_the_busy_and_refused_ones():
    rows = [row(0, 90.0), row(1, 60.0, idle=False), row(2, None, refused="exit code 1")]
    record = {"command": "python bench/main_job_wall.py", "started_utc": "2026-11-29 20:00:00",
              "finished_utc": "2026-11-29 20:10:00", "machine": {"cpu": "x", "cores": 2, "python": "3.11"},
              "load_before": [0.1, 0.1, 0.1], "load_after": [1.0, 1.0, 1.0], "commit": "abc",
              "settings": {"runs": 3, "overrides": [], "idle_busy": 0.1, "idle_window_s": 5.0, "wait_s": 600.0},
              "env_step_us_before": 420.0, "env_step_us_after": 431.0,
              "note": "", "rows": rows, "verdict": wall.verdict(rows)}
    page = wall.render(record, "x.json")
    assert "| 1 | 60% (busy before) |" in page and "| exit code 1 |" in page
    assert "**Median of the 1 runs started idle: 90 s**" in page and "is not met" in page
    assert "cost 420 µs of CPU before the first run and 431 after the last" in page


def test_the_env_step_probe_steps_the_main_jobs_env():
    assert 0.0 < wall.env_step_cost_us(steps=50) < 1e6


def test_idleness_is_a_share_of_cpu_time_and_the_wait_ends():
    assert 0.0 <= wall.cpu_busy_share(0.2) <= 1.0
    # No share is below 0: the machine never counts as idle, and the wait ends at its limit.
    idle, busy = wall.wait_until_idle(0.0, 0.1, 0.0)
    assert idle is False and 0.0 <= busy <= 1.0
