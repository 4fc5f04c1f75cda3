"""`python -m agent_node.consensus.shared_policy`: one policy from the agents' copies of a parameter-shared one.

    python -m agent_node.consensus.shared_policy --out AVERAGE.pt RUN/nodes/agent_*/checkpoints/latest.pt

In a parameter-shared run (`learner.kind: shared_dqn` with `consensus.what: policy_parameters`)
every agent trains its own copy of the network, and the copies are averaged every
`consensus.period_steps`. In between they drift apart, and a run's last checkpoints come after
its last averaging: no single copy is the shared policy then (agent_0's copy acting for all
agents does measurably worse than the copies do for their own agents; README, Benchmarks,
Agent-count transfer). The average of the copies is what one more consensus round would have
made of them, and what this writes: the first checkpoint with its policy network replaced by
the mean over all of them (the tensors consensus averages, `get_params`), in the node's
checkpoint format, so that

    agents: {load_shared_checkpoint: AVERAGE.pt}

runs it for every agent (with any agent count up to the checkpoint's `max_agents`). The rest of
the state (target network, optimizer, counters) is the first checkpoint's: a run that goes on
learning from the average starts from the first agent's optimizer, as an agent does after a
consensus round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

# algorithm (the checkpoint's `learner.algorithm`) -> the path, inside `learner`, of the state dict
# of the network its `get_params` returns: what consensus averages.
POLICY_NETWORK = {"dqn": ("q_network",), "shared_dqn": ("dqn", "q_network")}


class CheckpointMismatch(ValueError):
    """The checkpoints cannot be averaged: another algorithm, layout or network shape."""


def average_policy_checkpoints(paths: Sequence[Path], out: Path) -> dict[str, Any]:
    """Average the policy networks of the checkpoints in `paths` into `out`; returns the state
    written. Refuses (CheckpointMismatch) checkpoints of different algorithms, input layouts or
    network shapes, and algorithms whose policy network this does not know."""
    from agent_node.persistence import load_checkpoint, save_checkpoint

    if not paths:
        raise CheckpointMismatch("no checkpoints to average")
    states = []
    for path in paths:
        state = load_checkpoint(Path(path))
        if state is None:
            raise FileNotFoundError(f"no checkpoint at {path}")
        states.append(state)
    first = states[0]["learner"]
    algorithm = first.get("algorithm")
    if algorithm not in POLICY_NETWORK:
        raise CheckpointMismatch(
            f"{paths[0]}: averaging knows the policy networks of {sorted(POLICY_NETWORK)} learners, not {algorithm!r}"
        )
    networks = []
    for path, state in zip(paths, states):
        learner = state["learner"]
        if learner.get("algorithm") != algorithm:
            raise CheckpointMismatch(f"{path}: a {learner.get('algorithm')!r} checkpoint, {paths[0]} is {algorithm!r}")
        if algorithm == "shared_dqn" and (learner["max_obs_dim"], learner["max_agents"]) != (first["max_obs_dim"], first["max_agents"]):
            raise CheckpointMismatch(
                f"{path}: input layout (max_obs_dim, max_agents) = {(learner['max_obs_dim'], learner['max_agents'])}, "
                f"{paths[0]} has {(first['max_obs_dim'], first['max_agents'])}"
            )
        networks.append(_network(learner, algorithm))
    reference = networks[0]
    wanted = {name: tuple(tensor.shape) for name, tensor in reference.items()}
    for path, network in zip(paths[1:], networks[1:]):
        shapes = {name: tuple(tensor.shape) for name, tensor in network.items()}
        if shapes != wanted:
            raise CheckpointMismatch(f"{path}: policy network {shapes}, {paths[0]} has {wanted}")
    for name in reference:
        # In place into the first checkpoint's network (float64 sum: the order of the copies
        # does not change the float32 result beyond rounding).
        total = sum(network[name].double() for network in networks)
        reference[name].copy_((total / len(networks)).to(reference[name].dtype))
    save_checkpoint(Path(out), states[0])
    return states[0]


def _network(learner: dict[str, Any], algorithm: str) -> dict[str, Any]:
    node = learner
    for key in POLICY_NETWORK[algorithm]:
        node = node[key]
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_node.consensus.shared_policy", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="the agents' checkpoints (latest.pt)")
    parser.add_argument("--out", required=True, type=Path, help="where the averaged checkpoint is written")
    args = parser.parse_args(argv)
    try:
        average_policy_checkpoints(args.checkpoints, args.out)
    except (CheckpointMismatch, FileNotFoundError) as error:
        print(f"cannot average: {error}", file=sys.stderr)
        return 2
    print(f"averaged {len(args.checkpoints)} checkpoints into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
