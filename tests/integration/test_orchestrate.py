"""`orchestrate up` end to end: real processes, real sockets, a real run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, reaped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def orchestrate(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )


def finished_ok(process: subprocess.Popen, timeout_s: float) -> bytes:
    """Wait for `orchestrate` to exit, assert it exited 0 (showing the end of its stderr if not),
    and return its stderr."""
    _, stderr = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return stderr


def stderr_after_exit(process: subprocess.Popen, timeout_s: float) -> bytes:
    """Wait for `orchestrate` to exit and return its stderr; killed if it outlives `timeout_s`."""
    with reaped(process):
        _, stderr = process.communicate(timeout=timeout_s)
    return stderr


def run_to_its_end(run_dir: Path, config: str, *settings: str) -> list[dict]:
    """Run `config`, with each of `settings` as a `--set`, to its end (exit 0 within 150 s);
    returns its events."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    finished_ok(orchestrate("up", config, "--run-dir", str(run_dir), *sets), timeout_s=150)
    return read_events(run_dir)


def run_restarting_the_env_server(run_dir: Path, config: str, at_step: int, *settings: str, timeout_s: float) -> list[dict]:
    """Run `config`, with each of `settings` as a `--set`, its env server restarted at `at_step`
    (restart policy on-failure, 0.2 s backoff), to a clean exit within `timeout_s`; returns its
    events, once checked that the env server, and only it, was restarted."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    process = orchestrate(
        "up", config, "--run-dir", str(run_dir), *sets,
        "--set", f"faults.schedule=[{{at_step: {at_step}, kind: restart, nodes: [env]}}]",
        "--set", "faults.restart={policy: on-failure, roles: [env_server], backoff_s: 0.2}",
    )  # fmt: skip
    finished_ok(process, timeout_s=timeout_s)
    events = read_events(run_dir)
    assert [e["node"] for e in events if e["event"] == "restarted"] == ["env"]
    return events


def node_metrics(run_dir: Path, node: str) -> list[dict]:
    """Every metrics record `node` of the run wrote (nodes/<node>/metrics.jsonl), in order."""
    return [json.loads(line) for line in (run_dir / "nodes" / node / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(run_dir: Path, event: str, process: subprocess.Popen, timeout_s: float = 90) -> list[dict]:
    """Poll the event log (the orchestrator's own record) until `event` appears."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = read_events(run_dir)
        if any(e["event"] == event for e in events):
            return events
        assert process.poll() is None, f"orchestrator exited early: {process.communicate()[1].decode()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {event!r} event within {timeout_s} s; events: {[e['event'] for e in read_events(run_dir)]}")


def launched_pids(events: list[dict]) -> dict[str, int]:
    return {e["node"]: e["pid"] for e in events if e["event"] == "launched"}


def kill_once_started(process: subprocess.Popen, run_dir: Path, node: str, *, start_timeout_s: float = 90,
                      exit_timeout_s: float = 60) -> bytes:
    """SIGKILL `node` once the run has started, and return the orchestrator's stderr after it
    exits (it is killed if it outlives `exit_timeout_s`)."""
    with reaped(process):
        events = wait_for_event(run_dir, "started", process, timeout_s=start_timeout_s)
        os.kill(launched_pids(events)[node], signal.SIGKILL)
        _, stderr = process.communicate(timeout=exit_timeout_s)
    return stderr


