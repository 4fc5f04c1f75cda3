"""What a run's report makes of the landmarks the env server found covered in its evaluations.

Where the env is simple_spread, every evaluation writes `eval/landmarks_covered` and
`eval/all_landmarks_covered` (env_server/evaluation.py), and the baselines the same for a random
and a scripted team on the same episodes (`eval/random_landmarks_covered`,
`eval/oracle_landmarks_covered`: env_server/baselines.py). `orchestrate report`
(orchestrator/report.py) adds this module's summary to the run's evaluation summary, its
headline numbers to the run's headline and its line after the evaluation's; the keys are the
ones this module gives, so the orchestrator reads no env's metric by name.

Plain Python, so the report reads it without importing the env server's numpy and PettingZoo.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

LAST_EVALUATIONS = 5  # the same last evaluations as the evaluation's return (`last5`)


def _mean(values: list[float]) -> float | None:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return statistics.fmean(finite) if finite else None


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, ".1%")


def _first(rows: list[dict[str, Any]], key: str) -> float | None:
    return next((row[key] for row in rows if key in row), None)


def summarize(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The env server's metrics rows -> the coverage over its last evaluations, and the random and
    scripted teams' (all None where the env counts no landmarks)."""
    covered = [row for row in rows if "eval/landmarks_covered" in row][-LAST_EVALUATIONS:]
    return {"covered_fraction": _mean([row["eval/landmarks_covered"] for row in covered]),
            "all_covered_fraction": _mean([row["eval/all_landmarks_covered"] for row in covered]),
            "random_covered": _first(rows, "eval/random_landmarks_covered"),
            "oracle_covered": _first(rows, "eval/oracle_landmarks_covered")}


def headline(evaluation: dict[str, Any] | None) -> dict[str, float | None]:
    """Its headline numbers, from the run's evaluation summary (None: the run did not evaluate)."""
    return {"eval_landmarks_covered": evaluation["covered_fraction"] if evaluation else None,
            "eval_all_landmarks_covered": evaluation["all_covered_fraction"] if evaluation else None}


def lines(evaluation: dict[str, Any] | None) -> list[str]:
    """What `orchestrate report` prints of it: one line, or none where the env counted no landmarks."""
    if not evaluation or evaluation.get("covered_fraction") is None:
        return []
    return [
        f"landmarks at the end of the greedy evaluation episodes (last 5 evaluations; covered: an agent within 0.1, "
        f"mpe2's occupied landmarks): {_percent(evaluation['covered_fraction'])} of landmarks covered, all covered in "
        f"{_percent(evaluation['all_covered_fraction'])} of episodes; random {_percent(evaluation.get('random_covered'))}, "
        f"scripted oracle {_percent(evaluation.get('oracle_covered'))} of landmarks on the same episodes"
    ]
