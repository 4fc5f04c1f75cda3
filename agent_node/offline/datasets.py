"""Offline multi-agent datasets: one shard per agent, written in crash-safe chunks, read with numpy.

A run records its transitions so that offline learners (`agent_node/algos/cql.py`, `bc.py`) can
train from them later with no env server running. This module defines the format, a writer that
appends per-step transitions, and a reader.

## Why not Minari

Minari (the Farama Foundation's offline-RL dataset standard, 0.5.x on PyPI) was the first choice,
since the issue asks for its format where it fits. It does not fit the multi-agent case:
- Minari has no PettingZoo support: its maintainers answered "currently, we don't support
  PettingZoo, but we plan to do it in the future" (Farama-Foundation/Minari issue #190,
  2024-02-16), and its `DataCollector` wraps a Gymnasium `Env` made by `gym.make`.
- Its storage holds one observation space and one action space per dataset
  (`MinariStorage.new(observation_space, action_space, env_spec, data_format)`), and an episode is
  one sequence of observations (T + 1 of them) and actions (`minari.EpisodeData`). Agents that
  join and leave, per-agent spaces, and a global state beside the observations have no place
  except untyped `infos`.
- In Parley every agent is its own process and records its own transitions; nothing central sees
  all of them as they happen. One writer per agent, with no coordination, is what fits here.
- Its storage backends need h5py or pyarrow, which Parley does not otherwise depend on.
So Parley defines its own format below: numpy `.npz` files and a JSON manifest per agent, both
readable without Parley.

## The format (version 2)

    <dataset>/
      <agent id>/                     one shard per agent (e.g. agent_0/, pursuer_3/)
        manifest.json                 what the shard holds (below), written once, atomically
        chunk-000000.npz              rows 0 .. n0-1 of this agent, in the order they were appended
        chunk-000001.npz              the next rows, and so on (numbered without gaps)

`manifest.json` (Python's `json`; unbounded Box bounds appear as `Infinity` / `-Infinity`):

    format             "parley-marl-dataset"
    format_version     2 (1: the same, unsealed; see below)
    agent              the agent's id in the env (`agent_0`) and `agent_index`, its position in
                       possible_agents
    env                {"name": the env's registry name or import path, "kwargs": {...},
                        "possible_agents": [...]}
    observation_space, action_space, global_state_space (or null)
                       spaces as `protocols/codec/spaces.py` encodes them for the wire, with numpy arrays
                       written as {"array": nested lists, "dtype": "<f4"}
    joint_action_dim   width of the recorded joint action (or null)
    seeds              the seeds of the run that made the data ({"run_seed": 0, "node_seed": ...})
    behaviour_policy   free-form map describing the policy that acted (kind, config, checkpoint)
    columns            {column name: {"dtype": "<f4", "shape": [per-row shape]}}
    created_at         ISO 8601 time the shard was started

Each chunk is an `.npz` (no pickle) with one array per column, all with the same number of rows:

    env_step           int64   the env server's lockstep step at which the transition ended
    copy               int64   which of the env server's K vectorized copies it came from
    obs, next_obs              the agent's observation before and after the step
    action                     the action it sent (environment scale / Discrete index as sent)
    reward             float32 the reward it received
    terminated, truncated bool the step ended the episode (no bootstrap / time limit)
    global_state, next_global_state, joint_action   only in shards that record the global view

Every file of a shard (manifest and chunks) ends in a 24-byte *seal* (agent_node/persistence.py:
the magic `PARLEYSL`, a seal format version, the length of what precedes it and its CRC32), which
the reader checks before it parses anything: a chunk cut short, overwritten or changed after it
was written is a `DamagedDatasetFile` naming it and why, never rows read from damaged bytes.
Without Parley, `np.load` reads a chunk as it is (a zip is found from its end), and the manifest
is the JSON in all but the file's last 24 bytes. Format version 1 (before files were sealed) was the same
unsealed; it is still read, without the check.

Rows of different agents for the same environment step share (`env_step`, `copy`), which is how
`MultiAgentDataset.joint` lines them up for centralized offline training. An episode of one copy
is the run of rows with that `copy` up to and including a row with `terminated` or `truncated`.

## Crash safety

The writer keeps rows in memory and writes them as a whole chunk every `chunk_rows` rows (and on
`flush` / `close`) through `protocols/storage/files.py`'s `atomic_write`: to a temporary file in
the shard directory, fsync, `os.replace` onto the chunk's name, fsync of the directory. `os.replace` is atomic on POSIX, so a process killed at any
moment leaves complete chunks only (the rows not yet flushed are lost, at most `chunk_rows - 1`),
plus possibly a `.tmp` file, which the reader ignores and a writer reopening the shard deletes. A
writer reopening an existing shard checks that its manifest matches, verifies every chunk's seal
(it counts their rows) and continues with the next chunk number, so a restarted agent node
appends to its own shard; it never writes over a file it found damaged. A dataset has no older
generations to fall back to: a recording agent that finds its shard damaged stops (exit code 3,
the file named; protocols/storage/durable_state.py), whatever `run.on_corrupt_state` says, and the file
stays for the user to rescue or remove.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from agent_node.roles import Transition
from protocols.storage.durable_state import DamagedStateError
from protocols.codec.errors import ProtocolError
from protocols.storage.files import atomic_write, is_sealed, read_sealed
from protocols.codec.spaces import decode_space, encode_space

FORMAT_NAME = "parley-marl-dataset"
FORMAT_VERSION = 2
UNSEALED_FORMAT_VERSION = 1  # written before the files were sealed; still read, unchecked
MANIFEST_NAME = "manifest.json"
CHUNK_PATTERN = re.compile(r"^chunk-(\d{6})\.npz$")
GLOBAL_VIEW_COLUMNS = ("global_state", "next_global_state", "joint_action")
# Manifest keys that may differ when a restarted writer reopens its shard.
_VOLATILE_MANIFEST_KEYS = ("created_at",)


class DatasetError(ValueError):
    """A dataset directory, manifest or chunk that is missing, malformed or does not match."""


class DamagedDatasetFile(DamagedStateError, DatasetError):
    """A manifest or chunk that fails its seal (cut short, overwritten, changed): a `DatasetError`
    to a reader, and damaged saved state to a recording agent node, which then stops rather than
    append to a shard it cannot read (protocols/storage/durable_state.py)."""


def _sealed_payload(path: Path) -> bytes:
    try:
        return read_sealed(path)
    except DamagedStateError as error:
        raise DamagedDatasetFile(error.path, error.why) from None


# ---------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardSpec:
    """What one agent's shard records; becomes its manifest."""

    agent: str
    agent_index: int
    env_name: str
    env_kwargs: Mapping[str, Any]
    possible_agents: tuple[str, ...]
    observation_space: gym.spaces.Space
    action_space: gym.spaces.Space
    seeds: Mapping[str, int]
    behaviour_policy: Mapping[str, Any]
    global_state_space: gym.spaces.Space | None = None
    joint_action_dim: int | None = None

    def columns(self) -> dict[str, dict[str, Any]]:
        """Per-row dtype and shape of every column of this shard."""
        obs = {"dtype": np.dtype(self.observation_space.dtype).str, "shape": list(self.observation_space.shape)}
        action_dtype = np.dtype(np.int64 if isinstance(self.action_space, gym.spaces.Discrete) else self.action_space.dtype)
        columns = {
            "env_step": {"dtype": np.dtype(np.int64).str, "shape": []},
            "copy": {"dtype": np.dtype(np.int64).str, "shape": []},
            "obs": obs,
            "action": {"dtype": action_dtype.str, "shape": list(self.action_space.shape)},
            "reward": {"dtype": np.dtype(np.float32).str, "shape": []},
            "next_obs": obs,
            "terminated": {"dtype": np.dtype(bool).str, "shape": []},
            "truncated": {"dtype": np.dtype(bool).str, "shape": []},
        }
        if self.global_state_space is not None:
            state = {"dtype": np.dtype(self.global_state_space.dtype).str, "shape": list(self.global_state_space.shape)}
            columns["global_state"] = state
            columns["next_global_state"] = state
            if self.joint_action_dim is None:
                raise DatasetError("a shard with a global_state_space must also give joint_action_dim")
            columns["joint_action"] = {"dtype": np.dtype(np.float32).str, "shape": [int(self.joint_action_dim)]}
        return columns

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "agent": self.agent,
            "agent_index": int(self.agent_index),
            "env": {"name": self.env_name, "kwargs": dict(self.env_kwargs), "possible_agents": list(self.possible_agents)},
            "observation_space": _space_to_json(self.observation_space),
            "action_space": _space_to_json(self.action_space),
            "global_state_space": None if self.global_state_space is None else _space_to_json(self.global_state_space),
            "joint_action_dim": None if self.joint_action_dim is None else int(self.joint_action_dim),
            "seeds": {key: int(value) for key, value in self.seeds.items()},
            "behaviour_policy": dict(self.behaviour_policy),
            "columns": self.columns(),
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }


