"""The launch plan, the run directory, the socket directory and the event log (no sockets)."""

from __future__ import annotations

import json
import stat
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.config import load_config, load_resolved
from orchestrator.plan import build_plan, format_plan
from orchestrator.rundir import (
    EventLog,
    RunDirError,
    create_run_dir,
    find_run_dir,
    prepare_run,
    read_jsonl,
    remove_temp_socket_dir,
)
from protocols.run.settings import IPC_ENDPOINT_MAX_BYTES, RunLayout, ipc_endpoint
from protocols.storage.jsonlines import latest_values

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_ring.yaml"


@pytest.fixture
def tiny():
    return load_config(TINY)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------ the plan


def test_plan_has_one_launch_per_node_with_the_right_argv(tiny, tmp_path: Path) -> None:
    resolved, run_dir = prepare_run(tiny, tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    assert [node.node_id for node in plan.nodes] == ["env", "agent_0", "agent_1", "agent_2"]
    assert len(plan.nodes) == tiny.agents.count + 1
    control = f"ipc://{run_dir}/sock/orchestrator.control"
    assert plan.control_endpoint == control
    for node in plan.nodes:
        module = "env_server" if node.node_id == "env" else "agent_node"
        assert node.argv == (
            sys.executable, "-m", module,
            "--config", str(run_dir / "resolved.yaml"),
            "--node-id", node.node_id,
            "--control", control,
        )  # fmt: skip
        assert node.env["OMP_NUM_THREADS"] == "1"
        assert node.env["MKL_NUM_THREADS"] == "1"
        assert node.env["PYTHONUNBUFFERED"] == "1"
        assert node.log_path == run_dir / "nodes" / node.node_id / "log"
        assert node.seed == resolved.nodes[node.node_id].seed
    assert plan.node("agent_1").role == "agent"
    assert plan.node("env").role == "env_server"
    with pytest.raises(KeyError, match="no node 'agent_9'"):
        plan.node("agent_9")


def test_agent_threads_follow_the_config(tmp_path: Path) -> None:
    config = load_config(TINY, ["agents.torch_threads=2"])
    resolved, run_dir = prepare_run(config, tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    assert plan.node("agent_0").env["OMP_NUM_THREADS"] == "2"
    assert plan.node("env").env["OMP_NUM_THREADS"] == "1"


def test_plan_needs_a_resolved_config(tiny, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a resolved config"):
        build_plan(tiny, tmp_path)


def test_plan_refuses_a_mismatched_run_dir(tiny, tmp_path: Path) -> None:
    resolved, _ = prepare_run(tiny, tmp_path / "run")
    with pytest.raises(ValueError, match="is not the config's runtime.run_dir"):
        build_plan(resolved, tmp_path / "elsewhere")


def test_tcp_plan_binds_a_free_port_and_can_be_finalized(tmp_path: Path) -> None:
    config = load_config(TINY, ["network.transport=tcp"])
    resolved, run_dir = prepare_run(config, tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    assert plan.socket_dir is None and resolved.runtime.socket_dir is None
    assert not (run_dir / "sock").exists()
    assert plan.control_endpoint == "tcp://127.0.0.1:0"
    assert not plan.control_endpoint_is_final
    final = plan.with_control_endpoint("tcp://127.0.0.1:45678")
    assert final.control_endpoint_is_final
    for node in final.nodes:
        assert node.argv[node.argv.index("--control") + 1] == "tcp://127.0.0.1:45678"
        assert node.argv[-2:] == ("--control", "tcp://127.0.0.1:45678")
    assert plan.nodes[0].argv[-1] == "tcp://127.0.0.1:0"  # the original is unchanged


# ------------------------------------------------------------------------------ socket directory


def test_socket_dir_lives_in_the_run_dir_with_mode_0700(tiny, tmp_path: Path) -> None:
    resolved, run_dir = prepare_run(tiny, tmp_path / "run")
    assert resolved.runtime.socket_dir == str(run_dir / "sock")
    assert resolved.runtime.socket_dir_is_temp is False
    assert mode_of(run_dir / "sock") == 0o700


def test_long_run_dir_moves_sockets_to_a_short_temp_dir(tiny, tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 60) / ("y" * 60)
    resolved, run_dir = prepare_run(tiny, long_dir)
    layout = resolved.runtime
    try:
        assert len(ipc_endpoint(str(run_dir / "sock"), "agent_10", "peer").encode()) > IPC_ENDPOINT_MAX_BYTES
        assert layout.socket_dir_is_temp is True
        socket_dir = Path(layout.socket_dir)
        assert socket_dir.parent == Path(tempfile.gettempdir())
        assert socket_dir.name.startswith("parley-")
        assert mode_of(socket_dir) == 0o700
        assert not (run_dir / "sock").exists()
        # Recorded for the nodes, and shown by the plan.
        assert load_resolved(run_dir / "resolved.yaml").runtime == layout
        plan = build_plan(resolved, run_dir)
        assert plan.socket_dir == socket_dir and plan.socket_dir_is_temp
        assert plan.control_endpoint.startswith(f"ipc://{socket_dir}/")
        assert "temporary" in format_plan(plan)
        assert len(ipc_endpoint(layout.socket_dir, "agent_10", "peer").encode()) <= IPC_ENDPOINT_MAX_BYTES
    finally:
        remove_temp_socket_dir(layout)
    assert not Path(layout.socket_dir).exists()


def test_remove_temp_socket_dir_leaves_run_dir_sockets_alone(tiny, tmp_path: Path) -> None:
    resolved, run_dir = prepare_run(tiny, tmp_path / "run")
    remove_temp_socket_dir(resolved.runtime)
    assert (run_dir / "sock").is_dir()


# ------------------------------------------------------------------------------ run directory


def test_run_dir_skeleton_and_no_reuse(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    first = create_run_dir(tiny, now=now)
    second = create_run_dir(tiny, now=now)
    third = create_run_dir(tiny, now=now)
    assert first == tmp_path / "runs" / "tiny_ring" / "20250102-030405"
    assert second.name == "20250102-030405-1" and third.name == "20250102-030405-2"
    for node in ("env", "agent_0", "agent_1", "agent_2"):
        assert (first / "nodes" / node).is_dir()
    assert (first / "nodes" / "agent_1" / "checkpoints").is_dir() and (first / "nodes" / "agent_1" / "replay").is_dir()
    assert (first / "tb").is_dir() and (first / "report").is_dir()


def test_explicit_run_dir_must_be_new_or_empty(tiny, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert create_run_dir(tiny, empty) == empty
    with pytest.raises(RunDirError, match="expected a new or empty directory"):
        create_run_dir(tiny, empty)  # now it holds the skeleton


@pytest.mark.parametrize("where", ["root", "name"])
def test_a_run_root_that_is_a_file_is_a_run_dir_error_naming_it(tiny, tmp_path: Path, where: str) -> None:
    # run.root itself a file, or a file where <run.root>/<run.name> should be a directory.
    root = tmp_path / "root"
    if where == "root":
        root.write_text("a file")
    else:
        root.mkdir()
        (root / "tiny_ring").write_text("a file")
    with pytest.raises(RunDirError, match=f"run.root {root}: cannot create {root}/tiny_ring/"):
        create_run_dir(tiny.model_copy(update={"run": tiny.run.model_copy(update={"root": str(root)})}))


def test_find_run_dir_picks_the_latest_run(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "tiny_ring"
    for name in ("20250101-000000", "20250101-000000-2", "20250101-000000-10", "20241231-235959"):
        (runs / name).mkdir(parents=True)
        (runs / name / "resolved.yaml").write_text("")
    assert find_run_dir(runs) == runs / "20250101-000000-10"
    assert find_run_dir(runs / "20241231-235959") == runs / "20241231-235959"
    with pytest.raises(RunDirError, match="not found"):
        find_run_dir(tmp_path / "nothing")
    with pytest.raises(RunDirError, match="found neither"):
        find_run_dir(tmp_path)


def test_find_run_dir_prefers_a_launched_run_to_a_later_dry_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "tiny_ring"
    for name in ("20250101-000000", "20250102-000000"):
        (runs / name).mkdir(parents=True)
        (runs / name / "resolved.yaml").write_text("")
    (runs / "20250101-000000" / "orchestrator.pid").write_text("1234")  # launched; the later one a dry run
    assert find_run_dir(runs) == runs / "20250101-000000"
    (runs / "20250101-000000" / "orchestrator.pid").unlink()  # no run was launched: the latest of all
    assert find_run_dir(runs) == runs / "20250102-000000"


def test_nodes_keep_every_entry_of_the_users_pythonpath(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.plan import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    # The repository root first, as a user who runs from a checkout often has it: their own env
    # module's directory after it must reach the nodes too.
    monkeypatch.setenv("PYTHONPATH", f"{PROJECT_ROOT}:/opt/my_envs::/opt/my_plugins")
    resolved, run_dir = prepare_run(tiny, tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    for node in plan.nodes:
        assert node.env["PYTHONPATH"] == f"{PROJECT_ROOT}:/opt/my_envs:/opt/my_plugins"


# ------------------------------------------------------------------------------ event log


def test_event_log_appends_flushed_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.write("launched", "agent_0", pid=123, argv=("python", "-m", "agent_node"))
    # Flushed per line: readable before the log is closed.
    records = read_jsonl(path)
    assert len(records) == 1
    assert records[0]["event"] == "launched" and records[0]["node"] == "agent_0" and records[0]["pid"] == 123
    assert isinstance(records[0]["t"], float)
    log.write("run_finished", None, exit_code=0, path=tmp_path)  # a Path is written as a string
    log.close()
    with EventLog(path) as again:  # appends, never truncates
        again.write("reopened")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["launched", "run_finished", "reopened"]
    assert json.loads(lines[1])["node"] is None and json.loads(lines[1])["path"] == str(tmp_path)
    with pytest.raises(ValueError, match="may not be named"):
        EventLog(path).write("x", t=1)


def test_jsonl_readers_skip_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "ret": -1}\n{"step": 2, "episode": 0}\n[1]\n{"step": 3, "epi')
    assert [record["step"] for record in read_jsonl(path)] == [1, 2]
    # Each key from the latest line that has it.
    assert latest_values(path, ("step", "episode", "ret", "absent")) == {"step": 2, "episode": 0, "ret": -1}
    assert latest_values(tmp_path / "missing.jsonl", ("step",)) == {}


# ------------------------------------------------------------------------------ printing


def test_format_plan_shows_every_node_and_command(tiny, tmp_path: Path) -> None:
    resolved, run_dir = prepare_run(tiny, tmp_path / "run")
    text = format_plan(build_plan(resolved, run_dir))
    assert f"run        {resolved.runtime.run_id}" in text
    assert f"sockets    ipc in {run_dir / 'sock'}" in text
    for node in ("env", "agent_0", "agent_1", "agent_2"):
        assert f"[{node}]" in text
        assert f"--node-id {node} " in text
    assert "-m env_server" in text and text.count("-m agent_node") == 3
    assert "OMP_NUM_THREADS=1" in text
