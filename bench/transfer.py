"""Agent-count transfer on pursuit: trained with 2 pursuers, run zero-shot with 4, against trained
with 4 (ALGORITHMS.md section 5), through full Parley runs.

    python bench/transfer.py [--seeds 0,1,2,3,4] [--steps 20000] [--last-evals 2] [--eval-episodes 16]
                             [--grid N] [--root DIR] [--reuse] [--json] [--plot PNG]

Per seed, one `orchestrate up` of configs/transfer_pursuit.yaml after the other (they would
compete for the cores):

- `train_2`: 2 pursuers (8 evaders) learn; `train_4`: 4 pursuers (15 evaders) learn;
  `train_mix`: 4 agent nodes, a count of 2 or 4 pursuers drawn per episode (the variable-count
  wrapper; in a 2-pursuer episode agents 2 and 3 sit it out);
- evaluation-only runs, 4 pursuers with learning off, each loading a policy from the final
  checkpoints of a training run: `zero_shot_2` and `zero_shot_mix` (the shared policy of
  `train_2` / `train_mix`), `trained_4` (the shared policy of `train_4`), and `untrained_4`,
  freshly initialized networks: what a policy that learned nothing scores here.

Which policy a training run leaves: every agent trains its own copy of the shared network, and
the copies are averaged every 500 steps; in between they drift apart. The shared policy a run
leaves is the average of its agents' final copies (`agent_node/consensus/shared_policy.py`), and that is
what the zero-shot runs and `trained_4` load for every pursuer, so the transfer compares one
shared network with one shared network. The config averages once more when the budget is spent
(`consensus.average_at_end`), so that the final copies agree and their average is each of them;
runs made before it had that (2026-11-24) ended 500 steps after their last average, and the
average of their copies is what one more consensus round would have made. Beside them, to show
what the drift costs: `trained_4_team` (each agent its own final copy, `agents.load_checkpoints`:
the team as it ended) and the `_agent_0` runs (agent_0's copy acting for every pursuer; what
this bench loaded before, docs/results/transfer.md).

A training run is scored by the mean of its last `--last-evals` greedy evaluations (4 episodes
each, the config's; `eval/return_mean`, the mean over pursuers of the episode return), on 4
pursuers except `train_2` (2) and `train_mix` (2 or 4 per episode); those scores are shown for
reference. The transfer is read on the evaluation-only runs, each scored by one evaluation of
`--eval-episodes` episodes after its first step, all from the same evaluation seed within a
seed: the zero-shot policies are compared with `trained_4`, the policy trained with 4 evaluated
the same way, not with its training run's last few 4-episode evaluations. (A fixed policy
evaluated again from the same seed would only repeat the first evaluation.) Pursuit's returns
are negative while little is caught (an urgency penalty every step), so a ratio of raw returns
can mislead; the table gives both `zero-shot / trained_4` of the raw returns and the normalized
score `(zero-shot - untrained_4) / (trained_4 - untrained_4)`, the part of what training with 4
gained that the transferred policy keeps. The targets (>= 0.6x from 2 pursuers, >= 0.9x from the
mix) are read on the normalized score; the same score against `trained_4_team` is shown beside it.

`--reuse` scores the runs an earlier invocation with the same `--root` finished instead of running
them again (and reruns what it left unfinished); a finished run made with other settings is
refused.

`--grid N` plays every run on an N x N grid instead of pursuit's 16 x 16 (the reference's, and
the default here). At 16 x 16 a random team catches almost nothing in 100 cycles, and 20,000
steps x 4 copies of shared DQN learn nothing there (docs/guide/ctde.md, agent-count transfer); on 8 x 8 catches are frequent enough to learn from at this budget. A figure taken with
`--grid` is not the reference's setting and is labelled with its grid.

A run that exits non-zero or evaluates nothing is reported as failed and left out; the script
then exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import mean_std, plot_evaluations, run_and_score  # noqa: E402  (the shared run helpers)

from agent_node.consensus.shared_policy import average_policy_checkpoints  # noqa: E402  (runs.py put the repository on sys.path)

CONFIG = "configs/transfer_pursuit.yaml"
FOUR = ["agents.count=4", "env.kwargs.counts=[4]", "env.kwargs.per_count_kwargs={4: {n_evaders: 15}}"]
MIX = ["agents.count=4", "env.kwargs.counts=[2, 4]", "env.kwargs.per_count_kwargs={2: {n_evaders: 8}, 4: {n_evaders: 15}}"]
TRAINED = {"train_2": [], "train_4": FOUR, "train_mix": MIX}
# The runs not scored on 4 pursuers, as the table and the plot label them.
OTHER_COUNTS = {"train_2": " (2 pursuers)", "train_mix": " (2 or 4)"}
# Which final checkpoints of a training run an evaluation-only run loads: the average of the agents'
# copies (the shared policy), each agent its own copy, or agent_0's copy for every agent.
AVERAGE, OWN, AGENT_0 = "average", "own", "agent_0"
# Evaluation-only runs (learning off, one step, then one evaluation of --eval-episodes episodes on 4
# pursuers) -> (the training run, which of its checkpoints), or (None, None): untrained.
EVALUATION_ONLY = {
    "zero_shot_2": ("train_2", AVERAGE),
    "zero_shot_mix": ("train_mix", AVERAGE),
    "trained_4": ("train_4", AVERAGE),
    "untrained_4": (None, None),
    "trained_4_team": ("train_4", OWN),
    "zero_shot_2_agent_0": ("train_2", AGENT_0),
    "zero_shot_mix_agent_0": ("train_mix", AGENT_0),
    "trained_4_agent_0": ("train_4", AGENT_0),
}

# The evaluation-only runs the plot draws as levels (the others are in the table).
PLOTTED_LEVELS = ("zero_shot_2", "zero_shot_mix", "trained_4", "untrained_4", "trained_4_team")


def checkpoint_of(run_dir: Path, agent: int = 0) -> Path:
    return run_dir / "nodes" / f"agent_{agent}" / "checkpoints" / "latest.pt"


def agent_count(run_dir: Path) -> int:
    return len(list((run_dir / "nodes").glob("agent_*")))


def final_checkpoints(run_dir: Path) -> list[Path] | None:
    """Every agent node's final checkpoint in `run_dir`, agent_0 first; None if one is missing."""
    checkpoints = [checkpoint_of(run_dir, i) for i in range(agent_count(run_dir))]
    return checkpoints if checkpoints and all(path.exists() for path in checkpoints) else None


