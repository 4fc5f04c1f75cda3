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
from protocols.run.config_errors import ConfigError
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
    backend = SshBackend(resolved.runtime, resolved.launch.hosts, EventLog(tmp_path / "events.jsonl"))
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
    backend = SshBackend(resolved.runtime, resolved.launch.hosts, EventLog(tmp_path / "events.jsonl"))
    with tarfile.open(fileobj=io.BytesIO(backend.shipped_files("agent_1"))) as tar:
        names = sorted(tar.getnames())
        modes = {member.mode for member in tar.getmembers()}
        shipped = yaml.safe_load(tar.extractfile("resolved.yaml").read())
    assert names == ["keys/nodes/agent_1.json", "keys/public.json", "keys/run.json", "resolved.yaml"]
    assert modes == {0o600}
    assert shipped["runtime"]["keys_dir"] == f"/srv/parley/{resolved.runtime.run_id}/keys"
    local_key = Path(resolved.runtime.keys_dir) / "nodes" / "agent_1.json"
    assert local_key.exists()


def ray_config(**launch_changes) -> dict:
    data = ssh_config()
    data["launch"] = {"backend": "ray", "control_host": "10.0.0.1", "live_view": "off",
                      "ray": {"address": "10.0.0.1:6379", "project_root": "/opt/parley"}, **launch_changes}  # fmt: skip
    return data


def test_a_loopback_bind_host_is_refused_where_nodes_are_advertised_at_another_address():
    # Nodes bound to 127.0.0.1 but advertised at their host's address: peers would stay connecting.
    for data in (ssh_config(), ray_config()):
        data["network"]["bind_host"] = "127.0.0.1"
        assert "network.bind_host: expected 0.0.0.0 or an interface the other machines reach" in errors_of(data)
    # ssh to this machine itself over loopback is one host: nothing to refuse.
    data = ssh_config()
    data["network"]["bind_host"] = "127.0.0.1"
    data["launch"]["hosts"][0]["address"] = "127.0.0.1"
    assert validate_config(data).network.bind_host == "127.0.0.1"


def test_ray_needs_its_section_and_a_control_host_and_other_backends_refuse_the_section():
    assert validate_config(ray_config()).launch.ray.address == "10.0.0.1:6379"
    assert "launch.control_host: expected the launching machine's address the Ray machines reach" in errors_of(
        ray_config(control_host=None)
    )
    assert "launch.ray: expected the cluster section" in errors_of(ray_config(ray=None))
    assert "launch.ray: only used with backend 'ray'" in errors_of(ssh_config(ray={"project_root": "/opt/parley"}))
    data = ray_config(backend="local", control_host=None)
    assert "only used with backend 'ssh' or 'ray'" in errors_of(data)
    data = ray_config()
    data["network"]["advertise_host"] = "10.0.0.9"
    assert "network.advertise_host: expected none with launch.backend 'ray'" in errors_of(data)


def test_a_shared_ray_workdir_is_for_the_restart_policy():
    data = ray_config()
    data["launch"]["ray"]["shared_workdir"] = True
    assert "launch.ray.shared_workdir: a shared workdir lets the restart policy start a lost machine's node" in errors_of(data)
    data["faults"] = {"restart": {"policy": "on-failure"}}
    assert validate_config(data).launch.ray.shared_workdir


