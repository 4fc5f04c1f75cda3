"""Dataset recording (agents.record_dataset) as a capability of the node
(agent_node/capability.py): every transition the agent learns from goes to its shard of
`<run dir>/dataset/` (recording.py), closed when the node drains."""

from __future__ import annotations

from typing import Any

from agent_node.capability import Capability, NodeServices
from agent_node.offline.recording import TransitionRecorder
from protocols.codec import messages as m


class DatasetRecording(Capability):
    name = "record_dataset"

    def __init__(self, run: Any, node: NodeServices) -> None:
        self.run = run
        self.node = node
        self.recorder: TransitionRecorder | None = None

    def attach(self, learner: Any, welcome: m.EnvWelcome, observation_space: Any, action_space: Any) -> None:
        identity, learner_config = self.node.identity, self.run.agents.learner
        self.recorder = TransitionRecorder.for_node(
            identity.run_dir, welcome, self.node.env_agent, identity.index,
            {"run_seed": identity.run_seed, "learner_seed": identity.seed("learner")},
            {"kind": learner_config.kind, "config": learner_config.model_dump(mode="json")},
        )

    def on_transition(self, message: m.EnvObservation, transition: Any) -> None:
        self.recorder.record(message.step, transition)

    def drain(self) -> None:
        if self.recorder is not None:
            self.recorder.close()


def build(run: Any, node: NodeServices) -> DatasetRecording | None:
    return DatasetRecording(run, node) if run.agents.record_dataset else None
