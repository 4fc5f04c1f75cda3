"""bench/runs.py's plot of finished runs: evaluation curves, evaluation-only levels, and the
groups it has to leave out, read from run directories laid out as the runtime writes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import runs  # noqa: E402


def make_run(root: Path, name: str, evaluations: list[tuple[int, float]]) -> Path:
    """A run directory whose env server wrote these greedy evaluations (and a training record)."""
    env = root / name / "nodes" / "env"
    env.mkdir(parents=True)
    lines = [{"step": 1, "env/steps_per_s": 10.0}] + [{"step": step, "eval/return_mean": value} for step, value in evaluations]
    (env / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / name


def test_evaluations_are_read_from_the_env_servers_metrics(tmp_path):
    run = make_run(tmp_path, "a_seed0", [(100, -3.0), (200, -2.0)])
    assert runs.evaluations(run) == [(100, -3.0), (200, -2.0)]


def test_curves_and_levels_are_drawn_and_empty_groups_named(tmp_path):
    curve = [make_run(tmp_path, f"train_seed{seed}", [(100, -3.0 - seed), (200, -2.0), (300, -1.0)]) for seed in range(3)]
    curve.append(make_run(tmp_path, "train_seed3", [(100, -3.0), (200, -2.0)]))  # shorter: the curve is cut to it
    level = [make_run(tmp_path, f"eval_seed{seed}", [(50, -4.0 + seed)]) for seed in range(2)]
    nothing = [make_run(tmp_path, "crashed_seed0", [])]
    out = tmp_path / "curves.png"
    left_out = runs.plot_evaluations({"train": curve, "crashed": nothing}, out, "test", levels={"zero-shot": level})
    assert left_out == ["crashed"]
    assert out.read_bytes().startswith(b"\x89PNG")


def test_the_command_line_refuses_a_glob_that_matches_nothing(tmp_path):
    make_run(tmp_path, "a_seed0", [(100, -1.0)])
    with pytest.raises(SystemExit, match="no run directory matches"):
        runs.main(["plot", str(tmp_path / "x.png"), f"a={tmp_path}/b_seed*"])
    with pytest.raises(SystemExit, match="expected LABEL=GLOB"):
        runs.main(["plot", str(tmp_path / "x.png"), f"{tmp_path}/a_seed*"])
    runs.main(["plot", str(tmp_path / "x.png"), f"a={tmp_path}/a_seed*"])
    assert (tmp_path / "x.png").exists()


def finish(run_dir: Path, exit_code: int | None, resolved: str, steps_done: int | None = 200,
           extra_events: tuple[dict, ...] = ()) -> Path:
    """Mark `run_dir` as a run the orchestrator finished with `exit_code` (None: no run_finished
    event) after its env server reported `steps_done` steps (None: no run_complete), made with
    `resolved`, by commit abc123."""
    (run_dir / "resolved.yaml").write_text(resolved)
    events = [{"event": "run_started", "node": None, "code": {"git_commit": "abc123", "git_dirty": False}},
              {"event": "started", "node": None}, *extra_events]
    if steps_done is not None:
        events.append({"event": "run_complete", "node": "env", "steps": steps_done})
    if exit_code is not None:
        events.append({"event": "run_finished", "node": None, "exit_code": exit_code, "reason": "x"})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    return run_dir


CONFIG = "configs/tiny_ring.yaml"


def resolved_as_up_writes(config: str, overrides: list[str], run_dir: Path) -> str:
    """The resolved.yaml `orchestrate up CONFIG --set ...` writes into run_dir."""
    from orchestrator.config import RunLayout, load_config, resolve, with_runtime

    layout = RunLayout(run_id="test", run_dir=str(run_dir), socket_dir=str(run_dir / "sock"), keys_dir=str(run_dir / "keys"))
    return yaml.safe_dump(resolve(with_runtime(load_config(config, overrides), layout)), sort_keys=False)


def test_a_finished_run_is_reused_without_running_it_again(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "run_once", lambda *args: pytest.fail("a finished run was run again"))
    settings = ["run.seed=0", "run.steps=200"]
    run = make_run(tmp_path, "a_seed0", [(100, -3.0), (200, -1.0)])
    finish(run, 0, resolved_as_up_writes(CONFIG, settings, run))
    result = runs.run_and_score(CONFIG, settings, run, 60, last_evals=2, reuse=True)
    assert result["reused"] and not result["failed"] and result["score"] == -2.0
    failed = make_run(tmp_path, "b_seed0", [(100, -3.0)])
    finish(failed, 1, resolved_as_up_writes(CONFIG, [], failed))
    assert runs.run_and_score(CONFIG, [], failed, 60, last_evals=1, reuse=True)["failed"]


def test_a_run_from_another_version_of_the_config_is_refused(tmp_path, monkeypatch):
    """The same overrides on an edited config file: another experiment, named by the field. A
    field the run's file lacks (added to the schema since) counts as its default."""
    monkeypatch.setattr(runs, "run_once", lambda *args: pytest.fail("ran"))
    edited = tmp_path / "edited.yaml"
    edited.write_text((REPO / CONFIG).read_text() + "\n")
    run = make_run(tmp_path, "a_seed0", [(100, -3.0)])
    finish(run, 0, resolved_as_up_writes(CONFIG, ["run.seed=0", "agents.learner.gamma=0.9"], run))
    with pytest.raises(ValueError, match=r"agents.learner.gamma: 0.9 in the run, 0.99 now"):
        runs.run_and_score(str(edited), ["run.seed=0"], run, 60, last_evals=1, reuse=True)
    runs.check_made_with(run, ["run.seed=0", "agents.learner.gamma=0.9"], str(edited))  # the same settings: reused

    older = make_run(tmp_path, "b_seed0", [(100, -3.0)])
    text = resolved_as_up_writes(CONFIG, [], older)
    finish(older, 0, text.replace("    numpy_updates: false\n", ""))
    assert "numpy_updates" not in (older / "resolved.yaml").read_text()
    runs.check_made_with(older, ["agents.learner.numpy_updates=false"], CONFIG)
    with pytest.raises(ValueError, match=r"numpy_updates=False, this invocation asks for"):
        runs.check_made_with(older, ["agents.learner.numpy_updates=true"], CONFIG)