def _space_to_json(space: gym.spaces.Space) -> Any:
    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return {"array": value.tolist(), "dtype": value.dtype.str}
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return value

    return convert(encode_space(space))


def space_from_json(encoded: Any, where: str) -> gym.spaces.Space:
    def convert(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"array", "dtype"}:
            return np.array(value["array"], dtype=np.dtype(value["dtype"]))
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return value

    try:
        return decode_space(convert(encoded), where)
    except (ProtocolError, ValueError) as error:
        raise DatasetError(str(error)) from error


def read_manifest(shard: Path) -> dict[str, Any]:
    """The shard's manifest, its seal verified (format version 2; version 1 was written unsealed)."""
    path = shard / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{shard}: not a dataset shard, {MANIFEST_NAME} is missing") from None
    except OSError as error:
        raise DamagedDatasetFile(path, f"cannot be read: {error.strerror or error}") from None
    sealed = is_sealed(data)
    try:
        manifest = json.loads(_sealed_payload(path) if sealed else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        if sealed:
            raise DamagedDatasetFile(path, f"sealed, but not valid JSON: {error}") from None
        # Not sealed and not JSON: a version-2 manifest cut short or overwritten, most likely.
        raise DamagedDatasetFile(path, f"neither sealed nor valid JSON ({len(data)} bytes): cut short or overwritten?") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: expected format {FORMAT_NAME!r}, got {manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
    version = manifest.get("format_version")
    if version not in (FORMAT_VERSION, UNSEALED_FORMAT_VERSION):
        raise DatasetError(f"{path}: format_version {version!r}, this code reads versions {UNSEALED_FORMAT_VERSION} and {FORMAT_VERSION}")
    if sealed != (version == FORMAT_VERSION):
        raise DamagedDatasetFile(path, f"format_version {version} but {'a' if sealed else 'no'} Parley seal at its end "
                                       f"(version {FORMAT_VERSION} files are sealed, version {UNSEALED_FORMAT_VERSION} ones not)")
    return manifest


def read_chunk(path: Path, sealed: bool) -> dict[str, np.ndarray]:
    """The arrays of one chunk; its seal verified first when the shard's format seals them."""
    try:
        source = io.BytesIO(_sealed_payload(path)) if sealed else path
        with np.load(source, allow_pickle=False) as chunk:
            return {name: chunk[name] for name in chunk.files}
    except DamagedDatasetFile:
        raise
    except (OSError, ValueError, EOFError) as error:  # sealed (or v1) but not an .npz numpy reads
        raise DamagedDatasetFile(path, f"not a chunk numpy can read: {error}") from None


# ---------------------------------------------------------------------------------- writer


class DatasetWriter:
    """Appends one agent's transitions to its shard, in atomic chunks (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], spec: ShardSpec, chunk_rows: int = 4096) -> None:
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
        self.shard = Path(root) / spec.agent
        self.spec = spec
        self.chunk_rows = chunk_rows
        self.columns = spec.columns()
        manifest = spec.manifest()
        self.sealed = True  # what this writer writes; a reopened version-1 shard goes on unsealed
        if (self.shard / MANIFEST_NAME).exists():
            existing = read_manifest(self.shard)
            self.sealed = existing["format_version"] == FORMAT_VERSION
            manifest["format_version"] = existing["format_version"]
            mismatched = sorted(
                key for key in set(existing) | set(manifest)
                if key not in _VOLATILE_MANIFEST_KEYS and existing.get(key) != json.loads(json.dumps(manifest.get(key)))
            )
            if mismatched:
                raise DatasetError(f"{self.shard}: the existing shard's manifest differs from this writer's in {mismatched}")
        else:
            self.shard.mkdir(parents=True, exist_ok=True)
        for leftover in self.shard.glob(".*.tmp"):
            leftover.unlink()  # a write cut short by a crash; nothing in it was ever committed
        if not (self.shard / MANIFEST_NAME).exists():
            manifest_bytes = json.dumps(manifest, indent=2).encode()
            atomic_write(self.shard / MANIFEST_NAME, lambda file: file.write(manifest_bytes), sealed=True)
        self.next_chunk = len(_chunk_paths(self.shard))
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0
        self.rows_written = sum(len(read_chunk(path, self.sealed)["reward"]) for path in _chunk_paths(self.shard))

    def append(self, env_step: int, transition: Transition) -> None:
        """Buffer the K rows of `transition` (which must carry `copy_index`), flushing a chunk when full."""
        rows = self._validated(env_step, transition)
        self.pending.append(rows)
        self.pending_rows += len(rows["reward"])
        if self.pending_rows >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one chunk (nothing if none are buffered)."""
        if not self.pending_rows:
            return
        contents = {name: np.concatenate([rows[name] for rows in self.pending]) for name in self.columns}
        atomic_write(self.shard / f"chunk-{self.next_chunk:06d}.npz", lambda file: np.savez(file, **contents), sealed=self.sealed)
        self.next_chunk += 1
        self.rows_written += self.pending_rows
        self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _validated(self, env_step: int, transition: Transition) -> dict[str, np.ndarray]:
        if not isinstance(transition, Transition):
            raise TypeError(f"expected a Transition, got {type(transition).__name__}")
        if transition.copy_index is None:
            raise DatasetError("a recorded Transition needs copy_index (which env copy each row came from)")
        count = len(np.asarray(transition.reward))
        values = {
            "env_step": np.full(count, env_step, np.int64),
            "copy": transition.copy_index,
            **{name: getattr(transition, name) for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated")},
        }
        if self.spec.global_state_space is not None:
            missing = [name for name in GLOBAL_VIEW_COLUMNS if getattr(transition, name) is None]
            if missing:
                raise DatasetError(f"shard {self.spec.agent!r} records the global view, but Transition fields {missing} are None")
            values.update({name: getattr(transition, name) for name in GLOBAL_VIEW_COLUMNS})
        rows = {}
        for name, column in self.columns.items():
            array = np.asarray(values[name])
            shape, dtype = (count, *column["shape"]), np.dtype(column["dtype"])
            if array.shape != shape:
                raise DatasetError(f"shard {self.spec.agent!r}: column {name!r} must have shape {shape}, got {array.shape}")
            if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                raise DatasetError(f"shard {self.spec.agent!r}: column {name!r} has dtype {array.dtype}, which does not convert safely to {dtype}")
            rows[name] = array.astype(dtype, copy=True)
        return rows


# ---------------------------------------------------------------------------------- reader


class MultiAgentDataset:
    """All agents' shards of one dataset directory, read into numpy arrays."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such dataset directory")
        self.manifests = {
            path.name: read_manifest(path) for path in sorted(self.root.iterdir()) if (path / MANIFEST_NAME).exists()
        }
        if not self.manifests:
            raise DatasetError(f"{self.root}: no agent shard (a subdirectory with {MANIFEST_NAME}) found")
        envs = {json.dumps(manifest["env"], sort_keys=True) for manifest in self.manifests.values()}
        if len(envs) != 1:
            raise DatasetError(f"{self.root}: the shards were recorded in different environments: {sorted(envs)}")
        for agent, manifest in self.manifests.items():
            if manifest["agent"] != agent:
                raise DatasetError(f"{self.root / agent}: the manifest names agent {manifest['agent']!r}, the directory {agent!r}")
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    @property
    def agents(self) -> list[str]:
        """Agents with a shard, in possible_agents order."""
        order = self.manifests[next(iter(self.manifests))]["env"]["possible_agents"]
        return sorted(self.manifests, key=lambda agent: order.index(agent) if agent in order else len(order))

    def spaces(self, agent: str) -> tuple[gym.spaces.Space, gym.spaces.Space]:
        manifest = self._manifest(agent)
        return (
            space_from_json(manifest["observation_space"], f"{agent}/manifest.json observation_space"),
            space_from_json(manifest["action_space"], f"{agent}/manifest.json action_space"),
        )

    def arrays(self, agent: str) -> dict[str, np.ndarray]:
        """Every column of one agent's shard, chunks concatenated in append order."""
        if agent not in self._cache:
            manifest = self._manifest(agent)
            shard = self.root / agent
            columns = manifest["columns"]
            parts: dict[str, list[np.ndarray]] = {name: [] for name in columns}
            for path in _chunk_paths(shard):
                chunk = read_chunk(path, sealed=manifest["format_version"] == FORMAT_VERSION)
                count = None
                for name, column in columns.items():
                    if name not in chunk:
                        raise DatasetError(f"{path}: column {name!r} is missing")
                    array = chunk[name]
                    count = len(array) if count is None else count
                    expected = (count, *column["shape"])
                    if array.shape != expected or array.dtype != np.dtype(column["dtype"]):
                        raise DatasetError(
                            f"{path}: column {name!r} should be {expected} {np.dtype(column['dtype'])}, "
                            f"found {array.shape} {array.dtype}"
                        )
                    parts[name].append(array)
            self._cache[agent] = {
                name: np.concatenate(chunks) if chunks else np.zeros((0, *columns[name]["shape"]), np.dtype(columns[name]["dtype"]))
                for name, chunks in parts.items()
            }
        return self._cache[agent]

    def joint(self, agents: list[str] | None = None) -> dict[str, np.ndarray]:
        """Rows of the same (env_step, copy) across `agents` (all by default), stacked on axis 1.

        Only steps every listed agent recorded are kept (an inner join). Per-agent columns become
        (B, N, ...); `env_step`, `copy` and the global-view columns (taken from the first agent
        that has them) stay (B, ...).
        """
        agents = self.agents if agents is None else list(agents)
        keyed = []
        for agent in agents:
            arrays = self.arrays(agent)
            keys = {(int(step), int(copy)): row for row, (step, copy) in enumerate(zip(arrays["env_step"], arrays["copy"]))}
            keyed.append(keys)
        common = sorted(set.intersection(*(set(keys) for keys in keyed)))
        joint: dict[str, np.ndarray] = {
            "env_step": np.array([key[0] for key in common], np.int64),
            "copy": np.array([key[1] for key in common], np.int64),
        }
        for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
            joint[name] = np.stack(
                [self.arrays(agent)[name][[keys[key] for key in common]] for agent, keys in zip(agents, keyed)], axis=1
            )
        for agent, keys in zip(agents, keyed):
            if "global_state" in self.arrays(agent):
                rows = [keys[key] for key in common]
                for name in GLOBAL_VIEW_COLUMNS:
                    joint[name] = self.arrays(agent)[name][rows]
                break
        return joint

    def _manifest(self, agent: str) -> dict[str, Any]:
        if agent not in self.manifests:
            raise DatasetError(f"{self.root}: no shard for agent {agent!r}; shards: {sorted(self.manifests)}")
        return self.manifests[agent]


# ---------------------------------------------------------------------------------- files


def _chunk_paths(shard: Path) -> list[Path]:
    numbered = sorted((int(match.group(1)), path) for path in shard.iterdir() if (match := CHUNK_PATTERN.match(path.name)))
    for expected, (number, path) in enumerate(numbered):
        if number != expected:
            raise DatasetError(f"{shard}: chunk {expected:06d} is missing (found {path.name}); chunks must be numbered without gaps")
    return [path for _, path in numbered]

