"""The main job (configs/4agents_ring.yaml) against its ablations, random and a scripted oracle.

Every run is an ordinary `orchestrate up` of the default config (four agent processes on a
ring and an env server, MPE simple_spread N = 4, 8 copies, 10,000 lockstep steps, greedy
evaluations of 32 distinct episodes every 500 steps), with `run.reproducible` (the same seed
gives the same run on any load) and one change per variant:

- `main`: the config as shipped: landmarks agreed over the ring, hindsight rows shared, the
  agents' Q-networks averaged by consensus from one initial policy (every 100 steps, 2
  synchronous gossip rounds with ring neighbours, shares sent as int8 with a per-tensor scale and
  error feedback: decentralized parameter sharing, since the four agents are one body learning
  one landmark-conditioned task);
- `no_consensus`: each agent learns alone, from its own initial policy (`protocols.consensus.enabled=false`);
- `policy_averaging_own_starts`: the averaging as the world model had it (every 1,000 steps, 10
  rounds), each agent from its own random initial policy;
- `world_model_averaged`: the main job until 2026-11-27: no policy averaging; a world model (an
  ensemble of 3) fit by every agent and averaged every 1,000 steps, which no learner reads;
- `averaging_every_25_steps`, `averaging_every_400_steps`: the main job's averaging 4 times as
  often, or a quarter as often (`protocols.consensus.period_steps`);
- `float32_shares`: each share sent whole, as float32 (`protocols.consensus.compression=none`: 4
  times the bytes of int8);
- `averaging_10_rounds`: each average mixes 10 gossip rounds instead of 2 (`protocols.consensus.rounds`);
- `averaging_5_rounds_float32`: the averaging the job shipped with from 2026-11-27 to 2026-11-29,
  5 rounds of float32 shares;
- `talking_in_steps`: the main job with its peer messages taking env steps (`protocols.talk=env_steps`:
  each is due at the next step, on links without delay), the clock push-sum needs to be reproducible;
- `push_sum_in_steps`: `talking_in_steps` averaging by push-sum (`protocols.consensus.mode=push_sum`:
  a push to one neighbour every step for 20 steps) instead of synchronous rounds. Compared also
  with `talking_in_steps`, its reference;
- `no_negotiation`: each agent takes its nearest landmark alone (`agents.landmarks.assignment=nearest`);
- `no_hindsight`: no partner rows (`agents.landmarks.share_hindsight=false`);
- `plain_dqn`: the DQN agents of the main job before the landmark assignment (no landmarks, no
  consensus, buffer 100,000);
- `world_model_bonus`: `world_model_averaged` with its model in use: the ensemble's disagreement
  on each sampled row, as an exploration bonus in the DQN's rewards (`agents.world_model_bonus`:
  0.1, in units of the mean disagreement), the model refit and averaged every 250 steps so that
  the bonus starts early in the exploration. Compared also with `world_model_averaged`, its
  reference: the same learner whose model nobody reads;
- `torch_updates`: the main job with its DQN gradient steps taken in torch (`agents.learner.numpy_updates=false`,
  the shipped job's path until 2026-11-28, which every record of that time measured): the same
  update with torch's arithmetic.

A record keeps the variants of its day under their names of then (`averaging_int8_shares`,
`averaging_2_rounds`, `averaging_2_rounds_int8_shares`: variants of the job that averaged in 5
rounds of float32); `--variants` takes them from a `--saved` record.

A run's score is the mean of its last 5 evaluations (`eval/return_mean`: return per agent per
episode). The random and oracle lines are the env server's own (env_server/baselines.py), on the
same evaluation episodes as the agents, averaged over the seeds. Each variant is compared with
`main` on the same seeds: the paired difference, its 95% t-interval, and the smallest difference
that many seeds could detect (two-sided 0.05, power 0.8, from the pairs' standard deviation).

    .venv/bin/python bench/main_job.py --seeds 5 --root runs/bench_main_job --save docs/results/data/main_job.json --plot docs/results/data/main_job.png
    .venv/bin/python bench/main_job.py --analyse runs/bench_main_job --seeds 5     # tables from finished runs
    .venv/bin/python bench/main_job.py --analyse runs/bench_main_job --seeds 10 --variants main,no_consensus,no_negotiation \
        --record docs/results/main_job_reproducible.json --page docs/results/main_job_reproducible.md

`--record` and `--page` write the bench's record and its results page (bench/results_page.py):
the tables below, with the builds that made the runs, their evaluation episodes and whether they
were `run.reproducible`. `--saved RECORD` takes the variants a record holds instead of running
them (their run directories may be gone), so a variant measured later pairs with the seeds of
`main` measured before:

    .venv/bin/python bench/main_job.py --seeds 10 --variants main,averaging_10_rounds \
        --saved docs/results/main_job_int8.json --root runs/bench_main_job --record ... --page ...

(docs/results/main_job_int8.json holds the job as it ships since 2026-11-29; a record of an
earlier job pairs only with variants of that job.)

`--saved-as main=torch_updates` reads a record's `main` as `torch_updates`: the shipped job of the
days when it took its gradient steps in torch, which that variant now is.

Pooling assumes the recorded runs are what this commit would make of the same seeds: with
`run.reproducible` one recorded seed rerun here says whether they are (the page names every
run's commit).

Runs go seed by seed (every variant of seed 0, then of seed 1, ...), so a batch cut short still
pairs; a finished run under `--root` is reused, not run again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conventions import PARLEY_CONVENTION  # noqa: E402
from intervals import (  # noqa: E402
    field_protocol, holm, improvement, mean_ci, minimum_detectable_effect, paired_t_test,
)
import results_page  # noqa: E402
from runs import REPO, fmt, plot_evaluations, run_and_score, run_record  # noqa: E402

CONFIG = "configs/4agents_ring.yaml"
LAST_EVALS = 5
RETURN_CONVENTION = PARLEY_CONVENTION  # what every return here is (docs/results/return_conventions.md)
# The world model the main job averaged until 2026-11-27 (its runs: `world_model_averaged`).
ENSEMBLE_WORLD_MODEL = ("agents.world_model={kind: ensemble, ensemble_size: 3, num_elites: 2, hidden_size: 64, "
                        "num_hidden_layers: 2, batch_size: 128, epochs_per_fit: 20, max_steps_per_fit: 100}")
# The averaging the world model had: every 1,000 steps, 10 rounds of float32, each agent from its own start.
AVERAGED_ONCE_IN_1000_STEPS = ["protocols.consensus.same_initial_policy=false", "protocols.consensus.period_steps=1000",
                               "protocols.consensus.rounds=10", "protocols.consensus.compression=none"]
VARIANTS: dict[str, list[str]] = {
    "main": [],
    "no_consensus": ["protocols.consensus.enabled=false", "protocols.consensus.same_initial_policy=false"],
    "policy_averaging_own_starts": AVERAGED_ONCE_IN_1000_STEPS,
    "world_model_averaged": [*AVERAGED_ONCE_IN_1000_STEPS, "protocols.consensus.what=world_model_parameters",
                             ENSEMBLE_WORLD_MODEL],
    "no_negotiation": ["agents.landmarks.assignment=nearest"],
    "no_hindsight": ["agents.landmarks.share_hindsight=false"],
    # How often and how the policies are averaged (the main job: every 100 steps, 2 rounds, int8).
    "averaging_every_25_steps": ["protocols.consensus.period_steps=25"],
    "averaging_every_400_steps": ["protocols.consensus.period_steps=400"],
    "float32_shares": ["protocols.consensus.compression=none"],
    "averaging_10_rounds": ["protocols.consensus.rounds=10"],
    "averaging_5_rounds_float32": ["protocols.consensus.rounds=5", "protocols.consensus.compression=none"],
    "talking_in_steps": ["protocols.talk=env_steps"],
    "push_sum_in_steps": ["protocols.talk=env_steps", "protocols.consensus.mode=push_sum"],
    "plain_dqn": ["agents.landmarks=null", "agents.learner.buffer_size=100000", "protocols.consensus.enabled=false",
                  "protocols.consensus.same_initial_policy=false"],
    "world_model_bonus": [*AVERAGED_ONCE_IN_1000_STEPS, "protocols.consensus.what=world_model_parameters",
                          ENSEMBLE_WORLD_MODEL, "protocols.consensus.period_steps=250", "agents.world_model_bonus=0.1"],
    "torch_updates": ["agents.learner.numpy_updates=false"],
}
# Variants compared also with a reference other than `main`: the run that differs by one change.
REFERENCE_OF = {"world_model_bonus": "world_model_averaged", "push_sum_in_steps": "talking_in_steps"}


def gap_closed(score: float, random_line: float, oracle_line: float) -> float:
    return (score - random_line) / (oracle_line - random_line)


def runs_made_by(per_variant: dict[str, dict]) -> list[dict]:
    """The builds and settings behind the scored runs: one entry per (commit, Python, torch,
    run.reproducible, evaluation episodes) with how many runs it made."""
    counts = Counter((r["git_commit"], r["python"], r["torch"], r["reproducible"], r.get("eval_episodes"))
                     for entry in per_variant.values() for r in entry["runs"].values())
    return [{"commit": commit, "python": python, "torch": torch_version, "reproducible": reproducible,
             "eval_episodes": episodes, "runs": n}
            for (commit, python, torch_version, reproducible, episodes), n in sorted(counts.items(), key=str)]


def run_summary(run_dir: Path) -> dict | None:
    """`orchestrate report`'s summary of a run that may be scored (its evaluation curve, the
    random and oracle lines, the landmark agreement, its duration) with its `record`
    (bench/runs.py, `run_record`: exit code, commit, run.reproducible); None for a run not run,
    one refused (not exit 0, or its budget not done: said on stderr) or with fewer than
    LAST_EVALS evaluations."""
    from orchestrator.report import summarize_run

    if not (run_dir / "events.jsonl").exists():
        return None
    record = run_record(run_dir)
    if record["refused"] is not None:
        print(f"{run_dir}: not scored: {record['refused']}", file=sys.stderr)
        return None
    summary = summarize_run(run_dir)
    evaluation = summary["evaluation"]
    if evaluation is None or evaluation["evaluations"] < LAST_EVALS:
        return None
    return {**summary, "record": {**record, "eval_episodes": evaluation.get("episodes")}}


def run_dir_of(root: Path, variant: str, seed: int) -> Path:
    return root / variant / f"seed_{seed}"


def finished_runs(root: Path, variant: str, seeds: list[int]) -> dict[int, dict]:
    """The summaries of `variant`'s finished runs under `root`, by seed (`run_summary`)."""
    summaries = {seed: run_summary(run_dir_of(root, variant, seed)) for seed in seeds}
    return {seed: summary for seed, summary in summaries.items() if summary is not None}


