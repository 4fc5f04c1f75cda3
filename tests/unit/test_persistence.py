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
from agent_node.persistence import NodePersistence, load_checkpoint, save_checkpoint
from agent_node.roles import Transition
from protocols.storage.durable_state import DamagedStateError
from protocols.storage.files import SEAL_FORMAT_VERSION, atomic_write, read_sealed
from protocols.storage.jsonlines import FileWriteError

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
    assert persistence.restore(agent) is None  # a fresh start; saves are allowed after it
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
    persistence.restore(agent)
    agent.observe(some_transitions(3))
    persistence.save_all(5, agent, episodes=0)
    assert load_checkpoint(persistence.checkpoint_path)["step"] == 5
    assert persistence.replay_path.exists()


def test_a_node_that_learns_nothing_keeps_no_replay_and_can_start_from_another_runs_checkpoint(tmp_path):
    trained = small_agent(seed=0)
    trained.observe(some_transitions(6))
    trained.update()
    saving = NodePersistence(tmp_path / "trained", checkpoint_every_steps=1, replay_save_every_steps=1)
    saving.restore(small_agent(seed=2))
    saving.save_all(9, trained, 3)

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


# ---------------------------------------------------------------- sealed files and generations


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda data: data[: len(data) // 2], "no Parley seal at its end"),  # a copy cut short
        (lambda data: np.random.default_rng(0).bytes(len(data)), "no Parley seal at its end"),
        (lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], "CRC32 does not match"),
        (lambda data: b"", "0 bytes, shorter than its"),
    ],
    ids=["half", "random", "one_byte", "empty"],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_why(tmp_path, damage, why):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(300.0), "step": 7})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DamagedStateError, match=why) as refused:
        load_checkpoint(path)
    assert refused.value.path == path and str(path) in str(refused.value)


def test_a_seal_of_another_format_version_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    atomic_write(path, lambda file: file.write(b"payload"), sealed=True)
    assert read_sealed(path) == b"payload"
    data = bytearray(path.read_bytes())
    data[-16:-12] = (SEAL_FORMAT_VERSION + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedStateError, match=f"format version {SEAL_FORMAT_VERSION + 1}"):
        read_sealed(path)


def test_a_damaged_replay_file_is_refused_before_numpy_reads_it(tmp_path):
    agent = small_agent(seed=0)
    agent.observe(some_transitions(6))
    agent.replay.save(tmp_path / "buffer.npz")
    (tmp_path / "buffer.npz").write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(DamagedStateError, match="buffer.npz: no Parley seal"):
        small_agent(seed=1).replay.restore(tmp_path / "buffer.npz")


def saved_twice(tmp_path, keep: int = 2) -> tuple[NodePersistence, DQNAgent]:
    """A node that saved both files at steps 10 and 20 (its learner after 20 is returned)."""
    persistence = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10, keep_generations=keep)
    agent = small_agent(seed=0)
    assert persistence.restore(agent) is None
    agent.observe(some_transitions(6))
    agent.update()
    persistence.maybe_save(10, agent, episodes=1)
    agent.observe(some_transitions(4, seed=1))
    agent.update()
    persistence.maybe_save(20, agent, episodes=2)
    return persistence, agent


