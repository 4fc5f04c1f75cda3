"""What the report says about a sweep's axes and a crash (orchestrator/sweep_effects.py), on run
and sweep directories written here with known numbers: D50 where the curve crosses, beyond the
grid where it does not, its bootstrap interval, and the dip and recovery after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import report, sweep_effects
from orchestrator.cli import main
from tests.conftest import write_jsonl

T0 = 1_000_000.0
DELAY = "network.links.0.link.delay_steps"
LOSS = "network.links.0.link.loss"
RANDOM, ORACLE = -33.0, -6.0


def make_run(run_dir: Path, curve: list[tuple[int, float]], fault_step: int | None = None,
             env_rows: list[dict] = (), extra_events: list[dict] = ()) -> Path:  # fmt: skip
    """A one-agent run whose env server wrote the greedy evaluations `curve` [(step, return)] and
    the random and oracle levels; with `fault_step`, agent_0 was killed at that step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    budget = max(step for step, _ in curve)
    # the report reads the budget, a results page the evaluation's size
    (run_dir / "resolved.yaml").write_text(f"run: {{name: stand_in, steps: {budget}}}\nenv: {{eval_episodes: 32}}\n")
    events = [{"t": T0, "event": "started", "node": None}]
    if fault_step is not None:
        events += [{"t": T0 + 5, "event": "fault", "node": None, "kind": "kill", "at_step": fault_step, "step": fault_step,
                    "run_s": 5.0, "nodes": {"agent_0": 123}, "skipped": []},
                   {"t": T0 + 5.1, "event": "exited", "node": "agent_0", "code": -9},
                   {"t": T0 + 6, "event": "restarted", "node": "agent_0", "pid": 124, "restarts": 1}]  # fmt: skip
    events += [*extra_events, {"t": T0 + 19, "event": "run_complete", "node": "env", "steps": budget},
               {"t": T0 + 20, "event": "run_finished", "node": None, "exit_code": 0, "reason": "budget spent"}]
    write_jsonl(run_dir / "events.jsonl", events)
    write_jsonl(run_dir / "nodes" / "agent_0" / "metrics.jsonl", [{"step": 25, "t": T0 + 1, "env/episode_return": -20.0}])
    evaluations = [{"step": step, "t": T0 + 1 + i, "eval/return_mean": value} for i, (step, value) in enumerate(curve)]
    evaluations[0].update({"eval/random_return_mean": RANDOM, "eval/oracle_return_mean": ORACLE})
    write_jsonl(run_dir / "nodes" / "env" / "metrics.jsonl", [*evaluations, *env_rows])
    return run_dir


def flat(value: float) -> list[tuple[int, float]]:
    """An evaluation curve whose last five evaluations (the run's return) are all `value`."""
    return [(500 * (i + 1), value) for i in range(5)]


# The true curves: no talk -20; with loss 0, talking free (delay 0) -10, then -11, -13, -19 at
# delay 1, 2, 5. Half of the 10 talking adds is lost at -15: between delay 2 (-13) and 5 (-19),
# at 2 + 3 * (2 / 6) = 3. With loss 0.3 every delay costs 1 more; along loss, the delay-1 line
# goes from -11 to -12 and never falls to -15.5 (half of its 9): beyond the grid.
LOSS0 = {0: -10.0, 1: -11.0, 2: -13.0, 5: -19.0}
NO_TALK = -20.0


