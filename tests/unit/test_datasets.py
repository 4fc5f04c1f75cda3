"""The offline dataset format: round trip, resume, joins across agents, refusals, and a writer
process killed with SIGKILL mid-run leaving only complete chunks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest

from agent_node.offline.datasets import (
    DamagedDatasetFile,
    DatasetError,
    DatasetWriter,
    MultiAgentDataset,
    ShardSpec,
    read_manifest,
    space_from_json,
)
from agent_node.algos.params import UnusableDataset, transitions_for_learning
from agent_node.roles import Transition
from tests.conftest import read_line_with_deadline

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACTION_SPACE = gym.spaces.Discrete(4)
STATE_SPACE = gym.spaces.Box(-1.0, np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32), dtype=np.float32)


def spec(agent: str = "agent_0", index: int = 0, global_view: bool = False, **overrides) -> ShardSpec:
    values = dict(
        agent=agent, agent_index=index, env_name="mpe2.simple_spread_v3", env_kwargs={"N": 2},
        possible_agents=("agent_0", "agent_1"), observation_space=OBS_SPACE, action_space=ACTION_SPACE,
        seeds={"run_seed": 7, "node_seed": 1234}, behaviour_policy={"kind": "dqn", "note": "test"},
        global_state_space=STATE_SPACE if global_view else None, joint_action_dim=8 if global_view else None,
    )
    values.update(overrides)
    return ShardSpec(**values)


def rows(rng: np.random.Generator, copies: list[int], global_view: bool = False) -> Transition:
    count = len(copies)
    extra = {}
    if global_view:
        extra = dict(global_state=rng.normal(size=(count, 5)).astype(np.float32),
                     next_global_state=rng.normal(size=(count, 5)).astype(np.float32),
                     joint_action=rng.normal(size=(count, 8)).astype(np.float32))
    return Transition(
        obs=rng.normal(size=(count, 3)).astype(np.float32), action=rng.integers(0, 4, count),
        reward=rng.normal(size=count).astype(np.float32), next_obs=rng.normal(size=(count, 3)).astype(np.float32),
        terminated=rng.random(count) < 0.1, truncated=np.zeros(count, bool), copy_index=np.array(copies), **extra,
    )


def test_round_trip_in_chunks_with_the_global_view(tmp_path):
    rng = np.random.default_rng(0)
    written = []
    with DatasetWriter(tmp_path, spec(global_view=True), chunk_rows=5) as writer:
        for step in range(1, 8):
            transition = rows(rng, [0, 1], global_view=True)
            writer.append(step, transition)
            written.append(transition)
    chunks = sorted(p.name for p in (tmp_path / "agent_0").iterdir())
    # 2 rows per append: a chunk at 6 rows, another at 12, the last 2 rows on close.
    assert chunks == ["chunk-000000.npz", "chunk-000001.npz", "chunk-000002.npz", "manifest.json"]

    dataset = MultiAgentDataset(tmp_path)
    arrays = dataset.arrays("agent_0")
    assert len(arrays["reward"]) == 14
    np.testing.assert_array_equal(arrays["env_step"], np.repeat(np.arange(1, 8), 2))
    np.testing.assert_array_equal(arrays["copy"], np.tile([0, 1], 7))
    for name in ("obs", "action", "reward", "next_obs", "terminated", "global_state", "next_global_state", "joint_action"):
        np.testing.assert_array_equal(arrays[name], np.concatenate([getattr(t, name) for t in written]))
    assert arrays["action"].dtype == np.int64 and arrays["obs"].dtype == np.float32

    observation_space, action_space = dataset.spaces("agent_0")
    assert observation_space == OBS_SPACE and action_space == ACTION_SPACE
    manifest = read_manifest(tmp_path / "agent_0")
    assert manifest["format"] == "parley-marl-dataset" and manifest["format_version"] == 2
    # Readable without Parley: numpy reads a sealed chunk as it is; the manifest is all but its seal.
    with np.load(tmp_path / "agent_0" / "chunk-000000.npz") as chunk:
        np.testing.assert_array_equal(chunk["reward"], arrays["reward"][:6])
    assert json.loads((tmp_path / "agent_0" / "manifest.json").read_bytes()[:-24]) == manifest
    assert manifest["env"] == {"name": "mpe2.simple_spread_v3", "kwargs": {"N": 2}, "possible_agents": ["agent_0", "agent_1"]}
    assert manifest["seeds"] == {"run_seed": 7, "node_seed": 1234}
    assert space_from_json(manifest["global_state_space"], "state") == STATE_SPACE  # non-uniform bounds survive
    assert manifest["columns"]["joint_action"] == {"dtype": "<f4", "shape": [8]}


def test_a_reopened_shard_continues_and_leftover_temp_files_are_ignored_then_removed(tmp_path):
    rng = np.random.default_rng(1)
    writer = DatasetWriter(tmp_path, spec(), chunk_rows=4)
    for step in range(4):
        writer.append(step, rows(rng, [0, 1]))
    writer.flush()
    # A crash mid-write leaves a temp file behind: readers skip it.
    (tmp_path / "agent_0" / ".chunk-abc.tmp").write_bytes(b"PK\x03\x04 torn")
    assert len(MultiAgentDataset(tmp_path).arrays("agent_0")["reward"]) == 8

    resumed = DatasetWriter(tmp_path, spec(), chunk_rows=4)
    assert resumed.rows_written == 8 and resumed.next_chunk == 2
    assert not list((tmp_path / "agent_0").glob(".*.tmp"))
    resumed.append(4, rows(rng, [0, 1]))
    resumed.close()
    np.testing.assert_array_equal(MultiAgentDataset(tmp_path).arrays("agent_0")["env_step"], np.repeat(np.arange(5), 2))

    with pytest.raises(DatasetError, match=r"differs from this writer's in \['behaviour_policy', 'seeds'\]"):
        DatasetWriter(tmp_path, spec(seeds={"run_seed": 8}, behaviour_policy={"kind": "random"}))


def test_joint_lines_up_agents_by_step_and_copy(tmp_path):
    rng = np.random.default_rng(2)
    with DatasetWriter(tmp_path, spec("agent_0", 0, global_view=True)) as first, DatasetWriter(tmp_path, spec("agent_1", 1)) as second:
        for step in range(3):
            first.append(step, rows(rng, [0, 1], global_view=True))
            # agent_1 did not take part in copy 1 at step 1
            second.append(step, rows(rng, [0] if step == 1 else [0, 1]))
    dataset = MultiAgentDataset(tmp_path)
    assert dataset.agents == ["agent_0", "agent_1"]
    joint = dataset.joint()
    assert list(zip(joint["env_step"], joint["copy"])) == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]
    assert joint["obs"].shape == (5, 2, 3) and joint["action"].shape == (5, 2) and joint["global_state"].shape == (5, 5)
    first_rows = dataset.arrays("agent_0")
    np.testing.assert_array_equal(joint["obs"][3, 0], first_rows["obs"][4])  # (2, 0) is agent_0's 5th row
    np.testing.assert_array_equal(joint["global_state"][3], first_rows["global_state"][4])


def test_refusals_name_what_was_expected(tmp_path):
    rng = np.random.default_rng(3)
    writer = DatasetWriter(tmp_path, spec(global_view=True))
    with pytest.raises(DatasetError, match="needs copy_index"):
        writer.append(0, Transition(np.zeros((1, 3)), np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros((1, 3)),
                                    np.zeros(1, bool), np.zeros(1, bool)))
    with pytest.raises(DatasetError, match=r"Transition fields \['global_state', 'next_global_state', 'joint_action'\] are None"):
        writer.append(0, rows(rng, [0]))
    bad = rows(rng, [0, 1], global_view=True)
    with pytest.raises(DatasetError, match=r"column 'obs' must have shape \(2, 3\)"):
        writer.append(0, Transition(**{**bad.__dict__, "obs": np.zeros((2, 4), np.float32)}))
    with pytest.raises(DatasetError, match="column 'action' has dtype float64"):
        writer.append(0, Transition(**{**bad.__dict__, "action": np.zeros(2)}))
    with pytest.raises(DatasetError, match="no such dataset directory"):
        MultiAgentDataset(tmp_path / "missing")
    (tmp_path / "agent_1").mkdir()
    (tmp_path / "agent_1" / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="expected format 'parley-marl-dataset'"):
        MultiAgentDataset(tmp_path)


def test_transitions_for_learning_checks_against_the_learner_spaces():
    arrays = {"obs": np.zeros((4, 3), np.float32), "action": np.array([1, 2, 3, 4]), "reward": np.zeros(4, np.float32),
              "next_obs": np.zeros((4, 3), np.float32), "terminated": np.zeros(4, bool)}
    converted = transitions_for_learning(arrays, OBS_SPACE, gym.spaces.Discrete(4, start=1))
    np.testing.assert_array_equal(converted["action"], [0, 1, 2, 3])
    with pytest.raises(UnusableDataset, match=r"outside Discrete\(4\)"):
        transitions_for_learning(arrays, OBS_SPACE, ACTION_SPACE)
    with pytest.raises(UnusableDataset, match=r"the learner expects \(4, 5\)"):
        transitions_for_learning(arrays, gym.spaces.Box(0, 1, (5,)), gym.spaces.Discrete(4, start=1))


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import gymnasium as gym
    from agent_node.offline.datasets import DatasetWriter, ShardSpec
    from agent_node.roles import Transition

    spec = ShardSpec(agent="agent_0", agent_index=0, env_name="test", env_kwargs={}, possible_agents=("agent_0",),
                     observation_space=gym.spaces.Box(-1, 1, (512,), np.float32), action_space=gym.spaces.Discrete(3),
                     seeds={"run_seed": 0}, behaviour_policy={"kind": "test"})
    writer = DatasetWriter(sys.argv[1], spec, chunk_rows=200)
    step = writer.rows_written // 10  # a restarted writer continues where the shard ends
    print("writing", flush=True)
    while True:
        obs = np.full((10, 512), step % 7, np.float32)
        writer.append(step, Transition(obs, np.full(10, step % 3), np.full(10, step, np.float32), obs,
                                       np.zeros(10, bool), np.zeros(10, bool), copy_index=np.arange(10)))
        step += 1
    """
)


