"""bench/og_marl.py's verdicts on a run directory: it fails a run whose agents skipped owed
updates (> 1 %), logged no counters, or averaged with missing neighbours; statistics use the
sample std and a t-interval; the probes give each agent's distance to the exact average.

The run directories here are written by the test (metrics lines in the format the env server and
the agent nodes write), so each verdict is checked on a case that must pass and one that must fail.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_og_marl", REPO / "bench" / "og_marl.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_og_marl"] = bench  # dataclasses look their module up while the class is built
spec.loader.exec_module(bench)

RANDOM_STEPS = 1000


def write_lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def make_run(
    tmp_path: Path,
    *,
    pending: list[float],
    owed: float = 10_000.0,
    missing_neighbours: int = 0,
    counters: bool = True,
    probe_after_offset: float = 0.0,
    name: str = "og_marl-seed0",
) -> Path:
    run_dir = tmp_path / name
    evaluations = [
        {"step": RANDOM_STEPS + 200 * k, "t": 100.0 + 30.0 * k, "eval/return_mean": 10.0 * k, "eval/duration_s": 2.0}
        for k in range(7)
    ]
    write_lines(run_dir / "nodes" / "env" / "metrics.jsonl", evaluations)
    rng = np.random.default_rng(0)
    before = rng.normal(size=(len(pending), 16))
    exact = before.mean(axis=0)
    for index, agent_pending in enumerate(pending):
        records = []
        if counters:
            records.append({"step": RANDOM_STEPS, "sac/gradient_steps": 0.0, "sac/steps_pending": 0.0, "sac/steps_owed": 0.0})
        refresh = {"step": RANDOM_STEPS + 250, "og_marl/model_mse": 1e-3 * (index + 1)}
        for k in range(16):
            refresh[f"og_marl/probe/before/J/{k:02d}"] = before[index, k]
            refresh[f"og_marl/probe/after/J/{k:02d}"] = exact[k] + (probe_after_offset if index == 0 else 0.0)
        records.append(refresh)
        if missing_neighbours:
            records.append({"step": RANDOM_STEPS + 250, "consensus/missing_neighbours": float(missing_neighbours)})
        if counters:
            records.append(
                {
                    "step": RANDOM_STEPS + 1200,
                    "sac/gradient_steps": owed - agent_pending,
                    "sac/steps_pending": agent_pending,
                    "sac/steps_owed": owed,
                }
            )
        write_lines(run_dir / "nodes" / f"agent_{index}" / "metrics.jsonl", records)
    return run_dir


def analyse(run_dir: Path):
    return bench.analyse_run("og_marl", 0, run_dir, RANDOM_STEPS, max_pending_fraction=0.01)


def test_a_run_with_every_update_done_passes_and_is_timed(tmp_path):
    result = analyse(make_run(tmp_path, pending=[0.0, 40.0, 100.0]))  # 100 of 10,000 is exactly 1 %
    assert result.ok, result.failures
    assert result.pending_fraction == pytest.approx(0.01)
    assert result.last5_mean == pytest.approx(np.mean([20, 30, 40, 50, 60]))
    # 6 evaluations after the first, 30 s apart with 2 s of evaluation each, over 1,200 steps.
    assert result.s_per_1000_train_steps == pytest.approx((180.0 - 12.0) / 1200 * 1000)
    assert result.gradient_steps_in_window == pytest.approx(10_000 - np.mean([0.0, 40.0, 100.0]))
    assert result.model_mse == [(250, pytest.approx(2e-3))]
    (step, distance_j, distance_h), = result.consensus_distance
    assert step == 250 and distance_j < 1e-12 and math.isnan(distance_h)


def test_a_run_that_skipped_owed_updates_fails(tmp_path):
    result = analyse(make_run(tmp_path, pending=[0.0, 101.0, 0.0]))
    assert not result.ok
    assert any("agent_1" in failure and "updates were skipped" in failure for failure in result.failures)


def test_a_run_without_counters_fails(tmp_path):
    result = analyse(make_run(tmp_path, pending=[0.0, 0.0], counters=False))
    assert not result.ok and all("no `sac/steps_pending` logged" in f for f in result.failures)
    assert len(result.failures) == 2


def test_missing_neighbours_fail_the_run(tmp_path):
    result = analyse(make_run(tmp_path, pending=[0.0, 0.0, 0.0], missing_neighbours=1))
    assert not result.ok
    assert sum("missing_neighbours" in failure for failure in result.failures) == 3


def test_an_agent_off_the_average_shows_in_its_distance(tmp_path):
    result = analyse(make_run(tmp_path, pending=[0.0, 0.0, 0.0], probe_after_offset=0.5))
    (_, distance_j, _), = result.consensus_distance
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(3, 16)).mean(axis=0)
    assert distance_j == pytest.approx(0.5 * 4 / np.linalg.norm(exact))  # |0.5 * ones(16)| / |exact|


def test_analyse_takes_each_run_from_the_first_root_that_holds_it(tmp_path, capsys):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    make_run(first, pending=[0.0, 0.0])
    make_run(second, pending=[0.0, 5000.0])  # shadowed by first's seed 0: would fail the contract
    make_run(second, pending=[0.0, 0.0], name="og_marl-seed1")
    code = bench.main(["--analyse", str(first), str(second), "--out", str(out), "--variants", "og_marl",
                       "--seeds", "0,1", "--random-steps", str(RANDOM_STEPS), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(run["seed"], Path(run["run_dir"]).parent) for run in summary["runs"]] == [(0, first), (1, second)]
    assert json.loads((out / "summary.json").read_text())["table"]["og_marl"]["failed_seeds"] == []
    assert (out / "plots" / "learning_curves.png").exists()


def test_summary_uses_the_sample_std_and_a_t_interval():
    summary = bench.summarize([380.0, 390.0, 400.0])
    assert summary["mean"] == pytest.approx(390.0) and summary["std"] == pytest.approx(10.0)  # ddof=1
    half_width = 4.302652729911275 * 10.0 / math.sqrt(3)  # t(0.975, 2)
    assert summary["ci95"] == pytest.approx([390.0 - half_width, 390.0 + half_width])
    assert summary["values"] == [380.0, 390.0, 400.0]
    assert "std" not in bench.summarize([1.0]) and bench.summarize([])["n"] == 0
    # Equal values (every run's owed gradient steps) have a zero-width interval, not scipy's nan.
    assert bench.summarize([24000.0] * 5)["ci95"] == [24000.0, 24000.0]


def test_every_variant_has_a_config_that_exists():
    for name, variant in bench.VARIANTS.items():
        assert (REPO / variant.config).exists(), name
        assert variant.learner in ("og_marl", "sac") and variant.label
