"""Many simulated agents under faults: the real membership and consensus engines in the network
simulator (protocols/sim/simplan.py), one row per agents x topology x engine x plan.

Each simulated node runs `MembershipEngine` and one consensus engine (`sync`: synchronous rounds
with Metropolis weights; `push_sum`), unchanged, over links that lose and delay messages. Plans:

- `faults`: 30% loss and Pareto delays (shape 1.5, mean 10 ms) on every link all the time; 5% of
            the nodes crash and come back with their state (each down 1-3 s), and twice the
            nodes split into two random halves for 1-2 s; every fault is over by 5 s;
- `ideal`:  no loss, no faults, the same delays (the reference for the same engines).

Columns: `|l2|` the second largest eigenvalue modulus of the Metropolis matrix; `to 1e-3` / `to
1e-6` the first sync round (push-sum period) at which disagreement `||X - mean(X)|| / ||X_0 -
mean(X_0)||` over all nodes is at or below the tolerance (`>R`: not within the R rounds run),
with the rounds `|l2|^k` predicts on an ideal network in brackets; `msgs/node` and `KB/node`
every message a node sent (heartbeats included) and its approximate wire size
(`netsim.approximate_size`); `sim s` the virtual seconds simulated; `wall s` the real seconds
and `cpu s` the CPU seconds of the
process (the machine is shared: see the load printed around the table; CPU time is the steadier
figure); `err` the largest distance of a
node's final value to the true average, relative to the start (sync under loss drifts: a missing
share's weight stays on the node's own value); `ok` whether every invariant held
(protocols/sim/simplan.py's docstring; the violations are printed below the table).

A row stops when disagreement reached 1e-6 and membership has settled after the heal, or after
`--rounds` rounds (60; `--periods` push-sum periods, 150).

The goal protocols (`--engines team_flood,hindsight`, protocols/sim/simgoals.py) get a table of their
own: the same topologies and links (`faults`: 30% loss, Pareto delays, 5% of the agents crashed
for the whole plan; `ideal`: the delays only), `--episodes` negotiations or hindsight exchanges
one after another. Columns: `live` agents and the connected groups they form (`groups`: crashed
agents can cut a ring), `follow` the fraction of live agents that followed their group's winner
(team flood), `aligned` the episodes in which every live agent pursued one goal, `decide s` the
mean and largest negotiation time against its bound (rounds x 0.5 s), `applied` / `missing` the
fraction of hindsight reports between live neighbours applied / missing at the deadline, then
messages and KB per live agent per episode, virtual, wall and CPU seconds, and `ok` the invariants.

    python bench/simulate.py                                   # 1,024 agents, every topology, both engines, faults
    python bench/simulate.py --agents 64,256 --plans faults,ideal --engines sync
    python bench/simulate.py --topologies exponential --json
    python bench/simulate.py --agents 16 --shrink              # a failing row's plan, shrunk, as config sections
    python bench/simulate.py --engines team_flood,hindsight --topologies exponential,torus,random_regular

`--save R.json --page R.md` keeps the invocation's record and renders its results page from it
(bench/results_page.py); `--page-from R.json --page R.md` renders a saved record again. The goal
protocols' table at 1,024 agents is docs/results/simulate_goals.md, written so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import results_page  # noqa: E402  (bench/results_page.py)
from protocols.net.links import LinkConfig  # noqa: E402
from protocols.sim.simgoals import run_goal_plan  # noqa: E402
from protocols.sim.simplan import HEAVY_TAILED_LOSSY, PlanSettings, predicted_rounds, replay_yaml, run_plan, shrink_plan, standard_plan  # noqa: E402
from protocols.engines.topology import exponential, grid, metropolis_weights, random_regular, ring, second_largest_eigenvalue_modulus, small_world  # noqa: E402

TOPOLOGIES = ("ring", "torus", "random_regular", "exponential", "small_world")
IDEAL_DELAYS = LinkConfig(delay_s=0.01, delay_distribution="pareto", pareto_shape=1.5)


def build(name: str, n: int, seed: int):
    if name == "ring":
        return ring(n)
    if name == "torus":
        side = math.isqrt(n)
        if side * side != n:
            raise SystemExit(f"--agents: a torus here is square, so the agent count must be a square number, got {n}")
        return grid(side, side, torus=True)
    if name == "random_regular":
        return random_regular(n, 4, seed)
    if name == "exponential":
        return exponential(n)
    if name == "small_world":
        return small_world(n, 4, 0.1, seed)
    raise SystemExit(f"--topologies: expected some of {', '.join(TOPOLOGIES)}, got {name!r}")


def make_plan(n: int, name: str, engine: str, plan_name: str, rounds: int, periods: int, seed: int):
    topology = build(name, n, seed)
    settings = PlanSettings(rounds=rounds, push_sum_periods=periods)
    if plan_name == "faults":
        plan = standard_plan(topology, name, engine, seed=seed, fault_window_s=5.0, link=HEAVY_TAILED_LOSSY, settings=settings)
    elif plan_name == "ideal":
        plan = standard_plan(topology, name, engine, seed=seed, crash_fraction=0.0, partitions=0, link=IDEAL_DELAYS, settings=settings)
    else:
        raise SystemExit(f"--plans: expected faults and/or ideal, got {plan_name!r}")
    return plan


def run_row(n: int, name: str, engine: str, plan_name: str, rounds: int, periods: int, seed: int) -> dict:
    plan = make_plan(n, name, engine, plan_name, rounds, periods, seed)
    topology = plan.topology
    result = run_plan(plan)
    slem = second_largest_eigenvalue_modulus(metropolis_weights(topology))
    return {
        "agents": n,
        "topology": name,
        "degree_mean": 2 * len(topology.edges) / n,
        "lambda_2": slem,
        "engine": engine,
        "plan": plan_name,
        "steps_run": rounds if engine == "sync" else periods,
        "rounds_to_1e-3": result.rounds_to[1e-3],
        "rounds_to_1e-6": result.rounds_to[1e-6],
        "predicted_1e-3": predicted_rounds(topology, 1e-3),
        "predicted_1e-6": predicted_rounds(topology, 1e-6),
        "messages_per_node": result.messages_per_node,
        "bytes_per_node": result.bytes_per_node,
        "simulated_s": result.simulated_s,
        "wall_s": result.wall_s,
        "cpu_s": result.cpu_s,
        "final_error": result.final_error,
        "max_weight_drift": result.max_weight_drift,
        "finished_alone": result.finished_alone,
        "events": len(plan.events),
        "violations": result.violations,
    }


GOAL_ENGINES = ("team_flood", "hindsight")


def run_goal_row(n: int, name: str, engine: str, plan_name: str, episodes: int, seed: int) -> dict:
    topology = build(name, n, seed)
    if plan_name == "faults":
        result = run_goal_plan(topology, engine, seed=seed, episodes=episodes, link=HEAVY_TAILED_LOSSY, crash_fraction=0.05)
    elif plan_name == "ideal":
        result = run_goal_plan(topology, engine, seed=seed, episodes=episodes, link=IDEAL_DELAYS, crash_fraction=0.0)
    else:
        raise SystemExit(f"--plans: expected faults and/or ideal, got {plan_name!r}")
    return {"topology": name, "plan": plan_name, **result.__dict__}


def format_goal_row(row: dict) -> str:
    flood = row["engine"] == "team_flood"
    follow = f"{row['follow_winner']:.3f}" if flood else "-"
    aligned = f"{row['team_aligned']:.2f}" if flood else "-"
    decide = f"{row['decision_s_mean']:.2f}/{row['decision_s_max']:.2f} [{row['decision_bound_s']:.1f}]" if flood else "-"
    applied = "-" if flood else f"{row['reports_applied']:.3f}"
    missing = "-" if flood else f"{row['reports_missing']:.3f}"
    return (
        f"{row['agents']:>6} {row['topology']:<15} {row['engine']:<10} {row['plan']:<7} {row['live_agents']:>5} {row['live_components']:>6} "
        f"{follow:>7} {aligned:>7} {decide:>19} {applied:>7} {missing:>7} "
        f"{row['messages_per_agent']:>9.1f} {row['bytes_per_agent'] / 1024:>8.1f} {row['simulated_s']:>6.1f} "
        f"{row['wall_s']:>6.1f} {row['cpu_s']:>6.1f} {'yes' if not row['violations'] else 'NO':>3}"
    )


def print_goal_table(rows: list[dict]) -> None:
    header = (f"{'agents':>6} {'topology':<15} {'engine':<10} {'plan':<7} {'live':>5} {'groups':>6} {'follow':>7} {'aligned':>7} "
              f"{'decide s [bound]':>19} {'applied':>7} {'missing':>7} {'msgs/node':>9} {'KB/node':>8} {'sim s':>6} "
              f"{'wall s':>6} {'cpu s':>6} {'ok':>3}")
    _print_rows(header, format_goal_row, rows)


def render(record: dict, source: str) -> str:
    """The results page of a saved record: the table(s) as the terminal shows them."""
    rows = [row for row in record["rows"] if "lambda_2" in row]
    goal_rows = [row for row in record["rows"] if row.get("engine") in GOAL_ENGINES]
    page = results_page.header(record, "Many simulated agents under faults (bench/simulate.py)", source)
    for title, printer, selected in (("Consensus engines", print_table, rows), ("Goal protocols", print_goal_table, goal_rows)):
        if selected:
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                printer(selected)
            page += f"## {title}\n\n" + "".join(f"    {line}\n" for line in captured.getvalue().splitlines()) + "\n"
    return page + "What each column means: the docstring of bench/simulate.py.\n"


def _rounds(reached: int | None, predicted: float, run: int) -> str:
    shown = f">{run}" if reached is None else str(reached)
    return f"{shown} [{'inf' if math.isinf(predicted) else math.ceil(predicted)}]"


def format_row(row: dict) -> str:
    return (
        f"{row['agents']:>6} {row['topology']:<15} {row['degree_mean']:>5.1f} {row['lambda_2']:>8.5f} {row['engine']:<8} "
        f"{row['plan']:<7} {_rounds(row['rounds_to_1e-3'], row['predicted_1e-3'], row['steps_run']):>13} "
        f"{_rounds(row['rounds_to_1e-6'], row['predicted_1e-6'], row['steps_run']):>15} "
        f"{row['messages_per_node']:>9.0f} {row['bytes_per_node'] / 1024:>8.1f} {row['simulated_s']:>6.1f} "
        f"{row['wall_s']:>6.1f} {row['cpu_s']:>6.1f} {row['final_error']:>8.1e} "
        f"{row['finished_alone'] if row['engine'] == 'sync' else '-':>5} {'yes' if not row['violations'] else 'NO':>3}"
    )


def print_table(rows: list[dict]) -> None:
    header = f"{'agents':>6} {'topology':<15} {'deg':>5} {'|l2|':>8} {'engine':<8} {'plan':<7} {'to 1e-3':>13} {'to 1e-6':>15} " \
             f"{'msgs/node':>9} {'KB/node':>8} {'sim s':>6} {'wall s':>6} {'cpu s':>6} {'err':>8} {'alone':>5} {'ok':>3}"
    _print_rows(header, format_row, rows)


def _print_rows(header: str, format_line, rows: list[dict]) -> None:
    """A table as the terminal shows it: the header, a rule, a line per row, then the first
    three invariant violations of each row."""
    print(header)
    print("-" * len(header))
    for row in rows:
        print(format_line(row))
    for row in rows:
        for violation in row["violations"][:3]:
            print(f"  {row['agents']} {row['topology']} {row['engine']} {row['plan']}: {violation}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1024", help="comma-separated agent counts (square numbers for the torus)")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--engines", default="sync,push_sum")
    parser.add_argument("--plans", default="faults")
    parser.add_argument("--rounds", type=int, default=60, help="synchronous rounds per run (0.2 s each)")
    parser.add_argument("--periods", type=int, default=150, help="push-sum periods per run (0.1 s each)")
    parser.add_argument("--episodes", type=int, default=1, help="team_flood / hindsight: runs one after another per row")
    parser.add_argument("--seed", type=int, default=0)
    results_page.add_page_options(parser, skipped="simulate nothing")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--shrink", action="store_true",
                        help="cut each failing row's plan down to its smallest failing form (a full simulation per try) "
                             "and print it as run config sections for orchestrate up")
    args = parser.parse_args(argv)
    if results_page.render_saved_page(parser, args, render):
        return 0
    record = results_page.begin("bench/simulate.py", sys.argv[1:] if argv is None else argv)
    rows, goal_rows = [], []
    if not args.json:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, cpus {os.cpu_count()}")
    for n in [int(value) for value in args.agents.split(",")]:
        for name in args.topologies.split(","):
            for engine in args.engines.split(","):
                if engine not in ("sync", "push_sum", *GOAL_ENGINES):
                    raise SystemExit(f"--engines: expected some of sync, push_sum, {', '.join(GOAL_ENGINES)}; got {engine!r}")
                for plan_name in args.plans.split(","):
                    if engine in GOAL_ENGINES:
                        goal_rows.append(run_goal_row(n, name, engine, plan_name, args.episodes, args.seed))
                        if not args.json:
                            print(format_goal_row(goal_rows[-1]), file=sys.stderr, flush=True)
                        continue
                    rows.append(run_row(n, name, engine, plan_name, args.rounds, args.periods, args.seed))
                    if not args.json:
                        print(format_row(rows[-1]), file=sys.stderr, flush=True)
    record["rows"] = rows + goal_rows
    results_page.finish(record, args.save, args.page, render)
    if args.json:
        print(json.dumps(rows + goal_rows, indent=1))
    else:
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if rows:
            print_table(rows)
        if goal_rows:
            print_goal_table(goal_rows)
    if args.shrink:
        for row in rows:
            if row["violations"]:
                plan = make_plan(row["agents"], row["topology"], row["engine"], row["plan"], args.rounds, args.periods, args.seed)
                print(f"\n# {row['agents']} {row['topology']} {row['engine']} {row['plan']}: shrinking {len(plan.events)} events")
                print(replay_yaml(shrink_plan(plan)))
    return 1 if any(row["violations"] for row in rows + goal_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
