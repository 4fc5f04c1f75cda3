"""The CPU of one DQN gradient step of the main job, torch against numpy, side by side in one process.

    python bench/dqn_update_cost.py [--blocks 8] [--steps 500] [--save docs/results/dqn_update_cost.json
                                     --page docs/results/dqn_update_cost.md]
    python bench/dqn_update_cost.py --page-from docs/results/dqn_update_cost.json --page docs/results/dqn_update_cost.md

Three DQN agents with the main job's learner settings (configs/4agents_ring.yaml: 64-64, batch
128, double DQN, Huber, clipping, Adam, a soft target update every step) and its agents'
observation width (28 features, 5 actions), each with the same 20,000 random rows in its replay:

- `torch, autograd`: the torch path of a network with an encoder (autograd and `step()`);
- `torch, by hand`: what the main job's agents run by default (agent_node/algos/lean_steps.py);
- `numpy`: `agents.learner.numpy_updates` (agent_node/algos/numpy_steps.py: the step compiled by numba).

The three take turns block by block (`--steps` gradient steps each), so a change of load hits
all of them; the CPU time of the timing thread (`time.thread_time`, one torch and one BLAS
thread, as the agents run) is reported, median over `--blocks` blocks, and each path's ratio
to the default's. The projection is the four agents' learner updates in a main-job run: 4 x
39,000 steps x the median. Only the numbers of one invocation compare with each other.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the orchestrator starts the agents; before numpy loads
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import results_page  # noqa: E402

OBS_DIM, ACTIONS = 28, 5  # the main job's agents' Q-network input and output
ROWS = 20_000
GRADIENT_STEPS_PER_AGENT = 39_000  # the main job's, per agent per run
PATHS = ("torch, autograd", "torch, by hand", "numpy")


def make_agents() -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np
    import torch

    from agent_node.algos.dqn import DQNAgent
    from agent_node.roles import Transition
    from orchestrator.config import load_config

    torch.set_num_threads(1)
    learner = load_config(REPO / "configs" / "4agents_ring.yaml").agents.learner
    settings = {key: value for key, value in learner.model_dump().items() if key != "kind"}
    rng = np.random.default_rng(0)
    rows = Transition(obs=rng.normal(size=(ROWS, OBS_DIM)).astype(np.float32), action=rng.integers(0, ACTIONS, ROWS),
                      reward=rng.normal(size=ROWS).astype(np.float32),
                      next_obs=rng.normal(size=(ROWS, OBS_DIM)).astype(np.float32),
                      terminated=rng.random(ROWS) < 0.05, truncated=np.zeros(ROWS, bool))
    agents = {}
    for path in PATHS:
        config = type(learner)(**{**settings, "numpy_updates": path == "numpy"})
        agent = DQNAgent(config, gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), gym.spaces.Discrete(ACTIONS), seed=0)
        if path == "torch, autograd":
            agent._online_passes = agent._target_passes = None  # the path a network with an encoder takes
        agent.observe(rows)
        agents[path] = agent
    return agents


def measure(blocks: int, steps: int) -> list[dict[str, Any]]:
    import statistics

    agents = make_agents()
    for agent in agents.values():
        for _ in range(50):  # warm-up: the optimizer's state, the allocator
            agent._gradient_step()
    per_step_ms: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(blocks):
        for path, agent in agents.items():
            started = time.thread_time()
            for _ in range(steps):
                agent._gradient_step()
            per_step_ms[path].append((time.thread_time() - started) / steps * 1e3)
    default = statistics.median(per_step_ms["torch, by hand"])
    rows = []
    for path in PATHS:
        median = statistics.median(per_step_ms[path])
        rows.append({"path": path, "ms_per_step": median, "blocks_ms": per_step_ms[path], "ratio_to_default": median / default,
                     "main_job_cpu_s": 4 * GRADIENT_STEPS_PER_AGENT * median / 1e3})
    return rows


def render(record: dict[str, Any], source: str) -> str:
    columns = [
        ("path", "left", lambda row: f"`{row['path']}`"),
        ("CPU ms per gradient step (median)", "right", lambda row: f"{row['ms_per_step']:.3f}"),
        ("blocks, min-max", "right", lambda row: f"{min(row['blocks_ms']):.3f}-{max(row['blocks_ms']):.3f}"),
        ("against `torch, by hand`", "right", lambda row: f"{row['ratio_to_default']:.2f}x"),
        ("4 agents x 39,000 steps, CPU s", "right", lambda row: f"{row['main_job_cpu_s']:.0f}"),
    ]
    settings = record["settings"]
    intro = (f"The main job's DQN learner ({OBS_DIM} inputs, 64-64, {ACTIONS} actions, batch 128), {settings['blocks']} "
             f"blocks of {settings['steps']} gradient steps per path, taking turns; CPU time of the timing thread. "
             "How it is measured: bench/dqn_update_cost.py's docstring.")
    return results_page.page(record, "A DQN gradient step of the main job: torch against numpy", source, intro, columns,
                             record.get("note", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500, help="gradient steps per timed block")
    parser.add_argument("--note", default="", help="a sentence for the page (what this run is and is not)")
    results_page.add_page_options(parser)
    args = parser.parse_args(argv)
    if results_page.render_saved_page(parser, args, render):
        return 0
    record = results_page.begin("bench/dqn_update_cost.py", sys.argv[1:] if argv is None else argv)
    record["settings"] = {"blocks": args.blocks, "steps": args.steps}
    record["note"] = args.note
    record["rows"] = measure(args.blocks, args.steps)
    for row in record["rows"]:
        print(f"{row['path']:16} {row['ms_per_step']:.3f} ms/step  {row['ratio_to_default']:.2f}x  "
              f"main job {row['main_job_cpu_s']:.0f} CPU s")
    results_page.finish(record, args.save, args.page, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
