"""A node restarted over damaged saved state, through a real run and its restart policy.

configs/tiny_ring.yaml, agent_1 killed at step 30 and restarted by `faults.restart` after a
backoff long enough for the test to damage its files meanwhile, as a disk error or a bad copy
would: the newest checkpoint cut to half, the newest replay buffer overwritten with random bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from protocols.storage.durable_state import EXIT_DAMAGED_STATE
from tests.integration.test_orchestrate import assert_all_reaped, launched_pids, node_metrics, orchestrate, read_events

# Whole runs of 20-40 s each: `make test-long` (CI runs it after `make test`).
pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(240)]

KILL_AT_STEP = 30
STEPS = 1200


def wait_for_exit(run_dir: Path, process, node: str, timeout_s: float = 150) -> None:
    """Poll the event log until `node` has exited (the orchestrator reaped it)."""
    deadline = time.monotonic() + timeout_s
    while not any(e["event"] == "exited" and e["node"] == node for e in read_events(run_dir)):
        assert process.poll() is None, f"orchestrator exited early: {process.communicate()[1].decode()[-3000:]}"
        assert time.monotonic() < deadline, f"{node} was not killed within {timeout_s} s"
        time.sleep(0.05)


def run_killing_agent_1(run_dir: Path, damage, *extra: str, node: str = "agent_1", config: str = "configs/tiny_ring.yaml",
                        roles: str = "[agent, learner]", kill_at_step: int = KILL_AT_STEP) -> tuple[int, str, list[dict]]:
    """Run tiny_ring with agent_1 (or `node` of `config`) killed at step 30 (`kill_at_step`);
    `damage(node_dir)` runs once it has exited, before the restart. Returns the orchestrator's
    exit code, its stderr and the events."""
    process = orchestrate(
        # Enough steps after the kill that the run is still going when the restart comes, on an
        # idle machine too (120 steps ended within the backoff there).
        "up", config, "--run-dir", str(run_dir), "--set", f"run.steps={STEPS}",
        "--set", "env.eval_every_steps=400",
        "--set", "agents.checkpoint_every_steps=10", "--set", "agents.replay_save_every_steps=10",
        "--set", f"faults.schedule=[{{at_step: {kill_at_step}, kind: kill, nodes: [{node}]}}]",
        "--set", "env.step_deadline_s=1.0",
        "--set", f"faults.restart={{policy: on-failure, max_restarts: 3, backoff_s: 1.5, roles: {roles}}}", *extra,
    )  # fmt: skip
    wait_for_exit(run_dir, process, node)
    damage(run_dir / "nodes" / node)
    assert not any(e["event"] == "restarted" for e in read_events(run_dir)), "restarted before the files were damaged"
    _, stderr = process.communicate(timeout=200)
    return process.returncode, stderr.decode(), read_events(run_dir)


def halve_every_checkpoint(node_dir: Path) -> dict[str, bytes]:
    """Cut each of the node's checkpoints to half its size (its seal gone: no good generation is
    left); returns what each halved file now holds, by name."""
    halved = {}
    for checkpoint in (node_dir / "checkpoints").glob("step-*.pt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
        halved[checkpoint.name] = checkpoint.read_bytes()
    return halved


def assert_every_process_reaped(events: list[dict]) -> None:
    """Every process the run launched or restarted is gone."""
    assert_all_reaped(launched_pids(events) | {e["node"]: e["pid"] for e in events if e["event"] == "restarted"})


def newest(directory: Path, suffix: str) -> Path:
    return max(directory.glob(f"step-*{suffix}"), key=lambda path: path.name)


def test_a_checkpoint_cut_to_half_and_random_replay_bytes_fall_back_to_the_older_generation(tmp_path):
    run_dir = tmp_path / "run"
    damaged: dict[str, Path] = {}

    def damage(node_dir: Path) -> None:
        damaged["checkpoint"] = checkpoint = newest(node_dir / "checkpoints", ".pt")
        damaged["replay"] = replay = newest(node_dir / "replay", ".npz")
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
        replay.write_bytes(np.random.default_rng(0).bytes(replay.stat().st_size))
        damaged["bytes"] = checkpoint.read_bytes()

    code, stderr, events = run_killing_agent_1(run_dir, damage)
    assert code == 0, stderr[-3000:]
    mine = [e for e in events if e["node"] == "agent_1"]
    assert [e["event"] for e in mine].count("restarted") == 1
    # Said to the orchestrator (an event), on the terminal and in the report, naming the files.
    said = next(e["what"] for e in mine if e["event"] == "state_damaged")
    assert str(damaged["checkpoint"]) in said and str(damaged["replay"]) in said and "steps of learning lost" in said
    assert f"node agent_1 restored older saved state: {said}" in stderr
    report = " ".join((run_dir / "report" / "summary.md").read_text().split())  # the lines wrap
    assert f"agent_1: RESTORED OLDER SAVED STATE: {said}" in report
    log = (run_dir / "nodes" / "agent_1" / "log").read_text()
    assert "DAMAGED" in log and "no Parley seal" in log
    # The metrics say from which step and how much was lost; the run went on to its end.
    rows = node_metrics(run_dir, "agent_1")
    lost = next(r for r in rows if "persistence/steps_lost" in r)
    damaged_step = int(damaged["checkpoint"].name.split("-")[1].split(".")[0])
    assert lost["persistence/restored_from_step"] == damaged_step - 10 and lost["persistence/steps_lost"] == 10
    assert rows[-1]["step"] == STEPS
    # The damaged file is kept aside as it was; nothing wrote over it.
    kept = damaged["checkpoint"].with_name(damaged["checkpoint"].name + ".damaged")
    assert kept.read_bytes() == damaged["bytes"]
    assert not list((run_dir / "nodes" / "agent_1" / "checkpoints").glob(".*.tmp"))
    assert_every_process_reaped(events)


def test_no_good_generation_stops_the_node_naming_the_file_and_the_restart_policy_stops(tmp_path):
    run_dir = tmp_path / "run"
    before: dict[str, bytes] = {}

    def damage(node_dir: Path) -> None:
        halve_every_checkpoint(node_dir)
        before.update({p.name: p.read_bytes() for p in (node_dir / "checkpoints").iterdir() if p.is_file()})

    code, stderr, events = run_killing_agent_1(run_dir, damage)
    assert code == 1, stderr[-3000:]
    mine = [e for e in events if e["node"] == "agent_1"]
    kinds = [e["event"] for e in mine]
    assert kinds.count("restarted") == 1 and kinds.count("restart_scheduled") == 1, kinds  # no crash loop
    why = [line for line in stderr.splitlines() if line.startswith(("run failed", "node "))]
    assert [e["code"] for e in mine if e["event"] == "exited"][-1] == EXIT_DAMAGED_STATE, "\n".join(why)
    # One line on the terminal names the file and why; the files are as the damage left them.
    newest_name = max(before, key=lambda name: name if name.startswith("step-") else "")
    line = next(line for line in stderr.splitlines() if "damaged state file" in line)
    assert newest_name in line and "no Parley seal" in line and "no good generation is left" in line, line
    checkpoints = run_dir / "nodes" / "agent_1" / "checkpoints"
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir() if p.is_file()} == before
    assert_every_process_reaped(events)


def test_a_damaged_env_server_resume_point_stops_the_run_naming_it_never_a_return_to_step_0(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", "run.steps=100000",
        "--set", f"faults.schedule=[{{at_step: {KILL_AT_STEP}, kind: kill, nodes: [env]}}]",
        "--set", "faults.restart={policy: on-failure, roles: [env_server], max_restarts: 3, backoff_s: 1.5}",
    )  # fmt: skip
    wait_for_exit(run_dir, process, "env")
    resume = run_dir / "nodes" / "env" / "resume.bin"
    resume.write_bytes(np.random.default_rng(0).bytes(resume.stat().st_size))
    damaged = resume.read_bytes()
    assert not any(e["event"] == "restarted" for e in read_events(run_dir)), "restarted before the file was damaged"
    _, stderr = process.communicate(timeout=200)
    stderr = stderr.decode()
    events = read_events(run_dir)
    assert process.returncode == 1, stderr[-3000:]
    env = [e for e in events if e["node"] == "env"]
    assert [e["code"] for e in env if e["event"] == "exited"] == [-9, EXIT_DAMAGED_STATE]
    assert [e["event"] for e in env].count("restarted") == 1  # not restarted again: no crash loop
    assert not [e for e in events if e["event"] == "env_server_resumed"], "the run did not go on from step 0"
    assert f"damaged state file {resume}: no valid resume point in either slot" in stderr, stderr[-3000:]
    assert "refused to start from damaged saved state" in stderr
    assert resume.read_bytes() == damaged
    assert_every_process_reaped(events)


def test_with_start_fresh_an_agent_with_no_good_generation_starts_from_scratch_and_the_report_says_so(tmp_path):
    run_dir = tmp_path / "run"
    before: dict[str, bytes] = {}

    def damage(node_dir: Path) -> None:
        before.update(halve_every_checkpoint(node_dir))

    code, stderr, events = run_killing_agent_1(run_dir, damage, "--set", "run.on_corrupt_state=start_fresh")
    assert code == 0, stderr[-3000:]
    mine = [e for e in events if e["node"] == "agent_1"]
    assert [e["event"] for e in mine].count("restarted") == 1
    said = next(e for e in mine if e["event"] == "state_damaged")
    assert said["started_fresh"] is True and "started from scratch (run.on_corrupt_state: start_fresh)" in said["what"]
    assert all(name in said["what"] for name in before), said["what"]
    assert f"node agent_1 STARTED FROM SCRATCH over damaged saved state: {said['what']}" in stderr
    report = " ".join((run_dir / "report" / "summary.md").read_text().split())
    assert f"agent_1: STARTED FROM SCRATCH OVER DAMAGED SAVED STATE: {said['what']}" in report
    from orchestrator import report as reporting

    assert reporting.summarize_run(run_dir)["headline"]["state_started_fresh"] == 1.0
    rows = node_metrics(run_dir, "agent_1")
    fresh = next(r for r in rows if "persistence/started_fresh" in r)
    assert fresh["persistence/started_fresh"] == 1.0 and fresh["persistence/restored_from_step"] == 0
    assert fresh["persistence/steps_lost"] == max(int(name.split("-")[1].split(".")[0]) for name in before)
    assert rows[-1]["step"] == STEPS
    # Every damaged generation is kept aside, byte for byte; the new saves are beside them.
    checkpoints = run_dir / "nodes" / "agent_1" / "checkpoints"
    assert {p.name.removesuffix(".damaged"): p.read_bytes() for p in checkpoints.glob("*.damaged")} == before
    assert_every_process_reaped(events)


def test_a_learner_node_restarted_over_a_damaged_checkpoint_falls_back_to_the_older_generation(tmp_path):
    run_dir = tmp_path / "run"
    damaged: dict[str, Path] = {}

    def damage(node_dir: Path) -> None:
        generations = sorted((node_dir / "checkpoints").glob("step-*.pt"))
        assert len(generations) >= 2, f"only {[g.name for g in generations]} saved before the kill: nothing older to fall back to"
        damaged["checkpoint"] = checkpoint = newest(node_dir / "checkpoints", ".pt")
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
        damaged["bytes"] = checkpoint.read_bytes()

    # The learner's checkpoint clock is the newest env step of the rows it has taken in, which
    # lag the lockstep by up to an episode or more under load: at step 30 it had once saved only
    # its first checkpoint (step 0, load ~10), so it is killed later than the agents are.
    code, stderr, events = run_killing_agent_1(run_dir, damage, node="learner", config="configs/tiny_qmix.yaml",
                                               kill_at_step=200)
    assert code == 0, stderr[-3000:]
    mine = [e for e in events if e["node"] == "learner"]
    assert [e["event"] for e in mine].count("restarted") == 1
    said = next(e["what"] for e in mine if e["event"] == "state_damaged")
    assert str(damaged["checkpoint"]) in said and "no Parley seal" in said and "env steps of learning lost" in said
    assert f"node learner restored older saved state: {said}" in stderr
    report = " ".join((run_dir / "report" / "summary.md").read_text().split())
    assert f"learner: RESTORED OLDER SAVED STATE: {said}" in report
    rows = node_metrics(run_dir, "learner")
    lost = next(r for r in rows if "persistence/steps_lost" in r)
    damaged_step = int(damaged["checkpoint"].name.split("-")[1].split(".")[0])
    assert 0 < lost["persistence/restored_from_step"] < damaged_step
    assert lost["persistence/steps_lost"] == damaged_step - lost["persistence/restored_from_step"]
    assert lost["persistence/started_fresh"] == 0.0
    kept = damaged["checkpoint"].with_name(damaged["checkpoint"].name + ".damaged")
    assert kept.read_bytes() == damaged["bytes"]
    assert_every_process_reaped(events)
