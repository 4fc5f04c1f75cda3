"""bench/main_job_cpu.py's mapping from py-spy's collapsed stacks to CPU categories, on fixed lines."""

from __future__ import annotations

import pytest
from tests.conftest import REPO, load_bench

cpu = load_bench("main_job_cpu.py")

SITE = "/work/main/.venv/lib/python3.11/site-packages"
STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"
# The root every node's stack has: forked by the zygote, run as `python -m agent_node`.
AGENT_ROOT = (
    f"thread (2868): MainThread;_run_module_as_main (<frozen runpy>:198);<module> ({REPO}/orchestrator/zygote.py:330);"
    f"become_node ({REPO}/orchestrator/zygote.py:207);main ({REPO}/agent_node/__main__.py:62);"
    f"AgentNode.run ({REPO}/agent_node/node.py:146);AgentNode._iterate ({REPO}/agent_node/node.py:180)"
)
ENV_ROOT = (
    f"thread (2866): MainThread;<module> ({REPO}/orchestrator/zygote.py:330);serve ({REPO}/env_server/__main__.py:188);"
    f"EnvServer.poll_once ({REPO}/env_server/server.py:250);EnvServer._step ({REPO}/env_server/server.py:280)"
)


def _line(root: str, *frames: str, count: int = 3) -> str:
    return ";".join([root, *frames]) + f" {count}"


@pytest.mark.parametrize("frames, expected", [
    # a gradient step, down into torch's backward
    ((f"AgentNode._learn_one_slice ({REPO}/agent_node/node.py:293)", f"DQNAgent.update ({REPO}/agent_node/algos/dqn.py:180)",
      f"DQNAgent._gradient_step ({REPO}/agent_node/algos/dqn.py:214)", f"backward ({SITE}/torch/autograd/__init__.py:353)"), "learner updates"),
    # the batch a gradient step draws is replay, not the update
    ((f"DQNAgent.update ({REPO}/agent_node/algos/dqn.py:180)", f"DQNAgent._gradient_step ({REPO}/agent_node/algos/dqn.py:190)",
      f"ReplayBuffer.sample ({REPO}/agent_node/replay.py:120)"), "relabelling and replay"),
    # the policy's forward pass
    ((f"AgentNode._answer ({REPO}/agent_node/node.py:436)", f"DQNAgent.act ({REPO}/agent_node/algos/dqn.py:150)",
      f"QNetwork.forward ({REPO}/agent_node/algos/dqn.py:66)", f"Linear.forward ({SITE}/torch/nn/modules/linear.py:125)"), "acting"),
    # the action sent back from the acting path is transport
    ((f"AgentNode._answer ({REPO}/agent_node/node.py:437)", f"Channel.send ({REPO}/protocols/net/transport.py:700)",
      f"Channel._encode ({REPO}/protocols/net/transport.py:590)", f"pack ({SITE}/msgpack/__init__.py:30)"), "messages and transport"),
    # relabelling own rows for every landmark
    ((f"AgentNode._record_transition ({REPO}/agent_node/node.py:451)",
      f"LandmarksCapability.feed_learner ({REPO}/agent_node/landmarks/capability.py:200)",
      f"LandmarkSession._relabelled ({REPO}/agent_node/landmarks/session.py:300)"), "relabelling and replay"),
    # a consensus round's own work is a protocol; its socket send is transport
    ((f"ConsensusCapability.begin_hold ({REPO}/agent_node/consensus/capability.py:90)",
      f"SyncConsensus.on_share ({REPO}/protocols/engines/consensus.py:400)"), "protocols"),
    ((f"ConsensusCapability.begin_hold ({REPO}/agent_node/consensus/capability.py:90)",
      f"PeerMesh.send ({REPO}/agent_node/peers.py:120)", f"Socket.send_multipart ({SITE}/zmq/sugar/socket.py:700)"), "messages and transport"),
    # the world model's fit inside a consensus hold is the world model's
    ((f"LocalWorldModel.prepare ({REPO}/agent_node/consensus/subjects.py:50)",
      f"EnsembleWorldModel.fit ({REPO}/agent_node/world_models/ensemble.py:188)",
      f"_single_tensor_adam ({SITE}/torch/optim/adam.py:400)"), "world model (fit)"),
    # metrics and TensorBoard
    ((f"AgentNode.write_metrics ({REPO}/agent_node/node.py:255)", f"MetricsWriter.write ({REPO}/protocols/storage/metrics.py:63)",
      f"dumps ({STDLIB}/json/__init__.py:231)"), "logging and metrics"),
    # checkpoints: the replay's file written at a save
    ((f"NodePersistence.save_all ({REPO}/agent_node/persistence.py:80)", f"ReplayBuffer.save ({REPO}/agent_node/replay.py:183)",
      f"_ZipWriteFile.write ({STDLIB}/zipfile.py:1150)"), "checkpoints and resume files"),
    # what is left of the loop itself
    ((f"AgentNode._dispatch ({REPO}/agent_node/node.py:230)",), "node loop and control"),
    # woken, waiting for a CPU: left out of the split
    ((f"Hub.wait ({REPO}/protocols/net/transport.py:1190)", f"wait_readable ({REPO}/protocols/net/transport.py:1188)",
      f"Poller.poll ({SITE}/zmq/sugar/poll.py:106)"), "waiting (left out)"),
])
def test_an_agent_stack_goes_to_its_category(frames: tuple[str, ...], expected: str) -> None:
    assert cpu.parse_collapsed(_line(AGENT_ROOT, *frames)) == {expected: 3}


