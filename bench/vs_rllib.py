"""Parley against RLlib: multi-agent sampling throughput with a 64x64 MLP policy per agent.

    make bench-rllib                                   # makes .venv-bench, then runs this
    .venv-bench/bin/python bench/vs_rllib.py [--steps N] [--json] [--rllib-shared-module]

Installation. RLlib is no dependency of Parley; it comes with the optional extra `[bench]`
(pyproject.toml), in a venv of its own: ray 2.60.0 pins gymnasium==1.2.2 while the project's
venv has gymnasium 1.4, so the two cannot share a venv. `make bench-rllib` runs

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e '.[bench]'           # ray[rllib]==2.60.0, gymnasium 1.2.2,
                                                        # torch 2.13 CPU from the local wheel
    .venv-bench/bin/python bench/vs_rllib.py

and every row, Parley's included, runs from that venv's Python (the env server and the policy
clients are started with `sys.executable`). Without ray the script still measures the
in-process and Parley rows and says why the RLlib rows are missing.

What is measured, in one run, on mpe2 simple_spread_v3 (N=4 agents, max_cycles=25, discrete
actions), in environment steps per second summed over env copies:

- in-process: one PettingZoo ParallelEnv stepped in a loop; each of the 4 agents runs its own
  64x64 MLP forward pass on its observation and samples an action. The reference (ratio 1.0).
- Parley K=1 and K=8: a standalone env server (`python -m env_server`) and 4 processes of
  `bench/policy_client.py`, one per agent, each doing one batched forward pass over its K copies
  per lockstep step. Timed inside the clients from the first observation to the last, so
  process start-up (importing torch, joining) is left out, as RLlib's start-up is.
- RLlib: PPO's default RLModule with fcnet_hiddens=[64, 64] (tanh), the env wrapped in RLlib's
  `ParallelPettingZooEnv`, sampled by its `MultiAgentEnvRunner` through `EnvRunner.sample()`
  with `explore=True`; no training, no learner update, nothing sent back but step counts.
  Rows: 1 and 8 envs per env runner, each with 0 remote env runners (the local runner samples
  in this process: one core, no Ray actor hops) and with 2 remote env runners (one per core of
  a 2-core machine; the driver only waits). A warm-up sample precedes every timed one.

Why this RLlib configuration (ray 2.60.0, files under ray/rllib/):
- An env runner builds its modules with `inference_only=True`
  (env/multi_agent_env_runner.py:924), and an inference-only PPO actor-critic encoder skips
  the critic (core/models/base.py:324), so its forward pass is the actor encoder (two 64-unit
  tanh layers) and the `pi` head (one Linear to 5 logits, head_fcnet_hiddens=[] by default:
  core/rl_module/default_model_config.py:134): the same network as the Parley client's.
- With `explore=True` the runner calls `forward_exploration` (env/multi_agent_env_runner.py:372)
  and its module-to-env connector samples from the categorical distribution; the Parley client
  samples too.
- 8 envs per runner are one gymnasium vector env of 8 sub-envs, stepped synchronously
  (`gym_env_vectorize_mode="sync"` by default, algorithms/algorithm_config.py:332; made at
  env/multi_agent_env_runner.py:874), with one forward pass per module over all 8 sub-envs.
- One module per agent by default (policy_mapping_fn: agent id -> module id), because every
  Parley agent is a process with its own network: 4 forward passes per step on both sides.
  `--rllib-shared-module` maps all agents to one module instead (RLlib's favourable case: one
  forward pass over 4 x E rows); the Parley side does not change.

Ratios: "vs in-process" divides by the in-process row. "Parley/RLlib" on an RLlib row divides
Parley at K = that row's envs per runner by the row; on a Parley row it divides by the fastest
RLlib row with envs per runner = K. The issue's target is Parley >= 3x RLlib at K=1 and K=8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# One intra-op thread everywhere (this process, the clients, Ray's workers inherit it): 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from policy_client import mlp_policy, sample_actions  # noqa: E402
from runs import kill_leftovers, ready_endpoint  # noqa: E402
from protocols.seeds import derive_seed  # noqa: E402

ENV_NAME = "mpe2.simple_spread_v3"
ENV_KWARGS = {"N": 4, "max_cycles": 25, "continuous_actions": False}
NUM_AGENTS = 4
RUN_SEED = 0
CLIENT_TIMEOUT_S = 600


@dataclass
class Row:
    setting: str
    system: str  # "in-process", "parley" or "rllib"
    envs: int  # Parley's K, or RLlib's envs per env runner (1 for in-process)
    env_runners: int | None  # RLlib only: remote env runners (0: the local runner samples)
    env_steps: int
    seconds: float

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.seconds


def make_parallel_env():
    """The env as Parley's env server builds it, for all three sides alike."""
    from env_server.registry import make_env

    return make_env("mpe2.simple_spread_v3", ENV_KWARGS)


