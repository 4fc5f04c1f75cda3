"""The random baseline (env_server/baselines.py): the env server's `eval/random_return_mean` and
the table `orchestrate evaluate` prints come from one function with one seed derivation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from env_server.baselines import baseline_metrics, main, random_returns
from env_server.config import EnvNodeConfig
from env_server.registry import make_env
from env_server.vector import VectorizedParallelEnv
from orchestrator.config import load_config, with_nodes, with_runtime, write_resolved
from orchestrator.evaluate import evaluation_config, mean_return_per_agent, random_baseline
from protocols.run.node_config import load_node_config
from protocols.run.settings import ENV_NODE_ID, RunLayout

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny_ring.yaml"
KWARGS = {"N": 2, "max_cycles": 5}


def test_random_returns_are_per_agent_per_episode_and_the_same_every_time():
    first = random_returns("mpe2.simple_spread_v3", KWARGS, construction_seed=1, eval_seed=40, episodes=3)
    assert len(first) == 3 and all(set(row) == {"agent_0", "agent_1"} for row in first)
    assert len({row["agent_0"] for row in first}) == 3  # three different episodes
    assert random_returns("mpe2.simple_spread_v3", KWARGS, construction_seed=1, eval_seed=40, episodes=3) == first


def test_an_episodes_random_return_does_not_depend_on_how_many_are_played():
    three = random_returns("mpe2.simple_spread_v3", KWARGS, construction_seed=1, eval_seed=40, episodes=3)
    five = random_returns("mpe2.simple_spread_v3", KWARGS, construction_seed=1, eval_seed=40, episodes=5)
    assert five[:3] == three


def test_episode_i_starts_where_the_servers_evaluation_copy_i_starts():
    copies = VectorizedParallelEnv(lambda: make_env("mpe2.simple_spread_v3", KWARGS), 3, autoreset=False)
    served = copies.reset(40).observations["agent_0"]
    for index in range(3):
        env = make_env("mpe2.simple_spread_v3", KWARGS)
        observations, _ = env.reset(seed=40 + index)  # what the copies of random_returns do for episode `index`
        np.testing.assert_array_equal(observations["agent_0"], served[index])


def test_evaluate_and_the_env_server_give_one_random_number_for_one_run(tmp_path):
    # The evaluation of a run, resolved as `orchestrate evaluate` resolves it (rundir.prepare_run).
    layout = RunLayout(run_id="eval", run_dir=str(tmp_path), socket_dir=str(tmp_path / "sock"))
    resolved = with_nodes(with_runtime(evaluation_config(load_config(TINY), tmp_path, episodes=3), layout))
    rows, why_not = random_baseline(resolved, episodes=3)  # the command, in a subprocess
    assert why_not is None and len(rows) == 3
    # The evaluation run's env server: its config, seeds and evaluation copies as
    # env_server/__main__.py builds them.
    config, identity = load_node_config(write_resolved(resolved, tmp_path), ENV_NODE_ID, EnvNodeConfig)
    construction_seed = identity.seed("env_construction")
    eval_envs = VectorizedParallelEnv(lambda: make_env(config.env.name, dict(config.env.kwargs), construction_seed=construction_seed),
                                      config.env.eval_episodes, autoreset=False)
    served = baseline_metrics(eval_envs, identity.seed("eval_env"), config.env.name)["eval/random_return_mean"]
    assert mean_return_per_agent(rows) == served


def test_the_command_reports_a_failure_as_one_json_line(capsys):
    assert main([json.dumps({"name": "nope_v1", "construction_seed": 0, "eval_seed": 0, "episodes": 1})]) == 2
    assert "nope_v1" in json.loads(capsys.readouterr().out)["error"]
