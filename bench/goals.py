"""Goal alignment on goal-lines: independent vs supervisor vs negotiation vs negotiation +
hindsight, through the runtime (`--runtime`) or in one process. Prints a table (or JSON with --json).

ALGORITHMS.md section 2. Two agents in the grid room (`goal_lines_v0`, L = 6, cooperative goals
only, 40 steps), each a goal-conditioned DQN (`agent_node/algos/goal_dqn.py`) of its own. Per
episode the goal-selection mode picks each agent's goal:

- `independent`: each samples uniformly (alignment at chance, 1/15);
- `supervisor`: one draw for both (alignment 1);
- `negotiation`: the goal-coordination game (`protocols/engines/negotiation.py`); the matrix update gets
  each agent's episode reward;
- `negotiation_her`: the same, and each agent relabels its transitions with HER (`future`,
  k = 4) over the goals it observed itself (no sharing);
- `negotiation_hindsight`: the same, and after each episode the agents exchange the achieved
  goals (`protocols/engines/hindsight.py`); HER relabels over its own and its partner's events.

The first three use no HER (as the reference's agents). What an agent observes of the achieved
goals is goal_lines' `view` (`--view`, default `local` as in the goal configs): with `local` an
agent's infos hold only the achievements it takes part in, so its partner's report carries the
landmarks the partner touched alone (`events_from_partners_only`); with `joint` every agent sees
everything and a report adds nothing.

Episodes run the same way in both: the env does not know the goals, every episode lasts
`max_steps`, each agent computes its goal reward from its infos, stays put (action 0) and stops
adding rows once rewarded (agent_node/goals/session.py). (`--env-ends-episodes`, in-process only,
gives the env the goals so that it ends an episode once both are rewarded, as the reference and
this bench's tables before the runtime comparison did.) Cooperative success = the fraction of
episodes in which both agents were rewarded (the same cooperative goal at the same step, which
needs aligned goals). This is not the continuous reference environment and not its training
budget: compare the direction of the results, not their values.

`--runtime` runs every (mode, seed) as an ordinary run through `orchestrate up` (configs/goals_*.yaml:
one process per agent, one env server, the supervisor node; negotiation and supervision over the
peer mesh while the env server holds each episode start), `--jobs` at a time, seed by seed; per
episode it joins the two agents' `goals/*` records. `--cross-check` then runs the same (mode,
seed) in-process and says whether each side's mean lies in the other's 95% interval; the speed
table gives episodes per second (wall) and CPU seconds per episode of both. The cross-check's
in-process runs draw their random streams as the runtime's nodes do (`--streams runtime`): the same
goals, env starts, initial weights and generators at a seed. What still differs is when gradient
steps are taken: a node acts while its learner owes up to `agents.max_pending_gradient_steps` (64),
so the steps an episode earns come during the next episode's first steps; in-process they come
before it. With `--set agents.max_pending_gradient_steps=0` a supervisor run is the same run on
both sides, row for row (tests/integration/test_goal_runs.py). The JSON (`--save`)
is rewritten after every run, so a batch cut short keeps what it finished; `--replot` redraws it.

    .venv/bin/python bench/goals.py --runtime --cross-check --seeds 5 --episodes 1500 --jobs 4 \
        --modes negotiation_hindsight supervisor negotiation independent negotiation_her \
        --save docs/results/data/goals_runtime.json --plot docs/results/data/goals_runtime.png

Without `--runtime`, in one process (messages passed in process, no loss):

    .venv/bin/python bench/goals.py --seeds 5 --episodes 1500 --save goals.json --plot docs/results/data/goals_success.png

`--ring N` runs configs/goals_ring6.yaml with N agents on a ring (all play every episode, L = 6)
and prints alignment per ring edge and of the whole team per window of episodes:

    .venv/bin/python bench/goals.py --ring 6 --seeds 1 --steps 8000

`--ring N --in-process` runs the ring in one process instead (negotiation flooding for the ring's
diameter, hindsight to the two ring neighbours, lossless and instant), for budgets of thousands of
episodes that the runtime cannot run here in minutes:

    .venv/bin/python bench/goals.py --ring 6 --in-process --seeds 2 --episodes 3000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from agent_node.algos.goal_dqn import GoalDQNAgent, GoalDQNConfig
from agent_node.goals.modules import SupervisorAssignment, UniformGoals
from env_server.envs.goal_lines import GoalLinesEnv, cooperative_goals, goal_reward, num_goals
from protocols.goal_spaces.goal_space import events_reports_add
from protocols.engines.hindsight import HindsightEngine, HindsightRequest
from protocols.engines.negotiation import NegotiationEngine, NegotiationRequest
from protocols.seeds import derive_seed
from intervals import curve_band, mean_ci  # noqa: E402  (bench/intervals.py)
from runs import records, run_record  # noqa: E402  (bench/runs.py: which runs may be scored, and their records)

MODES = ("independent", "supervisor", "negotiation", "negotiation_her", "negotiation_hindsight")
HER_MODES = ("negotiation_her", "negotiation_hindsight")  # the others learn without HER, as the reference's agents
DEFAULT_MODES = ("independent", "supervisor", "negotiation", "negotiation_hindsight")
STAY = 0  # goal_lines' action 0
AGENTS = ("agent_0", "agent_1")  # the pair (the runtime mode reads their metrics)
NUM_LANDMARKS = 6


def deliver(engines: dict, outgoing: list[tuple[str, str, object]], now: float) -> None:
    """Pass messages between in-process engines until none are left (a lossless, instant network)."""
    while outgoing:
        sender, destination, message = outgoing.pop(0)
        outgoing += [(destination, d, m) for d, m in engines[destination].on_message(sender, message, now)]


def team_graph(num_agents: int) -> dict[str, list[str]]:
    """Who negotiates and shares hindsight with whom: the pair, or a ring of `num_agents`."""
    agents = [f"agent_{i}" for i in range(num_agents)]
    if num_agents == 2:
        return {"agent_0": ["agent_1"], "agent_1": ["agent_0"]}
    return {agent: sorted({agents[(i - 1) % num_agents], agents[(i + 1) % num_agents]}) for i, agent in enumerate(agents)}


STREAMS = ("bench", "runtime")  # how `run` derives its random streams from the seed (`stream_seeds`)


def stream_seeds(seed: int, num_agents: int, streams: str) -> dict:
    """The seeds of a run's random streams. "bench": this bench's own derivation (every in-process
    figure before the runtime cross-check). "runtime": as an orchestrated run of the goal configs
    derives them (orchestrator/config.py `derive_nodes`: agents 0 .. n-1, the env server n, the
    external supervisor n + 1; agent_node/goals/session.py `build_goal_session`; the env server's
    first reset seed), so that at the same seed both benches draw the same supervisor goals, env
    starts, initial weights and exploration, replay and HER generators. With `streams="runtime"`
    and the runtime's agents taking their owed gradient steps before acting
    (`agents.max_pending_gradient_steps=0`), a supervisor run is the same run on both sides, row
    for row (tests/integration/test_goal_runs.py)."""
    if streams == "bench":
        return {"learner": [derive_seed(seed, index, "policy") for index in range(num_agents)],
                "env": derive_seed(seed, 0, "env"), "supervisor": derive_seed(seed, 99, "supervisor"), "first_reset_is_an_episode": False}
    if streams == "runtime":
        return {"learner": [derive_seed(seed, index, "learner") for index in range(num_agents)],
                "env": derive_seed(seed, num_agents, "env"), "supervisor": derive_seed(seed, num_agents + 1, "goals/supervisor"),
                "first_reset_is_an_episode": True}
    raise ValueError(f"streams must be one of {list(STREAMS)}, got {streams!r}")


def run(mode: str, seed: int, episodes: int, num_agents: int = 2, view: str = "joint", env_ends_episodes: bool = False,
        env_pays: bool | None = None, streams: str = "bench") -> dict:
    """One run of `mode` with a team of `num_agents` (a pair, or a ring that all play every
    episode); per episode: every agent rewarded (`success`), all on one goal (`aligned`), the
    fraction of the team graph's edges whose ends share a goal (`edges_aligned`), each agent's
    `proposals` and `goals` (episodes x agents; a proposal is what the agent's own goal module
    offered the negotiation, equal to its goal in the other modes), and the events each agent
    learned only from its partners' reports (`events_from_partners_only`, summed over the team).

    Episodes run as through the runtime (agent_node/goals/session.py): the env does not know the
    goals, every episode lasts `max_steps`, each agent computes its goal reward from its own
    `achieved_goals` infos (`view`), stays put (action 0) and stops adding rows once rewarded,
    and records the achieved goals of every step for hindsight. `env_ends_episodes` gives the
    env the goals instead, so it pays and ends the episode when every agent is rewarded (the
    reference's rule, and this bench's before the runtime comparison). `streams`: how the random
    streams are seeded (`stream_seeds`)."""
    seeds = stream_seeds(seed, num_agents, streams)
    if env_pays is None:
        env_pays = view == "own"  # under "own" an agent cannot compute its cooperative reward
    if view == "own" and not env_pays:
        raise ValueError("view 'own' needs the env to pay the goals (env_pays): an agent cannot see its cooperative reward")
    torch.manual_seed(seed)
    graph = team_graph(num_agents)
    agents = list(graph)
    edges = [(a, b) for a in graph for b in graph[a] if a < b]
    rounds = 1 if num_agents == 2 else num_agents // 2  # the graph's diameter
    env = GoalLinesEnv(num_landmarks=NUM_LANDMARKS, population=num_agents, active_per_episode=num_agents, max_steps=40, view=view)
    goals_allowed = cooperative_goals(NUM_LANDMARKS).tolist()
    total_goals = num_goals(NUM_LANDMARKS)

    def reward_fn(goal, achieved):
        return goal_reward(goal, achieved, NUM_LANDMARKS)

    config = GoalDQNConfig(her_strategy="future" if mode in HER_MODES else "none")
    sharing = mode == "negotiation_hindsight"
    obs_dim = env.observation_space("agent_0").shape[0]
    learners = {
        agent: GoalDQNAgent(config, obs_dim, 5, total_goals, reward_fn, seed=seeds["learner"][index])
        for index, agent in enumerate(agents)
    }
    own_goals = {agent: UniformGoals(goals_allowed, seed=derive_seed(seed, index, "goals")) for index, agent in enumerate(agents)}
    supervisor = SupervisorAssignment(goals_allowed, seed=seeds["supervisor"])
    negotiators = {
        agent: NegotiationEngine(agent, total_goals, seed=derive_seed(seed, index, "negotiation"), allowed_goals=goals_allowed)
        for index, agent in enumerate(agents)
    }
    hindsight = {agent: HindsightEngine(agent) for agent in agents}

    if not seeds["first_reset_is_an_episode"]:
        env.reset(seed=seeds["env"])  # this bench's own streams: a seeded reset before the first episode
    successes, aligned, edges_aligned, env_steps_at, proposals_at, goals_at, news_at = [], [], [], [], [], [], []
    env_steps = 0
    for episode in range(episodes):
        now = float(episode)
        if mode == "independent":
            goals = proposals = {agent: own_goals[agent].propose(episode) for agent in agents}
        elif mode == "supervisor":
            goals = proposals = supervisor.assign(episode, list(agents))
        else:
            outgoing, proposals = [], {agent: own_goals[agent].propose(episode) for agent in agents}
            for agent in agents:
                request = NegotiationRequest(episode, proposals[agent], graph[agent], rounds=rounds)
                outgoing += [(agent, d, m) for d, m in negotiators[agent].start(request, now)]
            deliver(negotiators, outgoing, now)
            goals = {agent: negotiators[agent].result.goal for agent in agents}
        proposals_at.append([int(proposals[agent]) for agent in agents])
        goals_at.append([int(goals[agent]) for agent in agents])

        # (The env server's first episode starts on its seeded reset, the later ones continue its generator.)
        first_seed = seeds["env"] if seeds["first_reset_is_an_episode"] and episode == 0 else None
        observations, _ = env.reset(seed=first_seed, options={"goals": goals} if env_ends_episodes else None)
        if env_pays and not env_ends_episodes:
            env.assign_goals(goals)
        trajectory = {agent: {"obs": [], "action": [], "next_obs": [], "events": []} for agent in agents}
        episode_reward = {agent: 0.0 for agent in agents}
        rewarded = set()
        step = 0
        while env.agents:
            live = list(env.agents)
            acting = [agent for agent in live if agent not in rewarded]
            actions = {agent: STAY for agent in live}  # a rewarded agent stays put, as goal_session's
            actions.update({agent: int(learners[agent].act(observations[agent][None], np.array([goals[agent]]))[0]) for agent in acting})
            next_observations, env_rewards, _, _, infos = env.step(actions)
            env_steps += 1
            for agent in live:
                record = trajectory[agent]
                achieved = infos[agent]["achieved_goals"]
                record["events"] += [(step, int(goal)) for goal in achieved]
                if agent in rewarded:
                    continue
                record["obs"].append(observations[agent])
                record["action"].append(actions[agent])
                record["next_obs"].append(next_observations[agent])
                if env_pays:
                    # The env's word that the goal was achieved is an achieved goal the agent saw.
                    episode_reward[agent] = float(env_rewards[agent])
                    if episode_reward[agent] > 0:
                        record["events"].append((step, int(goals[agent])))
                else:
                    episode_reward[agent] = reward_fn(goals[agent], achieved)
                if episode_reward[agent] > 0:
                    rewarded.add(agent)
            observations = next_observations
            step += 1

        partner_events = {agent: [] for agent in agents}
        if sharing:
            outgoing = []
            for agent in agents:
                request = HindsightRequest(episode, graph[agent], trajectory[agent]["events"])
                outgoing += [(agent, d, m) for d, m in hindsight[agent].start(request, now)]
            deliver(hindsight, outgoing, now)
            partner_events = {agent: [event for events in hindsight[agent].result.from_partners.values() for event in events]
                              for agent in agents}
            if env_pays:
                # What the reports imply beyond themselves: the pairs of landmarks touched at one step.
                partner_events = {agent: events_reports_add(trajectory[agent]["events"], partner_events[agent], NUM_LANDMARKS)
                                  for agent in agents}
        news_at.append(sum(len(set(partner_events[agent]) - set(trajectory[agent]["events"])) for agent in agents))
        for agent in agents:
            record = trajectory[agent]
            learners[agent].observe_episode(
                np.array(record["obs"]), np.array(record["action"]), np.array(record["next_obs"]),
                goals[agent], record["events"], extra_goal_events=partner_events[agent],
            )
            learners[agent].update()
            if mode.startswith("negotiation"):
                negotiators[agent].end_episode(episode, episode_reward[agent])
                own_goals[agent].observe_outcome(episode, goals[agent], episode_reward[agent])
        successes.append(float(all(episode_reward[agent] >= 1.0 for agent in agents)))
        aligned.append(float(len(set(goals.values())) == 1))
        edges_aligned.append(float(np.mean([goals[a] == goals[b] for a, b in edges])))
        env_steps_at.append(env_steps)
    return {"success": np.array(successes), "aligned": np.array(aligned), "edges_aligned": np.array(edges_aligned),
            "env_steps": np.array(env_steps_at), "proposals": np.array(proposals_at), "goals": np.array(goals_at),
            "events_from_partners_only": np.array(news_at, dtype=float)}


def per_goal(result: dict, last: int) -> list[dict]:
    """Per cooperative goal, over the last `last` episodes of one pair's run: how often agent_0
    proposed it and ended on it, how often the pair aligned on it, and how often the pair succeeded
    when it did. Tells whether alignment stalls because the pair keeps to the goals it has learned
    to achieve (high success where aligned, few goals aligned on) or for another reason."""
    proposals, goals = result["proposals"][-last:], result["goals"][-last:]
    success = result["success"][-last:]
    aligned_on = np.where(goals[:, 0] == goals[:, 1], goals[:, 0], -1)
    rows = []
    for goal in sorted(set(cooperative_goals(NUM_LANDMARKS).tolist())):
        on_goal = aligned_on == goal
        rows.append({
            "goal": int(goal),
            "proposed_by_agent_0": float(np.mean(proposals[:, 0] == goal)),
            "goal_of_agent_0": float(np.mean(goals[:, 0] == goal)),
            "aligned_on": float(np.mean(on_goal)),
            "success_when_aligned_on": float(success[on_goal].mean()) if on_goal.any() else float("nan"),
        })
    return rows


def print_per_goal(summary: dict) -> None:
    """The per-goal tables of every run that has one (`--per-goal`)."""
    for mode, rows in summary.items():
        for row in rows:
            if "per_goal" not in row:
                continue
            print(f"{mode} seed {row['seed']}, final window, per cooperative goal:")
            print(f"  {'goal':>5}{'proposed (agent_0)':>20}{'goal of agent_0':>17}{'aligned on':>12}{'success when aligned':>22}")
            for goal in row["per_goal"]:
                print(f"  {goal['goal']:>5}{goal['proposed_by_agent_0']:>20.3f}{goal['goal_of_agent_0']:>17.3f}"
                      f"{goal['aligned_on']:>12.3f}{goal['success_when_aligned_on']:>22.3f}")


CURVE_WINDOW = 100  # episodes per point of the learning curves


def final_window(episodes: int) -> int:
    """The episodes "final" means: the last fifth of the run, at least 100 (all of a shorter run)."""
    return max(100, episodes // 5)


def windowed(per_episode: np.ndarray) -> list[float]:
    """The mean of each whole window of CURVE_WINDOW episodes."""
    whole = len(per_episode) // CURVE_WINDOW * CURVE_WINDOW
    return per_episode[:whole].reshape(-1, CURVE_WINDOW).mean(axis=1).tolist()


def _draw_curves(axes_pair, per_seed: dict, window: int, linestyle: str = "-", suffix: str = "") -> None:
    """One line per mode (mean, with its 95% band over seeds) on (success axes, alignment axes)."""
    for index, (mode, rows) in enumerate(per_seed.items()):
        rows = [row for row in rows if "success_curve" in row]  # rows taken from a bench's log carry no curves
        if not rows:
            continue
        length = min(len(row["success_curve"]) for row in rows)
        episodes = (np.arange(length) + 0.5) * window
        for axes, key in zip(axes_pair, ("success_curve", "aligned_curve")):
            mean, half = curve_band([row[key][:length] for row in rows])
            color = f"C{(MODES + RUNTIME_ONLY_MODES).index(mode)}"
            axes.plot(episodes, mean, linestyle=linestyle, color=color, label=mode + suffix)
            axes.fill_between(episodes, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), alpha=0.15, color=color)


def _finish(figure, axes_pair, conditions: dict, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    axes_pair[1].axhline(conditions["chance_alignment"], color="grey", linestyle=":", label="chance")
    for axes, label in zip(axes_pair, ("cooperative success", "goals aligned")):
        axes.set_xlabel("episode")
        axes.set_ylabel(f"{label} (window of {conditions['curve_window_episodes']})")
        axes.set_ylim(0, 1.03)  # a line at 1 (the supervisor's alignment) stays visible
    axes_pair[1].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(per_seed: dict, conditions: dict, path: Path) -> None:
    """Cooperative success and alignment per window of episodes, mean ± 95% CI over seeds, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes_pair = plt.subplots(1, 2, figsize=(10, 3.8))
    _draw_curves(axes_pair, per_seed, conditions["curve_window_episodes"])
    _finish(figure, axes_pair, conditions,
            f"goal-lines L={conditions['landmarks']}, cooperative goals, {len(next(iter(per_seed.values())))} seeds, "
            f"mean and 95% CI (in-process bench/goals.py)", path)


