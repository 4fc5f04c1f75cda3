"""`launch.ray`: how a Ray launch reaches its cluster and places nodes, as a typed config section,
and the placement decision it leads to (one placement-group bundle per Parley node).

Kept apart from the backend so the config can be validated, and the placement decided and tested,
without Ray installed (Ray is the optional extra `pip install '.[ray]'`). No torch, no zmq, no ray.

Placement: every node gets one bundle `{"CPU": cpus_per_node}`. A node pinned to a machine gets
Ray's per-machine resource `node:<ip>` (every Ray node offers `node:<its ip>: 1.0`) with a small
share in its bundle, so the placement group can only put that bundle on that machine. The group's
strategy is the YAML's `strategy`: spread (Ray "SPREAD": best effort over machines), pack ("PACK"),
or their strict forms, which fail placement instead of bending.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RAY_STRATEGIES = {"spread": "SPREAD", "pack": "PACK", "strict_spread": "STRICT_SPREAD", "strict_pack": "STRICT_PACK"}
# The share of a machine's `node:<ip>` resource one pinned bundle asks for: small, so that
# many nodes can be pinned to one machine (Ray offers 1.0 of it per machine).
PIN_SHARE = 0.001


class RayPlacement(BaseModel):
    """`launch.ray`: the cluster to join and how to place the run's nodes on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "auto" (the cluster this machine belongs to, as `ray start` left it), "host:port" of a
    # head's GCS, or "ray://host:port" (Ray Client).
    address: str = Field("auto", min_length=1)
    strategy: Literal["spread", "pack", "strict_spread", "strict_pack"] = "spread"
    # CPUs each node's bundle reserves on its Ray machine.
    cpus_per_node: float = Field(1.0, gt=0)
    # Node id (`env`, `agent_0`, ...) -> the IP of the Ray machine it must run on.
    pin: dict[str, str] = {}
    # On every Ray machine: where the node's run files live (<workdir>/<run id>/ mirrors the run
    # dir), and a checkout of Parley put first on the node's PYTHONPATH. The node runs with the
    # Ray worker's interpreter, so that machine's Ray environment must have Parley's dependencies.
    workdir: str = Field("/tmp/parley-ray", min_length=1)
    project_root: str = Field(min_length=1)
    # Seconds a call to a node's runner actor may go unanswered (start, signal, gather, and the
    # poll the orchestrator sends every loop): past it the node counts as lost (exit code 255,
    # as the ssh backend's unreachable host). Shorter: a vanished machine is noticed sooner;
    # longer: a slow, loaded machine is not declared dead by mistake.
    call_timeout_s: float = Field(30.0, gt=0)
    # True: `workdir` is one directory every Ray machine mounts at the same path (a network file
    # system). Then a node whose machine is lost (its runner unreachable) is restarted by the
    # restart policy on another machine of the cluster, and restores its checkpoints from there;
    # the launch proves the directory is shared. False: such a node is not restarted.
    shared_workdir: bool = False

    @field_validator("address")
    @classmethod
    def _address_form(cls, address: str) -> str:
        if address == "auto" or address.startswith("ray://"):
            return address
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"expected 'auto', 'host:port' or 'ray://host:port', got {address!r}")
        return address

    def check_nodes(self, node_ids: list[str]) -> list[str]:
        """Problems with `pin` against the run's node ids (empty: fine)."""
        return [
            f"launch.ray.pin: expected node ids of this run ({', '.join(node_ids)}), got unknown {node!r}"
            for node in self.pin
            if node not in node_ids
        ]


def placement_bundles(node_ids: list[str], placement: RayPlacement) -> tuple[list[dict[str, float]], str]:
    """One bundle per node, in `node_ids` order (bundle i is node_ids[i]), and Ray's strategy name."""
    problems = placement.check_nodes(node_ids)
    if problems:
        raise ValueError("; ".join(problems))
    bundles = []
    for node in node_ids:
        bundle = {"CPU": placement.cpus_per_node}
        if node in placement.pin:
            bundle[f"node:{placement.pin[node]}"] = PIN_SHARE
        bundles.append(bundle)
    return bundles, RAY_STRATEGIES[placement.strategy]