def make_sweep(sweep_dir: Path, seed_offsets=(0.0, 0.0, 0.0), noise: dict[tuple[str, int], float] | None = None) -> None:
    """The main job's sweep in small: delay 1, 2, 5 x loss 0, 0.3, free talk at (0, 0), no talk,
    and free talk with a crash; seed k adds seed_offsets[k] to every run (the same for every
    point, so D50 is the same whichever seeds are drawn); `noise` adds to one (point, seed)."""
    noise = noise or {}
    points = []  # (name, grid values, coordinates, line, role, value, fault step)
    for d, delay in enumerate([1, 2, 5]):
        for l, loss in enumerate([0.0, 0.3]):
            values = {DELAY: delay, LOSS: loss}
            points.append((f"p{2 * d + l:02d}-delay_steps{delay}_loss{loss}", values, values, None, None,
                           LOSS0[delay] - (1.0 if loss else 0.0), None))  # fmt: skip
    points.append(("p06-free_talk", {"protocols.talk": "free"}, {DELAY: 0, LOSS: 0.0}, None, None, LOSS0[0], None))
    points.append(("p07-no_talk", {"agents.landmarks.assignment": "nearest"}, {}, None, "no_talk", NO_TALK, None))
    points.append(("p08-crash_free", {"protocols.talk": "free"}, {DELAY: 0}, "crash", None, None, 2000))
    runs = []
    for name, grid_values, coordinates, line, role, value, fault_step in points:
        for seed, offset in enumerate(seed_offsets):
            run_dir = sweep_dir / f"{name}-seed{seed}"
            if fault_step is None:
                make_run(run_dir, flat(value + offset + noise.get((name, seed), 0.0)))
            else:  # -13 before the crash, down to -19, back above -15 (the band: 10% of the gap of 20 to random)
                curve = [(1500, -14.0), (2000, -13.0), (2500, -17.0), (3000, -19.0), (3500, -14.5), (4000, -13.0)]
                make_run(run_dir, [(step, v + offset) for step, v in curve], fault_step=fault_step)
            runs.append({"point": name, "point_index": len(runs), "seed": seed, "grid_values": grid_values,
                         "overrides": [], "run_dir": str(run_dir), "log": "", "status": "ok", "exit_code": 0,
                         "coordinates": coordinates, "line": line, "role": role})  # fmt: skip
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "sweep": "main_job_small", "base_config": "x.yaml", "grid": {DELAY: [1, 2, 5], LOSS: [0.0, 0.3]},
        "seeds": list(range(len(seed_offsets))), "set": {}, "state": "finished", "runs": runs,
    }))  # fmt: skip


def line(effects: dict, axis: str, label: str) -> dict:
    (found,) = [entry for entry in next(a for a in effects["axes"] if a["key"] == axis)["lines"] if entry["label"] == label]
    return found


def test_crossing_interpolates_between_grid_points_and_says_beyond_or_no_gain():
    assert sweep_effects.crossing([0, 1, 2, 5], [-10, -11, -13, -19], -20) == (pytest.approx(3.0), "crossed")
    assert sweep_effects.crossing([0, 1, 2], [10, 8, 4], 0) == (pytest.approx(1.75), "crossed")
    # exactly at a grid point
    assert sweep_effects.crossing([0, 1, 2], [10, 5, 0], 0) == (pytest.approx(1.0), "crossed")
    # the first downward crossing of a curve that comes back up
    assert sweep_effects.crossing([0, 1, 2, 3], [10, 4, 9, 2], 0) == (pytest.approx(5 / 6), "crossed")
    assert sweep_effects.crossing([0, 1, 2], [10, 9, 8], 0) == (None, "beyond")
    assert sweep_effects.crossing([0, 1], [-20, -25], -20) == (None, "no_gain")


