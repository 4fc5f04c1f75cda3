"""The reference code of OG-MARL (`ManuelWendl/OG-MARL`) run at Parley's bench budget, and its
evaluations set beside Parley's OG-MARL runs.

    # once, outside the project: the reference at the commit compared, in a venv of its own
    git clone https://github.com/ManuelWendl/OG-MARL REF/src && git -C REF/src checkout dc6f4a7
    python -m venv REF/venv && REF/venv/bin/pip install "torch>=2.4,<2.14" numpy matplotlib

    # one run per seed, with the reference's own interpreter (this file needs only the stdlib there)
    OMP_NUM_THREADS=1 REF/venv/bin/python bench/og_marl_reference.py run --src REF/src --seed 0 \
        --steps 1600 --out REF/runs > REF/runs/seed0.log

    # the table: the reference's logs against a bench/og_marl.py summary (its og_marl runs)
    python bench/og_marl_reference.py analyse REF/runs/seed*.log --saved docs/results/data/og_marl_c0_pairs10.json \
        [--plot FILE.png] [--json]

`run` calls the reference's unchanged `odmar.main(seed)` with three things set from outside:
`odmar.MAX_TRAINING_STEPS` (odmar.py line 22 has 10,000; Parley's bench runs 1,600), one torch
thread (as Parley's agents), and matplotlib's file-only backend (the reference plots at every
evaluation). Every line it prints is prefixed with the UTC time. Everything else is the
reference's: 5,000 random steps (`data_collection_steps`, odmar.py line 617), c = 0.01, one real
row per batch, 10 updates per step, the action penalty, evaluation every 200 training steps on 5
episodes (`EVAL_INTERVAL`) of the training env itself. The run's files go to `<out>/seed<N>`.

`analyse` reads the evaluations from the logs ("Step N: Eval reward = X") and computes, for the
reference and for the `og_marl` runs of the saved summary, the bench's three scores on the
evaluation points both have: training steps 200, 400, ..., budget (the reference does not
evaluate at step 0, Parley's bench does; Parley's area is recomputed without it). The last-5 mean
and steps to 400 are the bench's own definitions. The two are not paired (different code and
random streams): per side mean and 95 % t-interval, and the difference of means with Welch's
95 % interval.
"""

from __future__ import annotations

import argparse
import builtins
import datetime
import json
import math
import os
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
EVALUATION_LINE = re.compile(r"Step (\d+): Eval reward = (-?[\d.]+(?:e-?\d+)?)")
THRESHOLD = 400.0
LAST_EVALUATIONS = 5


def run(src: Path, seed: int, steps: int, out: Path) -> None:
    """The reference's `odmar.main(seed)` at `steps` training steps, in `out/seed<seed>`."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(src.resolve()))
    run_dir = out.resolve() / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)  # the reference writes results/ under the working directory
    plain_print = builtins.print

    def stamped_print(*args, **kwargs):
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
        plain_print(now, *args, **kwargs, flush=True)

    builtins.print = stamped_print
    import odmar

    odmar.MAX_TRAINING_STEPS = steps  # read by odmar.main when it calls train()
    odmar.main(seed)


def evaluations(log: Path) -> list[tuple[int, float]]:
    """(training step, evaluation return) from a reference run's log, in order."""
    curve = [(int(step), float(value)) for step, value in EVALUATION_LINE.findall(log.read_text())]
    if not curve:
        raise ValueError(f"{log}: no evaluation lines ('Step N: Eval reward = X'); did the run reach step 200?")
    return curve


def bench_og_marl():
    """bench/og_marl.py as a module: its scores and statistics are the ones used here too."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import og_marl

    return og_marl


def scores(curve: list[tuple[int, float]]) -> dict:
    """The bench's scores (bench/og_marl.py) on the points from step 200 on."""
    bench = bench_og_marl()
    points = [(step, value) for step, value in curve if step >= 200]
    return {
        "last_step": points[-1][0],
        "last5_mean": sum(value for _, value in points[-LAST_EVALUATIONS:]) / min(LAST_EVALUATIONS, len(points)),
        "area_from_200": bench.area_under_curve(points),
        "steps_to_threshold": bench.steps_to_threshold(points, THRESHOLD),
        "curve": points,
    }


def welch(first: list[float], second: list[float]) -> dict:
    """mean(first) - mean(second) with Welch's 95 % interval."""
    from scipy import stats

    a, b = bench_og_marl().summarize(first), bench_og_marl().summarize(second)
    difference = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return {"difference": difference}
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    return {"difference": difference, "ci95": [difference - half, difference + half], "df": df}