def plot_runtime(saved: dict, path: Path) -> None:
    """A `--runtime` batch's curves: through the runtime (solid) and, when cross-checked, in-process (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = saved["conditions"]
    figure, axes_pair = plt.subplots(1, 2, figsize=(11, 4.2))
    _draw_curves(axes_pair, saved.get("runtime", {}), conditions["curve_window_episodes"])
    _draw_curves(axes_pair, saved.get("in_process", {}), conditions["curve_window_episodes"], "--", " (in-process)")
    seeds = sorted({row["seed"] for rows in saved.get("runtime", {}).values() for row in rows})
    _finish(figure, axes_pair, conditions,
            f"goal-lines L={conditions['landmarks']}, view {conditions['view']}, cooperative goals, seeds {seeds}: "
            f"through the runtime (solid) and in-process (dashed), mean and 95% CI (bench/goals.py --runtime)", path)


def steps_to_fraction_of_final(curve: np.ndarray, env_steps: np.ndarray, fraction: float = 0.8, window: int = 100) -> float:
    """Env steps until the moving success rate first reaches `fraction` of its final value."""
    if len(curve) < window:
        return float("nan")
    smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
    final = smooth[-1]
    if final <= 0:
        return float("nan")
    index = int(np.argmax(smooth >= fraction * final))
    return float(env_steps[index + window - 1])


def steps_to_level(success_curve: list[float], env_steps_curve: list[int], level: float) -> float:
    """Env steps at the end of the first window of CURVE_WINDOW episodes whose success reaches
    `level` (NaN: no window did, or there was nothing to reach)."""
    if level <= 0:
        return float("nan")
    reached = [steps for success, steps in zip(success_curve, env_steps_curve) if success >= level]
    return float(reached[0]) if reached else float("nan")


def add_steps_to_negotiation_level(summary: dict, fraction: float = 0.8, baseline: str = "negotiation") -> bool:
    """ALGORITHMS.md's hindsight target, "the same success in fewer environment steps than no
    sharing", paired by seed: for `baseline` (a mode without sharing) and negotiation_hindsight,
    the env steps until a window's success first reaches `fraction` of the baseline's final
    success of the same seed (row key `steps_to_<baseline>_80pct`). False (nothing added) unless
    both modes ran."""
    if baseline not in summary or "negotiation_hindsight" not in summary:
        return False
    plain_of_seed = {row.get("seed"): row for row in summary[baseline]}
    for shared in summary["negotiation_hindsight"]:
        plain = plain_of_seed.get(shared.get("seed"))
        if plain is None or "success_curve" not in plain or "success_curve" not in shared:
            continue  # the baseline did not run this seed (a batch cut short), or a row without curves
        level = fraction * plain["success_final"]
        for row in (plain, shared):
            row[f"steps_to_{baseline}_80pct"] = steps_to_level(row["success_curve"], row["env_steps_curve"], level)
    return True


def report(summary: dict, conditions: dict, as_json: bool) -> None:
    """The in-process comparison's table (or JSON)."""
    paired = add_steps_to_negotiation_level(summary)

    def mean_half(mode, key):
        return mean_ci([row[key] for row in summary[mode]])

    if as_json:
        out = {f"coop_success_{mode}": mean_half(mode, "success_final")[0] for mode in summary}
        for mode in summary:
            if mode.startswith("negotiation"):
                out[f"steps_to_80pct_{mode}"] = mean_half(mode, "steps_to_80pct")[0]
                if paired:
                    out[f"steps_to_negotiation_80pct_{mode}"] = mean_half(mode, "steps_to_negotiation_80pct")[0]
        if "negotiation" in summary:
            out["alignment_negotiation"] = mean_half("negotiation", "aligned_final")[0]
        out["per_seed"] = {mode: [{k: v for k, v in row.items() if not k.endswith("_curve")} for row in rows]
                           for mode, rows in summary.items()}
        out["conditions"] = conditions
        print(json.dumps(out, indent=2))
        return
    print(f"goal-lines L={conditions['landmarks']}, cooperative goals, 2 agents, {conditions['episodes']} episodes, "
          f"{conditions['seeds']} seeds; 'final' = the last {conditions['final_window_episodes']} episodes; "
          f"mean ± 95% t-interval over seeds, each seed's success below its row; "
          f"load average {conditions['load_avg_1m'][0]} -> {conditions['load_avg_1m'][1]}")
    print(f"{'mode':<24}{'coop success (final)':>22}{'alignment (final)':>20}{'steps to 80% of final':>24}")
    for mode, rows in summary.items():
        success, success_half = mean_half(mode, "success_final")
        align, align_half = mean_half(mode, "aligned_final")
        steps, steps_half = mean_half(mode, "steps_to_80pct")
        print(f"{mode:<24}{success:>14.3f} ± {success_half:.3f}{align:>12.3f} ± {align_half:.3f}{steps:>16.0f} ± {steps_half:.0f}")
        per_seed_success = ", ".join(f"{row['success_final']:.2f}" for row in rows)
        print(f"{'':<24}  coop success (final) per seed: {per_seed_success}")
    if paired:
        print(f"env steps until a {CURVE_WINDOW}-episode window reaches 80% of negotiation's final success (same seed; "
              "nan: never):")
        for mode in ("negotiation", "negotiation_hindsight"):
            per_seed = ", ".join(f"{row['steps_to_negotiation_80pct']:.0f}" for row in summary[mode])
            print(f"  {mode:<24}{per_seed}")


