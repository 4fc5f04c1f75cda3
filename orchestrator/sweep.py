"""`orchestrate sweep SWEEP.yaml`: a grid of config overrides x seeds, each point a normal run.

Fault and delay settings are experimental variables: a researcher names a base config, the
`--set`-style keys to vary and their values, and the seeds; the sweep runs every combination
as an ordinary `orchestrate up` and leaves one run directory per (point, seed) plus an index.

    # configs/sweeps/ring_delay_loss.yaml
    name: ring_delay_loss
    base: ../tiny_ring_links.yaml          # relative to this file
    grid:                                   # every combination, the last key varying fastest
      network.links.0.link.delay_s: [0.0, 0.05]
      network.links.0.link.loss: [0.0, 0.1]
    seeds: [0, 1]                           # each sets run.seed
    set:                                    # fixed overrides applied to every point first
      network.links: [{role: peer_links, link: {}}]
    parallel: 1                             # runs at once (the CLI's --parallel wins)

Layout of the sweep directory:

    <sweep_dir>/
      sweep.json                   the index: spec, and per run its overrides, run dir, exit code
      <point>-seed<k>/             an ordinary run directory (`orchestrate report` reads it)
      logs/<point>-seed<k>.log     what that run's `orchestrate up` printed

`<point>` is `p<index>-<short key><value>_...`, e.g. `p01-delay_s0.0_loss0.1`.

**Points beside the grid.** An experiment is often not a rectangle: a delay x loss grid plus
one run with talking free, one without talking, one with a crash. `points:` lists them, after
the grid's (a sweep may have only `points:`):

    points:
      - set: {protocols.talk: free}                       # its overrides, after the sweep's `set`
        name: free_talk                                   # its name: p20-free_talk
        at: {network.links.0.link.delay_steps: 0, network.links.0.link.loss: 0.0}
      - set: {agents.landmarks.assignment: nearest}
        name: no_talk
        role: no_talk

A point's `set` is applied after the sweep's `set` and may replace a key of it (the free-talk
point above replaces a `protocols.talk: env_steps` that every grid point has); it may name grid
keys too. Two points that would run the same overrides are refused. The rest only tells
`orchestrate report` how to read the point (orchestrator/sweep_effects.py): `at` places it on
the grid's axes (grid keys only; by default the grid keys its `set` gives), for a setting that
stands for an axis value no config can take (free talk as delay 0); `line` names a line of its
own on those axes (a crash at every delay); `role: no_talk` marks the run without the
communication under test, drawn as a level on every axis and the floor D50 is measured from
(at most one point).

Without a sweep file, a run config and the command line do the same:

    orchestrate sweep configs/tiny_ring.yaml --grid network.default_link.loss=0,0.1,0.3 --seeds 0-2

**Before launching anything**, every point's config is built (base + `set` + the point's grid
values + `run.seed`) and validated with the same schema as `orchestrate up`, faults that `up`
would refuse are refused, and the env check and bind-host check run once per distinct env /
network section: a bad grid value is a ConfigError naming the key and the points it breaks,
and nothing is launched.

**Each run is a child `orchestrate up` process** in its own session (so one run's signal
handlers, sockets and zygote cannot leak into the next, and `--parallel N` is just N children).
A run that fails is recorded (exit code, status `failed`) and the sweep goes on. Ctrl-C or
SIGTERM stops the sweep cleanly: no new run starts, each running child gets SIGINT, as if the
user had pressed Ctrl-C on that `orchestrate up` alone (before its launch it exits at once; once
running, its own clean shutdown: nodes told to drain, then signalled, every child reaped); a
child still there after `STOP_GRACE_S` is SIGKILLed and the nodes it left are stopped from their
pid files (`orchestrate down`). Every run that ends after the stop began is marked
`interrupted`, whatever its exit code. The index is rewritten atomically after every change, so it is always a
true record of what ran, even if the sweep itself is killed. (`kill -9` of the sweep cannot stop
anything: the runs in flight go on to the end of their budget on their own, and
`orchestrate down <run dir>` stops one.)

**Part of a sweep**: `--only POINT,...` runs only those points (the spec stays the whole sweep's).
**Seeds run elsewhere** (another machine, a later day, a sweep stopped halfway) join one sweep with
`orchestrate sweep --merge DIR DIR ... --sweep-dir OUT`: the sweeps must have the same spec
(name, grid, fixed overrides; their seeds may differ; points added at the end of the file since
an earlier part ran are welcome, each earlier point unchanged), and OUT gets an index of every
(point, seed) that any of them ran, pointing at the run directories where they are (nothing is
copied), and `merged_from`: each source with its seeds and the commits its runs ran at. A
(point, seed) that two sources hold is taken from the first that may be scored (exit 0, budget
done), else from the first given. A source may also be a sweep whose run directories are gone,
by its saved record (`orchestrate report SWEEP --save` writes `report/sweep_record.json`; the
results pages' records in docs/results/ hold one under `sweep_record`): its runs carry what the
report needs of them (whether they may be scored, the build that made them, their numbers), so
points or seeds run on a later day join those measured before without running them again.
Whether runs made at different commits may be pooled is the reader's question; `orchestrate
report` lists the commits a sweep's runs ran at, and a seed rerun at both commits with
`run.reproducible` answers it.

The orchestrator never imports learning code; neither does this module.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.config import RunConfig, load_config, read_yaml
from orchestrator.faults import refused_faults
from orchestrator.overrides import parse_override
from orchestrator.run_records import run_record
from protocols.run.config_errors import ConfigError, format_validation_error, repeated

SWEEP_INDEX_FILENAME = "sweep.json"
SWEEP_LOGS_DIRNAME = "logs"
# How long a child `orchestrate up` may take to shut its run down after SIGINT before it is
# SIGKILLed and its nodes are stopped from their pid files (its own shutdown_timeout_s is 10 s
# by default, then SIGTERM, then SIGKILL of the nodes).
STOP_GRACE_S = 40.0
POLL_INTERVAL_S = 0.2
SEED_KEY = "run.seed"

EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130
REPO_ROOT = Path(__file__).resolve().parents[1]


class ExtraPoint(BaseModel):
    """One point beside the grid (`points:`; see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    set: dict[str, Any] = Field(min_length=1)  # its overrides, after the sweep's `set` (may replace its keys)
    name: str | None = Field(None, min_length=1, max_length=60, pattern=r"^[A-Za-z0-9._+-]+$")
    at: dict[str, Any] | None = None  # where the report draws it: grid keys and values
    line: str | None = Field(None, min_length=1)  # a line of its own on the grid's axes
    role: Literal["no_talk"] | None = None

    @field_validator("set")
    @classmethod
    def _no_seed(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        if SEED_KEY in overrides:
            raise ValueError(f"{SEED_KEY}: sweep seeds with `seeds:`, not in a point")
        return overrides

    @field_validator("at")
    @classmethod
    def _scalar_coordinates(cls, at: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (at or {}).items():
            if isinstance(value, (list, dict)):
                raise ValueError(f"{key}: expected a single value (where on that axis the report draws the point), got {value!r}")
        return at


class SweepSpec(BaseModel):
    """A sweep file: a base config, a grid of overrides, points beside it, seeds, fixed overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1)  # default: the sweep file's stem
    base: str = Field(min_length=1)  # the run config; a relative path is relative to the sweep file
    grid: dict[str, list[Any]] = {}
    points: list[ExtraPoint] = []
    seeds: list[int] = [0]
    set: dict[str, Any] = {}
    parallel: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _some_point(self) -> SweepSpec:
        if not self.grid and not self.points:
            raise ValueError("grid: expected at least one KEY: [VALUES] entry (or a `points:` list), got an empty grid")
        for position, point in enumerate(self.points):
            outside = sorted(set(point.at or {}) - set(self.grid))
            if outside:
                raise ValueError(f"points.{position}.at: expected keys of the grid ({', '.join(self.grid) or 'none'}): "
                                 f"`at` places the point on the grid's axes; got {', '.join(outside)}")  # fmt: skip
        roles = [position for position, point in enumerate(self.points) if point.role is not None]
        if len(roles) > 1:
            raise ValueError(f"points.{roles[1]}.role: at most one point has role no_talk (the floor D50 is "
                             f"measured from); points {', '.join(map(str, roles))} have it")  # fmt: skip
        names = repeated([point.name for point in self.points if point.name is not None])
        if names:
            raise ValueError(f"points: each name once, got {', '.join(names)} more than once")
        return self

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: expected a non-empty list of values, got []")
            rendered = [override_text(key, value) for value in values]
            if len(set(rendered)) != len(rendered):
                raise ValueError(f"{key}: values repeat ({values}); give each value once")
            if key == SEED_KEY:
                raise ValueError(f"{key}: sweep seeds with `seeds:`, not in the grid")
        return grid

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("expected at least one seed, got []")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"expected each seed once, got {seeds}")
        if any(seed < 0 for seed in seeds):
            raise ValueError(f"expected seeds >= 0, got {seeds}")
        return seeds


@dataclass
class SweepRun:
    """One (point, seed): what it sets, where it runs, how it ended."""

    point: str
    point_index: int
    seed: int
    grid_values: dict[str, Any]  # the swept keys only (a point beside the grid: its own `set`)
    overrides: list[str]  # every --set given to `orchestrate up`, in order
    run_dir: str
    log: str
    # How `orchestrate report` reads the point (ExtraPoint): where it is on the grid's axes, the
    # line it belongs to there (None: the grid's own), its role (None, or "no_talk").
    coordinates: dict[str, Any] = field(default_factory=dict)
    line: str | None = None
    role: str | None = None
    status: str = "pending"  # pending | running | ok | failed | interrupted | not_started
    exit_code: int | None = None
    started_at: float | None = None
    duration_s: float | None = None
    error_tail: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.run_dir).name


# ------------------------------------------------------------------------------------------
# Loading and expanding
# ------------------------------------------------------------------------------------------


def override_text(key: str, value: Any) -> str:
    """`key=VALUE` with VALUE as YAML that parses back to `value` (flow style, one line)."""
    rendered = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    rendered = rendered.removesuffix("...").strip()  # a scalar document ends with "..."
    return f"{key}={rendered}"


def parse_seeds(text: str) -> list[int]:
    """`'0-4'` -> [0, 1, 2, 3, 4]; `'0,3,7'` -> [0, 3, 7]; `'2'` -> [2]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            seeds.extend(range(int(low), int(high) + 1) if dash else [int(part)])
        except ValueError:
            raise ConfigError([f"--seeds {text!r}: expected a range like 0-4 or a list like 0,3,7, got {part!r}"]) from None
    return seeds


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """`--grid KEY=V1,V2,...` (each value YAML) or `--grid 'KEY=[V1, V2]'` -> (KEY, values)."""
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key or not raw.strip():
        raise ConfigError([f"--grid {text!r}: expected KEY=V1,V2,... e.g. network.default_link.loss=0,0.1,0.3"])
    raw = raw.strip()
    parts = [raw] if raw.startswith("[") else [part.strip() for part in raw.split(",")]
    values: list[Any] = []
    for part in parts:
        segments, value = parse_override(f"{key}={part}")
        values.extend(value if raw.startswith("[") and isinstance(value, list) else [value])
    return ".".join(segments), values


def load_sweep(path: str | Path, seeds: list[int] | None = None, extra_set: list[str] = (),
               grid: list[str] = ()) -> tuple[SweepSpec, Path]:  # fmt: skip
    """The sweep in `path` and the absolute path of its base config. Raises ConfigError naming
    the field.

    `path` is a sweep file (a mapping with `base:`), or a run config itself, which is then the
    base and needs `grid` (`--grid KEY=V1,V2` options). Seeds, fixed overrides (`--set`) and
    grid keys from the command line replace or extend the file's.
    """
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping with base, grid, seeds, set at the top level, got {type(data).__name__}"], str(path))
    if "base" not in data:
        # A run config: sweep it with the command line's grid.
        if not grid:
            raise ConfigError([f"{path} is a run config, not a sweep file (no `base:`); give the grid with "
                               "--grid KEY=V1,V2,... or write a sweep file (see configs/sweeps/)"])  # fmt: skip
        data = {"name": path.stem, "base": str(path.resolve()), "grid": {}}
    if grid:
        data = {**data, "grid": {**(data.get("grid") or {}), **dict(parse_grid_option(text) for text in grid)}}
    if seeds is not None:
        data = {**data, "seeds": seeds}
    if extra_set:
        fixed = dict(data.get("set") or {})
        for text in extra_set:
            segments, value = parse_override(text)
            fixed[".".join(segments)] = value
        data = {**data, "set": fixed}
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, SweepSpec), str(path)) from None
    if spec.name is None:
        spec = spec.model_copy(update={"name": path.stem})
    base = Path(spec.base)
    if not base.is_absolute():
        base = (path.parent / base).resolve()
    return spec, base


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each grid key's last name segment (`network.links.0.link.delay_s` -> `delay_s`), or the
    whole key where two keys would share one."""
    short = {key: [s for s in key.split(".") if not s.isdigit()][-1] for key in keys}
    counts = {name: list(short.values()).count(name) for name in short.values()}
    return {key: (name if counts[name] == 1 else key) for key, name in short.items()}


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def point_name(index: int, grid_values: dict[str, Any], short: dict[str, str]) -> str:
    parts = []
    for key, value in grid_values.items():
        rendered = override_text(key, value).partition("=")[2]
        parts.append(_UNSAFE.sub("-", f"{short[key]}{rendered}").strip("-"))
    return f"p{index:02d}-" + "_".join(parts)[:100]


def expand(spec: SweepSpec, sweep_dir: Path) -> list[SweepRun]:
    """Every (point, seed) of the sweep: the grid's points in grid order (the last key fastest),
    then `points:` in their order; seeds innermost."""
    problems = []
    for key in [*spec.set, *spec.grid, *(key for point in spec.points for key in point.set)]:
        try:
            parse_override(f"{key}=0")
        except ConfigError as error:
            problems.extend(error.problems)
    both = sorted(set(spec.set) & set(spec.grid))
    if both:
        problems.append(f"set and grid both give {', '.join(both)}; a key is either fixed or swept")
    if SEED_KEY in spec.set:
        problems.append(f"set.{SEED_KEY}: give seeds with `seeds:`, not as a fixed override")
    if problems:
        raise ConfigError(problems)
    # (name, its swept values, the sweep's fixed overrides it keeps, coordinates, line, role)
    points: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], str | None, str | None]] = []
    keys = list(spec.grid)
    short = _short_names(keys)
    if keys:
        for values in itertools.product(*(spec.grid[key] for key in keys)):
            grid_values = dict(zip(keys, values))
            points.append((point_name(len(points), grid_values, short), grid_values, spec.set, grid_values, None, None))
    for extra in spec.points:
        index = len(points)
        name = f"p{index:02d}-{extra.name}" if extra.name else point_name(index, extra.set, _short_names(list(extra.set)))
        kept = {key: value for key, value in spec.set.items() if key not in extra.set}
        at = extra.at if extra.at is not None else {key: value for key, value in extra.set.items() if key in spec.grid}
        points.append((name, extra.set, kept, at, extra.line, extra.role))
    runs, seen = [], {}
    for index, (name, swept_values, kept, coordinates, line, role) in enumerate(points):
        fixed = [override_text(key, value) for key, value in kept.items()]
        swept = [override_text(key, value) for key, value in swept_values.items()]
        config = tuple(sorted({text.partition("=")[0]: text for text in [*fixed, *swept]}.items()))
        if config in seen:
            raise ConfigError([f"points {seen[config]} and {name} run the same overrides; give each point once"])
        seen[config] = name
        for seed in spec.seeds:
            run_name = f"{name}-seed{seed}"
            runs.append(SweepRun(
                point=name, point_index=index, seed=seed, grid_values=swept_values,
                overrides=[*fixed, *swept, override_text(SEED_KEY, seed)],
                run_dir=str(sweep_dir / run_name), log=str(sweep_dir / SWEEP_LOGS_DIRNAME / f"{run_name}.log"),
                coordinates=coordinates, line=line, role=role,
            ))  # fmt: skip
    return runs


# ------------------------------------------------------------------------------------------
# Validation: every point before any launch
# ------------------------------------------------------------------------------------------


def validate_runs(base: Path, runs: list[SweepRun], check_env: bool = True, source: str | None = None) -> list[RunConfig]:
    """Every run's config, validated as `orchestrate up` would; a ConfigError lists each problem
    once with the points it breaks (and the grid values of the first), so the key is named."""
    by_problem: dict[str, list[SweepRun]] = {}
    configs: list[RunConfig] = []
    loaded: list[SweepRun] = []
    for run in runs:
        try:
            config = load_config(base, run.overrides)
        except ConfigError as error:
            for problem in error.problems:
                by_problem.setdefault(problem, []).append(run)
            continue
        for problem in refused_faults(config):
            by_problem.setdefault(problem, []).append(run)
        configs.append(config)
        loaded.append(run)
    if not by_problem and check_env:
        for run, problems in zip(loaded, _check_once_per_section(source or str(base), configs)):
            for problem in problems:
                by_problem.setdefault(problem, []).append(run)
    if by_problem:
        raise ConfigError([_problem_with_points(problem, failing) for problem, failing in by_problem.items()], source or str(base))
    return configs


def _problem_with_points(problem: str, failing: list[SweepRun]) -> str:
    points = sorted({run.point for run in failing})
    first = failing[0]
    values = ", ".join(f"{key}={value!r}" for key, value in first.grid_values.items())
    listed = ", ".join(points[:4]) + (f" and {len(points) - 4} more" if len(points) > 4 else "")
    return f"{problem} (in {len(points)} point(s): {listed}; the first has {values})"


def _check_once_per_section(source: str, configs: list[RunConfig]) -> list[list[str]]:
    """The env checks and the bind-host check of `orchestrate up`: the env is built once per
    distinct env section (a sweep over delays builds it once, not once per point), and every
    point's config is held against what it built (agent count, learner, checkpoints). Returns
    each config's problems with its env; raises ConfigError for an env that cannot be built."""
    from orchestrator.prelaunch import check_bind_host_before_launch, fetch_env_facts, launch_problems

    facts, seen_network, problems = {}, set(), []
    for config in configs:
        env_key = json.dumps(config.env.model_dump(mode="json"), sort_keys=True)
        if env_key not in facts:
            facts[env_key] = fetch_env_facts(config, source)
        problems.append(launch_problems(config, facts[env_key]))
        network_key = (config.network.transport, config.network.bind_host)
        if network_key not in seen_network:
            seen_network.add(network_key)
            check_bind_host_before_launch(config, source)
    return problems


# ------------------------------------------------------------------------------------------
# The index
# ------------------------------------------------------------------------------------------


def write_index(sweep_dir: Path, spec: SweepSpec, base: Path, runs: list[SweepRun], state: str, started: str,
                parallel: int) -> Path:  # fmt: skip
    """Rewrite `<sweep_dir>/sweep.json` atomically (a reader never sees half a file)."""
    path = sweep_dir / SWEEP_INDEX_FILENAME
    index = {
        "sweep": spec.name,
        "base_config": str(base),
        "grid": spec.grid,
        "points": [point.model_dump(exclude_none=True) for point in spec.points],
        "seeds": spec.seeds,
        "set": spec.set,
        "parallel": parallel,  # as run (the CLI's --parallel wins over the file's)
        "state": state,  # running | finished | interrupted
        "started": started,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [asdict(run) for run in runs],
    }
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(index, file, indent=1, default=str)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return path


def read_index(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / SWEEP_INDEX_FILENAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: no sweep index here (expected a directory made by `orchestrate sweep`)"]) from None
    except json.JSONDecodeError as error:
        raise ConfigError([f"{path}: not valid JSON ({error})"]) from None


# Where a bench's results record (docs/results/*.json) holds the record of the sweep it read.
SWEEP_RECORD_KEY = "sweep_record"


def read_source(source: Path) -> dict[str, Any]:
    """The index of a sweep to merge: a sweep directory's, or a saved sweep record (a JSON file:
    `orchestrate report SWEEP --save` writes `report/sweep_record.json`, and a results page's
    record holds one under `sweep_record`), whose runs carry their numbers with them."""
    if not source.is_file():
        return read_index(source)
    try:
        data = json.loads(source.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError([f"{source}: not valid JSON ({error})"]) from None
    index = data.get(SWEEP_RECORD_KEY, data) if isinstance(data, dict) else None
    if not isinstance(index, dict) or not isinstance(index.get("runs"), list) or any(
            "summary" not in run for run in index["runs"]):
        raise ConfigError([f"{source}: expected a sweep directory or a saved sweep record (report/sweep_record.json, "
                           f"or a results record with `{SWEEP_RECORD_KEY}`), whose every run holds its summary"])
    return index


def names_point(name: str, point: str) -> bool:
    """Whether `name` names the sweep point `point` (`p07-crash_d1`): its whole name, its place
    (`p07`) or its own name (`crash_d1`), as every command that takes a point's name accepts it."""
    place, _, own = point.partition("-")
    return name in (point, place, own)


def only_points(runs: list[SweepRun], names: list[str]) -> list[SweepRun]:
    """The runs of the points named (`names_point`): the rest of a sweep, or one point again,
    keeping the sweep's spec (so the result merges with the sweep's other runs)."""
    points = list(dict.fromkeys(run.point for run in runs))
    wanted, unknown = set(), []
    for name in (name.strip() for name in names):
        matches = [point for point in points if names_point(name, point)]
        if matches:
            wanted.update(matches)
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError([f"--only: no point named {', '.join(map(repr, unknown))}; the sweep's points: {', '.join(points)}"])
    return [run for run in runs if run.point in wanted]


# What two sweeps must share to be merged: everything that decides what a (point, seed) runs.
# Their `points:` lists may differ in length only (see `merged_points`).
MERGE_SPEC_FIELDS = ("sweep", "grid", "set")


def merged_points(sources: list[Path], indexes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The merged sweep's `points:`: the longest list among the sources. A sweep file may gain
    points at its end after some of its runs were made (a point's name and place, pNN, stay), so
    each source's list must be the longest's first entries; a point that ran may not change."""
    lists = [index.get("points") or [] for index in indexes]
    longest = max(lists, key=len)
    problems = [f"--merge: the points of {source} are not the first {len(points)} of the longest list among the "
                f"sources ({len(longest)}): a sweep file may gain points at its end, but a point that ran may not "
                f"change or move"
                for source, points in zip(sources, lists) if points != longest[:len(points)]]  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return longest


def merge_sweeps(sources: list[Path], out_dir: Path) -> dict[str, Any]:
    """One sweep index in `out_dir` over the runs of `sources`, sweep directories or saved sweep
    records (see the module docstring)."""
    if len(sources) < 2:
        raise ConfigError([f"--merge: expected at least two sweep directories or records, got {len(sources)}"])
    indexes = [read_source(source) for source in sources]
    first = indexes[0]
    problems = [f"--merge: {source} has another {name} than {sources[0]} ({index.get(name)!r} vs {first.get(name)!r})"
                for source, index in zip(sources[1:], indexes[1:]) for name in MERGE_SPEC_FIELDS
                if index.get(name) != first.get(name)]  # fmt: skip
    if problems:
        raise ConfigError(problems)
    points = merged_points(sources, indexes)
    chosen: dict[tuple[str, int], dict[str, Any]] = {}
    merged_from = []
    for source, index in zip(sources, indexes):
        commits = set()
        for run in index["runs"]:
            run = {**run, "run_dir": str(run_dir_of(source.parent if source.is_file() else source, run))}
            record = (run_record(Path(run["run_dir"]), run["exit_code"]) if Path(run["run_dir"]).is_dir()
                      else recorded_summary(run)["record"])
            if record is not None:
                commits.add(record["git_commit"])
            key = (run["point"], run["seed"])
            scored = record is not None and record["refused"] is None
            if key not in chosen or (scored and not chosen[key]["scored"]):
                chosen[key] = {"run": run, "scored": scored}
        merged_from.append({"dir": str(source), "seeds": index["seeds"], "state": index["state"],
                            "parallel": index.get("parallel"), "commits": sorted(c for c in commits if c)})  # fmt: skip
    runs = sorted((entry["run"] for entry in chosen.values()), key=lambda run: (run["point_index"], run["seed"]))
    claim_sweep_dir(out_dir)
    index = {"sweep": first.get("sweep"), "grid": first.get("grid"), "points": points, "set": first.get("set"),
             "base_config": first["base_config"],
             "seeds": sorted({run["seed"] for run in runs}), "parallel": None, "state": "merged",
             "started": min((index["started"] for index in indexes if index.get("started")), default=None),
             "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "merged_from": merged_from, "runs": runs}  # fmt: skip
    path = out_dir / SWEEP_INDEX_FILENAME
    path.write_text(json.dumps(index, indent=1, default=str))
    return index


def recorded_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What a sweep record holds of a run whose directory is not here: `record` (run_record's
    fields, None for a run that never started) and `headline` (the report's numbers, None likewise)."""
    return run.get("summary") or {"record": None, "headline": None}


def run_dir_of(sweep_dir: Path, run: dict[str, Any]) -> Path:
    """Where a run of an index is now: where it ran, or beside the index if the sweep moved."""
    recorded = Path(run["run_dir"])
    return recorded if recorded.is_dir() else sweep_dir.absolute() / recorded.name


def default_sweep_dir(spec: SweepSpec) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "sweeps" / f"{spec.name}-{stamp}"


def claim_sweep_dir(sweep_dir: Path) -> None:
    """The sweep dir must be new or empty: a sweep never mixes its runs with another's."""
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError([f"--sweep-dir {sweep_dir}: expected a new or empty directory, got a file"])
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise ConfigError([f"--sweep-dir {sweep_dir}: expected a new or empty directory, it already holds files"])
    (sweep_dir / SWEEP_LOGS_DIRNAME).mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


class SweepRunner:
    """Runs the sweep's children, at most `parallel` at once; see the module docstring."""

    def __init__(self, spec: SweepSpec, base: Path, runs: list[SweepRun], sweep_dir: Path, parallel: int,
                 out=None) -> None:  # fmt: skip
        self.spec, self.base, self.runs, self.sweep_dir = spec, base, runs, sweep_dir
        self.parallel = parallel
        self.out = out if out is not None else sys.stderr
        self.interrupted: str | None = None
        self.stopping = False  # set once the running children have been told to stop
        self.children: dict[int, tuple[SweepRun, subprocess.Popen, Any]] = {}  # pid -> run, process, log file
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _save(self, state: str = "running") -> None:
        write_index(self.sweep_dir, self.spec, self.base, self.runs, state, self.started, self.parallel)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._save()
            pending = list(self.runs)
            while (pending or self.children) and not self.interrupted:
                while pending and len(self.children) < self.parallel and not self.interrupted:
                    self._start(pending.pop(0))
                self._reap()
                if self.children:
                    time.sleep(POLL_INTERVAL_S)
            if self.interrupted:
                self._stop_children()
                for run in pending:
                    run.status = "not_started"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # Whatever happened above, no child is left behind unreaped.
            if self.children:
                self._stop_children()
            self._save("interrupted" if self.interrupted else "finished")
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if all(run.status == "ok" for run in self.runs) else EXIT_FAILURE

    def _on_signal(self, signum, frame) -> None:
        if not self.interrupted:
            self.interrupted = f"interrupted by {signal.Signals(signum).name}"

    def _start(self, run: SweepRun) -> None:
        argv = [sys.executable, "-m", "orchestrator", "up", str(self.base)]
        for text in run.overrides:
            argv += ["--set", text]
        argv += ["--run-dir", run.run_dir]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        log = open(run.log, "wb")
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        # Its own session: the terminal's Ctrl-C reaches only the sweep, which then stops each
        # child itself (see _stop_children) and marks it interrupted, rather than failed.
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)  # fmt: skip
        run.status, run.started_at = "running", time.time()
        self.children[process.pid] = (run, process, log)
        self._say(f"[{self._done_count()}/{len(self.runs)}] start {run.name}: {' '.join(run.overrides[-len(run.grid_values) - 1:])}")
        self._save()

    def _done_count(self) -> int:
        return sum(run.status in ("ok", "failed", "interrupted") for run in self.runs)

    def _reap(self) -> None:
        for pid, (run, process, log) in list(self.children.items()):
            code = process.poll()
            if code is None:
                continue
            self._finish(run, process, log, code)
            verdict = "ok" if code == 0 else f"FAILED (exit {code}; see {run.log})"
            self._say(f"[{self._done_count()}/{len(self.runs)}] {run.name}: {verdict} in {run.duration_s:.1f} s")

    def _finish(self, run: SweepRun, process: subprocess.Popen, log, code: int) -> None:
        del self.children[process.pid]
        log.close()
        run.exit_code = code
        run.duration_s = round(time.time() - (run.started_at or time.time()), 3)
        if code == 0:
            run.status = "ok"
        elif self.stopping:
            run.status = "interrupted"
        else:
            run.status = "failed"
            run.error_tail = _log_tail(Path(run.log))
        self._save()

    def _stop_children(self) -> None:
        """SIGINT every running child (a lone `up`'s Ctrl-C path: a clean shutdown at any stage),
        SIGKILL what is left after the grace period and stop the nodes it left from their pid
        files; reap all of them."""
        if not self.children:
            return
        self.stopping = True
        self._say(f"sweep {self.interrupted or 'stopping'}: stopping {len(self.children)} running run(s)")
        for _, process, _ in self.children.values():
            _signal(process, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.children and time.monotonic() < deadline:
            for pid, (run, process, log) in list(self.children.items()):
                code = process.poll()
                if code is not None:
                    self._finish(run, process, log, code)
            time.sleep(POLL_INTERVAL_S)
        for pid, (run, process, log) in list(self.children.items()):
            self._say(f"{run.name}: its orchestrator is still running {STOP_GRACE_S:g} s after SIGINT: SIGKILL")
            _signal(process, signal.SIGKILL)
            code = process.wait()
            _stop_orphans(Path(run.run_dir))
            self._finish(run, process, log, code)
            run.status = "interrupted"


def _signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass


def _stop_orphans(run_dir: Path) -> None:
    """The nodes a killed orchestrator left: `orchestrate down` stops them from their pid files."""
    if not run_dir.is_dir():
        return
    # `orchestrate down` in a process of its own (the CLI imports this module, not the reverse).
    subprocess.run([sys.executable, "-m", "orchestrator", "down", str(run_dir), "--wait", "5"], check=False)


def _log_tail(path: Path, lines: int = 5) -> list[str]:
    try:
        text = path.read_bytes()[-16384:].decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
