"""The cost of OG-MARL's update path, old against new, side by side in one process.

    python bench/sac_update_cost.py [--baseline-ref 87ef093,26411d9] [--env-steps 200] [--blocks 6]
                                    [--profile] [--json]

OG-MARL's agents each take 10 SAC gradient steps of batch 256 per environment step (1 real row and
255 imagined ones, the reference's batch). This bench builds SAC agents with the current code,
once with its products around MKL (`current, oneDNN products`: the wide layers' products through
oneDNN, the narrow first layer's backward products transposed; what the agents run on an AMD
processor, see `agent_node/algos/sac.py`) and once through torch's own products (`current, torch
products`, what they run elsewhere); the table names which of the two this machine's agents run
and compares it with the others. And one with
`agent_node/algos/sac.py` as it was at each commit of `--baseline-ref` (read with `git show`,
loaded as a module of its own; by default 87ef093, before the update path was reworked, and 26411d9,
after the rework's first session), the same seed and the same buffers (6,000 real rows, 20,000 imagined), and times
`update()` after each new real row, exactly as the agent node drives it: `--env-steps`
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

Before timing, two checks (the bench exits non-zero if either fails):
- every baseline does the same updates as the current code with torch's products: both agents,
  from the same seed, take 200 gradient steps, and every parameter and every logged loss must be
  bitwise equal (`identical`);
- the oneDNN products give the same updates as torch's up to float32 rounding: from one seed,
  the largest relative difference of any parameter tensor after 10 gradient steps is below
  `ONE_STEP_TOLERANCE` (printed, with the difference after 200 steps, where SAC's updates have
  carried the rounding on).

`--profile` prints cProfile's top functions (by CPU time of the thread) of the current
implementation's update loop.
"""

from __future__ import annotations

import argparse
import contextlib
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

# The commit before the update path was reworked, and the end of the rework's first session.
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


def same_updates(current_class, baseline_module, env_steps: int = 20) -> dict:
    """Both implementations from one seed: parameters and losses bitwise equal after the steps.
    Both run with torch's own products here (`_USE_ONEDNN` off, in a baseline that has it too):
    this checks that nothing else changed; `onednn_against_torch` checks the fast products."""
    with products("torch"):
        current, current_data = make_agent(current_class)
        current_metrics = drive(current, current_data, env_steps)
    with products("torch", baseline_module):
        baseline, baseline_data = make_agent(baseline_module.SACAgent)
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


def onednn_against_torch(current_class, env_steps: int = 20) -> dict:
    """The current code with the wide layers' products through oneDNN against torch's own, from
    one seed: the largest relative difference of any parameter tensor (max |a - b| / max |b|)
    after one environment step (10 gradient steps) and after `env_steps`. The products differ
    only in the order of their additions, so after one step the difference is float32 rounding;
    over many steps SAC's updates carry it on (reported, not a pass criterion)."""
    from agent_node.algos import sac

    if not sac._onednn_linear_available():
        return {"available": False}
    runs = {}
    for kind in ("onednn", "torch"):
        with products(kind):
            agent, data = make_agent(current_class)
            drive(agent, data, 1)
            after_one = parameters(agent)
            drive(agent, data, env_steps - 1)
            runs[kind] = (after_one, parameters(agent))

    def largest_relative(a: dict, b: dict) -> float:
        return max(float((a[key] - b[key]).abs().max() / b[key].abs().max().clamp_min(1e-30)) for key in b)

    one = largest_relative(runs["onednn"][0], runs["torch"][0])
    return {
        "available": True,
        "after_one_env_step": one,
        f"after_{env_steps}_env_steps": largest_relative(runs["onednn"][1], runs["torch"][1]),
        "within_float32_rounding": one < ONE_STEP_TOLERANCE,
    }


# After 10 gradient steps from one state, the two products' runs may differ by float32 rounding
# carried through Adam's normalized steps; a real difference in the update is orders larger.
ONE_STEP_TOLERANCE = 1e-4


def parameters(agent) -> dict:
    import torch

    tensors = {f"{name}.{key}": value.detach().clone() for name in ("actor", "q1", "q2", "q1_target", "q2_target")
               for key, value in getattr(agent, name).state_dict().items()}
    tensors["log_alpha"] = agent.log_alpha.detach().clone().reshape(1)
    return {key: value.to(torch.float64) for key, value in tensors.items()}


