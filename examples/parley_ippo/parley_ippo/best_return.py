"""Best return: a capability of a user's own, with its config section, a check and a report section.

Every agent keeps the mean return of its last `window` training episodes and the best such mean
it has had, and writes both every `every_steps` lockstep steps (`best_return/window_mean`,
`best_return/best`). `orchestrate report` then prints, beside Parley's own sections, the best each
agent reached and the team's best, and a sweep aggregates the team's best as a headline number.

Everything Parley reads of it is in `CAPABILITY` at the bottom (agent_node/registry.py): its
settings' schema, its check against the rest of the run (`every_steps` must fit in `run.steps`,
or it would never write), the node-side part, and the report section. A run names it in its
`capabilities` list, by import path or, once this package is installed, by its entry point:

    capabilities:
      - kind: parley_ippo.best_return:CAPABILITY      # or `best_return`, once installed
        every_steps: 20
        window: 5

This module imports no torch: the orchestrator imports it to validate a config and to report.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from pydantic import Field

from agent_node.capability import Capability
from agent_node.registry import CapabilityConfig, CapabilityDescription, HeadlineColumn, ReportSection, fmt, settings


class BestReturnConfig(CapabilityConfig):
    # Lockstep steps between two records of the agent's window mean and best.
    every_steps: int = Field(50, ge=1)
    # Training episodes in the moving mean.
    window: int = Field(10, ge=1)


# ------------------------------------------------------------------ the agent's side


class BestReturn(Capability):
    """Sums each env copy's rewards into episode returns, keeps the last `window` of them, and
    writes their mean and the best mean so far every `every_steps` steps."""

    name = "best_return"

    def __init__(self, node: Any, config: BestReturnConfig) -> None:
        self.node, self.every_steps = node, config.every_steps
        self.running: dict[int, float] = {}  # env copy -> the return of its episode under way
        self.recent: deque[float] = deque(maxlen=config.window)
        self.best = float("-inf")

    def on_transition(self, message: Any, transition: Any) -> None:
        ended = np.asarray(transition.terminated, dtype=bool) | np.asarray(transition.truncated, dtype=bool)
        for copy, reward, end in zip(transition.copy_index.tolist(), np.asarray(transition.reward).tolist(), ended.tolist()):
            self.running[copy] = self.running.get(copy, 0.0) + float(reward)
            if end:
                self.recent.append(self.running.pop(copy))
                self.best = max(self.best, sum(self.recent) / len(self.recent))

    def after_observation(self, message: Any, now: float) -> None:
        if self.recent and message.step % self.every_steps == 0:
            self.node.write_metrics({"best_return/window_mean": sum(self.recent) / len(self.recent),
                                     "best_return/best": self.best})

    # Saved in the node's checkpoint: a restarted agent keeps its best.
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "recent": list(self.recent)}

    def load_state_dict(self, state: Any) -> None:
        self.best = float(state["best"])
        self.recent.extend(state["recent"])


def build(run: Any, node: Any) -> BestReturn | None:
    config = settings(run, CAPABILITY)
    return None if config is None else BestReturn(node, config)


# ------------------------------------------------------------------ the run's side


def problems(run: Any, topology: Any) -> list[str]:
    """Its settings against the rest of the run: a record interval longer than the run never writes."""
    config = settings(run, CAPABILITY)
    position = next(i for i, entry in enumerate(run.capabilities) if entry is config)
    if config.every_steps > run.run.steps:
        return [f"capabilities.{position}.every_steps: expected at most run.steps ({run.run.steps}), got "
                f"{config.every_steps}: the run would end before the first record"]
    return []


def summarize(metrics: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Each agent's last best (None when no agent wrote one: the run did not use it)."""
    best = {node: rows_best[-1] for node, rows in metrics.items()
            if (rows_best := [row["best_return/best"] for row in rows if "best_return/best" in row])}
    if not best:
        return None
    return {"best_by_agent": best, "team_best": max(best.values())}


def lines(summary: dict[str, Any]) -> list[str]:
    per_agent = ", ".join(f"{node} {fmt(value)}" for node, value in summary["best_by_agent"].items())
    return [f"best return (mean of an agent's recent episodes): team best {fmt(summary['team_best'])}; {per_agent}"]


def headline(summary: dict[str, Any] | None) -> dict[str, float | None]:
    return {"best_return_team": summary["team_best"] if summary else None}


CAPABILITY = CapabilityDescription(
    name="best_return",
    section="capabilities",
    config_model=BestReturnConfig,
    node_side="parley_ippo.best_return:build",
    problems=problems,
    summary=lambda run: f"best return every {settings(run, CAPABILITY).every_steps} steps",
    report=ReportSection(summarize=summarize, lines=lines, headline=headline,
                         columns=(HeadlineColumn("best_return_team", "best return", ".3g"),)),
)
