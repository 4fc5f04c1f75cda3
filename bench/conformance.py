"""Consensus conformance sheet: the real engines against the theory (protocols/sim/conformance.py).

Three tables:

1. Synchronous rounds (`SyncConsensus`, Metropolis weights, ideal network in lockstep waves) from
   seeded random values: the measured per-round contraction of the disagreement (geometric mean
   over the second half of the rounds run) against `|lambda_2(W)|`, per topology and size.
   `ratio` = measured / |lambda_2| (the sheet's check: within +-10%); `rate` = ln(measured) /
   ln|lambda_2| (1 when the convergence rates agree; above 1 when the random start still had
   weight off the slowest mode after the rounds run, as on large rings).
2. The one-peer hypercube schedule (node i with i XOR 2^k in round k): disagreement after
   log2(n) - 1 and log2(n) rounds; exact (<= 1e-12) in log2(n) rounds.
3. Push-sum's weight mass with 30% loss (and Pareto delays) on every link: the largest
   |total weight - n| / n over probes every 10 push periods (held weight plus weight in flight).

    python bench/conformance.py                       # sizes 16,64,256,1024
    python bench/conformance.py --sizes 16,64 --markdown --plot docs/results/data/consensus_conformance.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from protocols.sim.conformance import contraction, one_peer_schedule, push_sum_weight_drift  # noqa: E402
from protocols.engines.topology import exponential, grid, random_regular, ring, small_world  # noqa: E402

TOPOLOGIES = ("ring", "torus", "random_regular", "exponential", "small_world")


def build(name: str, n: int, seed: int):
    if name == "torus":
        side = math.isqrt(n)
        if side * side != n:
            return None  # a square torus only
        return grid(side, side, torus=True)
    return {
        "ring": lambda: ring(n),
        "random_regular": lambda: random_regular(n, 4, seed),
        "exponential": lambda: exponential(n),
        "small_world": lambda: small_world(n, 4, 0.2, seed),
    }[name]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64,256,1024")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES), help="for the contraction table")
    parser.add_argument("--rounds", type=int, default=150, help="most synchronous rounds per contraction measurement")
    parser.add_argument("--loss", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print markdown tables (for docs/)")
    parser.add_argument("--plot", default=None, help="write measured contraction against |lambda_2| to this PNG")
    args = parser.parse_args(argv)
    sizes = [int(value) for value in args.sizes.split(",")]
    md = args.markdown
    started = time.perf_counter()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, cpus {os.cpu_count()}\n")

    failures = 0
    rows = []
    print("| agents | topology | degree | abs(lambda_2) | measured | ratio | rate | rounds | within 10% |" if md else
          f"{'agents':>6} {'topology':<15} {'degree':>6} {'|l2|':>9} {'measured':>9} {'ratio':>7} {'rate':>6} {'rounds':>6} {'ok':>3}")
    if md:
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for n in sizes:
        for name in args.topologies.split(","):
            if name not in TOPOLOGIES:
                raise SystemExit(f"--topologies: expected some of {', '.join(TOPOLOGIES)}, got {name!r}")
            topology = build(name, n, args.seed)
            if topology is None:
                continue
            result = contraction(topology, args.rounds, seed=args.seed)
            ok = abs(result.ratio - 1.0) <= 0.10
            failures += not ok
            degree = 2 * len(topology.edges) / n
            rows.append((n, name, result))
            if md:
                print(f"| {n} | {name} | {degree:.1f} | {result.lambda_2:.6f} | {result.measured:.6f} | {result.ratio:.4f} | "
                      f"{result.rate_ratio:.3f} | {result.rounds_used} | {'yes' if ok else 'NO'} |")
            else:
                print(f"{n:>6} {name:<15} {degree:>6.1f} {result.lambda_2:>9.6f} {result.measured:>9.6f} {result.ratio:>7.4f} "
                      f"{result.rate_ratio:>6.3f} {result.rounds_used:>6} {'yes' if ok else 'NO':>3}")
            sys.stdout.flush()

    print()
    print("| agents | rounds (log2 n) | disagreement after log2 n - 1 | after log2 n | exact after |" if md else
          f"{'agents':>6} {'log2 n':>6} {'after log2n-1':>14} {'after log2n':>12} {'exact after':>11}")
    if md:
        print("| ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        if n & (n - 1):
            continue
        run = one_peer_schedule(n, seed=args.seed)
        failures += run.exact_after != run.rounds
        if md:
            print(f"| {n} | {run.rounds} | {run.disagreement[-2]:.3g} | {run.disagreement[-1]:.3g} | {run.exact_after} |")
        else:
            print(f"{n:>6} {run.rounds:>6} {run.disagreement[-2]:>14.3g} {run.disagreement[-1]:>12.3g} {run.exact_after!s:>11}")

    print()
    print(f"| agents | topology | loss | max abs(weight - n) / n | within 1e-12 |" if md else
          f"{'agents':>6} {'topology':<15} {'loss':>5} {'max |w-n|/n':>12} {'ok':>3}")
    if md:
        print("| ---: | --- | ---: | ---: | --- |")
    for n in sizes:
        for name in ("ring", "exponential"):
            drift = push_sum_weight_drift(build(name, n, args.seed), name, loss=args.loss, periods=60, seed=args.seed)
            ok = drift <= 1e-12
            failures += not ok
            if md:
                print(f"| {n} | {name} | {args.loss:g} | {drift:.2e} | {'yes' if ok else 'NO'} |")
            else:
                print(f"{n:>6} {name:<15} {args.loss:>5g} {drift:>12.2e} {'yes' if ok else 'NO':>3}")
            sys.stdout.flush()

    print(f"\n{time.perf_counter() - started:.0f} s wall, {time.process_time():.0f} s CPU; "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.plot:
        _plot(rows, args.plot)
    return 1 if failures else 0


def _plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    markers = dict(zip(TOPOLOGIES, "osD^v"))
    for name in TOPOLOGIES:
        points = [(result.lambda_2, result.measured, n) for n, topology, result in rows if topology == name]
        if points:
            axis.scatter([p[0] for p in points], [p[1] for p in points], marker=markers[name], label=name)
    axis.plot([0, 1], [0, 1], color="black", linewidth=0.8, label="measured = |lambda_2|")
    axis.fill_between([0, 1], [0, 0.9], [0, 1.1], color="grey", alpha=0.2, label="+-10%")
    axis.set_xlim(0.3, 1.0)
    axis.set_ylim(0.3, 1.0)
    axis.set_xlabel("|lambda_2(W)|, Metropolis weights")
    axis.set_ylabel("measured contraction per synchronous round")
    sizes = sorted({n for n, _, _ in rows})
    axis.set_title(f"SyncConsensus against the spectrum ({sizes[0]}-{sizes[-1]} agents)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
