"""`orchestrate report RUN_DIR|SWEEP_DIR`: what a run (or every point of a sweep) did, as tables.

A run's record is its `events.jsonl` (the orchestrator's timeline) and each node's
`nodes/<id>/metrics.jsonl`; this module reads only those (and `resolved.yaml` for the name), so
it works on a finished run, a failed one, or one killed mid-way (a torn last line is skipped).

Per run:
- per agent: episodes, the last episode's return, the mean return over the last 20% of its
  episodes (at least one), the last step, steps/s (last step over the time since the run's
  `started` event), restarts (`restarted` events), "back after s" (per restart, from its `exited`
  event to the first metrics row the new process wrote; the mean) and faults that hit it; and
  for each fault that stopped it (a partition until its heal, a pause until its resume, a kill
  or restart until it is restarted) how long after the fault ended it acted again (a row past
  every step it had written) and learned again (a row with a learner loss), and which of its
  periodic metric rows (every `agents.metrics_every_steps`) are lost: missing, and not in a
  stretch of steps a fault kept it from seeing;
- per directed link: sent, delivered, dropped (from the sender's counters), the dropped fraction,
  and the message age p50/p99 the receiver measured (protocols/net/links.py, `LinkTable.metrics`:
  ages over its last window of messages). A node that restarted starts its counters at zero
  again, so its rows are split at its `restarted` events and each incarnation's last value added;
- consensus, if the agents ran it: sessions, rounds per session, disagreement (max distance to
  the neighbours) before the first and after the last round of each session (push-sum: its
  estimate from the pushes heard, see PushSumConsensus.metrics), rounds that missed a
  neighbour, and the time a session took;
- env-server restarts (its `env_server_resumed` events): the step each incarnation resumed
  at and how long the server was down, from the exit the orchestrator saw to the agents being
  told it is back;
- headline numbers, the same for every run, that a sweep aggregates (the table shows the main
  ones; `--json` has all, including each agent's first consensus session on its own, the one
  session every point of a sweep has from the same start).

Per sweep (a directory with `sweep.json`, made by `orchestrate sweep`): one row per point with
each headline number's mean ± sample std over the seeds whose runs may be scored (exit 0, the
budget done: orchestrator/run_records.py; the others listed with why), and with `--json` a 95%
Student-t interval when there are at least two; then every point against the first, paired by
seed on the evaluation return (else the training return): how many comparisons the sweep holds,
each difference with its t-interval and p-value, which survive Holm's correction over all of
them, and beside them each point's IQM with its stratified-bootstrap interval and the probability
of improvement (orchestrator/intervals.py: rliable's definitions).

Beside these (orchestrator/sweep_effects.py, where each figure is defined): a sweep's return
against each numeric axis of its grid with the no-talk, random and oracle levels and 95%
intervals, D50 per line (where half of what talking adds is lost) with a bootstrap interval,
and each crashed point's dip and recovery; a run's crash (dip, steps to recover) and the
default actions the env server played per agent (`env/default_actions/<agent>`).

Every `orchestrate up` writes its run's report when the run ends (`write_run_report`: the
summary and the timeline plot; a failure there is logged as a `report_failed` event and never
changes the run's exit code; after Ctrl-C only the summary, so that `up` returns at once).

`--save` (alias `--plot`) writes the same tables as Markdown into `<dir>/report/summary.md` and
draws PNGs there with matplotlib (a dependency of Parley; if it cannot be imported the plots are
skipped and the report says so): for a run, every agent's episode return and (with consensus)
its disagreement before and after each session over time, fault windows shaded; for a
sweep, the return, the disagreement after the first consensus session and that session's
duration against the first swept key, one line per value of the others.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from agent_node.plugins import PluginError
from agent_node.registry import CAPABILITIES, builtin_descriptions, fmt, mean_of
from env_server import coverage_report
from orchestrator.config import RESOLVED_FILENAME
from orchestrator.overrides import load_yaml
from orchestrator.intervals import holm, iqm_interval, paired_t_test, probability_of_improvement
from orchestrator.run_records import run_record
from orchestrator.rundir import EVENTS_FILENAME, NODE_METRICS_FILENAME, NODES_DIRNAME, find_run_dir, read_jsonl
from orchestrator import sweep_effects
from orchestrator.sweep import SWEEP_INDEX_FILENAME, names_point, read_index, recorded_summary, run_dir_of
from protocols.run.config_errors import ConfigError
from protocols.run.settings import ENV_NODE_ID

REPORT_DIRNAME = "report"
SWEEP_RECORD_FILENAME = "sweep_record.json"  # in a sweep's report/
LAST_FRACTION = 0.2  # "last 20%" of an agent's episodes
LINK_COUNTERS = ("sent", "delivered", "dropped", "dropped_loss", "dropped_queue", "dropped_partition", "duplicated", "bytes")

# The headline numbers of every run: (key, column title, format). A sweep aggregates these, and
# the columns of the capabilities' report sections (agent_node/registry.py), shown after
# steps/s; see `headline_columns`.
HEADLINE = (
    ("return_last20", "return last20%", ".3g"),
    ("return_final", "final return", ".3g"),
    ("steps_per_s", "steps/s", ".3g"),
    ("peer_dropped_fraction", "peer drop", ".1%"),
    ("peer_age_p99_ms", "peer p99 ms", ".3g"),
    ("restarts", "restarts", "g"),
    ("recovery_s", "back after s", ".3g"),
    ("faults", "faults", "g"),
    # a realtime clock's (env.clock: realtime): the share of the agents' actions that came late
    # for their step, and the mean age in steps of the actions played
    ("late_action_share", "late actions", ".1%"),
    ("action_age_mean", "action age", ".3g"),
    # links that follow positions (topology.kind: proximity): the team's graph, its mean edges
    # (with several env copies: of the copies' union, and each copy's own), the share of metric
    # periods it was one component throughout, and how often a neighbour left or came into range
    # (`_proximity_summary`)
    ("graph_edges_mean", "graph edges", ".3g"),
    ("graph_copy_edges_mean", "edges per copy", ".3g"),
    ("graph_connected_share", "one component", ".0%"),
    ("graph_range_changes", "range changes", ".4g"),
)


def headline_columns() -> list[tuple[str, str, str]]:
    """HEADLINE with the columns of Parley's own capabilities' report sections after steps/s."""
    capability_columns = [(column.key, column.title, column.format) for description in builtin_descriptions()
                          if description.report for column in description.report.columns]
    return [*HEADLINE[:3], *capability_columns, *HEADLINE[3:]]


# ------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------


_mean = mean_of


def _cumulative(rows: list[dict[str, Any]], key: str, restarted_at: list[float]) -> float | None:
    """The total of a counter over a node's incarnations: a restarted node counts from zero
    again, so the last value of each incarnation (split at its `restarted` events) is summed."""
    last_by_incarnation: dict[int, float] = {}
    for row in rows:
        if key in row:
            incarnation = sum(1 for t in restarted_at if t <= row.get("t", 0.0))
            last_by_incarnation[incarnation] = row[key]
    return sum(last_by_incarnation.values()) if last_by_incarnation else None


def fault_targets(event: dict[str, Any]) -> set[str]:
    """The nodes a `fault` event aimed at: a network fault's `targets` (or its partition's
    `groups`), since its `nodes` are every node it was sent to; a signal's `nodes` it hit."""
    if event.get("targets"):
        return set(event["targets"])
    if event.get("groups"):
        return {node for group in event["groups"] for node in group}
    return set(event.get("nodes") or {})


def _recoveries(node: str, rows: list[dict[str, Any]], events: list[dict]) -> list[float]:
    """Per restart of `node`: seconds from its exit (the `exited` event before the `restarted`
    one) to the first metrics row it wrote after the restart: down to working again."""
    seconds = []
    for position, event in enumerate(events):
        if event.get("event") != "restarted" or event.get("node") != node:
            continue
        exits = [e["t"] for e in events[:position] if e.get("event") == "exited" and e.get("node") == node]
        back = next((row["t"] for row in rows if row.get("t", 0.0) > event["t"]), None)
        if exits and back is not None:
            seconds.append(back - exits[-1])
    return seconds


# The faults that stop an agent acting, and the events that end that on the node they hit: a
# partition until a heal that touches it, a pause until a resume (or a restart), a kill or
# restart until the node's `restarted` event.
INTERRUPTING_FAULTS = {"partition": ("heal",), "pause": ("resume",), "kill": (), "restart": ()}