def analyse(logs: list[Path], saved: Path, budget: int) -> dict:
    summary = json.loads(saved.read_text())
    reference = {}
    for log in logs:
        seed = int(re.search(r"(\d+)", log.stem).group(1))
        reference[seed] = scores(evaluations(log))
    parley = {record["seed"]: scores([tuple(point) for point in record["curve"]])
              for record in summary["runs"] if record["variant"] == "og_marl" and not record.get("failures")}
    unfinished = {seed: s["last_step"] for seed, s in reference.items() if s["last_step"] < budget}
    result = {"budget": budget, "saved": str(saved), "unfinished_reference_runs": unfinished, "scores": {}}
    for name, key in (("last-5 mean", "last5_mean"), ("area, steps 200 on", "area_from_200")):
        ref_values = [s[key] for seed, s in sorted(reference.items()) if seed not in unfinished]
        parley_values = [s[key] for _, s in sorted(parley.items())]
        result["scores"][name] = {
            "reference": bench_og_marl().summarize(ref_values),
            "reference_per_seed": {seed: round(s[key], 1) for seed, s in sorted(reference.items())},
            "parley": bench_og_marl().summarize(parley_values),
            "reference_minus_parley": welch(ref_values, parley_values) if ref_values else {},
        }
    result["reached_400"] = {
        "reference": {seed: s["steps_to_threshold"] for seed, s in sorted(reference.items())},
        "parley": {seed: s["steps_to_threshold"] for seed, s in sorted(parley.items())},
    }
    result["reference_curves"] = {seed: s["curve"] for seed, s in sorted(reference.items())}
    result["parley_curves"] = {seed: s["curve"] for seed, s in sorted(parley.items())}
    return result


def plot(result: dict, path: Path) -> None:
    """Each reference run's evaluations, and Parley's mean with its 95 % t-band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    curves = list(result["parley_curves"].values())
    steps, mean, half = bench_og_marl().pooled_curve(curves)
    axis.plot(steps, mean, color="tab:blue", label=f"Parley OG-MARL, mean of {len(curves)} seeds")
    axis.fill_between(steps, mean - half, mean + half, color="tab:blue", alpha=0.2)
    for seed, curve in result["reference_curves"].items():
        axis.plot(*zip(*curve), color="tab:orange", alpha=0.8, linestyle="--", marker=".",
                  label="reference code (odmar.py), one run per seed" if seed == min(result["reference_curves"]) else None)
    axis.axhline(THRESHOLD, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xlabel("training step (after 5,000 random steps)")
    axis.set_ylabel("evaluation return (5 episodes)")
    axis.set_title("OG-MARL: the reference code against Parley, same budget")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def print_table(result: dict) -> None:
    def span(entry: dict) -> str:
        if entry.get("n", 0) == 0:
            return "-"
        ci = entry.get("ci95")
        return f"{entry['mean']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "") + f" (n={entry['n']})"

    print(f"OG-MARL, reference code against Parley, {result['budget']} training steps; evaluations from step 200")
    if result["unfinished_reference_runs"]:
        print(f"  reference runs that stopped early (left out of the statistics): {result['unfinished_reference_runs']}")
    for name, entry in result["scores"].items():
        difference = entry["reference_minus_parley"]
        ci = difference.get("ci95")
        print(f"{name:<20} reference {span(entry['reference']):<32} Parley {span(entry['parley']):<32} "
              f"reference - Parley {difference.get('difference', float('nan')):.1f}"
              + (f" [{ci[0]:.1f}, {ci[1]:.1f}] (Welch)" if ci else ""))
        print(f"{'':<20} reference per seed {entry['reference_per_seed']}")
    print(f"first step at >= {THRESHOLD:.0f}: reference {result['reached_400']['reference']}, Parley {result['reached_400']['parley']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="one reference run (with the reference's venv)")
    run_parser.add_argument("--src", type=Path, required=True, help="the reference's checkout (odmar.py, env.py)")
    run_parser.add_argument("--seed", type=int, required=True)
    run_parser.add_argument("--steps", type=int, default=1600, help="training steps after the random phase")
    run_parser.add_argument("--out", type=Path, required=True)
    analyse_parser = commands.add_parser("analyse", help="the reference's logs against a bench/og_marl.py summary")
    analyse_parser.add_argument("logs", type=Path, nargs="+", help="one log per seed, the seed the first number of its name")
    analyse_parser.add_argument("--saved", type=Path, required=True, help="a bench/og_marl.py summary with og_marl runs")
    analyse_parser.add_argument("--budget", type=int, default=1600, help="the training steps every run should reach")
    analyse_parser.add_argument("--plot", type=Path, default=None, help="write the curves to this PNG")
    analyse_parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "run":
        if not (args.src / "odmar.py").is_file():
            parser.error(f"--src {args.src}: expected the reference's checkout with odmar.py in it")
        run(args.src, args.seed, args.steps, args.out)
        return 0
    result = analyse(args.logs, args.saved, args.budget)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
