"""Lockstep throughput: PettingZoo in-process against Parley (env server + N agent processes).

    python bench/throughput.py [--agents 4 8 16] [--workers 1 2] [--steps N] [--transport ipc|tcp]
                               [--baseline DIR | --messages-baseline] [--alternate R] [--json]

For each agent count N, measured in one run so the ratios compare like with like on a noisy
machine:
- in-process: mpe2 simple_spread_v3 with N agents stepped directly with random actions;
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
rows, against packed bodies (protocols/packed.py, what a run uses), side by side the same way.

`--alternate R` (with either of the two above) measures only the pair: R runs of each per K,
their order swapped every round, medians (the figures in bench/PROFILE.md, round 6).

`--baseline DIR` measures a second checkout of Parley (e.g. `git worktree add /tmp/before main`
or `git archive main | tar -x -C /tmp/before`) in the same run: for each K its env server and
clients run right before this checkout's, against the same in-process baseline, so a before /
after comparison is side by side under the same load (`before_*` keys, `before` table rows).

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

from runs import env_kwargs, process_tree_cpu_s  # (the shared bench helpers; bench/ is this script's directory)

REPO = Path(__file__).resolve().parents[1]
CLIENT_TIMEOUT_S = 900


def inprocess_steps_per_s(agents: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """(env steps per second, CPU microseconds per env step)."""
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(**env_kwargs(agents))
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({agent: int(rng.integers(5)) for agent in env.agents})
    return steps / (time.perf_counter() - start), (time.process_time() - start_cpu) / steps * 1e6


def parley_steps_per_s(agents: int, lockstep_steps: int, copies: int, transport: str, workers: int = 1,
                       repo: Path = REPO, bodies: str = "packed") -> tuple[float, int, float]:
    """(env steps per second, observations that reported a defaulted action, CPU microseconds
    per env step of the server, its workers and every client together), running the env server
    and clients of the checkout `repo`, the clients asking for packed lockstep bodies or not
    (`bodies`: packed or messages; a checkout from before packed bodies ignores it)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as socket_dir:
        bind = f"ipc://{socket_dir}/env.sock" if transport == "ipc" else "tcp://127.0.0.1:0"
        server = subprocess.Popen(
            [sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3", "--kwargs", json.dumps(env_kwargs(agents)),
             "--copies", str(copies), "--max-steps", str(lockstep_steps), "--bind", bind,
             *(["--workers", str(workers)] if workers != 1 else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=repo,
        )
        clients: list[subprocess.Popen] = []
        try:
            line = server.stdout.readline().decode().strip()
            if not line.startswith("READY "):
                raise RuntimeError(f"env server did not start: {line!r}")
            endpoint = line.split(" ", 1)[1]
            server_cpu_at_start = process_tree_cpu_s(server.pid)
            clients = [
                subprocess.Popen(
                    [sys.executable, str(repo / "bench" / "random_client.py"), endpoint, str(i), str(i), bodies],
                    stdout=subprocess.PIPE, env=env, cwd=repo,
                )
                for i in range(agents)
            ]
            spans, defaulted, client_cpu = [], 0, 0.0
            for client in clients:
                out, _ = client.communicate(timeout=CLIENT_TIMEOUT_S)
                timing = [row for row in out.decode().splitlines() if row.startswith("TIMING ")]
                if client.returncode != 0 or not timing:
                    raise RuntimeError(f"a bench client failed (exit {client.returncode}): {out.decode()[-500:]!r}")
                _, answered, missing, seconds, cpu_seconds = timing[-1].split()
                spans.append(float(seconds))
                defaulted += int(missing)
                client_cpu += float(cpu_seconds)
            server_cpu = process_tree_cpu_s(server.pid) - server_cpu_at_start
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            server.terminate()
            server.wait(timeout=30)
    env_steps = lockstep_steps * copies
    return env_steps / max(spans), defaulted, (server_cpu + client_cpu) / env_steps * 1e6


def alternate(agents: int, steps: int, transport: str, workers: list[int], rounds: int, before: tuple[Path, str]) -> list[dict]:
    """This checkout (packed bodies) against `before` = (checkout, bodies), `rounds` runs of each
    per K, the order swapped every round (so neither always runs first); medians of steps/s and
    CPU per env step."""
    sides = {"after": (REPO, "packed"), "before": before}
    rows = []
    for copies, w in [(1, 1)] + [(8, w) for w in workers]:
        runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
        for round_index in range(rounds):
            for side in ("after", "before") if round_index % 2 == 0 else ("before", "after"):
                repo, bodies = sides[side]
                rate, defaulted, cpu = parley_steps_per_s(agents, steps // copies, copies, transport, workers=w, repo=repo, bodies=bodies)
                if defaulted:
                    raise RuntimeError(f"{side} K={copies} W={w}: {defaulted} observations reported a defaulted action")
                runs[side].append((rate, cpu))
        row = {"agents": agents, "copies": copies, "workers": w, "rounds": rounds}
        for side, measured in runs.items():
            row[f"{side}_steps_per_s"] = round(float(np.median([r for r, _ in measured])), 1)
            row[f"{side}_cpu_us_per_step"] = round(float(np.median([c for _, c in measured])), 1)
            row[f"{side}_steps_per_s_range"] = [round(min(r for r, _ in measured)), round(max(r for r, _ in measured))]
        rows.append(row)
    return rows


def measure(agents: int, steps: int, transport: str, workers: list[int], baseline: tuple[Path, str] | None = None) -> dict:
    """One table row; `baseline` = (checkout, bodies) measured right before this checkout for each K."""
    # The in-process baseline is taken before, between and after the Parley runs and its median
    # is the denominator: on a shared machine the load drifts during a row.
    runs = [inprocess_steps_per_s(agents, steps)]
    before: dict[str, float] = {}
    if baseline is not None:  # the other checkout right before this one, for each K
        before["k1"], before["k1_defaulted"], before["k1_cpu"] = parley_steps_per_s(
            agents, steps, 1, transport, repo=baseline[0], bodies=baseline[1])
    k1, defaulted, k1_cpu = parley_steps_per_s(agents, steps, 1, transport)
    runs.append(inprocess_steps_per_s(agents, steps))
    k8, k8_cpu = {}, {}
    for w in workers:
        if baseline is not None:
            before[f"k8_{w}"], missing, before[f"k8_{w}_cpu"] = parley_steps_per_s(
                agents, steps // 8, 8, transport, workers=w, repo=baseline[0], bodies=baseline[1])
            before["k1_defaulted"] += missing
        k8[w], missing, k8_cpu[w] = parley_steps_per_s(agents, steps // 8, 8, transport, workers=w)
        defaulted += missing
    runs.append(inprocess_steps_per_s(agents, steps))
    inprocess = [rate for rate, _ in runs]
    baseline_rate = float(np.median(inprocess))
    # CPU time per env step is far less sensitive to other load than steps/s: the second,
    # load-robust view of the same overhead (in-process CPU / Parley's CPU, all processes).
    baseline_cpu = float(np.median([cpu for _, cpu in runs]))
    row = {
        "agents": agents,
        "inprocess_steps_per_s": round(baseline_rate, 1),
        "inprocess_spread": [round(min(inprocess), 1), round(max(inprocess), 1)],
        "parley_k1_steps_per_s": round(k1, 1),
        "ratio_k1": round(k1 / baseline_rate, 3),
        "inprocess_cpu_us_per_step": round(baseline_cpu, 1),
        "parley_k1_cpu_us_per_step": round(k1_cpu, 1),
        "cpu_ratio_k1": round(baseline_cpu / k1_cpu, 3),
    }
    for w in workers:
        suffix = "" if w == 1 else f"_w{w}"
        row[f"parley_k8{suffix}_steps_per_s"] = round(k8[w], 1)
        row[f"ratio_k8{suffix}"] = round(k8[w] / baseline_rate, 3)
        row[f"parley_k8{suffix}_cpu_us_per_step"] = round(k8_cpu[w], 1)
        row[f"cpu_ratio_k8{suffix}"] = round(baseline_cpu / k8_cpu[w], 3)
    row["defaulted_observations"] = defaulted
    if baseline is not None:
        row["before_k1_steps_per_s"] = round(before["k1"], 1)
        row["before_ratio_k1"] = round(before["k1"] / baseline_rate, 3)
        row["before_k1_cpu_us_per_step"] = round(before["k1_cpu"], 1)
        row["before_cpu_ratio_k1"] = round(baseline_cpu / before["k1_cpu"], 3)
        for w in workers:
            suffix = "" if w == 1 else f"_w{w}"
            row[f"before_k8{suffix}_steps_per_s"] = round(before[f"k8_{w}"], 1)
            row[f"before_ratio_k8{suffix}"] = round(before[f"k8_{w}"] / baseline_rate, 3)
            row[f"before_k8{suffix}_cpu_us_per_step"] = round(before[f"k8_{w}_cpu"], 1)
            row[f"before_cpu_ratio_k8{suffix}"] = round(baseline_cpu / before[f"k8_{w}_cpu"], 3)
        row["before_defaulted_observations"] = int(before["k1_defaulted"])
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
                             "against packed ones (protocols/packed.py)")
    parser.add_argument("--alternate", type=int, default=None, metavar="ROUNDS",
                        help="with --baseline or --messages-baseline: only the two sides, ROUNDS runs of each per K "
                             "in alternating order; medians (no in-process rows)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "bench" / "random_client.py").is_file():
        parser.error(f"--baseline: expected a Parley checkout with bench/random_client.py, got {args.baseline}")
    if args.baseline is not None and args.messages_baseline:
        parser.error("--baseline and --messages-baseline both name the 'before' rows: give one")
    baseline = (args.baseline.resolve(), "packed") if args.baseline is not None else None
    if args.messages_baseline:
        baseline = (REPO, "messages")
    if args.alternate is not None:
        if baseline is None or args.alternate < 1:
            parser.error(f"--alternate: expected --baseline or --messages-baseline and at least 1 round, got {args.alternate}")
        rows = [row for n in args.agents for row in alternate(n, args.steps, args.transport, args.workers, args.alternate, baseline)]
        if args.json:
            print(json.dumps({"transport": args.transport, "before": [str(baseline[0]), baseline[1]], "rows": rows,
                              "load_avg_1m": round(os.getloadavg()[0], 2)}))
            return
        print(f"this checkout (packed bodies) against {baseline[0]} ({baseline[1]} bodies), {args.steps} env steps per run, "
              f"medians of {args.alternate} alternating runs; load average {os.getloadavg()[0]:.2f} after")
        print(f"{'N':>3} {'K':>2} {'W':>2}  {'steps/s':>8} {'before':>8}  {'CPU us/env step':>15} {'before':>8}")
        for row in rows:
            print(f"{row['agents']:>3} {row['copies']:>2} {row['workers']:>2}  {row['after_steps_per_s']:>8.0f} "
                  f"{row['before_steps_per_s']:>8.0f}  {row['after_cpu_us_per_step']:>15.0f} {row['before_cpu_us_per_step']:>8.0f}")
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
    rows = [measure(n, args.steps, args.transport, args.workers, baseline) for n in args.agents]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"transport": args.transport, "rows": rows, "load_avg_1m": round(load[0], 2),
                          "seconds": round(time.time() - started, 1)}))
        return
    before = "" if baseline is None else (" (before: msgpack bodies)" if args.messages_baseline else f" (before: {baseline[0]})")
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
