"""`launch.hosts`: the machines an SSH launch starts nodes on, as a typed config section.

Kept apart from `ssh.py` so that `orchestrator/config.py` can validate a run's YAML without
importing anything that starts processes. No torch, no zmq.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SshHost(BaseModel):
    """One machine of `launch.hosts`: how to reach it and which nodes run there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The address the launching machine reaches it by. It is also the host every endpoint of
    # its nodes is advertised at (nodes bind `network.bind_host`, e.g. 0.0.0.0).
    address: str = Field(min_length=1)
    user: str | None = None
    port: int = Field(22, ge=1, le=65535)
    # Private key to log in with (`ssh -i`); None: the ssh client's defaults and agent.
    identity_file: str | None = None
    # known_hosts file to check the host key against (strict checking is always on); None: the
    # user's own ~/.ssh/known_hosts.
    known_hosts_file: str | None = None
    # The interpreter on that host with Parley's dependencies, and a checkout of Parley there
    # (put first on the node's PYTHONPATH).
    python: str = Field(min_length=1)
    project_root: str = Field(min_length=1)
    # Where the node's run files live on that host: <workdir>/<run id>/ mirrors the run dir.
    workdir: str = Field(min_length=1)
    # A connection silent this long (ssh's ServerAlive probes unanswered) ends the node's ssh
    # session: the orchestrator then reports the node dead. Longer tolerates short partitions.
    alive_timeout_s: float = Field(6.0, ge=2.0)
    # Node ids that run on this host (`env`, `agent_0`, ...); none on a spare.
    nodes: list[str] = []
    # A spare starts no node at launch. When a host cannot be reached any more (the machine is
    # lost), the restart policy starts its nodes here instead, and they restore their newest
    # checkpoints: so every host's `workdir` must then be one directory all hosts share (a
    # network file system mounted at the same path), which the launch checks.
    spare: bool = False

    @model_validator(mode="after")
    def _nodes_or_spare(self) -> SshHost:
        if self.spare and self.nodes:
            raise ValueError(f"nodes: a spare host (spare: true) starts nodes only in place of a lost host, "
                             f"expected none at launch, got {self.nodes}")
        if not self.spare and not self.nodes:
            raise ValueError("nodes: expected at least one node id, or spare: true for a host that stands by to take "
                             "the nodes of a lost one; got none")
        return self

    def destination(self) -> str:
        return f"{self.user}@{self.address}" if self.user else self.address
