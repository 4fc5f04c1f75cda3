"""The Ray backend's per-node runner (`NodeRunnerImpl`) as a plain object, without Ray: it unpacks
the shipped files, starts the node process at nice 0, hands its log back in pieces, and gathers
its files without the runner's own log. The Ray side is tested in
tests/integration/test_ray_backend.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import pytest

from tests.conftest import REPO


def test_runner_starts_the_node_streams_its_log_and_gathers_its_files(tmp_path):
    # In a child started at nice 10, as a Ray worker would be (Ray uses 15).
    script = textwrap.dedent(
        """
        import io, json, os, sys, tarfile, time
        from orchestrator.backends.ray import NodeRunnerImpl

        files = io.BytesIO()
        with tarfile.open(fileobj=files, mode="w") as tar:
            content = b"run: {}\\n"
            info = tarfile.TarInfo("resolved.yaml"); info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        node_code = (
            "import os, time; print('hello from the node', flush=True); "
            "open('nodes/agent_0/metrics.jsonl', 'w').write('{}\\\\n'); "
            "print('nice', os.getpriority(os.PRIO_PROCESS, 0), flush=True)"
        )
        runner = NodeRunnerImpl()
        pid, niceness = runner.start(sys.argv[1], files.getvalue(), ["/not/this/python", "-c", node_code], {}, "agent_0")
        deadline = time.monotonic() + 60
        log = b""
        while True:
            code, new = runner.poll()
            log += new
            if code is not None:
                break
            assert time.monotonic() < deadline, "the node did not exit"
            time.sleep(0.05)
        log += runner.poll()[1]
        with tarfile.open(fileobj=io.BytesIO(runner.gather("agent_0"))) as tar:
            names = sorted(tar.getnames())
        print(json.dumps({"code": code, "niceness": niceness, "log": log.decode(), "names": names,
                          "resolved": os.path.exists(os.path.join(sys.argv[1], "resolved.yaml"))}))
        """
    )
    run_dir = tmp_path / "remote_run"
    done = subprocess.run(
        ["nice", "-n", "10", sys.executable, "-c", script, str(run_dir)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["resolved"]
    # The node ran with this interpreter, not the argv[0] the orchestrator's plan had.
    assert "hello from the node" in result["log"]
    if os.geteuid() == 0:
        assert result["niceness"] == 0 and "nice 0" in result["log"]
    else:  # may not lower it: the node's log says how to start Ray instead
        assert result["niceness"] == 10 and "RAY_worker_niceness=0" in result["log"]
    # Its files come back, the runner's own log (streamed already) does not.
    assert result["names"] == ["nodes/agent_0/metrics.jsonl"]


def test_shipped_files_hold_the_nodes_own_key_only(tmp_path):
    from orchestrator.backends.shipping import shipped_files
    from orchestrator.config import load_config
    from orchestrator.rundir import prepare_run

    config = load_config(REPO / "configs/tiny_star_tcp.yaml")
    resolved, _run_dir = prepare_run(config, run_dir=tmp_path / "run")
    archive = shipped_files(resolved.runtime, "/srv/parley/run1", "agent_1")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = sorted(tar.getnames())
        shipped = tar.extractfile("resolved.yaml").read().decode()
    assert "run_dir: /srv/parley/run1" in shipped
    assert resolved.runtime.keys_dir, "tcp runs have CURVE keys"
    # The run's shared key files and this node's own key, never another node's secret key.
    assert names == ["keys/nodes/agent_1.json", "keys/public.json", "keys/run.json", "resolved.yaml"]


def test_shipped_files_are_renamed_into_place_never_rewritten_where_a_node_reads_them(tmp_path):
    # Nodes sharing a machine share the run directory: the second runner's unpacking must not
    # truncate the resolved.yaml a node started by the first is reading (a Ray run once read it empty).
    from orchestrator.backends.shipping import extract_replacing

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("resolved.yaml", b"run: {name: x}\n"), ("keys/agent_0.secret", b"key")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "resolved.yaml").write_bytes(b"run: {name: x}\n")
    before = (tmp_path / "resolved.yaml").stat().st_ino
    with tarfile.open(fileobj=io.BytesIO(archive.getvalue())) as tar:
        extract_replacing(tar, tmp_path)
    assert (tmp_path / "resolved.yaml").stat().st_ino != before, "a new file renamed over the old one"
    assert (tmp_path / "keys" / "agent_0.secret").read_bytes() == b"key"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["agent_0.secret", "keys", "resolved.yaml"], "no staging file left"

    with_link = io.BytesIO()
    with tarfile.open(fileobj=with_link, mode="w") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with tarfile.open(fileobj=io.BytesIO(with_link.getvalue())) as tar, pytest.raises((ValueError, tarfile.FilterError)):
        extract_replacing(tar, tmp_path)
