"""AMIGo on the treasure room, in one process: a teacher of one's own vs uniform cell goals vs no
goals. Prints a table (or JSON with --json).

ALGORITHMS.md section 3. Every agent of `treasure_room_v0` (2 by default, 13x13, 50 steps, treasure
in the far corner, extrinsic reward 1 there; a uniformly random walk finds it in ~1 episode of
2000, while on the env's default 9x9 room plain DQN finds and learns it within a few dozen
episodes, leaving a curriculum nothing to do) is a goal-conditioned DQN student
(`agent_node/algos/goal_dqn.py`, goals as cell coordinates) driven by the same core the agent node
runs (`agent_node/amigo/session.py` `AmigoStudent`):

- `amigo`: each agent's own AMIGo teacher proposes cells (the t* curriculum; alpha 0.7, beta 0.3,
  t* from 7, +1 after 10 updates with mean teacher reward >= -0.5; tabular teacher, batches of
  `--teacher-batch` goal episodes);
- `uniform`: a goal cell drawn uniformly each time, the same student rewards, no curriculum;
- `none`: no goals: the same network conditioned on a constant, the extrinsic reward alone
  (`clip(r_ext, -1, 1) + 1` when positive), epsilon-greedy exploration only.

Measured per variant, over seeds and agents: the extrinsic success (the fraction of episodes in
which the agent reached the treasure) over the whole run and over its last 20% of episodes, the
episode of the first treasure, and for the goal variants the goal reach rate after the first 10%
of episodes (the lowest and highest over windows of 50 episodes, `--window`) and the proposed goals' Manhattan
distance; for `amigo`, t* at the end. Window curves (`success_curve`, per 50 episodes) are in
`--json`. The issue's targets are checked and printed as met or not:
t* rises by >= 5 from 7; the teacher's reach rate stays within [0.2, 0.9] after the first 10% of
training; the student with a teacher reaches the no-goals student's final success at least as fast.

This is NOT the paper's setting: the paper trains on MiniGrid (KeyCorridor, ObstructedMaze) with
partial views, a convolutional teacher and IMPALA for tens of millions of frames; here an open 13x13
room, a tabular teacher and DQN for a few thousand steps, on a shared 2-core machine. Compare
the direction of the results, not their values.

    .venv/bin/python bench/amigo.py --seeds 3 --steps 10000 --save amigo.json --plot amigo.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from agent_node.algos.config import GoalDQNConfig
from agent_node.algos.goal_dqn import GoalDQNAgent
from agent_node.amigo.session import AmigoStudent
from agent_node.amigo.network_teacher import NetworkTeacher
from agent_node.amigo.novelty import BeBoldNovelty
from agent_node.amigo.teacher import AmigoTeacher, Curriculum, UniformCells
from env_server.envs.treasure_room import TreasureRoomEnv
from protocols.goal_spaces.cell_space import cell_features
from protocols.seeds import derive_seed
from intervals import curve_band, mean_ci  # noqa: E402  (bench/intervals.py)

VARIANTS = ("amigo", "uniform", "none")
WINDOW = 50  # episodes per window of the curves and the reach-rate range (--window sets it)


def make_env(args):
    """The env of the run and the side of its (padded) square grid of cells."""
    if args.env == "minigrid":
        from env_server.envs.minigrid_task import MiniGridTaskEnv

        env = MiniGridTaskEnv(args.env_id, num_agents=args.agents, max_steps=args.max_steps)
        return env, env.size
    return TreasureRoomEnv(num_agents=args.agents, size=args.size, max_steps=args.max_steps, start_region=args.start_region), args.size


def make_teacher(args, size: int, seed: int):
    if args.teacher == "network":
        return NetworkTeacher(size, seed, Curriculum(batch_size=args.teacher_batch), learning_rate=args.teacher_lr or 0.001)
    return AmigoTeacher(size * size, seed, Curriculum(batch_size=args.teacher_batch), learning_rate=args.teacher_lr or 0.5)


def run_one(variant: str, seed: int, args) -> dict:
    env, size = make_env(args)
    num_cells = size * size
    obs_dim = env.observation_space(env.possible_agents[0]).shape[0]
    num_actions = int(env.action_space(env.possible_agents[0]).n)
    config = GoalDQNConfig(
        her_strategy="none", hidden_sizes=tuple(args.hidden), batch_size=64, learning_starts=500, train_every=2,
        target_update_period=250, epsilon_decay_steps=max(1, args.steps // 2), gamma=args.gamma,
    )
    students = {}
    for index, agent in enumerate(env.possible_agents):
        learner = GoalDQNAgent(config, obs_dim, num_actions, num_cells, reward_fn=None, seed=derive_seed(seed, index, "learner"),
                               goal_features=cell_features(size))
        proposer_seed = derive_seed(seed, index, "goals/amigo_teacher")
        proposer = {
            "amigo": lambda: make_teacher(args, size, proposer_seed),
            "uniform": lambda: UniformCells(num_cells, proposer_seed),
            "none": lambda: None,
        }[variant]()
        novelty = BeBoldNovelty() if args.bebold else None
        students[agent] = AmigoStudent(learner, proposer, size=size, max_steps=env.max_steps, novelty=novelty)
    records = {agent: [] for agent in env.possible_agents}
    obs, infos = env.reset(seed=seed)
    for agent in env.agents:
        students[agent].begin_episode(int(infos[agent]["cell"]), obs[agent])
    for _ in range(args.steps):
        actions = {agent: int(students[agent].act(obs[agent][None], explore=True)[0]) for agent in env.agents}
        next_obs, rewards, terminations, truncations, infos = env.step(actions)
        for agent in actions:
            student = students[agent]
            ended = terminations[agent] or truncations[agent]
            student.step(obs[agent], actions[agent], rewards[agent], next_obs[agent], int(infos[agent]["cell"]),
                         terminations[agent], truncations[agent])
            if ended:
                records[agent].append(student.end_episode())
            student.agent.update()
        obs = {agent: next_obs[agent] for agent in env.agents}
        if not env.agents:
            obs, infos = env.reset()
            for agent in env.agents:
                students[agent].begin_episode(int(infos[agent]["cell"]), obs[agent])
    return summarize(variant, records, students)


def summarize(variant: str, records: dict, students: dict) -> dict:
    success, final, first, reach_low, reach_high, reach_all, distance, t_star = [], [], [], [], [], [], [], []
    for agent, episodes in records.items():
        wins = np.array([r["amigo/extrinsic_success"] for r in episodes])
        success.append(wins.mean())
        final.append(wins[int(0.8 * len(wins)):].mean())
        first.append(int(np.argmax(wins)) if wins.any() else len(wins))
        if variant != "none":
            reached = np.array([r["amigo/goals_reached"] for r in episodes])
            proposed = np.array([r["amigo/goals_proposed"] for r in episodes])
            after = slice(int(0.1 * len(episodes)), None)
            rates = [reached[after][i:i + WINDOW].sum() / proposed[after][i:i + WINDOW].sum()
                     for i in range(0, len(proposed[after]) - WINDOW + 1, WINDOW)]
            reach_all.append(reached[after].sum() / max(1.0, proposed[after].sum()))
            reach_low.append(min(rates) if rates else float("nan"))
            reach_high.append(max(rates) if rates else float("nan"))
            distance.append(np.mean([r["amigo/goal_distance"] for r in episodes[after]]))
        if variant == "amigo":
            t_star.append(students[agent].proposer.t_star)
    result = {
        "episodes": int(np.mean([len(e) for e in records.values()])),
        "success": float(np.mean(success)), "success_last20": float(np.mean(final)),
        "first_treasure_episode": float(np.mean(first)),
    }
    if reach_low:
        result.update({"reach_rate": float(np.mean(reach_all)), "reach_rate_min": float(np.min(reach_low)), "reach_rate_max": float(np.max(reach_high)),
                       "goal_distance": float(np.mean(distance))})
    if t_star:
        result["t_star_final"] = float(np.mean(t_star))
        result["t_star_min"] = float(np.min(t_star))
    result["success_curve"] = [float(np.mean([np.mean([r["amigo/extrinsic_success"] for r in e[i:i + WINDOW]]) for e in records.values()]))
                               for i in range(0, min(len(e) for e in records.values()), WINDOW)]
    return result


def plot_curves(results: dict, path: Path, args: dict, load: float) -> None:
    """Extrinsic success per window of WINDOW episodes, mean ± 95% CI (Student's t) over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 3.8))
    for variant, runs in results.items():
        length = min(len(run["success_curve"]) for run in runs)
        curves = np.array([run["success_curve"][:length] for run in runs])
        mean, half = curve_band(curves)
        episodes = np.arange(length) * WINDOW + WINDOW / 2
        axes.plot(episodes, mean, label=variant)
        axes.fill_between(episodes, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), alpha=0.2)
    axes.set_xlabel("episode (per agent)")
    axes.set_ylabel(f"extrinsic success (window of {WINDOW})")
    axes.set_ylim(0, 1)
    where = args["env_id"] if args.get("env") == "minigrid" else f"treasure_room {args['size']}x{args['size']}"
    axes.set_title(f"{where}, {args.get('teacher', 'table')} teacher, {len(next(iter(results.values())))} seeds, "
                   f"{args['steps']} steps (load {load:.1f}); not the paper's setting", fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def episodes_to_reach(curve: list[float], level: float) -> int | None:
    """The first window (in episodes) whose success reaches `level`; None if never."""
    for index, value in enumerate(curve):
        if value >= level:
            return index * WINDOW
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10000, help="env steps per run (every agent acts each step)")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--start-region", type=int, default=3)
    parser.add_argument("--teacher-batch", type=int, default=8)
    parser.add_argument("--env", choices=("treasure_room", "minigrid"), default="treasure_room")
    parser.add_argument("--env-id", default="MiniGrid-KeyCorridorS3R3-v0", help="with --env minigrid: the MiniGrid task")
    parser.add_argument("--teacher", choices=("table", "network"), default="table",
                        help="the amigo variant's teacher: a table per student cell, or the paper's network over the grid")
    parser.add_argument("--teacher-lr", type=float, help="unset: 0.5 (table), 0.001 (network)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="the student's hidden layers")
    parser.add_argument("--gamma", type=float, default=0.95)
    parser.add_argument("--window", type=int, default=50, help="episodes per window (curves, reach-rate range)")
    parser.add_argument("--bebold", action="store_true", help="add BeBold novelty to every variant's student reward")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", type=Path, help="also write the JSON (with the per-window success curves) here")
    parser.add_argument("--plot", type=Path, help="draw the success curves (mean ± 95%% CI over seeds) into this PNG")
    parser.add_argument("--replot", type=Path, help="draw --plot from a JSON written by --save, without running")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="report (and --plot, --save) the variants of several JSONs written by --save, e.g. two "
                             "processes run side by side with --variants amigo and --variants none; runs nothing")
    args = parser.parse_args()
    global WINDOW
    WINDOW = args.window
    if args.replot:
        saved = json.loads(args.replot.read_text())
        WINDOW = saved["args"].get("window", 50)
        plot_curves(saved["results"], args.plot or args.replot.with_suffix(".png"), saved["args"], saved["load_before"][0])
        return
    if args.merge:
        saved = [json.loads(path.read_text()) for path in args.merge]
        outputs = {"plot": args.plot, "save": args.save, "json": args.json}
        args = argparse.Namespace(**{**saved[0]["args"], **outputs, "variants": [v for run in saved for v in run["results"]]})
        WINDOW = saved[0]["args"].get("window", 50)
        results = {variant: runs for run in saved for variant, runs in run["results"].items()}
        load_before = tuple(max(run["load_before"][k] for run in saved) for k in range(3))
        load_after = tuple(max(run["load_after"][k] for run in saved) for k in range(3))
        elapsed = max(run["seconds"] for run in saved)  # side by side: the longest
    else:
        torch.set_num_threads(1)
        load_before = os.getloadavg()
        started = time.perf_counter()
        results = {variant: [run_one(variant, seed, args) for seed in range(args.seeds)] for variant in args.variants}
        elapsed = time.perf_counter() - started
        load_after = os.getloadavg()
    everything = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "load_before": load_before, "load_after": load_after, "seconds": elapsed, "results": results}
    if args.save:
        args.save.write_text(json.dumps(everything, indent=1))
    if args.plot:
        plot_curves(results, args.plot, everything["args"], load_before[0])
    if args.json:
        print(json.dumps(everything, indent=1))
        return
    where = f"{args.env_id} (minigrid_v0)" if args.env == "minigrid" else f"treasure_room {args.size}x{args.size}"
    print(f"{where}, {args.teacher} teacher, {args.agents} agents, {args.max_steps}-step episodes, "
          f"{args.steps} env steps per run, {args.seeds} seeds{', BeBold added' if args.bebold else ''}")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {elapsed:.0f} s in all (NOT the paper's setting)")
    columns = ["success", "success_last20", "first_treasure_episode", "reach_rate", "reach_rate_min", "reach_rate_max", "goal_distance", "t_star_final"]
    print(f"{'variant':<9}" + "".join(f"{c:>24}" for c in columns))
    for variant, runs in results.items():
        cells = []
        for column in columns:
            mean, half = mean_ci([run.get(column, float("nan")) for run in runs])
            cells.append(f"{'-':>24}" if np.isnan(mean) else f"{mean:>16.3f} ± {half:<5.3f}")
        print(f"{variant:<9}" + "".join(cells))
    print("(mean ± 95% CI over seeds, Student's t; each seed's value is the mean over its agents; first_treasure_episode counts"
          f" episodes; reach rate min/max over windows of {WINDOW} episodes after the first 10%)")
    print("per seed (success, success_last20" + (", reach_rate, t_star_final)" if "amigo" in results else ")"))
    for variant, runs in results.items():
        keys = ("success", "success_last20", "reach_rate", "t_star_final") if variant == "amigo" else ("success", "success_last20")
        print(f"  {variant:<9}" + "  ".join("(" + ", ".join(f"{run.get(k, float('nan')):.3f}" for k in keys) + ")" for run in runs))
    if "amigo" in results:
        amigo = results["amigo"]
        rise = min(run["t_star_min"] for run in amigo) - 7
        low = min(run["reach_rate_min"] for run in amigo)
        high = max(run["reach_rate_max"] for run in amigo)
        print(f"target t* rises by >= 5 from 7: {'met' if rise >= 5 else 'NOT met'} (smallest rise over agents and seeds: {rise})")
        print(f"target teacher reach rate within [0.2, 0.9] after 10%: {'met' if 0.2 <= low and high <= 0.9 else 'NOT met'} "
              f"(windows ranged {low:.2f} .. {high:.2f})")
    if "amigo" in results and "none" in results:
        curve = lambda variant: np.mean([run["success_curve"][:min(len(r["success_curve"]) for r in results[variant])]
                                         for run in results[variant]], axis=0).tolist()
        level = max(curve("none"))  # the best window success (mean over seeds) the no-goals student reached
        with_teacher, without = episodes_to_reach(curve("amigo"), level), episodes_to_reach(curve("none"), level)
        if level <= 0:
            print("target teacher at least as fast as no goals: undecided (no window of the no-goals student had a success)")
        else:
            met = with_teacher is not None and (without is None or with_teacher <= without)
            print(f"target teacher reaches the no-goals best window success ({level:.2f}) at least as fast: {'met' if met else 'NOT met'} "
                  f"(episodes: amigo {with_teacher}, none {without})")


if __name__ == "__main__":
    main()