def assert_all_reaped(pids: dict[str, int]) -> None:
    for node, pid in pids.items():
        cmdline = Path(f"/proc/{pid}/cmdline")
        comm = Path(f"/proc/{pid}/comm")
        try:
            # A spawned node has its argv; a forked one the zygote's argv and the name "parley:<id>".
            survivor = b"--node-id" in cmdline.read_bytes() or comm.read_text().startswith("parley:")
        except OSError:
            survivor = False  # gone
        assert not survivor, f"{node} (pid {pid}) survived the run"


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_up_runs_a_tiny_ring_to_completion(tmp_path, transport):
    run_dir = tmp_path / "run"
    events = run_to_its_end(run_dir, "configs/tiny_ring.yaml", f"env.transport={transport}")
    nodes = {"env", "agent_0", "agent_1", "agent_2"}
    for kind in ("launched", "registered", "ready", "exited"):
        assert {e["node"] for e in events if e["event"] == kind} == nodes, kind
    assert all(e["code"] == 0 for e in events if e["event"] == "exited")
    assert [e["event"] for e in events if e["node"] is None][-1] == "run_finished"
    assert (run_dir / "resolved.yaml").is_file()
    for agent in sorted(nodes - {"env"}):
        node_dir = run_dir / "nodes" / agent
        records = [json.loads(line) for line in (node_dir / "metrics.jsonl").read_text().splitlines()]
        returns = [r for r in records if "env/episode_return" in r]
        # 60 lockstep steps x 2 copies with 10-step episodes: 12 finished episodes per agent.
        assert len(returns) == 12 and all("step" in r for r in returns)
        # The update-ratio contract: counters at each evaluation's first step and at the end;
        # the run finishes every gradient step it owed.
        counters = [r for r in records if "dqn/steps_owed" in r]
        assert [r["step"] for r in counters] == [19, 39, 59, 60]
        assert counters[-1]["dqn/steps_pending"] == 0 and counters[-1]["dqn/gradient_steps"] > 0
        assert all(r["dqn/steps_pending"] <= 64 for r in counters)
        assert (node_dir / "checkpoints" / "latest.pt").is_file()
        assert (node_dir / "replay" / "buffer.npz").is_file()
        assert "state running -> draining" in (node_dir / "log").read_text()
        # The lockstep's bodies went the way env.transport says (protocols/net/shm_lockstep.py).
        assert f"lockstep bodies: {'shm' if transport == 'shm' else 'zmq packed'}" in (node_dir / "log").read_text()
        assert list((run_dir / "tb" / agent).glob("events.out.tfevents.*")), "TensorBoard event file"
    env_rows = node_metrics(run_dir, "env")
    evaluations = [row for row in env_rows if "eval/return_mean" in row]  # besides link/ counters
    assert [(e["step"], e["eval/episodes"]) for e in evaluations] == [(20, 2), (40, 2), (60, 2)]
    # TensorBoard has the env server (its evaluations and link counters) and the run's hparams.
    assert list((run_dir / "tb" / "env").glob("events.out.tfevents.*")), "the env server's TensorBoard file"
    assert list((run_dir / "tb" / "hparams").glob("events.out.tfevents.*")), "the run's hparams"
    # The random line, measured by the env server on the same evaluation episodes (tiny_ring is
    # simple_spread N=3: its oracle too).
    (baselines,) = [row for row in env_rows if "eval/random_return_mean" in row]
    assert baselines["step"] == 20 and baselines["eval/oracle_return_mean"] > baselines["eval/random_return_mean"]
    assert all(-100 < e["eval/return_mean"] < 0 for e in evaluations)
    assert_all_reaped(launched_pids(events))
    env_pid = launched_pids(events)["env"]
    assert not [p.name for p in Path("/dev/shm").glob(f"parley-*-{env_pid}-*")], "no shared-memory segment is left"


def test_up_over_tcp(tmp_path):
    run_dir = tmp_path / "run"
    registered = [e for e in run_to_its_end(run_dir, "configs/tiny_star_tcp.yaml") if e["event"] == "registered"]
    assert registered and all(ep.startswith("tcp://127.0.0.1:") for e in registered for ep in e["endpoints"].values())