def test_the_last_k_generations_are_kept_and_latest_points_at_the_newest(tmp_path):
    persistence, agent = saved_twice(tmp_path, keep=2)
    persistence.maybe_save(30, agent, episodes=3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.pt", "step-000000020.pt", "step-000000030.pt"]  # fmt: skip
    assert os.readlink(persistence.checkpoint_path) == "step-000000030.pt"
    assert os.readlink(persistence.replay_path) == "step-000000030.npz"
    assert load_checkpoint(persistence.checkpoint_path)["step"] == 30


def test_a_checkpoint_cut_to_half_and_a_replay_of_random_bytes_fall_back_to_the_older_generation(tmp_path):
    _, agent = saved_twice(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step-000000020.pt"
    replay = tmp_path / "replay" / "step-000000020.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    replay.write_bytes(np.random.default_rng(2).bytes(replay.stat().st_size))
    leftover = tmp_path / "checkpoints" / ".latest.pt.k3j2.tmp"  # a save killed mid-write
    leftover.write_bytes(b"half a save")
    damaged_bytes = checkpoint.read_bytes()

    restarted = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10)
    fresh = small_agent(seed=1)
    restored = restarted.restore(fresh)
    assert (restored.step, restored.episodes, restored.replay_step, restored.replay_rows) == (10, 1, 10, 6)
    assert restored.steps_lost == 10
    assert [(d.path, d.step) for d in restored.damaged] == [(checkpoint, 20), (replay, 20)]
    line = restored.describe_damage()
    assert str(checkpoint) in line and str(replay) in line and "10 steps of learning lost" in line
    assert not leftover.exists()
    # The damaged files are kept aside, byte for byte, and no later save touches them.
    assert (tmp_path / "checkpoints" / "step-000000020.pt.damaged").read_bytes() == damaged_bytes
    restarted.save_all(20, fresh, episodes=1)
    restarted.save_all(30, fresh, episodes=1)
    restarted.save_all(40, fresh, episodes=1)
    assert (tmp_path / "checkpoints" / "step-000000020.pt.damaged").read_bytes() == damaged_bytes
    assert (tmp_path / "replay" / "step-000000020.npz.damaged").exists()


def test_no_good_generation_refuses_to_start_and_writes_nothing(tmp_path):
    saved_twice(tmp_path)
    for name in ("step-000000010.pt", "step-000000020.pt"):
        path = tmp_path / "checkpoints" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}

    restarted = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10)
    fresh = small_agent(seed=1)
    with pytest.raises(DamagedStateError, match="step-000000020.pt: no Parley seal.*no good generation is left") as refused:
        restarted.restore(fresh)
    assert "step-000000010.pt: no Parley seal" in str(refused.value)
    # What the node does next (agent_node/node.py): it drains, which saves; nothing is written.
    restarted.save_all(0, fresh, episodes=0)
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before
    # Tried again, it refuses again: it never starts fresh over the files it could not read.
    with pytest.raises(DamagedStateError):
        NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10).restore(small_agent(seed=1))


def flat_tensors(state, prefix="") -> dict:
    """The tensors of a nested state dict, by their path."""
    found = {}
    for key, value in state.items():
        if isinstance(value, dict):
            found.update(flat_tensors(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            found[f"{prefix}{key}"] = value.clone()
    return found


def test_with_start_fresh_no_good_generation_sets_the_files_aside_and_starts_from_scratch_saying_so(tmp_path):
    saved_twice(tmp_path)
    for name in ("step-000000010.pt", "step-000000020.pt"):
        path = tmp_path / "checkpoints" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("step-*")}

    restarted = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10, start_fresh=True)
    fresh = small_agent(seed=1)
    untrained = flat_tensors(fresh.state_dict())
    assert untrained, "the learner state holds its networks"
    assert restarted.restore(fresh) is None  # no checkpoint restored: the learner is as built
    now = flat_tensors(fresh.state_dict())
    assert now.keys() == untrained.keys() and all(torch.equal(now[key], untrained[key]) for key in now)
    assert len(fresh.replay) == 6 + 4  # the replay verified: its transitions are still used
    notice = restarted.notice(None)
    assert notice.started_fresh and notice.restored_from_step == 0 and notice.steps_lost == 20 and notice.damaged_files == 2
    assert "step-000000020.pt (no Parley seal" in notice.what and "run.on_corrupt_state: start_fresh" in notice.what
    assert notice.metrics()["persistence/started_fresh"] == 1.0
    # Set aside byte for byte; the saves to come write beside them, never over them.
    assert {p.name.removesuffix(".damaged"): p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.damaged")} == before
    restarted.save_all(30, fresh, episodes=0)
    assert {p.name.removesuffix(".damaged"): p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.damaged")} == before
    assert load_checkpoint(restarted.checkpoint_path)["step"] == 30


def test_without_damage_a_restore_has_nothing_to_say(tmp_path):
    saved_twice(tmp_path)
    restarted = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=10)
    assert restarted.notice(restarted.restore(small_agent(seed=1))) is None


def test_a_checkpoint_newer_than_the_replay_buffer_restores_a_learner_that_owes_nothing_it_cannot_learn(tmp_path):
    persistence = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=1000)
    agent = small_agent(seed=0)
    persistence.restore(agent)
    agent.observe(some_transitions(12))  # owes gradient steps it has not taken
    assert agent.gradient_steps_due() > 0
    persistence.maybe_save(10, agent, episodes=1)  # the checkpoint, no replay buffer yet
    fresh = small_agent(seed=1)
    restored = NodePersistence(tmp_path, checkpoint_every_steps=10, replay_save_every_steps=1000).restore(fresh)
    assert restored.replay_rows == 0 and len(fresh.replay) == 0
    assert fresh.gradient_steps_due() == 0  # before: the node's next slice sampled an empty buffer and the agent died
    fresh.observe(some_transitions(3, seed=2))
    assert fresh.gradient_steps_due() == 3 and fresh.update()["dqn/loss"] >= 0.0
