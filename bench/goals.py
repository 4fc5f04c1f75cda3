"""Goal alignment on goal-lines, in one process: independent vs supervisor vs negotiation vs
negotiation + hindsight. Prints a table (or JSON with --json).

ALGORITHMS.md section 2. Two agents in the grid room (`goal_lines_v0`, L = 6, cooperative goals
only, 40 steps), each a goal-conditioned DQN (`agent_node/algos/goal_dqn.py`) of its own. Per
episode the goal-selection mode picks each agent's goal:

- `independent`: each samples uniformly (alignment at chance, 1/15);
- `supervisor`: one draw for both (alignment 1);
- `negotiation`: two `NegotiationEngine`s play the goal-coordination game (messages passed in
  process, no loss); the matrix update gets each agent's episode reward;
- `negotiation_hindsight`: the same, and after each episode the two `HindsightEngine`s exchange
  the achieved goals; each agent relabels its transitions with HER (`future`, k = 4) over its own
  and its partner's events.

The first three use no HER (as the reference's agents). Note: on this grid every agent's `infos`
already hold the joint achieved goals, so the partner's report adds little to what an agent saw
itself; the fourth mode measures mainly what HER over the joint achievements buys.

The env is given the goals at reset, so it pays the Dec-IMSAP reward and ends the episode as the
reference does. Cooperative success = the fraction of episodes in which the agents were
rewarded (both achieve the cooperative goal at the same step, which needs aligned goals).
This is not the continuous reference environment and not its training budget: compare the
direction of the results, not their values.

    .venv/bin/python bench/goals.py --seeds 5 --episodes 1500 --save goals.json --plot docs/goals_success.png

`--runtime` runs the same comparison through the runtime instead: `orchestrate up` of
configs/goals_independent.yaml (uniform goals), configs/goals_supervisor.yaml (the team's
smallest node id assigns the goal over the wire; no hindsight) and configs/goals_negotiation_hindsight.yaml
(negotiation, with or without hindsight sharing), one process per agent and one env server, the negotiation over the
peer mesh while the env server holds each episode start. Per episode it joins the two agents'
`goals/*` records: aligned = both pursued the same goal; cooperative success = both were
rewarded. Differences from the in-process mode: the env does not know the goals, so every
episode lasts `max_steps` (an agent stops itself once rewarded), and the learner learns in
slices between network events.

    .venv/bin/python bench/goals.py --runtime --seeds 2 --steps 8000 --landmarks 3

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
from agent_node.goals import SupervisorAssignment, UniformGoals
from env_server.envs.goal_lines import GoalLinesEnv, cooperative_goals, goal_reward, num_goals
from protocols.hindsight import HindsightEngine, HindsightRequest
from protocols.negotiation import NegotiationEngine, NegotiationRequest
from protocols.seeds import derive_seed
from intervals import curve_band, mean_ci  # noqa: E402  (bench/intervals.py)

MODES = ("independent", "supervisor", "negotiation", "negotiation_hindsight")
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


def run(mode: str, seed: int, episodes: int, num_agents: int = 2) -> dict:
    """One run of `mode` with a team of `num_agents` (a pair, or a ring that all play every
    episode); per episode: every agent rewarded (`success`), all on one goal (`aligned`), the
    fraction of the team graph's edges whose ends share a goal (`edges_aligned`), and each agent's
    `proposals` and `goals` (episodes x agents; a proposal is what the agent's own goal module
    offered the negotiation, equal to its goal in the other modes)."""
    torch.manual_seed(seed)
    graph = team_graph(num_agents)
    agents = list(graph)
    edges = [(a, b) for a in graph for b in graph[a] if a < b]
    rounds = 1 if num_agents == 2 else num_agents // 2  # the graph's diameter
    env = GoalLinesEnv(num_landmarks=NUM_LANDMARKS, population=num_agents, active_per_episode=num_agents, max_steps=40)
    goals_allowed = cooperative_goals(NUM_LANDMARKS).tolist()
    total_goals = num_goals(NUM_LANDMARKS)

    def reward_fn(goal, achieved):
        return goal_reward(goal, achieved, NUM_LANDMARKS)

    config = GoalDQNConfig(her_strategy="future" if mode == "negotiation_hindsight" else "none")
    obs_dim = env.observation_space("agent_0").shape[0]
    learners = {
        agent: GoalDQNAgent(config, obs_dim, 5, total_goals, reward_fn, seed=derive_seed(seed, index, "policy"))
        for index, agent in enumerate(agents)
    }
    own_goals = {agent: UniformGoals(goals_allowed, seed=derive_seed(seed, index, "goals")) for index, agent in enumerate(agents)}
    supervisor = SupervisorAssignment(goals_allowed, seed=derive_seed(seed, 99, "supervisor"))
    negotiators = {
        agent: NegotiationEngine(agent, total_goals, seed=derive_seed(seed, index, "negotiation"), allowed_goals=goals_allowed)
        for index, agent in enumerate(agents)
    }
    hindsight = {agent: HindsightEngine(agent) for agent in agents}

    env.reset(seed=derive_seed(seed, 0, "env"))
    successes, aligned, edges_aligned, env_steps_at, proposals_at, goals_at = [], [], [], [], [], []
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

        observations, _ = env.reset(options={"goals": goals})
        trajectory = {agent: {"obs": [], "action": [], "next_obs": [], "events": []} for agent in agents}
        episode_reward = {agent: 0.0 for agent in agents}
        while env.agents:
            live = list(env.agents)
            actions = {agent: int(learners[agent].act(observations[agent][None], np.array([goals[agent]]))[0]) for agent in live}
            next_observations, rewards, _, _, infos = env.step(actions)
            env_steps += 1
            for agent in live:
                record = trajectory[agent]
                step = len(record["action"])
                record["obs"].append(observations[agent])
                record["action"].append(actions[agent])
                record["next_obs"].append(next_observations[agent])
                record["events"] += [(step, int(goal)) for goal in infos[agent]["achieved_goals"]]
                episode_reward[agent] = max(episode_reward[agent], rewards[agent])
            observations = next_observations

        partner_events = {agent: [] for agent in agents}
        if mode == "negotiation_hindsight":
            outgoing = []
            for agent in agents:
                request = HindsightRequest(episode, graph[agent], trajectory[agent]["events"])
                outgoing += [(agent, d, m) for d, m in hindsight[agent].start(request, now)]
            deliver(hindsight, outgoing, now)
            partner_events = {agent: hindsight[agent].result.events for agent in agents}
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
            "env_steps": np.array(env_steps_at), "proposals": np.array(proposals_at), "goals": np.array(goals_at)}


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


def windowed(per_episode: np.ndarray) -> list[float]:
    """The mean of each whole window of CURVE_WINDOW episodes."""
    whole = len(per_episode) // CURVE_WINDOW * CURVE_WINDOW
    return per_episode[:whole].reshape(-1, CURVE_WINDOW).mean(axis=1).tolist()


def plot_curves(per_seed: dict, conditions: dict, path: Path) -> None:
    """Cooperative success and alignment per window of episodes, mean ± 95% CI over seeds, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (success_axes, aligned_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, rows in per_seed.items():
        length = min(len(row["success_curve"]) for row in rows)
        episodes = (np.arange(length) + 0.5) * conditions["curve_window_episodes"]
        for axes, key in ((success_axes, "success_curve"), (aligned_axes, "aligned_curve")):
            mean, half = curve_band([row[key][:length] for row in rows])
            axes.plot(episodes, mean, label=mode)
            axes.fill_between(episodes, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), alpha=0.2)
    aligned_axes.axhline(conditions["chance_alignment"], color="grey", linestyle=":", label="chance")
    for axes, label in ((success_axes, "cooperative success"), (aligned_axes, "goals aligned")):
        axes.set_xlabel("episode")
        axes.set_ylabel(f"{label} (window of {conditions['curve_window_episodes']})")
        axes.set_ylim(0, 1.03)  # a line at 1 (the supervisor's alignment) stays visible
    aligned_axes.legend(fontsize=8)
    figure.suptitle(f"goal-lines L={conditions['landmarks']}, cooperative goals, {len(next(iter(per_seed.values())))} seeds, "
                    f"mean and 95% CI (in-process bench/goals.py)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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


def add_steps_to_negotiation_level(summary: dict, fraction: float = 0.8) -> bool:
    """ALGORITHMS.md's hindsight target, "the same success in fewer environment steps than no
    sharing", paired by seed: for both negotiation modes, the env steps until a window's success
    first reaches `fraction` of the no-sharing negotiation's final success of the same seed.
    False (nothing added) unless both modes ran."""
    if "negotiation" not in summary or "negotiation_hindsight" not in summary:
        return False
    for plain, shared in zip(summary["negotiation"], summary["negotiation_hindsight"]):
        level = fraction * plain["success_final"]
        for row in (plain, shared):
            row["steps_to_negotiation_80pct"] = steps_to_level(row["success_curve"], row["env_steps_curve"], level)
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


# Runtime mode: which config runs each mode, and its overrides.
REPO = Path(__file__).resolve().parents[1]
RUNTIME_MODES = {
    "independent": ("configs/goals_independent.yaml", []),
    "negotiation": ("configs/goals_negotiation_hindsight.yaml", ["agents.goals.hindsight=null"]),
    "negotiation_hindsight": ("configs/goals_negotiation_hindsight.yaml", []),
    "supervisor": ("configs/goals_supervisor.yaml", ["agents.goals.hindsight=null"]),
}


def runtime_run(mode: str, seed: int, steps: int, landmarks: int, run_dir: Path, extra: list[str] = ()) -> dict:
    """One `orchestrate up` of `mode`; per-episode alignment and success joined over both agents."""
    config, overrides = RUNTIME_MODES[mode]
    settings = [f"run.seed={seed}", f"run.steps={steps}", f"env.kwargs.num_landmarks={landmarks}",
                f"agents.goals.num_landmarks={landmarks}", *overrides, *extra]
    command = [sys.executable, "-m", "orchestrator", "up", config, "--run-dir", str(run_dir)]
    for setting in settings:
        command += ["--set", setting]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{mode} seed {seed}: orchestrate up exited {done.returncode}: {done.stderr[-2000:]}")
    episodes: dict[float, dict[str, dict]] = defaultdict(dict)
    shared = {"reports_applied": 0.0, "partners_missing": 0.0, "rows_relabelled": 0.0}
    for agent in AGENTS:
        for line in (run_dir / "nodes" / agent / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "goals/goal" in record:
                episodes[record["goals/episode"]][agent] = record
            if "hindsight/reports_applied" in record:
                shared["reports_applied"] += record["hindsight/reports_applied"]
                shared["partners_missing"] += record["hindsight/partners_missing"]
            if "her/rows_relabelled" in record:
                shared["rows_relabelled"] += record["her/rows_relabelled"]
    both = [episodes[e] for e in sorted(episodes) if len(episodes[e]) == 2]
    aligned = np.array([float(ep["agent_0"]["goals/goal"] == ep["agent_1"]["goals/goal"]) for ep in both])
    success = np.array([float(all(ep[a]["goals/reward"] >= 1.0 for a in AGENTS)) for ep in both])
    timed_out = [ep[a].get("negotiation/timed_out", 0.0) for ep in both for a in AGENTS]
    cut = [ep[a].get("negotiation/cut_by_env", 0.0) for ep in both for a in AGENTS]
    return {"aligned": aligned, "success": success, "timed_out": float(np.mean(timed_out)), "cut_by_env": float(np.mean(cut)),
            "seconds": seconds, **shared}


def runtime_main(args) -> None:
    last = max(1, (args.steps // 40) // 5)  # "final" = the last fifth of the episodes
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_goals_") as scratch:
        for mode in args.modes:
            per_seed = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                result = runtime_run(mode, seed, args.steps, args.landmarks, Path(scratch) / f"{mode}_{seed}", args.set)
                summary = {
                    "episodes": int(result["aligned"].size),
                    "aligned_all": float(result["aligned"].mean()), "aligned_final": float(result["aligned"][-last:].mean()),
                    "success_all": float(result["success"].mean()), "success_final": float(result["success"][-last:].mean()),
                    "timed_out": result["timed_out"], "cut_by_env": result["cut_by_env"],
                    "reports_applied": result["reports_applied"], "partners_missing": result["partners_missing"],
                    "rows_relabelled": result["rows_relabelled"], "seconds": result["seconds"],
                }
                per_seed.append(summary)
                print(f"# {mode} seed {seed}: {summary}", file=sys.stderr, flush=True)
            rows[mode] = per_seed
    conditions = {"runtime": True, "seeds": args.seeds, "first_seed": args.first_seed, "steps": args.steps,
                  "landmarks": args.landmarks, "goal_set": "cooperative", "final_window_episodes": last,
                  "chance_alignment": 1.0 / (args.landmarks * (args.landmarks - 1) // 2), "overrides": args.set}
    if args.json:
        print(json.dumps({"conditions": conditions, "per_seed": rows}, indent=2))
        return
    print(f"through the runtime: goal-lines L={args.landmarks}, cooperative goals, 2 agents, {args.steps} steps per run, "
          f"{args.seeds} seeds; 'final' = last {last} episodes; chance alignment {conditions['chance_alignment']:.3f}; mean over seeds"
          + (f"; overrides {' '.join(args.set)}" if args.set else ""))
    print(f"{'mode':<24}{'aligned all':>12}{'aligned final':>14}{'success all':>12}{'success final':>14}"
          f"{'timed out':>10}{'reports':>9}{'relabelled':>11}{'s/run':>7}")
    for mode, per_seed in rows.items():
        mean = {key: float(np.mean([r[key] for r in per_seed])) for key in per_seed[0]}
        print(f"{mode:<24}{mean['aligned_all']:>12.3f}{mean['aligned_final']:>14.3f}{mean['success_all']:>12.3f}"
              f"{mean['success_final']:>14.3f}{mean['timed_out']:>10.3f}{mean['reports_applied']:>9.0f}"
              f"{mean['rows_relabelled']:>11.0f}{mean['seconds']:>7.0f}")


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
            result = run(mode, seed, args.episodes, num_agents=args.ring)
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
            if done.returncode != 0:
                raise RuntimeError(f"ring seed {seed}: orchestrate up exited {done.returncode}: {done.stderr[-2000:]}")
            goals: dict[float, dict[str, int]] = defaultdict(dict)
            timed_out = []
            for agent in agents:
                for line in (run_dir / "nodes" / agent / "metrics.jsonl").read_text().splitlines():
                    record = json.loads(line)
                    if "goals/goal" in record:
                        goals[record["goals/episode"]][agent] = record["goals/goal"]
                        timed_out.append(record.get("negotiation/timed_out", 0.0))
            complete = [goals[e] for e in sorted(goals) if len(goals[e]) == args.ring]
            edge_aligned = np.array([[float(ep[a] == ep[b]) for a, b in edges] for ep in complete])
            team_aligned = np.array([float(len(set(ep.values())) == 1) for ep in complete])
            whole = len(complete) // window * window
            per_seed.append({
                "seed": seed, "episodes": len(complete), "seconds": time.perf_counter() - started,
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
    parser.add_argument("--modes", nargs="+", default=None, choices=MODES,
                        help="in-process: all four by default; --runtime: independent, negotiation_hindsight by default")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runtime", action="store_true", help="run each mode through `orchestrate up` (see the docstring)")
    parser.add_argument("--steps", type=int, default=8000, help="--runtime: lockstep steps per run (40 per episode)")
    parser.add_argument("--landmarks", type=int, default=6, choices=(3, 6), help="--runtime: L")
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
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="--runtime: a config override for every run (orchestrate up --set), repeatable")
    args = parser.parse_args()
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
        args.modes = args.modes or ["independent", "negotiation_hindsight"]
        unknown = [mode for mode in args.modes if mode not in RUNTIME_MODES]
        if unknown:
            parser.error(f"--runtime runs {sorted(RUNTIME_MODES)}, got {unknown}")
        runtime_main(args)
        return
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        plot_curves(saved["per_seed"], saved["conditions"], args.plot or args.replot.with_suffix(".png"))
        report(saved["per_seed"], saved["conditions"], args.json)
        return
    args.modes = args.modes or list(MODES)
    torch.set_num_threads(1)

    last = max(100, args.episodes // 5)  # "final" = the last fifth of training
    load_before = os.getloadavg()[0]
    summary = {}
    for mode in args.modes:
        per_seed = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            started = time.perf_counter()
            result = run(mode, seed, args.episodes)
            per_seed.append(
                {
                    "seed": seed,
                    "success_final": float(result["success"][-last:].mean()),
                    "success_all": float(result["success"].mean()),
                    "aligned_final": float(result["aligned"][-last:].mean()),
                    "steps_to_80pct": steps_to_fraction_of_final(result["success"], result["env_steps"]),
                    "env_steps": int(result["env_steps"][-1]),
                    "seconds": time.perf_counter() - started,
                    # Per window of CURVE_WINDOW episodes, for the learning curves.
                    "success_curve": windowed(result["success"]),
                    "aligned_curve": windowed(result["aligned"]),
                    "env_steps_curve": [int(result["env_steps"][min(end, len(result["env_steps"])) - 1])
                                        for end in range(CURVE_WINDOW, len(result["env_steps"]) + 1, CURVE_WINDOW)],
                }
            )
            if args.per_goal:
                per_seed[-1]["per_goal"] = per_goal(result, last)
            print(f"# {mode} seed {seed}: " + json.dumps({k: v for k, v in per_seed[-1].items()
                                                        if not k.endswith("_curve") and k != "per_goal"}),
                  file=sys.stderr, flush=True)
        summary[mode] = per_seed
    conditions = {"seeds": args.seeds, "first_seed": args.first_seed, "episodes": args.episodes, "landmarks": NUM_LANDMARKS,
                  "final_window_episodes": last, "curve_window_episodes": CURVE_WINDOW,
                  "chance_alignment": 1.0 / (NUM_LANDMARKS * (NUM_LANDMARKS - 1) // 2),
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