def test_d50_on_a_synthetic_sweep_with_seed_offsets_is_exact_and_its_interval_is_that_point(tmp_path):
    # Seeds differ by an offset shared by every point: the point means have wide intervals, but
    # every bootstrap draw (seeds drawn for all points at once) crosses at the same delay.
    make_sweep(tmp_path, seed_offsets=(0.0, 1.5, -2.0))
    summary = report.summarize_sweep(tmp_path)
    effects = summary["effects"]
    assert effects["metric"] == "eval_return_last5"
    assert effects["no_talk"]["mean"] == pytest.approx(NO_TALK - 0.5 / 3)
    assert (effects["random"], effects["oracle"]) == (pytest.approx(RANDOM), pytest.approx(ORACLE))
    delay0 = line(effects, DELAY, "loss=0")
    assert delay0["x"] == [0, 1, 2, 5]
    assert delay0["points"][0] == "p06-free_talk"  # talking free is delay 0
    assert delay0["ci95"][0][0] < delay0["mean"][0] < delay0["ci95"][0][1]
    d50 = delay0["d50"]
    assert d50["value"] == pytest.approx(3.0) and not d50["beyond"]
    assert d50["ci95"] == [pytest.approx(3.0), pytest.approx(3.0)] and d50["ci95_beyond"] == [False, False]
    assert d50["undefined_draws"] == 0
    # the loss-0.3 line has no point at 0 on the delay axis; the crash line is not measured
    # against the no-talk run without a crash
    assert line(effects, DELAY, "loss=0.3")["d50"]["reason"] == "no point at 0 on this line"
    assert "crash" in line(effects, DELAY, "crash")["d50"]["reason"]


def test_a_line_that_never_falls_to_half_is_beyond_the_grid_not_extrapolated(tmp_path):
    make_sweep(tmp_path)
    effects = report.summarize_sweep(tmp_path)["effects"]
    along_loss = line(effects, LOSS, "delay_steps=1")
    assert along_loss["x"] == [0.0, 0.3]
    d50 = along_loss["d50"]
    assert d50["value"] is None and d50["beyond"] is True
    assert d50["ci95"] == [None, None] and d50["ci95_beyond"] == [True, True]  # every draw stays above
    assert sweep_effects.d50_text(d50, 0.3) == "> 0.3 (beyond the grid) [> 0.3, > 0.3]"
    assert line(effects, LOSS, "delay_steps=0")["d50"]["reason"] == "one point only"


def test_the_bootstrap_interval_spans_the_draws_when_one_seed_is_off(tmp_path):
    # Seed 2 of the delay-5 point is 3 better (-16): the means give -18 there, so D50 is
    # 2 + 3 * 2 / 5 = 3.2. A draw without seed 2 (30% of them) crosses at 3; one of seed 2 alone
    # (1/27 = 3.7%, more than the 2.5% tail) at 2 + 3 * 2 / 3 = 4: the interval is [3, 4].
    make_sweep(tmp_path, noise={("p04-delay_steps5_loss0.0", 2): 3.0})
    d50 = line(report.summarize_sweep(tmp_path)["effects"], DELAY, "loss=0")["d50"]
    assert d50["value"] == pytest.approx(3.2)
    assert d50["ci95"] == [pytest.approx(3.0), pytest.approx(4.0)]


def test_no_d50_without_a_no_talk_point_or_when_talking_adds_nothing():
    point = {"point": "p", "runs": [], "metrics": {"r": {"mean": -10.0}}}
    assert sweep_effects._line_d50([0, 1], [point, point], None, "r", False)["reason"].startswith("no no-talk point")
    floor = {"point": "f", "runs": [], "metrics": {"r": {"mean": -5.0}}}
    assert "adds nothing" in sweep_effects._line_d50([0, 1], [point, point], floor, "r", False)["reason"]


CURVE = [(3000, -14.0), (4000, -13.0), (4500, -17.0), (5000, -19.0), (5500, -14.5), (6000, -13.0)]


def evaluations(curve: list[tuple[int, float]]) -> list[dict]:
    """The env server's rows of `curve`, written at T0 + 0, 1, 2, ... s."""
    return [{"step": step, "t": T0 + i, "eval/return_mean": value} for i, (step, value) in enumerate(curve)]


def crash_events(step: int, t: float = T0 + 100) -> list[dict]:
    return [{"t": t, "event": "fault", "kind": "kill", "at_step": step, "step": step, "nodes": {"agent_1": 7}}]


