"""Consensus's section of a run's report (`orchestrate report`, agent_node/registry.py).

If the agents ran it: sessions, rounds per session, disagreement (max distance to the
neighbours) before the first and after the last round of each session (push-sum: its estimate
from the pushes heard, see PushSumConsensus.metrics), rounds that missed a neighbour, the time a
session took, and each agent's first session on its own (in a sweep, the one session every
point has, started from the same parameters for the same seed). With a world model averaged, its
error on each agent's own recent data before and after each session (`world_model/local_mse`,
`world_model/averaged_mse`, agent_node/consensus/subjects.py).

"rounds to 1e-3" / "1e-6": in a synchronous session, the first round whose disagreement is at
most that fraction of the session's first (the rounds of mixing it took to cut the spread 1000x,
or a million times).
"""

from __future__ import annotations

from typing import Any

from agent_node.registry import AgentMetrics, HeadlineColumn, ReportSection, TimelinePanel, fmt, mean_of

CONVERGED_FRACTIONS = {"1e-3": 1e-3, "1e-6": 1e-6}


def rounds_to_converge(rows: list[dict[str, Any]], fraction: float) -> list[int | None]:
    """Per synchronous session of one agent (its per-round rows, `consensus/round` from 0): the
    first round with disagreement <= `fraction` x the session's first measured one, or
    None if none was. (A round that heard no neighbour has no disagreement in its row: NaN is
    not written.)"""
    sessions: list[list[tuple[int, float]]] = []
    for row in rows:
        if "consensus/round" not in row:
            continue
        if row["consensus/round"] == 0 or not sessions:
            sessions.append([])
        if "consensus/disagreement_max" in row:
            sessions[-1].append((int(row["consensus/round"]), row["consensus/disagreement_max"]))
    reached: list[int | None] = []
    for measured in sessions:
        if not measured:
            reached.append(None)
            continue
        base = measured[0][1]
        target = fraction * base
        reached.append(next((r for r, value in measured if value <= target), None) if base > 0 else measured[0][0])
    return reached


def _convergence(reached: dict[str, list[int | None]]) -> dict[str, float | None]:
    """`rounds_to_<f>_mean` over the sessions that got to each fraction, and `reached_<f>_fraction`:
    the share of sessions that did."""
    summary: dict[str, float | None] = {}
    for name, rounds in reached.items():
        summary[f"rounds_to_{name}_mean"] = mean_of([r for r in rounds if r is not None])
        summary[f"reached_{name}_fraction"] = sum(r is not None for r in rounds) / len(rounds) if rounds else None
    return summary


def _world_model(metrics: AgentMetrics) -> dict[str, Any] | None:
    before, after = [], []
    for rows in metrics.values():
        for row in rows:
            if "world_model/local_mse" in row and "world_model/averaged_mse" in row:
                before.append(row["world_model/local_mse"])
                after.append(row["world_model/averaged_mse"])
    if not before:
        return None
    return {"sessions": len(before), "mse_before": mean_of(before), "mse_after": mean_of(after)}


