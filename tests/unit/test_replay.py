"""ReplayBuffer: shapes, ring order, uniform sampling, atomic save/load without pickle."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_node.replay import ReplayBuffer, ReplayBufferFileError
from agent_node.roles import Transition
from protocols.storage.files import atomic_write, read_sealed

OBS_SHAPE = (3,)
ACTION_SHAPE = (2,)


def make_buffer(capacity: int = 10, seed: int = 0) -> ReplayBuffer:
    return ReplayBuffer(capacity, OBS_SHAPE, np.float32, ACTION_SHAPE, np.float32, seed)


def numbered_transition(first: int, num_rows: int) -> Transition:
    """Rows whose every field encodes the row's number, so ring order can be checked."""
    ids = np.arange(first, first + num_rows)
    return Transition(
        obs=np.repeat(ids[:, None], OBS_SHAPE[0], axis=1).astype(np.float32),
        action=np.repeat(-ids[:, None], ACTION_SHAPE[0], axis=1).astype(np.float32),
        reward=ids.astype(np.float32),
        next_obs=np.repeat(ids[:, None] + 0.5, OBS_SHAPE[0], axis=1).astype(np.float32),
        terminated=ids % 2 == 0,
        truncated=ids % 3 == 0,
    )


def test_add_and_sample_shapes_and_dtypes():
    buffer = make_buffer(capacity=10)
    assert len(buffer) == 0
    buffer.add(numbered_transition(0, 4))
    assert len(buffer) == 4
    batch = buffer.sample(7)
    assert batch["obs"].shape == (7, 3) and batch["obs"].dtype == np.float32
    assert batch["action"].shape == (7, 2) and batch["action"].dtype == np.float32
    assert batch["reward"].shape == (7,) and batch["reward"].dtype == np.float32
    assert batch["next_obs"].shape == (7, 3)
    assert batch["terminated"].dtype == bool and batch["truncated"].dtype == bool
    # Rows stay intact: every field of a sampled row belongs to the same added row.
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["reward"])
    np.testing.assert_array_equal(batch["action"][:, 0], -batch["reward"])
    np.testing.assert_array_equal(batch["terminated"], batch["reward"] % 2 == 0)


def test_samples_only_filled_rows_and_covers_them():
    buffer = make_buffer(capacity=100)
    buffer.add(numbered_transition(1, 3))  # rewards 1, 2, 3; the other 97 slots are empty
    rewards = buffer.sample(600)["reward"]
    assert set(np.unique(rewards)) == {1.0, 2.0, 3.0}
    counts = np.bincount(rewards.astype(int))[1:]
    assert counts.min() > 150  # uniform: ~200 each


def test_ring_wraps_and_keeps_the_newest_rows():
    buffer = make_buffer(capacity=5)
    buffer.add(numbered_transition(0, 3))
    buffer.add(numbered_transition(3, 4))  # 7 rows into 5 slots: rows 2..6 survive
    assert len(buffer) == 5
    assert buffer.position == 2
    np.testing.assert_array_equal(np.sort(buffer.reward), [2, 3, 4, 5, 6])
    # Slots 0 and 1 were overwritten by rows 5 and 6, in order.
    np.testing.assert_array_equal(buffer.reward, [5, 6, 2, 3, 4])


def test_adding_more_rows_than_capacity_keeps_the_last_capacity_rows():
    buffer = make_buffer(capacity=4)
    buffer.add(numbered_transition(0, 1))
    buffer.add(numbered_transition(1, 10))  # rows 1..10; only 7..10 can remain
    assert len(buffer) == 4
    np.testing.assert_array_equal(np.sort(buffer.reward), [7, 8, 9, 10])
    # The next row overwrites the oldest one (row 7).
    buffer.add(numbered_transition(11, 1))
    np.testing.assert_array_equal(np.sort(buffer.reward), [8, 9, 10, 11])


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 12), chunk_sizes=st.lists(st.integers(0, 15), max_size=8))
def test_ring_always_holds_exactly_the_newest_rows(capacity, chunk_sizes):
    buffer = make_buffer(capacity=capacity)
    added = 0
    for size in chunk_sizes:
        buffer.add(numbered_transition(added, size))
        added += size
    expected = np.arange(max(0, added - capacity), added)
    assert len(buffer) == len(expected)
    np.testing.assert_array_equal(np.sort(buffer.reward[: len(buffer)]), expected)
    # The next write lands on the oldest row.
    if added >= capacity:
        assert buffer.reward[buffer.position] == expected[0]


