"""What a sweep's axes cost and what a crash costs, read from the report's summaries.

`orchestrate report` (orchestrator/report.py) calls these and prints what they return; they read
no files and import nothing of the report, so each is checked on numbers written by hand
(tests/unit/test_sweep_effects.py).

**The return.** A run's return is its greedy evaluation, `eval/return_mean` (the env server's,
per agent per episode) averaged over its last 5 evaluations (`eval_return_last5` of the run's
headline), or, in a sweep whose runs do not evaluate, the mean episode return over the last 20%
of each agent's episodes (`return_last20`). A point's value is the mean over its seeds with a 95%
Student-t interval (the report's `_aggregate`).

**Axes and lines.** Every key of the grid whose values are all numbers, at least two of them, is
an axis. A point is on it where its coordinates give that key a number: a grid point's
coordinates are its grid values; a point beside the grid (`points:` in the sweep file,
orchestrator/sweep.py) has those its `at:` gives (by default the grid keys its own overrides
set). The points on an axis that agree on every other coordinate and on their `line:` make one
line, drawn against the axis with the no-talk level (the `role: no_talk` point) and the random
and scripted-oracle levels the env server measured (`eval/random_return_mean`,
`eval/oracle_return_mean`, averaged over every run that wrote them). A point beside the grid on
no axis, without a role and without a crash (the ring a grid of proximity radii is set against)
is drawn as a level of its own, with its interval (`beside`).

**D50** of a line: where half of what talking adds over not talking is lost. With R(x) the
line's return at axis value x, R(0) its return at 0 (no delay, no loss: a line without a point
at 0 has no D50) and N the no-talk return, D50 is the smallest x where R(x), interpolated
linearly between the line's points, falls to N + 0.5 (R(0) - N): the first downward crossing.
A line that stays above it has no D50 inside the grid: "beyond" its last x, never an
extrapolated number. Where R(0) <= N talking adds nothing to lose and there is no D50. A line
with a crash (see below) gets none either: its floor would be the no-talk run without a crash.

Its interval is a paired bootstrap over seeds: B = 2000 times, draw as many seeds as the sweep
has, with replacement, from the seeds of the line's points and the no-talk point; each point's
return is its mean over the drawn seeds it has (runs of one seed share the env's and the
agents' random streams, so a seed is drawn for every point at once, and what all points of a
seed share cancels out of the crossing); compute R, N and the crossing again. The interval is
the 2.5% and 97.5% quantiles of the B crossings (read from the sorted crossings, no
interpolation), a crossing beyond the grid counting as +infinity: an upper end beyond the
grid is shown as such. A draw where talking adds nothing, or that leaves a point without any of
its seeds, has no crossing; such draws are counted (`undefined_draws`) and left out. The draws
come from a fixed generator seed, so the same sweep gives the same interval.

**A crash** (a run with a `kill` or `restart` fault that hit a node): at the env step the fault
fired (`step` of its event: for an `at_step` fault, the step the env server held for it),
`before` is the last evaluation return before it (an evaluation at that very step counts as
before when it was written before the fault's event) and `lowest` the lowest after it;
the dip is `before - lowest` (positive: the return fell). The run has recovered at the first
evaluation after the lowest whose return is at least `before - band`, band being 10% of the gap
from the random policy's return to `before` (returns here are negative: 10% of the return
itself would be a band that widens as the agents get worse), or 10% of |before| when the run has
no random line or was no better than it. `recovery_steps` is that evaluation's step minus the
crash's; 0 when even the lowest evaluation after the crash is within the band (evaluations come
every `env.eval_every_steps`: a shorter dip is not seen), None when none came back before the
run ended. Measured after the lowest evaluation, a dip that comes a while after the crash (a
restarted agent that rejoins and then unsettles the team) counts until it is over. Only the
first crash of a run is read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent_node.registry import fmt

RETURN_KEYS = ("eval_return_last5", "return_last20")  # the first of these a sweep's runs have
CRASH_KINDS = ("kill", "restart")
RECOVERY_BAND = 0.1  # "back within 10%" of the pre-crash level (of the random -> pre-crash gap)
HALF = 0.5  # D50: half of what talking adds
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
DEFAULT_ACTIONS_PREFIX = "env/default_actions/"


# ------------------------------------------------------------------------------------------
# One run: the crash
# ------------------------------------------------------------------------------------------


def first_crash(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first `fault` event that killed (or restarted) at least one node, or None."""
    for event in events:
        if event.get("event") == "fault" and event.get("kind") in CRASH_KINDS and event.get("nodes"):
            return event
    return None


