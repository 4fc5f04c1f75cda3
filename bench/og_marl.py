"""OG-MARL and its ablations against independent SAC on reward collection, through full Parley runs.

    python bench/og_marl.py [--variants og_marl,sac,...] [--seeds 0,1,2,3,4] [--steps 2400]
                            [--random-steps 5000] [--penalty 1.0] [--root DIR] [--jobs 1] [--json]
    python bench/og_marl.py --analyse DIR [DIR ...] [--saved SUMMARY ...] [--out DIR] [--json]
                                                     (tables and plots of finished runs; --saved
                                                     pools the runs a summary.json recorded)
    python bench/og_marl.py --calibrate-optimism [--seeds 0,1,2,3,4]

Each (variant, seed) is one `orchestrate up` of the variant's config with the budget set from the
flags, run one after the other so they do not compete for the cores (`--jobs N` runs N at once, seed
by seed, on a machine with the cores for it; the runs' results do not change, their seconds per
1,000 steps do), with `run.reproducible`
(`--no-reproducible` turns it off; push-sum and lossy links are refused by it and always run
without), so that a seed fixes the run and the same seed pairs two variants exactly. The env
server evaluates every 200 lockstep steps from the end of the random phase, 5 greedy episodes
each (one start: the task's reset is fixed and ignores the seed, its dynamics and the greedy
policies are deterministic, so the 5 are the same episode). Per run: the mean of its last 5 evaluations, the area under its evaluation curve (the
curve's mean return over the training steps, trapezoid rule) and the first training step at
which an evaluation reached 400. Every table and figure names the action-penalty weight
(`--penalty`, 1.0 is the reference's `env.py` line 144; 0 switches the penalty off).

Variants (`VARIANTS` below): og_marl (the shipped config: the reference's kernel on raw inputs and
its bonus at c = 0.01, refits drawn uniformly, one real row per batch), og_marl_previous (the
setting shipped before the reference-matching rework), og_marl_epistemic (epistemic variance, c
calibrated to the same mean bonus), og_marl_c0, og_marl_local (each agent its own GP, no consensus), og_marl_centralized
(exact average in one round), og_marl_push_sum, og_marl_terminal (the time limit terminal as the
reference's), og_marl_lossy (every agent <-> agent link 200 ms late and 30 % lossy, rounds waiting
up to 1 s; its rounds with a missing share are counted, not a failure), sac (1 update per step),
sac_utd10 (10 updates per step, OG-MARL's ratio), sac_utd10_own_reward (sac_utd10 with each real row
carrying the agent's own term of the team reward, as OG-MARL's imagined rows do: the
credit-assignment control) and sac_terminal. The regimes (`REGIMES`) copy
some of them with a suffix: `_explore` (1,000 random steps instead of 5,000), `_scarce` (32
transitions per refit instead of 256), `_equal_eta` (every agent's gain 1), `_drift` (a shared,
position-dependent drift field in the dynamics, `env.kwargs.drift_amplitude=0.5`, so that an
agent's own rows do not pin its dynamics: og_marl_drift against og_marl_local_drift is the test
of sharing the world model) and `_drift_scarce` (the drift and 32 transitions per refit).

Paired comparisons (`DEFAULT_COMPARISONS` of the variants that ran, or `--compare A:B,...`), first
minus second over the seeds where both passed, for each of the three scores: mean and SD of the
differences, 95 % t-interval, two-sided p, and the minimum detectable effect at 80 % power
(two-sided 0.05, exact noncentral t) from that SD, i.e. the smallest true difference these seeds
would likely have shown.

A run FAILS (reported, and the script exits non-zero) when
- it crashed or timed out, or (with `--analyse`) its run directory has no `run_finished` event
  with exit code 0 (a run still going, or killed: its evaluations so far are not a result);
- an agent's update-ratio contract is broken: at its last counters, `sac/steps_pending` exceeds
  `--max-pending-fraction` (1 %) of `sac/steps_owed` (the node logs `learner.counters()`, cumulative,
  at every evaluation and when it stops); a run without counters fails too, since the work done
  cannot be checked;
- any agent logged `consensus/missing_neighbours` > 0 (its average was not the one claimed), except
  in a lossy-link variant, where those rounds are the experiment and are reported instead.
A failed run's score is shown but not pooled into the variant's statistics.

Statistics over seeds: mean, sample std (ddof = 1), 95 % t-interval (scipy.stats; scipy comes with
gpytorch) and every seed's value. Seconds per 1,000 training steps: wall time between the evaluation
that ends the random phase and the last one, less the evaluations' own time, over the training
steps between them; it counts only for runs whose contract holds (equal work: every owed update
done), and the table shows the gradient steps each agent took in that window beside it.

Per refresh (OG-MARL variants): the GP's held-out one-step error (`og_marl/model_mse`, mean over
agents) and each agent's relative distance to the exact average of the agents' statistics,
estimated from the consensus probes (`agent_node/algos/og_marl.py`, `probe_distances`).

Plots (PNG, under `<root>/plots`): learning curves (mean and 95 % CI over seeds), the GP error per
refresh and the consensus distance per refresh.

`--calibrate-optimism` measures, in-process and without the orchestrator, the ratio of the mean
sqrt(reference variance) to the mean sqrt(epistemic variance) over the imagined rows of the first
model refresh (5 agents, 5,000 random steps, the shipped GP, exact average), per seed, and prints
c_epistemic = 0.01 * that ratio: the epistemic c whose mean bonus equals the reference form's at
c = 0.01 at that refresh. It also reports the reference form under the raw-input kernel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import field_protocol, improvement, minimum_detectable_effect  # noqa: E402  (bench/intervals.py)
from runs import run_record  # noqa: E402  (bench/runs.py: which runs may be scored, and their records)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from orchestrator.rundir import read_jsonl  # noqa: E402

EVAL_EVERY = 200
LAST_EVALUATIONS = 5


@dataclass(frozen=True)
class Variant:
    config: str
    learner: str  # "og_marl" | "sac": where the learner's keys live in overrides
    overrides: tuple[str, ...] = ()
    label: str = ""
    # Lossy peer links drop consensus shares by design: rounds with a missing neighbour are then
    # counted and reported, not a failure of the run.
    lossy_links: bool = False
    # The random phase of this variant (None: `--random-steps`); the exploration-hard regime
    # shortens it.
    random_steps: int | None = None
    # run.reproducible refuses push-sum and links that drop messages (timing would decide them):
    # such variants run without it, and say so in their row.
    reproducible: bool = True


VARIANTS: dict[str, Variant] = {
    "og_marl": Variant("configs/og_marl_ring5.yaml", "og_marl", label="OG-MARL (reference variance, c=0.01)"),
    "og_marl_epistemic": Variant(
        "configs/og_marl_ring5_epistemic.yaml", "og_marl", label="OG-MARL (epistemic variance, calibrated c)"
    ),
    # The setting shipped before the reference-matching rework, for continuity with the rows measured then: the
    # box-scaled kernel without the constant (a near-constant bonus of 0.012-0.015), refits on
    # the newest 320 rows, no real row per batch.
    "og_marl_previous": Variant(
        "configs/og_marl_ring5.yaml",
        "og_marl",
        (
            "agents.world_model.input_scaling=box",
            "agents.world_model.linear_constant=0.0",
            "agents.learner.fit_sampling=latest",
            "agents.learner.real_ratio=0.0",
        ),
        label="OG-MARL as shipped before the reference-matching rework (box kernel, newest rows, no real row)",
    ),
    "og_marl_c0": Variant("configs/og_marl_ring5_no_optimism.yaml", "og_marl", label="OG-MARL c=0"),
    "og_marl_local": Variant("configs/og_marl_ring5_local.yaml", "og_marl", label="OG-MARL, local GP only"),
    "og_marl_centralized": Variant("configs/og_marl_centralized5.yaml", "og_marl", label="OG-MARL, centralized GP"),
    # Needs the node's push-sum fix (another branch); the config and this row are ready for it.
    "og_marl_push_sum": Variant(
        "configs/og_marl_ring5_push_sum.yaml", "og_marl", label="OG-MARL, push-sum", reproducible=False
    ),
    # The time limit reaches OG-MARL's critic only through its one real row per batch (the
    # reference's, odmar.py line 917, and the shipped default since the reference-matching rework): bootstrapping
    # through it (the default) or treating it as terminal (the reference's `done = 1`).
    "og_marl_terminal": Variant(
        "configs/og_marl_ring5.yaml",
        "og_marl",
        ("agents.learner.sac.bootstrap_on_truncation=false",),
        label="OG-MARL, time limit terminal",
    ),
    # The fault experiments' lossy setting: every agent <-> agent link (not the env links) delays each message by
    # 200 ms and drops 30 %; a synchronous round then waits up to 1 s (the shipped 10 s is sized to
    # move 6.5 MB shares, which take milliseconds on ipc) and averages over the shares that came.
    "og_marl_lossy": Variant(
        "configs/og_marl_ring5.yaml",
        "og_marl",
        ("network.links=[{role: peer_links, link: {delay_s: 0.2, loss: 0.3}}]", "protocols.consensus.round_timeout_s=1.0"),
        label="OG-MARL, peer links 200 ms and 30 % loss",
        lossy_links=True,
        reproducible=False,
    ),
    "sac": Variant("configs/sac_ring5.yaml", "sac", label="SAC"),
    # The update-ratio control: SAC on real data with OG-MARL's 10 gradient steps per env step, so
    # OG-MARL against it measures the model, not the extra gradient steps.
    "sac_utd10": Variant("configs/sac_ring5.yaml", "sac", ("agents.learner.updates_per_step=10",), label="SAC, 10 updates per step"),
    # The credit-assignment control: sac_utd10 whose real rows carry each agent's own term of the
    # team reward (`reward: own_contribution`, from the same reward model OG-MARL scores imagined
    # rows with) instead of the team's sum, so OG-MARL against it measures the model alone and
    # this against sac_utd10 the reward term alone.
    "sac_utd10_own_reward": Variant(
        "configs/sac_ring5.yaml",
        "sac",
        ("agents.learner.updates_per_step=10", "agents.learner.reward=own_contribution"),
        label="SAC, 10 updates per step, each agent's own reward term",
    ),
    "sac_terminal": Variant(
        "configs/sac_ring5.yaml", "sac", ("agents.learner.bootstrap_on_truncation=false",), label="SAC, time limit terminal"
    ),
}

# Regimes in which the mechanisms can matter, each a copy of some variants above:
# - `_explore`: exploration made hard, EXPLORE_RANDOM_STEPS random steps instead of 5,000, so the
#   first policies must find the sites themselves (where optimism could pay);
# - `_scarce`: SCARCE_FIT_TRANSITIONS transitions per refit instead of 256, so one agent's data
#   identify its dynamics poorly (where sharing could pay);
# - `_equal_eta`: every agent's gain 1 (`env.kwargs.eta_std=0`), so the other agents' data are
#   about one's own dynamics (where sharing cannot bias the fused model);
# - `_drift`: a shared drift field of amplitude DRIFT_AMPLITUDE added to every move
#   (`env.kwargs.drift_amplitude`, env_server/envs/reward_collection.py), so an agent's dynamics
#   are position-dependent and nonlinear and its own rows no longer pin them: the task in which
#   the fused GP should beat each agent's own. 0.5 is half the largest command, so an agent can
#   still hold any site (that needs a gain above 0.5, five SDs below the gains' mean 1), and it is
#   large next to the GP's one-step error without drift (RMS 0.06 per axis). The default schedule
#   (5,000 random steps, 256 rows per refit) is kept, because the agents' rows already come from
#   different parts of the map: each agent's random walks start at its own point of the circle,
#   and its 256-row refit sample lies within 1.5 of 76 % of the map, the five agents' together of
#   96 % (`bench/og_marl_drift_model.py`, 5 seeds). That check also finds, on an agent's own
#   held-out rows, the fused GP's one-step MSE 0.0084 against the local GP's 0.0127 (smaller for
#   22 of 25 agent-seeds), where without the drift fusing costs (0.0056 against 0.0037: the
#   other agents' gains bias it);
# - `_drift_scarce`: `_drift` with SCARCE_FIT_TRANSITIONS rows per refit, where an agent's own rows
#   cover least (30 % of the map, 78 % together) and the one-step gap is largest (0.029 against
#   0.075 on its own rows, 0.012 against 0.065 near the sites, fused smaller for 25 of 25).
EXPLORE_RANDOM_STEPS = 1000
SCARCE_FIT_TRANSITIONS = 32
DRIFT_AMPLITUDE = 0.5
REGIMES = {
    "explore": ("og_marl", "og_marl_c0", "og_marl_epistemic", "sac_utd10"),
    "scarce": ("og_marl", "og_marl_local", "og_marl_centralized"),
    "equal_eta": ("og_marl", "og_marl_local"),
    "drift": ("og_marl", "og_marl_local"),
    "drift_scarce": ("og_marl", "og_marl_local"),
}


def _regime_variant(regime: str, base: Variant) -> Variant:
    """A copy of `base` with the regime's overrides (or random phase) added and its label extended."""
    random_steps = base.random_steps
    overrides: tuple[str, ...] = ()
    if regime == "explore":
        random_steps, label = EXPLORE_RANDOM_STEPS, f"{EXPLORE_RANDOM_STEPS} random steps"
    elif regime == "scarce":
        overrides, label = (f"agents.learner.fit_transitions={SCARCE_FIT_TRANSITIONS}",), f"{SCARCE_FIT_TRANSITIONS} rows per refit"
    elif regime == "equal_eta":
        overrides, label = ("env.kwargs.eta_std=0.0",), "equal gains"
    elif regime == "drift":
        overrides, label = (f"env.kwargs.drift_amplitude={DRIFT_AMPLITUDE}",), f"drift field {DRIFT_AMPLITUDE}"
    elif regime == "drift_scarce":
        overrides = (f"env.kwargs.drift_amplitude={DRIFT_AMPLITUDE}", f"agents.learner.fit_transitions={SCARCE_FIT_TRANSITIONS}")
        label = f"drift field {DRIFT_AMPLITUDE}, {SCARCE_FIT_TRANSITIONS} rows per refit"
    else:
        raise ValueError(f"unknown regime {regime!r}; expected one of {list(REGIMES)}")
    return Variant(base.config, base.learner, (*base.overrides, *overrides), f"{base.label}, {label}",
                   base.lossy_links, random_steps, base.reproducible)