def chunk_count(shard) -> int:
    return len(list(shard.glob("chunk-*.npz"))) if shard.exists() else 0


@pytest.mark.timeout(90)
def test_writers_killed_with_sigkill_leave_only_complete_chunks_and_resume(tmp_path, spawn):
    """Three writer processes in turn, each killed with SIGKILL while it keeps writing chunks
    (rows of 512 floats, so most of its time goes to writing and fsyncing), each resuming the shard."""
    shard = tmp_path / "agent_0"
    for _ in range(3):
        process = spawn([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert read_line_with_deadline(process, timeout_s=30) == "writing"
        target = chunk_count(shard) + 4
        deadline = time.monotonic() + 30
        while chunk_count(shard) < target:  # poll the directory: the writer is busy, not idle
            assert time.monotonic() < deadline and process.poll() is None, "the writer stopped writing chunks"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)  # no chance to flush or clean up
        process.wait(timeout=10)
        print("temp files left by the kill:", len(list(shard.glob(".*.tmp"))))
        arrays = MultiAgentDataset(tmp_path).arrays("agent_0")
        count = len(arrays["reward"])
        assert count % 200 == 0, count  # whole chunks only
        # Rows are the consecutive steps 0, 1, 2, ... with 10 copies each, untorn, across restarts.
        np.testing.assert_array_equal(arrays["env_step"], np.repeat(np.arange(count // 10), 10))
        np.testing.assert_array_equal(arrays["reward"], arrays["env_step"].astype(np.float32))
        np.testing.assert_array_equal(arrays["obs"][:, 0], (arrays["env_step"] % 7).astype(np.float32))
    assert count >= 12 * 200


def test_a_recording_node_takes_the_env_kwargs_from_the_servers_welcome(tmp_path):
    """The manifest's env kwargs travel in the welcome (the server's typed env section), not
    from a second, untyped read of resolved.yaml by the agent node."""
    from agent_node.offline.recording import DATASET_DIRNAME, TransitionRecorder
    from protocols.codec import messages as m
    from protocols.codec import wire
    from protocols.codec.spaces import encode_space

    sent = m.EnvWelcome(
        env_name="mpe2.simple_spread_v3", num_copies=2, agents=["agent_0"], possible_agents=["agent_0", "agent_1"],
        observation_spaces={"agent_0": encode_space(OBS_SPACE)}, action_spaces={"agent_0": encode_space(ACTION_SPACE)},
        autoreset=True, max_steps=None, env_kwargs={"N": 2, "max_cycles": 25, "continuous_actions": False},
    )
    welcome = wire.decode(wire.encode(sent, sender="env", run_id="r", seq=1)).message
    (tmp_path / "resolved.yaml").write_text("env: {kwargs: {N: 99}}\n")  # never read: the welcome says
    recorder = TransitionRecorder.for_node(tmp_path, welcome, "agent_0", 0, {"run_seed": 7}, {"kind": "dqn"})
    recorder.record(1, rows(np.random.default_rng(0), [0, 1]))
    recorder.close()
    manifest = read_manifest(tmp_path / DATASET_DIRNAME / "agent_0")
    assert manifest["env"] == {"name": "mpe2.simple_spread_v3", "kwargs": {"N": 2, "max_cycles": 25, "continuous_actions": False},
                               "possible_agents": ["agent_0", "agent_1"]}


def test_env_kwargs_with_int_keys_reach_the_client_with_string_keys():
    """YAML gives int keys for `per_count_kwargs: {2: {...}}` (variable_count); the wire carries
    only string map keys, so an unconverted welcome was dropped by every agent as malformed and
    the run timed out at start-up (seen with configs/transfer_pursuit.yaml)."""
    from env_server.server import _string_keys
    from protocols.codec import messages as m
    from protocols.codec import wire
    from protocols.codec.spaces import encode_space

    kwargs = {"counts": [2, 4], "per_count_kwargs": {2: {"n_evaders": 8}, 4: {"n_evaders": 15}}}

    def welcome(env_kwargs):
        return m.EnvWelcome(
            env_name="variable_count", num_copies=1, agents=["agent_0"], possible_agents=["agent_0"],
            observation_spaces={"agent_0": encode_space(OBS_SPACE)}, action_spaces={"agent_0": encode_space(ACTION_SPACE)},
            autoreset=True, max_steps=None, env_kwargs=env_kwargs,
        )

    with pytest.raises(wire.MalformedPayload, match="int is not allowed for map key"):
        wire.decode(wire.encode(welcome(kwargs), sender="env", run_id="r", seq=1))
    received = wire.decode(wire.encode(welcome(_string_keys(kwargs)), sender="env", run_id="r", seq=1)).message
    assert received.env_kwargs == {"counts": [2, 4], "per_count_kwargs": {"2": {"n_evaders": 8}, "4": {"n_evaders": 15}}}


def _small_shard(tmp_path, chunks: int = 2) -> None:
    rng = np.random.default_rng(5)
    with DatasetWriter(tmp_path, spec(), chunk_rows=2) as writer:
        for step in range(chunks):
            writer.append(step, rows(rng, [0, 1]))


@pytest.mark.parametrize("damage, why", [
    (lambda data: data[: len(data) // 2], "no Parley seal"),
    (lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], "its CRC32 does not match"),
    (lambda data: np.random.default_rng(0).bytes(len(data)), "no Parley seal"),
])
def test_a_damaged_chunk_is_refused_naming_it_and_a_writer_never_appends_after_it(tmp_path, damage, why):
    _small_shard(tmp_path)
    chunk = tmp_path / "agent_0" / "chunk-000001.npz"
    chunk.write_bytes(damage(chunk.read_bytes()))
    damaged = chunk.read_bytes()
    with pytest.raises(DamagedDatasetFile, match=f"{chunk}: {why}") as refused:
        MultiAgentDataset(tmp_path).arrays("agent_0")
    assert isinstance(refused.value, DatasetError)  # the offline trainer's one-line refusal
    # A recording node restarted over it stops (DamagedStateError: exit 3), writing nothing.
    from protocols.storage.durable_state import DamagedStateError

    with pytest.raises(DamagedStateError, match="chunk-000001.npz"):
        DatasetWriter(tmp_path, spec(), chunk_rows=2)
    assert sorted(p.name for p in (tmp_path / "agent_0").iterdir()) == ["chunk-000000.npz", "chunk-000001.npz", "manifest.json"]
    assert chunk.read_bytes() == damaged


def test_a_damaged_manifest_is_refused_naming_it(tmp_path):
    _small_shard(tmp_path)
    manifest = tmp_path / "agent_0" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-30])
    with pytest.raises(DamagedDatasetFile, match=f"{manifest}: neither sealed nor valid JSON"):
        MultiAgentDataset(tmp_path)
    # The JSON alone, its seal cut off: a version-2 manifest is sealed, so this one was damaged.
    _small_shard(tmp_path / "again")
    manifest = tmp_path / "again" / "agent_0" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-24])
    with pytest.raises(DamagedDatasetFile, match="format_version 2 but no Parley seal"):
        MultiAgentDataset(tmp_path / "again")


def test_a_dataset_of_format_version_1_written_unsealed_is_still_read_and_appended_to_unsealed(tmp_path):
    rng = np.random.default_rng(6)
    shard = tmp_path / "agent_0"
    shard.mkdir()
    manifest = {**spec().manifest(), "format_version": 1}
    (shard / "manifest.json").write_text(json.dumps(manifest))
    first = rows(rng, [0, 1])
    np.savez(shard / "chunk-000000.npz", env_step=np.zeros(2, np.int64), copy=np.array([0, 1]),
             **{name: getattr(first, name) for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated")})
    assert len(MultiAgentDataset(tmp_path).arrays("agent_0")["reward"]) == 2
    with DatasetWriter(tmp_path, spec(), chunk_rows=2) as writer:
        assert writer.rows_written == 2 and not writer.sealed
        writer.append(1, rows(rng, [0, 1]))
    assert read_manifest(shard)["format_version"] == 1
    assert len(MultiAgentDataset(tmp_path).arrays("agent_0")["reward"]) == 4