def crash_recovery(env_rows: list[dict[str, Any]], events: list[dict[str, Any]],
                   random_line: float | None) -> dict[str, Any] | None:  # fmt: skip
    """The dip and recovery after a run's first crash (module docstring), from the env server's
    evaluation rows (`eval/return_mean`); None for a run without a crash. A figure that cannot be
    measured is None, with the `reason`.

    An evaluation holds training at the step it is written with, so one at the crash's own step
    may have run before or after the kill: it counts as before when it was written (`t`) before
    the fault event, else as after."""
    fault = first_crash(events)
    if fault is None:
        return None
    step = fault.get("step") if fault.get("step") is not None else fault.get("at_step")
    result: dict[str, Any] = {
        "kind": fault.get("kind"), "nodes": sorted(fault.get("nodes") or []), "step": step, "before": None,
        "lowest": None, "lowest_step": None, "dip": None, "band": None, "recovered": None, "recovery_steps": None,
        "reason": None,
    }  # fmt: skip
    if step is None:
        result["reason"] = "the fault event has no env step"
        return result
    before, after = [], []
    for row in env_rows:
        if "eval/return_mean" in row and isinstance(row.get("step"), (int, float)):
            earlier = row["step"] < step or (row["step"] == step and row.get("t", math.inf) <= fault.get("t", -math.inf))
            (before if earlier else after).append((row["step"], row["eval/return_mean"]))
    if not before or not after:
        result["reason"] = f"no evaluation {'before' if not before else 'after'} the crash at step {step}"
        return result
    level = before[-1][1]
    lowest_step, lowest = min(after, key=lambda point: point[1])
    gap = level - random_line if random_line is not None and level > random_line else abs(level)
    band = RECOVERY_BAND * gap
    if lowest >= level - band:
        recovered_at = step  # never seen below the band: 0 steps
    else:
        recovered_at = next((s for s, value in after if s > lowest_step and value >= level - band), None)
    result.update(before=level, lowest=lowest, lowest_step=lowest_step, dip=level - lowest, band=band,
                  recovered=recovered_at is not None,
                  recovery_steps=None if recovered_at is None else recovered_at - step)  # fmt: skip
    return result


def crash_headline(crash: dict[str, Any] | None) -> dict[str, float | None]:
    """The crash's numbers a sweep aggregates over seeds (None where there was none)."""
    crash = crash or {}
    recovered = crash.get("recovered")
    return {
        "crash_step": _float(crash.get("step")),
        "crash_eval_before": _float(crash.get("before")),
        "crash_eval_dip": _float(crash.get("dip")),
        "crash_recovery_steps": _float(crash.get("recovery_steps")),
        "crash_recovered": None if recovered is None else float(recovered),
    }


def run_effect_lines(crash: dict[str, Any] | None, default_actions: dict[str, float | None]) -> list[str]:
    """The lines `orchestrate report RUN_DIR` prints for a crash and the env's default actions."""
    lines = []
    if default_actions:
        counts = ", ".join(f"{agent} {fmt(count, 'g')}" for agent, count in default_actions.items())
        lines.append(f"default actions the env server played (dead, paused or late agents): {counts}")
    if crash is not None:
        head = f"crash ({crash['kind']} of {', '.join(crash['nodes'])} at step {fmt(crash['step'], 'g')})"
        if crash["reason"]:
            lines.append(f"{head}: no dip or recovery measured: {crash['reason']}")
        else:
            back = (f"back within {fmt(crash['band'], '.3g')} of it (10% of the random -> pre-crash gap) "
                    f"{fmt(crash['recovery_steps'], 'g')} steps after the crash" if crash["recovered"]
                    else "not back within 10% of it before the run ended")  # fmt: skip
            lines.append(f"{head}: greedy evaluation {fmt(crash['before'], '.3g')} before, lowest "
                         f"{fmt(crash['lowest'], '.3g')} at step {fmt(crash['lowest_step'], 'g')} "
                         f"(dip {fmt(crash['dip'], '.3g')}); {back}")  # fmt: skip
    return lines