for _regime, _bases in REGIMES.items():
    for _base in _bases:
        VARIANTS[f"{_base}_{_regime}"] = _regime_variant(_regime, VARIANTS[_base])

# The comparisons printed by default (first minus second, paired by seed), where both ran: each
# isolates one cause.
DEFAULT_COMPARISONS = (
    ("og_marl", "og_marl_c0"),  # the reference's optimism
    ("og_marl_epistemic", "og_marl_c0"),  # an epistemic optimism
    ("og_marl", "og_marl_local"),  # sharing the world model
    ("og_marl", "sac_utd10"),  # the model and the own reward term, at an equal update ratio
    ("og_marl", "sac_utd10_own_reward"),  # the model alone: the same ratio and reward term
    ("sac_utd10_own_reward", "sac_utd10"),  # the own reward term alone
    ("sac_utd10", "sac"),  # the update ratio alone
    ("og_marl", "og_marl_previous"),  # the reference's settings against the earlier ones
    ("og_marl_explore", "og_marl_c0_explore"),
    ("og_marl_epistemic_explore", "og_marl_c0_explore"),
    ("og_marl_explore", "sac_utd10_explore"),
    ("og_marl_scarce", "og_marl_local_scarce"),
    ("og_marl_centralized_scarce", "og_marl_local_scarce"),
    ("og_marl_equal_eta", "og_marl_local_equal_eta"),
    ("og_marl_drift", "og_marl_local_drift"),
    ("og_marl_drift_scarce", "og_marl_local_drift_scarce"),
)
THRESHOLD = 400.0  # "steps to 400": the return of the reference's target (ALGORITHMS.md)