def own_checkpoints(run_dir: Path) -> Path | None:
    """A directory in `run_dir` laid out as `agents.load_checkpoints` reads it (<env agent>/latest.pt),
    linking each pursuer to the final checkpoint of the agent node that drove it (agent_i drives
    pursuer_i: the nodes claim env agents by index); None if a checkpoint is missing."""
    checkpoints = final_checkpoints(run_dir)
    if checkpoints is None:
        return None
    directory = run_dir / "final_checkpoints"
    for i, checkpoint in enumerate(checkpoints):
        link = directory / f"pursuer_{i}" / "latest.pt"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(checkpoint.resolve())
    return directory


def averaged_checkpoint(run_dir: Path) -> Path | None:
    """`run_dir/shared_policy.pt`, the average of its agents' final copies (written once); None if
    a checkpoint is missing."""
    checkpoints = final_checkpoints(run_dir)
    if checkpoints is None:
        return None
    path = run_dir / "shared_policy.pt"
    if not path.exists():
        average_policy_checkpoints(checkpoints, path)
    return path


def policy_setting(which: str, source_dir: Path) -> str | None:
    """The override that gives an evaluation-only run `which` policy (AVERAGE, OWN, AGENT_0) of the
    training run in `source_dir`; None if the checkpoints it needs are missing."""
    if which == OWN:
        directory = own_checkpoints(source_dir)
        return None if directory is None else f"agents.load_checkpoints={directory}"
    checkpoint = averaged_checkpoint(source_dir) if which == AVERAGE else checkpoint_of(source_dir)
    return f"agents.load_shared_checkpoint={checkpoint}" if checkpoint is not None and checkpoint.exists() else None


def run_seed(seed: int, args, root: Path) -> dict[str, dict]:
    results: dict[str, dict] = {}
    grid = [f"env.kwargs.base_kwargs.x_size={args.grid}", f"env.kwargs.base_kwargs.y_size={args.grid}"] if args.grid else []
    every_run = [f"run.seed={seed}", "launch.live_view=off", *grid]
    for name, overrides in TRAINED.items():
        run_dir = root / f"{name}_seed{seed}"
        overrides = [*every_run, f"env.eval_every_steps={args.eval_every}", f"run.steps={args.steps}", *overrides]
        results[name] = run_and_score(CONFIG, overrides, run_dir, args.timeout, args.last_evals, reuse=args.reuse)
        print(f"seed {seed} {name}: {results[name]['score']} ({results[name]['wall_s']} s)", file=sys.stderr)
    for name, (source, which) in EVALUATION_ONLY.items():
        run_dir = root / f"{name}_seed{seed}"
        overrides = [*every_run, "run.steps=1", "env.eval_every_steps=1", f"env.eval_episodes={args.eval_episodes}",
                     *FOUR, "agents.learning=false"]
        if source is not None:
            setting = None if results[source]["failed"] else policy_setting(which, Path(results[source]["run_dir"]))
            if setting is None:
                results[name] = {"failed": True, "score": None, "stderr_tail": f"{source} left no checkpoint"}
                continue
            overrides.append(setting)
        results[name] = run_and_score(CONFIG, overrides, run_dir, args.timeout, last_evals=1, reuse=args.reuse)
        print(f"seed {seed} {name}: {results[name]['score']} ({results[name].get('wall_s')} s)", file=sys.stderr)
    return results