# ------------------------------------------------------------------------------------------
# A sweep: axes, lines, D50
# ------------------------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(key: str) -> str:
    return [part for part in key.split(".") if not part.isdigit()][-1]


def return_key(points: list[dict[str, Any]]) -> str | None:
    """The return a sweep is read by: the first of RETURN_KEYS that some point has."""
    return next((key for key in RETURN_KEYS if any(p["metrics"].get(key, {}).get("mean") is not None for p in points)), None)


def numeric_axes(grid: dict[str, list[Any]]) -> list[str]:
    """The grid keys whose values are all numbers, at least two different ones."""
    return [key for key, values in grid.items() if all(_is_number(v) for v in values) and len(set(values)) > 1]


def crossing(xs: Sequence[float], ys: Sequence[float], floor: float) -> tuple[float | None, str]:
    """D50 of one curve (module docstring): (x, "crossed"), (None, "beyond") or (None, "no_gain").
    `xs` ascending from 0."""
    gain = ys[0] - floor
    if not gain > 0:
        return None, "no_gain"
    threshold = floor + HALF * gain
    for i in range(1, len(xs)):
        if ys[i] <= threshold:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return x0 + (threshold - y0) * (x1 - x0) / (y1 - y0), "crossed"
    return None, "beyond"


def _seed_values(point: dict[str, Any], key: str) -> dict[int, float]:
    """A point's value of a headline key per seed, for the seeds whose run produced one."""
    values = {}
    for run in point["runs"]:
        value = (run.get("headline") or {}).get(key)
        if _is_number(value):
            values[run["seed"]] = float(value)
    return values


def bootstrap_d50(line_values: list[dict[int, float]], floor_values: dict[int, float], xs: Sequence[float],
                  draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:  # fmt: skip
    """The 95% interval of D50 by a paired bootstrap over seeds (module docstring). `line_values`:
    per point of the line (in x order), its value per seed; `floor_values`: the no-talk point's."""
    seeds = sorted({seed for values in [*line_values, floor_values] for seed in values})
    table = np.full((len(line_values) + 1, len(seeds)), np.nan)
    for row, values in enumerate([*line_values, floor_values]):
        for column, seed_id in enumerate(seeds):
            table[row, column] = values.get(seed_id, np.nan)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(seeds), size=(draws, len(seeds)))
    samples = table[:, drawn]  # (points + 1, draws, seeds)
    present = ~np.isnan(samples)
    counts = present.sum(axis=2)
    means = np.where(counts > 0, np.nansum(samples, axis=2) / np.maximum(counts, 1), np.nan)
    crossings = []
    for draw in range(draws):
        if np.isnan(means[:, draw]).any():
            continue
        value, status = crossing(xs, means[:-1, draw].tolist(), float(means[-1, draw]))
        if status != "no_gain":
            crossings.append(math.inf if value is None else value)
    ends = [None, None]
    if crossings:
        ends = [float(q) for q in np.quantile(np.array(crossings), [0.025, 0.975], method="inverted_cdf")]
    # an end beyond the grid is None in `ci95` (JSON has no infinity) and True in `ci95_beyond`
    beyond = [end is not None and math.isinf(end) for end in ends]
    return {"ci95": [None if out else end for end, out in zip(ends, beyond)], "ci95_beyond": beyond,
            "draws": draws, "undefined_draws": draws - len(crossings)}  # fmt: skip