def test_dip_and_recovery_on_a_known_evaluation_curve():
    crash = sweep_effects.crash_recovery(evaluations(CURVE), crash_events(4000), random_line=RANDOM)
    # before: the evaluation at the crash's step; lowest -19 at 5000; the band is 10% of the
    # gap of 20 from random (-33) to -13, so back at -14.5 >= -15, 1500 steps after
    assert (crash["before"], crash["lowest"], crash["lowest_step"], crash["dip"]) == (-13.0, -19.0, 5000, 6.0)
    assert crash["band"] == pytest.approx(2.0)
    assert (crash["recovered"], crash["recovery_steps"]) == (True, 1500)
    assert crash["nodes"] == ["agent_1"] and crash["reason"] is None
    # the evaluation at the crash's step was written after the kill (T0 + 1 s, the fault at
    # T0 + 0.5 s): it is the first after it, and the level before is step 3000's
    late = sweep_effects.crash_recovery(evaluations(CURVE), crash_events(4000, t=T0 + 0.5), random_line=RANDOM)
    assert (late["before"], late["lowest"], late["dip"]) == (-14.0, -19.0, 5.0)
    # band 1.9: the lowest (-19 at 5000) is out of it, -14.5 at 5500 back in
    assert late["band"] == pytest.approx(1.9) and late["recovery_steps"] == 1500


def after_crash_at_4000(curve: list[tuple[int, float]], random_line: float | None = RANDOM) -> dict:
    return sweep_effects.crash_recovery(evaluations(curve), crash_events(4000), random_line)


def test_recovery_never_or_at_once_and_the_band_without_a_random_line():
    never = after_crash_at_4000([(4000, -13.0), (4500, -17.0), (5000, -16.0)])
    assert (never["recovered"], never["recovery_steps"], never["dip"]) == (False, None, 4.0)
    # the lowest is within the band (2): never seen out of it
    at_once = after_crash_at_4000([(4000, -13.0), (4500, -14.0), (5000, -14.5)])
    assert (at_once["recovered"], at_once["recovery_steps"], at_once["dip"]) == (True, 0, 1.5)
    # in the band at first, then a dip that is not over before the run ends: not recovered
    late_dip = after_crash_at_4000([(4000, -13.0), (4500, -14.0), (5000, -20.0)])
    assert (late_dip["recovered"], late_dip["recovery_steps"], late_dip["dip"]) == (False, None, 7.0)
    # no random line: 10% of |before| (1.3): -14.4 is out, -14.0 back
    alone = after_crash_at_4000([(4000, -13.0), (4500, -14.4), (5000, -14.0)], random_line=None)
    assert alone["band"] == pytest.approx(1.3) and alone["recovery_steps"] == 1000
    early = sweep_effects.crash_recovery(evaluations(CURVE), crash_events(2000), RANDOM)
    assert early["reason"] == "no evaluation before the crash at step 2000" and early["dip"] is None
    assert sweep_effects.crash_recovery(evaluations(CURVE), [], RANDOM) is None
    skipped = [{"t": T0, "event": "fault", "kind": "kill", "step": 4000, "nodes": {}, "skipped": ["agent_1"]}]
    assert sweep_effects.crash_recovery(evaluations(CURVE), skipped, RANDOM) is None  # it hit nothing


def test_a_crashed_point_reports_its_dip_and_recovery_over_seeds(tmp_path):
    make_sweep(tmp_path, seed_offsets=(0.0, 1.0, 2.0))
    (crash,) = report.summarize_sweep(tmp_path)["effects"]["crashes"]
    assert crash["point"] == "p08-crash_free" and crash["runs"] == 3
    assert crash["eval_dip"]["mean"] == pytest.approx(6.0) and crash["eval_dip"]["std"] == pytest.approx(0.0)
    assert crash["recovery_steps"]["mean"] == pytest.approx(1500) and crash["recovered_fraction"] == 1.0


