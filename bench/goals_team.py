"""Team-wide goal agreement by the team flood (protocols/engines/team_negotiation.py) on a ring of 6 and a
3 x 3 torus: in the deterministic network simulator under loss, and through the runtime.

`--simulate`: the engines alone in protocols/sim/netsim.py (5 ms links with 3 ms jitter,
starts staggered by 2 ms a node, rounds of 0.5 s), one negotiation per seed; per topology and loss:
the fraction of negotiations in which the whole team took one goal, the fraction of agents that
heard every proposal (`team_complete`), of agents that heard nobody (`timed_out`), and the
negotiation time (start to decision, mean and max, against the bound rounds x 0.5 s).

    PYTHONPATH=. .venv/bin/python bench/goals_team.py --simulate --seeds 500 --extra-rounds 0 1 2

`--runtime`: `orchestrate up` of configs/goals_ring6_team.yaml and configs/goals_torus9_team.yaml
(every agent its own process, all playing every episode of goal_lines L = 6, hindsight shared
with the topology neighbours), one run per seed; per episode the agents' `goals/*` records are
joined: team aligned = every agent pursued the same goal, edges aligned = the fraction of
topology edges whose ends did, all rewarded = every agent got its goal's reward, any rewarded
= at least one did; and from the negotiation records: team_complete, timed_out, cut_by_env and
the negotiation time.

    PYTHONPATH=. .venv/bin/python bench/goals_team.py --runtime --seeds 3 --steps 8000 --save team.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from protocols.net.links import LinkConfig
from protocols.engines.negotiation import NegotiationRequest
from protocols.sim.netsim import NetworkSimulator, same_link_everywhere
from protocols.engines.team_negotiation import TeamNegotiationEngine
from protocols.engines.topology import Topology, grid, ring
from runs import records, run_and_record  # noqa: E402  (bench/runs.py)

CONFIGS = {"ring6": ("configs/goals_ring6_team.yaml", ring(6)), "torus9": ("configs/goals_torus9_team.yaml", grid(3, 3, torus=True))}
NUM_GOALS = 15  # goal_lines L = 6, cooperative goals
ROUND_TIMEOUT_S = 0.5


def simulate_once(topology: Topology, loss: float, seed: int, extra_rounds: int) -> dict:
    engines = {node: TeamNegotiationEngine(node, NUM_GOALS, seed=1000 * seed + i, round_timeout_s=ROUND_TIMEOUT_S,
                                           extra_rounds=extra_rounds)
               for i, node in enumerate(topology.nodes)}
    sim = NetworkSimulator(engines, same_link_everywhere(LinkConfig(delay_s=0.005, jitter_s=0.003, loss=loss)), seed=seed)
    rng = np.random.default_rng(seed)
    for i, node in enumerate(topology.nodes):
        neighbours = [topology.nodes[j] for j in topology.neighbours(i)]
        request = NegotiationRequest(0, int(rng.integers(NUM_GOALS)), neighbours, topology.diameter(), team_size=topology.num_nodes)  # + extra in the engine
        sim.schedule(i * 0.002, lambda node=node, request=request: sim.call(node, lambda engine, now: engine.start(request, now)))
    sim.run()
    outcomes = [engine.result for engine in engines.values()]
    return {"team_aligned": len({o.goal for o in outcomes}) == 1, "complete": [o.team_complete for o in outcomes],
            "timed_out": [o.timed_out for o in outcomes], "duration_s": [o.duration_s for o in outcomes]}


def simulate_main(args) -> None:
    print(f"team flood in the network simulator: 5 ms links (+ up to 3 ms jitter), Bernoulli loss, starts staggered 2 ms, "
          f"rounds of {ROUND_TIMEOUT_S} s; {args.seeds} negotiations per cell")
    print("| topology | loss | extra rounds | team aligned | agents that heard everyone | agents that heard no one "
          "| negotiation s mean | max | bound |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (_, topology) in CONFIGS.items():
        for loss in args.losses:
            for extra in args.extra_rounds:
                runs = [simulate_once(topology, loss, seed, extra) for seed in range(args.seeds)]
                durations = [d for run in runs for d in run["duration_s"]]
                print(f"| {name} | {loss:.0%} | {extra} | {np.mean([r['team_aligned'] for r in runs]):.3f} "
                      f"| {np.mean([c for r in runs for c in r['complete']]):.3f} | {np.mean([t for r in runs for t in r['timed_out']]):.3f} "
                      f"| {np.mean(durations):.3f} | {np.max(durations):.3f} | {(topology.diameter() + extra) * ROUND_TIMEOUT_S:.1f} |",
                      flush=True)


def score_run(run_dir: Path, topology: Topology) -> dict:
    episodes: dict[float, dict[str, dict]] = defaultdict(dict)
    for node in topology.nodes:
        for record in records(run_dir, node):
            if "goals/goal" in record:
                episodes[record["goals/episode"]][node] = record
    joined = [episodes[e] for e in sorted(episodes) if len(episodes[e]) == topology.num_nodes]
    edges = [(topology.nodes[a], topology.nodes[b]) for a in range(topology.num_nodes) for b in topology.neighbours(a) if a < b]
    team = np.array([float(len({r["goals/goal"] for r in ep.values()}) == 1) for ep in joined])
    edge = np.array([np.mean([ep[a]["goals/goal"] == ep[b]["goals/goal"] for a, b in edges]) for ep in joined])
    all_rewarded = np.array([float(all(r["goals/reward"] > 0 for r in ep.values())) for ep in joined])
    any_rewarded = np.array([float(any(r["goals/reward"] > 0 for r in ep.values())) for ep in joined])
    per_agent = [r for ep in joined for r in ep.values()]
    durations = [r["negotiation/duration_s"] for r in per_agent if "negotiation/duration_s" in r]
    last = max(1, len(joined) // 5)
    return {
        "episodes_joined": len(joined), "episodes_partial": len(episodes) - len(joined),
        "team_aligned": float(team.mean()), "edges_aligned": float(edge.mean()),
        "all_rewarded": float(all_rewarded.mean()), "all_rewarded_final": float(all_rewarded[-last:].mean()),
        "any_rewarded": float(any_rewarded.mean()), "any_rewarded_final": float(any_rewarded[-last:].mean()),
        "agent_success": float(np.mean([r["goals/reward"] > 0 for r in per_agent])),
        "team_complete": float(np.mean([r.get("negotiation/team_complete", np.nan) for r in per_agent])),
        "timed_out": float(np.mean([r.get("negotiation/timed_out", np.nan) for r in per_agent])),
        "cut_by_env": float(np.mean([r.get("negotiation/cut_by_env", np.nan) for r in per_agent])),
        # (none with a supervisor, e.g. --set agents.goals.selection=supervisor: the comparison)
        "negotiation_s_mean": float(np.mean(durations)) if durations else float("nan"),
        "negotiation_s_max": float(np.max(durations)) if durations else float("nan"),
    }


def runtime_main(args) -> None:
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench_goals_team_"))
    results = {"conditions": {"steps": args.steps, "episodes_per_run": args.steps // 40, "overrides": args.set,
                              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}, "runs": []}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in args.topologies:
            config, topology = CONFIGS[name]
            run_dir = root / f"{name}_s{seed}"
            started = time.monotonic()
            record = run_and_record(config, [f"run.seed={seed}", f"run.steps={args.steps}", *args.set], run_dir, args.timeout_s)
            row = {"topology": name, "seed": seed, "exit_code": record["exit_code"], "refused": record["refused"],
                   "record": record, "wall_s": round(time.monotonic() - started, 1), "run_dir": str(run_dir),
                   **score_run(run_dir, topology)}
            results["runs"].append(row)
            print(f"# {json.dumps(row)}", file=sys.stderr, flush=True)
            if args.save:
                Path(args.save).write_text(json.dumps(results, indent=1))
    results["conditions"]["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1))
    report(results)


def report(results: dict) -> None:
    keys = ("team_aligned", "edges_aligned", "team_complete", "timed_out", "cut_by_env", "negotiation_s_mean",
            "negotiation_s_max", "all_rewarded", "all_rewarded_final", "any_rewarded", "agent_success")
    c = results["conditions"]
    print(f"team flood through the runtime: {c['steps']} steps = {c['episodes_per_run']} episodes per run; one row per run, "
          f"'final' = last fifth")
    print("| topology | seed | exit | episodes | " + " | ".join(keys) + " | wall s |")
    print("|" + " --- |" * (len(keys) + 5))
    for row in results["runs"]:
        if row.get("refused") is not None or row["exit_code"] != 0:  # bench/runs.py's rule: not scored
            print(f"| {row['topology']} | {row['seed']} | {row['exit_code']} | refused: {row.get('refused') or 'exit != 0'} |")
            continue
        print(f"| {row['topology']} | {row['seed']} | {row['exit_code']} | {row['episodes_joined']} | "
              + " | ".join(f"{row[k]:.3f}" for k in keys) + f" | {row['wall_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", action="store_true")
    mode.add_argument("--runtime", action="store_true")
    mode.add_argument("--replot", metavar="JSON", help="print a saved --runtime result")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--extra-rounds", type=int, nargs="+", default=[0, 1, 2], help="--simulate: rounds beyond the diameter")
    parser.add_argument("--topologies", nargs="+", choices=sorted(CONFIGS), default=["ring6", "torus9"])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", default=None)
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--save", default=None)
    args = parser.parse_args()
    if args.simulate:
        simulate_main(args)
    elif args.runtime:
        runtime_main(args)
    else:
        report(json.loads(Path(args.replot).read_text()))


if __name__ == "__main__":
    main()
