"""The cost of OG-MARL's update path, old against new, side by side in one process.

    python bench/sac_update_cost.py [--baseline-ref 87ef093,26411d9] [--env-steps 200] [--blocks 6]
                                    [--profile] [--json]

OG-MARL's agents each take 10 SAC gradient steps of batch 256 per environment step (1 real row and
255 imagined ones, the reference's batch). This bench builds one SAC agent with the current code
and one with `agent_node/algos/sac.py` as it was at each commit of `--baseline-ref` (read with
`git show`, loaded as a module of its own; by default 87ef093, before issue 23, and 26411d9, after
its first session), the same seed and the same buffers (6,000 real rows, 20,000 imagined), and
times `update()` after each new real row, exactly as the agent node drives it: `--env-steps`
environment steps (10 gradient steps each) per block, the implementations taking turns block by
block so that a change of load hits all of them. One thread (as the agents run).

Reported per implementation: the median over blocks of milliseconds per gradient step and of
seconds per 1,000 training steps for one agent (10,000 gradient steps), and the projection to the
OG-MARL run's update path, 5 agents on this machine's 2 cores: 5 x that / 2 (the agents' updates
share the cores; the env server, acting, refreshes and consensus come on top and are not in it).
The 1-minute load average before and after is printed: only numbers of one invocation compare.
Under load the wall time mostly measures the scheduler; the CPU time of the timing thread
(`time.thread_time`) is printed beside it, and is what compares the implementations then
(cache and frequency effects of the other jobs remain in it).

Before timing, it checks that every baseline does the same updates as the current code: both
agents, from the same seed, take 200 gradient steps, and every parameter and every logged loss
must be bitwise equal (`identical` in the output; the bench exits non-zero otherwise).

`--profile` prints cProfile's top functions (by CPU time of the thread) of the current
implementation's update loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The commit before the update path was reworked (issue 23), and the end of its first session.
DEFAULT_BASELINE_REFS = "87ef093,26411d9"
UPDATES_PER_STEP = 10
REAL_ROWS, IMAGINED_ROWS = 6000, 20000


def load_baseline(ref: str):
    """`agent_node/algos/sac.py` at `ref`, as a module named `sac_baseline_<ref>`."""
    source = subprocess.run(
        ["git", "show", f"{ref}:agent_node/algos/sac.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    name = f"sac_baseline_{ref}"
    path = Path(tempfile.mkdtemp(prefix="parley-sac-baseline-")) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rows(rng: np.random.Generator, count: int):
    from agent_node.roles import Transition

    return Transition(
        obs=rng.uniform(-10, 10, (count, 2)).astype(np.float32),
        action=rng.uniform(-1, 1, (count, 2)).astype(np.float32),
        reward=rng.normal(size=count).astype(np.float32),
        next_obs=rng.uniform(-10, 10, (count, 2)).astype(np.float32),
        terminated=np.zeros(count, dtype=bool),
        truncated=rng.random(count) < 0.01,
    )


def make_agent(agent_class, seed: int = 0):
    """An OG-MARL-shaped SAC agent past its random phase, with real and imagined rows."""
    import gymnasium as gym

    from agent_node.algos.config import SACConfig
    from agent_node.replay import ReplayBuffer

    config = SACConfig(random_steps=0, learning_starts=REAL_ROWS, updates_per_step=UPDATES_PER_STEP)
    box_obs = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
    box_action = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    agent = agent_class(config, box_obs, box_action, seed)
    data = np.random.default_rng(seed)
    agent.observe(rows(data, REAL_ROWS))
    model_buffer = ReplayBuffer(
        capacity=100_000, obs_shape=(2,), obs_dtype=np.float32, action_shape=(2,), action_dtype=np.float32, seed=seed + 1
    )
    model_buffer.add(rows(data, IMAGINED_ROWS))
    agent.set_model_buffer(model_buffer, 1 / 256)  # one real row per batch of 256
    return agent, data


def drive(agent, data, env_steps: int) -> list[dict[str, float]]:
    """`env_steps` environment steps as the node drives them: one real row, then update()."""
    metrics = []
    for _ in range(env_steps):
        agent.observe(rows(data, 1))
        metrics.append(agent.update())
    return metrics


def same_updates(current_class, baseline_class, env_steps: int = 20) -> dict:
    """Both implementations from one seed: parameters and losses bitwise equal after the steps."""
    current, current_data = make_agent(current_class)
    baseline, baseline_data = make_agent(baseline_class)
    current_metrics = drive(current, current_data, env_steps)
    baseline_metrics = drive(baseline, baseline_data, env_steps)
    mismatched = []
    for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
        for (key, a), (_, b) in zip(getattr(current, name).state_dict().items(), getattr(baseline, name).state_dict().items()):
            if not bool((a == b).all()):
                mismatched.append(f"{name}.{key}")
    if float(current.log_alpha.detach()) != float(baseline.log_alpha.detach()):
        mismatched.append("log_alpha")
    if current_metrics != baseline_metrics:
        mismatched.append("metrics")
    return {
        "gradient_steps": current.gradient_steps,
        "identical": not mismatched and current.gradient_steps == baseline.gradient_steps,
        "mismatched": mismatched,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE_REFS, help="commits to compare with, comma-separated")
    parser.add_argument("--env-steps", type=int, default=200, help="environment steps per timed block")
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks per implementation (alternating)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from agent_node.algos.sac import SACAgent

    refs = [ref.strip() for ref in args.baseline_ref.split(",") if ref.strip()]
    if not refs:
        parser.error(f"--baseline-ref needs at least one commit, got {args.baseline_ref!r}")
    baselines = {ref: load_baseline(ref) for ref in refs}
    load_before = os.getloadavg()[0]
    checks = {ref: same_updates(SACAgent, module.SACAgent) for ref, module in baselines.items()}

    implementations = {**{ref: module.SACAgent for ref, module in baselines.items()}, "current": SACAgent}
    agents = {name: make_agent(agent_class, seed=1) for name, agent_class in implementations.items()}
    for agent, data in agents.values():  # warm-up: allocator, optimizer state
        drive(agent, data, 5)
    times: dict[str, list[float]] = {name: [] for name in implementations}
    cpu_times: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(args.blocks):
        for name, (agent, data) in agents.items():
            started, cpu_started = time.perf_counter(), time.thread_time()
            drive(agent, data, args.env_steps)
            steps = args.env_steps * UPDATES_PER_STEP
            times[name].append((time.perf_counter() - started) / steps)
            cpu_times[name].append((time.thread_time() - cpu_started) / steps)
    load_after = os.getloadavg()[0]

    result = {
        "baseline_refs": refs,
        "same_updates": checks,
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "implementations": {},
    }
    for name, per_step in times.items():
        median = float(np.median(per_step))
        cpu_median = float(np.median(cpu_times[name]))
        result["implementations"][name] = {
            "ms_per_gradient_step_blocks": [round(1e3 * value, 3) for value in per_step],
            "ms_per_gradient_step": round(1e3 * median, 3),
            "cpu_ms_per_gradient_step_blocks": [round(1e3 * value, 3) for value in cpu_times[name]],
            "cpu_ms_per_gradient_step": round(1e3 * cpu_median, 3),
            "s_per_1000_training_steps_one_agent": round(median * UPDATES_PER_STEP * 1000, 1),
            "s_per_1000_training_steps_5_agents_2_cores": round(median * UPDATES_PER_STEP * 1000 * 5 / 2, 1),
            "cpu_s_per_1000_training_steps_5_agents_2_cores": round(cpu_median * UPDATES_PER_STEP * 1000 * 5 / 2, 1),
        }
    # Per baseline, current / baseline of the medians: below 1 is faster.
    result["current_over_baseline"] = {
        ref: round(float(np.median(times["current"]) / np.median(times[ref])), 3) for ref in refs
    }
    result["cpu_current_over_baseline"] = {
        ref: round(float(np.median(cpu_times["current"]) / np.median(cpu_times[ref])), 3) for ref in refs
    }
    identical = all(check["identical"] for check in checks.values())

    if args.profile:
        import cProfile
        import pstats

        agent, data = agents["current"]
        profiler = cProfile.Profile(time.thread_time)  # CPU time: under load, wall time is the scheduler's
        profiler.runcall(drive, agent, data, args.env_steps)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(20)

    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"OG-MARL update path, one agent, 10 gradient steps of batch 256 per env step (1 real row), "
            f"{args.blocks} alternating blocks of {args.env_steps} env steps; load average "
            f"{result['load_average_1min'][0]} -> {result['load_average_1min'][1]} on {result['cpus']} CPUs"
        )
        for ref, check in checks.items():
            print(f"same updates as {ref} ({check['gradient_steps']} gradient steps): {check['identical']}"
                  + (f", differing: {check['mismatched']}" if check["mismatched"] else ""))
        print(
            f"{'':<10}{'ms / gradient step':>20}{'s / 1000 steps, 1 agent':>26}{'5 agents / 2 cores':>22}"
            f"{'CPU ms / step':>16}{'CPU: 5 agents / 2 cores':>26}  blocks (wall ms; CPU ms)"
        )
        for name, row in result["implementations"].items():
            print(
                f"{name:<10}{row['ms_per_gradient_step']:>20.3f}{row['s_per_1000_training_steps_one_agent']:>26.1f}"
                f"{row['s_per_1000_training_steps_5_agents_2_cores']:>22.1f}{row['cpu_ms_per_gradient_step']:>16.3f}"
                f"{row['cpu_s_per_1000_training_steps_5_agents_2_cores']:>26.1f}  {row['ms_per_gradient_step_blocks']}; "
                f"{row['cpu_ms_per_gradient_step_blocks']}"
            )
        for ref in refs:
            print(
                f"current / {ref}: {result['current_over_baseline'][ref]:.3f} (wall), "
                f"{result['cpu_current_over_baseline'][ref]:.3f} (CPU time of this thread)"
            )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