def test_ray_backend_without_ray_installed_says_what_to_install(tmp_path):
    import subprocess
    import sys

    # `ray` made unimportable in the child (None in sys.modules), whether or not the extra is installed.
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from orchestrator.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "up", str(REPO / "configs/two_hosts_ssh.yaml"), "--set", "launch.backend=ray",
         "--set", "launch.hosts=[]", "--set", "launch.control_host=127.0.0.1", "--set", "launch.ray.project_root=/x",
         "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "launch.backend 'ray' needs Ray, which is not installed: pip install '.[ray]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_ship_command_renames_each_file_into_place_on_the_host(tmp_path, monkeypatch):
    """The command `start` runs on a host, run here by `sh` in place of ssh: it unpacks the node's
    files with Parley's unpacker (backends/shipping.py), so a second node on the same host
    replaces resolved.yaml by a rename (a new inode), never rewriting the file a node reads."""
    import subprocess
    import sys
    from types import SimpleNamespace

    import orchestrator.backends.ssh as ssh
    from orchestrator.rundir import EventLog

    data = ssh_config()
    data["launch"]["hosts"][0].update(python=sys.executable, project_root=str(REPO), workdir=str(tmp_path / "host"))
    resolved, run_dir = prepare_run(validate_config(data), tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    backend = ssh.SshBackend(resolved.runtime, resolved.launch.hosts, EventLog(tmp_path / "events.jsonl"))
    commands = []

    def run_here(host, command, stdin=b""):
        commands.append(command)
        subprocess.run(["sh", "-c", command], input=stdin, check=True, capture_output=True)
        return b""

    monkeypatch.setattr(ssh, "run_over_ssh", run_here)
    started = SimpleNamespace(pid=1, poll=lambda: None)  # the node itself is not run here
    monkeypatch.setattr(ssh, "subprocess", SimpleNamespace(Popen=lambda *args, **kwargs: started,
                                                           DEVNULL=subprocess.DEVNULL, STDOUT=subprocess.STDOUT))
    remote = Path(backend.remote_run_dir("agent_0"))
    inodes = []
    for node_id in ("agent_0", "agent_1"):
        backend.start(SimpleNamespace(launch=plan.node(node_id), process=None, log_file=None))
        inodes.append((remote / "resolved.yaml").stat().st_ino)
    assert all("-m orchestrator.backends.shipping" in command and "tar -x" not in command for command in commands)
    assert yaml.safe_load((remote / "resolved.yaml").read_text())["runtime"]["run_dir"] == str(remote)
    assert inodes[0] != inodes[1], "the second node's resolved.yaml was renamed over the first, not rewritten"
    assert sorted(p.name for p in (remote / "keys" / "nodes").iterdir()) == ["agent_0.json", "agent_1.json"]
    assert ((remote / "resolved.yaml").stat().st_mode & 0o777) == 0o600
    assert not [p for p in remote.rglob("*") if p.name.startswith(".")], "no staging file left"


# ------------------------------------------------------------------ a spare host for a lost one

def spare_config(**restart) -> dict:
    """Two hosts and a spare, one shared workdir, and a restart policy that uses the spare."""
    data = ssh_config()
    first = data["launch"]["hosts"][0]
    data["launch"]["hosts"] = [
        {**first, "nodes": ["env", "agent_0", "agent_2"]},
        {**first, "address": "10.0.0.3", "nodes": ["agent_1"]},
        {**{k: v for k, v in first.items() if k != "nodes"}, "address": "10.0.0.4", "spare": True},
    ]
    data["faults"] = {"restart": {"policy": "on-failure", **restart}}
    return data


def test_a_spare_host_validates_and_refuses_what_cannot_work():
    config = validate_config(spare_config())
    assert [host.spare for host in config.launch.hosts] == [False, False, True]
    data = spare_config()
    data["launch"]["hosts"][2]["nodes"] = ["agent_1"]
    assert "launch.hosts.2.nodes: a spare host (spare: true) starts nodes only in place of a lost host" in errors_of(data)
    data = spare_config()
    del data["launch"]["hosts"][2]["spare"]
    assert "launch.hosts.2.nodes: expected at least one node id, or spare: true" in errors_of(data)
    data = spare_config(policy="never")
    assert "launch.hosts.2.spare: a spare host takes the nodes of a lost host when the restart policy" in errors_of(data)
    data = spare_config()
    data["launch"]["hosts"][1]["workdir"] = "/local/parley"
    assert ("launch.hosts.1.workdir: with a spare host (launch.hosts.2) every host's workdir must be the one directory "
            "all hosts share") in errors_of(data)
    data = spare_config()
    data["launch"]["backend"] = "local"
    assert "launch.hosts: only used with backend 'ssh' (a spare host stands by for a lost machine of an ssh launch), got backend 'local'" in errors_of(data)


class FakeHosts:
    """`run_over_ssh` in place: the hosts in `down` cannot be reached (ssh exits 255), the others
    run each command here with sh (one file system: a shared workdir)."""

    def __init__(self, down=()):
        self.down = set(down)
        self.tried: list[str] = []

    def __call__(self, host, command, stdin=b""):
        import subprocess

        from orchestrator.backends.ssh import SshError

        self.tried.append(host.address)
        if host.address in self.down:
            raise SshError(f"host {host.address}: {command!r} exited 255: Connection refused", unreachable=True)
        return subprocess.run(["sh", "-c", command], input=stdin, check=True, capture_output=True).stdout


def spare_backend(tmp_path, monkeypatch, fake: FakeHosts, data: dict | None = None):
    import subprocess
    import sys
    from types import SimpleNamespace

    import orchestrator.backends.ssh as ssh
    from orchestrator.rundir import EventLog

    data = data or spare_config()
    for host in data["launch"]["hosts"]:
        host.update(python=sys.executable, project_root=str(REPO), workdir=str(tmp_path / "shared"))
    resolved, run_dir = prepare_run(validate_config(data), tmp_path / "run")
    plan = build_plan(resolved, run_dir)
    events = EventLog(tmp_path / "events.jsonl")
    backend = ssh.SshBackend(resolved.runtime, resolved.launch.hosts, events)
    monkeypatch.setattr(ssh, "run_over_ssh", fake)
    started = []
    monkeypatch.setattr(ssh, "subprocess", SimpleNamespace(
        Popen=lambda argv, **kwargs: started.append(argv) or SimpleNamespace(pid=1, poll=lambda: None),
        DEVNULL=subprocess.DEVNULL, STDOUT=subprocess.STDOUT))  # fmt: skip

    def start(node_id):
        node = SimpleNamespace(launch=plan.node(node_id), process=None, log_file=None)
        backend.start(node)
        return node

    def logged():
        import json

        return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]

    return backend, start, started, logged