@contextlib.contextmanager
def products(kind: str, module=None):
    """Run SAC code (the current module, or a baseline's) with its products the fast way
    ("onednn") or torch's own ("torch"); a baseline from before the fast products has only torch's."""
    if module is None:
        from agent_node.algos import sac as module
    if not hasattr(module, "_USE_ONEDNN"):
        yield
        return
    before = module._USE_ONEDNN
    module._USE_ONEDNN = kind == "onednn" and module._onednn_linear_available()
    try:
        yield
    finally:
        module._USE_ONEDNN = before


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
    checks = {ref: same_updates(SACAgent, module) for ref, module in baselines.items()}
    products_check = onednn_against_torch(SACAgent)

    # name -> (agent class, the current code's products); a baseline runs as it was at its commit.
    implementations = {**{ref: (module.SACAgent, "torch") for ref, module in baselines.items()},
                       "current, torch products": (SACAgent, "torch")}
    if products_check["available"]:
        implementations["current, oneDNN products"] = (SACAgent, "onednn")
    from agent_node.algos import sac

    # What the agents run on this machine (oneDNN on an AMD processor, torch's own elsewhere).
    current = "current, oneDNN products" if sac._USE_ONEDNN else "current, torch products"
    agents = {}
    for name, (agent_class, kind) in implementations.items():
        with products(kind):
            agents[name] = make_agent(agent_class, seed=1)
            drive(*agents[name], 5)  # warm-up: allocator, optimizer state
    times: dict[str, list[float]] = {name: [] for name in implementations}
    cpu_times: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(args.blocks):
        for name, (agent, data) in agents.items():
            with products(implementations[name][1]):
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
    # Current over each baseline (and over its other products), medians: below 1 is faster.
    result["current"] = current
    others = [name for name in implementations if name != current]
    result["current_over_baseline"] = {
        name: round(float(np.median(times[current]) / np.median(times[name])), 3) for name in others
    }
    result["cpu_current_over_baseline"] = {
        name: round(float(np.median(cpu_times[current]) / np.median(cpu_times[name])), 3) for name in others
    }
    result["onednn_against_torch"] = products_check
    identical = all(check["identical"] for check in checks.values())
    products_agree = products_check.get("within_float32_rounding", True)

    if args.profile:
        import cProfile
        import pstats

        agent, data = agents[current]
        profiler = cProfile.Profile(time.thread_time)  # CPU time: under load, wall time is the scheduler's
        with products(implementations[current][1]):
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
            print(f"same updates as {ref}, torch products ({check['gradient_steps']} gradient steps, bitwise): "
                  f"{check['identical']}" + (f", differing: {check['mismatched']}" if check["mismatched"] else ""))
        if products_check["available"]:
            print(
                "oneDNN against torch products, largest relative parameter difference: after 10 gradient steps "
                f"{products_check['after_one_env_step']:.2e} (within float32 rounding, < {ONE_STEP_TOLERANCE:g}: "
                f"{products_agree}), after 200 {products_check['after_20_env_steps']:.2e}"
            )
        else:
            print("oneDNN products: not available in this torch (the current code uses torch's own)")
        print(
            f"{'':<26}{'ms / gradient step':>20}{'s / 1000 steps, 1 agent':>26}{'5 agents / 2 cores':>22}"
            f"{'CPU ms / step':>16}{'CPU: 5 agents / 2 cores':>26}  blocks (wall ms; CPU ms)"
        )
        for name, row in result["implementations"].items():
            print(
                f"{name:<26}{row['ms_per_gradient_step']:>20.3f}{row['s_per_1000_training_steps_one_agent']:>26.1f}"
                f"{row['s_per_1000_training_steps_5_agents_2_cores']:>22.1f}{row['cpu_ms_per_gradient_step']:>16.3f}"
                f"{row['cpu_s_per_1000_training_steps_5_agents_2_cores']:>26.1f}  {row['ms_per_gradient_step_blocks']}; "
                f"{row['cpu_ms_per_gradient_step_blocks']}"
            )
        for name in others:
            print(
                f"{current} / {name}: {result['current_over_baseline'][name]:.3f} (wall), "
                f"{result['cpu_current_over_baseline'][name]:.3f} (CPU time of this thread)"
            )
    return 0 if identical and products_agree else 1


if __name__ == "__main__":
    sys.exit(main())
