"""A 2-minute chaos soak of the main job on real processes (bench/chaos.py): a seeded plan of
kills (agents, the env server, the orchestrator with `orchestrate resume`), pauses, partitions
and degraded links, then every invariant checked from the run directory must PASS."""

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