def test_the_sweep_report_prints_the_axes_d50_and_crashes(tmp_path, capsys):
    make_sweep(tmp_path, seed_offsets=(0.0, 1.5, -2.0))
    assert main(["report", str(tmp_path), "--save"]) == 0
    out = capsys.readouterr().out
    assert f"eval_return_last5 against {DELAY}" in out and "D50 [95% bootstrap]" in out
    assert "3 [3, 3]" in out  # D50 and its interval on the loss-0 line
    assert "> 0.3 (beyond the grid)" in out
    assert "p06-free_talk" in out and "p08-crash_free" in out  # points beside the grid by their names
    assert "steps to recover" in out and "1500 (1500-1500)" in out  # a count's spread, not a t-interval
    assert (tmp_path / "report" / "sweep_axes.png").stat().st_size > 1000
    assert "D50" in (tmp_path / "report" / "summary.md").read_text()
    saved = json.loads((tmp_path / "report" / report.SWEEP_RECORD_FILENAME).read_text())  # what --merge takes
    assert len(saved["runs"]) == 27 and all(run["summary"]["headline"]["eval_return_last5"] is not None
                                            for run in saved["runs"] if run["point"] != "p08-crash_free")


def test_the_run_report_shows_default_actions_per_agent_and_the_crash(tmp_path):
    env_rows = [{"step": 1000, "t": T0 + 3, "env/default_actions/agent_0": 4.0, "env/default_actions/agent_1": 0.0},
                {"step": 2000, "t": T0 + 4, "env/default_actions/agent_0": 6.0, "env/default_actions/agent_1": 0.0},
                # the env server restarted: its counters begin again
                {"step": 3000, "t": T0 + 9, "env/default_actions/agent_0": 1.0, "env/default_actions/agent_1": 2.0}]  # fmt: skip
    restart = [{"t": T0 + 8, "event": "restarted", "node": "env", "pid": 9, "restarts": 1}]
    run_dir = make_run(tmp_path / "run", CURVE, fault_step=4000, env_rows=env_rows, extra_events=restart)
    summary = report.summarize_run(run_dir)
    assert summary["default_actions"] == {"agent_0": 7.0, "agent_1": 2.0}
    assert summary["headline"]["default_actions"] == 9.0
    assert summary["headline"]["crash_eval_dip"] == 6.0 and summary["headline"]["crash_recovery_steps"] == 1500.0
    out = io_report(run_dir)
    assert "default actions the env server played (dead, paused or late agents): agent_0 7, agent_1 2" in out
    assert "crash (kill of agent_0 at step 4000): greedy evaluation -13 before, lowest -19 at step 5000 (dip 6)" in out
    assert "1500 steps after the crash" in out
    plain = report.summarize_run(make_run(tmp_path / "plain", flat(-12.0)))
    assert plain["default_actions"] == {} and plain["crash"] is None and plain["headline"]["default_actions"] is None
    assert "default actions" not in io_report(tmp_path / "plain")


def test_the_run_report_shows_a_realtime_clocks_late_actions_and_their_age(tmp_path):
    env_rows = [{"step": 100, "t": T0 + 3, "env/late_actions/agent_0": 40.0, "env/late_actions/agent_1": 0.0,
                 "env/action_age_steps/agent_0": 2.0, "env/action_age_steps_max/agent_0": 3.0},
                {"step": 200, "t": T0 + 4, "env/late_actions/agent_0": 90.0, "env/late_actions/agent_1": 10.0,
                 "env/action_age_steps/agent_0": 3.0, "env/action_age_steps_max/agent_0": 5.0,
                 "env/action_age_steps/agent_1": 0.5, "env/action_age_steps_max/agent_1": 1.0}]  # fmt: skip
    summary = report.summarize_run(make_run(tmp_path / "run", CURVE, env_rows=env_rows))
    agent_0, agent_1 = summary["realtime"]["agents"]["agent_0"], summary["realtime"]["agents"]["agent_1"]
    assert (agent_0["late"], agent_0["late_share"], agent_0["age_mean"], agent_0["age_max"]) == (90.0, 0.45, 2.5, 5.0)
    assert (agent_1["late"], agent_1["late_share"], agent_1["age_mean"], agent_1["age_max"]) == (10.0, 0.05, 0.5, 1.0)
    assert summary["headline"]["late_action_share"] == pytest.approx(0.25)
    assert summary["headline"]["action_age_mean"] == pytest.approx(1.5)
    assert "realtime clock: actions late for their step over 200 training steps" in io_report(tmp_path / "run")
    assert "agent_0 90 (45%, age mean 2.5, max 5)" in io_report(tmp_path / "run")
    lockstep = report.summarize_run(make_run(tmp_path / "lockstep", flat(-12.0)))
    assert lockstep["realtime"] is None and lockstep["headline"]["late_action_share"] is None