def summarize(metrics: AgentMetrics) -> dict[str, Any] | None:
    # One summary row per finished session: sync rounds write `consensus/rounds`, push-sum its
    # `consensus/pushes` (and, as disagreement, its estimate from the pushes it heard).
    sessions = [row for rows in metrics.values() for row in rows if "consensus/rounds" in row or "consensus/pushes" in row]
    durations = [row["consensus/duration_s"] for rows in metrics.values() for row in rows if "consensus/duration_s" in row]
    ages = [row["consensus/decision_age_steps"] for rows in metrics.values() for row in rows
            if "consensus/decision_age_steps" in row]  # talking in env steps
    if not sessions and not durations and not ages:
        return None
    converged = {name: [r for rows in metrics.values() for r in rounds_to_converge(rows, fraction)]
                 for name, fraction in CONVERGED_FRACTIONS.items()}
    final_by_agent = []
    for rows in metrics.values():
        last = [row["consensus/disagreement_last"] for row in rows if "consensus/disagreement_last" in row]
        if last:
            final_by_agent.append(last[-1])
    first: dict[str, list[float | None]] = {"before": [], "after": [], "duration": [], **{name: [] for name in CONVERGED_FRACTIONS}}
    for rows in metrics.values():
        summary_row = next((row for row in rows if "consensus/disagreement_last" in row), None)
        if summary_row is None:
            continue
        duration_row = next((row for row in rows if "consensus/duration_s" in row), None)
        first["before"].append(summary_row.get("consensus/disagreement_first"))
        first["after"].append(summary_row.get("consensus/disagreement_last"))
        for name, fraction in CONVERGED_FRACTIONS.items():
            reached = rounds_to_converge(rows, fraction)
            if reached:  # sync rounds (push-sum has none: neither rounds to 1e-3 nor a share that got there)
                first[name].append(reached[0])
        first["duration"].append(duration_row.get("consensus/duration_s") if duration_row else None)
    return {
        # finished sessions per agent (a session cut short by the end of the run writes none)
        "sessions_per_agent": {node: sum(1 for row in rows if "consensus/duration_s" in row or "consensus/decision_age_steps" in row)
                               for node, rows in metrics.items()},
        "first_session": {
            "agents": len(first["before"]),
            "disagreement_before_mean": mean_of(first["before"]),
            "disagreement_after_mean": mean_of(first["after"]),
            **_convergence({name: first[name] for name in CONVERGED_FRACTIONS}),
            "duration_s_mean": mean_of(first["duration"]),
        },
        "sessions": len(sessions),
        "rounds_mean": mean_of([row.get("consensus/rounds") for row in sessions]),
        "disagreement_first_mean": mean_of([row.get("consensus/disagreement_first") for row in sessions]),
        "disagreement_last_mean": mean_of([row.get("consensus/disagreement_last") for row in sessions]),
        "disagreement_last_final": mean_of(final_by_agent),
        **_convergence(converged),
        "missing_neighbour_rounds": sum(row.get("consensus/missing_neighbours", 0.0) for row in sessions),
        # sessions that ended without some neighbour's share in some round (a deadline ran out)
        "short_session_fraction": mean_of([float(row.get("consensus/missing_neighbours", 0.0) > 0) for row in sessions]),
        "duration_s_mean": mean_of(durations),
        "age_steps_mean": mean_of(ages),
        # push-sum reports its own counters instead of rounds
        "weight_mass_mean": mean_of([row.get("consensus/weight_mass") for row in sessions]),
        "world_model": _world_model(metrics),
    }


def _session_time(consensus: dict[str, Any]) -> str:
    if consensus.get("age_steps_mean") is not None:
        return f"each average landing {fmt(consensus['age_steps_mean'])} env steps after its tick"
    return f"{fmt(consensus['duration_s_mean'])} s per session"


def lines(consensus: dict[str, Any]) -> list[str]:
    per_agent = ", ".join(f"{node} {count}" for node, count in consensus["sessions_per_agent"].items())
    if consensus["rounds_mean"] is None:  # push-sum: no rounds; its disagreement is an estimate
        found = [
            f"consensus (push-sum): {consensus['sessions']} finished sessions (all agents), weight mass "
            f"{fmt(consensus['weight_mass_mean'], '.6g')} (1: no mass lost), disagreement estimate "
            f"{fmt(consensus['disagreement_first_mean'], '.2e')} at the first pushes heard -> "
            f"{fmt(consensus['disagreement_last_mean'], '.2e')} at the last (mean over sessions), "
            f"{_session_time(consensus)}"
        ]
    else:
        found = [
            f"consensus: {consensus['sessions']} finished sessions (all agents), {fmt(consensus['rounds_mean'])} rounds each, "
            f"disagreement {fmt(consensus['disagreement_first_mean'], '.2e')} before -> "
            f"{fmt(consensus['disagreement_last_mean'], '.2e')} after (mean over sessions), "
            f"final {fmt(consensus['disagreement_last_final'], '.2e')}; spread cut 1000x in "
            f"{fmt(consensus['rounds_to_1e-3_mean'])} rounds ({fmt(consensus['reached_1e-3_fraction'], '.0%')} of sessions got there); "
            f"rounds missing a neighbour "
            f"{fmt(consensus['missing_neighbour_rounds'], 'g')}; {_session_time(consensus)}"
        ]
    found.append(f"consensus sessions per agent: {per_agent}")
    world_model = consensus.get("world_model")
    if world_model:
        found.append(
            f"world model: error on each agent's own recent data {fmt(world_model['mse_before'], '.3g')} before consensus -> "
            f"{fmt(world_model['mse_after'], '.3g')} after (mean over {world_model['sessions']} agent-sessions)"
        )
    return found


