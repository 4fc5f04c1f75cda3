"""`python -m agent_node.offline`: train offline learners from a recorded dataset, no env server.

    python -m agent_node.offline --dataset RUN/dataset --learner cql --gradient-steps 5000 --out CKPT

One learner per agent shard of the dataset (`agent_node/offline/datasets.py`; a run records one with
`agents.record_dataset: true`), each trained on its own agent's transitions. Each trained agent
is written as `<out>/<env agent>/latest.pt` in the node's checkpoint format, plus
`<out>/offline.json` saying what was trained on what. A run then evaluates them with

    agents:
      learner: {kind: cql, ...same hyperparameters...}
      learning: false
      load_checkpoints: CKPT

(`orchestrate up` with learning off: the agents act greedily and learn nothing). The learner
section must match the one trained here: the checkpoint holds the network weights of that shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CHECKPOINT_NAME = "latest.pt"


def train_offline(
    dataset_dir: Path, learner: str, gradient_steps: int, hidden_sizes: tuple[int, ...], seed: int, out: Path
) -> dict[str, dict[str, float]]:
    """Train one `learner` (cql | bc) per shard and save each; returns per-agent final metrics."""
    import torch

    from agent_node.algos import build_learner
    from agent_node.algos.config import BCConfig, CQLConfig
    from agent_node.persistence import save_checkpoint
    from agent_node.offline.datasets import MultiAgentDataset
    from protocols.seeds import derive_seed

    torch.set_num_threads(1)
    dataset = MultiAgentDataset(dataset_dir)
    config_class = {"cql": CQLConfig, "bc": BCConfig}[learner]
    config = config_class(gradient_steps=gradient_steps, hidden_sizes=hidden_sizes)
    results: dict[str, dict[str, float]] = {}
    for index, agent in enumerate(dataset.agents):
        observation_space, action_space = dataset.spaces(agent)
        model = build_learner(config, observation_space, action_space, derive_seed(seed, index, "offline"))
        arrays = dataset.arrays(agent)
        model.load_dataset(arrays)
        started = time.monotonic()
        metrics: dict[str, float] = {}
        while model.gradient_steps_due() > 0:
            metrics = model.update(max_gradient_steps=500)
        save_checkpoint(out / agent / CHECKPOINT_NAME, {"learner": model.state_dict(), "step": 0, "episodes": 0})
        results[agent] = {**metrics, "rows": float(len(arrays["reward"])), "train_s": time.monotonic() - started}
    out.mkdir(parents=True, exist_ok=True)
    (out / "offline.json").write_text(
        json.dumps(
            {"dataset": str(dataset_dir), "learner": config.model_dump(mode="json"), "seed": seed, "agents": results},
            indent=2,
        )
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_node.offline", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, type=Path, help="a dataset directory (e.g. RUN/dataset)")
    parser.add_argument("--learner", choices=("cql", "bc"), default="cql")
    parser.add_argument("--gradient-steps", type=int, default=5000)
    parser.add_argument("--hidden-sizes", default="64,64", help="comma-separated widths, e.g. 64,64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="where <agent>/latest.pt are written")
    args = parser.parse_args(argv)
    from agent_node.algos.params import UnusableDataset
    from agent_node.offline.datasets import DatasetError

    try:
        hidden = tuple(int(width) for width in args.hidden_sizes.split(","))
    except ValueError:
        print(f"--hidden-sizes: expected comma-separated integers, got {args.hidden_sizes!r}", file=sys.stderr)
        return 2
    try:
        results = train_offline(args.dataset, args.learner, args.gradient_steps, hidden, args.seed, args.out)
    except (DatasetError, UnusableDataset) as error:
        print(f"dataset {args.dataset}: {error}", file=sys.stderr)
        return 2
    for agent, metrics in results.items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if np.isfinite(v))
        print(f"{agent}: {shown}")
    print(f"checkpoints in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