def io_report(run_dir: Path) -> str:
    import io

    out = io.StringIO()
    assert report.main(run_dir, out=out) == 0
    return out.getvalue()


def test_bootstrap_draws_where_talking_adds_nothing_are_left_out_and_counted():
    # seed 1 gains nothing at 0 (-30 against -20 without talking); only the draws of seed 0
    # alone (a quarter) have a gain, and they all cross at 0.5
    d50 = sweep_effects.bootstrap_d50([{0: -10.0, 1: -30.0}, {0: -20.0, 1: -20.0}], {0: -20.0, 1: -20.0}, [0, 1])
    assert d50["ci95"] == [0.5, 0.5]
    assert 0.65 * d50["draws"] < d50["undefined_draws"] < 0.85 * d50["draws"]
    text = sweep_effects.d50_text({"value": 0.5, "beyond": False, "reason": None, **d50}, 1)
    assert text.startswith("0.5 [0.5, 0.5] (") and "draws left out: no gain from talking in them" in text


def test_sweeps_of_one_spec_run_apart_merge_into_one_with_every_seed(tmp_path, capsys):
    # Seeds 0-2 ran here, seeds 3-4 elsewhere; here seed 1 of the no-talk point failed, and the
    # other sweep holds that (point, seed) too, done: the merge takes the run that may be scored.
    make_sweep(tmp_path / "here")
    make_sweep(tmp_path / "there", seed_offsets=(0.0, 0.0, 0.0, 1.0, -1.0))
    here = json.loads((tmp_path / "here" / "sweep.json").read_text())
    failed = next(run for run in here["runs"] if run["point"] == "p07-no_talk" and run["seed"] == 1)
    failed.update(status="failed", exit_code=1)
    (tmp_path / "here" / "sweep.json").write_text(json.dumps(here))
    there = json.loads((tmp_path / "there" / "sweep.json").read_text())
    there["runs"] = [run for run in there["runs"] if run["seed"] >= 3 or run["point"] == "p07-no_talk"]
    there["seeds"] = [3, 4]
    (tmp_path / "there" / "sweep.json").write_text(json.dumps(there))

    assert main(["sweep", "--merge", str(tmp_path / "here"), str(tmp_path / "there"), "--sweep-dir", str(tmp_path / "all")]) == 0
    assert "45 run(s), seeds [0, 1, 2, 3, 4]" in capsys.readouterr().out  # 9 points x 5 seeds, each once
    merged = json.loads((tmp_path / "all" / "sweep.json").read_text())
    assert merged["seeds"] == [0, 1, 2, 3, 4] and merged["state"] == "merged"
    assert len(merged["runs"]) == 9 * 5
    assert [source["seeds"] for source in merged["merged_from"]] == [[0, 1, 2], [3, 4]]
    taken = next(run for run in merged["runs"] if run["point"] == "p07-no_talk" and run["seed"] == 1)
    assert taken["run_dir"].startswith(str(tmp_path / "there")) and taken["exit_code"] == 0
    summary = report.summarize_sweep(tmp_path / "all")
    assert all(point["ok"] == 5 for point in summary["points"])
    assert line(summary["effects"], DELAY, "loss=0")["d50"]["value"] == pytest.approx(3.0)