def test_a_finished_run_made_with_other_settings_is_refused(tmp_path):
    run = finish(make_run(tmp_path, "a_seed0", [(100, -3.0)]), 0, "run: {seed: 0}\nenv: {kwargs: {base_kwargs: {x_size: 8}}}\n")
    runs.check_made_with(run, ["run.seed=0", "env.kwargs.base_kwargs.x_size=8"])
    with pytest.raises(ValueError, match=r"run.seed=0, this invocation asks for 'run.seed=1'"):
        runs.check_made_with(run, ["run.seed=1"])
    with pytest.raises(ValueError, match=r"y_size=None"):  # a setting the run did not have
        runs.check_made_with(run, ["env.kwargs.base_kwargs.y_size=8"])


def test_an_unfinished_run_is_kept_aside_and_run_afresh(tmp_path, monkeypatch):
    ran = []

    def fake_run_once(config, overrides, run_dir, timeout_s, extra_paths=None):
        ran.append(run_dir)
        finish(make_run(run_dir.parent, run_dir.name, [(100, 5.0)]), 0, "run: {seed: 0, steps: 200}\n")
        return 0, ""

    monkeypatch.setattr(runs, "run_once", fake_run_once)
    unfinished = make_run(tmp_path, "a_seed0", [(100, -3.0)])  # no run_finished event: it was interrupted
    result = runs.run_and_score("any.yaml", [], unfinished, 60, last_evals=1, reuse=True)
    assert ran == [unfinished] and result["score"] == 5.0 and "reused" not in result
    kept = [path.name for path in tmp_path.iterdir() if path.name.startswith("a_seed0.unfinished-")]
    assert len(kept) == 1 and runs.evaluations(tmp_path / kept[0]) == [(100, -3.0)]


def test_a_run_is_scored_only_after_exit_0_with_its_budget_done(tmp_path):
    """The one rule every bench's scores go through (run_record / refusal)."""
    resolved = "run: {seed: 0, steps: 200, reproducible: true}\n"
    good = runs.run_record(finish(make_run(tmp_path, "good", [(100, -1.0)]), 0, resolved))
    assert good["refused"] is None and good["exit_code"] == 0 and good["budget_spent"]
    assert (good["git_commit"], good["git_dirty"], good["reproducible"]) == ("abc123", False, True)
    broken = finish(make_run(tmp_path, "broken", [(100, -1.0)]), 0, resolved,
                    extra_events=({"event": "reproducibility_broken", "node": "agent_0", "causes": ["a late share"]},))
    assert runs.run_record(broken)["reproducibility_broken_by"] == ["a late share"]

    failed = runs.run_record(finish(make_run(tmp_path, "failed", [(100, -1.0)]), 1, resolved))
    assert failed["refused"].startswith("it exited 1") and failed["exit_code"] == 1
    short = runs.run_record(finish(make_run(tmp_path, "short", [(100, -1.0)]), 0, resolved, steps_done=150))
    assert short["refused"] == "it stopped before its budget: 150 steps of 200"
    silent = runs.run_record(finish(make_run(tmp_path, "silent", [(100, -1.0)]), 0, resolved, steps_done=None))
    assert silent["refused"] == "it stopped before its budget: no step reported of 200"
    killed = runs.run_record(finish(make_run(tmp_path, "killed", [(100, -1.0)]), None, resolved, steps_done=None))
    assert "did not finish" in killed["refused"]
    # The orchestrator wrote exit 0, but the process that ran it (as the bench saw it) did not exit 0.
    crashed = runs.run_record(finish(make_run(tmp_path, "crashed", [(100, -1.0)]), 0, resolved), process_exit_code=124)
    assert crashed["exit_code"] == 124 and crashed["refused"].startswith("it exited 124")


def test_run_and_score_refuses_a_failed_run_and_saves_its_record(tmp_path, monkeypatch):
    def fake_run_once(config, overrides, run_dir, timeout_s, extra_paths=None):
        finish(make_run(run_dir.parent, run_dir.name, [(100, 5.0), (200, 6.0)]), 1, "run: {seed: 0, steps: 200}\n")
        return 1, "a node died"

    monkeypatch.setattr(runs, "run_once", fake_run_once)
    result = runs.run_and_score("any.yaml", [], tmp_path / "a_seed0", 60, last_evals=2)
    assert result["failed"] and result["score"] is None and result["refused"].startswith("it exited 1")
    assert result["record"]["exit_code"] == 1 and result["record"]["git_commit"] == "abc123"
    assert runs.run_cells(result) == ("-", "FAILED: it exited 1 (x)")
    # Every score a bench averages leaves the refused run out.
    assert runs.summarize_variants([{**result, "variant": "v"}], ["v"])["v"]["n"] == 0
