"""Helpers shared by the benches that run whole `orchestrate up` runs and read their metrics
(bench/pmic.py, bench/ctde.py, bench/offline.py): start one run, read a node's metric records,
the env server's greedy evaluations, and a mean with its sample standard deviation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(config: str, overrides: list[str], run_dir: Path, timeout_s: float) -> tuple[int, str]:
    """`orchestrate up CONFIG --set ...` into run_dir; (exit code, the end of its stderr)."""
    argv = [sys.executable, "-m", "orchestrator", "up", config, "--run-dir", str(run_dir)]
    for override in overrides:
        argv += ["--set", override]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
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


def run_and_score(config: str, overrides: list[str], run_dir: Path, timeout_s: float, last_evals: int) -> dict:
    """One run, scored by the mean of its last `last_evals` greedy evaluations; `failed` when it
    exited non-zero or evaluated nothing (with the end of its stderr)."""
    started = time.monotonic()
    code, stderr = run_once(config, overrides, run_dir, timeout_s)
    evals = evaluations(run_dir)
    last = [value for _, value in evals[-last_evals:]]
    failed = code != 0 or not last
    return {
        "exit_code": code, "failed": failed, "score": sum(last) / len(last) if last else None, "evaluations": evals,
        "wall_s": round(time.monotonic() - started, 1), "run_dir": str(run_dir), **({"stderr_tail": stderr} if failed else {}),
    }
