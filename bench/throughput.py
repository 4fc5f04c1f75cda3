"""Lockstep throughput: PettingZoo in-process against Parley (env server + N agent processes).

    python bench/throughput.py [--agents 4 8 16] [--workers 1 2] [--steps N] [--transport ipc|tcp]
                               [--baseline DIR | --messages-baseline] [--alternate R] [--json]

For each agent count N, measured in one run so the ratios compare like with like on a noisy
machine:
- in-process: mpe2 simple_spread_v3 with N agents, built as the env server builds it
  (`env_server.registry.make_env`), stepped directly with random actions;
- Parley K=1 and K=8: a standalone env server and N client processes (bench/random_client.py)
  that answer every observation with random actions over ZeroMQ (no learning); with
  `--workers 1 2` the K=8 row is also measured with the copies split over 2 processes
  (env_server/workers.py), which only pays when cores are free.
Steps are environment steps summed over copies; each ratio is Parley's steps/s divided by the
in-process steps/s of one environment with the same N. Parley's time runs from the first
observation to the last one (the slowest client's span), so process start-up is left out; a row
is only valid when no action was defaulted (`defaulted` = 0: no step deadline passed).

Other load on the machine moves steps/s a lot (the in-process baseline alone swings 2x on the
shared 2-core machine), so each row also reports CPU time per env step (Linux /proc: server,
its workers and every client, from the first observation on, against the in-process loop's
CPU time): `cpu_ratio` = in-process CPU / Parley CPU, the overhead without the scheduler.

The transport is ipc:// by default, as in an orchestrated run on one host; `--transport tcp`
measures loopback TCP (what several hosts use).

`--messages-baseline` measures this checkout's clients with msgpack lockstep bodies as the `before`
rows, against packed bodies (protocols/codec/packed.py, what a run uses), side by side the same way.

`--zmq-baseline` measures the two lockstep paths of this checkout side by side: the `before` rows
with the env server's `--transport zmq` (packed bodies over zmq), the others with `--transport
shm` (packed bodies through shared memory, protocols/net/shm_lockstep.py; what `auto` picks on one
host).

Every row also gives the round trip of a step as the clients see it (from sending an action to
receiving the next observation: the other clients, the env step and both transfers), p50 and
p99 in microseconds, the median over the clients of each client's percentile.

`--alternate R` (with either of the two above) measures only the pair: R runs of each per K,
their order swapped every round, medians (the figures in bench/PROFILE.md, round 6).

`--baseline DIR` measures a second checkout of Parley (e.g. `git worktree add /tmp/before main`
or `git archive main | tar -x -C /tmp/before`) in the same run: for each K its env server and
clients run right before this checkout's, against the same in-process baseline, so a before /
after comparison is side by side under the same load (`before_*` keys, `before` table rows).

Each measurement is also printed on stderr as it is taken, so a run stopped at a time limit (on a
slower machine, say) keeps what it measured; the table comes at the end.

Profile of the hot path and the measurements behind the README's table: bench/PROFILE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from typing import NamedTuple

from runs import env_kwargs, kill_leftovers, process_tree_cpu_s, ready_endpoint  # (the shared bench helpers; bench/ is this script's directory)

REPO = Path(__file__).resolve().parents[1]
CLIENT_TIMEOUT_S = 900
ENV_NAME = "mpe2.simple_spread_v3"


def inprocess_steps_per_s(agents: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """(env steps per second, CPU microseconds per env step) of the env as the env server builds it."""
    from env_server.registry import make_env

    env = make_env(ENV_NAME, env_kwargs(agents))
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({agent: int(rng.integers(5)) for agent in env.agents})
    rate, cpu_us = steps / (time.perf_counter() - start), (time.process_time() - start_cpu) / steps * 1e6
    progress(f"in-process N={agents}: {rate:.0f} steps/s, {cpu_us:.0f} CPU us per step")
    return rate, cpu_us


def progress(line: str) -> None:
    """One measurement as it is taken, on stderr: a run stopped at a time limit keeps what it
    measured (the table comes only at the end)."""
    print(line, file=sys.stderr, flush=True)


class ParleyRun(NamedTuple):
    steps_per_s: float  # env steps per second
    defaulted: int  # observations that reported a defaulted action
    cpu_us_per_step: float  # CPU microseconds per env step of the server, its workers and every client
    round_trip_p50_us: float  # (nan from a checkout whose clients do not report them)
    round_trip_p99_us: float
    paths: str  # how the clients' lockstep bodies travelled ("shm", "zmq_packed", ...; "?" if not reported)


def parley_steps_per_s(agents: int, lockstep_steps: int, copies: int, transport: str, workers: int = 1,
                       repo: Path = REPO, bodies: str = "packed", lockstep: str | None = None) -> ParleyRun:
    """One run of the env server and clients of the checkout `repo`, the clients asking for
    packed lockstep bodies or not (`bodies`: packed or messages; a checkout from before packed
    bodies ignores it), the server with `--transport lockstep` when given (auto | shm | zmq)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as socket_dir:
        bind = f"ipc://{socket_dir}/env.sock" if transport == "ipc" else "tcp://127.0.0.1:0"
        server = subprocess.Popen(
            [sys.executable, "-m", "env_server", "--env", ENV_NAME, "--kwargs", json.dumps(env_kwargs(agents)),
             "--copies", str(copies), "--max-steps", str(lockstep_steps), "--bind", bind,
             *(["--workers", str(workers)] if workers != 1 else []), *(["--transport", lockstep] if lockstep else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=repo,
        )
        clients: list[subprocess.Popen] = []
        try:
            endpoint = ready_endpoint(server.stdout.readline().decode().strip())
            server_cpu_at_start = process_tree_cpu_s(server.pid)
            clients = [
                subprocess.Popen(
                    [sys.executable, str(repo / "bench" / "random_client.py"), endpoint, str(i), str(i), bodies],
                    stdout=subprocess.PIPE, env=env, cwd=repo,
                )
                for i in range(agents)
            ]
            spans, defaulted, client_cpu, p50s, p99s, paths = [], 0, 0.0, [], [], set()
            for client in clients:
                out, _ = client.communicate(timeout=CLIENT_TIMEOUT_S)
                timing = [row for row in out.decode().splitlines() if row.startswith("TIMING ")]
                if client.returncode != 0 or not timing:
                    raise RuntimeError(f"a bench client failed (exit {client.returncode}): {out.decode()[-500:]!r}")
                _, answered, missing, seconds, cpu_seconds, *latency = timing[-1].split()
                if latency:
                    p50s.append(float(latency[0]))
                    p99s.append(float(latency[1]))
                    paths.add(latency[2])
                spans.append(float(seconds))
                defaulted += int(missing)
                client_cpu += float(cpu_seconds)
            server_cpu = process_tree_cpu_s(server.pid) - server_cpu_at_start
        finally:
            kill_leftovers(clients)
            server.terminate()
            server.wait(timeout=30)
    env_steps = lockstep_steps * copies
    rate, cpu_us = env_steps / max(spans), (server_cpu + client_cpu) / env_steps * 1e6
    progress(f"Parley N={agents} K={copies} W={workers} ({repo.name}, {bodies} bodies, lockstep {lockstep or 'auto'}): "
             f"{rate:.0f} steps/s, {cpu_us:.0f} CPU us per env step, {defaulted} defaulted")
    return ParleyRun(rate, defaulted, cpu_us,
                     float(np.median(p50s)) if p50s else float("nan"), float(np.median(p99s)) if p99s else float("nan"),
                     "+".join(sorted(paths)) or "?")


def alternate(agents: int, steps: int, transport: str, workers: list[int], rounds: int, before: tuple[Path, str, str | None],
              after_lockstep: str | None = None) -> list[dict]:
    """This checkout (packed bodies, the server's `--transport after_lockstep`) against `before` =
    (checkout, bodies, lockstep), `rounds` runs of each per K, the order swapped every round (so
    neither always runs first); medians of steps/s and CPU per env step."""
    sides = {"after": (REPO, "packed", after_lockstep), "before": before}
    rows = []
    for copies, w in [(1, 1)] + [(8, w) for w in workers]:
        runs: dict[str, list[tuple[float, float, float, float]]] = {side: [] for side in sides}
        for round_index in range(rounds):
            for side in ("after", "before") if round_index % 2 == 0 else ("before", "after"):
                repo, bodies, lockstep = sides[side]
                run = parley_steps_per_s(agents, steps // copies, copies, transport, workers=w, repo=repo, bodies=bodies,
                                         lockstep=lockstep)
                if run.defaulted:
                    raise RuntimeError(f"{side} K={copies} W={w}: {run.defaulted} observations reported a defaulted action")
                runs[side].append((run.steps_per_s, run.cpu_us_per_step, run.round_trip_p50_us, run.round_trip_p99_us))
        row = {"agents": agents, "copies": copies, "workers": w, "rounds": rounds}
        for side, measured in runs.items():
            row[f"{side}_steps_per_s"] = round(float(np.median([r[0] for r in measured])), 1)
            row[f"{side}_cpu_us_per_step"] = round(float(np.median([r[1] for r in measured])), 1)
            row[f"{side}_steps_per_s_range"] = [round(min(r[0] for r in measured)), round(max(r[0] for r in measured))]
            row[f"{side}_round_trip_p50_us"] = round(float(np.median([r[2] for r in measured])), 1)
            row[f"{side}_round_trip_p99_us"] = round(float(np.median([r[3] for r in measured])), 1)
        rows.append(row)
    return rows


def measure(agents: int, steps: int, transport: str, workers: list[int], baseline: tuple[Path, str, str | None] | None = None,
            lockstep: str | None = None) -> dict:
    """One table row; `baseline` = (checkout, bodies, lockstep) measured right before this
    checkout (its server with `--transport lockstep` when given) for each K."""
    # The in-process baseline is taken before, between and after the Parley runs and its median
    # is the denominator: on a shared machine the load drifts during a row.
    runs = [inprocess_steps_per_s(agents, steps)]
    measured: dict[str, ParleyRun] = {}
    for key, copies, w in [("k1", 1, 1)] + [(f"k8_{w}", 8, w) for w in workers]:
        if baseline is not None:  # the other side right before this one, for each K
            measured[f"before_{key}"] = parley_steps_per_s(agents, steps // copies, copies, transport, workers=w,
                                                           repo=baseline[0], bodies=baseline[1], lockstep=baseline[2])
        measured[key] = parley_steps_per_s(agents, steps // copies, copies, transport, workers=w, lockstep=lockstep)
        if key == "k1":
            runs.append(inprocess_steps_per_s(agents, steps))
    runs.append(inprocess_steps_per_s(agents, steps))
    inprocess = [rate for rate, _ in runs]
    baseline_rate = float(np.median(inprocess))
    # CPU time per env step is far less sensitive to other load than steps/s: the second,
    # load-robust view of the same overhead (in-process CPU / Parley's CPU, all processes).
    baseline_cpu = float(np.median([cpu for _, cpu in runs]))
    row: dict = {
        "agents": agents,
        "inprocess_steps_per_s": round(baseline_rate, 1),
        "inprocess_spread": [round(min(inprocess), 1), round(max(inprocess), 1)],
        "inprocess_cpu_us_per_step": round(baseline_cpu, 1),
    }
    for side in ("", "before_") if baseline is not None else ("",):
        for key, w in [("k1", 1)] + [(f"k8_{w}", w) for w in workers]:
            run = measured[side + key]
            name = "k1" if key == "k1" else ("k8" if w == 1 else f"k8_w{w}")
            prefix = "before_" if side else "parley_"
            row[f"{prefix}{name}_steps_per_s"] = round(run.steps_per_s, 1)
            row[f"{side}ratio_{name}"] = round(run.steps_per_s / baseline_rate, 3)
            row[f"{prefix}{name}_cpu_us_per_step"] = round(run.cpu_us_per_step, 1)
            row[f"{side}cpu_ratio_{name}"] = round(baseline_cpu / run.cpu_us_per_step, 3)
            row[f"{side}round_trip_{name}_p50_us"] = round(run.round_trip_p50_us, 1)
            row[f"{side}round_trip_{name}_p99_us"] = round(run.round_trip_p99_us, 1)
            row[f"{side}paths_{name}"] = run.paths
        row[f"{side}defaulted_observations"] = sum(run.defaulted for key, run in measured.items() if key.startswith(side or "k"))
    row["env_steps"] = steps
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[4], help="agent counts N to measure (e.g. 4 8 16)")
    parser.add_argument("--hosts", type=int, default=None, metavar="H",
                        help="spread over H network namespaces against one host, tcp over ssh (bench/throughput_hosts.py; root)")
    parser.add_argument("--repeats", type=int, default=1, help="with --hosts: rows per K, alternating one host / spread")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per measurement")
    parser.add_argument("--transport", choices=["ipc", "tcp"], default="ipc")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="K=8 rows with the copies split over W processes (e.g. 1 2)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of Parley (e.g. main) measured side by side in the same run")
    parser.add_argument("--messages-baseline", action="store_true",
                        help="measure this checkout with msgpack lockstep bodies side by side (the 'before' rows) "
                             "against packed ones (protocols/codec/packed.py)")
    parser.add_argument("--zmq-baseline", action="store_true",
                        help="measure this checkout's zmq lockstep (env server --transport zmq) side by side (the 'before' "
                             "rows) against its shared-memory one (--transport shm, protocols/net/shm_lockstep.py)")
    parser.add_argument("--alternate", type=int, default=None, metavar="ROUNDS",
                        help="with --baseline or --messages-baseline: only the two sides, ROUNDS runs of each per K "
                             "in alternating order; medians (no in-process rows)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "bench" / "random_client.py").is_file():
        parser.error(f"--baseline: expected a Parley checkout with bench/random_client.py, got {args.baseline}")
    if sum([args.baseline is not None, args.messages_baseline, args.zmq_baseline]) > 1:
        parser.error("--baseline, --messages-baseline and --zmq-baseline each name the 'before' rows: give one")
    baseline = (args.baseline.resolve(), "packed", None) if args.baseline is not None else None
    lockstep = None  # the env server's default (auto)
    if args.messages_baseline:
        baseline = (REPO, "messages", None)
    if args.zmq_baseline:
        baseline, lockstep = (REPO, "packed", "zmq"), "shm"
    if args.alternate is not None:
        if baseline is None or args.alternate < 1:
            parser.error(f"--alternate: expected --baseline, --messages-baseline or --zmq-baseline and at least 1 round, "
                         f"got {args.alternate}")
        rows = [row for n in args.agents
                for row in alternate(n, args.steps, args.transport, args.workers, args.alternate, baseline, lockstep)]
        if args.json:
            print(json.dumps({"transport": args.transport, "before": [str(baseline[0]), baseline[1], baseline[2]], "rows": rows,
                              "load_avg_1m": round(os.getloadavg()[0], 2)}))
            return
        print(f"this checkout (packed bodies, lockstep {lockstep or 'auto'}) against {baseline[0]} ({baseline[1]} bodies, "
              f"lockstep {baseline[2] or 'auto'}), {args.steps} env steps per run, "
              f"medians of {args.alternate} alternating runs; load average {os.getloadavg()[0]:.2f} after")
        print(f"{'N':>3} {'K':>2} {'W':>2}  {'steps/s':>8} {'before':>8}  {'CPU us/env step':>15} {'before':>8}"
              f"  {'round trip p50/p99 us':>21} {'before':>13}")
        for row in rows:
            print(f"{row['agents']:>3} {row['copies']:>2} {row['workers']:>2}  {row['after_steps_per_s']:>8.0f} "
                  f"{row['before_steps_per_s']:>8.0f}  {row['after_cpu_us_per_step']:>15.0f} {row['before_cpu_us_per_step']:>8.0f}"
                  f"  {row['after_round_trip_p50_us']:>10.0f}/{row['after_round_trip_p99_us']:<10.0f}"
                  f" {row['before_round_trip_p50_us']:>6.0f}/{row['before_round_trip_p99_us']:<6.0f}")
        return
    if any(n < 1 for n in args.agents):
        parser.error(f"--agents: expected positive counts, got {args.agents}")
    if any(not 1 <= w <= 8 for w in args.workers):
        parser.error(f"--workers: expected counts between 1 and K=8, got {args.workers}")
    if args.hosts is not None:
        if not 2 <= args.hosts <= 8 or args.repeats < 1:
            parser.error(f"--hosts/--repeats: expected 2 to 8 hosts and at least 1 repeat, got {args.hosts} / {args.repeats}")
        from throughput_hosts import run_across_hosts  # bench/ is this script's directory

        raise SystemExit(run_across_hosts(args.hosts, args.agents, args.steps, args.repeats, args.json))

    started = time.time()
    rows = [measure(n, args.steps, args.transport, args.workers, baseline, lockstep) for n in args.agents]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"transport": args.transport, "rows": rows, "load_avg_1m": round(load[0], 2),
                          "seconds": round(time.time() - started, 1)}))
        return
    before = "" if baseline is None else (" (before: msgpack bodies)" if args.messages_baseline
                                          else " (lockstep through shared memory; before: zmq)" if args.zmq_baseline
                                          else f" (before: {baseline[0]})")
    print(f"mpe2 simple_spread_v3, random actions, {args.steps} env steps per row, {args.transport}{before}; "
          f"load average {load[0]:.2f} after the run")
    k8_columns = [("" if w == 1 else f"_w{w}", f"K=8 W={w}") for w in args.workers]
    print(f"{'N':>3}  {'in-process':>11}  {'Parley K=1':>11}  {'ratio':>6}"
          + "".join(f"  {title:>11}  {'ratio':>6}" for _, title in k8_columns) + f"  {'defaulted':>9}")
    for row in rows:
        print(f"{row['agents']:>3}  {row['inprocess_steps_per_s']:>11.0f}  {row['parley_k1_steps_per_s']:>11.0f}  "
              f"{row['ratio_k1']:>6.2f}"
              + "".join(f"  {row[f'parley_k8{suffix}_steps_per_s']:>11.0f}  {row[f'ratio_k8{suffix}']:>6.2f}" for suffix, _ in k8_columns)
              + f"  {row['defaulted_observations']:>9}")
        if baseline is not None:
            print(f"{'':>3}  {'before':>11}  {row['before_k1_steps_per_s']:>11.0f}  {row['before_ratio_k1']:>6.2f}"
                  + "".join(f"  {row[f'before_k8{suffix}_steps_per_s']:>11.0f}  {row[f'before_ratio_k8{suffix}']:>6.2f}" for suffix, _ in k8_columns)
                  + f"  {row['before_defaulted_observations']:>9}")
        print(f"{'':>3}  round trip p50/p99 us: K=1 {row['round_trip_k1_p50_us']:.0f}/{row['round_trip_k1_p99_us']:.0f} "
              f"({row['paths_k1']})"
              + ("" if baseline is None else
                 f", before {row['before_round_trip_k1_p50_us']:.0f}/{row['before_round_trip_k1_p99_us']:.0f} ({row['before_paths_k1']})")
              + "".join(f"; K=8 W={w} {row[f'round_trip_k8{s}_p50_us']:.0f}/{row[f'round_trip_k8{s}_p99_us']:.0f}"
                        + ("" if baseline is None else
                           f", before {row[f'before_round_trip_k8{s}_p50_us']:.0f}/{row[f'before_round_trip_k8{s}_p99_us']:.0f}")
                        for (s, _), w in zip(k8_columns, args.workers)))
        print(f"{'':>3}  CPU us/env step: in-process {row['inprocess_cpu_us_per_step']:.0f}, K=1 {row['parley_k1_cpu_us_per_step']:.0f} "
              f"(ratio {row['cpu_ratio_k1']:.2f})"
              + "".join(f", K=8 W={w} {row[f'parley_k8{s}_cpu_us_per_step']:.0f} (ratio {row[f'cpu_ratio_k8{s}']:.2f})"
                        for (s, _), w in zip(k8_columns, args.workers)))
        if baseline is not None:
            print(f"{'':>3}  before: K=1 {row['before_k1_cpu_us_per_step']:.0f} (ratio {row['before_cpu_ratio_k1']:.2f})"
                  + "".join(f", K=8 W={w} {row[f'before_k8{s}_cpu_us_per_step']:.0f} (ratio {row[f'before_cpu_ratio_k8{s}']:.2f})"
                            for (s, _), w in zip(k8_columns, args.workers)))


if __name__ == "__main__":
    main()