def _line_d50(xs: list[float], points: list[dict[str, Any]], floor: dict[str, Any] | None, key: str,
              faulted: bool) -> dict[str, Any]:  # fmt: skip
    """D50 of one line with its interval, or why it has none."""
    result: dict[str, Any] = {"value": None, "beyond": False, "ci95": None, "reason": None}
    means = [p["metrics"].get(key, {}).get("mean") for p in points]
    if floor is None:
        result["reason"] = "no no-talk point (role: no_talk) in the sweep"
    elif faulted:
        result["reason"] = "a line with a crash (see its dip and recovery)"
    elif len(xs) < 2 or xs[0] != 0:
        result["reason"] = "no point at 0 on this line" if xs[0] != 0 else "one point only"
    elif len(set(xs)) != len(xs):
        result["reason"] = "two points at the same value"
    elif any(mean is None for mean in means) or floor["metrics"].get(key, {}).get("mean") is None:
        result["reason"] = "a point without a finished run"
    if result["reason"]:
        return result
    value, status = crossing(xs, means, floor["metrics"][key]["mean"])
    if status == "no_gain":
        result["reason"] = "talking adds nothing at 0 (its return is not above the no-talk one)"
        return result
    result["value"], result["beyond"] = value, status == "beyond"
    result.update(bootstrap_d50([_seed_values(p, key) for p in points], _seed_values(floor, key), xs))
    return result


def _line_order(point: dict[str, Any], axis: str) -> tuple:
    """Lines in order: the grid's own first, then by their other coordinates, numbers by value."""
    others = [(key, (0, value, "") if _is_number(value) else (1, 0, str(value)))
              for key, value in sorted(point["coordinates"].items()) if key != axis]  # fmt: skip
    return (point.get("line") or "", others)


def _level(points: list[dict[str, Any]], key: str) -> float | None:
    """The mean of a headline key over every run of the sweep that wrote it (a baseline level)."""
    values = [value for p in points for value in _seed_values(p, key).values()]
    return float(np.mean(values)) if values else None


def summarize_effects(points: list[dict[str, Any]], grid: dict[str, list[Any]]) -> dict[str, Any]:
    """The return against each numeric axis, D50 per line, and each crashed point's dip and
    recovery, from `summarize_sweep`'s points (each with `coordinates`, `line`, `role`,
    aggregated `metrics` and per-seed `runs`)."""
    key = return_key(points)
    floor = next((p for p in points if p.get("role") == "no_talk"), None)
    faulted = {p["point"] for p in points if _seed_values(p, "crash_step")}  # a run of it had a crash
    effects: dict[str, Any] = {
        "metric": key,
        "no_talk": None if floor is None or key is None else {"point": floor["point"], **floor["metrics"].get(key, {})},
        "random": _level(points, "eval_random"),
        "oracle": _level(points, "eval_oracle"),
        "axes": [],
        "crashes": [],
        "beside": [],
    }
    axes = numeric_axes(grid)
    if key is not None:
        effects["beside"] = [{"point": p["point"], **p["metrics"].get(key, {})} for p in points
                             if p.get("role") is None and p["point"] not in faulted
                             and not any(_is_number((p.get("coordinates") or {}).get(axis)) for axis in axes)]
        for axis in axes:
            lines: dict[str, list[dict[str, Any]]] = {}
            for p in points:
                coordinates = p.get("coordinates") or {}
                if p.get("role") is not None or not _is_number(coordinates.get(axis)):
                    continue
                others = ", ".join(f"{_short(k)}={fmt(v, 'g') if _is_number(v) else v}"  # 0 and 0.0 alike
                                   for k, v in sorted(coordinates.items()) if k != axis)  # fmt: skip
                label = ", ".join(part for part in (p.get("line"), others) if part) or "all"
                lines.setdefault(label, []).append(p)
            drawn = []
            for label, members in sorted(lines.items(), key=lambda item: _line_order(item[1][0], axis)):
                members.sort(key=lambda p: p["coordinates"][axis])
                xs = [p["coordinates"][axis] for p in members]
                drawn.append({
                    "label": label, "x": xs, "points": [p["point"] for p in members],
                    "mean": [p["metrics"].get(key, {}).get("mean") for p in members],
                    "ci95": [p["metrics"].get(key, {}).get("ci95") for p in members],
                    "n": [p["metrics"].get(key, {}).get("n", 0) for p in members],
                    "d50": _line_d50(xs, members, floor, key, any(p["point"] in faulted for p in members)),
                })  # fmt: skip
            effects["axes"].append({"key": axis, "lines": drawn})
    for p in points:
        if p["point"] not in faulted:
            continue
        metrics = p["metrics"]
        effects["crashes"].append({
            "point": p["point"],
            "runs": metrics.get("crash_step", {}).get("n", 0),
            **{name: metrics.get(f"crash_{name}", {}) for name in ("eval_before", "eval_dip", "recovery_steps")},
            "recovered_fraction": metrics.get("crash_recovered", {}).get("mean"),
        })  # fmt: skip
    return effects