GAP_SHARE = 0.8  # "steps to 80% of the gap": the first evaluation at random + 0.8 (oracle - random)


def steps_to_gap_share(evaluation: dict, share: float = GAP_SHARE) -> int | None:
    """The lockstep step of a run's first evaluation whose return closes `share` of the gap from
    the run's own random line to its oracle line (both on the same evaluation episodes); None
    when none does, or the run has no lines."""
    if evaluation.get("random") is None or evaluation.get("oracle") is None:
        return None
    bar = evaluation["random"] + share * (evaluation["oracle"] - evaluation["random"])
    return next((int(step) for step, value in evaluation["curve"] if value >= bar), None)


def bytes_per_peer_edge(summary: dict) -> float | None:
    """The mean bytes an agent sent over one directed peer edge in the run (every message:
    consensus shares, landmark tables, hindsight rows); None in a run without peer traffic."""
    sent = [edge["bytes_sent"] for edge in (summary.get("peer_traffic") or {}).values() if edge.get("bytes_sent") is not None]
    return float(np.mean(sent)) if sent else None


def scored(summaries: dict[int, dict]) -> dict:
    """A variant's entry: each seed's score (the report's mean of the last LAST_EVALS
    evaluations), their mean and 95% t-interval half-width, the steps each run took to close 80%
    of the gap to the oracle, the bytes per directed peer edge, and the mean run time."""
    scores = {seed: summary["evaluation"]["last5"] for seed, summary in summaries.items()}
    walls = [summary["duration_s"] for summary in summaries.values() if summary["duration_s"] is not None]
    edge_bytes = [value for value in map(bytes_per_peer_edge, summaries.values()) if value is not None]
    mean, half = mean_ci(list(scores.values()))
    return {"scores": scores, "mean": mean, "ci95": half, **field_protocol(list(scores.values())),
            "steps_to_gap80": {seed: steps_to_gap_share(summary["evaluation"]) for seed, summary in summaries.items()},
            "peer_edge_mb_mean": float(np.mean(edge_bytes)) / 1e6 if edge_bytes else None,
            "run_s_mean": float(np.mean(walls)) if walls else None,
            "runs": {seed: summary["record"] for seed, summary in summaries.items()}}