def interruptions(node: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fault that stopped `node` acting: kind, schedule position, start and end (unix time;
    end None when nothing ended it before the run did)."""
    found = []
    for position, event in enumerate(events):
        if event.get("event") != "fault" or event.get("kind") not in INTERRUPTING_FAULTS or node not in fault_targets(event):
            continue
        end = None
        for later in events[position + 1:]:
            undone = (later.get("event") == "fault" and later.get("kind") in INTERRUPTING_FAULTS[event["kind"]]
                      and node in fault_targets(later))  # fmt: skip
            if undone or (later.get("event") == "restarted" and later.get("node") == node):
                end = later["t"]
                break
        found.append({"kind": event["kind"], "position": event.get("position"), "start": event["t"], "end": end})
    return found


def _is_learner_loss(key: str) -> bool:
    """A learner's loss (`dqn/loss`, `sac/critic_loss`), not a link counter (`link/.../dropped_loss`)."""
    return key.endswith("loss") and not key.startswith("link/")


def _back_after(rows: list[dict[str, Any]], end: float) -> tuple[float | None, float | None]:
    """Seconds from `end` (a heal, resume or restart) to the agent acting again (its first row
    whose step is past every step it wrote before `end`) and learning again (its first row
    after `end` that carries a learner loss: the mean over the updates since its previous
    such row, written every `agents.metrics_every_steps`)."""
    before = max((row["step"] for row in rows if row.get("t", 0.0) < end and isinstance(row.get("step"), (int, float))), default=-1)
    after = [row for row in rows if row.get("t", 0.0) >= end]
    acting = next((row["t"] - end for row in after if isinstance(row.get("step"), (int, float)) and row["step"] > before), None)
    learning = next((row["t"] - end for row in after if any(_is_learner_loss(key) for key in row)), None)
    return acting, learning


def missing_metric_rows(rows: list[dict[str, Any]], every: int, windows: list[dict[str, Any]]) -> list[int]:
    """The periodic rows lost. An agent writes a row at every step it sees that is a multiple of
    `agents.metrics_every_steps` (its learner means and link counters), so between its first
    and last step each multiple has a row, except for the steps it did not see because a fault
    stopped it: a multiple above the last step it wrote before an interruption started and
    below the first step it wrote acting again after the interruption ended (or any step
    after, if nothing ended it). Any other missing multiple is a row lost."""
    stepped = [(row["step"], row["t"]) for row in rows
               if isinstance(row.get("step"), (int, float)) and isinstance(row.get("t"), (int, float))]  # fmt: skip
    if not stepped:
        return []
    gaps = []  # (last step before, first step acting again after) per interruption
    for window in windows:
        before = max((step for step, t in stepped if t < window["start"]), default=-1)
        if window["end"] is None:
            gaps.append((before, math.inf))
            continue
        seen = max((step for step, t in stepped if t < window["end"]), default=-1)
        acting_again = min(((t, step) for step, t in stepped if t >= window["end"] and step > seen), default=None)
        gaps.append((before, math.inf if acting_again is None else acting_again[1]))
    have = {step for step, _ in stepped}
    lowest, highest = min(have), max(have)
    first = math.ceil(lowest / every) * every
    return [step for step in range(int(first), int(highest) + 1, every)
            if step not in have and not any(low < step < high for low, high in gaps)]  # fmt: skip


def _agent_summary(node: str, rows: list[dict[str, Any]], started_t: float | None, events: list[dict],
                   metrics_every: int) -> dict[str, Any]:
    returns = [row["env/episode_return"] for row in rows if "env/episode_return" in row]
    last_n = max(1, math.ceil(LAST_FRACTION * len(returns))) if returns else 0
    steps = max((row["step"] for row in rows if isinstance(row.get("step"), (int, float))), default=None)
    last_t = max((row["t"] for row in rows if isinstance(row.get("t"), (int, float))), default=None)
    first_t = started_t if started_t is not None else min((row["t"] for row in rows if "t" in row), default=None)
    elapsed = (last_t - first_t) if last_t is not None and first_t is not None else None
    faults = [e for e in events if e.get("event") == "fault" and node in fault_targets(e)]
    windows = interruptions(node, events)
    for window in windows:
        window["acting_after_s"], window["learning_after_s"] = _back_after(rows, window["end"]) if window["end"] else (None, None)
    acting = [w["acting_after_s"] for w in windows if w["end"] is not None]
    learning = [w["learning_after_s"] for w in windows if w["end"] is not None]
    return {
        "recovery_s": _mean(_recoveries(node, rows, events)),
        "episodes": len(returns),
        "return_final": returns[-1] if returns else None,
        "return_last20": _mean(returns[-last_n:]) if returns else None,
        "steps": steps,
        "steps_per_s": steps / elapsed if steps and elapsed and elapsed > 0 else None,
        "restarts": sum(1 for e in events if e.get("event") == "restarted" and e.get("node") == node),
        "faults": len(faults),
        # After each fault that stopped it (see `interruptions`): the longest time to acting and
        # to learning again (None: nothing ended such a fault, or it never acted again: see
        # "interruptions"), and the periodic metric rows lost (see `missing_metric_rows`).
        "interruptions": windows,
        "back_after_fault_s": None if None in acting else max(acting, default=None),
        "learning_after_fault_s": None if None in learning else max(learning, default=None),
        "metric_rows_lost": missing_metric_rows(rows, metrics_every, windows),
        # run.reproducible: what made this agent's run depend on timing (agent_node/node.py
        # writes `reproducibility/<cause>` once per cause); empty when nothing did.
        "reproducibility_broken_by": sorted(
            {key.split("/", 1)[1] for row in rows for key in row if key.startswith("reproducibility/")} - {"broken"}
        ),
        # Restarts that fell back to an older generation of a damaged saved state (agent_node/persistence.py).
        "state_damaged": [e["what"] for e in events if e.get("event") == "state_damaged" and e.get("node") == node],
    }


def _link_summaries(metrics: dict[str, list[dict[str, Any]]], events: list[dict]) -> dict[str, dict[str, Any]]:
    links: dict[str, dict[str, Any]] = {}
    for node, rows in metrics.items():
        restarted_at = [e["t"] for e in events if e.get("event") == "restarted" and e.get("node") == node]
        keys = {key for row in rows for key in row if key.startswith("link/")}
        for key in keys:
            _, link, counter = key.split("/", 2)
            source, _, destination = link.partition("_to_")
            entry = links.setdefault(link, {"src": source, "dst": destination})
            if counter in LINK_COUNTERS and source == node:
                entry[counter] = _cumulative(rows, key, restarted_at)
            elif counter in ("age_p50_ms", "age_p99_ms") and destination == node:
                entry[counter] = next((row[key] for row in reversed(rows) if key in row), None)
    for entry in links.values():
        sent = entry.get("sent")
        entry["dropped_fraction"] = entry.get("dropped", 0.0) / sent if sent else None
    return dict(sorted(links.items()))


def _evaluation_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The env server's greedy evaluations (`eval/return_mean`, per agent per episode), the
    random and oracle lines it measured on the same episodes (env_server/baselines.py), and where
    the env counts them the landmarks covered (env_server/coverage_report.py)."""
    curve = [(row["step"], row["eval/return_mean"]) for row in rows if "eval/return_mean" in row]
    if not curve:
        return None
    random_line = next((row["eval/random_return_mean"] for row in rows if "eval/random_return_mean" in row), None)
    oracle_line = next((row["eval/oracle_return_mean"] for row in rows if "eval/oracle_return_mean" in row), None)
    last5 = _mean([value for _, value in curve[-5:]])
    # Episodes per evaluation (env.eval_episodes: distinct starts, the same at every evaluation).
    episodes = next((int(row["eval/episodes"]) for row in reversed(rows) if "eval/episodes" in row), None)
    gap_closed = None
    if random_line is not None and oracle_line is not None and oracle_line != random_line:
        gap_closed = (last5 - random_line) / (oracle_line - random_line)
    return {"curve": curve, "first": curve[0][1], "last5": last5, "evaluations": len(curve), "episodes": episodes,
            "random": random_line, "oracle": oracle_line, "gap_closed": gap_closed,
            **coverage_report.summarize(rows)}


def _default_actions(rows: list[dict[str, Any]], events: list[dict]) -> dict[str, float | None]:
    """The default actions the env server played for each agent (`env/default_actions/<agent>`:
    a dead, paused or late agent's), counted from zero by each env-server incarnation like the
    link counters, so the last value of each is added. {} for a run whose server wrote none."""
    restarted_at = [e["t"] for e in events if e.get("event") == "restarted" and e.get("node") == ENV_NODE_ID]
    keys = sorted({key for row in rows for key in row if key.startswith(sweep_effects.DEFAULT_ACTIONS_PREFIX)})
    return {key.removeprefix(sweep_effects.DEFAULT_ACTIONS_PREFIX): _cumulative(rows, key, restarted_at) for key in keys}


LATE_ACTIONS_PREFIX = "env/late_actions/"


def _realtime_summary(rows: list[dict[str, Any]], events: list[dict]) -> dict[str, Any] | None:
    """A realtime training clock's toll per agent (env_server/pacing.py): its actions that came
    late for their step (`env/late_actions/<agent>`, counted from zero by each env-server
    incarnation, so the last value of each is added), their share of the training steps, and the
    age in steps of the actions played (`env/action_age_steps/<agent>`, a mean per status period,
    averaged here over the periods; `.../action_age_steps_max/<agent>`, the largest). None for a
    lockstep run."""
    agents = sorted({key.removeprefix(LATE_ACTIONS_PREFIX) for row in rows for key in row if key.startswith(LATE_ACTIONS_PREFIX)})
    if not agents:
        return None
    restarted_at = [e["t"] for e in events if e.get("event") == "restarted" and e.get("node") == ENV_NODE_ID]
    steps = max((row["step"] for row in rows if LATE_ACTIONS_PREFIX + agents[0] in row), default=0)
    per_agent = {}
    for agent in agents:
        late = _cumulative(rows, LATE_ACTIONS_PREFIX + agent, restarted_at) or 0.0
        per_agent[agent] = {
            "late": late,
            "late_share": late / steps if steps else None,
            "age_mean": _mean([row[f"env/action_age_steps/{agent}"] for row in rows if f"env/action_age_steps/{agent}" in row]),
            "age_max": _max_or_none([row[f"env/action_age_steps_max/{agent}"] for row in rows
                                     if f"env/action_age_steps_max/{agent}" in row]),
        }
    return {"steps": steps, "agents": per_agent,
            "late_share": _mean([entry["late_share"] for entry in per_agent.values()]),
            "age_mean": _mean([entry["age_mean"] for entry in per_agent.values()])}


def realtime_lines(summary: dict[str, Any]) -> list[str]:
    realtime = summary.get("realtime")
    if not realtime:
        return []
    counts = ", ".join(f"{agent} {_fmt(entry['late'], 'g')} ({_fmt(entry['late_share'], '.0%')}, age mean "
                       f"{_fmt(entry['age_mean'], '.2g')}, max {_fmt(entry['age_max'], 'g')})"
                       for agent, entry in realtime["agents"].items())
    return [f"realtime clock: actions late for their step over {_fmt(realtime['steps'], 'g')} training steps "
            f"(share; age in steps of the actions played): {counts}"]


def _peer_traffic(metrics: dict[str, list[dict[str, Any]]], events: list[dict]) -> dict[str, dict[str, float]]:
    """Messages and bytes each agent sent to each neighbour (`peer/<neighbour>/sent`,
    `peer/<neighbour>/bytes_sent`, cumulative per incarnation), per directed edge."""
    edges: dict[str, dict[str, float]] = {}
    for node, rows in metrics.items():
        restarted_at = [e["t"] for e in events if e.get("event") == "restarted" and e.get("node") == node]
        for key in sorted({key for row in rows for key in row if key.startswith("peer/")}):
            _, neighbour, counter = key.split("/", 2)
            edges.setdefault(f"{node} -> {neighbour}", {})[counter] = _cumulative(rows, key, restarted_at)
    return edges


def _proximity_summary(metrics: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Links that follow positions (topology.kind: proximity): the team's graph over the run.
    Every agent writes the same team graph (`proximity/edges`, `proximity/components`, means over
    its metrics periods, agent_node/step_talk.py); the series is the first agent's that has it.
    With several env copies that graph is the union of the copies' graphs, and each copy's own
    (`proximity/edges_per_copy`) and the copies cut out of messages are summed up beside it.
    None for a run whose links do not follow positions."""
    series = next(([[row["step"], row["proximity/edges"], row["proximity/components"]] for row in metrics[node]
                    if "proximity/edges" in row] for node in sorted(metrics)
                   if any("proximity/edges" in row for row in metrics[node])), None)
    if not series:
        return None
    last = {node: next((row for row in reversed(rows) if "proximity/range_changes" in row), {}) for node, rows in metrics.items()}

    def counted(suffix: str) -> float:  # a counter of every agent's links, at its last flush
        return sum(v for row in last.values() for k, v in row.items() if k.startswith("talk/") and k.endswith(suffix))

    per_copy = next(([row["proximity/edges_per_copy"] for row in metrics[node] if "proximity/edges_per_copy" in row]
                     for node in sorted(metrics) if any("proximity/edges_per_copy" in row for row in metrics[node])), [])
    copies = {"edges_per_copy_mean": _mean(per_copy), "copies_cut": counted("/copies_cut")} if per_copy else {}
    return {
        **copies,
        "series": series,  # [step, mean edges, mean components] per metrics period
        "edges_mean": _mean([edges for _, edges, _ in series]),
        "components_mean": _mean([components for _, _, components in series]),
        # periods in which the team was one component at every step (a mean of exactly 1)
        "connected_fraction": sum(components == 1.0 for _, _, components in series) / len(series),
        "range_changes": sum(row.get("proximity/range_changes", 0.0) for row in last.values()),
        "dropped_range": counted("/dropped_range"),
        "dropped_path_loss": counted("/dropped_path_loss"),
    }


def proximity_lines(summary: dict[str, Any]) -> list[str]:
    graph = summary.get("proximity")
    if not graph:
        return []
    return [f"links from positions (topology proximity): the team's graph had {_fmt(graph['edges_mean'], '.3g')} edges and "
            f"{_fmt(graph['components_mean'], '.3g')} connected components on average (means of {len(graph['series'])} metric "
            f"periods), one component throughout {_fmt(graph['connected_fraction'], '.0%')} of them; neighbours left the "
            f"range or came back {_fmt(graph['range_changes'], 'g')} times (summed over agents); messages dropped out of range "
            f"{_fmt(graph['dropped_range'], 'g')}, by path loss {_fmt(graph['dropped_path_loss'], 'g')} "
            f"(over time: report/proximity_graph.png)"
            + (f"; with several env copies that graph is their union, each copy's own had "
               f"{_fmt(graph['edges_per_copy_mean'], '.3g')} edges on average, and {_fmt(graph['copies_cut'], 'g')} copies "
               f"were cut out of messages about copies" if "edges_per_copy_mean" in graph else "")]


def _max_or_none(values: list[float | None]) -> float | None:
    """The largest, or None if any is None (an agent that never came back) or there are none."""
    return None if not values or None in values else max(values)


def _metrics_every_steps(run_dir: Path) -> int:
    """`agents.metrics_every_steps` of the run: its resolved.yaml's agents section validated by the
    schema the nodes use (`AgentsConfig`), which also holds the default for a run dir whose
    resolved.yaml has no agents section or cannot be read (a partial or foreign one)."""
    from pydantic import ValidationError

    from agent_node.config import AgentsConfig
    from orchestrator.config import read_yaml

    default = AgentsConfig.model_fields["metrics_every_steps"].default
    try:
        resolved = read_yaml(run_dir / RESOLVED_FILENAME)
        if not isinstance(resolved, dict) or "agents" not in resolved:
            return default
        return AgentsConfig.model_validate(resolved["agents"]).metrics_every_steps
    except (ConfigError, ValidationError):
        return default


def run_capabilities(run_dir: Path) -> tuple[list[Any], list[tuple[str, str]], list[str]]:
    """The run's capabilities whose report sections the report shows (agent_node/registry.py):
    Parley's own, then a user's that its resolved.yaml lists; `(kind, why)` for a user's that
    cannot be imported here (its package is not on this machine's path); and the user's kinds."""
    from orchestrator.config import read_yaml

    descriptions, unreadable, kinds = builtin_descriptions(), [], []
    try:
        resolved = read_yaml(run_dir / RESOLVED_FILENAME)
    except ConfigError:
        return descriptions, unreadable, kinds
    listed = resolved.get("capabilities") if isinstance(resolved, dict) else None
    for entry in listed if isinstance(listed, list) else []:
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if not isinstance(kind, str):
            continue
        try:
            descriptions.append(CAPABILITIES.describe(kind))
            kinds.append(kind)
        except PluginError as error:
            unreadable.append((kind, str(error)))
    return descriptions, unreadable, kinds


def summarize_run(path: str | Path) -> dict[str, Any]:
    """Everything `report` shows for one run, as JSON-ready data."""
    run_dir = find_run_dir(path)
    events = read_jsonl(run_dir / EVENTS_FILENAME)
    nodes_dir = run_dir / NODES_DIRNAME
    node_ids = sorted(p.name for p in nodes_dir.iterdir() if p.is_dir()) if nodes_dir.is_dir() else []
    metrics = {node: read_jsonl(nodes_dir / node / NODE_METRICS_FILENAME) for node in node_ids}
    launched = next((e["t"] for e in events if e.get("event") == "run_started"), None)
    started = next((e["t"] for e in events if e.get("event") == "started"), None)
    finished = next((e for e in reversed(events) if e.get("event") == "run_finished"), None)
    metrics_every = _metrics_every_steps(run_dir)
    agents = {node: _agent_summary(node, rows, started, events, metrics_every) for node, rows in metrics.items() if node != ENV_NODE_ID}
    links = _link_summaries(metrics, events)
    evaluation = _evaluation_summary(metrics.get(ENV_NODE_ID, []))
    # a crash's dip and recovery, and the env's default actions (orchestrator/sweep_effects.py)
    crash = sweep_effects.crash_recovery(metrics.get(ENV_NODE_ID, []), events, evaluation["random"] if evaluation else None)
    default_actions = _default_actions(metrics.get(ENV_NODE_ID, []), events)
    realtime = _realtime_summary(metrics.get(ENV_NODE_ID, []), events)
    # Each capability's own section (agent_node/registry.py), under its name.
    descriptions, unreadable, kinds = run_capabilities(run_dir)
    sections = {d.name: d.report.summarize({node: rows for node, rows in metrics.items() if node != ENV_NODE_ID})
                for d in descriptions if d.report is not None}
    traffic = _peer_traffic({node: rows for node, rows in metrics.items() if node != ENV_NODE_ID}, events)
    proximity = _proximity_summary({node: rows for node, rows in metrics.items() if node != ENV_NODE_ID})
    # run_s / step: when it fired on both clocks (older runs' events have only at_s)
    faults = [{"kind": e.get("kind"), "at_s": e.get("at_s"), "at_step": e.get("at_step"),
               "run_s": e.get("run_s", e["t"] - started if started is not None else None), "step": e.get("step"),
               "nodes": sorted(fault_targets(e)), "skipped": e.get("skipped") or []}
              for e in events if e.get("event") == "fault"]  # fmt: skip
    # Every node that met damaged saved state (agents, learner, env server, supervisor): fell back
    # to an older generation, or started from scratch (run.on_corrupt_state: start_fresh).
    state_damaged = [{"node": e.get("node"), "what": e.get("what"), "started_fresh": bool(e.get("started_fresh"))}
                     for e in events if e.get("event") == "state_damaged"]
    env_restarts = [{"run_s": e["t"] - started if started is not None else None, "step": e.get("step"),
                     "downtime_s": e.get("downtime_s")} for e in events if e.get("event") == "env_server_resumed"]
    peer = [entry for entry in links.values() if ENV_NODE_ID not in (entry["src"], entry["dst"])]
    peer_sent = sum(entry.get("sent") or 0.0 for entry in peer)
    ages = [entry["age_p99_ms"] for entry in peer if entry.get("age_p99_ms") is not None]
    headline = {
        "return_last20": _mean([a["return_last20"] for a in agents.values()]),
        "return_final": _mean([a["return_final"] for a in agents.values()]),
        "steps_per_s": _mean([a["steps_per_s"] for a in agents.values()]),
        "peer_dropped_fraction": sum(entry.get("dropped") or 0.0 for entry in peer) / peer_sent if peer_sent else None,
        "peer_age_p99_ms": max(ages) if ages else None,
        "restarts": float(sum(a["restarts"] for a in agents.values())),
        "recovery_s": _mean([a["recovery_s"] for a in agents.values()]),
        "faults": float(len(faults)),
        "back_after_fault_s": _max_or_none([a["back_after_fault_s"] for a in agents.values() if a["interruptions"]]),
        "learning_after_fault_s": _max_or_none([a["learning_after_fault_s"] for a in agents.values() if a["interruptions"]]),
        "metric_rows_lost": float(sum(len(a["metric_rows_lost"]) for a in agents.values())),
        "reproducibility_broken": float(any(a["reproducibility_broken_by"] for a in agents.values())),
        # Nodes that found no good saved state and started from scratch (run.on_corrupt_state).
        "state_started_fresh": float(sum(d["started_fresh"] for d in state_damaged)),
        "eval_return_first": evaluation["first"] if evaluation else None,
        "eval_return_last5": evaluation["last5"] if evaluation else None,
        "eval_random": evaluation["random"] if evaluation else None,
        "eval_oracle": evaluation["oracle"] if evaluation else None,
        "eval_gap_closed": evaluation["gap_closed"] if evaluation else None,
        **coverage_report.headline(evaluation),
        "default_actions": sweep_effects.default_actions_total(default_actions),
        "late_action_share": realtime["late_share"] if realtime else None,
        "action_age_mean": realtime["age_mean"] if realtime else None,
        "graph_edges_mean": proximity["edges_mean"] if proximity else None,
        "graph_copy_edges_mean": proximity.get("edges_per_copy_mean") if proximity else None,
        "graph_connected_share": proximity["connected_fraction"] if proximity else None,
        "graph_range_changes": proximity["range_changes"] if proximity else None,
        **sweep_effects.crash_headline(crash),
        **{key: value for d in descriptions if d.report is not None for key, value in d.report.headline(sections[d.name]).items()},
    }
    return {
        "run_dir": str(run_dir),
        "name": run_dir.name,
        "exit_code": finished.get("exit_code") if finished else None,
        "reason": finished.get("reason") if finished else "no run_finished event (still running, or the orchestrator was killed)",
        "duration_s": (finished["t"] - started) if finished and started is not None else None,
        # From `orchestrate up`'s start to every node ready (launching, the zygote, joining the env)
        "launch_s": (started - launched) if started is not None and launched is not None else None,
        "agents": agents,
        "links": links,
        "evaluation": evaluation,
        **sections,
        # the capabilities whose sections are above, and a user's that this process cannot import
        "capabilities": [d.name for d in descriptions if d.report is not None],
        "capability_kinds": kinds,
        "capabilities_unreadable": unreadable,
        "peer_traffic": traffic,
        "proximity": proximity,
        "faults": faults,
        "env_restarts": env_restarts,
        "state_damaged": state_damaged,
        "crash": crash,
        "default_actions": default_actions,
        "realtime": realtime,
        "headline": headline,
    }


# ------------------------------------------------------------------------------------------
# A sweep
# ------------------------------------------------------------------------------------------


# What a point none of whose runs finished has for any number (a sweep still running, or stopped).
NO_AGGREGATE: dict[str, Any] = {"mean": None, "std": None, "n": 0}


def _aggregate(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"n": 0, "mean": None, "std": None, "ci95": None, "min": None, "max": None}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    ci95 = None
    if len(values) > 1:
        from scipy import stats  # a Student-t interval over seeds, not a hand-rolled one

        half = float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
        ci95 = [mean - half, mean + half]
    return {"n": len(values), "mean": mean, "std": std, "ci95": ci95, "min": min(values), "max": max(values)}


def summarize_sweep(sweep_dir: str | Path, against: str | None = None) -> dict[str, Any]:
    """Every point of a sweep over its seeds. A run counts in a point's numbers only when the
    shared rule accepts it (orchestrator/run_records.py: exit 0, its budget done); the others are
    listed with why (`refused`). The points are compared with `against` (a point's name, or its
    `pNN` prefix), by default the first."""
    sweep_dir = Path(sweep_dir)
    index = read_index(sweep_dir)
    points: dict[str, dict[str, Any]] = {}
    for run in index["runs"]:
        point = points.setdefault(run["point"], {"point": run["point"], "grid_values": run["grid_values"], "runs": [],
                                                 # how the effects read it (a sweep from before points: its grid values)
                                                 "coordinates": run.get("coordinates", run["grid_values"]),
                                                 "line": run.get("line"), "role": run.get("role")})  # fmt: skip
        run_dir = run_dir_of(sweep_dir, run)
        if (run_dir / RESOLVED_FILENAME).exists():
            headline, record = summarize_run(run_dir)["headline"], run_record(run_dir, run["exit_code"])
        else:  # merged from a sweep record: the numbers came with the run (or it never started)
            recorded = recorded_summary(run)
            headline, record = recorded["headline"], recorded["record"]
        refused = record["refused"] if record else f"no run directory (the sweep says {run['status']})"
        point["runs"].append({"seed": run["seed"], "status": run["status"], "exit_code": run["exit_code"],
                              "run_dir": str(run_dir), "refused": refused, "record": record,
                              "headline": headline})  # fmt: skip
    rows = []
    for point in points.values():
        scored = [r for r in point["runs"] if r["headline"] is not None and r["refused"] is None]
        point["ok"] = len(scored)
        keys = list(scored[0]["headline"]) if scored else [key for key, _, _ in headline_columns()]
        point["metrics"] = {key: _aggregate([r["headline"][key] for r in scored]) for key in keys}
        rows.append(point)
    commits = sorted({run["record"]["git_commit"] or "?" for point in rows for run in point["runs"] if run["record"]})
    return {"sweep_dir": str(sweep_dir), "sweep": index["sweep"], "base_config": index["base_config"],
            "grid": index["grid"], "seeds": index["seeds"], "state": index["state"], "points": rows,
            "commits": commits, "merged_from": index.get("merged_from"),
            "comparisons": compare_points(rows, against),
            "effects": sweep_effects.summarize_effects(rows, index["grid"])}  # fmt: skip


def sweep_record(sweep_dir: str | Path, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sweep's index with each run's numbers in it (`summary`: `record`, what may be scored
    and which build made it, orchestrator/run_records.py; `headline`, the report's numbers; and
    `eval_episodes`, the evaluation's size, which the returns' convention needs): what
    `orchestrate sweep --merge` needs of a sweep whose run directories are gone, so seeds or
    points run later, elsewhere, join the ones recorded here. `report SWEEP --save` writes it.
    `summary` is the sweep's `summarize_sweep`, when the caller has it already."""
    sweep_dir = Path(sweep_dir)
    summary = summary if summary is not None else summarize_sweep(sweep_dir)
    scored = {(point["point"], run["seed"]): run for point in summary["points"] for run in point["runs"]}
    index = read_index(sweep_dir)
    runs = []
    for run in index["runs"]:
        resolved = run_dir_of(sweep_dir, run) / RESOLVED_FILENAME
        if resolved.exists():
            env = (load_yaml(resolved.read_text()) or {}).get("env") or {}
            numbers = scored[(run["point"], run["seed"])]
            run_summary = {"record": numbers["record"], "headline": numbers["headline"], "eval_episodes": env.get("eval_episodes")}
        else:  # (merged from a record, or never started: what the index holds)
            run_summary = recorded_summary(run)
        runs.append({**run, "summary": run_summary})
    return {**index, "runs": runs}


# The number a sweep's points are compared on: the greedy evaluation where the runs have one,
# else the agents' training return.
COMPARED_METRICS = ("eval_return_last5", "return_last20")
HOLM_ALPHA = 0.05


def _scores_by_seed(point: dict[str, Any], metric: str) -> dict[int, float]:
    return {r["seed"]: r["headline"][metric] for r in point["runs"]
            if r["refused"] is None and r["headline"] is not None and r["headline"].get(metric) is not None
            and math.isfinite(r["headline"][metric])}


def compare_points(points: list[dict[str, Any]], against: str | None = None) -> dict[str, Any] | None:
    """Every point of a sweep against one: `against` (a point's name, as `names_point` takes it), by
    default its first (the grid's first value of every key: in the shipped sweeps the point
    without the fault), on one metric (COMPARED_METRICS), paired by seed:
    the mean difference with its 95% t-interval and p-value, which differences Holm's correction
    for all of them keeps at HOLM_ALPHA, and beside them the field's protocol
    (orchestrator/intervals.py, rliable's definitions): each point's IQM with its
    stratified-bootstrap 95% interval and P(a run of the point beats a run of the first). None for a sweep of one point or with no metric on its first point."""
    if len(points) < 2:
        return None
    baseline = points[0] if against is None else next(
        (point for point in points if names_point(against, point["point"])), None)
    if baseline is None:
        raise ConfigError([f"--against: expected a point of the sweep ({', '.join(p['point'] for p in points)}), got {against!r}"])
    metric = next((m for m in COMPARED_METRICS if _scores_by_seed(baseline, m)), None)
    if metric is None:
        return None
    base = _scores_by_seed(baseline, metric)
    rows = []
    for point in points:
        scores = _scores_by_seed(point, metric)
        row: dict[str, Any] = {"point": point["point"], "n": len(scores)}
        if scores:
            row["iqm"], low, high = iqm_interval(list(scores.values()))
            row["iqm_ci95"] = [low, high]
        if point is not baseline:
            seeds = sorted(set(base) & set(scores))
            mean, half, p_value = paired_t_test([scores[s] - base[s] for s in seeds])
            row.update(seeds=seeds, difference=mean, difference_ci95=[mean - half, mean + half] if seeds else None,
                       p_value=p_value)
            if seeds:
                row["probability_of_improvement"], low, high = probability_of_improvement(
                    [scores[s] for s in seeds], [base[s] for s in seeds])
                row["poi_ci95"] = [low, high]
        rows.append(row)
    compared = [row for row in rows if "p_value" in row]
    for row, kept in zip(compared, holm([row["p_value"] for row in compared], HOLM_ALPHA)):
        row["survives_holm"] = kept
    return {"metric": metric, "baseline": baseline["point"], "count": len(compared), "alpha": HOLM_ALPHA, "rows": rows}


# ------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------


_fmt = fmt


def _table(title: str, markdown: bool):
    """A rich table; for summary.md a Markdown one, its title as a heading line instead."""
    from rich import box
    from rich.table import Table

    return Table(title=None if markdown else title, box=box.MARKDOWN if markdown else box.HEAVY_HEAD)


def _print_table(console, table, title: str, markdown: bool) -> None:
    if markdown:
        console.print(f"\n### {title}\n")
    console.print(table)


def render_run(summary: dict[str, Any], console, markdown: bool = False) -> None:

    console.print(f"{summary['run_dir']}: exit {summary['exit_code']} ({summary['reason']})"
                  + (f", {summary['duration_s']:.1f} s after start" if summary["duration_s"] is not None else ""))  # fmt: skip
    for damaged in summary.get("state_damaged", []):  # at the top: the run is not what its config says
        if damaged["started_fresh"]:
            console.print(f"{damaged['node']}: STARTED FROM SCRATCH OVER DAMAGED SAVED STATE: {damaged['what']}")
        else:
            console.print(f"{damaged['node']}: RESTORED OLDER SAVED STATE: {damaged['what']}")
    agents = _table("agents", markdown)
    for column in ("agent", "episodes", "final return", "return last 20%", "steps", "steps/s", "restarts", "back after s",
                   "faults"):  # fmt: skip
        agents.add_column(column, justify="left" if column == "agent" else "right")
    for node, a in summary["agents"].items():
        agents.add_row(node, str(a["episodes"]), _fmt(a["return_final"]), _fmt(a["return_last20"]), _fmt(a["steps"], "g"),
                       _fmt(a["steps_per_s"]), str(a["restarts"]), _fmt(a["recovery_s"]), str(a["faults"]))  # fmt: skip
    _print_table(console, agents, "agents", markdown)
    if summary["links"]:
        title = "links (counters from the sender, ages measured by the receiver)"
        links = _table(title, markdown)
        for column in ("link", "sent", "delivered", "dropped", "drop %", "age p50 ms", "age p99 ms"):
            links.add_column(column, justify="left" if column == "link" else "right")
        for name, entry in summary["links"].items():
            links.add_row(name.replace("_to_", " -> "), _fmt(entry.get("sent"), "g"), _fmt(entry.get("delivered"), "g"),
                          _fmt(entry.get("dropped"), "g"), _fmt(entry.get("dropped_fraction"), ".1%"),
                          _fmt(entry.get("age_p50_ms"), ".3g"), _fmt(entry.get("age_p99_ms"), ".3g"))  # fmt: skip
        _print_table(console, links, title, markdown)
    for line in evaluation_lines(summary) + coverage_report.lines(summary.get("evaluation")):
        console.print(line)
    for line in capability_lines(summary):
        console.print(line)
    for line in proximity_lines(summary):
        console.print(line)
    if summary.get("peer_traffic"):
        title = "peer traffic (every message to a neighbour: heartbeats, agreement, hindsight, consensus)"
        traffic = _table(title, markdown)
        for column in ("edge", "messages", "MB"):
            traffic.add_column(column, justify="left" if column == "edge" else "right")
        for edge, counters in summary["peer_traffic"].items():
            sent_bytes = counters.get("bytes_sent")
            traffic.add_row(edge, _fmt(counters.get("sent"), "g"), _fmt(sent_bytes / 1e6 if sent_bytes is not None else None, ".3g"))
        _print_table(console, traffic, title, markdown)
    for fault in summary["faults"]:
        when = f"at step {fault['at_step']} (fired at +{_fmt(fault['run_s'], '.3g')} s, step {_fmt(fault['step'], 'g')})" \
            if fault.get("at_step") is not None else f"at +{_fmt(fault['at_s'], 'g')} s" + (
                f" (step {_fmt(fault['step'], 'g')})" if fault.get("step") is not None else "")
        console.print(f"fault: {fault['kind']} {when} on {', '.join(fault['nodes']) or '-'}"
                      + (f" (skipped {', '.join(fault['skipped'])})" if fault["skipped"] else ""))  # fmt: skip
    for restart in summary.get("env_restarts", []):
        console.print(f"env server: back at +{_fmt(restart['run_s'], '.3g')} s after {_fmt(restart['downtime_s'])} s down, "
                      f"resumed at step {_fmt(restart['step'], 'g')}")
    for node, a in summary["agents"].items():
        for window in a["interruptions"]:
            which = window["kind"] + (f" (faults.schedule.{window['position']})" if window["position"] is not None else "")
            if window["end"] is None:
                console.print(f"{node}: {which} not ended before the run did")
            else:
                console.print(f"{node}: after the {which} ended, acting again "
                              f"after {_fmt(window['acting_after_s'])} s, learning after {_fmt(window['learning_after_s'])} s")
        if a["metric_rows_lost"]:
            console.print(f"{node}: metric rows lost at steps {a['metric_rows_lost']}")
        if a["reproducibility_broken_by"]:
            console.print(f"{node}: not reproducible (run.reproducible), timing decided: {', '.join(a['reproducibility_broken_by'])}")
    for line in [*sweep_effects.run_effect_lines(summary.get("crash"), summary.get("default_actions") or {}),
                 *realtime_lines(summary)]:
        console.print(line)


def evaluation_lines(summary: dict[str, Any]) -> list[str]:
    """The greedy evaluation at the start and the end against the random and oracle lines (the
    last lines `orchestrate up` prints)."""
    evaluation = summary.get("evaluation")
    if not evaluation:
        return []
    curve = evaluation["curve"]
    line = (f"greedy evaluation (return per agent per episode): {_fmt(evaluation['first'], '.3g')} at step {curve[0][0]} -> "
            f"{_fmt(evaluation['last5'], '.3g')} (mean of the last {min(5, len(curve))}, to step {curve[-1][0]})")
    baselines = []
    if evaluation["random"] is not None:
        baselines.append(f"random {_fmt(evaluation['random'], '.3g')}")
    if evaluation["oracle"] is not None:
        baselines.append(f"scripted oracle {_fmt(evaluation['oracle'], '.3g')}")
    if baselines:
        line += "; " + ", ".join(baselines) + " on the same episodes"
    if evaluation["gap_closed"] is not None:
        line += f": {_fmt(evaluation['gap_closed'], '.0%')} of the gap from random to the oracle closed"
    return [line]


def timing_lines(summary: dict[str, Any]) -> list[str]:
    """How long the run took: from its first step to its end (the run itself), and before it the
    nodes' start (the last line `orchestrate up` prints)."""
    if summary.get("duration_s") is None:
        return []
    line = f"the run took {summary['duration_s']:.0f} s from its first step to its end"
    if summary.get("launch_s") is not None:
        line += f", after {summary['launch_s']:.0f} s starting its nodes"
    return [line]


def capability_lines(summary: dict[str, Any]) -> list[str]:
    """The sections of the run's capabilities that it used (agent_node/registry.py), in
    registration order, and a note for each of a user's that could not be imported here."""
    found = [f"capability {kind}: its report section is left out: {why}" for kind, why in summary.get("capabilities_unreadable", [])]
    for description, _ in _described(summary):
        if summary.get(description.name):
            found += description.report.lines(summary[description.name])
    return found


def _described(summary: dict[str, Any]) -> list[tuple[Any, dict[str, Any] | None]]:
    """(description, section) of the capabilities whose sections the summary holds."""
    descriptions = {d.name: d for d in builtin_descriptions()}
    for kind in summary.get("capability_kinds", []):
        try:
            description = CAPABILITIES.describe(kind)
        except PluginError:
            continue
        descriptions[description.name] = description
    return [(descriptions[name], summary.get(name)) for name in summary.get("capabilities", []) if name in descriptions]


def render_sweep(summary: dict[str, Any], console, markdown: bool = False) -> None:

    keys = sweep_effects.table_keys(summary["grid"], summary["points"])
    title = f"sweep {summary['sweep']} ({summary['state']}): mean ± std over seeds {summary['seeds']}"
    table = _table(title, markdown)
    table.add_column("point", no_wrap=True)
    for key in keys:
        table.add_column(key.split(".")[-1], justify="right", overflow="fold")
    table.add_column("ok", justify="right", no_wrap=True)
    shown = [(key, title, spec) for key, title, spec in headline_columns()
             if any(point["metrics"].get(key, {}).get("mean") is not None for point in summary["points"])]  # fmt: skip
    for _, column, _ in shown:
        table.add_column(column, justify="right", overflow="fold")
    for point in summary["points"]:
        # a point beside the grid by its whole name (its lists and tables are in it)
        cells = [point["point"].split("-", 1)[0] if point["grid_values"].keys() <= summary["grid"].keys() else point["point"]]
        cells += [str(point["grid_values"].get(key, "")) for key in keys]
        cells.append(f"{point['ok']}/{len(point['runs'])}")
        for key, _, spec in shown:
            aggregate = point["metrics"].get(key, NO_AGGREGATE)
            if aggregate["mean"] is None:
                cells.append("-")
            elif aggregate["n"] > 1:
                cells.append(f"{_fmt(aggregate['mean'], spec)} ± {_fmt(aggregate['std'], spec)}")
            else:
                cells.append(_fmt(aggregate["mean"], spec))
        table.add_row(*cells)
    _print_table(console, table, title, markdown)
    for source in summary.get("merged_from") or []:
        console.print(f"merged from {source['dir']}: seeds {source['seeds']}, commits {', '.join(c[:7] for c in source['commits']) or '-'}")
    if len(summary.get("commits", [])) > 1:
        console.print(f"runs made at {len(summary['commits'])} commits: {', '.join(c[:7] for c in summary['commits'])}")
    for point in summary["points"]:
        for run in point["runs"]:
            if run["refused"] is not None:
                console.print(f"not counted: {point['point']} seed {run['seed']}: {run['refused']}")
    render_comparisons(summary.get("comparisons"), console, markdown)
    _render_effects(summary, console, markdown)


def _render_effects(summary: dict[str, Any], console, markdown: bool) -> None:
    """The return against each numeric axis with D50, and the crashes (orchestrator/sweep_effects.py)."""
    for title, columns, rows in sweep_effects.effect_tables(summary["effects"]):
        table = _table(title, markdown)
        for position, column in enumerate(columns):
            table.add_column(column, justify="left" if position == 0 else "right", overflow="fold")
        for row in rows:
            table.add_row(*row)
        _print_table(console, table, title, markdown)


def render_comparisons(comparisons: dict[str, Any] | None, console, markdown: bool = False) -> None:
    """The sweep's comparisons with its first point, how many there are, and which survive Holm."""
    if not comparisons:
        return
    kept = [row["point"] for row in comparisons["rows"] if row.get("survives_holm")]
    title = (f"{comparisons['count']} comparisons: each point minus {comparisons['baseline']} on {comparisons['metric']}, "
             f"paired by seed; Holm's correction over all {comparisons['count']} at {comparisons['alpha']}: "
             f"{len(kept)} survive" + (f" ({', '.join(p.split('-', 1)[0] for p in kept)})" if kept else ""))
    console.print(title, soft_wrap=True)  # the count and the verdict, unwrapped: a reader greps for them
    title = f"comparisons with {comparisons['baseline']}"
    table = _table(title, markdown)
    reference = comparisons["baseline"].split("-", 1)[0]
    for column in ("point", "runs", "IQM [95% bootstrap CI]", f"minus {reference} [95% t-CI]", "p", "survives Holm",
                   "P(improvement) [95% CI]"):
        table.add_column(column, justify="left" if column == "point" else "right")

    def interval(value: Any, bounds: list[float] | None) -> str:
        if value is None:
            return "-"
        return _fmt(value) + (f" [{_fmt(bounds[0])}, {_fmt(bounds[1])}]" if bounds else "")

    for row in comparisons["rows"]:
        compared = "p_value" in row
        table.add_row(row["point"].split("-", 1)[0], str(row["n"]), interval(row.get("iqm"), row.get("iqm_ci95")),
                      interval(row.get("difference"), row.get("difference_ci95")) if compared else "(the reference)",
                      _fmt(row.get("p_value"), ".3g") if compared else "",
                      ("yes" if row["survives_holm"] else "no") if compared else "",
                      interval(row.get("probability_of_improvement"), row.get("poi_ci95")) if compared else "")
    _print_table(console, table, title, markdown)


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(["plots need matplotlib, which is not installed (pip install matplotlib)"]) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Events that end a fault's window on the node it hit (a restart, a resumed pause, a rejoin).
RECOVERY_EVENTS = ("restarted", "rejoined", "resumed")


def fault_windows(events: list[dict[str, Any]]) -> list[tuple[float, float | None, str]]:
    """(start, end or None, label) in unix time for each `fault` event: from the fault to the
    first later recovery event of a node it hit, or to a later `resume` / `heal` fault on those
    nodes; None when nothing ended it (drawn as a line, not a band)."""
    windows = []
    for position, event in enumerate(events):
        if event.get("event") != "fault":
            continue
        hit = fault_targets(event)
        end = None
        for later in events[position + 1:]:
            recovered = later.get("event") in RECOVERY_EVENTS and later.get("node") in hit
            undone = later.get("event") == "fault" and later.get("kind") in ("resume", "heal") and (
                hit & fault_targets(later) or later.get("kind") == "heal")
            if recovered or undone:
                end = later["t"]
                break
        if event.get("kind") in ("resume", "heal"):
            end = None  # an undoing fault is a moment, not a window
        windows.append((event["t"], end, f"{event.get('kind')} {','.join(sorted(hit))}"))
    return windows


def plot_run(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Episode return (and, with consensus, the disagreement before and after each session) per
    agent over seconds since the start, fault windows shaded."""
    plt = _pyplot()
    run_dir = Path(summary["run_dir"])
    events = read_jsonl(run_dir / EVENTS_FILENAME)
    start = next((e["t"] for e in events if e.get("event") == "started"), None)
    metrics = {node: read_jsonl(run_dir / NODES_DIRNAME / node / NODE_METRICS_FILENAME) for node in summary["agents"]}
    if start is None:
        start = min((row["t"] for rows in metrics.values() for row in rows if "t" in row), default=0.0)
    evaluation = summary.get("evaluation")
    capability_panels = [d.report.timeline for d, section in _described(summary) if section and d.report.timeline]
    panels = 1 + len(capability_panels)
    figure, axes_list = plt.subplots(panels, 1, figsize=(8, 3.2 * panels), sharex=True, squeeze=False)
    paths = []
    if evaluation:
        paths.append(plot_evaluation(summary, out_dir))
    if summary.get("proximity"):
        paths.append(plot_proximity(summary, out_dir))
    returns_axes = axes_list[0][0]
    for node, rows in metrics.items():
        points = [(row["t"] - start, row["env/episode_return"]) for row in rows if "env/episode_return" in row]
        if points:
            returns_axes.plot(*zip(*points), marker=".", linestyle="none", label=node)
    returns_axes.set_ylabel("episode return")
    for panel, row in zip(capability_panels, axes_list[1:]):
        _plot_timeline_panel(row[0], panel, metrics, start)
    windows = fault_windows(events)
    for index, (begin, end, label) in enumerate(windows):
        for row in axes_list:
            if end is None:
                row[0].axvline(begin - start, color="red", linestyle="--", linewidth=1)
            else:
                row[0].axvspan(begin - start, end - start, color="red", alpha=0.15)
        # labels in staggered rows above the plot, so faults close in time stay readable
        returns_axes.annotate(label, (begin - start, 1.01 + 0.07 * (index % 4)), xycoords=("data", "axes fraction"),
                              fontsize=6, color="red", va="bottom", annotation_clip=False)  # fmt: skip
    axes_list[-1][0].set_xlabel("seconds since the run started (faults in red)")
    returns_axes.set_title(f"{summary['name']}", pad=8 + 9 * min(len(windows), 4))
    _legend(returns_axes, "no episode finished", fontsize=7)
    path = _save_figure(plt, figure, out_dir / "timeline.png")
    return [path, *paths]


def _plot_timeline_panel(axes: Any, panel: Any, metrics: dict[str, list[dict[str, Any]]], start: float) -> None:
    """A capability's panel (agent_node/registry.py `TimelinePanel`): its series per agent."""
    for node, rows in metrics.items():
        colour = None
        for position, (key, label) in enumerate(panel.series):
            points = [(row["t"] - start, row[key]) for row in rows if key in row]
            if not points:
                continue
            style = {"marker": "o", "linewidth": 1} if position == 0 else {"marker": "x", "linestyle": ":"}
            line, = axes.plot(*zip(*points), label=f"{node} {label}", color=colour, **style)
            colour = line.get_color()
    if panel.log_scale:
        axes.set_yscale("log")
    axes.set_ylabel(panel.ylabel)
    _legend(axes, panel.nothing, fontsize=7, ncol=2)


def _legend(axes: Any, nothing: str, **options: Any) -> None:
    """The axes' legend, or, when nothing was drawn (a run that failed early), `nothing` written
    across them: matplotlib warns on a legend without labelled artists."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(**options)
    else:
        axes.text(0.5, 0.5, nothing, transform=axes.transAxes, ha="center", va="center", color="grey")


def _save_figure(plt, figure, path: Path) -> Path:
    """Write a report figure (its folder made if need be) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_proximity(summary: dict[str, Any], out_dir: Path) -> Path:
    """`report/proximity_graph.png`: the team's graph over env steps when links follow positions,
    edges and connected components (means over each metrics period)."""
    plt = _pyplot()
    steps, edges, components = zip(*summary["proximity"]["series"])
    figure, axes = plt.subplots(figsize=(7, 3.2))
    axes.step(steps, edges, where="post", label="edges")
    axes.step(steps, components, where="post", label="connected components")
    axes.set_xlabel("env step (means over each metrics period)")
    axes.set_title(f"{summary['name']}: the graph of agents in range over time")
    axes.legend(fontsize=7)
    return _save_figure(plt, figure, out_dir / "proximity_graph.png")


def plot_evaluation(summary: dict[str, Any], out_dir: Path) -> Path:
    """`report/learning_curve.png`: greedy evaluation over env steps, with the random and
    oracle lines measured on the same episodes."""
    plt = _pyplot()
    evaluation = summary["evaluation"]
    figure, axes = plt.subplots(figsize=(7, 3.6))
    axes.plot(*zip(*evaluation["curve"]), marker="o", label="agents, greedy")
    if evaluation["random"] is not None:
        axes.axhline(evaluation["random"], color="grey", linestyle="--", label="random policy")
    if evaluation["oracle"] is not None:
        axes.axhline(evaluation["oracle"], color="green", linestyle="--", label="scripted oracle")
    axes.set_xlabel("lockstep env steps")
    axes.set_ylabel("return per agent per episode")
    axes.set_title(f"{summary['name']}: greedy evaluation")
    axes.legend(fontsize=8)
    return _save_figure(plt, figure, out_dir / "learning_curve.png")


def plot_sweep(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Return, first-session disagreement and duration against the first swept key, a line per
    combination of the other keys, error bars one std over seeds."""
    plt = _pyplot()
    paths = sweep_effects.plot_effects(summary["effects"], out_dir, plt)
    keys = list(summary["grid"])
    if not keys:
        return paths
    x_key, others = keys[0], keys[1:]
    panels = [("return_last20", "return, last 20% of episodes", False)]
    panels += [panel for description in builtin_descriptions() if description.report for panel in description.report.sweep_panels]
    # (a point none of whose runs finished, in a sweep still running or stopped, has no metrics)
    panels = [p for p in panels if any(pt["metrics"].get(p[0], {}).get("mean") is not None for pt in summary["points"])]
    if not panels:
        return paths
    figure, axes_list = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for (metric, label, log_scale), axes in zip(panels, axes_list[0]):
        lines: dict[str, list[tuple[Any, float, float]]] = {}
        for point in summary["points"]:
            aggregate = point["metrics"].get(metric, NO_AGGREGATE)
            if aggregate["mean"] is None or x_key not in point["grid_values"]:
                continue
            line = ", ".join(f"{k.split('.')[-1]}={point['grid_values'].get(k)}" for k in others) or "all"
            lines.setdefault(line, []).append((point["grid_values"][x_key], aggregate["mean"], aggregate["std"] or 0.0))
        for line, values in lines.items():
            values.sort(key=lambda v: v[0])
            xs = [v[0] for v in values]
            if all(isinstance(x, (int, float)) for x in xs):
                axes.errorbar(xs, [v[1] for v in values], yerr=[v[2] for v in values], marker="o", capsize=3, label=line)
            else:
                axes.errorbar([str(x) for x in xs], [v[1] for v in values], yerr=[v[2] for v in values], marker="o", capsize=3, label=line)
        if log_scale:
            axes.set_yscale("log")
        axes.set_xlabel(x_key)
        axes.set_ylabel(label)
        _legend(axes, "no point has this metric", fontsize=8)
    figure.suptitle(f"sweep {summary['sweep']}: mean ± std over seeds {summary['seeds']}")
    path = _save_figure(plt, figure, out_dir / "sweep.png")
    return [path, *paths]


# ------------------------------------------------------------------------------------------
# Entry point (orchestrate report)
# ------------------------------------------------------------------------------------------


def is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_INDEX_FILENAME).is_file()


def write_summary_md(summary: dict[str, Any], sweep: bool, target: Path) -> Path:
    """`report/summary.md`: the same tables as the terminal, as Markdown."""
    from rich.console import Console

    target.mkdir(parents=True, exist_ok=True)
    path = target / "summary.md"
    rendered = io.StringIO()
    console = Console(file=rendered, width=400, no_color=True, highlight=False, markup=False, emoji=False)
    (render_sweep if sweep else render_run)(summary, console, markdown=True)
    name = summary["sweep"] if sweep else summary["name"]
    lines = [f"# {'Sweep' if sweep else 'Run'} {name}", "", f"`orchestrate report {summary['sweep_dir' if sweep else 'run_dir']}`", ""]
    lines += [line.rstrip() for line in rendered.getvalue().splitlines()]
    path.write_text("\n".join(lines).replace("\n\n\n", "\n\n") + "\n", encoding="utf-8")
    return path


# What a run's hparams row in TensorBoard holds: the settings a user compares runs by. Every leaf
# under these config paths that is a number, a string or a bool (lists and tables are left out:
# TensorBoard's hparams take scalars only).
# The capabilities add theirs (agent_node/registry.py `CapabilityDescription.hparams`).
HPARAM_SECTIONS = ("run.seed", "run.steps", "env.name", "env.num_copies", "agents.count", "agents.learner",
                   "agents.world_model.kind", "topology.kind")
TENSORBOARD_HPARAMS_DIR = "hparams"


def run_hparams(resolved: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The scalar settings under HPARAM_SECTIONS of a resolved config, by dotted key."""
    hparams: dict[str, bool | int | float | str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(f"{prefix}.{key}", item)
        elif isinstance(value, (bool, int, float, str)):
            hparams[prefix] = value

    capability_sections = [path for description in builtin_descriptions() for path in description.hparams]
    for path in [*HPARAM_SECTIONS, *capability_sections]:
        value: Any = resolved
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            visit(path, value)
    return hparams


def write_tensorboard_hparams(summary: dict[str, Any], run_dir: Path) -> Path:
    """`tb/hparams/`: the run's settings beside its headline results (the report's numbers), so
    TensorBoard's HPARAMS tab compares the runs of a folder or a sweep side by side."""
    from orchestrator.config import read_yaml

    SummaryWriter = _summary_writer_class()

    resolved = read_yaml(Path(run_dir) / RESOLVED_FILENAME)
    results = {f"result/{key}": float(value) for key, value in summary["headline"].items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
    directory = Path(run_dir) / "tb" / TENSORBOARD_HPARAMS_DIR
    with SummaryWriter(str(directory)) as writer:
        writer.add_hparams(run_hparams(resolved), results, name=".")
    return directory


def _summary_writer_class() -> type:
    """tensorboardX's `SummaryWriter`, imported without torch in a process that has not loaded it.

    tensorboardX's writer imports torch at import time only to accept torch tensors as values,
    and goes on with numpy where that import fails. The orchestrator never loads torch (its
    nodes do), and loading it for a handful of scalars added seconds to the end of every
    `orchestrate up` (5 s on a loaded 2-core machine, against 0.4 s without it): for the time of
    tensorboardX's own import, `import torch` is made to fail (a None entry in `sys.modules`)."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def write_run_report(run_dir: Path, plots: bool = True) -> tuple[list[Path], list[str], list[str]]:
    """The end of every `orchestrate up`: `report/summary.md` and (with `plots`)
    `report/timeline.png` (and `learning_curve.png` where the run evaluated) in the run's
    directory, and the run's result in a line or none (`evaluation_lines`) for the terminal.
    Never raises: what could not be written comes back as one problem line each (the caller logs
    them; a plot that fails must not fail a run that worked)."""
    written: list[Path] = []
    problems: list[str] = []
    target = Path(run_dir) / REPORT_DIRNAME
    try:
        summary = summarize_run(run_dir)
        written.append(write_summary_md(summary, False, target))
    except Exception as error:  # noqa: BLE001 - any failure here is reported, not raised
        return written, [f"summary: {type(error).__name__}: {error}"], []
    lines = evaluation_lines(summary) + timing_lines(summary)
    try:
        written.append(write_tensorboard_hparams(summary, Path(run_dir)))
    except Exception as error:  # noqa: BLE001 - TensorBoard's copy must not fail the report
        problems.append(f"tensorboard hparams: {type(error).__name__}: {error}")
    if not plots:
        return written, problems, lines
    try:
        written += plot_run(summary, target)
    except Exception as error:  # noqa: BLE001 - e.g. matplotlib missing or a backend error
        problems.append(f"plots: {type(error).__name__}: {error}")
    return written, problems, lines


def main(path: Path, as_json: bool = False, save: bool = False, out=None, against: str | None = None) -> int:
    from rich.console import Console

    out = out if out is not None else sys.stdout
    sweep = is_sweep_dir(path)
    if against is not None and not sweep:
        raise ConfigError([f"--against: compares the points of a sweep; {path} is a run directory"])
    summary = summarize_sweep(path, against) if sweep else summarize_run(path)
    if as_json:
        print(json.dumps(summary, indent=1, default=str), file=out)
    else:
        # A pipe or a file gets the tables whole; a terminal gets its own width, long cells folded.
        console = Console(file=out, width=None if out.isatty() else 400)
        (render_sweep if sweep else render_run)(summary, console)
    if save:
        target = Path(summary["sweep_dir"] if sweep else summary["run_dir"]) / REPORT_DIRNAME
        print(f"wrote {write_summary_md(summary, sweep, target)}", file=sys.stderr)
        if sweep:
            record_path = target / SWEEP_RECORD_FILENAME
            record_path.write_text(json.dumps(sweep_record(path, summary), indent=1, default=str))
            print(f"wrote {record_path} (its runs' numbers: `orchestrate sweep --merge` takes it without the run "
                  "directories)", file=sys.stderr)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("no plots: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
            return 0
        for written in (plot_sweep if sweep else plot_run)(summary, target):
            print(f"wrote {written}", file=sys.stderr)
    return 0