def table_keys(grid: dict[str, list[Any]], points: list[dict[str, Any]]) -> list[str]:
    """The columns of a sweep's table: the grid's keys, then every other key a point beside the
    grid sets to a single value (a list or a table, e.g. a fault schedule, is in its name)."""
    keys = list(grid)
    for p in points:
        for key, value in p["grid_values"].items():
            if key not in keys and not isinstance(value, (list, dict)):
                keys.append(key)
    return keys


# ------------------------------------------------------------------------------------------
# Printing and plotting (the report's tables and figures take these rows)
# ------------------------------------------------------------------------------------------


def _interval(aggregate: dict[str, Any], spec: str = ".3g") -> str:
    """`mean [low, high]`, or the mean alone (one seed: no interval), or `-`."""
    if not aggregate or aggregate.get("mean") is None:
        return "-"
    ci = aggregate.get("ci95")
    return fmt(aggregate["mean"], spec) + (f" [{fmt(ci[0], spec)}, {fmt(ci[1], spec)}]" if ci else "")


def _spread(aggregate: dict[str, Any], spec: str = ".4g") -> str:
    """`mean (least-most)` over the runs: for a count such as the steps to recover, a multiple of
    the evaluation period with many zeros, whose t-interval would reach below 0. A record saved
    before the aggregates kept their extremes shows its interval."""
    if not aggregate or aggregate.get("mean") is None or aggregate.get("min") is None:
        return _interval(aggregate, spec)
    return f"{fmt(aggregate['mean'], spec)} ({fmt(aggregate['min'], spec)}-{fmt(aggregate['max'], spec)})"


def d50_text(d50: dict[str, Any], last_x: float) -> str:
    """`2.4 [1.7, 3.9]`, `> 25 (beyond the grid) [12, > 25]`, or `- (why)`."""
    if d50["reason"]:
        return f"- ({d50['reason']})"
    beyond = f"> {fmt(last_x, 'g')}"
    interval = ""
    if d50.get("ci95") and d50["ci95"] != [None, None] or any(d50.get("ci95_beyond") or ()):
        low, high = (beyond if out else fmt(end) for end, out in zip(d50["ci95"], d50["ci95_beyond"]))
        interval = f" [{low}, {high}]"
    if d50.get("undefined_draws"):
        interval += f" ({d50['undefined_draws']} of {d50['draws']} draws left out: no gain from talking in them)"
    return (f"{beyond} (beyond the grid)" if d50["beyond"] else fmt(d50["value"])) + interval


