"""`orchestrate evaluate RUN_DIR`: run a finished run's policies greedily and print their returns.

The evaluation is itself a run, launched through the same runtime as `orchestrate up` (one process
per agent, the env server, the run's topology and transport), made from the run's own
`resolved.yaml` with these changes (`evaluation_config`):

- `agents.learning: false`: the agents act greedily, observe and update nothing;
- `agents.load_checkpoints: <RUN_DIR>/nodes`: every agent starts from the checkpoint its node
  wrote last (`nodes/<node id>/checkpoints/latest.pt`, written at the latest when the node
  stopped); a missing one is a config error before launch (orchestrator/prelaunch.py);
- one training step, then one evaluation of `--episodes` episodes on as many evaluation copies
  (`env.eval_every_steps: 1`, `env.eval_episodes: N`), each copy reset from the run's evaluation
  seed plus its index, so the episodes differ and the same command gives the same episodes;
- no faults; and each capability turns off what would move the weights or write beside them
  (agent_node/registry.py `for_evaluation`): no consensus (averaging would move the weights being
  evaluated), no dataset; a world model that only consensus trained (beside a model-free
  learner, as in the main job) is not built.

The env server writes each evaluation episode's per-agent returns to its metrics
(`eval_episode/return/<agent>`, env_server/evaluation.py); this module prints them as a table,
one row per episode and one column per agent, with the mean, and beside it the same table for
uniformly random actions on the same episodes (`python -m env_server.baselines`, a subprocess:
the orchestrator imports no env code), the baseline a trained policy has to beat: the same
function and seeds as the env server's `eval/random_return_mean`, so both give one number. The
evaluation run's directory is `<RUN_DIR>/evaluations/<n>`, so the run it evaluates keeps
everything about itself.

A capability may refuse the evaluation instead: a run trained centrally (its agents act with the
Q-networks the learner node sends them), a run of goal-conditioned agents (its env pays no reward
of its own, and evaluation episodes choose no goals).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent_node.registry import run_descriptions
from orchestrator.config import RESOLVED_FILENAME, RunConfig, load_resolved, resolve_data, validate_config
from protocols.run.config_errors import ConfigError
from protocols.seeds import derive_seed
from protocols.storage.jsonlines import json_object
from protocols.run.settings import ENV_NODE_ID, agent_node_ids

EVALUATIONS_DIRNAME = "evaluations"
EPISODE_KEY = "eval_episode/index"
EPISODE_RETURN_PREFIX = "eval_episode/return/"
# Random actions for a few episodes of a small env: seconds; this bounds a slow or stuck env.
RANDOM_BASELINE_TIMEOUT_S = 300.0


def evaluation_config(run: RunConfig, run_dir: Path, episodes: int, render: bool = False) -> RunConfig:
    """The config of an evaluation of the run in `run_dir` (see the module docstring)."""
    source = str(run_dir / RESOLVED_FILENAME)
    if episodes < 1:
        raise ConfigError([f"--episodes: expected at least 1, got {episodes}"], source)
    data = resolve_data(run)
    data.pop("nodes", None)
    data.pop("runtime", None)
    data["run"].update(steps=1, name=f"{run.run.name}-eval")
    data["env"].update(eval_every_steps=1, eval_episodes=episodes, eval_start_step=0, render_evaluation=render)
    data["agents"].update(learning=False, load_checkpoints=str((run_dir / "nodes").absolute()), load_shared_checkpoint=None)
    # What each capability turns off for an evaluation, or why it refuses one (agent_node/registry.py).
    problems = [problem for description in run_descriptions(run) for problem in description.for_evaluation(run, data)]
    if problems:
        raise ConfigError(problems, source)
    data["faults"] = {}
    return validate_config(data, source)


def write_gif(evaluation_dir: Path, path: Path, frames_per_second: float = 10.0) -> int:
    """The first episode's frames of an evaluation run (`env.render_evaluation`) as an animated
    GIF at `path`; returns how many frames it holds."""
    import numpy as np
    from PIL import Image  # matplotlib's own dependency

    saved = evaluation_dir / "nodes" / "env" / "frames" / "evaluation_1.npz"
    if not saved.is_file():
        raise FileNotFoundError(f"no frames at {saved}: the evaluation did not render")
    frames = np.load(saved)["frames"]
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / frames_per_second), loop=0)
    return len(images)


def next_evaluation_dir(run_dir: Path) -> Path:
    """`<run_dir>/evaluations/<n>`, n one more than the highest there (from 1)."""
    parent = run_dir / EVALUATIONS_DIRNAME
    taken = [int(p.name) for p in parent.iterdir() if p.name.isdigit()] if parent.is_dir() else []
    return parent / str(max(taken, default=0) + 1)


def read_episode_returns(evaluation_dir: Path) -> list[dict[str, float]]:
    """Each evaluation episode's per-agent returns, from the env server's metrics, in episode order."""
    path = evaluation_dir / "nodes" / "env" / "metrics.jsonl"
    if not path.is_file():
        return []
    episodes = []
    for line in path.read_text().splitlines():
        row = json_object(line)  # None for a line cut short by a crash
        if row is not None and EPISODE_KEY in row:
            episodes.append({key.removeprefix(EPISODE_RETURN_PREFIX): float(value)
                             for key, value in row.items() if key.startswith(EPISODE_RETURN_PREFIX)})
    return episodes


def format_returns(episodes: list[dict[str, float]], nodes: dict[str, str]) -> str:
    """A table: one row per episode, one column per agent (`env agent (node id)`), the mean over
    agents in the last column, and a last row of means over episodes."""
    agents = list(episodes[0])
    headers = ["episode", *(f"{agent} ({nodes[agent]})" if nodes.get(agent, agent) != agent else agent for agent in agents), "mean"]
    rows = []
    for index, episode in enumerate(episodes):
        values = [episode[agent] for agent in agents]
        rows.append([str(index), *(f"{v:.3f}" for v in values), f"{_mean(values):.3f}"])
    means = [_mean([episode[agent] for episode in episodes]) for agent in agents]
    rows.append(["mean", *(f"{v:.3f}" for v in means), f"{_mean(means):.3f}"])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [headers, *rows]]
    return "\n".join(lines)


def mean_return_per_agent(episodes: list[dict[str, float]]) -> float:
    """The mean over episodes of the mean over agents (env_server/baselines.py computes the
    server's `eval/random_return_mean` the same way, in the same order)."""
    return _mean([_mean(list(episode.values())) for episode in episodes])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def agents_by_env_agent(possible_agents: list[str]) -> dict[str, str]:
    """env agent -> the node that drove it (agent_i drives possible_agents[i])."""
    return dict(zip(possible_agents, agent_node_ids(len(possible_agents))))


def load_run(run_dir: Path) -> RunConfig:
    path = run_dir / RESOLVED_FILENAME
    if not path.is_file():
        raise ConfigError([f"expected a run directory with {RESOLVED_FILENAME}, found none in {run_dir}"])
    return load_resolved(path)


def random_baseline(resolved: RunConfig, episodes: int) -> tuple[list[dict[str, float]] | None, str | None]:
    """(each agent's return per episode with uniformly random actions, on the evaluation's
    episodes, None) or (None, why there is none): built and seeded as the env server's
    evaluation copies (its node's `env_construction` and `eval_env` seeds)."""
    env_index = resolved.nodes[ENV_NODE_ID].index
    request = json.dumps({
        "name": resolved.env.name, "kwargs": dict(resolved.env.kwargs), "episodes": episodes,
        "construction_seed": derive_seed(resolved.run.seed, env_index, "env_construction"),
        "eval_seed": derive_seed(resolved.run.seed, env_index, "eval_env"),
    })
    try:
        done = subprocess.run([sys.executable, "-m", "env_server.baselines", request], capture_output=True,
                              text=True, timeout=RANDOM_BASELINE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"random actions took over {RANDOM_BASELINE_TIMEOUT_S:.0f} s"
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None, (done.stderr.strip().splitlines() or [f"exit {done.returncode}, no output"])[-1]
    if "episodes" not in answer:
        return None, str(answer.get("error"))
    return answer["episodes"], None


def summary(run_dir: Path, evaluation_dir: Path, episodes: list[dict[str, Any]],
            random: tuple[list[dict[str, float]] | None, str | None]) -> str:
    nodes = agents_by_env_agent(list(episodes[0]))
    lines = [f"greedy evaluation of {run_dir} (each agent's last checkpoint), {len(episodes)} episode(s); "
             f"return per agent:", format_returns(episodes, nodes)]
    random_episodes, why_not = random
    trained = mean_return_per_agent(episodes)
    if random_episodes:
        baseline = mean_return_per_agent(random_episodes)
        lines += ["uniformly random actions on the same episodes:", format_returns(random_episodes, nodes),
                  f"mean return per agent: {trained:.3f} trained, {baseline:.3f} random"]
    else:
        lines.append(f"(no random baseline: {why_not})")
    lines.append(f"evaluation run: {evaluation_dir}")
    return "\n".join(lines)
