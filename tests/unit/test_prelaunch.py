"""The pre-launch checks against the built env (orchestrator/prelaunch.py): each problem that a
run would otherwise meet only after its processes started is a config error that names the field.

`launch_problems` is pure: these tests hand it the facts `env_server.precheck` prints. One test
runs `orchestrate validate` as a user would, to see the whole path exit 2 before anything starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from env_server.precheck import env_facts
from orchestrator.config import load_config
from orchestrator.prelaunch import EnvFacts, launch_problems

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_ring.yaml"  # 3 DQN agents on simple_spread N=3


def facts(count: int, action: dict, observation: dict | None = None, prefix: str = "agent") -> EnvFacts:
    agents = tuple(f"{prefix}_{i}" for i in range(count))
    observation = observation or {"kind": "box", "shape": [18]}
    return EnvFacts(agents, {a: observation for a in agents}, {a: action for a in agents})


DISCRETE = {"kind": "discrete", "n": 5}
BOX = {"kind": "box", "shape": [2]}


def test_a_config_that_fits_its_env_has_no_problems():
    assert launch_problems(load_config(TINY), facts(3, DISCRETE)) == []


def test_an_agent_count_other_than_the_envs_is_refused_with_both_counts():
    pursuit = facts(8, DISCRETE, {"kind": "box", "shape": [7, 7, 3]}, prefix="pursuer")
    config = load_config(TINY, ["env.name=pettingzoo.pursuit_v5", "env.kwargs={}", "topology.kind=full"])
    (problem,) = launch_problems(config, pursuit)
    assert problem.startswith("agents.count: expected 8, the possible agents of pettingzoo.pursuit_v5")
    assert problem.endswith("got 3") and "pursuer_0" in problem


def test_a_learner_that_does_not_act_in_the_envs_action_space_is_refused():
    (sac_on_discrete,) = launch_problems(load_config(TINY, ["agents.learner={kind: sac}"]), facts(3, DISCRETE))
    assert sac_on_discrete.startswith("agents.learner.kind: 'sac' acts in a 1-D Box (continuous) action space")
    assert "Discrete(5) to agent_0" in sac_on_discrete and "dqn" in sac_on_discrete
    (dqn_on_box,) = launch_problems(load_config(TINY), facts(3, BOX))
    assert dqn_on_box.startswith("agents.learner.kind: 'dqn' acts in a Discrete action space")
    assert "a Box of shape (2,)" in dqn_on_box and "sac" in dqn_on_box
    assert launch_problems(load_config(TINY, ["agents.learner={kind: sac}"]), facts(3, BOX)) == []
    # A 2-D Box is not a vector of actions either.
    (image_actions,) = launch_problems(load_config(TINY, ["agents.learner={kind: sac}"]), facts(3, {"kind": "box", "shape": [2, 2]}))
    assert "a Box of shape (2, 2)" in image_actions


def test_an_observation_that_is_not_a_box_is_refused():
    (problem,) = launch_problems(load_config(TINY), facts(3, DISCRETE, {"kind": "dict"}))
    assert problem.startswith("env.name: every learner reads a Box observation") and "a dict space" in problem


def test_image_observations_are_refused_to_a_learner_without_a_cnn():
    pixels = {"kind": "box", "shape": [64, 64, 3], "image": True}
    assert launch_problems(load_config(TINY), facts(3, DISCRETE, pixels)) == []  # DQN's encoder: auto -> CNN
    (problem,) = launch_problems(load_config(TINY, ["agents.learner={kind: sac}"]), facts(3, BOX, pixels))
    assert problem.startswith("agents.learner.kind: mpe2.simple_spread_v3 gives image observations (a Box of shape (64, 64, 3)")
    assert "'sac' would flatten them" in problem and "only dqn reads images through a CNN" in problem
    # A Box of three axes that is not uint8 pixels (a feature map, say) is not an image.
    assert launch_problems(load_config(TINY, ["agents.learner={kind: sac}"]),
                           facts(3, BOX, {"kind": "box", "shape": [4, 4, 3], "image": False})) == []
    # Numpy updates take a plain MLP: not the CNN DQN reads images through, unless told to flatten.
    (numpy_updates,) = launch_problems(load_config(TINY, ["agents.learner.numpy_updates=true"]), facts(3, DISCRETE, pixels))
    assert numpy_updates.startswith("agents.learner.numpy_updates: mpe2.simple_spread_v3 gives image observations")
    assert launch_problems(load_config(TINY, ["agents.learner.numpy_updates=true", "agents.learner.encoder=mlp"]),
                           facts(3, DISCRETE, pixels)) == []


def test_load_checkpoints_must_hold_one_checkpoint_per_agent_in_either_layout(tmp_path):
    def problems(path: Path) -> list[str]:
        return launch_problems(load_config(TINY, [f"agents.load_checkpoints={path}"]), facts(3, DISCRETE))

    (missing_dir,) = problems(tmp_path / "nope")
    assert missing_dir.startswith("agents.load_checkpoints: expected a directory") and "nope" in missing_dir
    # agent_node.offline's layout, <env agent>/latest.pt, with one agent missing:
    for agent in ("agent_0", "agent_1"):
        (tmp_path / "offline" / agent).mkdir(parents=True)
        (tmp_path / "offline" / agent / "latest.pt").write_bytes(b"x")
    (one_missing,) = problems(tmp_path / "offline")
    assert "none for 1 of 3 (agent_2)" in one_missing and str(tmp_path / "offline" / "agent_2" / "latest.pt") in one_missing
    (tmp_path / "offline" / "agent_2").mkdir()
    (tmp_path / "offline" / "agent_2" / "latest.pt").write_bytes(b"x")
    assert problems(tmp_path / "offline") == []
    # A run's own nodes/ directory: <node id>/checkpoints/latest.pt.
    for node in ("agent_0", "agent_1", "agent_2"):
        (tmp_path / "run" / "nodes" / node / "checkpoints").mkdir(parents=True)
        (tmp_path / "run" / "nodes" / node / "checkpoints" / "latest.pt").write_bytes(b"x")
    assert problems(tmp_path / "run" / "nodes") == []


def test_load_shared_checkpoint_must_be_a_file(tmp_path):
    shared = ["agents.learner={kind: shared_dqn, max_obs_dim: 18, max_agents: 4}"]
    config = load_config(TINY, [*shared, f"agents.load_shared_checkpoint={tmp_path / 'avg.pt'}"])
    (problem,) = launch_problems(config, facts(3, DISCRETE))
    assert problem.startswith("agents.load_shared_checkpoint: expected a checkpoint file")
    (tmp_path / "avg.pt").write_bytes(b"x")
    assert launch_problems(config, facts(3, DISCRETE)) == []


SAC_COLLECTION = ROOT / "configs" / "tiny_sac_reward_collection.yaml"  # 3 SAC agents on reward_collection_v0
OG_MARL = ROOT / "configs" / "tiny_og_marl.yaml"


def collection_facts(task: str | None) -> EnvFacts:
    agents = ("agent_0", "agent_1", "agent_2")
    return EnvFacts(agents, {a: BOX for a in agents}, {a: BOX for a in agents}, task)


def test_learners_that_score_rows_with_the_reward_function_need_an_env_that_describes_it():
    own = load_config(SAC_COLLECTION, ["agents.learner.reward=own_contribution"])
    assert launch_problems(own, collection_facts("site_collection")) == []
    (problem,) = launch_problems(own, collection_facts(None))
    assert problem.startswith("agents.learner.reward: 'own_contribution' scores each real row with the task's reward")
    assert problem.endswith("reward_collection_v0 describes none; set it to 'team'")
    assert launch_problems(load_config(SAC_COLLECTION), collection_facts(None)) == []  # reward: team needs none
    og_marl = load_config(OG_MARL)
    assert launch_problems(og_marl, collection_facts("site_collection")) == []
    (problem,) = launch_problems(og_marl, collection_facts(None))
    assert problem.startswith("agents.learner.kind: 'og_marl' scores its imagined steps with the task's reward")
    both = launch_problems(load_config(OG_MARL, ["agents.learner.sac.reward=own_contribution",
                                                 "agents.learner.real_ratio=0.25"]), collection_facts(None))
    assert [problem.split(":")[0] for problem in both] == ["agents.learner.kind", "agents.learner.sac.reward"]


def test_the_precheck_reports_the_agents_and_spaces_the_checks_use():
    spread = env_facts("mpe2.simple_spread_v3", {"N": 2})
    assert spread["agents"] == ["agent_0", "agent_1"]
    assert spread["action_spaces"]["agent_0"] == {"kind": "discrete", "n": 5}
    assert spread["observation_spaces"]["agent_1"]["kind"] == "box"
    assert spread["observation_spaces"]["agent_1"]["image"] is False
    continuous = env_facts("mpe2.simple_spread_v3", {"N": 2, "continuous_actions": True})
    assert continuous["action_spaces"]["agent_0"] == {"kind": "box", "shape": [5], "image": False}
    # The reward function as data: reward collection describes one, simple_spread none.
    assert spread["task"] is None
    assert env_facts("reward_collection_v0", {"num_agents": 2})["task"] == "site_collection"


def test_up_refuses_a_wrong_agent_count_on_pursuit_before_anything_starts(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "up", str(TINY), "--set", "env.name=pettingzoo.pursuit_v5",
         "--set", "env.kwargs={}", "--set", f"run.root={tmp_path / 'runs'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "agents.count: expected 8" in result.stderr and "got 3" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_env_server_whose_env_has_another_agent_count_exits_2_naming_it(tmp_path):
    # As if the pre-launch check had been skipped: the env server checks the env it built.
    from orchestrator.rundir import prepare_run

    config = load_config(TINY, ["env.name=pettingzoo.pursuit_v5", "env.kwargs={}", "env.eval_every_steps=null"])
    resolved, run_dir = prepare_run(config, tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "env_server", "--config", str(run_dir / "resolved.yaml"), "--node-id", "env",
         "--control", f"ipc://{tmp_path}/nobody.sock"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "agents.count: expected 8, the possible agents of pettingzoo.pursuit_v5" in result.stderr
    assert "got 3 agent nodes" in result.stderr
