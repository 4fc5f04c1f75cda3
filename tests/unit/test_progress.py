"""The live view's progress line: steps out of the budget, and an ETA from the recent rate."""

from __future__ import annotations

from orchestrator.status import Progress, format_duration


def test_progress_reports_the_fraction_and_an_eta_from_the_recent_rate() -> None:
    progress = Progress(total_steps=10_000)
    assert progress.describe() == "step 0 / 10000"
    progress.observe(100, now=0.0)
    assert progress.describe() == "step 100 / 10000 (1%)"  # one sample: no rate yet
    progress.observe(1_100, now=20.0)  # 50 steps/s
    assert progress.describe() == "step 1100 / 10000 (11%), ETA 2 min 58 s"  # 8,900 / 50 = 178 s
    progress.observe(1_100, now=25.0)  # no new step: the rate stands
    assert progress.describe().endswith("ETA 2 min 58 s")


def test_the_rate_follows_the_last_minute() -> None:
    progress = Progress(total_steps=10_000)
    progress.observe(0, now=0.0)
    progress.observe(100, now=100.0)  # 1 step/s while the learners warmed up
    for t in range(110, 300, 10):
        progress.observe(100 + 10 * (t - 100), now=float(t))  # then 10 steps/s
    # Only the last ~60 s count: 10 steps/s, not the run's mean (about 7).
    assert progress.describe() == "step 2000 / 10000 (20%), ETA 13 min 20 s"


def test_a_finished_run_has_no_eta_and_durations_read_as_a_person_would() -> None:
    progress = Progress(total_steps=200)
    progress.observe(100, now=0.0)
    progress.observe(200, now=5.0)
    assert progress.describe() == "step 200 / 200 (100%)"
    assert [format_duration(s) for s in (7.4, 61, 3_725)] == ["7 s", "1 min 01 s", "1 h 02 min"]