def gap80_cell(entry: dict) -> str:
    """`median (reached/runs)` of the steps to 80% of the gap: a run that never got there counts
    as above every run that did (the median is then a lower bound, shown as `>`)."""
    steps = list((entry.get("steps_to_gap80") or {}).values())
    if not steps:
        return "-"
    reached = sorted(step for step in steps if step is not None)
    if not reached:
        return f"never (0/{len(steps)})"
    middle = (len(steps) - 1) // 2  # the lower median, with the runs that never got there last
    median = f"{reached[middle]:,}" if middle < len(reached) else f"> {reached[-1]:,}"
    return f"{median} ({len(reached)}/{len(steps)})"


def reference_line(summaries: list[dict], line: str) -> float | None:
    """The runs' mean `random` or `oracle` evaluation line; None when no run has it."""
    values = [summary["evaluation"][line] for summary in summaries if summary["evaluation"][line] is not None]
    return float(np.mean(values)) if values else None


def print_per_seed(entries: dict[str, dict]) -> None:
    print("\nper seed:\n")
    for name, entry in entries.items():
        # int(): a record read back from JSON has its seeds as strings
        print(f"- {name}: " + ", ".join(f"{seed}: {score:.2f}" for seed, score in sorted(entry["scores"].items(), key=lambda kv: int(kv[0]))))


