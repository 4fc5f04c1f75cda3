"""`run.reproducible`: one seed, two runs whose timing differs, the same learning: DQN agents on
tiny_star_tcp (with evaluation episodes and policy consensus), and OG-MARL agents on tiny_og_marl
(SAC, sparse-GP world models whose float64 statistics are averaged, imagined rollouts).

The second run is perturbed three ways, so that messages and gradient steps interleave
differently: a busy-loop process pinned to one core competes with the nodes, every agent takes
one gradient step per look at its sockets (`gradient_steps_per_slice: 1` against 4), and each
link delays its messages by a jittered few milliseconds. What the seed decides must not move:
every learner metric, return, consensus figure and evaluation, in the same rows, and the final
checkpoints. What measures timing by nature is left out of the comparison: wall time (`t`), link
and security counters (heartbeats are sent on a clock), membership notices, and durations.

Without the mode the same pair of runs may differ (an agent then acts with up to
`max_pending_gradient_steps` owed, so how many gradient steps precede an action is timing);
that is not asserted, only allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_node.persistence import load_checkpoint
from tests.integration.test_orchestrate import finished_ok, orchestrate, read_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AGENTS = ("agent_0", "agent_1", "agent_2")
# Deadlines far beyond any wait a loaded machine imposes, so no step and no round runs out and
# no neighbour is taken for dead.
PATIENT = (
    "run.reproducible=true",
    "env.step_deadline_s=60",
    "agents.env_silence_timeout_s=120",
    "protocols.membership.timeout_s=60",
    "agents.metrics_every_steps=5",
)
# tiny_star_tcp (DQN, tcp, a star) with evaluation episodes and synchronous consensus of the policy.
SETTINGS = (
    *PATIENT,
    "run.seed=3",
    "run.steps=50",
    "env.eval_every_steps=20",
    "env.eval_episodes=1",
    "protocols.consensus={enabled: true, what: policy_parameters, period_steps: 10, rounds: 3, round_timeout_s: 60}",
)
# tiny_og_marl (SAC and sparse-GP world models on a ring): 20 consensus rounds of float64 GP
# statistics, each node mixing two neighbours' shares, then imagined rollouts from the average.
OG_MARL_SETTINGS = (*PATIENT, "run.steps=60", "protocols.consensus.round_timeout_s=60")
PERTURBED = (
    "agents.gradient_steps_per_slice=1",
    "network.default_link={delay_s: 0.003, jitter_s: 0.003}",
)
# (The env server writes its default actions per agent and its steps' wall time every status
# period: when, and the seconds, are timing.)
TIMING_PREFIXES = ("link/", "security/", "membership/", "peer/", "env/default_actions/", "lockstep/")


def run_config(config: str, run_dir: Path, *settings: str) -> None:
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    process = orchestrate("up", config, "--run-dir", str(run_dir), *overrides)
    stderr = finished_ok(process, timeout_s=150)
    assert all(e["code"] == 0 for e in read_events(run_dir) if e["event"] == "exited")


def run_tiny_star(run_dir: Path, *extra: str) -> None:
    run_config("configs/tiny_star_tcp.yaml", run_dir, *SETTINGS, *extra)


def run_idle_then_perturbed(config: str, settings: tuple[str, ...], tmp_path: Path,
                            perturbed: tuple[str, ...] = PERTURBED) -> tuple[Path, Path]:  # fmt: skip
    idle, loaded = tmp_path / "idle", tmp_path / "loaded"
    run_config(config, idle, *settings)
    spinner = busy_loop_on_one_core()
    try:
        run_config(config, loaded, *settings, *perturbed)
    finally:
        spinner.kill()
        spinner.wait(timeout=10)
    return idle, loaded


def assert_same_learning(idle: Path, loaded: Path, learned: tuple[str, ...]) -> None:
    """Every agent's rows and checkpoint match; `learned` are keys its rows must have (so the
    comparison covers learning, returns and consensus, not only rows before learning began)."""
    for agent in AGENTS:
        rows = seeded_rows(idle, agent)
        for key in learned:
            assert any(key in row for row in rows), f"{agent} wrote no {key}"
        assert not any("reproducibility/broken" in row for row in rows), f"{agent}: a deadline ran out"
        assert seeded_rows(loaded, agent) == rows, f"{agent}: the metrics rows differ"
        assert_same_state(checkpoint(loaded, agent), checkpoint(idle, agent), f"{agent} checkpoint")


def seeded_rows(run_dir: Path, node: str) -> list[dict]:
    """The node's metrics rows without what measures timing; rows left with only a step dropped."""
    rows = []
    for line in (run_dir / "nodes" / node / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        kept = {
            key: value for key, value in record.items()
            if key != "t" and not key.startswith(TIMING_PREFIXES) and not key.endswith("duration_s")
        }  # fmt: skip
        if set(kept) != {"step"}:
            rows.append(kept)
    return rows


def checkpoint(run_dir: Path, agent: str) -> dict:
    import torch

    return load_checkpoint(run_dir / "nodes" / agent / "checkpoints" / "latest.pt")


def assert_same_state(a, b, path: str = "checkpoint") -> None:
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{index}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def busy_loop_on_one_core() -> subprocess.Popen:
    """A process that spins on core 0 until killed: it steals time from whichever node runs there."""
    cores = sorted(os.sched_getaffinity(0))
    return subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cores[0]}}})\nwhile True: pass"],
        start_new_session=True,
    )