def test_sweeps_of_different_specs_or_a_merge_with_run_options_are_refused(tmp_path, capsys):
    make_sweep(tmp_path / "a")
    make_sweep(tmp_path / "b")
    other = json.loads((tmp_path / "b" / "sweep.json").read_text())
    other["grid"][LOSS] = [0.0, 0.5]
    (tmp_path / "b" / "sweep.json").write_text(json.dumps(other))
    assert main(["sweep", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--sweep-dir", str(tmp_path / "out")]) != 0
    assert "another grid" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["sweep", "--merge", str(tmp_path / "a"), str(tmp_path / "a"), "--seeds", "0-4", "--sweep-dir", str(tmp_path / "out")]) != 0
    assert "--seeds" in capsys.readouterr().err


def test_a_sweep_file_that_gained_points_at_its_end_merges_with_its_earlier_parts(tmp_path, capsys):
    # The earlier part ran from a file with two extra points, the later one from the file with a
    # third added at its end (and only that point's runs): one sweep, with every point.
    make_sweep(tmp_path / "before")
    make_sweep(tmp_path / "after")
    earlier = [{"name": "free_talk", "set": {"protocols.talk": "free"}},
               {"name": "no_talk", "set": {"agents.landmarks.assignment": "nearest"}, "role": "no_talk"}]
    silent = {"name": "silent", "set": {"consensus.enabled": False}}
    before = json.loads((tmp_path / "before" / "sweep.json").read_text())
    before["points"] = earlier
    before["runs"] = [run for run in before["runs"] if run["point"] != "p08-crash_free"]
    (tmp_path / "before" / "sweep.json").write_text(json.dumps(before))
    after = json.loads((tmp_path / "after" / "sweep.json").read_text())
    after["points"] = [*earlier, silent]
    after["runs"] = [run for run in after["runs"] if run["point"] == "p08-crash_free"]
    (tmp_path / "after" / "sweep.json").write_text(json.dumps(after))

    # either order: the merged sweep takes the longest list
    for parts, out in ((("before", "after"), "all"), (("after", "before"), "all_reversed")):
        assert main(["sweep", "--merge", *(str(tmp_path / part) for part in parts), "--sweep-dir", str(tmp_path / out)]) == 0
        merged = json.loads((tmp_path / out / "sweep.json").read_text())
        assert merged["points"] == [*earlier, silent]
        assert len(merged["runs"]) == 9 * 3 and merged["runs"][-1]["point"] == "p08-crash_free"

    # a point that ran may not change: the earlier part's no_talk point set otherwise is refused
    before["points"] = [earlier[0], {**earlier[1], "set": {"agents.landmarks.assignment": "negotiated"}}]
    (tmp_path / "before" / "sweep.json").write_text(json.dumps(before))
    capsys.readouterr()
    assert main(["sweep", "--merge", str(tmp_path / "after"), str(tmp_path / "before"), "--sweep-dir", str(tmp_path / "out")]) != 0
    assert f"the points of {tmp_path / 'before'} are not the first 2 of the longest list" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_sweep_whose_run_directories_are_gone_merges_by_its_saved_record(tmp_path, capsys):
    # Seeds 3-4 ran on another day; all that is left of them is their sweep record (`report
    # --save` writes it; a results page's record holds it under `sweep_record`). Merged with seeds
    # 0-2 here, the report reads the same numbers as from the run directories themselves.
    import shutil

    def seeds_3_4(sweep_dir: Path) -> Path:
        make_sweep(sweep_dir, seed_offsets=(0.0, 0.0, 0.0, 1.0, -1.0), noise={("p02-delay_steps2_loss0.0", 4): -2.5})
        index = json.loads((sweep_dir / "sweep.json").read_text())
        index.update(runs=[run for run in index["runs"] if run["seed"] >= 3], seeds=[3, 4])
        (sweep_dir / "sweep.json").write_text(json.dumps(index))
        return sweep_dir

    make_sweep(tmp_path / "here")
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"title": "a page", "sweep_record": report.sweep_record(seeds_3_4(tmp_path / "then"))}))
    shutil.rmtree(tmp_path / "then")
    assert main(["sweep", "--merge", str(tmp_path / "here"), str(saved), "--sweep-dir", str(tmp_path / "merged")]) == 0
    assert "45 run(s), seeds [0, 1, 2, 3, 4]" in capsys.readouterr().out
    from_record = report.summarize_sweep(tmp_path / "merged")

    make_sweep(tmp_path / "here2")
    assert main(["sweep", "--merge", str(tmp_path / "here2"), str(seeds_3_4(tmp_path / "again")),
                 "--sweep-dir", str(tmp_path / "from_dirs")]) == 0  # fmt: skip
    from_dirs = report.summarize_sweep(tmp_path / "from_dirs")
    assert [point["metrics"] for point in from_record["points"]] == [point["metrics"] for point in from_dirs["points"]]
    assert from_record["comparisons"]["rows"] == from_dirs["comparisons"]["rows"]
    assert line(from_record["effects"], DELAY, "loss=0")["d50"] == line(from_dirs["effects"], DELAY, "loss=0")["d50"]
    assert all(point["ok"] == 5 for point in from_record["points"])
    # the merged sweep's own record carries the recorded runs on, for the next merge
    again = report.sweep_record(tmp_path / "merged")
    recorded = [run for run in again["runs"] if run["seed"] >= 3]
    assert recorded and all(run["summary"]["record"]["refused"] is None for run in recorded)