def run_batch(root: Path, seeds: list[int], variants: list[str], timeout_s: float) -> None:
    for seed in seeds:
        for variant in variants:
            overrides = [f"run.seed={seed}", "run.reproducible=true", "launch.live_view=off", *VARIANTS[variant]]
            started = time.strftime("%H:%M:%S")
            result = run_and_score(CONFIG, overrides, run_dir_of(root, variant, seed), timeout_s, LAST_EVALS, reuse=True)
            state = "FAILED" if result["failed"] else f"score {result['score']:.2f}"
            print(f"[{started}] {variant} seed {seed}: {state}, wall {result['wall_s']} s", flush=True)


def refused_runs(root: Path, variant: str, seeds: list[int]) -> dict[int, dict]:
    """The records of `variant`'s runs under `root` that exist but may not be scored, by seed."""
    records = {seed: run_record(run_dir_of(root, variant, seed)) for seed in seeds
               if (run_dir_of(root, variant, seed) / "events.jsonl").exists()}
    return {seed: record for seed, record in records.items() if record["refused"] is not None}


def landmark_coverage(summaries: dict[int, dict]) -> dict:
    """A variant's landmark figures, each the mean over its runs (None where no run has it): the
    share of (episode start, copy) whose assignment gave every agent a landmark of its own
    (`distinct_fraction`: the Hungarian method makes this 1 by construction whenever the agents
    decide on the same table), the share of agreements decided on the whole team's table
    (`complete_fraction`), each agent nearest its pursued landmark at the end of its training
    episodes (`reached_pursued`), and at the end of the evaluation episodes the landmarks
    covered (`eval_covered_fraction`: within the env's 0.1) and the episodes with all covered."""
    def mean_of(section: str, key: str) -> float | None:
        values = [s[section][key] for s in summaries.values() if s.get(section) and s[section].get(key) is not None]
        return float(np.mean(values)) if values else None

    return {key: mean_of(section, key) for section, key in (
        ("landmarks", "distinct_fraction"), ("landmarks", "complete_fraction"), ("landmarks", "reached_pursued"),
        ("evaluation", "covered_fraction"), ("evaluation", "all_covered_fraction"))}