# ---------------------------------------------------------------------------------- reading runs


def agent_dirs(run_dir: Path) -> list[Path]:
    return sorted(path for path in (run_dir / "nodes").glob("agent_*") if path.is_dir())


@dataclass
class RunResult:
    variant: str
    seed: int
    run_dir: str
    last5_mean: float = float("nan")
    curve: list[tuple[int, float]] = field(default_factory=list)  # (training step, eval return)
    area: float = float("nan")  # area under the evaluation curve over its steps (mean return)
    steps_to_threshold: int | None = None  # first evaluation at >= THRESHOLD; None: never
    reproducible: bool | None = None  # whether it ran with run.reproducible (None: not known)
    s_per_1000_train_steps: float = float("nan")
    gradient_steps_in_window: float = float("nan")  # per agent, mean over agents
    pending_fraction: float = float("nan")  # worst agent, at its last counters
    model_mse: list[tuple[int, float]] = field(default_factory=list)  # (training step, mean over agents)
    consensus_distance: list[tuple[int, float, float]] = field(default_factory=list)  # (step, max J, max h)
    failures: list[str] = field(default_factory=list)
    missing_neighbour_rounds: float = float("nan")  # lossy-link variants: consensus rounds with a share missing, mean over agents
    # Which code ran it (the run_started event's `code`: Parley's commit, torch's version, ...);
    # None for runs recorded before runs said so.
    code: dict | None = None
    exit_code: int | None = None  # the orchestrator's (or the process's, when it failed first)
    record: dict | None = None  # bench/runs.py's run_record: exit code, budget, commit, run.reproducible

    @property
    def ok(self) -> bool:
        return not self.failures


def check_update_contract(run_dir: Path, max_pending_fraction: float) -> tuple[float, list[str]]:
    """(worst pending / owed over the agents, failure messages) from each agent's last counters."""
    worst, failures = 0.0, []
    agents = agent_dirs(run_dir)
    if not agents:
        return float("nan"), [f"no agent metrics under {run_dir / 'nodes'}"]
    for agent in agents:
        counters = [record for record in read_jsonl(agent / "metrics.jsonl") if "sac/steps_pending" in record]
        if not counters:
            failures.append(
                f"{agent.name}: no `sac/steps_pending` logged, so the updates done cannot be checked "
                "(the node must write learner.counters() at every evaluation and when it stops)"
            )
            continue
        last = counters[-1]
        pending = last["sac/steps_pending"]
        owed = last.get("sac/steps_owed", last.get("sac/gradient_steps", 0.0) + pending)
        fraction = pending / owed if owed > 0 else 0.0
        worst = max(worst, fraction)
        if fraction > max_pending_fraction:
            failures.append(
                f"{agent.name}: {pending:.0f} of {owed:.0f} owed gradient steps still pending at step "
                f"{last['step']} ({100 * fraction:.2f} % > {100 * max_pending_fraction:.2f} %): updates were skipped"
            )
    return worst, failures


