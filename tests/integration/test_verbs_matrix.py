"""Every verb on every config Parley ships, at a tiny budget: what a user is handed must work.

One shrink rule (`shrink_overrides`: `--set` overrides computed from the config itself) turns any
shipped config into a run of a few dozen steps. Then, per config:

- `validate` (every config; `make test-long`: it builds each env once, seconds a config);
- `up` -> `report` -> `evaluate` (or its refusal, which must name why) -> an `up` interrupted by
  `down` once every agent has a checkpoint, then `resume` to the budget (or its refusal, for a
  run with a fault schedule): a run per verb per config, so `make test-long` chains the configs of
  `CHAIN_IN_CI` and `make test-extended` every other.

`test_every_command_of_the_readmes_verb_list_works` runs the README's "The verbs" block line by
line (with the shrink rule added to what launches runs), so the README cannot drift from what
works.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config import RunConfig, load_config
from tests.integration.test_orchestrate import read_events

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = sorted(
    str(path.relative_to(REPO))
    for path in [*(REPO / "configs").glob("*.yaml"), *(REPO / "examples").rglob("configs/*.yaml")]
)
# Configs whose runs need what a test machine does not have; `validate` still runs on them.
CANNOT_RUN_HERE = {"configs/two_hosts_ssh.yaml": "its hosts (192.0.2.x, reached by ssh)"}
# Why `evaluate` may refuse a run (orchestrator/evaluate.py); any other failure is a defect.
EVALUATE_REFUSALS = ("training.mode: evaluating a centrally trained run is not implemented",
                     "agents.goals: evaluating goal-conditioned agents is not implemented")
TINY_STEPS = 40
# The interrupted run is paced so that `down` lands mid-run: 40 steps take at least 10 s.
INTERRUPTED_STEPS_PER_S = 4.0


def shrink_overrides(config: RunConfig) -> list[str]:
    """`--set` overrides that make `config` a run of at most `TINY_STEPS` steps that still does
    what the config does (learns, evaluates, averages, checkpoints) at least once."""
    steps = min(config.run.steps, TINY_STEPS)
    sets = [f"run.steps={steps}", f"env.num_copies={min(config.env.num_copies, 2)}", "launch.live_view=off",
            "agents.checkpoint_every_steps=10", "agents.replay_save_every_steps=10", "agents.metrics_every_steps=10"]
    if config.env.eval_every_steps is not None:
        sets += [f"env.eval_every_steps={steps // 2}", f"env.eval_episodes={min(config.env.eval_episodes, 2)}"]
    if getattr(config.agents.learner, "learning_starts", None) is not None:
        sets.append(f"agents.learner.learning_starts={min(config.agents.learner.learning_starts, 16)}")
    if config.protocols.consensus.enabled:
        sets.append(f"protocols.consensus.period_steps={min(config.protocols.consensus.period_steps, 10)}")
    if any(event.at_step is not None for event in config.faults.schedule):
        # Faults at a step keep their place in the run, scaled to the shorter budget.
        schedule = []
        for event in config.faults.schedule:
            data = event.model_dump(mode="json", exclude_defaults=True)
            if event.at_step is not None:
                data["at_step"] = max(1, event.at_step * steps // config.run.steps)
            schedule.append(data)
        sets.append(f"faults.schedule={json.dumps(schedule)}")
    return sets


def set_arguments(sets: list[str]) -> list[str]:
    return [argument for setting in sets for argument in ("--set", setting)]


def orchestrate(*args: str, cwd: Path = REPO, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`orchestrate ARGS` to its end (killed past `timeout_s`), output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def succeeded(result: subprocess.CompletedProcess, what: str) -> str:
    assert result.returncode == 0, f"{what}: exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "No artists with labels" not in result.stdout + result.stderr, f"{what}: a matplotlib warning"
    return result.stdout


# Each checks its env too (~2 s a config, ~100 s in all): in the long suite, beside the chain it
# shrinks for. The shipped configs at their own budget are validated in tests/unit/test_config.py.
@pytest.mark.long
@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_every_shipped_config_validates_at_the_tiny_budget(path):
    from orchestrator.cli import main

    assert main(["validate", path, *set_arguments(shrink_overrides(load_config(REPO / path)))]) == 0


def worth_resuming(run_dir: Path, config: RunConfig) -> bool:
    """Every agent has a checkpoint to resume from; for a run with a fault schedule (which
    resume refuses) the env server has stepped once, which is all the refusal needs."""
    if config.faults.schedule:
        return (run_dir / "nodes" / "env" / "resume.bin").is_file()
    agents = range(config.agents.count)
    return all((run_dir / "nodes" / f"agent_{i}" / "checkpoints" / "latest.pt").is_file() for i in agents)


# The whole chain costs about a minute a config here (40 of them): more than CI's 90 minutes leave
# beside the other tests. CI (`make test-long`) runs it on the configs below: the main job, a
# centrally trained run, a fault schedule, goal negotiation, a model-based learner with consensus,
# a plugin learner and the TCP transport. The rest are `extended` (`make test-extended`); their
# learners and capabilities have whole runs of their own in the long suite (AMIGo on MiniGrid,
# PMIC, recording and QMIX in the CTDE tests, transfer in its bench's test).
CHAIN_IN_CI = {
    "configs/4agents_ring.yaml", "configs/ctde_spread3.yaml", "configs/faults_kill_restart.yaml",
    "configs/goals_negotiation_hindsight.yaml", "configs/og_marl_ring5.yaml", "configs/tiny_star_tcp.yaml",
    "examples/parley_ippo/configs/spread4_ippo.yaml",
}
RUNNABLE = [
    pytest.param(path, marks=() if path in CHAIN_IN_CI else pytest.mark.extended)
    for path in SHIPPED_CONFIGS if path not in CANNOT_RUN_HERE
]


@pytest.mark.long
@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", RUNNABLE)
def test_up_report_evaluate_and_resume_work_on_every_shipped_config(path, tmp_path):
    config = load_config(REPO / path)
    sets = set_arguments(shrink_overrides(config))
    run_dir = tmp_path / "run"
    succeeded(orchestrate("up", path, "--run-dir", str(run_dir), *sets), f"up {path}")
    assert read_events(run_dir)[-1]["exit_code"] == 0
    succeeded(orchestrate("report", str(run_dir), "--save"), f"report {path}")

    evaluation = orchestrate("evaluate", str(run_dir), "--episodes", "2")
    if evaluation.returncode == 2 and any(reason in evaluation.stderr for reason in EVALUATE_REFUSALS):
        pass  # refused, and it says why
    else:
        stdout = succeeded(evaluation, f"evaluate {path}")
        assert f"evaluation run: {run_dir / 'evaluations' / '1'}" in stdout

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", path, "--run-dir", str(interrupted), *sets,
                              "--set", f"env.max_steps_per_s={INTERRUPTED_STEPS_PER_S}"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not worth_resuming(interrupted, config) and first.poll() is None:
            assert time.monotonic() < deadline, f"nothing to resume in {path}'s run after 240 s"
            time.sleep(0.5)
        assert first.poll() is None, f"up {path} ended before it could be interrupted:\n{first.stderr.read()[-3000:]}"
        orchestrate("down", str(interrupted), "--wait", "60")
        _, stderr = first.communicate(timeout=90)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130, f"up {path} after down: exit {first.returncode}\n{stderr[-3000:]}"

    resumed = orchestrate("resume", str(interrupted))
    if config.faults.schedule:
        assert resumed.returncode == 2 and "faults.schedule" in resumed.stderr, resumed.stderr[-3000:]
    else:
        succeeded(resumed, f"resume {path}")
        events = read_events(interrupted)
        assert [e["event"] for e in events].count("run_started") == 2
        assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 0


def readme_verb_lines() -> list[str]:
    """The command lines of the README's "The verbs" block, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = text.split("## The verbs", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines()]