def test_a_file_that_is_no_sweep_record_is_refused_by_the_merge(tmp_path, capsys):
    make_sweep(tmp_path / "here")
    (tmp_path / "page.json").write_text(json.dumps({"title": "a page without its runs", "rows": []}))
    assert main(["sweep", "--merge", str(tmp_path / "here"), str(tmp_path / "page.json"),
                 "--sweep-dir", str(tmp_path / "out")]) != 0  # fmt: skip
    assert "expected a sweep directory or a saved sweep record" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_point_beside_the_grid_on_no_axis_is_a_level_with_its_interval(tmp_path):
    """A reference point (the ring beside a grid of proximity radii): on no axis, no role, no
    crash. It is a level in the axis tables' titles and in the plot; the no-talk, free-talk and
    crash points are not."""
    make_sweep(tmp_path, seed_offsets=(0.0, 1.0))
    index = json.loads((tmp_path / "sweep.json").read_text())
    for seed, value in enumerate((-12.0, -13.0)):
        run_dir = tmp_path / f"p09-ring-seed{seed}"
        make_run(run_dir, flat(value))
        index["runs"].append({"point": "p09-ring", "point_index": len(index["runs"]), "seed": seed,
                              "grid_values": {"topology.kind": "ring"}, "overrides": [], "run_dir": str(run_dir), "log": "",
                              "status": "ok", "exit_code": 0, "coordinates": {}, "line": None, "role": None})  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps(index))
    effects = report.summarize_sweep(tmp_path)["effects"]
    (ring,) = effects["beside"]
    assert ring["point"] == "p09-ring" and ring["mean"] == pytest.approx(-12.5) and ring["ci95"][0] < -12.5 < ring["ci95"][1]
    titles = [title for title, _, _ in sweep_effects.effect_tables(effects)]
    assert all("; p09-ring -12.5 [" in title for title in titles if " against " in title)
    (path,) = sweep_effects.plot_effects(effects, tmp_path / "plots", report._pyplot())
    assert path.read_bytes().startswith(b"\x89PNG")