def missing_neighbour_rounds(run_dir: Path) -> dict[str, list[dict]]:
    """Per agent, its metric records of consensus rounds averaged without some neighbour's share."""
    return {agent.name: [r for r in read_jsonl(agent / "metrics.jsonl") if r.get("consensus/missing_neighbours", 0) > 0]
            for agent in agent_dirs(run_dir)}


def check_missing_neighbours(run_dir: Path) -> list[str]:
    failures = []
    for agent, missed in missing_neighbour_rounds(run_dir).items():
        if missed:
            steps = sorted({r["step"] for r in missed})
            failures.append(
                f"{agent}: consensus/missing_neighbours > 0 in {len(missed)} rounds (steps {steps[:5]}"
                f"{' ...' if len(steps) > 5 else ''}): its average is not the exact one"
            )
    return failures


def refresh_series(run_dir: Path, random_steps: int) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    """Per refresh: mean held-out model MSE over agents, and the largest distance to the exact average."""
    from agent_node.algos.og_marl import probe_distances

    by_step: dict[int, dict[str, dict]] = {}
    for agent in agent_dirs(run_dir):
        for record in read_jsonl(agent / "metrics.jsonl"):
            if "og_marl/model_mse" in record:
                by_step.setdefault(record["step"], {})[agent.name] = record
    num_agents = len(agent_dirs(run_dir))
    mse, distance = [], []
    for step in sorted(by_step):
        records = list(by_step[step].values())
        mse.append((step - random_steps, float(np.mean([r["og_marl/model_mse"] for r in records]))))
        complete = len(records) == num_agents and any(k.startswith("og_marl/probe/after/") for k in records[0])
        if complete:
            estimated = probe_distances(records, records)
            distance.append((step - random_steps, max(estimated.get("J", [math.nan])), max(estimated.get("h", [math.nan]))))
    return mse, distance


def analyse_run(variant: str, seed: int, run_dir: Path, random_steps: int, max_pending_fraction: float) -> RunResult:
    result = RunResult(variant, seed, str(run_dir))
    evaluations = [r for r in read_jsonl(run_dir / "nodes" / "env" / "metrics.jsonl") if "eval/return_mean" in r]
    evaluations = [r for r in evaluations if r["step"] >= random_steps]
    if not evaluations:
        result.failures.append(f"no evaluations at or after step {random_steps} in {run_dir}")
        return result
    # A run still going (or killed, or stopped short of its budget) has evaluations too: only a
    # run the shared rule accepts (bench/runs.py, `refusal`) may enter a table.
    record = run_record(run_dir)
    result.code = next((r for r in read_jsonl(run_dir / "events.jsonl") if r.get("event") == "run_started"), {}).get("code")
    result.exit_code, result.record = record["exit_code"], record
    if record["refused"] is not None:
        result.failures.append(f"refused: {record['refused']}")
    result.curve = [(r["step"] - random_steps, float(r["eval/return_mean"])) for r in evaluations]
    result.last5_mean = float(np.mean([r["eval/return_mean"] for r in evaluations[-LAST_EVALUATIONS:]]))
    result.area = area_under_curve(result.curve)
    result.steps_to_threshold = steps_to_threshold(result.curve, THRESHOLD)
    result.reproducible = record["reproducible"]
    start, end = evaluations[0], evaluations[-1]
    trained = end["step"] - start["step"]
    eval_time = sum(r["eval/duration_s"] for r in evaluations if start["step"] < r["step"] <= end["step"])
    if trained > 0:
        result.s_per_1000_train_steps = (end["t"] - start["t"] - eval_time) / trained * 1000

    result.pending_fraction, contract_failures = check_update_contract(run_dir, max_pending_fraction)
    result.failures += contract_failures
    if VARIANTS.get(variant, Variant("", "og_marl")).lossy_links:
        missed = missing_neighbour_rounds(run_dir)
        result.missing_neighbour_rounds = float(np.mean([len(rounds) for rounds in missed.values()])) if missed else 0.0
    else:
        result.failures += check_missing_neighbours(run_dir)
    steps_done = []
    for agent in agent_dirs(run_dir):
        counters = [r for r in read_jsonl(agent / "metrics.jsonl") if "sac/gradient_steps" in r]
        at_start = [r for r in counters if r["step"] <= start["step"]]
        at_end = [r for r in counters if r["step"] <= end["step"]]
        if at_start and at_end:
            steps_done.append(at_end[-1]["sac/gradient_steps"] - at_start[-1]["sac/gradient_steps"])
    if steps_done:
        result.gradient_steps_in_window = float(np.mean(steps_done))
    if VARIANTS.get(variant, Variant("", "og_marl")).learner == "og_marl":
        result.model_mse, result.consensus_distance = refresh_series(run_dir, random_steps)
    return result


# ---------------------------------------------------------------------------------- running


# Saved as JSON by `report` (via `without_nan`): these RunResult fields come back as lists of lists
# (their points were tuples), and the float fields whose "not measured" is NaN come back as null.
_POINT_LIST_FIELDS = ("curve", "model_mse", "consensus_distance")
_NAN_DEFAULT_FIELDS = tuple(f.name for f in fields(RunResult) if isinstance(f.default, float) and math.isnan(f.default))


def saved_runs(paths: list[str]) -> list[RunResult]:
    """The runs a saved summary.json recorded (`report`'s "runs": each RunResult's fields), so an
    analysis can pool them with run directories measured later."""
    records = []
    for path in paths:
        for run in json.loads(Path(path).read_text())["runs"]:
            restored = dict(run)
            for name in _POINT_LIST_FIELDS:
                restored[name] = [tuple(point) for point in run.get(name, [])]
            for name in _NAN_DEFAULT_FIELDS:
                if restored.get(name) is None:
                    restored[name] = float("nan")
            records.append(RunResult(**restored))
    return records


def variant_random_steps(variant: str, args: argparse.Namespace) -> int:
    spec = VARIANTS.get(variant)
    return spec.random_steps if spec is not None and spec.random_steps is not None else args.random_steps