# --------------------------------------------------------------------------- in-process


def measure_inprocess(env_steps: int, hidden: int) -> Row:
    env = make_parallel_env()
    env.reset(seed=RUN_SEED)
    observation_size = env.observation_space(env.possible_agents[0]).shape[0]
    num_actions = int(env.action_space(env.possible_agents[0]).n)
    torch.manual_seed(derive_seed(RUN_SEED, 0, "bench_inprocess_policy"))
    policies = {agent: mlp_policy(observation_size, num_actions, hidden) for agent in env.possible_agents}
    observations, _ = env.reset(seed=RUN_SEED)
    with torch.inference_mode():
        for agent, policy in policies.items():  # torch's first call, out of the timed loop
            sample_actions(policy, observations[agent][None])
        start = time.perf_counter()
        for _ in range(env_steps):
            if not env.agents:
                observations, _ = env.reset()
            actions = {agent: int(sample_actions(policies[agent], observations[agent][None])[0]) for agent in env.agents}
            observations, *_ = env.step(actions)
        seconds = time.perf_counter() - start
    return Row("in-process PettingZoo + 4 MLPs", "in-process", 1, None, env_steps, seconds)


# --------------------------------------------------------------------------- Parley


def measure_parley(lockstep_steps: int, copies: int, hidden: int) -> Row:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "env_server", "--env", ENV_NAME, "--kwargs", json.dumps(ENV_KWARGS),
         "--copies", str(copies), "--max-steps", str(lockstep_steps), "--bind", "tcp://127.0.0.1:0",
         "--seed", str(derive_seed(RUN_SEED, 0, "bench_env"))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
    )
    clients: list[subprocess.Popen] = []
    try:
        endpoint = ready_endpoint(server.stdout.readline().decode().strip())
        clients = [
            subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "policy_client.py"), endpoint, str(index),
                 str(derive_seed(RUN_SEED, index + 1, "bench_policy")), "--hidden", str(hidden)],
                stdout=subprocess.PIPE, env=env, cwd=REPO,
            )
            for index in range(NUM_AGENTS)
        ]
        windows = []
        for index, client in enumerate(clients):
            out, _ = client.communicate(timeout=CLIENT_TIMEOUT_S)
            windows.append(parse_timing(out.decode(), index, client.returncode, lockstep_steps))
    finally:
        kill_leftovers(clients)
        server.terminate()
        server.wait(timeout=30)
    # The server resets once all 4 agents joined and broadcasts the first observation to all of
    # them at once, so the four windows cover the same steps; the longest one is the run.
    return Row(f"Parley K={copies} (server + 4 agents)", "parley", copies, None, lockstep_steps * copies, max(windows))


def parse_timing(stdout: str, index: int, returncode: int, lockstep_steps: int) -> float:
    """The client's timed window (s), after checking that it acted at every step itself."""
    lines = [line for line in stdout.splitlines() if line.startswith("TIMING ")]
    if returncode != 0 or not lines:
        raise RuntimeError(f"policy client {index} exited with {returncode} and printed {stdout!r}")
    _, answered, defaulted, seconds = lines[-1].split()
    if int(answered) != lockstep_steps or int(defaulted) != 0:
        raise RuntimeError(
            f"policy client {index} answered {answered} of {lockstep_steps} steps and the server "
            f"defaulted {defaulted} actions (a step deadline passed): the measurement is not valid"
        )
    return float(seconds)


# --------------------------------------------------------------------------- RLlib


def make_rllib_env(env_config):
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    return ParallelPettingZooEnv(make_parallel_env())


def map_agent_to_own_module(agent_id, episode, **kwargs):
    return agent_id


def map_agent_to_shared_module(agent_id, episode, **kwargs):
    return "shared"


def rllib_config(num_env_runners: int, envs_per_runner: int, shared_module: bool, hidden: int):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    agents = [f"agent_{i}" for i in range(NUM_AGENTS)]
    return (
        PPOConfig()
        .environment("parley_bench_simple_spread")
        .framework("torch")
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=envs_per_runner, explore=True)
        .multi_agent(
            policies={"shared"} if shared_module else set(agents),
            policy_mapping_fn=map_agent_to_shared_module if shared_module else map_agent_to_own_module,
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[hidden, hidden], fcnet_activation="tanh"))
        .debugging(seed=derive_seed(RUN_SEED, 0, "bench_rllib"), log_level="ERROR")
    )


def sample_env_steps(env_runner, env_steps: int) -> int:
    """Sample on one env runner; only the count goes back (no episode crosses a process)."""
    episodes = env_runner.sample(num_timesteps=env_steps, explore=True)
    return sum(episode.env_steps() for episode in episodes)