def recorded_entries(paths: list[Path], renamed: dict[str, str] | None = None) -> tuple[dict[str, dict], dict[str, float | None]]:
    """The variants that records this bench saved (`--record`, `--save`) hold, each as its entry
    (its seeds' scores and steps, its runs' records), and the random and oracle lines they were
    read against. A variant in two records comes from the first. `renamed` reads a recorded
    variant under another name (`{"main": "torch_updates"}`: a record made while the shipped job
    was what a variant is now); the recorded name is then not read as itself. A record of another
    config or another number of final evaluations is refused: its scores are not this bench's."""
    renamed = renamed or {}
    entries: dict[str, dict] = {}
    lines: dict[str, float | None] = {"random": None, "oracle": None}
    for path in paths:
        record = json.loads(path.read_text())
        if record.get("config") != CONFIG or record.get("last_evals") != LAST_EVALS or "variants" not in record:
            raise SystemExit(f"--saved {path}: expected a record of bench/main_job.py ({CONFIG}, last {LAST_EVALS} "
                             f"evaluations), got config {record.get('config')!r}, last_evals {record.get('last_evals')!r}")
        for name, entry in record["variants"].items():
            if name in renamed:
                entries.setdefault(renamed[name], {**entry, "recorded_in": f"{path} (as {name})"})
            else:
                entries.setdefault(name, {**entry, "recorded_in": str(path)})
        for line in lines:
            lines[line] = lines[line] if lines[line] is not None else record.get(line)
    return entries, lines


def from_record(entry: dict, seeds: list[int]) -> dict:
    """A recorded variant's entry on `seeds` (those it has): its scores, steps to 80% of the gap
    and run records on them, its mean and intervals computed again over them. The landmark
    figures, bytes and run time stay the record's, over all its runs."""
    def on_seeds(table: dict | None) -> dict:
        return {int(seed): value for seed, value in (table or {}).items() if int(seed) in seeds}

    scores = on_seeds(entry["scores"])
    mean, half = mean_ci(list(scores.values()))
    return {**entry, "scores": scores, "mean": mean, "ci95": half, **field_protocol(list(scores.values())),
            "steps_to_gap80": on_seeds(entry.get("steps_to_gap80")), "runs": on_seeds(entry.get("runs")),
            "refused": {}}


def analyse(root: Path, seeds: list[int], variants: list[str], recorded: dict[str, dict] | None = None,
            recorded_lines: dict[str, float | None] | None = None) -> dict:
    """Every variant's entry from its finished runs under `root`; a variant with none there comes
    from `recorded` (`recorded_entries`) where it is, so a new variant pairs with seeds measured
    before. The random and oracle lines are the runs' own, or the records' when no run is here."""
    recorded, recorded_lines = recorded or {}, recorded_lines or {}
    per_variant: dict[str, dict] = {}
    every_run: list[dict] = []
    for variant in variants:
        summaries = finished_runs(root, variant, seeds)
        if not summaries and variant in recorded:
            per_variant[variant] = from_record(recorded[variant], seeds)
            continue
        every_run += summaries.values()
        coverage = landmark_coverage(summaries)
        per_variant[variant] = {**scored(summaries), "distinct_fraction": coverage.pop("distinct_fraction"), **coverage,
                                "refused": {seed: record["refused"] for seed, record in refused_runs(root, variant, seeds).items()}}
    random_line, oracle_line = ((reference_line(every_run, "random"), reference_line(every_run, "oracle")) if every_run
                                else (recorded_lines.get("random"), recorded_lines.get("oracle")))
    main_entry = per_variant.get("main", {"scores": {}})
    comparisons = {variant: paired_comparison(main_entry, entry, "main_minus_variant")
                   for variant, entry in per_variant.items() if variant != "main"}
    for entry, kept in zip(comparisons.values(), holm([entry["p_value"] for entry in comparisons.values()])):
        entry["holm_rejects_zero"] = kept
    with_reference = {variant: {"reference": REFERENCE_OF[variant], **paired_comparison(
                          per_variant[REFERENCE_OF[variant]], entry, "reference_minus_variant")}
                      for variant, entry in per_variant.items() if REFERENCE_OF.get(variant) in per_variant}
    for entry in per_variant.values():
        entry["gap_closed"] = (gap_closed(entry["mean"], random_line, oracle_line)
                               if random_line is not None and oracle_line is not None and np.isfinite(entry["mean"]) else None)
    return {"config": CONFIG, "seeds": seeds, "last_evals": LAST_EVALS, "random": random_line, "oracle": oracle_line,
            "return_convention": RETURN_CONVENTION, "variants": per_variant, "paired_with_main": comparisons,
            "paired_with_reference": with_reference,
            "made_by": runs_made_by(per_variant)}