def run_once(variant: str, seed: int, args: argparse.Namespace, root: Path) -> RunResult:
    spec = VARIANTS[variant]
    run_dir = root / f"{variant}-seed{seed}"
    prefix = "agents.learner.sac." if spec.learner == "og_marl" else "agents.learner."
    random_steps = variant_random_steps(variant, args)
    overrides = [
        f"run.seed={seed}",
        f"run.steps={random_steps + args.steps}",
        f"env.kwargs.action_penalty={'true' if args.penalty > 0 else 'false'}",
        f"env.kwargs.action_penalty_coef={args.penalty if args.penalty > 0 else 1.0}",
        f"env.eval_every_steps={EVAL_EVERY}",
        f"env.eval_start_step={random_steps}",
        f"{prefix}random_steps={random_steps}",
        f"{prefix}learning_starts={random_steps}",
        'launch.live_view="off"',
        *spec.overrides,
    ]
    if args.reproducible and spec.reproducible:
        # A run is then a function of its seed (README, Reproducible runs): seeds pair exactly.
        overrides.append("run.reproducible=true")
    argv = [sys.executable, "-m", "orchestrator", "up", spec.config, "--run-dir", str(run_dir)]
    for override in overrides:
        argv += ["--set", override]
    try:
        completed = subprocess.run(
            argv,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=args.run_timeout_s,
        )
    except subprocess.TimeoutExpired:
        result = RunResult(variant, seed, str(run_dir), exit_code=124)
        result.failures.append(f"timed out after {args.run_timeout_s} s")
        return result
    if completed.returncode != 0:
        result = RunResult(variant, seed, str(run_dir), exit_code=completed.returncode)
        result.record = run_record(run_dir, completed.returncode) if (run_dir / "events.jsonl").exists() else None
        result.failures.append(f"orchestrate up exited {completed.returncode}: {completed.stderr[-2000:]}")
        return result
    return analyse_run(variant, seed, run_dir, random_steps, args.max_pending_fraction)


# ---------------------------------------------------------------------------------- statistics


def summarize(values: list[float]) -> dict:
    """Mean, sample std (ddof=1), 95 % t-interval and the values; std and CI need >= 2 values."""
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    summary = {"n": int(array.size), "values": [round(float(v), 2) for v in array]}
    if array.size == 0:
        return summary
    summary["mean"] = float(array.mean())
    if array.size >= 2:
        std = float(array.std(ddof=1))
        summary["std"] = std
        if std > 0:
            low, high = stats.t.interval(0.95, df=array.size - 1, loc=array.mean(), scale=std / math.sqrt(array.size))
        else:  # equal values (e.g. the gradient steps every run owes): scipy's interval would be nan
            low = high = array.mean()
        summary["ci95"] = [float(low), float(high)]
    return summary


def area_under_curve(curve: list[tuple[int, float]]) -> float:
    """The area under the evaluation curve by the trapezoid rule, over the span of its steps: the
    curve's mean return, which weighs how early a run learns as well as where it ends. NaN with
    fewer than two evaluations."""
    if len(curve) < 2:
        return float("nan")
    steps = np.array([step for step, _ in curve], dtype=np.float64)
    values = np.array([value for _, value in curve], dtype=np.float64)
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"evaluation steps must increase, got {steps.tolist()}")
    area = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(steps)))
    return area / float(steps[-1] - steps[0])