def effect_tables(effects: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows) for each axis and for the crashes."""
    tables = []
    key = effects["metric"]
    levels = [f"{name} {fmt(value)}" for name, value in (("random", effects["random"]), ("scripted oracle", effects["oracle"]))
              if value is not None]  # fmt: skip
    if effects["no_talk"]:
        levels.insert(0, f"no talk {_interval(effects['no_talk'])}")
    levels[0:0] = [f"{level['point']} {_interval(level)}" for level in effects.get("beside", ())]  # records before it have none
    for axis in effects["axes"]:
        xs = sorted({x for line in axis["lines"] for x in line["x"]})
        title = (f"{key} against {axis['key']}: mean [95% interval] over seeds"
                 + (f"; {', '.join(levels)}" if levels else ""))  # fmt: skip
        rows = []
        for line in axis["lines"]:
            cells = {x: _interval({"mean": m, "ci95": ci}) for x, m, ci in zip(line["x"], line["mean"], line["ci95"])}
            rows.append([line["label"], *(cells.get(x, "") for x in xs), d50_text(line["d50"], line["x"][-1])])
        tables.append((title, ["line", *(fmt(x, "g") for x in xs), "D50 [95% bootstrap]"], rows))
    if effects["crashes"]:
        rows = [[c["point"], str(c["runs"]), _interval(c["eval_before"]), _interval(c["eval_dip"]),
                 _spread(c["recovery_steps"]), fmt(c["recovered_fraction"], ".0%")]
                for c in effects["crashes"]]  # fmt: skip
        tables.append(("after a crash: greedy evaluation before it, the dip to the lowest after it (mean [95% interval] "
                       "over seeds), steps until back within 10% of the random -> pre-crash gap (mean (least-most) over "
                       "the seeds that came back)",
                       ["point", "runs", "before", "dip", "steps to recover", "recovered"], rows))  # fmt: skip
    return tables


def plot_effects(effects: dict[str, Any], out_dir: Path, plt) -> list[Path]:
    """`sweep_axes.png`: a panel per numeric axis, a line per line with its 95% intervals, the
    no-talk and beside-the-grid levels (with their intervals), random and oracle levels, each D50
    as a dotted vertical line."""
    if not effects["axes"]:
        return []
    figure, axes_list = plt.subplots(1, len(effects["axes"]), figsize=(6.5 * len(effects["axes"]), 4.5), squeeze=False)
    for axis, axes in zip(effects["axes"], axes_list[0]):
        for line in axis["lines"]:
            shown = [(x, m, ci) for x, m, ci in zip(line["x"], line["mean"], line["ci95"]) if m is not None]
            if not shown:
                continue
            xs, means = [s[0] for s in shown], [s[1] for s in shown]
            errors = [[m - ci[0] if ci else 0.0 for _, m, ci in shown], [ci[1] - m if ci else 0.0 for _, m, ci in shown]]
            drawn = axes.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=line["label"])
            d50 = line["d50"]
            if d50["value"] is not None and not d50["beyond"]:
                axes.axvline(d50["value"], color=drawn[0].get_color(), linestyle=":", linewidth=1)
        if effects["no_talk"] and effects["no_talk"].get("mean") is not None:
            axes.axhline(effects["no_talk"]["mean"], color="black", linestyle="--", label="no talk")
            if effects["no_talk"].get("ci95"):
                axes.axhspan(*effects["no_talk"]["ci95"], color="black", alpha=0.08)
        for level, color in zip(effects.get("beside", ()), itertools.cycle(("purple", "brown", "olive", "teal"))):
            if level.get("mean") is not None:
                axes.axhline(level["mean"], color=color, linestyle="-.", label=level["point"])
                if level.get("ci95"):
                    axes.axhspan(*level["ci95"], color=color, alpha=0.08)
        if effects["random"] is not None:
            axes.axhline(effects["random"], color="grey", linestyle=":", label="random policy")
        if effects["oracle"] is not None:
            axes.axhline(effects["oracle"], color="green", linestyle="--", label="scripted oracle")
        axes.set_xlabel(f"{axis['key']} (dotted: D50)")
        axes.set_ylabel(effects["metric"])
        axes.legend(fontsize=7)
    figure.suptitle("return against each axis: mean and 95% interval over seeds")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sweep_axes.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return [path]


def default_actions_total(default_actions: dict[str, float | None]) -> float | None:
    values = [value for value in default_actions.values() if value is not None]
    return float(sum(values)) if values else None