def test_a_node_whose_host_is_lost_starts_on_the_spare_and_is_advertised_there(tmp_path, monkeypatch):
    from orchestrator.backends.ssh import DeadOnArrival

    fake = FakeHosts(down={"10.0.0.3"})
    backend, start, started, logged = spare_backend(tmp_path, monkeypatch, fake)
    node = start("agent_1")
    assert not isinstance(node.process, DeadOnArrival)
    assert started[-1][-2] == "parley@10.0.0.4", "the node's ssh goes to the spare"
    assert backend.advertised_host("agent_1") == "10.0.0.4"
    assert fake.tried == ["10.0.0.3", "10.0.0.4"]
    kinds = [(e["event"], e.get("host"), e.get("from_host"), e.get("to_host")) for e in logged()]
    assert kinds == [("host_unreachable", "10.0.0.3", None, None), ("node_moved", None, "10.0.0.3", "10.0.0.4")]
    assert "Connection refused" in (node.launch.log_path).read_text()
    # Its files went to the shared workdir, where its checkpoints are.
    assert (Path(backend.remote_run_dir("agent_1")) / "nodes" / "agent_1" / "checkpoints").is_dir()
    # The lost host is not tried again: a second start goes to the spare at once.
    fake.tried.clear()
    start("agent_1")
    assert fake.tried == ["10.0.0.4"]


def test_without_a_spare_left_or_for_a_failure_that_is_not_the_host_the_node_is_dead(tmp_path, monkeypatch):
    from orchestrator.backends.ssh import DeadOnArrival

    fake = FakeHosts(down={"10.0.0.3", "10.0.0.4"})
    backend, start, started, logged = spare_backend(tmp_path, monkeypatch, fake)
    assert isinstance(start("agent_1").process, DeadOnArrival) and not started
    assert [e["event"] for e in logged()] == ["host_unreachable", "node_moved", "host_unreachable", "no_spare_host"]
    # A command that ran on a reachable host and failed there is not a lost machine.
    import orchestrator.backends.ssh as ssh

    def refuses(host, command, stdin=b""):
        raise ssh.SshError(f"host {host.address}: {command!r} exited 1: mkdir: Permission denied", unreachable=False)

    backend2, start2, started2, logged2 = spare_backend(tmp_path / "second", monkeypatch, refuses)
    assert isinstance(start2("agent_0").process, DeadOnArrival) and not started2
    assert [(e["event"], e["lost"]) for e in logged2()] == [("host_unreachable", False)]
    assert backend2.advertised_host("agent_0") == "10.0.0.2"


def test_prepare_proves_the_workdir_is_shared(tmp_path, monkeypatch):
    from orchestrator.backends import BackendUnavailable

    backend, _, _, logged = spare_backend(tmp_path, monkeypatch, FakeHosts(down={"10.0.0.3"}))
    backend.prepare()  # one file system here: shared; the host that is down is taken for lost
    assert backend.lost == {"10.0.0.3"} and [e["event"] for e in logged()] == ["host_unreachable"]
    assert not list(Path(tmp_path / "shared").rglob("shared-workdir-proof")), "the proof is removed"

    class NotShared(FakeHosts):
        def __call__(self, host, command, stdin=b""):
            return b"" if command.startswith("cat ") else super().__call__(host, command, stdin)

    backend, _, _, _ = spare_backend(tmp_path / "second", monkeypatch, NotShared())
    with pytest.raises(BackendUnavailable, match=r"launch.hosts.1.workdir: '.*' is not shared: the file that launch.hosts.0 "
                                                 r"\(10.0.0.2\) wrote at .* is not there on 10.0.0.3"):
        backend.prepare()