def steps_to_threshold(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The training step of the first evaluation at or above `threshold`; None if none reached it."""
    return next((int(step) for step, value in curve if value >= threshold), None)


def paired_difference(first: dict[int, float], second: dict[int, float]) -> dict:
    """first - second over the seeds both have: mean, SD, 95 % t-interval, t, two-sided p and the
    minimum detectable effect (80 % power, two-sided 0.05) from the differences' SD."""
    from scipy import stats

    seeds = sorted(set(first) & set(second))
    differences = np.array([first[seed] - second[seed] for seed in seeds], dtype=np.float64)
    result: dict = {"n": len(seeds), "seeds": seeds, "differences": [round(float(d), 2) for d in differences]}
    if not seeds:
        return result
    result["mean"] = float(differences.mean())
    if len(seeds) >= 2:
        sd = float(differences.std(ddof=1))
        half = stats.t.ppf(0.975, len(seeds) - 1) * sd / math.sqrt(len(seeds))
        result.update(
            sd=sd,
            ci95=[result["mean"] - half, result["mean"] + half],
            mde80=minimum_detectable_effect(sd, len(seeds)),
        )
        if sd > 0:
            t_value = result["mean"] / (sd / math.sqrt(len(seeds)))
            result.update(t=float(t_value), p=float(2 * stats.t.sf(abs(t_value), len(seeds) - 1)))
    return result


def compare(results: list[RunResult], first: str, second: str, train_steps: int) -> dict:
    """Paired differences first - second of the last-5 mean, the area under the curve and the steps
    to THRESHOLD, over the seeds where both runs passed. A run that never reached THRESHOLD counts
    as reaching it one evaluation after the budget (censored; the count is given)."""
    def by_seed(variant: str) -> dict[int, RunResult]:
        return {r.seed: r for r in results if r.variant == variant and r.ok}

    runs_first, runs_second = by_seed(first), by_seed(second)
    censored_at = train_steps + EVAL_EVERY

    def steps(run: RunResult) -> float:
        return float(censored_at if run.steps_to_threshold is None else run.steps_to_threshold)

    common = set(runs_first) & set(runs_second)
    return {
        "first": first,
        "second": second,
        # Pairs whose two runs ran different code: a seed still fixes the env's draws (the
        # agents' gains, the start states) for both, but not every rounding of the updates.
        "pairs_across_commits": sorted(k for k in common if code_commit(runs_first[k]) != code_commit(runs_second[k])),
        "last5": paired_difference({k: r.last5_mean for k, r in runs_first.items()}, {k: r.last5_mean for k, r in runs_second.items()}),
        "area": paired_difference({k: r.area for k, r in runs_first.items()}, {k: r.area for k, r in runs_second.items()}),
        "steps_to_threshold": paired_difference({k: steps(r) for k, r in runs_first.items()}, {k: steps(r) for k, r in runs_second.items()}),
        "never_reached": {
            first: sum(runs_first[k].steps_to_threshold is None for k in common),
            second: sum(runs_second[k].steps_to_threshold is None for k in common),
        },
        # The field's protocol beside the t-intervals (bench/intervals.py, rliable): each side's
        # IQM of the last-5 return over the common seeds, and P(a first run beats a second run).
        "last5_iqm": {first: field_protocol([runs_first[k].last5_mean for k in sorted(common)]),
                      second: field_protocol([runs_second[k].last5_mean for k in sorted(common)])},
        "last5_improvement": improvement([runs_first[k].last5_mean for k in sorted(common)],
                                         [runs_second[k].last5_mean for k in sorted(common)]),
    }


def code_commit(run: RunResult) -> str:
    """The run's Parley commit ("unknown" for runs recorded before runs said; "+dirty" when
    tracked files differed from it)."""
    if not run.code or not run.code.get("git_commit"):
        return "unknown"
    return run.code["git_commit"][:12] + ("+dirty" if run.code.get("git_dirty") else "")


def pooled_curve(series: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps present in every series, with mean and 95 % t half-width over the series."""
    from scipy import stats

    common = sorted(set.intersection(*(set(step for step, _ in s) for s in series))) if series else []
    values = np.array([[dict(s)[step] for step in common] for s in series])
    mean = values.mean(axis=0) if len(common) else np.array([])
    if len(series) >= 2 and len(common):
        half = stats.t.ppf(0.975, len(series) - 1) * values.std(axis=0, ddof=1) / math.sqrt(len(series))
    else:
        half = np.zeros_like(mean)
    return np.array(common), mean, half


def _legend_or_say_empty(axis, fontsize: int) -> None:
    """The axis's legend, or a note in its middle when no passing run drew on it."""
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=fontsize)
    else:
        axis.text(0.5, 0.5, 'no passing run to show', ha='center', transform=axis.transAxes)


def _save(figure, path: Path, written: list[str]) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    written.append(str(path))
    plt.close(figure)


def plot(results: list[RunResult], out: Path, penalty: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    setting = f"action penalty weight {penalty:g}" if penalty > 0 else "action penalty off"
    written = []
    variants = list(dict.fromkeys(r.variant for r in results))

    figure, axis = plt.subplots(figsize=(8, 5))
    for variant in variants:
        series = [r.curve for r in results if r.variant == variant and r.ok and r.curve]
        if not series:
            continue
        steps, mean, half = pooled_curve(series)
        axis.plot(steps, mean, label=f"{VARIANTS[variant].label} (n={len(series)})")
        axis.fill_between(steps, mean - half, mean + half, alpha=0.2)
    axis.set_xlabel("training steps after the random phase")
    axis.set_ylabel("evaluation return (5 greedy episodes)")
    axis.set_title(f"Reward collection, 5 agents, {setting}: mean and 95% CI over seeds")
    _legend_or_say_empty(axis, fontsize=8)
    _save(figure, out / "learning_curves.png", written)

    figure, (mse_axis, distance_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in variants:
        mse = [r.model_mse for r in results if r.variant == variant and r.ok and r.model_mse]
        if mse:
            steps, mean, half = pooled_curve(mse)
            mse_axis.plot(steps, mean, marker=".", label=VARIANTS[variant].label)
            mse_axis.fill_between(steps, np.maximum(mean - half, 1e-12), mean + half, alpha=0.2)
        distance = [[(s, j) for s, j, _ in r.consensus_distance] for r in results if r.variant == variant and r.ok]
        distance = [d for d in distance if d]
        if distance:
            steps, mean, _ = pooled_curve(distance)
            distance_axis.plot(steps, mean, marker=".", label=VARIANTS[variant].label)
    mse_axis.set_yscale("log")
    mse_axis.set_xlabel("training steps")
    mse_axis.set_ylabel("held-out one-step MSE (mean over agents)")
    mse_axis.set_title(f"GP error per refresh ({setting})")
    _legend_or_say_empty(mse_axis, fontsize=7)
    distance_axis.set_yscale("log")
    distance_axis.set_xlabel("training steps")
    distance_axis.set_ylabel("max over agents of |J_i - Jbar| / |Jbar| (probe estimate)")
    distance_axis.set_title("distance to the exact average after consensus (rounding floor ~1e-15)")
    _legend_or_say_empty(distance_axis, fontsize=7)
    _save(figure, out / "gp_error_per_refresh.png", written)
    return written


def report(results: list[RunResult], args: argparse.Namespace, root: Path) -> dict:
    setting = f"action penalty weight {args.penalty:g}" if args.penalty > 0 else "action penalty off"
    table = {}
    for variant in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == variant]
        good = [r for r in runs if r.ok]
        table[variant] = {
            "label": VARIANTS[variant].label if variant in VARIANTS else variant,
            "random_steps": variant_random_steps(variant, args) if variant in VARIANTS else args.random_steps,
            "last5": summarize([r.last5_mean for r in good]),
            "area": summarize([r.area for r in good]),
            "steps_to_threshold": {r.seed: r.steps_to_threshold for r in good},
            "reproducible": sorted({str(r.reproducible) for r in runs}),
            "per_seed": {r.seed: round(r.last5_mean, 2) for r in runs},
            "failed_seeds": [r.seed for r in runs if not r.ok],
            "s_per_1000_train_steps": summarize([r.s_per_1000_train_steps for r in good]),
            "gradient_steps_per_agent_in_window": summarize([r.gradient_steps_in_window for r in good]),
            "worst_pending_fraction": max((r.pending_fraction for r in runs if not math.isnan(r.pending_fraction)), default=None),
            "max_consensus_distance_J": max((d[1] for r in good for d in r.consensus_distance), default=None),
            "missing_neighbour_rounds_per_agent": summarize([r.missing_neighbour_rounds for r in good if not math.isnan(r.missing_neighbour_rounds)]),
        }
    present = set(table)
    # The random phase: one number when every variant had the same, else per variant (a regime's own).
    phases = {row["random_steps"] for row in table.values()} or {args.random_steps}
    random_phase = phases.pop() if len(phases) == 1 else {variant: row["random_steps"] for variant, row in table.items()}
    pairs = args.comparison_pairs if args.comparison_pairs else [
        pair for pair in DEFAULT_COMPARISONS if pair[0] in present and pair[1] in present
    ]
    return {
        "setting": setting,
        "comparisons": [compare(results, first, second, args.steps) for first, second in pairs],
        "threshold": THRESHOLD,
        "penalty": args.penalty,
        "seeds": args.seed_list,
        "random_steps": random_phase,
        "train_steps": args.steps,
        "max_pending_fraction": args.max_pending_fraction,
        # Runs at once (None: analysed, not run here); above 1 the seconds per 1,000 steps shared the cores.
        "jobs": None if args.analyse else args.jobs,
        "table": table,
        "runs": [r.__dict__ for r in results],
        "root": str(root),
    }


def without_nan(value):
    """The same structure with NaN as None, so that the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    return value


def format_difference(difference: dict, digits: int = 1) -> str:
    if "mean" not in difference:
        return "no common seed"
    text = f"{difference['mean']:+.{digits}f}"
    if "sd" not in difference:
        return text + f" (n={difference['n']})"
    low, high = difference["ci95"]
    text += f" ± {difference['sd']:.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
    if "p" in difference:
        text += f" p={difference['p']:.2f}"
    return text + f" MDE {difference['mde80']:.{digits}f} (n={difference['n']})"


def print_comparisons(summary: dict) -> None:
    if not summary.get("comparisons"):
        return
    print(
        "\npaired by seed, first - second: mean ± SD of the differences [95% t-interval], two-sided p, "
        "and the minimum detectable effect (MDE: 80% power, two-sided 0.05, from that SD)"
    )
    for comparison in summary["comparisons"]:
        never = comparison["never_reached"]
        print(f"{comparison['first']} - {comparison['second']}:")
        print(f"  last-5 mean        {format_difference(comparison['last5'])}")
        print(f"  area under curve   {format_difference(comparison['area'])}")
        print(
            f"  steps to {summary['threshold']:.0f}       {format_difference(comparison['steps_to_threshold'], 0)}"
            f"  (never reached, counted at the budget + {EVAL_EVERY}: {never[comparison['first']]} and "
            f"{never[comparison['second']]} runs)"
        )
        if comparison.get("pairs_across_commits"):
            print(f"  seeds whose two runs ran different Parley commits: {comparison['pairs_across_commits']}")


def print_table(summary: dict) -> None:
    print(
        f"reward collection, 5 agents, {summary['setting']}, {summary['random_steps']} random steps + "
        f"{summary['train_steps']} training steps, seeds {summary['seeds']}"
    )
    header = f"{'variant':<22}{'last-5 eval return':>30}{'95% CI':>22}{'s / 1000 train steps':>22}{'grad steps/agent':>18}  per seed"
    print(header)
    for variant, row in summary["table"].items():
        last5 = row["last5"]
        mean = f"{last5['mean']:.1f}" if "mean" in last5 else "-"
        std = f" ± {last5['std']:.1f}" if "std" in last5 else ""
        ci = f"[{last5['ci95'][0]:.1f}, {last5['ci95'][1]:.1f}]" if "ci95" in last5 else "-"
        speed = row["s_per_1000_train_steps"].get("mean")
        steps = row["gradient_steps_per_agent_in_window"].get("mean")
        seeds = ", ".join(
            f"{seed}: {'-' if value is None else f'{value:.1f}'}{' FAILED' if int(seed) in row['failed_seeds'] else ''}"
            for seed, value in row["per_seed"].items()
        )
        missing = row["missing_neighbour_rounds_per_agent"].get("mean")
        area = row["area"]
        reached = [value for value in row["steps_to_threshold"].values() if value is not None]
        print(
            f"{variant:<22}{mean + std:>30}{ci:>22}{(f'{speed:.0f}' if speed else '-'):>22}"
            f"{(f'{steps:.0f}' if steps else '-'):>18}  {seeds}"
            + (f"; consensus rounds with a share missing: {missing:.0f} per agent" if missing is not None else "")
        )
        # `without_nan` has turned a NaN (a run that never evaluated) into None.
        area_mean = "-" if area.get("mean") is None else f"{area['mean']:.1f}"
        print(
            f"{'':<22}area under the curve {area_mean}"
            + (f" ± {area['std']:.1f}" if area.get("std") is not None else "")
            + f"; reached {summary['threshold']:.0f} in {len(reached)} of {len(row['steps_to_threshold'])} runs"
            + (f" (median step {int(np.median(reached))})" if reached else "")
            + f"; run.reproducible: {', '.join(row['reproducible'])}"
        )
    print_comparisons(summary)


# ---------------------------------------------------------------------------------- optimism calibration


def calibrate_optimism(seeds: list[int], penalty: float, random_steps: int) -> dict:
    """Mean sqrt-variances of both forms at the first refresh; see the module docstring."""
    import torch

    from agent_node.algos import build_learner
    from agent_node.algos.config import OGMARLConfig
    from agent_node.roles import Transition
    from agent_node.world_models import SparseGPConfig
    from env_server.envs.reward_collection import parallel_env
    from orchestrator.config import load_config

    torch.set_num_threads(1)
    shipped = load_config(REPO / "configs" / "og_marl_ring5.yaml")
    learner_config: OGMARLConfig = shipped.agents.learner
    gp_config: SparseGPConfig = shipped.agents.world_model
    shipped_kernel = "shipped kernel (raw inputs, + 0.1)"
    forms = {
        shipped_kernel: gp_config,
        "box-scaled kernel (the earlier default)": gp_config.model_copy(update={"input_scaling": "box", "linear_constant": 0.0}),
    }
    rows = []
    for seed in seeds:
        env = parallel_env(num_agents=5, action_penalty=penalty > 0, action_penalty_coef=penalty or 1.0, dynamics_seed=seed)
        for form, world_model in forms.items():
            agents = [
                build_learner(
                    learner_config.model_copy(update={"sac": learner_config.sac.model_copy(update={"random_steps": random_steps})}),
                    env.observation_space(name),
                    env.action_space(name),
                    seed * 100 + index,
                    world_model_config=world_model,
                    task_spec=env.task_spec(),
                )
                for index, name in enumerate(env.possible_agents)
            ]
            observations, _ = env.reset()
            while not agents[0].model_refresh_due():
                actions = {name: agent.act(observations[name][None])[0] for name, agent in zip(env.possible_agents, agents)}
                next_observations, rewards, terminations, truncations, _ = env.step(actions)
                for name, agent in zip(env.possible_agents, agents):
                    agent.observe(
                        Transition(
                            observations[name][None], actions[name][None], np.array([rewards[name]], np.float32),
                            next_observations[name][None], np.array([terminations[name]]), np.array([truncations[name]]),
                        )
                    )
                observations = next_observations if env.agents else env.reset()[0]
            statistics = [agent.fit_world_model() for agent in agents]
            exact = {name: np.mean([s[name] for s in statistics], axis=0) for name in ("J", "h")}
            metrics = [agent.adopt_world_model(exact, len(agents)) for agent in agents]
            reference = float(np.mean([m["og_marl/sqrt_variance_reference"] for m in metrics]))
            epistemic = float(np.mean([m["og_marl/sqrt_variance_epistemic"] for m in metrics]))
            reward = float(np.mean([m["og_marl/imagined_reward_abs"] for m in metrics]))
            rows.append(
                {
                    "seed": seed,
                    "kernel": form,
                    "sqrt_var_reference": reference,
                    "sqrt_var_epistemic": epistemic,
                    "ratio": reference / epistemic,
                    "bonus_reference_c0.01": 0.01 * reference,
                    "mean_abs_imagined_reward": reward,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    shipped = [row for row in rows if row["kernel"] == shipped_kernel]
    box = [row for row in rows if row["kernel"] != shipped_kernel]
    # Ratios of means over all seeds' imagined rows (each seed weighs the same).
    ratio = np.mean([r["sqrt_var_reference"] for r in shipped]) / np.mean([r["sqrt_var_epistemic"] for r in shipped])
    per_seed = np.array([r["ratio"] for r in shipped])
    return {
        "setting": f"action penalty weight {penalty:g}" if penalty > 0 else "action penalty off",
        "rows": rows,
        "ratio_reference_over_epistemic": float(ratio),
        "ratio_per_seed_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None,
        # The epistemic c whose mean bonus equals the reference form's at c = 0.01 (shipped kernel).
        "c_epistemic": round(0.01 * float(ratio), 4),
        "mean_bonus_reference_c0.01": float(np.mean([r["bonus_reference_c0.01"] for r in shipped])),
        "mean_bonus_reference_c0.01_box_kernel": float(np.mean([r["bonus_reference_c0.01"] for r in box])),
    }


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="og_marl,sac", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=2400, help="training steps after the random phase")
    parser.add_argument("--random-steps", type=int, default=5000)
    parser.add_argument("--penalty", type=float, default=1.0, help="action-penalty weight; 0 switches it off")
    parser.add_argument("--max-pending-fraction", type=float, default=0.01)
    parser.add_argument("--run-timeout-s", type=float, default=3 * 3600)
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (default 1: one after the other; more only where the cores allow, "
                             "and then the seconds per 1,000 steps measure shared cores)")
    parser.add_argument("--root", default=None, help="where the run directories go (default: a temp dir)")
    parser.add_argument("--analyse", default=None, nargs="+", metavar="DIR",
                        help="analyse the runs under these roots (the first holding a variant-seed wins), run nothing")
    parser.add_argument("--saved", default=None, nargs="+", metavar="SUMMARY",
                        help="with --analyse: also the runs recorded in these summary.json files (their "
                             "run directories may be gone); a variant-seed found under a root wins")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="with --analyse: where summary.json and plots/ go (default: the first root)")
    parser.add_argument("--compare", default=None, metavar="A:B,...",
                        help="paired comparisons to print, first minus second (default: DEFAULT_COMPARISONS present)")
    parser.add_argument("--reproducible", action=argparse.BooleanOptionalAction, default=True,
                        help="run with run.reproducible (default on; push-sum and lossy variants always run without)")
    parser.add_argument("--calibrate-optimism", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.penalty < 0:
        parser.error(f"--penalty must be >= 0, got {args.penalty}")
    args.comparison_pairs = []
    for pair in (args.compare.split(",") if args.compare else []):
        names = pair.split(":")
        if len(names) != 2 or any(name not in VARIANTS for name in names):
            parser.error(f"--compare expects pairs A:B of variants from {list(VARIANTS)}, got {pair!r}")
        args.comparison_pairs.append((names[0], names[1]))

    if args.calibrate_optimism:
        calibration = calibrate_optimism(args.seed_list, args.penalty, args.random_steps)
        print(json.dumps(calibration, indent=None if args.json else 2))
        return 0

    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")

    results: list[RunResult] = []
    if args.analyse:
        roots = [Path(directory) for directory in args.analyse]
        root = Path(args.out) if args.out else roots[0]
        for variant in variants:
            for seed in args.seed_list:
                candidates = (r / f"{variant}-seed{seed}" for r in roots)
                run_dir = next((candidate for candidate in candidates if candidate.exists()), None)
                if run_dir is not None:
                    results.append(
                        analyse_run(variant, seed, run_dir, variant_random_steps(variant, args), args.max_pending_fraction)
                    )
        found = {(r.variant, r.seed) for r in results}
        for record in saved_runs(args.saved or []):
            if record.variant in variants and record.seed in args.seed_list and (record.variant, record.seed) not in found:
                results.append(record)
                found.add((record.variant, record.seed))
        results.sort(key=lambda r: (variants.index(r.variant), args.seed_list.index(r.seed)))
    else:
        root = Path(args.root or tempfile.mkdtemp(prefix="parley-bench-og-marl-"))
        # Seed by seed, every variant of a seed before the next seed: a batch stopped early
        # leaves whole pairs. With --jobs > 1, that many runs at once (a machine with many cores).
        tasks = [(variant, seed) for seed in args.seed_list for variant in variants]

        def run_and_tell(task: tuple[str, int]) -> RunResult:
            variant, seed = task
            started = time.monotonic()
            result = run_once(variant, seed, args, root)
            status = "ok" if result.ok else "FAILED: " + " | ".join(result.failures)
            print(
                f"# {variant} seed {seed}: last-5 {result.last5_mean:.1f}, "
                f"{result.s_per_1000_train_steps:.0f} s/1000 steps, {time.monotonic() - started:.0f} s wall, {status}",
                file=sys.stderr,
                flush=True,
            )
            return result

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_and_tell, tasks))
        results.sort(key=lambda r: (variants.index(r.variant), args.seed_list.index(r.seed)))

    root.mkdir(parents=True, exist_ok=True)
    summary = without_nan(report(results, args, root))
    if results:
        summary["plots"] = plot(results, root / "plots", args.penalty)
    (root / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print_table(summary)
        for result in results:
            for failure in result.failures:
                print(f"FAILED {result.variant} seed {result.seed}: {failure}")
    return 1 if any(not r.ok for r in results) or not results else 0


if __name__ == "__main__":
    sys.exit(main())