RATIOS = ("zero_shot_2/raw", "zero_shot_2/normalized", "zero_shot_2/normalized_vs_team",
          "zero_shot_mix/raw", "zero_shot_mix/normalized", "zero_shot_mix/normalized_vs_team")


def ratios(result: dict[str, dict]) -> dict[str, float]:
    """One seed's transfer ratios (RATIOS): raw and normalized against `trained_4`, normalized
    against `trained_4_team` (NaN where a run it needs failed)."""
    score = {name: (r["score"] if not r["failed"] else math.nan) for name, r in result.items()}
    out = {}
    for name in ("zero_shot_2", "zero_shot_mix"):
        trained, untrained, zero_shot = score["trained_4"], score["untrained_4"], score[name]
        out[f"{name}/raw"] = zero_shot / trained if trained and not math.isnan(trained) else math.nan
        for suffix, reference in (("", "trained_4"), ("_vs_team", "trained_4_team")):
            gained = score[reference] - untrained
            out[f"{name}/normalized{suffix}"] = (zero_shot - untrained) / gained if gained and not math.isnan(gained) else math.nan
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=20000, help="lockstep steps per training run (x4 env copies)")
    parser.add_argument("--eval-every", type=int, default=2500, help="env.eval_every_steps")
    parser.add_argument("--last-evals", type=int, default=2, help="a training run's score: the mean of its last N evaluations")
    parser.add_argument("--eval-episodes", type=int, default=16, help="episodes of an evaluation-only run's one evaluation")
    parser.add_argument("--grid", type=int, default=None,
                        help="play on an N x N grid (default: pursuit's 16 x 16, the reference's); see the module doc")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--root", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="score the runs an earlier invocation with this --root finished")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="also draw the evaluation curves (mean and 95%% CI over seeds) into this PNG")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.root or Path(tempfile.mkdtemp(prefix="parley-transfer-"))
    grid_label = f"{args.grid}x{args.grid}" if args.grid else "16x16"
    per_seed = {seed: run_seed(seed, args, root) for seed in seeds}
    per_ratio = {seed: ratios(result) for seed, result in per_seed.items()}
    failed = [(seed, name, r.get("stderr_tail", "")) for seed, result in per_seed.items() for name, r in result.items() if r["failed"]]

    summary = {}
    for name in [*TRAINED, *EVALUATION_ONLY]:
        values = [per_seed[s][name]["score"] for s in seeds if not per_seed[s][name]["failed"]]
        summary[name] = mean_std(values) + (values,)
    for key in RATIOS:
        values = [per_ratio[s][key] for s in seeds if not math.isnan(per_ratio[s][key])]
        summary[key] = mean_std(values) + (values,)

    if args.plot:
        def run_dirs(name: str) -> list[Path]:
            return [Path(per_seed[s][name]["run_dir"]) for s in seeds if not per_seed[s][name]["failed"]]
        # Training runs are curves; the zero-shot and untrained runs do not learn (a level each).
        plot_evaluations({name + OTHER_COUNTS.get(name, ""): run_dirs(name) for name in TRAINED}, args.plot,
                         f"pursuit_v5 {grid_label}, shared DQN, {args.steps} steps x 4 copies, {len(seeds)} seeds, 95% CI\n"
                         "(4 pursuers unless noted; dashed: evaluation-only runs)",
                         levels={name: run_dirs(name) for name in PLOTTED_LEVELS}, last_evals=1)
    if args.json:
        print(json.dumps({"seeds": seeds, "steps": args.steps, "grid": grid_label, "root": str(root), "runs": per_seed, "ratios": per_ratio,
                          "summary": {k: {"mean": m, "std": s, "values": v} for k, (m, s, v) in summary.items()}}, default=str))
    else:
        print(f"pursuit_v5 {grid_label}, shared DQN, {args.steps} training steps x 4 copies, seeds {seeds}, "
              f"score = mean of the last {args.last_evals} greedy evaluations of a training run, one of "
              f"{args.eval_episodes} episodes of an evaluation-only run (4 pursuers unless noted)")
        print(f"{'run / ratio':<26} {'mean':>9} {'std':>8}  per seed")
        for key, (mean, std, values) in summary.items():
            label = key + OTHER_COUNTS.get(key, "")
            print(f"{label:<26} {mean:>9.3f} {std:>8.3f}  " + ", ".join(f"{v:.3f}" for v in values))
        print("targets (normalized): zero_shot_2 >= 0.6, zero_shot_mix >= 0.9")
        trained, untrained = summary["trained_4"][0], summary["untrained_4"][0]
        if not trained > untrained + 0.1 * abs(untrained):
            print("warning: trained_4 is within 10% of untrained_4: nothing was learned at this budget, "
                  "so the normalized ratios divide by noise")
        print(f"runs in {root}")
    for seed, name, tail in failed:
        print(f"FAILED seed {seed} {name}: {tail[-500:]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