# Runtime mode: which config runs each mode, and its overrides. HER only where the in-process
# run has it (HER_MODES): the configs' learners default to HER (`her_strategy: future`).
REPO = Path(__file__).resolve().parents[1]
RUNTIME_MODES = {
    "independent": ("configs/goals_independent.yaml", ["agents.learner.her_strategy=none"]),
    "negotiation": ("configs/goals_negotiation.yaml", []),
    "negotiation_her": ("configs/goals_negotiation_hindsight.yaml", ["agents.goals.hindsight=null"]),
    "negotiation_hindsight": ("configs/goals_negotiation_hindsight.yaml", []),
    "supervisor": ("configs/goals_supervisor.yaml", ["agents.goals.hindsight=null", "agents.learner.her_strategy=none"]),
    # The team flood (protocols/engines/team_negotiation.py) in place of the naming game: agreement by a
    # lottery over the agents' own draws, nothing learned. Through the runtime only.
    "flood": ("configs/goals_negotiation.yaml", ["agents.goals.negotiation.protocol=team_flood"]),
    "flood_hindsight": ("configs/goals_negotiation_hindsight.yaml", ["agents.goals.negotiation.protocol=team_flood"]),
}
RUNTIME_ONLY_MODES = ("flood", "flood_hindsight")
EPISODE_STEPS = 40  # goal_lines max_steps in the goal configs and in `run`