def test_the_readmes_verb_list_is_what_the_readme_test_runs():
    verbs = [shlex.split(line)[1] for line in readme_verb_lines()]
    assert verbs == ["validate", "up", "up", "graph", "status", "logs", "down", "resume", "report", "evaluate",
                     "sweep", "report"], "the README's verb list changed: update the test below with it"


@pytest.mark.long
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_every_command_of_the_readmes_verb_list_works(tmp_path):
    """Run from a fresh directory with the repository's configs, as a user of a clone would; runs
    are shrunk (`shrink_overrides`). `down` and `resume` meet a finished run, so they say so."""
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    outcomes = {}
    for line in readme_verb_lines():
        words = shlex.split(line)[1:]  # without .venv/bin/orchestrate
        verb = words[0]
        if verb == "up" and "--dry-run" not in words or verb == "sweep":
            base = words[1] if verb == "up" else "configs/tiny_ring_links.yaml"  # the sweep file's base
            words += set_arguments(shrink_overrides(load_config(REPO / base)))
            if verb == "sweep":
                words += ["--seeds", "0"]  # its 6 points once each, not twice: the verb is what is tested
        if "<time>" in line:
            (sweep_dir,) = (tmp_path / "runs" / "sweeps").glob("ring_delay_loss-*")
            words = [str(sweep_dir) if "<time>" in word else word for word in words]
        result = orchestrate(*words, cwd=tmp_path, timeout_s=600)
        outcomes[line] = result
        if verb == "down":  # the run has finished: nothing to stop, which is no error
            assert result.returncode == 0, result.stderr[-3000:]
        elif verb == "resume":  # finished: nothing to resume, and it says so
            assert result.returncode == 2 and "finished" in result.stderr, result.stderr
        else:
            succeeded(result, line)
    assert (tmp_path / "ring.png").is_file()
    logs = next(result for line, result in outcomes.items() if " logs " in line)
    assert 0 < len(logs.stdout.splitlines()) <= 50
    evaluate = next(result for line, result in outcomes.items() if " evaluate " in line)
    assert re.search(r"mean return per agent: \S+ trained, \S+ random", evaluate.stdout)
