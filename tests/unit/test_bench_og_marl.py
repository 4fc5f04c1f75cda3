"""bench/og_marl.py's verdicts on a run directory: it fails a run whose agents skipped owed
updates (> 1 %), logged no counters, or averaged with missing neighbours; statistics use the
sample std and a t-interval; the probes give each agent's distance to the exact average.

The run directories here are written by the test (metrics lines in the format the env server and
the agent nodes write), so each verdict is checked on a case that must pass and one that must fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import REPO, load_bench

bench = load_bench("og_marl.py")

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
    exit_code: int | None = 0,
    steps_done: int | None = RANDOM_STEPS + 1200,
) -> Path:
    """`exit_code` None: a run still going (or killed), with no run_finished event; `steps_done`:
    the steps its env server reported done (None: none), of a budget of RANDOM_STEPS + 1200."""
    run_dir = tmp_path / name
    events = [{"t": 90.0, "event": "run_started", "code": {"git_commit": "abc"}}]
    if steps_done is not None:
        events.append({"t": 399.0, "event": "run_complete", "node": "env", "steps": steps_done})
    if exit_code is not None:
        events.append({"t": 400.0, "event": "run_finished", "exit_code": exit_code, "reason": "budget spent" if exit_code == 0 else "failed"})
    write_lines(run_dir / "events.jsonl", events)
    (run_dir / "resolved.yaml").write_text(f"run: {{seed: 0, steps: {RANDOM_STEPS + 1200}, reproducible: true}}\n")
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


def test_a_run_that_did_not_finish_or_exited_non_zero_fails(tmp_path):
    """`--analyse` over a root where a run is still going (or was killed) must not count its
    evaluations so far as a result."""
    going = analyse(make_run(tmp_path, pending=[0.0, 0.0], exit_code=None, name="going"))
    assert not going.ok and any("did not finish" in failure for failure in going.failures)
    failed = analyse(make_run(tmp_path, pending=[0.0, 0.0], exit_code=3, name="failed"))
    assert not failed.ok and any("exited 3" in failure for failure in failed.failures)
    assert failed.exit_code == 3 and failed.record["git_commit"] == "abc" and failed.record["reproducible"]
    short = analyse(make_run(tmp_path, pending=[0.0, 0.0], steps_done=RANDOM_STEPS + 600, name="short"))
    assert not short.ok and any("before its budget" in failure for failure in short.failures)


def test_the_table_prints_a_variant_whose_area_is_unknown(capsys):
    """A variant whose runs never evaluated has a NaN area, which the summary stores as None."""
    nothing = {"n": 0, "values": []}
    row = {"last5": nothing, "area": {"n": 1, "values": [None], "mean": None}, "steps_to_threshold": {},
           "reproducible": ["True"], "per_seed": {0: None}, "failed_seeds": [0], "s_per_1000_train_steps": nothing,
           "gradient_steps_per_agent_in_window": nothing, "missing_neighbour_rounds_per_agent": nothing}
    bench.print_table({"setting": "action penalty weight 1", "random_steps": 1000, "train_steps": 1200, "seeds": [0],
                       "threshold": 400.0, "table": {"og_marl": row}, "comparisons": []})
    assert "area under the curve -; reached 400 in 0 of 0 runs" in capsys.readouterr().out


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


def test_saved_runs_pool_with_run_directories_and_keep_their_figures(tmp_path, capsys):
    # A summary.json keeps each run's figures; its run directories may be gone by the time more
    # seeds are run. --saved pools those records with new directories, a directory winning.
    first, out = tmp_path / "first", tmp_path / "out"
    make_run(first, pending=[0.0, 0.0], name="og_marl-seed1")
    make_run(tmp_path / "old", pending=[0.0, 0.0])  # seed 0, analysed, saved, then deleted
    assert bench.main(["--analyse", str(tmp_path / "old"), "--variants", "og_marl", "--seeds", "0",
                       "--random-steps", str(RANDOM_STEPS), "--json"]) == 0
    saved_summary = json.loads(capsys.readouterr().out)
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(saved_summary))
    code = bench.main(["--analyse", str(first), "--saved", str(saved), "--out", str(out), "--variants", "og_marl",
                       "--seeds", "0,1", "--random-steps", str(RANDOM_STEPS), "--json"])
    pooled = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [run["seed"] for run in pooled["runs"]] == [0, 1]
    assert pooled["runs"][0] == saved_summary["runs"][0]  # the saved record, unchanged
    assert pooled["table"]["og_marl"]["last5"]["n"] == 2


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


def test_the_credit_assignment_control_is_sac_utd10_with_each_agents_own_reward_term():
    from orchestrator.config import load_config

    control, utd10 = bench.VARIANTS["sac_utd10_own_reward"], bench.VARIANTS["sac_utd10"]
    assert control.config == utd10.config
    assert control.overrides == (*utd10.overrides, "agents.learner.reward=own_contribution")
    learner = load_config(REPO / control.config, list(control.overrides)).agents.learner
    assert (learner.kind, learner.updates_per_step, learner.reward) == ("sac", 10, "own_contribution")
    assert load_config(REPO / utd10.config, list(utd10.overrides)).agents.learner.reward == "team"
    assert ("og_marl", "sac_utd10_own_reward") in bench.DEFAULT_COMPARISONS
    assert ("sac_utd10_own_reward", "sac_utd10") in bench.DEFAULT_COMPARISONS


# ------------------------------------------------------------------ curve scores, pairs, power


def test_area_under_curve_is_the_trapezoid_mean_over_the_span():
    # 0 -> 100 over 200 steps then flat at 100 for 200 steps: area 10,000 + 20,000 over 400 steps.
    assert bench.area_under_curve([(0, 0.0), (200, 100.0), (400, 100.0)]) == pytest.approx(75.0)
    assert bench.area_under_curve([(0, 5.0), (200, 5.0)]) == pytest.approx(5.0)
    # Uneven spacing weighs each interval by its length.
    assert bench.area_under_curve([(0, 0.0), (100, 100.0), (400, 100.0)]) == pytest.approx((5000 + 30000) / 400)
    assert math.isnan(bench.area_under_curve([(0, 1.0)]))
    with pytest.raises(ValueError, match="must increase"):
        bench.area_under_curve([(200, 1.0), (0, 2.0)])


def test_steps_to_threshold_is_the_first_evaluation_at_or_above_it():
    curve = [(0, 100.0), (200, 399.9), (400, 400.0), (600, 350.0), (800, 450.0)]
    assert bench.steps_to_threshold(curve, 400.0) == 400
    assert bench.steps_to_threshold(curve, 500.0) is None


def test_minimum_detectable_effect_matches_power_theory():
    # Large n: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n) = 2.8016 standard errors.
    assert bench.minimum_detectable_effect(10.0, 2000) == pytest.approx(2.8016 * 10.0 / math.sqrt(2000), rel=2e-3)
    # n = 5, the paired SD of 54 (c = 0 against OG-MARL): ~90 points.
    effect = bench.minimum_detectable_effect(54.0, 5)
    assert 85.0 < effect < 95.0
    # At that effect a paired t-test rejects with probability 0.8, by simulation.
    rng = np.random.default_rng(0)
    from scipy import stats

    differences = rng.normal(effect, 54.0, size=(20000, 5))
    t_values = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / math.sqrt(5))
    rejected = np.mean(np.abs(t_values) > stats.t.ppf(0.975, 4))
    assert rejected == pytest.approx(0.8, abs=0.015)
    assert bench.minimum_detectable_effect(54.0, 10) < effect  # more seeds, smaller effects
    assert math.isnan(bench.minimum_detectable_effect(54.0, 1)) and bench.minimum_detectable_effect(0.0, 5) == 0.0


def test_paired_difference_uses_common_seeds_and_the_differences_sd():
    first = {0: 410.0, 1: 420.0, 2: 390.0, 3: 400.0, 7: 0.0}
    second = {0: 400.0, 1: 400.0, 2: 400.0, 3: 380.0, 9: 0.0}
    result = bench.paired_difference(first, second)
    assert result["seeds"] == [0, 1, 2, 3] and result["differences"] == [10.0, 20.0, -10.0, 20.0]
    assert result["mean"] == pytest.approx(10.0)
    sd = float(np.std([10.0, 20.0, -10.0, 20.0], ddof=1))
    assert result["sd"] == pytest.approx(sd)
    half = 3.182446305284263 * sd / 2.0  # t(0.975, 3) * sd / sqrt(4)
    assert result["ci95"] == pytest.approx([10.0 - half, 10.0 + half])
    assert result["t"] == pytest.approx(10.0 / (sd / 2.0))
    assert result["mde80"] == pytest.approx(bench.minimum_detectable_effect(sd, 4))
    # One pair: a mean, no spread to test it against.
    assert bench.paired_difference({0: 1.0}, {0: 0.0}) == {"n": 1, "seeds": [0], "differences": [1.0], "mean": 1.0}


def test_compare_counts_a_run_that_never_reached_the_threshold_at_the_budget():
    def run(variant, seed, curve, ok=True):
        result = bench.RunResult(variant, seed, "")
        result.curve = curve
        result.last5_mean = float(np.mean([v for _, v in curve[-5:]]))
        result.area = bench.area_under_curve(curve)
        result.steps_to_threshold = bench.steps_to_threshold(curve, bench.THRESHOLD)
        if not ok:
            result.failures.append("broken contract")
        return result

    fast = [(0, 0.0), (200, 450.0), (400, 450.0)]
    slow = [(0, 0.0), (200, 100.0), (400, 420.0)]
    never = [(0, 0.0), (200, 100.0), (400, 300.0)]
    results = [
        run("a", 0, fast), run("b", 0, slow),
        run("a", 1, fast), run("b", 1, never),
        run("a", 2, fast), run("b", 2, fast, ok=False),  # a failed run leaves its seed out
    ]
    comparison = bench.compare(results, "a", "b", train_steps=400)
    assert comparison["steps_to_threshold"]["differences"] == [-200.0, -400.0]  # never: 400 + 200
    assert comparison["never_reached"] == {"a": 0, "b": 1}
    assert comparison["last5"]["seeds"] == [0, 1]
    assert comparison["pairs_across_commits"] == []  # neither side recorded its code: not told apart
    assert comparison["area"]["differences"] == pytest.approx(
        [bench.area_under_curve(fast) - bench.area_under_curve(slow), bench.area_under_curve(fast) - bench.area_under_curve(never)]
    )


def test_regime_variants_change_only_their_regime():
    variants = bench.VARIANTS
    assert variants["og_marl_explore"].random_steps == bench.EXPLORE_RANDOM_STEPS == 1000
    assert variants["og_marl_explore"].overrides == variants["og_marl"].overrides
    assert variants["og_marl_local_scarce"].overrides == (
        *variants["og_marl_local"].overrides, f"agents.learner.fit_transitions={bench.SCARCE_FIT_TRANSITIONS}"
    )
    assert variants["og_marl_equal_eta"].overrides[-1] == "env.kwargs.eta_std=0.0"
    assert variants["sac_utd10"].overrides == ("agents.learner.updates_per_step=10",)
    for first, second in bench.DEFAULT_COMPARISONS:
        assert first in variants and second in variants
    # Variants run.reproducible refuses run without it.
    assert not variants["og_marl_push_sum"].reproducible and not variants["og_marl_lossy"].reproducible


def test_the_drift_regimes_pair_the_fused_and_local_gps_on_the_drift_task():
    variants = bench.VARIANTS
    drift = f"env.kwargs.drift_amplitude={bench.DRIFT_AMPLITUDE}"
    scarce = f"agents.learner.fit_transitions={bench.SCARCE_FIT_TRANSITIONS}"
    for base in ("og_marl", "og_marl_local"):
        assert variants[f"{base}_drift"].overrides == (*variants[base].overrides, drift)
        assert variants[f"{base}_drift_scarce"].overrides == (*variants[base].overrides, drift, scarce)
        for regime in ("drift", "drift_scarce"):
            copy = variants[f"{base}_{regime}"]
            assert copy.config == variants[base].config and copy.random_steps is None and copy.reproducible
    assert variants["og_marl_drift"].config != variants["og_marl_local_drift"].config  # consensus on / off
    assert ("og_marl_drift", "og_marl_local_drift") in bench.DEFAULT_COMPARISONS
    assert ("og_marl_drift_scarce", "og_marl_local_drift_scarce") in bench.DEFAULT_COMPARISONS
    with pytest.raises(ValueError, match="unknown regime 'windy'"):
        bench._regime_variant("windy", variants["og_marl"])


@pytest.mark.parametrize("variant", ["og_marl_drift", "og_marl_local_drift"])
def test_a_drift_variants_overrides_reach_the_environment(variant):
    # What run_once passes to `orchestrate up` must load as a valid config and build the env with
    # the drift on: an override the env does not take would only fail when a run starts.
    from env_server.registry import make_env
    from orchestrator.config import load_config

    spec = bench.VARIANTS[variant]
    config = load_config(REPO / spec.config, list(spec.overrides))
    env = make_env(config.env.name, config.env.kwargs, construction_seed=0)
    assert env.drift_amplitude == bench.DRIFT_AMPLITUDE
    assert config.protocols.consensus.enabled == (variant == "og_marl_drift")


def test_the_reference_codes_logs_are_scored_on_the_evaluations_both_sides_have(tmp_path):
    reference = load_bench("og_marl_reference.py")
    log = tmp_path / "seed3.log"
    # The reference's log as its wrapper writes it: timestamps, training episodes, evaluations.
    log.write_text("".join(f"05:00:0{i} Episode {i}: Reward = -300.00, Steps = 100\n"
                           f"05:00:0{i} Step {200 * i}: Eval reward = {value}\n"
                           for i, value in enumerate([-24.32, 100.0, 420.5, 380.0, 410.0, 390.0, 400.0, 405.0], start=1)))
    stopped = tmp_path / "seed4.log"
    stopped.write_text("05:00:01 Step 200: Eval reward = -5.0\n")
    saved = tmp_path / "summary.json"
    saved.write_text(json.dumps({"runs": [
        {"variant": "og_marl", "seed": 0, "curve": [[0, -300.0], [200, 0.0], [1600, 400.0]]},
        {"variant": "og_marl", "seed": 1, "curve": [[0, -300.0], [200, 100.0], [1600, 300.0]]},
        {"variant": "og_marl_c0", "seed": 0, "curve": [[0, 0.0], [1600, 0.0]]},
    ]}))
    result = reference.analyse([log, stopped], saved, budget=1600)
    assert result["unfinished_reference_runs"] == {4: 200}  # left out, and said so
    last5 = result["scores"]["last-5 mean"]
    assert last5["reference"]["n"] == 1 and last5["reference"]["mean"] == pytest.approx((380 + 410 + 390 + 400 + 405) / 5)
    assert last5["parley"]["mean"] == pytest.approx(200.0)  # og_marl runs only, points from step 200
    area = result["scores"]["area, steps 200 on"]
    assert area["parley"]["mean"] == pytest.approx((200.0 + 200.0) / 2)  # Parley's step-0 point left out
    assert result["reached_400"]["reference"] == {3: 600, 4: None}
    with pytest.raises(ValueError, match="no evaluation lines"):
        reference.evaluations(tmp_path / "summary.json")


def test_a_run_records_the_code_that_ran_it_and_pairs_across_commits_are_named(tmp_path):
    run_dir = make_run(tmp_path, pending=[0.0, 0.0])
    code = {"parley": "0.1.0", "git_commit": "8fed29e" + "0" * 33, "git_dirty": False, "torch": "2.13.0+cpu"}
    write_lines(run_dir / "events.jsonl", [{"t": 1.0, "event": "run_started", "node": None, "code": code},
                                           {"t": 8.0, "event": "run_complete", "node": "env", "steps": RANDOM_STEPS + 1200},
                                           {"t": 9.0, "event": "run_finished", "node": None, "exit_code": 0}])
    result = analyse(run_dir)
    assert result.code == code and bench.code_commit(result) == "8fed29e00000"
    older = bench.RunResult("og_marl_c0", 0, "", curve=result.curve, last5_mean=1.0, area=1.0)  # recorded before runs said
    assert bench.code_commit(older) == "unknown"
    comparison = bench.compare([result, older], "og_marl", "og_marl_c0", train_steps=1200)
    assert comparison["pairs_across_commits"] == [0]


def test_runs_go_seed_by_seed_and_several_at_once_with_jobs(tmp_path, capsys, monkeypatch):
    # `orchestrate up` is replaced by a run directory written here: what is checked is the order
    # the runs start in (whole pairs first), that --jobs 2 has two in flight, and the report's order.
    import threading

    started, in_flight, most_in_flight, lock = [], [0], [0], threading.Lock()
    both_started = threading.Barrier(2, timeout=10)

    def fake_run_once(variant, seed, args, root):
        with lock:
            started.append((variant, seed))
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])
        if len(started) <= 2:
            both_started.wait()  # the first two must be running together
        run_dir = make_run(root, pending=[0.0, 0.0], name=f"{variant}-seed{seed}")
        with lock:
            in_flight[0] -= 1
        return bench.analyse_run(variant, seed, run_dir, RANDOM_STEPS, args.max_pending_fraction)

    monkeypatch.setattr(bench, "run_once", fake_run_once)
    code = bench.main(["--variants", "og_marl,og_marl_c0", "--seeds", "0,1", "--random-steps", str(RANDOM_STEPS),
                       "--root", str(tmp_path / "runs"), "--jobs", "2", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(started[:2]) == {("og_marl", 0), ("og_marl_c0", 0)} and set(started[2:]) == {("og_marl", 1), ("og_marl_c0", 1)}
    assert most_in_flight[0] == 2
    assert [(run["variant"], run["seed"]) for run in summary["runs"]] == [
        ("og_marl", 0), ("og_marl", 1), ("og_marl_c0", 0), ("og_marl_c0", 1)]
    assert summary["jobs"] == 2


def test_jobs_must_be_positive():
    with pytest.raises(SystemExit):
        bench.main(["--jobs", "0"])
