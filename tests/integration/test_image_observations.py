"""Image observations through the runtime: pistonball's 457 x 120 x 3 pixels per piston travel
packed through shared memory on one host, or as msgpack buffers over zmq (too large for a packed
frame), and the DQN reads them with its CNN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.integration.test_orchestrate import finished_ok, orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.timeout(400)]

pytest.importorskip("pymunk")  # the `test` extra installs it

CONFIG = {
    "run": {"name": "pistonball_cnn", "seed": 0, "steps": 40},
    "env": {"name": "pettingzoo.butterfly.pistonball_v6:parallel_env",
            "kwargs": {"n_pistons": 2, "continuous": False, "max_cycles": 20}, "num_copies": 1},
    "agents": {"count": 2, "checkpoint_every_steps": 20,
               "learner": {"kind": "dqn", "hidden_sizes": [32], "batch_size": 8, "buffer_size": 64,
                           "learning_starts": 16, "train_every": 4}},
    "topology": {"kind": "ring"},
    "launch": {"live_view": "off"},
}


@pytest.mark.parametrize("transport, logged", [
    ("auto", "lockstep through shared memory ("),  # one host: the segment holds a body of any size
    ("zmq", "lockstep bodies in msgpack (an observation of 1 copies takes up to"),
])
def test_pistonball_runs_with_a_cnn_through_shared_memory_or_msgpack(tmp_path: Path, transport: str, logged: str) -> None:
    config = tmp_path / "pistonball.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "env": {**CONFIG["env"], "transport": transport}}))
    run_dir = tmp_path / "run"
    process = orchestrate("up", str(config), "--run-dir", str(run_dir))
    stderr = finished_ok(process, timeout_s=360)
    assert read_events(run_dir)[-1]["reason"] == "budget spent"
    env_log = (run_dir / "nodes" / "env" / "log").read_text()
    assert env_log.count(logged) == 2, env_log[-3000:]
    checkpoint = torch.load(run_dir / "nodes" / "agent_0" / "checkpoints" / "latest.pt", weights_only=False)
    names = str(checkpoint)
    assert "encoder.torso.0.weight" in names  # the convolutional torso, not a flattened MLP