def test_ctrl_c_stops_the_run_and_reaps_every_child(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", "run.steps=1000000")
    with reaped(process):
        events = wait_for_event(run_dir, "started", process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()[-3000:]
    events = read_events(run_dir)
    assert any(e["event"] == "interrupted" for e in events)
    assert {e["node"] for e in events if e["event"] == "exited"} == set(launched_pids(events))
    assert_all_reaped(launched_pids(events))


def test_a_node_that_dies_fails_the_run_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(run_dir), "--set", "run.steps=1000000")
    stderr = kill_once_started(process, run_dir, "agent_1")
    assert process.returncode == 1
    events = read_events(run_dir)
    assert "agent_1 exited unexpectedly" in stderr.decode() or any("agent_1" in str(e.get("reason", "")) for e in events)
    died = [e for e in events if e["event"] == "exited" and e["node"] == "agent_1"]
    assert died[0]["code"] == -signal.SIGKILL and died[0]["expected"] is False
    assert_all_reaped(launched_pids(events))


def test_up_with_a_bad_config_exits_2_naming_the_field(tmp_path):
    process = orchestrate("up", "configs/tiny_ring.yaml", "--run-dir", str(tmp_path / "run"), "--set", "agents.count=zero")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "agents.count" in stderr.decode()
    assert not (tmp_path / "run").exists()


@pytest.mark.long
def test_og_marl_agents_average_their_gp_world_models_by_consensus(tmp_path):
    """Three OG-MARL agents on a ring refit their GPs, average them over real sockets, imagine."""
    run_dir = tmp_path / "run"
    process = orchestrate("up", "configs/tiny_og_marl.yaml", "--run-dir", str(run_dir))
    stderr = finished_ok(process, timeout_s=170)
    finals = {}
    for agent in ("agent_0", "agent_1", "agent_2"):
        records = node_metrics(run_dir, agent)
        rounds = [r for r in records if "consensus/round" in r]
        adoptions = [r for r in records if "og_marl/model_buffer_size" in r]
        # Refreshes at rows 40, 60, 80 of a 90-step run, each with 20 consensus rounds.
        assert [r["og_marl/refreshes"] for r in adoptions] == [1.0, 2.0, 3.0]
        assert all(r["og_marl/shared"] == 1.0 and r["og_marl/model_buffer_size"] > 0 for r in adoptions)
        assert len(rounds) == 3 * 20 and not any(r["consensus/missing_neighbours"] for r in rounds)
        first, last = rounds[0], rounds[19]
        # A 3-ring with Metropolis weights averages exactly in one round; later rounds only
        # carry rounding noise.
        assert last["consensus/disagreement_max"] < 1e-9 * max(1.0, first["consensus/disagreement_max"])
        finals[agent] = [r["og_marl/model_mse"] for r in adoptions]
    assert all(mse[-1] < 0.05 for mse in finals.values()), finals
    # The run says which code ran it (a seed fixes a run only for the same code).
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    code = next(e for e in events if e["event"] == "run_started")["code"]
    assert code["torch"] and code["python"] and code["parley"]
    assert code["git_commit"] is None or len(code["git_commit"]) == 40  # None outside a git checkout


@pytest.mark.long
def test_og_marl_agents_average_by_push_sum(tmp_path):
    """The same run with asynchronous push-sum instead of synchronous rounds: it runs to the end
    and every refresh logs the engine's summary (pushes made and applied, weight mass held)."""
    run_dir = tmp_path / "run"
    process = orchestrate(
        "up", "configs/tiny_og_marl.yaml", "--run-dir", str(run_dir), "--set", "protocols.consensus.mode=push_sum"
    )
    stderr = finished_ok(process, timeout_s=170)
    for agent in ("agent_0", "agent_1", "agent_2"):
        records = node_metrics(run_dir, agent)
        summaries = [r for r in records if "consensus/pushes" in r]
        adoptions = [r for r in records if "og_marl/model_buffer_size" in r]
        assert [r["og_marl/refreshes"] for r in adoptions] == [1.0, 2.0, 3.0]
        assert len(summaries) == 3
        for summary in summaries:
            assert summary["consensus/pushes"] > 0 and summary["consensus/applied"] > 0
            assert summary["consensus/missing_neighbours"] == 0
            assert 0 < summary["consensus/weight_mass"] < 3