def runtime_run(mode: str, seed: int, episodes: int, landmarks: int, view: str, run_dir: Path, extra: list[str] = (),
                team: int = 2) -> dict:
    """One `orchestrate up` of `mode` for `episodes` episodes; per episode (joined over the
    agents' `goals/*` records): aligned = every agent pursued the same goal, success = every agent
    was rewarded, the lockstep steps at its end, and the hindsight events the agents learned only
    from each other's reports. Also the run's wall and CPU seconds (the orchestrator and every
    process it started and waited for). `team` agents play every episode together (2: the pair
    of the configs; more: a population of that size, all active, on a full graph)."""
    config, overrides = RUNTIME_MODES[mode]
    agents = tuple(f"agent_{i}" for i in range(team))
    settings = [f"run.seed={seed}", f"run.steps={episodes * EPISODE_STEPS}", f"env.kwargs.num_landmarks={landmarks}",
                f"env.kwargs.view={view}", f"env.kwargs.max_steps={EPISODE_STEPS}",
                f"agents.goals.num_landmarks={landmarks}", *overrides, *extra]
    if view == "own":
        # An agent that sees only its own landmark cannot compute a cooperative reward: the env
        # pays the goal named in goal.ready, which needs the episode-start hold in every mode.
        settings += ["agents.goals.paid_by=env"] + (["env.episode_start_hold_s=1.0"] if mode == "independent" else [])
    if team != 2:
        settings += [f"agents.count={team}", f"env.kwargs.population={team}", f"env.kwargs.active_per_episode={team}",
                     "topology.kind=full"]
    command = [sys.executable, "-m", "orchestrator", "up", config, "--run-dir", str(run_dir)]
    for setting in settings:
        command += ["--set", setting]
    started = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        # wait4: the CPU time of the orchestrator and of the nodes it (and its zygote) waited for.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    record = run_record(run_dir, process.returncode)  # bench/runs.py: exit 0 and the budget done, or not scored
    if record["refused"] is not None:
        tail = (run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{mode} seed {seed}: run refused: {record['refused']}: {tail}")
    episodes_of: dict[float, dict[str, dict]] = defaultdict(dict)
    stored: dict[float, float] = defaultdict(float)
    shared = {"reports_applied": 0.0, "partners_missing": 0.0, "rows_relabelled": 0.0}
    for agent in agents:
        for row in records(run_dir, agent):  # (not `record`: that is the run's, kept in the result)
            if "goals/goal" in row:
                episodes_of[row["goals/episode"]][agent] = row
            if "hindsight/reports_applied" in row:
                shared["reports_applied"] += row["hindsight/reports_applied"]
                shared["partners_missing"] += row["hindsight/partners_missing"]
                stored[row["goals/episode"]] += row["hindsight/events_from_partners_only"]
            if "her/rows_relabelled" in row:
                shared["rows_relabelled"] += row["her/rows_relabelled"]
    starts = [e for e in sorted(episodes_of) if len(episodes_of[e]) == team]
    both = [episodes_of[e] for e in starts]
    timed_out = [ep[a].get("negotiation/timed_out", ep[a].get("supervision/timed_out", 0.0)) for ep in both for a in agents]
    cut = [ep[a].get("negotiation/cut_by_env", 0.0) for ep in both for a in agents]
    return {
        "aligned": np.array([float(len({ep[a]["goals/goal"] for a in agents}) == 1) for ep in both]),
        "success": np.array([float(all(ep[a]["goals/reward"] >= 1.0 for a in agents)) for ep in both]),
        "env_steps": np.array([int(start) + EPISODE_STEPS for start in starts]),
        "events_from_partners_only": np.array([stored.get(start, 0.0) for start in starts]),
        "timed_out": float(np.mean(timed_out)) if timed_out else 0.0, "cut_by_env": float(np.mean(cut)) if cut else 0.0,
        "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, **shared, "record": record,
    }


def summarise(mode: str, seed: int, result: dict, last: int, seconds: float, cpu_seconds: float, load: list[float]) -> dict:
    """One run's row (in-process or through the runtime): final and overall success and
    alignment, env steps to 80% of its own final success, speed, and the curves per window."""
    episodes = int(result["success"].size)
    return {
        "seed": seed,
        "episodes": episodes,
        "success_final": float(result["success"][-last:].mean()),
        "success_all": float(result["success"].mean()),
        "aligned_final": float(result["aligned"][-last:].mean()),
        "steps_to_80pct": steps_to_fraction_of_final(result["success"], result["env_steps"]),
        "env_steps": int(result["env_steps"][-1]),
        "events_from_partners_only_per_episode": float(result["events_from_partners_only"].mean()),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "episodes_per_second": episodes / seconds,
        "load_avg_1m": load,
        # Per window of CURVE_WINDOW episodes, for the learning curves.
        "success_curve": windowed(result["success"]),
        "aligned_curve": windowed(result["aligned"]),
        "env_steps_curve": [int(result["env_steps"][end - 1]) for end in range(CURVE_WINDOW, episodes + 1, CURVE_WINDOW)],
        **{key: result[key] for key in ("timed_out", "cut_by_env", "reports_applied", "partners_missing", "rows_relabelled",
                                        "record")  # record: a runtime run's (exit code, commit, run.reproducible)
           if key in result},
    }


def in_process_job(job: tuple) -> dict:
    """One in-process run (a worker of `--jobs`): (mode, seed, episodes, view, env_ends_episodes, last, streams)."""
    mode, seed, episodes, view, env_ends_episodes, last, streams = job
    torch.set_num_threads(1)
    load, started, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = run(mode, seed, episodes, view=view, env_ends_episodes=env_ends_episodes, streams=streams)
    return summarise(mode, seed, result, last, time.perf_counter() - started, time.process_time() - cpu,
                     [round(load, 2), round(os.getloadavg()[0], 2)])


def runtime_job(job: tuple) -> dict:
    """One run through the runtime: (mode, seed, episodes, landmarks, view, scratch, overrides, last, team)."""
    mode, seed, episodes, landmarks, view, scratch, overrides, last, team = job
    load = os.getloadavg()[0]
    result = runtime_run(mode, seed, episodes, landmarks, view, Path(scratch) / f"{mode}_{seed}", overrides, team)
    return summarise(mode, seed, result, last, result["seconds"], result["cpu_seconds"],
                     [round(load, 2), round(os.getloadavg()[0], 2)])


def run_jobs(kind: str, jobs: list[tuple], parallel: int, done: dict, save) -> None:
    """Run `jobs` (`kind` "runtime" or "in_process"), `parallel` at a time, in order; each row goes
    into done[kind][mode] as it ends, and `save()` writes everything so far (a batch cut short
    keeps the runs it finished)."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    # Threads for the runtime (each waits on its own `orchestrate up`); processes in-process.
    pool = ThreadPoolExecutor(parallel) if kind == "runtime" else ProcessPoolExecutor(parallel)
    work = runtime_job if kind == "runtime" else in_process_job
    with pool:
        futures = {pool.submit(work, job): job for job in jobs}
        for future in futures:
            mode = futures[future][0]
            row = future.result()
            done.setdefault(kind, {}).setdefault(mode, []).append(row)
            done[kind][mode].sort(key=lambda r: r["seed"])
            print(f"# {kind} {mode} seed {row['seed']}: " + json.dumps({k: v for k, v in row.items() if not k.endswith("_curve")}),
                  file=sys.stderr, flush=True)
            save()


def cross_check(runtime: dict, in_process: dict) -> list[dict]:
    """Per mode and measure, over the seeds both sides ran: whether each side's mean lies in the
    other's 95% interval."""
    rows = []
    for mode in runtime:
        if mode not in in_process:
            continue
        seeds = {r["seed"] for r in runtime[mode]} & {r["seed"] for r in in_process[mode]}
        if not seeds:
            continue
        for key in ("success_final", "aligned_final"):
            (rt, rt_half), (ip, ip_half) = (mean_ci([r[key] for r in side[mode] if r["seed"] in seeds]) for side in (runtime, in_process))
            rows.append({"mode": mode, "measure": key, "seeds": sorted(seeds), "runtime": rt, "runtime_half": rt_half, "in_process": ip,
                         "in_process_half": ip_half, "within": bool(abs(rt - ip) <= rt_half and abs(rt - ip) <= ip_half)})
    return rows


def speed(runtime: dict, in_process: dict) -> dict:
    """Episodes per second and CPU seconds per episode, per mode, through the runtime and in-process."""
    out = {}
    for mode in runtime:
        entry = {}
        for name, side in (("runtime", runtime), ("in_process", in_process)):
            if mode in side:
                entry[f"{name}_episodes_per_second"] = float(np.mean([r["episodes_per_second"] for r in side[mode]]))
                entry[f"{name}_cpu_seconds_per_episode"] = float(np.mean([r["cpu_seconds"] / r["episodes"] for r in side[mode]]))
        if "in_process_episodes_per_second" in entry:
            entry["ratio"] = entry["runtime_episodes_per_second"] / entry["in_process_episodes_per_second"]
        out[mode] = entry
    return out


def runtime_main(args) -> None:
    """`--runtime`: every (mode, seed) as an ordinary run through `orchestrate up`, and with
    `--cross-check` the same (mode, seed) in-process; tables, the speed ratio, the cross-check."""
    last = final_window(args.episodes)
    conditions = {"runtime": True, "team": args.team, "cross_check": args.cross_check, "seeds": args.seeds, "first_seed": args.first_seed,
                  "episodes": args.episodes, "landmarks": args.landmarks, "view": args.view, "goal_set": "cooperative",
                  "final_window_episodes": last, "curve_window_episodes": CURVE_WINDOW, "jobs": args.jobs,
                  "chance_alignment": 1.0 / (args.landmarks * (args.landmarks - 1) // 2), "overrides": args.set,
                  "in_process_streams": args.streams if args.cross_check else None,
                  "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                  "load_avg_1m": [round(os.getloadavg()[0], 2), None], "cpus": os.cpu_count()}
    done: dict = {}

    def save() -> None:
        conditions["load_avg_1m"][1] = round(os.getloadavg()[0], 2)
        conditions["ended_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        if args.save is not None:
            args.save.write_text(json.dumps({"conditions": conditions, **done}))

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    scratch = Path(tempfile.mkdtemp(prefix="bench_goals_", dir=args.scratch))
    # Seed by seed, every mode: a batch cut short keeps whole rows of modes over fewer seeds.
    run_jobs("runtime", [(mode, seed, args.episodes, args.landmarks, args.view, str(scratch), args.set, last, args.team)
                         for seed in seeds for mode in args.modes], args.jobs, done, save)
    if args.cross_check:
        run_jobs("in_process", [(mode, seed, args.episodes, args.view, False, last, args.streams) for seed in seeds for mode in args.modes],
                 args.jobs, done, save)
    save()
    print(f"(run directories kept under {scratch})", file=sys.stderr)
    if args.plot is not None:
        plot_runtime({"conditions": conditions, **done}, args.plot)
    runtime_report({"conditions": conditions, **done}, args.json)


def merge_runtime_batches(batches: list[dict], names: list[str]) -> dict:
    """One `--runtime` result from several batches of the same settings (seeds run at different
    times): runtime rows per mode, and in-process rows (a batch's cross-check, or a plain in-process
    run's `per_seed`) as the cross-check. A (mode, seed) run twice is refused, not silently chosen."""
    runtime_batches = [b for b in batches if b["conditions"].get("runtime")]
    if not runtime_batches:
        raise SystemExit("--merge: expected at least one --runtime result")
    conditions = dict(runtime_batches[0]["conditions"])
    for key in ("episodes", "landmarks", "view", "team", "final_window_episodes", "curve_window_episodes"):
        values = {b["conditions"].get(key, 2 if key == "team" else None) for b in batches}
        if len(values) > 1:
            raise SystemExit(f"--merge: the batches differ in {key}: {sorted(values, key=str)}")
    conditions["batches"] = [{"file": name, **{k: b["conditions"].get(k) for k in
                                               ("started_utc", "ended_utc", "first_seed", "seeds", "jobs", "load_avg_1m")}}
                             for name, b in zip(names, batches)]
    merged: dict = {"conditions": conditions, "runtime": {}, "in_process": {}}
    for batch in batches:
        sides = {"runtime": batch.get("runtime", {}), "in_process": batch.get("in_process", batch.get("per_seed", {}))}
        for side, modes in sides.items():
            for mode, rows in modes.items():
                kept = merged[side].setdefault(mode, [])
                for row in rows:
                    if any(r["seed"] == row["seed"] for r in kept):
                        raise SystemExit(f"--merge: {side} {mode} seed {row['seed']} is in two batches")
                    kept.append(row)
                kept.sort(key=lambda r: r["seed"])
    conditions["cross_check"] = bool(merged["in_process"])
    # Which streams the in-process rows were drawn with (a batch from before --streams: the bench's own).
    streams = sorted({(b["conditions"].get("in_process_streams") if b["conditions"].get("runtime") else b["conditions"].get("streams"))
                      or "bench" for b in batches if b.get("in_process") or b.get("per_seed")})
    conditions["in_process_streams"] = None if not streams else streams[0] if len(streams) == 1 else "mixed (" + ", ".join(streams) + ")"
    return merged


def runtime_report(saved: dict, as_json: bool) -> None:
    """The tables of a `--runtime` batch (or of its saved JSON, `--replot`)."""
    conditions, runtime, in_process = saved["conditions"], saved.get("runtime", {}), saved.get("in_process", {})
    for side in (runtime, in_process):
        add_steps_to_negotiation_level(side)
        add_steps_to_negotiation_level(side, baseline="negotiation_her")
    checks, speeds = cross_check(runtime, in_process), speed(runtime, in_process)
    if as_json:
        strip = {kind: {mode: [{k: v for k, v in r.items() if not k.endswith("_curve")} for r in rows] for mode, rows in side.items()}
                 for kind, side in (("runtime", runtime), ("in_process", in_process))}
        print(json.dumps({"conditions": conditions, "cross_check": checks, "speed": speeds, **strip}, indent=2))
        return
    for kind, side in (("through the runtime", runtime), ("in-process", in_process)):
        if not side:
            continue
        print(f"\n{kind}: goal-lines L={conditions['landmarks']}, view {conditions['view']}, cooperative goals, {conditions.get('team', 2)} agents, "
              f"{conditions['episodes']} episodes, seeds {sorted({r['seed'] for rows in side.values() for r in rows})}; "
              f"'final' = the last {conditions['final_window_episodes']} episodes; mean ± 95% t-interval over seeds")
        print(f"{'mode':<24}{'coop success (final)':>22}{'alignment (final)':>20}{'steps to 80% of final':>24}"
              f"{'partner-only events/ep':>24}{'episodes/s':>12}")
        for mode, rows in side.items():
            success, success_half = mean_ci([r["success_final"] for r in rows])
            align, align_half = mean_ci([r["aligned_final"] for r in rows])
            steps, steps_half = mean_ci([r["steps_to_80pct"] for r in rows])
            news = np.mean([r["events_from_partners_only_per_episode"] for r in rows])
            rate = np.mean([r["episodes_per_second"] for r in rows])
            print(f"{mode:<24}{success:>14.3f} ± {success_half:.3f}{align:>12.3f} ± {align_half:.3f}"
                  f"{steps:>16.0f} ± {steps_half:<6.0f}{news:>24.2f}{rate:>12.2f}")
            print(f"{'':<4}per seed: success " + ", ".join(f"{r['success_final']:.2f}" for r in rows)
                  + "; alignment " + ", ".join(f"{r['aligned_final']:.2f}" for r in rows)
                  + "; s " + ", ".join(f"{r['seconds']:.0f}" for r in rows))
        for baseline in ("negotiation", "negotiation_her"):
            key = f"steps_to_{baseline}_80pct"
            if baseline in side and "negotiation_hindsight" in side and key in side["negotiation_hindsight"][0]:
                print(f"env steps until a {CURVE_WINDOW}-episode window reaches 80% of {baseline}'s final success (same seed):")
                for mode in (baseline, "negotiation_hindsight"):  # seeds both modes ran
                    print(f"  {mode:<24}" + ", ".join(f"seed {r['seed']} {r[key]:.0f}" for r in side[mode] if key in r))
    if speeds:
        print("\nspeed (mean over seeds): episodes per second and CPU seconds per episode")
        for mode, entry in speeds.items():
            print(f"  {mode:<24}" + ", ".join(f"{k} {v:.3f}" for k, v in entry.items()))
    if checks:
        # Batches before --streams existed seeded the in-process side with the bench's own streams.
        streams = conditions.get("in_process_streams") or "bench"
        print(f"\ncross-check (runtime vs in-process with the {streams} streams, each mean within the other's 95% interval?):")
        for row in checks:
            print(f"  {row['mode']:<24}{row['measure']:<15} runtime {row['runtime']:.3f} ± {row['runtime_half']:.3f}, "
                  f"in-process {row['in_process']:.3f} ± {row['in_process_half']:.3f}: {'yes' if row['within'] else 'NO'}")


def ring_in_process_main(args) -> None:
    """`--ring N --in-process`: the in-process comparison with N agents on a ring, all playing every
    episode (negotiation floods for the ring's diameter; hindsight goes to the two ring neighbours).
    Alignment per ring edge and of the whole team, and the fraction of episodes in which every
    agent was rewarded, over the last fifth and per window of CURVE_WINDOW episodes."""
    torch.set_num_threads(1)
    modes = args.modes or ["negotiation", "negotiation_hindsight"]
    last = max(100, args.episodes // 5)
    rows = {}
    for mode in modes:
        rows[mode] = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            started = time.perf_counter()
            result = run(mode, seed, args.episodes, num_agents=args.ring, streams=args.streams)
            rows[mode].append({
                "seed": seed, "seconds": time.perf_counter() - started, "env_steps": int(result["env_steps"][-1]),
                "edges_aligned_final": float(result["edges_aligned"][-last:].mean()),
                "team_aligned_final": float(result["aligned"][-last:].mean()),
                "success_final": float(result["success"][-last:].mean()),
                "edges_aligned_curve": windowed(result["edges_aligned"]), "team_aligned_curve": windowed(result["aligned"]),
                "success_curve": windowed(result["success"]),
            })
            print(f"# ring {mode} seed {seed}: " + json.dumps({k: v for k, v in rows[mode][-1].items() if not k.endswith("_curve")}),
                  file=sys.stderr, flush=True)
    conditions = {"agents": args.ring, "in_process": True, "episodes": args.episodes, "seeds": args.seeds,
                  "first_seed": args.first_seed, "final_window_episodes": last, "curve_window_episodes": CURVE_WINDOW,
                  "chance_edge_alignment": 1.0 / (NUM_LANDMARKS * (NUM_LANDMARKS - 1) // 2)}
    if args.json:
        print(json.dumps({"conditions": conditions, "per_seed": rows}, indent=2))
        return
    print(f"ring of {args.ring}, in one process, goal-lines L={NUM_LANDMARKS}, cooperative goals, {args.episodes} episodes, "
          f"{args.seeds} seed(s); 'final' = the last {last} episodes; chance per edge {conditions['chance_edge_alignment']:.3f}")
    print(f"{'mode':<24}{'edges aligned (final)':>22}{'team aligned (final)':>22}{'all rewarded (final)':>22}")
    for mode, per_seed in rows.items():
        mean = {key: float(np.mean([r[key] for r in per_seed])) for key in ("edges_aligned_final", "team_aligned_final", "success_final")}
        print(f"{mode:<24}{mean['edges_aligned_final']:>22.3f}{mean['team_aligned_final']:>22.3f}{mean['success_final']:>22.3f}")
        for row in per_seed:
            curve = ", ".join(f"{value:.2f}" for value in row["edges_aligned_curve"])
            print(f"{'':<4}seed {row['seed']}: edges aligned per {CURVE_WINDOW} episodes: {curve}")


def ring_main(args) -> None:
    """`--ring N`: N agents negotiating on a ring (configs/goals_ring6.yaml with N agents, all playing
    every episode), one run per seed; alignment per ring edge and of the whole team per window of
    episodes, from each agent's per-episode goal records."""
    agents = [f"agent_{i}" for i in range(args.ring)]
    edges = [(agents[i], agents[(i + 1) % args.ring]) for i in range(args.ring)]
    window = 20
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="bench_goals_ring_") as scratch:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_dir = Path(scratch) / f"ring{args.ring}_{seed}"
            command = [sys.executable, "-m", "orchestrator", "up", "configs/goals_ring6.yaml", "--run-dir", str(run_dir)]
            for setting in [f"run.seed={seed}", f"run.steps={args.steps}", f"agents.count={args.ring}",
                            f"env.kwargs.population={args.ring}", *args.set]:
                command += ["--set", setting]
            started = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            record = run_record(run_dir, done.returncode)  # bench/runs.py: exit 0 and the budget done, or not scored
            if record["refused"] is not None:
                raise RuntimeError(f"ring seed {seed}: run refused: {record['refused']}: {done.stderr[-2000:]}")
            goals: dict[float, dict[str, int]] = defaultdict(dict)
            timed_out = []
            for agent in agents:
                for row in records(run_dir, agent):  # (not `record`: that is the run's, kept in per_seed)
                    if "goals/goal" in row:
                        goals[row["goals/episode"]][agent] = row["goals/goal"]
                        timed_out.append(row.get("negotiation/timed_out", 0.0))
            complete = [goals[e] for e in sorted(goals) if len(goals[e]) == args.ring]
            edge_aligned = np.array([[float(ep[a] == ep[b]) for a, b in edges] for ep in complete])
            team_aligned = np.array([float(len(set(ep.values())) == 1) for ep in complete])
            whole = len(complete) // window * window
            per_seed.append({
                "seed": seed, "record": record, "episodes": len(complete), "seconds": time.perf_counter() - started,
                "timed_out": float(np.mean(timed_out)) if timed_out else 0.0,
                "edge_aligned_per_edge": edge_aligned.mean(axis=0).tolist(),
                "edge_curve": edge_aligned[:whole].mean(axis=1).reshape(-1, window).mean(axis=1).tolist(),
                "team_curve": team_aligned[:whole].reshape(-1, window).mean(axis=1).tolist(),
            })
            print(f"# ring seed {seed}: {per_seed[-1]}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"conditions": {"agents": args.ring, "steps": args.steps, "window_episodes": window,
                                         "overrides": args.set}, "per_seed": per_seed}, indent=2))
        return
    print(f"ring of {args.ring} negotiating agents (configs/goals_ring6.yaml, L=6, cooperative goals), {args.steps} steps, "
          f"{args.seeds} seed(s); aligned = both ends of a ring edge (or every agent of the team) pursued the same goal; "
          f"windows of {window} episodes, mean over seeds")
    length = min(len(run["edge_curve"]) for run in per_seed)
    print(f"{'episodes':>10}{'edges aligned':>15}{'team aligned':>14}")
    for index in range(length):
        edge = np.mean([run["edge_curve"][index] for run in per_seed])
        team = np.mean([run["team_curve"][index] for run in per_seed])
        print(f"{index * window:>4}-{(index + 1) * window - 1:<5}{edge:>15.3f}{team:>14.3f}")
    per_edge = np.mean([run["edge_aligned_per_edge"] for run in per_seed], axis=0)
    print("over the whole run, per edge: " + ", ".join(f"{a[6:]}-{b[6:]} {value:.2f}" for (a, b), value in zip(edges, per_edge)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=1500)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--modes", nargs="+", default=None, choices=MODES + RUNTIME_ONLY_MODES,
                        help=f"default: {' '.join(DEFAULT_MODES)} (negotiation_her: HER over the agent's own "
                             "achievements, no sharing; flood, flood_hindsight: the team flood instead of the "
                             "naming game, --runtime only)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runtime", action="store_true", help="run each mode through `orchestrate up` (see the docstring)")
    parser.add_argument("--steps", type=int, default=8000, help="--ring (through the runtime): lockstep steps per run (40 per episode)")
    parser.add_argument("--landmarks", type=int, default=6, choices=(3, 6), help="--runtime: L (--cross-check: 6 only)")
    parser.add_argument("--view", choices=("joint", "local", "own"), default="local",
                        help="goal_lines' view: what an agent's achieved_goals infos hold (local: the goal configs'; "
                             "own: only its own landmark, the env pays the goals)")
    parser.add_argument("--env-ends-episodes", action="store_true",
                        help="in-process: the env gets the goals and ends the episode when both are rewarded (this "
                             "bench's rule before the runtime comparison); by default episodes run as through the runtime")
    parser.add_argument("--cross-check", action="store_true",
                        help="--runtime: also run every (mode, seed) in-process, and compare")
    parser.add_argument("--streams", choices=STREAMS, default=None,
                        help="in-process: how the random streams derive from the seed (bench: this bench's own, the "
                             "default; runtime: as an orchestrated run's, the default of --cross-check, so both sides "
                             "of a seed draw the same goals, env starts, initial weights and generators)")
    parser.add_argument("--jobs", type=int, default=1, help="--runtime: runs at once")
    parser.add_argument("--team", type=int, default=2,
                        help="--runtime: agents playing every episode together (more than 2: a population of that size, "
                             "all active, on a full graph; then a partner's report can carry a pair this agent did not see)")
    parser.add_argument("--scratch", type=Path, default=None, help="--runtime: where the run directories go (default: the temp dir)")
    parser.add_argument("--ring", type=int, default=None, metavar="N",
                        help="N agents negotiating on a ring (through the runtime; --in-process: in one process); alignment per edge and per team")
    parser.add_argument("--in-process", action="store_true",
                        help="--ring: run the ring in one process (as the pair's default), not through the runtime")
    parser.add_argument("--save", type=Path, help="in-process: also write the results with per-window curves (JSON) here")
    parser.add_argument("--plot", type=Path, help="in-process: draw the learning curves (mean ± 95%% CI over seeds) into this PNG")
    parser.add_argument("--per-goal", action="store_true",
                        help="in-process: also print, per run, each cooperative goal's share of proposals, goals and "
                             "alignments and the success when aligned on it, over the final window")
    parser.add_argument("--replot", type=Path, help="draw --plot from a JSON written by --save, without running")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="join the --save JSONs of --runtime batches (and of in-process runs of the same settings, "
                             "as their cross-check) into one result, written to --save and reported; runs nothing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="--runtime: a config override for every run (orchestrate up --set), repeatable")
    args = parser.parse_args()
    if args.streams is not None and ((args.runtime and not args.cross_check) or (args.ring is not None and not args.in_process)
                                     or args.merge is not None or args.replot is not None):
        parser.error("--streams: sets the in-process runs' streams; this command runs none in-process "
                     "(expected no --runtime without --cross-check, no --ring without --in-process, no --merge or --replot)")
    if args.streams is None:
        args.streams = "runtime" if args.runtime and args.cross_check else "bench"
    if args.ring is not None:
        if args.ring < 3:
            parser.error(f"--ring: expected at least 3 agents, got {args.ring}")
        if args.in_process:
            unknown = [mode for mode in args.modes or [] if mode not in ("negotiation", "negotiation_hindsight")]
            if unknown:
                parser.error(f"--ring --in-process compares negotiation and negotiation_hindsight, got {unknown}")
            ring_in_process_main(args)
        else:
            ring_main(args)
        return
    if args.runtime:
        args.modes = args.modes or list(DEFAULT_MODES)
        if args.cross_check and args.landmarks != NUM_LANDMARKS:
            parser.error(f"--cross-check: the in-process runs have L = {NUM_LANDMARKS}, got --landmarks {args.landmarks}")
        if args.jobs < 1:
            parser.error(f"--jobs: expected at least 1, got {args.jobs}")
        if args.team < 2:
            parser.error(f"--team: expected at least 2 agents, got {args.team}")
        if args.cross_check and args.team != 2:
            parser.error(f"--cross-check: the in-process runs are a pair, got --team {args.team}")
        if args.cross_check and set(args.modes) & set(RUNTIME_ONLY_MODES):
            parser.error(f"--cross-check: the in-process bench has no {sorted(set(args.modes) & set(RUNTIME_ONLY_MODES))}")
        runtime_main(args)
        return
    if args.merge is not None:
        merged = merge_runtime_batches([json.loads(path.read_text()) for path in args.merge], [str(p) for p in args.merge])
        if args.save is not None:
            args.save.write_text(json.dumps(merged))
        if args.plot is not None:
            plot_runtime(merged, args.plot)
        runtime_report(merged, args.json)
        return
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        if saved["conditions"].get("runtime"):
            if args.plot is not None:
                plot_runtime(saved, args.plot)
            runtime_report(saved, args.json)
            return
        plot_curves(saved["per_seed"], saved["conditions"], args.plot or args.replot.with_suffix(".png"))
        report(saved["per_seed"], saved["conditions"], args.json)
        return
    args.modes = args.modes or list(DEFAULT_MODES)
    if set(args.modes) & set(RUNTIME_ONLY_MODES):
        parser.error(f"--modes {sorted(set(args.modes) & set(RUNTIME_ONLY_MODES))}: through the runtime only (--runtime)")
    torch.set_num_threads(1)

    last = final_window(args.episodes)
    load_before = os.getloadavg()[0]
    summary = {}
    for mode in args.modes:
        per_seed = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            load, started, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
            result = run(mode, seed, args.episodes, view=args.view, env_ends_episodes=args.env_ends_episodes, streams=args.streams)
            per_seed.append(summarise(mode, seed, result, last, time.perf_counter() - started, time.process_time() - cpu,
                                      [round(load, 2), round(os.getloadavg()[0], 2)]))
            if args.per_goal:
                per_seed[-1]["per_goal"] = per_goal(result, last)
            print(f"# {mode} seed {seed}: " + json.dumps({k: v for k, v in per_seed[-1].items()
                                                        if not k.endswith("_curve") and k != "per_goal"}),
                  file=sys.stderr, flush=True)
        summary[mode] = per_seed
    conditions = {"seeds": args.seeds, "first_seed": args.first_seed, "episodes": args.episodes, "landmarks": NUM_LANDMARKS,
                  "final_window_episodes": last, "curve_window_episodes": CURVE_WINDOW,
                  "chance_alignment": 1.0 / (NUM_LANDMARKS * (NUM_LANDMARKS - 1) // 2), "view": args.view,
                  "env_ends_episodes": args.env_ends_episodes, "streams": args.streams,
                  "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if args.save is not None:
        args.save.write_text(json.dumps({"conditions": conditions, "per_seed": summary}))
    if args.plot is not None:
        plot_curves(summary, conditions, args.plot)

    report(summary, conditions, args.json)
    if args.per_goal and not args.json:  # with --json the tables are in per_seed
        print_per_goal(summary)


if __name__ == "__main__":
    main()