def measure_rllib(env_steps: int, num_env_runners: int, envs_per_runner: int, shared_module: bool, hidden: int) -> Row:
    algo = rllib_config(num_env_runners, envs_per_runner, shared_module, hidden).build_algo()
    try:
        warmup = 20 * envs_per_runner
        if num_env_runners == 0:
            sample_env_steps(algo.env_runner, warmup)
            start = time.perf_counter()
            sampled = sample_env_steps(algo.env_runner, env_steps)
            seconds = time.perf_counter() - start
        else:
            group = algo.env_runner_group
            per_runner = -(-env_steps // num_env_runners)
            group.foreach_env_runner(lambda runner: sample_env_steps(runner, warmup), local_env_runner=False)
            start = time.perf_counter()
            counts = group.foreach_env_runner(lambda runner: sample_env_steps(runner, per_runner), local_env_runner=False)
            seconds = time.perf_counter() - start
            if len(counts) != num_env_runners:
                raise RuntimeError(f"expected {num_env_runners} env runners to answer, {len(counts)} did")
            sampled = sum(counts)
    finally:
        algo.stop()
    where = "local runner" if num_env_runners == 0 else f"{num_env_runners} remote runners"
    modules = "1 shared module" if shared_module else "4 modules"
    return Row(f"RLlib {where} x {envs_per_runner} env, {modules}", "rllib", envs_per_runner, num_env_runners, sampled, seconds)


def rllib_missing_reason() -> str | None:
    # Importing, not finding: Ray core (the `[ray]` extra of the launch backend) ships the
    # ray/rllib sources without RLlib's dependencies, so `ray.rllib` is found but does not import.
    try:
        import ray.rllib  # noqa: F401
    except ImportError:
        return (
            f"RLlib rows skipped: ray[rllib] is not importable from {sys.executable}. "
            "It lives in its own venv: `make bench-rllib` (makes .venv-bench with "
            "`pip install -e '.[bench]'` and runs this script from it)."
        )
    return None


def measure_rllib_rows(env_steps: int, shared_module: bool, hidden: int) -> list[Row]:
    import ray
    from ray.tune.registry import register_env

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        register_env("parley_bench_simple_spread", make_rllib_env)
        return [
            measure_rllib(env_steps, runners, envs, shared_module, hidden)
            for envs in (1, 8)
            for runners in (0, 2)
        ]
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- report


def parley_over_rllib(row: Row, rows: list[Row]) -> float | None:
    """On an RLlib row: Parley with K = its envs per runner over it. On a Parley row: Parley
    over the fastest RLlib row with envs per runner = K."""
    if row.system == "rllib":
        parley = [r for r in rows if r.system == "parley" and r.envs == row.envs]
        return parley[0].steps_per_s / row.steps_per_s if parley else None
    if row.system == "parley":
        rllib = [r.steps_per_s for r in rows if r.system == "rllib" and r.envs == row.envs]
        return row.steps_per_s / max(rllib) if rllib else None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4_000, help="environment steps per row (summed over copies)")
    parser.add_argument("--hidden", type=int, default=64, help="width of the MLP's two hidden layers")
    parser.add_argument("--rllib-shared-module", action="store_true", help="RLlib: one module shared by the 4 agents")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = [
        measure_inprocess(args.steps, args.hidden),
        measure_parley(args.steps, 1, args.hidden),
        measure_parley(args.steps // 8, 8, args.hidden),
    ]
    skipped = rllib_missing_reason()
    if skipped is None:
        rows += measure_rllib_rows(args.steps, args.rllib_shared_module, args.hidden)
    inprocess = rows[0].steps_per_s

    if args.json:
        print(json.dumps({
            "env": ENV_NAME, "env_kwargs": ENV_KWARGS, "hidden": args.hidden, "python": sys.executable,
            "rllib_skipped": skipped,
            "rows": [
                {**asdict(r), "steps_per_s": round(r.steps_per_s, 1), "vs_inprocess": round(r.steps_per_s / inprocess, 3),
                 "parley_over_rllib": (None if (ratio := parley_over_rllib(r, rows)) is None else round(ratio, 3))}
                for r in rows
            ],
        }))
        return
    print(f"{ENV_NAME} N=4, {args.hidden}x{args.hidden} MLP forward per agent per step, ~{args.steps} env steps per row")
    print(f"{'setting':<46}{'env steps/s':>12}{'vs in-process':>15}{'Parley/RLlib':>14}")
    for row in rows:
        ratio = parley_over_rllib(row, rows)
        print(f"{row.setting:<46}{row.steps_per_s:>12.0f}{row.steps_per_s / inprocess:>15.2f}{'' if ratio is None else f'{ratio:.2f}':>14}")
    if skipped:
        print(skipped)


if __name__ == "__main__":
    main()