def test_shape_and_dtype_validation_errors_name_the_field():
    buffer = make_buffer()
    good = numbered_transition(0, 4)
    with pytest.raises(ValueError, match=r"Transition.obs must have shape \(4, 3\).*got shape \(4, 2\)"):
        buffer.add(Transition(good.obs[:, :2], good.action, good.reward, good.next_obs, good.terminated, good.truncated))
    with pytest.raises(ValueError, match=r"Transition.next_obs must have shape \(4, 3\)"):
        buffer.add(Transition(good.obs, good.action, good.reward, good.next_obs[:3], good.terminated, good.truncated))
    with pytest.raises(ValueError, match=r"Transition.reward must have shape \(K,\)"):
        buffer.add(Transition(good.obs, good.action, good.reward[:, None], good.next_obs, good.terminated, good.truncated))
    with pytest.raises(ValueError, match=r"Transition.terminated must have shape \(4,\)"):
        buffer.add(Transition(good.obs, good.action, good.reward, good.next_obs, good.terminated[:2], good.truncated))
    with pytest.raises(TypeError, match="expected a Transition"):
        buffer.add({"obs": good.obs})
    assert len(buffer) == 0  # nothing half-added

    int_actions = ReplayBuffer(10, OBS_SHAPE, np.float32, (), np.int64, seed=0)
    with pytest.raises(TypeError, match="Transition.action has dtype float64"):
        int_actions.add(Transition(good.obs, np.array([0.5, 1.0, 0.0, 2.0]), good.reward, good.next_obs, good.terminated, good.truncated))
    # Harmless widening (int32 -> int64) is accepted.
    int_actions.add(Transition(good.obs, np.array([0, 1, 0, 2], dtype=np.int32), good.reward, good.next_obs, good.terminated, good.truncated))
    assert int_actions.action[:4].tolist() == [0, 1, 0, 2]


def test_constructor_and_sample_argument_errors():
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        ReplayBuffer(0, OBS_SHAPE, np.float32, ACTION_SHAPE, np.float32, seed=0)
    with pytest.raises(ValueError, match="obs_shape"):
        ReplayBuffer(5, (-1,), np.float32, ACTION_SHAPE, np.float32, seed=0)
    buffer = make_buffer()
    with pytest.raises(ValueError, match="empty replay buffer"):
        buffer.sample(4)
    buffer.add(numbered_transition(0, 2))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        buffer.sample(0)


def test_same_seed_same_samples():
    first, second = make_buffer(seed=7), make_buffer(seed=7)
    for buffer in (first, second):
        buffer.add(numbered_transition(0, 10))
    np.testing.assert_array_equal(first.sample(20)["reward"], second.sample(20)["reward"])


def test_sampling_with_a_callers_generator_leaves_the_buffers_stream_alone():
    """A second reader (a world model fit beside the learner) draws with its own stream: the
    learner's minibatches are the same whether or not it read the buffer in between."""
    untouched, shared = make_buffer(seed=7), make_buffer(seed=7)
    for buffer in (untouched, shared):
        buffer.add(numbered_transition(0, 10))
    reader = shared.sample(50, rng=np.random.default_rng(123))["reward"]
    np.testing.assert_array_equal(reader, np.random.default_rng(123).integers(0, 10, size=50).astype(np.float32))
    np.testing.assert_array_equal(untouched.sample(20)["reward"], shared.sample(20)["reward"])