@pytest.mark.long
def test_one_seed_gives_the_same_rows_and_checkpoints_under_different_timing(tmp_path):
    idle, loaded = run_idle_then_perturbed("configs/tiny_star_tcp.yaml", SETTINGS, tmp_path)
    assert_same_learning(idle, loaded, ("dqn/loss", "env/episode_return", "consensus/disagreement_max"))
    evaluations = seeded_rows(idle, "env")
    assert any("eval/return_mean" in row for row in evaluations)
    assert seeded_rows(loaded, "env") == evaluations


@pytest.mark.long
def test_og_marl_world_models_averaged_in_float64_come_out_the_same(tmp_path):
    idle, loaded = run_idle_then_perturbed("configs/tiny_og_marl.yaml", OG_MARL_SETTINGS, tmp_path)
    assert_same_learning(idle, loaded, ("sac/critic_loss", "og_marl/model_mse", "consensus/disagreement_max"))


# The main job shrunk, talking free in env time: each episode's landmarks agreed while the env
# waits, and partners' hindsight rows, which come by the wall clock, learned from the next
# agreement on (agent_node/landmarks/session.py).
MAIN_JOB_SETTINGS = (*PATIENT, "run.seed=5", "run.steps=120", "env.num_copies=2", "env.eval_every_steps=60",
                     "env.eval_episodes=2", "agents.learner.learning_starts=48", "agents.learner.batch_size=32",
                     "agents.checkpoint_every_steps=120",
                     "agents.landmarks.round_timeout_s=60")  # fmt: skip


@pytest.mark.long
def test_the_main_job_talking_free_learns_its_partners_rows_at_the_same_steps_under_different_timing(tmp_path):
    # Jittered links that keep order: a partner's rows before its table (a link that may reorder is refused).
    in_order = ("agents.gradient_steps_per_slice=1", "network.default_link={delay_s: 0.003, jitter_s: 0.003, in_order: true}")
    idle, loaded = run_idle_then_perturbed("configs/4agents_ring.yaml", MAIN_JOB_SETTINGS, tmp_path, perturbed=in_order)
    for agent in [f"agent_{i}" for i in range(4)]:
        rows = seeded_rows(idle, agent)
        assert any(row.get("hindsight/partner_rows_received", 0) > 0 for row in rows), f"{agent} heard no partner rows"
        assert any("dqn/loss" in row for row in rows) and not any("reproducibility/broken" in row for row in rows)
        assert seeded_rows(loaded, agent) == rows, f"{agent}: the metrics rows differ"
        assert_same_state(checkpoint(loaded, agent), checkpoint(idle, agent), f"{agent} checkpoint")


@pytest.mark.long
def test_a_deadline_that_runs_out_is_recorded_as_broken_reproducibility(tmp_path):
    """Links slower than the deadlines: every consensus round runs out before the neighbours'
    shares arrive, and the env server steps on without the agents' actions. The run still ends
    cleanly, and every agent says from which step its seed no longer decides it, and why."""
    run_dir = tmp_path / "late"
    run_tiny_star(
        run_dir,
        "run.steps=20",
        "env.step_deadline_s=0.05",
        "network.default_link={delay_s: 0.1}",
        "protocols.consensus={enabled: true, what: policy_parameters, period_steps: 10, rounds: 2, round_timeout_s: 0.02}",
    )
    for agent in AGENTS:
        broken = [row for row in seeded_rows(run_dir, agent) if "reproducibility/broken" in row]
        causes = {key for row in broken for key in row if key.startswith("reproducibility/") and key != "reproducibility/broken"}
        assert causes == {"reproducibility/step_deadline", "reproducibility/consensus_incomplete"}, broken
        assert len(broken) == 2  # once per cause, not once per late step
        assert "run.reproducible: this run is no longer a function of its seed" in (run_dir / "nodes" / agent / "log").read_text()
        # And in the run's event log, once per cause, as the node said it.
        said = [event for event in read_events(run_dir) if event["event"] == "reproducibility_broken" and event["node"] == agent]
        assert sorted(cause for event in said for cause in event["causes"]) == ["consensus_incomplete", "step_deadline"], said
