"""The landmarks' section of a run's report (`orchestrate report`, agent_node/registry.py).

Per training episode start and env copy, whether the agents' landmarks were all different (from
each agent's `landmarks/goals_code`; the Hungarian method makes them so whenever the agents
decide on the same table, so this share is a check of the agreement, not of the agents), and how
often an agent decided on the whole team's table (no figure when each chose alone, `assignment:
nearest`: no table was flooded); and whether the agents got there: over the last
20% of each agent's training episodes, how often its nearest landmark at the end was the one it
pursued (`landmarks/reached_pursued`) and its mean distance to it then
(`landmarks/final_distance`). Metric keys are written by agent_node/landmarks/capability.py.
"""

from __future__ import annotations

import math
from typing import Any

from agent_node.registry import LAST_FRACTION, AgentMetrics, HeadlineColumn, ReportSection, fmt, mean_of


def summarize(metrics: AgentMetrics) -> dict[str, Any] | None:
    """The agreement and its outcome over the agents' metrics; None when no start was agreed on
    by every agent (a run without landmarks writes none)."""
    num_landmarks = len(metrics)  # simple_spread: one landmark per agent
    codes: dict[int, dict[str, list[int]]] = {}
    complete, flood_s, reached, distance, age_steps, after_episode = [], [], [], [], [], []
    for rows in metrics.values():
        ends = [row for row in rows if "landmarks/reached_pursued" in row]
        ends = ends[-max(1, math.ceil(len(ends) * LAST_FRACTION)):] if ends else []
        reached += [row["landmarks/reached_pursued"] for row in ends]
        distance += [row["landmarks/final_distance"] for row in ends if "landmarks/final_distance" in row]
    for node, rows in metrics.items():
        for row in rows:
            if "landmarks/goals_code" in row and "landmarks/copies" in row:
                codes.setdefault(row["step"], {})[node] = decode_goals(row["landmarks/goals_code"], num_landmarks,
                                                                       int(row["landmarks/copies"]))
                # A decision made alone floods nothing, so it has no flood duration and says
                # nothing of whole tables (runs made before 2026-11-29 still wrote complete = 1).
                flooded = "landmarks/flood_duration_s" in row or "landmarks/flood_duration_steps" in row
                complete.append(row.get("landmarks/complete") if flooded else None)
                if "landmarks/flood_duration_s" in row:
                    flood_s.append(row["landmarks/flood_duration_s"])
                if "landmarks/decision_age_steps" in row:  # talking in env steps
                    age_steps.append(row["landmarks/decision_age_steps"])
                    after_episode.append(row.get("landmarks/decided_after_episode", 0.0))
    agents = len(metrics)
    starts = [by_node for by_node in codes.values() if len(by_node) == agents]
    if not starts:
        return None
    distinct = []
    for by_node in starts:
        distinct += [len(set(per_copy)) == agents for per_copy in zip(*by_node.values())]
    return {"episode_starts": len(starts), "distinct_fraction": mean_of([float(d) for d in distinct]),
            "complete_fraction": mean_of(complete), "flood_s_mean": mean_of(flood_s),
            "decision_age_steps_mean": mean_of(age_steps), "decided_after_episode_fraction": mean_of(after_episode),
            "reached_pursued": mean_of(reached), "final_distance": mean_of(distance)}


def decode_goals(code: float, num_landmarks: int, copies: int) -> list[int]:
    """`landmarks/goals_code` back to one landmark per copy (base num_landmarks digits, copy 0 lowest)."""
    code, goals = int(code), []
    for _ in range(copies):
        goals.append(code % num_landmarks)
        code //= num_landmarks
    return goals


def _agreement_time(landmarks: dict[str, Any]) -> str:
    """How long an agreement took: wall time while talk is free, env steps while talking takes them."""
    if landmarks.get("decision_age_steps_mean") is not None:
        return (f"landing {fmt(landmarks['decision_age_steps_mean'])} env steps after the episode start "
                f"(after its episode ended: {fmt(landmarks['decided_after_episode_fraction'], '.1%')})")
    flood_s = landmarks["flood_s_mean"]
    return f"{fmt(flood_s * 1e3 if flood_s is not None else None)} ms per agreement"


def lines(landmarks: dict[str, Any]) -> list[str]:
    if landmarks["complete_fraction"] is None:  # `assignment: nearest`: no table was flooded
        how = "each agent chose its nearest landmark alone (no table flooded)"
    else:
        how = (f"decided on the whole team's table {fmt(landmarks['complete_fraction'], '.1%')} of the time, "
               f"{_agreement_time(landmarks)}")
    return [
        f"landmarks: {landmarks['episode_starts']} episode starts; the assignment gave every agent a landmark of its own in "
        f"{fmt(landmarks['distinct_fraction'], '.1%')} of (start, copy) (by construction when the agents decide on one "
        f"table: the Hungarian method); {how}; "
        f"at the end of its training episodes (last 20%) each agent nearest its pursued landmark in "
        f"{fmt(landmarks.get('reached_pursued'), '.1%')}, {fmt(landmarks.get('final_distance'))} from it on average"
    ]


def headline(landmarks: dict[str, Any] | None) -> dict[str, float | None]:
    return {"landmarks_distinct_fraction": landmarks["distinct_fraction"] if landmarks else None,
            "landmarks_reached_pursued": landmarks["reached_pursued"] if landmarks else None,
            "landmarks_complete_fraction": landmarks["complete_fraction"] if landmarks else None,
            "landmarks_decision_age_steps": landmarks["decision_age_steps_mean"] if landmarks else None}


# In a sweep's table: how often the agreement heard the whole team, and (talking in env steps)
# how many steps into its episode it landed. Under delay and loss these say whether the talk
# arrived at all, which the return alone does not.
REPORT = ReportSection(summarize=summarize, lines=lines, headline=headline, columns=(
    HeadlineColumn("landmarks_complete_fraction", "whole tables", ".0%"),
    HeadlineColumn("landmarks_decision_age_steps", "agreement age", ".3g"),
))