def test_a_stack_read_cut_short_is_other_not_guessed() -> None:
    """py-spy without pausing the process sometimes reads a stack without its outer frames."""
    line = _line("thread (2868): MainThread", f"Module.named_parameters ({SITE}/torch/nn/modules/module.py:2600)")
    assert cpu.parse_collapsed(line) == {"other": 3}


@pytest.mark.parametrize("frames, expected", [
    # PettingZoo's stepping under the vector of copies
    ((f"StateTracking.step ({REPO}/env_server/global_view.py:80)", f"VectorizedParallelEnv.step ({REPO}/env_server/vector.py:344)",
      f"aec_to_parallel_wrapper.step ({SITE}/pettingzoo/utils/conversions.py:180)",
      f"Scenario.observation ({SITE}/mpe2/simple_spread/simple_spread.py:150)"), "env step"),
    # an evaluation episode's stepping is evaluation, not the training env step
    ((f"Evaluator.step ({REPO}/env_server/evaluator.py:120)", f"VectorizedParallelEnv.step ({REPO}/env_server/vector.py:344)",
      f"World.step ({SITE}/mpe2/_mpe_utils/core.py:120)"), "evaluation and reference lines"),
    # the observations' broadcast to the agents
    ((f"EnvServer.broadcast ({REPO}/env_server/server.py:312)", f"LockstepBarrier.broadcast ({REPO}/env_server/barrier.py:186)",
      f"ClientBodies.deliver ({REPO}/env_server/client_bodies.py:60)"), "messages and transport"),
    # the resume point written every so often
    ((f"EnvServer.save_resume_point ({REPO}/env_server/server.py:326)", f"ResumeFile.save ({REPO}/env_server/resume.py:70)"),
     "checkpoints and resume files"),
])
def test_an_env_server_stack_goes_to_its_category(frames: tuple[str, ...], expected: str) -> None:
    assert cpu.parse_collapsed(_line(ENV_ROOT, *frames)) == {expected: 3}


def test_samples_add_up_per_category_over_lines() -> None:
    text = "\n".join([
        _line(AGENT_ROOT, f"DQNAgent.update ({REPO}/agent_node/algos/dqn.py:180)", count=7),
        _line(AGENT_ROOT, f"DQNAgent.update ({REPO}/agent_node/algos/dqn.py:181)", count=5),
        _line(AGENT_ROOT, f"DQNAgent.act ({REPO}/agent_node/algos/dqn.py:150)", count=2),
        "thread (2868): MainThread 4",  # a sample with no Python frame
        "",
    ])
    assert cpu.parse_collapsed(text) == {"learner updates": 12, "acting": 2, "other": 4}


@pytest.mark.parametrize("file, expected", [
    (f"{REPO}/agent_node/replay.py", "agent_node/replay.py"),
    (f"{SITE}/torch/nn/modules/linear.py", "torch/nn/modules/linear.py"),
    (f"{STDLIB}/json/encoder.py", "json/encoder.py"),
    ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap>"),
])
def test_a_frame_file_is_named_from_its_package(file: str, expected: str) -> None:
    assert cpu.module_path(file) == expected


def test_every_rule_names_a_category_of_the_table() -> None:
    assert {category for category, _, _ in cpu.RULES} <= set(cpu.CATEGORIES)


def test_the_wake_up_write_is_a_wait_and_a_line_of_ours_is_named_with_its_category() -> None:
    wake = _line(ENV_ROOT, f"EnvServer.broadcast ({REPO}/env_server/server.py:312)",
                 f"ShmLink.write ({REPO}/protocols/net/shm_lockstep.py:288)", count=4)
    step = _line(ENV_ROOT, f"VectorizedParallelEnv.step ({REPO}/env_server/vector.py:344)",
                 f"Scenario.reward ({SITE}/mpe2/simple_spread/simple_spread.py:120)", count=6)
    text = wake + "\n" + step
    assert cpu.parse_collapsed(text) == {"waiting (left out)": 4, "env step": 6}
    assert cpu.own_lines(text) == {("env_server/vector.py:344 VectorizedParallelEnv.step", "env step"): 6}


def test_the_env_servers_step_wall_time_is_read_from_its_last_sums_and_set_beside_the_floor(tmp_path) -> None:
    import json

    metrics = tmp_path / "nodes" / "env" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    assert cpu.env_step_wall(tmp_path) == {}  # no file: a run from before the sums
    first = {"lockstep/waiting_s": 1.0, "lockstep/stepping_s": 2.0, "lockstep/sending_s": 0.5, "lockstep/timed_steps": 10.0}
    last = {"lockstep/waiting_s": 30.0, "lockstep/stepping_s": 40.0, "lockstep/sending_s": 10.0, "lockstep/timed_steps": 10000.0}
    metrics.write_text("".join(json.dumps({"step": step, **values}) + "\n"
                               for step, values in ((10, first), (11, {"eval/return_mean": -20.0}), (10000, last))))
    wall = cpu.env_step_wall(tmp_path)
    assert wall == last
    line = cpu.step_wall_line(wall, all_cpu=160.0, command_s=100.0)
    assert "stepping the copies 40.0 s (4.00 ms a step)" in line and "waiting for the agents' actions 30.0 s (3.00 ms)" in line
    assert "took 1.25 times its floor on 2 cores (80.0 s)" in line
