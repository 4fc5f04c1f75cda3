"""Dataset recording: an agent node writes every transition it learns from to an offline dataset.

With `agents.record_dataset: true` each agent node appends its transitions (with the global state
and joint action when the node asked for the global view, `agents.global_view`) to its own shard
of `<run dir>/dataset/` through `agent_node/offline/datasets.py`'s crash-safe `DatasetWriter`. The shards
of one run form one `MultiAgentDataset` (rows of the same step join on `env_step` and `copy`),
which the offline learners (`python -m agent_node.offline`) train from with no env server.

The env's registry name and the keyword arguments it was built with come from the env server's
welcome (`EnvWelcome.env_name`, `env_kwargs`, validated there by the env section's typed schema),
so the manifest says which env made the data; this module reads no config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_node.offline.datasets import DatasetWriter, ShardSpec
from agent_node.roles import Transition
from protocols.codec.messages import EnvWelcome
from protocols.codec.spaces import decode_space

DATASET_DIRNAME = "dataset"


class TransitionRecorder:
    def __init__(self, writer: DatasetWriter) -> None:
        self.writer = writer

    @classmethod
    def for_node(
        cls, run_dir: Path, welcome: EnvWelcome, agent: str, agent_index: int, seeds: dict[str, int], behaviour: dict[str, Any]
    ) -> TransitionRecorder:
        view = welcome.global_view
        spec = ShardSpec(
            agent=agent,
            agent_index=agent_index,
            env_name=welcome.env_name,
            env_kwargs=dict(welcome.env_kwargs),
            possible_agents=tuple(welcome.possible_agents),
            observation_space=decode_space(welcome.observation_spaces[agent]),
            action_space=decode_space(welcome.action_spaces[agent]),
            seeds=seeds,
            behaviour_policy=behaviour,
            global_state_space=decode_space(view["state_space"]) if view else None,
            joint_action_dim=view["joint_action_dim"] if view else None,
        )
        return cls(DatasetWriter(run_dir / DATASET_DIRNAME, spec))

    def record(self, env_step: int, transition: Transition) -> None:
        self.writer.append(env_step, transition)

    def close(self) -> None:
        self.writer.close()
