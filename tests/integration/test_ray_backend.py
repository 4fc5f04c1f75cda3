"""configs/tiny_ring.yaml through launch.backend ray on a real local Ray head (tcp transport).

The head is started with `ray start --head` in a temporary directory and stopped after. Skipped
when the `[ray]` extra is not installed.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="launch.backend ray needs the [ray] extra (pip install '.[ray]')")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head(tmp_path):
    ray_cli = str(BIN / "ray")
    temp = Path("/tmp") / f"rayt{os.getpid()}"  # short: Ray's unix socket paths have a length limit
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    started = subprocess.run(
        [ray_cli, "start", "--head", "--port=0", "--num-cpus=4", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:] + started.stdout[-2000:]
    address = (temp / "ray_current_cluster").read_text().strip() if (temp / "ray_current_cluster").exists() else None
    if address is None:
        address = next(line.split("'")[1] for line in started.stdout.splitlines() if "ray start --address=" in line)
    try:
        yield address, env
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.timeout(600)
@pytest.mark.xfail(
    strict=False,
    reason="WIP (05:32 UTC): the four nodes are placed, start on the Ray machine and register with tcp "
    "endpoints at the node IP, the directory is sent, but the agents stay in 'connecting' to the env "
    "server until the 60 s start-up timeout; cause not found yet",
)
def test_tiny_ring_through_ray_backend(ray_head, tmp_path):
    address, env = ray_head
    result = subprocess.run(
        [str(BIN / "orchestrate"), "up", str(ROOT / "configs/tiny_ring.yaml"),
         "--set", "launch.backend=ray", "--set", "network.transport=tcp",
         "--set", f"launch.ray.address={address}", "--set", f"launch.ray.project_root={ROOT}",
         "--set", f"launch.ray.workdir={tmp_path / 'remote'}", "--set", "launch.ray.cpus_per_node=0.5",
         "--run-dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=540, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert "ray_placed" in events
    assert list((tmp_path / "run" / "nodes").glob("agent_*/log"))