def headline(consensus: dict[str, Any] | None) -> dict[str, float | None]:
    def first(key: str) -> float | None:
        return consensus["first_session"][key] if consensus else None

    return {
        "consensus_sessions": mean_of(list(consensus["sessions_per_agent"].values())) if consensus else None,
        "consensus_disagreement_first": consensus["disagreement_first_mean"] if consensus else None,
        "consensus_disagreement_last": consensus["disagreement_last_mean"] if consensus else None,
        **{f"consensus_{kind}_{name}": (consensus[f"{kind}_{name}_{suffix}"] if consensus else None)
           for name in CONVERGED_FRACTIONS for kind, suffix in (("rounds_to", "mean"), ("reached", "fraction"))},
        "consensus_duration_s": consensus["duration_s_mean"] if consensus else None,
        "consensus_short_sessions": consensus["short_session_fraction"] if consensus else None,
        "consensus_age_steps": consensus["age_steps_mean"] if consensus else None,
        "consensus_first_disagreement_before": first("disagreement_before_mean"),
        "consensus_first_disagreement_after": first("disagreement_after_mean"),
        **{f"consensus_first_{kind}_{name}": first(f"{kind}_{name}_{suffix}")
           for name in CONVERGED_FRACTIONS for kind, suffix in (("rounds_to", "mean"), ("reached", "fraction"))},
        "consensus_first_duration_s": first("duration_s_mean"),
    }


REPORT = ReportSection(
    summarize=summarize, lines=lines, headline=headline,
    columns=(
        HeadlineColumn("consensus_sessions", "sessions/agent", ".3g"),
        HeadlineColumn("consensus_disagreement_first", "disagree before", ".2e"),
        HeadlineColumn("consensus_disagreement_last", "disagree after", ".2e"),
        HeadlineColumn("consensus_rounds_to_1e-3", "rounds to 1e-3", ".3g"),
        HeadlineColumn("consensus_reached_1e-3", "reached 1e-3", ".0%"),
        HeadlineColumn("consensus_rounds_to_1e-6", "rounds to 1e-6", ".3g"),
        HeadlineColumn("consensus_reached_1e-6", "reached 1e-6", ".0%"),
        HeadlineColumn("consensus_duration_s", "consensus s", ".3g"),
        # talking in env steps: how many averages ran out of time, and how late the rest landed
        HeadlineColumn("consensus_short_sessions", "sessions short", ".0%"),
        HeadlineColumn("consensus_age_steps", "average age", ".3g"),
    ),
    # (a value that was NaN, e.g. a round that heard no neighbour, is absent from its row)
    timeline=TimelinePanel("consensus disagreement", (("consensus/disagreement_last", "after"),
                                                      ("consensus/disagreement_first", "before")),
                           log_scale=True, nothing="no consensus session finished"),
    sweep_panels=(("consensus_first_disagreement_after", "disagreement after 1st session", True),
                  ("consensus_first_duration_s", "1st consensus session, s", False)),
)
