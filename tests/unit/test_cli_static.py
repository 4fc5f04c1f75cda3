"""`orchestrate` verbs that launch nothing: validate, graph, up --dry-run, status, logs, down.

The first group runs `python -m orchestrator` in a subprocess, as a user would; the run-dir
verbs are driven through `main()` on hand-made run directories.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from tests.conftest import reaped

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_ring.yaml"
RING = ROOT / "configs" / "4agents_ring.yaml"


def orchestrate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


# ------------------------------------------------------------------------------ subprocesses


def test_validate_ok(tmp_path: Path) -> None:
    result = orchestrate("validate", str(RING), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 4agents_ring, 4 agents, topology ring (4 edges)")


def test_validate_error_exits_2_with_the_problems_on_stderr(tmp_path: Path) -> None:
    result = orchestrate(
        "validate", str(TINY), "--set", "agents.lerner=1", "--set", "run.steps=-1", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "run.steps: expected greater than 0, got -1 (int)" in result.stderr
    assert "agents.lerner: unknown key; valid keys: count, learner" in result.stderr


def test_graph_prints_edges(capsys) -> None:
    assert main(["graph", str(RING)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "agent_0 -- agent_1",
        "agent_0 -- agent_3",
        "agent_1 -- agent_2",
        "agent_2 -- agent_3",
    ]


def test_graph_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "ring.png"
    result = orchestrate("graph", str(RING), "--set", "topology.kind=full", "--png", str(png), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 6  # K4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 1000


def test_graph_png_lays_a_torus_out_as_its_lattice() -> None:
    from orchestrator.cli import topology_positions
    from orchestrator.config import load_config

    torus = load_config(str(RING), ["agents.count=16", "env.kwargs.N=16", "topology={kind: torus, rows: 4, cols: 4}"])
    positions = topology_positions(torus)
    assert positions[0] == (0.0, 0.0) and positions[5] == (1.0, -1.0) and positions[15] == (3.0, -3.0)
    exponential = load_config(str(RING), ["agents.count=16", "env.kwargs.N=16", "topology.kind=exponential"])
    spread = topology_positions(exponential)
    assert len(set(spread.values())) == 16  # a force-directed layout: no two agents on one spot


def test_version_and_a_closed_pipe(tmp_path: Path) -> None:
    version = orchestrate("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("orchestrate (parley ")
    # `orchestrate graph ... | head -1`: the reader leaves after one line; no traceback, exit 0.
    pipeline = subprocess.run(
        f"{sys.executable} -m orchestrator graph {RING} --set agents.count=64 --set env.kwargs.N=64 | head -1; "
        "echo rc=${PIPESTATUS[0]}",
        shell=True, executable="/bin/bash", cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert pipeline.stdout.splitlines() == ["agent_0 -- agent_1", "rc=0"], pipeline
    assert "Traceback" not in pipeline.stderr and "BrokenPipe" not in pipeline.stderr, pipeline.stderr


def test_an_env_name_typo_gets_a_suggestion(tmp_path: Path) -> None:
    result = orchestrate("validate", str(TINY), "--set", "env.name=mpe2.simple_sprad_v3", cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'mpe2.simple_spread_v3'?" in result.stderr


def test_up_dry_run_writes_resolved_yaml_and_prints_the_plan(tmp_path: Path) -> None:
    result = orchestrate("up", str(TINY), "--dry-run", "--set", "run.seed=7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny_ring").iterdir()
    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    assert resolved["run"]["seed"] == 7
    assert resolved["runtime"]["run_dir"] == str(run_dir)
    assert set(resolved["nodes"]) == {"env", "agent_0", "agent_1", "agent_2"}
    for node in ("env", "agent_0", "agent_1", "agent_2"):
        assert f"--node-id {node} " in result.stdout
    assert "dry run: nothing launched" in result.stdout
    assert not (run_dir / "events.jsonl").exists() and not (run_dir / "orchestrator.pid").exists()


def test_up_with_a_bad_config_creates_nothing(tmp_path: Path) -> None:
    result = orchestrate("up", str(TINY), "--dry-run", "--set", "topology.kind=hypercube", cwd=tmp_path)
    assert result.returncode == 2
    assert "topology.kind: expected one of 'ring', 'line'" in result.stderr
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ in-process verbs


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["validate", str(TINY), "--set", "no-equals-sign"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:  # argparse's own usage errors
        main(["frobnicate"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_up_dry_run_plans_network_faults(tmp_path: Path, capsys) -> None:
    schedule = ("[{at_s: 1, kind: partition, nodes: [agent_0]}, {at_s: 2, kind: link, edges: [[agent_1, env]], link: {loss: 0.1}},"
                " {at_s: 3, kind: heal}]")
    assert main(["up", str(TINY), "--dry-run", "--run-dir", str(tmp_path / "run"), "--set", f"faults.schedule={schedule}"]) == 0
    out = capsys.readouterr().out
    assert "fault      +1s partition agent_0 (by nodes) groups agent_0 | env, agent_1, agent_2" in out
    assert "fault      +2s link env, agent_1 (by edges) edges agent_1->env, env->agent_1 set to {'loss': 0.1}" in out
    assert "fault      +3s heal - (by all)" in out


def test_up_into_a_non_empty_run_dir_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("")
    assert main(["up", str(TINY), "--dry-run", "--run-dir", str(tmp_path / "run")]) == 2
    assert "expected a new or empty directory" in capsys.readouterr().err


@pytest.fixture
def finished_run(tmp_path: Path, capsys) -> Path:
    """A dry-run directory filled with what a finished run leaves behind."""
    run_dir = tmp_path / "runs" / "tiny_ring" / "20250101-000000"
    assert main(["up", str(TINY), "--dry-run", "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    events = [
        {"t": 100.0, "event": "run_started", "node": None},
        {"t": 101.0, "event": "launched", "node": "env", "pid": 11},
        {"t": 101.5, "event": "launched", "node": "agent_0", "pid": 12},
        {"t": 130.0, "event": "exited", "node": "agent_0", "code": 0, "expected": True},
        {"t": 131.0, "event": "exited", "node": "env", "code": 3, "expected": False},
        {"t": 132.0, "event": "run_finished", "node": None, "exit_code": 1, "reason": "env exited with code 3"},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    metrics = [
        {"step": 10, "env/episode": 1, "env/episode_return": -3.0},
        {"step": 50, "env/episode": 1600.0, "env/episode_return": -1.25},
        {"step": 60, "dqn/loss": 0.5},  # the latest line need not carry every column
    ]
    (run_dir / "nodes" / "agent_0" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run_dir / "nodes" / "agent_0" / "log").write_text("".join(f"line {i}\n" for i in range(100)))
    # A pid that no longer exists: a reaped child.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (run_dir / "orchestrator.pid").write_text(f"{child.pid}\n")
    return run_dir


def test_status_summarises_events_and_metrics(finished_run: Path, capsys) -> None:
    assert main(["status", str(finished_run.parent)]) == 0  # runs/<name> means its latest run
    out = capsys.readouterr().out
    assert f"run      {finished_run}" in out
    assert "state    ended, exit 1: env exited with code 3" in out  # why it failed, not only that it ended
    assert "last run event: run_finished at +32.0s" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("env ", "agent_"))}
    assert rows["agent_0"] == ["agent_0", "exited", "+30.0s", "0", "60", "1600", "-1.25"]  # not 1.6e+03
    assert rows["env"][:4] == ["env", "exited", "+31.0s", "3"]
    assert rows["agent_2"] == ["agent_2", "-", "-", "-", "-", "-", "-"]


def test_logs_prints_the_tail(finished_run: Path, capsys) -> None:
    assert main(["logs", str(finished_run), "agent_0", "-n", "3"]) == 0
    assert capsys.readouterr().out == "line 97\nline 98\nline 99\n"
    assert main(["logs", str(finished_run), "agent_0", "-n", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 100
    # --follow returns once the orchestrator is gone and the file stopped growing.
    assert main(["logs", str(finished_run), "agent_0", "-n", "1", "--follow"]) == 0
    assert capsys.readouterr().out == "line 99\n"


def test_orchestrate_started_with_sigint_ignored_still_stops_on_it(finished_run: Path) -> None:
    # A shell without job control starts `orchestrate ... &` with SIGINT ignored, and a sweep run
    # that way stops its runs with SIGINT: one that came while a run was starting was lost, and
    # the run went on to its budget. Here `logs --follow` waits on a live orchestrator (a stand-in
    # process) when the signal comes; ignoring it, it would follow forever.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "orchestrator-stand-in"])
    (finished_run / "orchestrator.pid").write_text(str(stand_in.pid))
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "logs", str(finished_run), "agent_0", "-n", "1", "--follow"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert process.stdout.readline() == b"line 99\n"
        time.sleep(1.0)  # following now (it looks every 0.5 s)
        assert process.poll() is None, "it stopped following while the orchestrator lives"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) in (0, 130)  # 0: Ctrl-C ends a follow quietly
    finally:
        for child in (process, stand_in):
            child.kill()
            child.communicate()


def test_logs_unknown_node_and_missing_log(finished_run: Path, capsys) -> None:
    assert main(["logs", str(finished_run), "agent_9"]) == 2
    assert "no node 'agent_9'" in capsys.readouterr().err
    assert main(["logs", str(finished_run), "agent_1"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_down_on_an_ended_run(finished_run: Path, capsys) -> None:
    assert main(["down", str(finished_run)]) == 0
    assert "already ended" in capsys.readouterr().out


def test_down_on_a_dry_run(tmp_path: Path, capsys) -> None:
    assert main(["up", str(TINY), "--dry-run", "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["down", str(tmp_path / "run")]) == 0
    assert "never launched" in capsys.readouterr().out


@pytest.mark.timeout(30)
def test_down_sends_sigterm_to_a_live_orchestrator(finished_run: Path, capsys) -> None:
    # A stand-in process whose command line names the orchestrator, as `orchestrate up` does.
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; time.sleep(30)", "orchestrator-stand-in"]
    )
    with reaped(stand_in):
        (finished_run / "orchestrator.pid").write_text(f"{stand_in.pid}\n")
        assert main(["status", str(finished_run)]) == 0
        assert f"running (orchestrator pid {stand_in.pid})" in capsys.readouterr().out
        started = time.monotonic()
        assert main(["down", str(finished_run), "--wait", "10"]) == 0
        out = capsys.readouterr().out
        assert f"sent SIGTERM to the orchestrator (pid {stand_in.pid})" in out
        assert "the run has stopped" in out
        assert stand_in.wait(timeout=5) == -signal.SIGTERM
        assert time.monotonic() - started < 10


def test_run_dir_verbs_on_a_missing_directory(tmp_path: Path, capsys) -> None:
    for verb in (["status"], ["down"], ["logs"]):
        args = [*verb, str(tmp_path / "nowhere")] + (["env"] if verb == ["logs"] else [])
        assert main(args) == 2
        assert "run directory not found" in capsys.readouterr().err