def paired_comparison(reference_entry: dict, variant_entry: dict, difference_key: str) -> dict:
    """The reference's score minus the variant's on the seeds both have: the mean difference
    (under `difference_key`), its 95% t-interval's half-width, p, the smallest difference these
    pairs could detect, the probability that a reference run beats a variant run; and the
    variant's steps to 80% of the gap minus the reference's, over the pairs where both got there
    (`steps_gap80_difference`, its half-width, and how many pairs)."""
    reference, variant = reference_entry["scores"], variant_entry["scores"]
    paired = sorted(set(reference) & set(variant))
    differences = [reference[seed] - variant[seed] for seed in paired]
    mean, half, p_value = paired_t_test(differences)
    poi = improvement([reference[s] for s in paired], [variant[s] for s in paired])
    reference_steps, variant_steps = reference_entry.get("steps_to_gap80") or {}, variant_entry.get("steps_to_gap80") or {}
    step_differences = [variant_steps[seed] - reference_steps[seed] for seed in paired
                        if reference_steps.get(seed) is not None and variant_steps.get(seed) is not None]
    steps_mean, steps_half, _ = paired_t_test(step_differences)
    return {"seeds": paired, difference_key: mean, "ci95": half, "p_value": p_value,
            "mde": minimum_detectable_effect(float(np.std(differences, ddof=1)) if len(differences) > 1 else float("nan"),
                                             len(differences)), **poi,
            "steps_gap80_difference": steps_mean, "steps_gap80_ci95": steps_half, "steps_gap80_pairs": len(step_differences)}


def difference_cell(entry: dict, key: str) -> str:
    """`mean [low, high]`: a paired comparison's difference under `key` and its 95% t-interval."""
    mean, half = entry[key], entry["ci95"]
    return f"{fmt(mean)} [{fmt(mean - half)}, {fmt(mean + half)}]"


def steps_difference_cell(entry: dict) -> str:
    """`+500 [−200, +1,200] (9 pairs)`: the variant's steps to 80% of the gap minus the
    reference's; "-" where fewer than two pairs both got there."""
    if entry.get("steps_gap80_pairs", 0) < 2:
        return "-"
    mean, half = entry["steps_gap80_difference"], entry["steps_gap80_ci95"]
    return f"{mean:+,.0f} [{mean - half:+,.0f}, {mean + half:+,.0f}] ({entry['steps_gap80_pairs']} pairs)"


def references(summary: dict) -> str:
    """What every score here is read against: the random policy's and the scripted oracle's."""
    return f"random policy {fmt(summary['random'])}, scripted oracle {fmt(summary['oracle'])}"


def seeds_and_score(entry: dict) -> str:
    """The table cells `seeds | last-N eval (mean ± 95% CI)` of one variant or learner."""
    return f"{len(entry['scores'])} | {fmt(entry['mean'])} ± {fmt(entry['ci95'])}"