@pytest.mark.parametrize("rows_added", [3, 13])  # before and after the ring wraps
def test_save_load_round_trip_is_exact(tmp_path, rows_added):
    original = make_buffer(capacity=10, seed=3)
    original.add(numbered_transition(0, rows_added))
    original.sample(5)  # advance the RNG so its state is not the seed's
    path = tmp_path / "replay.npz"
    original.save(path)

    loaded = ReplayBuffer.load(path)
    restored = make_buffer(capacity=10, seed=99)
    restored.restore(path)
    for copy in (loaded, restored):
        assert (copy.capacity, copy.size, copy.position) == (original.capacity, original.size, original.position)
        assert copy.obs_dtype == original.obs_dtype and copy.action_shape == original.action_shape
        for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(copy, name)[: copy.size], getattr(original, name)[: original.size])

    # Same RNG state and layout: the three buffers now evolve identically.
    expected = original.sample(8)
    for copy in (loaded, restored):
        np.testing.assert_array_equal(copy.sample(8)["reward"], expected["reward"])
    for buffer in (original, loaded, restored):
        buffer.add(numbered_transition(100, 2))
    np.testing.assert_array_equal(loaded.reward, original.reward)
    assert os.listdir(tmp_path) == ["replay.npz"]  # no temporary file left behind


def test_save_overwrites_atomically_and_cleans_up_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "replay.npz"
    buffer = make_buffer(capacity=10)
    buffer.add(numbered_transition(0, 3))
    buffer.save(path)
    good_bytes = path.read_bytes()

    buffer.add(numbered_transition(3, 3))

    def savez_that_dies_halfway(file, **arrays):
        file.write(b"PK\x03\x04 partial zip")  # some bytes reach the temp file, then a crash
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", savez_that_dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        buffer.save(path)
    assert path.read_bytes() == good_bytes  # the previous save is untouched
    assert os.listdir(tmp_path) == ["replay.npz"]  # and the partial temp file is gone
    monkeypatch.undo()
    assert len(ReplayBuffer.load(path)) == 3


def test_restore_refuses_a_buffer_of_another_layout(tmp_path):
    path = tmp_path / "replay.npz"
    make_buffer(capacity=10).save(path)
    with pytest.raises(ReplayBufferFileError, match="saved capacity is 10, this buffer has 20"):
        make_buffer(capacity=20).restore(path)
    other_obs = ReplayBuffer(10, (4,), np.float32, ACTION_SHAPE, np.float32, seed=0)
    with pytest.raises(ReplayBufferFileError, match=r"saved obs_shape is \(3,\), this buffer has \(4,\)"):
        other_obs.restore(path)


def sealed_npz(path, **contents) -> None:
    """An .npz sealed as the buffer seals its own (agent_node/persistence.py): what is checked
    below is the file's contents, past its seal."""
    atomic_write(path, lambda file: np.savez(file, **contents), sealed=True)


def test_load_rejects_foreign_and_pickled_files(tmp_path):
    foreign = tmp_path / "foreign.npz"
    sealed_npz(foreign, weights=np.zeros(3))
    with pytest.raises(ReplayBufferFileError, match="not a replay buffer file"):
        ReplayBuffer.load(foreign)

    # A file whose data field needs pickle (object dtype) must not be unpickled.
    path = tmp_path / "replay.npz"
    make_buffer().save(path)
    with np.load(io.BytesIO(read_sealed(path))) as saved:
        contents = {key: saved[key] for key in saved.files}
    contents["reward"] = np.array([object()], dtype=object)
    tampered = tmp_path / "tampered.npz"
    sealed_npz(tampered, **contents)
    with pytest.raises(ValueError, match="allow_pickle"):
        ReplayBuffer.load(tampered)

    contents = {key: value for key, value in contents.items() if key != "reward"}
    contents["format_version"] = np.array(999)
    future = tmp_path / "future.npz"
    sealed_npz(future, **contents, reward=np.zeros(0, np.float32))
    with pytest.raises(ReplayBufferFileError, match="format version 999"):
        ReplayBuffer.load(future)
