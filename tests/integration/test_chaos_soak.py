"""A 2-minute chaos soak of the main job on real processes (bench/chaos.py): a seeded plan of
kills (agents, the env server, the orchestrator with `orchestrate resume`), pauses, partitions,
degraded links and (as root) the run's disk filled and freed, then every invariant checked from
the run directory must PASS; and a planted bug that the soak must catch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.long
@pytest.mark.integration
@pytest.mark.timeout(900)  # the soak's 2 minutes, its start and its checks, on a loaded machine
def test_a_two_minute_soak_keeps_every_invariant(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--minutes", "2", "--seed", "1", "--soak-dir", str(tmp_path),
         "--shrink-runs", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) >= 6, result.stdout + result.stderr
    assert result.returncode == 0 and not [v for v in verdicts if v.startswith("FAIL")], result.stdout


@pytest.mark.long
@pytest.mark.integration
@pytest.mark.timeout(1200)  # three 1-minute runs (the soak, one shrinking try, the replay), on a loaded machine
def test_a_planted_bug_fails_the_soak_and_its_shrunk_plan_fails_again(tmp_path):
    """An env server that never saves its resume point (planted through a sitecustomize, Parley's
    code untouched): a restarted env server starts over, steps run twice, the soak says FAIL, and
    the plan it shrinks to fails the same way when replayed."""
    soak = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--minutes", "1", "--seed", "2", "--fault-every-s", "8", "14",
         "--plant", "skip-resume-point", "--soak-dir", str(tmp_path / "soak"), "--shrink-runs", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=1100,
    )
    assert soak.returncode == 1, soak.stdout + soak.stderr
    assert "FAIL  no env step run twice" in soak.stdout, soak.stdout
    shrunk = tmp_path / "soak" / "shrunk_plan.yaml"
    assert shrunk.exists() and "planted bug skip-resume-point" in shrunk.read_text(), soak.stdout
    replay = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--replay", str(shrunk), "--soak-dir", str(tmp_path / "replay"),
         "--shrink-runs", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert replay.returncode == 1 and "FAIL  no env step run twice" in replay.stdout, replay.stdout + replay.stderr