def print_tables(summary: dict) -> None:
    print(f"\n{references(summary)} ({summary.get('return_convention', RETURN_CONVENTION)}; mean over seeds)")
    print(f"\n| variant | seeds | last-{summary['last_evals']} eval (mean ± 95% t-CI) | IQM [95% bootstrap CI] | gap closed "
          "| steps to 80% of the gap, median (runs reaching it) | MB per peer edge "
          "| distinct assignments | complete tables | at pursued landmark | landmarks covered (eval) | run s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for variant, entry in summary["variants"].items():
        print(f"| {variant} | {seeds_and_score(entry)} | {iqm_cell(entry)} | "
              f"{fmt(entry['gap_closed'], '.0%')} | {gap80_cell(entry)} | {fmt(entry.get('peer_edge_mb_mean'), '.1f')} | "
              f"{fmt(entry['distinct_fraction'], '.1%')} | "
              f"{fmt(entry.get('complete_fraction'), '.1%')} | {fmt(entry.get('reached_pursued'), '.1%')} | "
              f"{fmt(entry.get('covered_fraction'), '.1%')} | {fmt(entry['run_s_mean'], '.0f')} |")
    comparisons = summary["paired_with_main"]
    print(f"\n{len(comparisons)} comparisons with main, paired by seed; 'Holm': the difference is non-zero after "
          "Holm's correction for all of them at 0.05\n")
    print("| main minus | pairs | difference (95% t-CI) | p | Holm | P(main run > variant run) [95% CI] | smallest detectable (80% power) "
          "| steps to 80% of the gap, variant minus main (95% t-CI) |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, entry in comparisons.items():
        print(f"| {variant} | {len(entry['seeds'])} | {difference_cell(entry, 'main_minus_variant')} | "
              f"{fmt(entry.get('p_value'), '.3g')} | {'yes' if entry.get('holm_rejects_zero') else 'no'} | "
              f"{improvement_cell(entry)} | {fmt(entry['mde'])} | {steps_difference_cell(entry)} |")
    if summary.get("paired_with_reference"):
        print("\nVariants against the run they differ from by one change, paired by seed (each its own test, no correction)\n")
        print("| reference minus variant | pairs | difference (95% t-CI) | p | P(reference run > variant run) [95% CI] "
              "| smallest detectable (80% power) | steps to 80% of the gap, variant minus reference (95% t-CI) |")
        print("|---|---|---|---|---|---|---|")
        for variant, entry in summary["paired_with_reference"].items():
            print(f"| {entry['reference']} minus {variant} | {len(entry['seeds'])} | {difference_cell(entry, 'reference_minus_variant')} | "
                  f"{fmt(entry.get('p_value'), '.3g')} | {improvement_cell(entry)} | {fmt(entry['mde'])} "
                  f"| {steps_difference_cell(entry)} |")
    for variant, entry in summary["variants"].items():
        for seed, why in (entry.get("refused") or {}).items():
            print(f"refused: {variant} seed {seed}: {why}")
    print_per_seed(summary["variants"])


def iqm_cell(entry: dict) -> str:
    """`IQM [low, high]` of a variant's scores, "-" when it has none."""
    if entry.get("iqm") is None:
        return "-"
    low, high = entry["iqm_ci95"]
    return f"{fmt(entry['iqm'])} [{fmt(low)}, {fmt(high)}]"


def improvement_cell(entry: dict) -> str:
    if entry.get("probability_of_improvement") is None:
        return "-"
    low, high = entry["poi_ci95"]
    return f"{fmt(entry['probability_of_improvement'])} [{fmt(low)}, {fmt(high)}]"


def publish(summary: dict, print_tables: Callable[[dict], None], save: Path | None) -> None:
    """Stamp `summary` with the time it was measured, print its tables, and write it as JSON to
    `save` when given."""
    summary["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print_tables(summary)
    if save:
        save.write_text(json.dumps(summary, indent=1))
        print(f"wrote {save}")


PAGE_TITLE = "The main job against its variants, reproducible runs"


def render(record: dict, source: str) -> str:
    """The results page of a `--record`: how the runs were made, then the bench's own tables."""
    builds = "\n".join(
        f"- commit {(b['commit'] or 'unknown')[:10]}, Python {b['python']}, torch {b['torch']}: {b['runs']} "
        f"run{'s' if b['runs'] != 1 else ''}, "
        f"{'with' if b['reproducible'] else 'without'} `run.reproducible`, {b['eval_episodes']} evaluation episodes"
        for b in record["made_by"])
    counts = {len(row.get("scores") or {}) for row in record.get("rows", [])}
    which = (" for every variant" if len(counts) <= 1 else
             " (not every variant has every seed: the 'seeds' column says how many, the per-seed list which)")
    intro = (
        f"Every run is `orchestrate up {record['config']}` with `run.seed` set and one change per variant "
        "(bench/main_job.py's docstring lists them), seeds " + ", ".join(map(str, record["seeds"])) + which +
        ", so the comparisons are paired. A run's score is the mean of its last "
        f"{record['last_evals']} greedy evaluations ({record['return_convention']}); the random and oracle lines are "
        "the env server's own, on the same evaluation episodes (distinct starts, the same at every evaluation). Only runs "
        "that exited 0 with their budget done are scored. 'run s' is each run's wall time on the machine as loaded "
        "then: not a speed figure.\n\nThe runs were made by:\n\n" + builds + "\n")
    if record.get("note"):
        intro += "\n" + record["note"] + "\n"
    tables = io.StringIO()
    with contextlib.redirect_stdout(tables):
        print_tables(record)
    return results_page.header(record, PAGE_TITLE, source) + intro + tables.getvalue()


def plot(root: Path, seeds: list[int], variants: list[str], summary: dict, path: Path) -> None:
    curves = {variant: [run_dir_of(root, variant, seed) for seed in seeds
                        if run_summary(run_dir_of(root, variant, seed)) is not None] for variant in variants}
    lines = {label: value for label, value in (("random policy", summary["random"]), ("scripted oracle", summary["oracle"]))
             if value is not None}
    title = "main job, greedy evaluation (mean, 95% CI over seeds)" + "".join(
        f"; {label} {value:.1f}" for label, value in lines.items())
    plot_evaluations({k: v for k, v in curves.items() if v}, path, title, lines=lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench_main_job")
    parser.add_argument("--analyse", type=Path, metavar="ROOT", help="only read the finished runs under ROOT")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--save", type=Path, help="the summary as JSON")
    parser.add_argument("--plot", type=Path, help="the evaluation curves with the random and oracle lines (PNG)")
    parser.add_argument("--record", type=Path, help="the bench's record (JSON, bench/results_page.py) for --page")
    parser.add_argument("--page", type=Path, help="the results page (markdown), rendered from the record")
    parser.add_argument("--note", default="", help="what the page's reader must know of these runs (markdown)")
    parser.add_argument("--saved", type=Path, nargs="+", default=[], metavar="RECORD",
                        help="records this bench saved (e.g. docs/results/main_job_reproducible.json): a variant "
                             "with no finished run under the root is taken from them, on the seeds they have")
    parser.add_argument("--saved-as", action="append", default=[], metavar="RECORDED=VARIANT",
                        help="read a variant of the --saved records under another name, e.g. main=torch_updates "
                             "(a record made while the shipped job took its gradient steps in torch); repeatable")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    renamed = dict(text.split("=", 1) for text in args.saved_as if "=" in text)
    if len(renamed) != len(args.saved_as) or not set(renamed.values()) <= set(VARIANTS):
        parser.error(f"--saved-as: expected RECORDED=VARIANT with VARIANT one of {list(VARIANTS)}, got {args.saved_as}")
    recorded, recorded_lines = recorded_entries(args.saved, renamed)
    # A variant no longer defined (renamed or dropped since) can still be read from a record.
    unknown = [v for v in variants if v not in VARIANTS and v not in recorded]
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {list(VARIANTS)}, or of the --saved records")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    root = args.analyse if args.analyse is not None else args.root
    record = results_page.begin("bench/main_job.py", sys.argv[1:])
    if args.analyse is None:
        run_batch(root, seeds, [variant for variant in variants if variant not in recorded], args.timeout_s)
    summary = analyse(root, seeds, variants, recorded, recorded_lines)
    publish(summary, print_tables, args.save)
    if args.record is not None or args.page is not None:
        record.update(summary, note=args.note, rows=[{"variant": name, **entry} for name, entry in summary["variants"].items()])
        results_page.finish(record, args.record, args.page, render)
    if args.plot:
        plot(root, seeds, variants, summary, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
