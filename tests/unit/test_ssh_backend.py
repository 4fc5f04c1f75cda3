"""The ssh backend's config checks and the commands it builds (no ssh is run here)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from orchestrator.config import validate_config
from orchestrator.plan import build_plan
from orchestrator.rundir import prepare_run
from orchestrator.runtime import with_host
from protocols.config_errors import ConfigError
from tests.conftest import REPO


def ssh_config(**launch_changes) -> dict:
    data = yaml.safe_load((REPO / "configs/tiny_star_tcp.yaml").read_text())
    data["network"] = {"transport": "tcp", "bind_host": "0.0.0.0"}
    host = {"address": "10.0.0.2", "user": "parley", "python": "/opt/venv/bin/python",
            "project_root": "/opt/parley", "workdir": "/srv/parley", "nodes": ["env", "agent_0", "agent_1", "agent_2"]}  # fmt: skip
    data["launch"] = {"backend": "ssh", "control_host": "10.0.0.1", "hosts": [host], "live_view": "off", **launch_changes}
    return data


def errors_of(data: dict) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(data)
    return str(raised.value)


def test_a_complete_ssh_config_validates():
    config = validate_config(ssh_config())
    assert config.launch.backend == "ssh"
    assert config.launch.hosts[0].destination() == "parley@10.0.0.2"


def test_ssh_refuses_ipc_and_a_shared_advertise_host():
    data = ssh_config()
    data["network"] = {"transport": "ipc"}
    assert "network.transport: expected 'tcp' with launch.backend 'ssh'" in errors_of(data)
    data["network"] = {"transport": "tcp", "bind_host": "0.0.0.0", "advertise_host": "10.0.0.9"}
    assert "network.advertise_host: expected none with launch.backend 'ssh'" in errors_of(data)


def test_every_node_is_placed_once_on_a_known_id():
    data = ssh_config()
    data["launch"]["hosts"][0]["nodes"] = ["env", "agent_0", "agent_1"]
    assert "missing ['agent_2']" in errors_of(data)
    data["launch"]["hosts"][0]["nodes"] = ["env", "agent_0", "agent_1", "agent_2", "agent_7"]
    assert "got unknown 'agent_7'" in errors_of(data)
    second = {**data["launch"]["hosts"][0], "address": "10.0.0.3", "nodes": ["agent_0"]}
    data["launch"]["hosts"] = [{**data["launch"]["hosts"][0], "nodes": ["env", "agent_0", "agent_1", "agent_2"]}, second]
    assert "'agent_0' is already placed on launch.hosts.0" in errors_of(data)


def test_ssh_needs_hosts_and_control_host_and_local_refuses_them():
    assert "launch.hosts: expected at least one host" in errors_of(ssh_config(hosts=[]))
    assert "launch.control_host: expected" in errors_of(ssh_config(control_host=None))
    data = ssh_config(backend="local")
    assert "only used with backend 'ssh'" in errors_of(data)
    assert "launch.ray: expected the cluster section" in errors_of(ssh_config(backend="ray"))


def test_with_host_replaces_only_tcp_hosts():
    assert with_host("tcp://0.0.0.0:41234", "10.0.0.2") == "tcp://10.0.0.2:41234"
    assert with_host("tcp://eth0:5555", "10.0.0.2") == "tcp://10.0.0.2:5555"
    assert with_host("ipc:///tmp/x/env.env", "10.0.0.2") == "ipc:///tmp/x/env.env"


def test_backend_ships_a_config_pointing_at_the_hosts_workdir_and_runs_the_node_there(tmp_path):
    from orchestrator.backends.ssh import SshBackend, ssh_argv
    from orchestrator.rundir import EventLog

    resolved, run_dir = prepare_run(validate_config(ssh_config()), tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    backend = SshBackend(resolved, EventLog(tmp_path / "events.jsonl"))
    shipped = yaml.safe_load(backend.shipped_config("agent_1"))
    remote_run_dir = f"/srv/parley/{resolved.runtime.run_id}"
    assert shipped["runtime"]["run_dir"] == remote_run_dir
    # Everything else is the launching machine's resolved.yaml unchanged.
    local = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    assert {k: v for k, v in shipped.items() if k != "runtime"} == {k: v for k, v in local.items() if k != "runtime"}

    command = backend.remote_command(plan.node("agent_1"))
    inner = shlex.split(command)[2]  # sh -c '<inner>'
    assert inner.startswith(f"echo $$ > {remote_run_dir}/nodes/agent_1/pid && cd {remote_run_dir} && exec env ")
    assert "PYTHONPATH=/opt/parley" in inner
    assert f"/opt/venv/bin/python -m agent_node --config {remote_run_dir}/resolved.yaml --node-id agent_1" in inner

    argv = ssh_argv(resolved.launch.hosts[0], "true")
    assert argv[0] == "ssh" and argv[-2:] == ["parley@10.0.0.2", "true"]
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv
    assert "ServerAliveCountMax=3" in argv  # alive_timeout_s 6 s at one probe every 2 s


def test_shipped_files_hold_the_nodes_own_key_only(tmp_path):
    import io
    import tarfile

    from orchestrator.backends.ssh import SshBackend
    from orchestrator.rundir import EventLog

    resolved, run_dir = prepare_run(validate_config(ssh_config()), tmp_path / "run")
    assert resolved.runtime.keys_dir, "orchestrate up makes keys for every run"
    backend = SshBackend(resolved, EventLog(tmp_path / "events.jsonl"))
    with tarfile.open(fileobj=io.BytesIO(backend.shipped_files("agent_1"))) as tar:
        names = sorted(tar.getnames())
        modes = {member.mode for member in tar.getmembers()}
        shipped = yaml.safe_load(tar.extractfile("resolved.yaml").read())
    assert names == ["keys/nodes/agent_1.json", "keys/public.json", "keys/run.json", "resolved.yaml"]
    assert modes == {0o600}
    assert shipped["runtime"]["keys_dir"] == f"/srv/parley/{resolved.runtime.run_id}/keys"
    local_key = Path(resolved.runtime.keys_dir) / "nodes" / "agent_1.json"
    assert local_key.exists()
