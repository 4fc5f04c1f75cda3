"""Node persistence: one atomic-write helper for checkpoints and the replay buffer, save cadence, restore."""

from __future__ import annotations

import errno
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent_node.algos.config import DQNConfig
from agent_node.algos.dqn import DQNAgent
from agent_node.persistence import NodePersistence, atomic_write, load_checkpoint, save_checkpoint
from agent_node.roles import Transition
from protocols.jsonlines import FileWriteError

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def small_agent(seed: int) -> DQNAgent:
    config = DQNConfig(batch_size=4, buffer_size=50, learning_starts=4, train_every=1, hidden_sizes=(8,))
    return DQNAgent(config, OBS_SPACE, gym.spaces.Discrete(3), seed=seed)


def some_transitions(rows: int, seed: int = 0) -> Transition:
    rng = np.random.default_rng(seed)
    return Transition(
        obs=rng.uniform(-1, 1, (rows, 2)).astype(np.float32),
        action=rng.integers(0, 3, rows),
        reward=rng.normal(size=rows).astype(np.float32),
        next_obs=rng.uniform(-1, 1, (rows, 2)).astype(np.float32),
        terminated=np.zeros(rows, bool),
        truncated=np.zeros(rows, bool),
    )


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write(path, lambda file: file.write(b"first"))
    assert path.read_bytes() == b"first"

    def dies_halfway(file):
        file.write(b"half of the sec")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, dies_halfway)
    assert path.read_bytes() == b"first"
    assert os.listdir(path.parent) == ["file.bin"]  # the temporary file is gone
    atomic_write(path, lambda file: file.write(b"second"))
    assert path.read_bytes() == b"second"


def test_checkpoint_round_trip_and_a_missing_file(tmp_path):
    assert load_checkpoint(tmp_path / "none.pt") is None
    save_checkpoint(tmp_path / "c.pt", {"w": torch.arange(3.0), "step": 7})
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_saves_when_due_and_restores_learner_replay_and_episode_count(tmp_path):
    persistence = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=4)
    agent = small_agent(seed=0)
    agent.observe(some_transitions(6))
    agent.update()

    persistence.maybe_save(3, agent, episodes=1)
    assert not persistence.checkpoint_path.exists() and not persistence.replay_path.exists()
    persistence.maybe_save(4, agent, episodes=1)
    assert persistence.replay_path.exists() and not persistence.checkpoint_path.exists()
    persistence.maybe_save(10, agent, episodes=2)
    assert persistence.checkpoint_path.exists()
    assert (persistence.last_checkpoint_step, persistence.last_replay_save_step) == (10, 10)

    fresh = small_agent(seed=1)
    assert NodePersistence(tmp_path / "elsewhere", checkpoint_every_steps=1, replay_save_every_steps=1).restore(fresh) is None
    restored = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=4).restore(fresh)
    assert (restored.step, restored.episodes, restored.replay_rows) == (10, 2, 6)
    assert len(fresh.replay) == 6
    for name, tensor in agent.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, fresh.state_dict()[name]), name
    probe = np.zeros((1, 2), np.float32)
    np.testing.assert_array_equal(agent.act(probe, explore=False), fresh.act(probe, explore=False))


def test_save_all_writes_both_files_at_the_end(tmp_path):
    persistence = NodePersistence(tmp_path, checkpoint_every_steps=1000, replay_save_every_steps=1000)
    agent = small_agent(seed=0)
    agent.observe(some_transitions(3))
    persistence.save_all(5, agent, episodes=0)
    assert load_checkpoint(persistence.checkpoint_path)["step"] == 5
    assert persistence.replay_path.exists()


def test_a_node_that_learns_nothing_keeps_no_replay_and_can_start_from_another_runs_checkpoint(tmp_path):
    trained = small_agent(seed=0)
    trained.observe(some_transitions(6))
    trained.update()
    NodePersistence(tmp_path / "trained", checkpoint_every_steps=1, replay_save_every_steps=1).save_all(9, trained, 3)

    evaluator = NodePersistence(tmp_path / "eval", checkpoint_every_steps=1, replay_save_every_steps=1, keep_replay=False)
    fresh = small_agent(seed=1)
    assert evaluator.restore(fresh) is None
    assert not evaluator.load_initial_checkpoint(fresh, tmp_path / "missing" / "latest.pt")
    assert evaluator.load_initial_checkpoint(fresh, tmp_path / "trained" / "checkpoints" / "latest.pt")
    probe = np.zeros((1, 2), np.float32)
    np.testing.assert_array_equal(trained.act(probe, explore=False), fresh.act(probe, explore=False))
    evaluator.save_all(4, fresh, episodes=0)
    assert evaluator.checkpoint_path.exists() and not evaluator.replay_path.exists()


@pytest.fixture
def full_disk(small_tmpfs):
    """`small_tmpfs` (tests/conftest.py) with one small file on it, then filled to the last block."""
    (small_tmpfs / "node").mkdir()
    atomic_write(small_tmpfs / "node" / "latest.pt", lambda file: file.write(b"the previous checkpoint"))
    with pytest.raises(OSError):
        with open(small_tmpfs / "filler", "wb") as filler:
            while True:
                filler.write(b"x" * 4096)
                filler.flush()
    return small_tmpfs / "node"


def test_a_checkpoint_on_a_full_disk_fails_naming_the_file_and_keeps_the_previous_one(full_disk):
    path = full_disk / "latest.pt"
    with pytest.raises(FileWriteError) as refused:
        save_checkpoint(path, {"w": torch.zeros(50_000)})
    # Not torch's "[enforce fail at inline_container.cc] unexpected pos": the file and the cause.
    assert refused.value.strerror == f"cannot write to {path}: no space left on its file system"
    assert refused.value.errno == errno.ENOSPC and refused.value.disk_full
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in full_disk.iterdir()) == ["latest.pt"]  # no temporary left


def test_a_replay_buffer_on_a_full_disk_fails_naming_the_file(full_disk):
    agent = small_agent(seed=0)
    agent.observe(some_transitions(40))
    path = full_disk / "buffer.npz"
    with pytest.raises(FileWriteError, match=f"cannot write to {path}.*: no space left on its file system"):
        agent.replay.save(path)
    assert not path.exists()
