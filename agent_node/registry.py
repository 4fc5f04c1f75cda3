"""Every capability of a run, described once: what the orchestrator and the node read of it.

A capability (agent_node/capability.py) is one thing an agent does beside acting and learning:
consensus, the landmarks' agreement, goals, training through a learner node, recording, a user's
peer protocols, or a user's own. The node drives its node-side part through the `Capability`
interface; everything else of the run reads its `CapabilityDescription`:

- `section` and `config_model`: where its settings live in a run config and their schema. A
  built-in's section is a field of the run's schema (`agents.landmarks`, `protocols.consensus`,
  `training`); a user's is its entry in the run's `capabilities` list, `{kind: <its name>,
  <its settings>}`, validated by its `config_model` (a `CapabilityConfig`, unknown keys refused);
- `problems(run, topology)`: its cross-checks against the rest of the config, one message per
  problem starting with the field path; `orchestrate validate` and `up` run them before anything
  starts, with the run's other checks (orchestrator/config.py, `RunConfig`);
- `extra_nodes(run)`: the processes of its own it needs in the plan (CTDE's learner node, the
  goals' external supervisor), each with the endpoint it advertises in the orchestrator's
  directory under the capability's service name (`Directory.services`);
- `node_side`: the import path of its `build(run, node)` (agent_node/capability.py), or None;
- `summary(run)`: a few words for `orchestrate validate`'s line about the run, or None;
  `for_evaluation(run, data)`: what `orchestrate evaluate` turns off of it, or why it refuses;
- `report`: its section of `orchestrate report`: a summary of its agents' metrics, the lines
  printed, the headline numbers a sweep aggregates, its plots (`ReportSection`); `hparams`:
  its settings that TensorBoard shows beside the headline.

Parley's own descriptions and a user's are found the same way, by `CAPABILITIES` (the `Registry`
of agent_node/plugins.py that learners and world models use): a built-in name, an installed
entry point of the group `parley.capabilities`, or an import path `package.module:NAME` to a
`CapabilityDescription`. Built-in ones are always part of a run (their sections decide whether
they do anything); a user's is part of the runs whose `capabilities` list names it.

Nothing here imports torch, the orchestrator or the env server: the orchestrator validates and
reports through these descriptions without importing learning code.
"""

from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Mapping, Sequence

from pydantic import BaseModel, BeforeValidator, SerializeAsAny

from agent_node.plugins import Entry, PluginConfig, PluginError, Registry, check_list_entry, validate_each
from protocols.run.config_errors import repeated
from protocols.run.import_path import import_object

if TYPE_CHECKING:
    from protocols.engines.topology import Topology

# An agent's metrics records, by node id (`orchestrate report` reads them from
# <run dir>/nodes/<node id>/metrics.jsonl); the env server's are not among them.
AgentMetrics = Mapping[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class ExtraNode:
    """A process a capability adds to the run, beside the env server and the agents.

    It is started as `python -m <module>` like every node, with the node id, role and seed the
    orchestrator derives (after the agents and the env server, in registration order). It
    advertises its endpoint for `service`, and the orchestrator hands that endpoint to every node
    in `Directory.services[service]`."""

    node_id: str
    role: str  # protocols/run/settings.py NodeRole
    module: str
    service: str  # an endpoint purpose of protocols/run/settings.py
    torch_threads: int = 1
    # What the orchestrator's fork server imports ahead for it (not `module` itself: the fork
    # server runs that as __main__, and runpy warns about a preloaded one).
    preload: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadlineColumn:
    """A headline number of the capability's report section, as a sweep's table shows it."""

    key: str
    title: str
    format: str


@dataclass(frozen=True)
class TimelinePanel:
    """A panel of a run's timeline plot (`orchestrate report --save`): for each agent, each
    series `(metric key, label)` over seconds since the start, the first as points joined by a
    line, the others dotted in the same colour."""

    ylabel: str
    series: tuple[tuple[str, str], ...]
    log_scale: bool = False
    nothing: str = "nothing to show"  # written across the panel when no agent has a value


@dataclass(frozen=True)
class ReportSection:
    """A capability's part of a run's report (orchestrator/report.py reads it).

    - `summarize(metrics)`: the agents' metrics records -> a JSON-ready summary, or None when
      the run did not use the capability (nothing of it in the metrics);
    - `lines(summary)`: what `orchestrate report` prints of it;
    - `headline(summary)`: its headline numbers (None for each when `summary` is None), the
      ones in `columns` shown in a sweep's table too;
    - `timeline`: a panel of its own under the run's timeline plot, when the run used it;
    - `sweep_panels`: `(headline key, label, log scale)` drawn against a sweep's first axis.
    """

    summarize: Callable[[AgentMetrics], dict[str, Any] | None]
    lines: Callable[[dict[str, Any]], list[str]]
    headline: Callable[[dict[str, Any] | None], dict[str, float | None]] = lambda summary: {}
    columns: tuple[HeadlineColumn, ...] = ()
    timeline: TimelinePanel | None = None
    sweep_panels: tuple[tuple[str, str, bool], ...] = ()


# The share of an agent's training episodes a report section calls "the last 20%".
LAST_FRACTION = 0.2


def mean_of(values: Sequence[float | None]) -> float | None:
    """The mean of the finite values, or None when there are none (a report's "-")."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def fmt(value: Any, spec: str = ".3g") -> str:
    """A number as a report prints it; None and non-finite values as "-"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _no_problems(run: Any, topology: Topology | None) -> list[str]:
    return []


def _no_nodes(run: Any) -> list[ExtraNode]:
    return []


@dataclass(frozen=True)
class CapabilityDescription:
    """One capability, as the config loader, the plan, the directory and the report see it.

    `run` in the callables is the run's validated config (orchestrator/config.py `RunConfig`:
    its sections `run`, `env`, `agents`, `training`, `topology`, `protocols`, `network`,
    `launch`), passed in by the orchestrator, which this module does not import."""

    name: str
    # Where its settings live in a run config (a dotted path, for messages and the docs).
    section: str
    # The schema of that section: a built-in's field type, or a user's `CapabilityConfig` subclass.
    config_model: type[BaseModel] | None = None
    node_side: str | None = None  # `package.module:build`, the node-side part
    problems: Callable[[Any, Topology | None], list[str]] = _no_problems
    extra_nodes: Callable[[Any], list[ExtraNode]] = _no_nodes
    report: ReportSection | None = None
    # `orchestrate evaluate`: what an evaluation of a finished run changes of the capability in
    # the run's resolved data (in place: the agents act greedily from their checkpoints and
    # nothing may move their weights), or why such a run cannot be evaluated (field-path lines).
    for_evaluation: Callable[[Any, dict[str, Any]], list[str]] = lambda run, data: []
    # What `orchestrate validate` says of it in its one-line summary of the run (None: nothing).
    summary: Callable[[Any], str | None] = lambda run: None
    # Config paths whose scalar settings go beside the run's headline in TensorBoard's hparams.
    hparams: tuple[str, ...] = ()


# Parley's own capabilities, by import path (imported when first asked for), in the order the
# node asks them to build the learner (a goal agent's goal-conditioned learner first), to feed it
# (CTDE's stream to the learner node before the landmarks' relabelled rows) and to hold an
# observation (consensus averages first, then the landmarks are agreed on the observation it
# releases). A user's capabilities come after them, in the order of the run's `capabilities`.
BUILTIN_DESCRIPTIONS = {
    "goals": "agent_node.goals.description:CAPABILITY",
    "ctde": "agent_node.ctde.description:CAPABILITY",
    "consensus": "agent_node.consensus.description:CAPABILITY",
    "landmarks": "agent_node.landmarks.description:CAPABILITY",
    "offline": "agent_node.offline.description:CAPABILITY",
    "peer_protocols": "agent_node.peer_protocols.description:CAPABILITY",
}


class CapabilityConfig(PluginConfig):
    """A user's capability (agent_node/registry.py), one entry of the run's `capabilities` list:
    `kind` names it (an installed entry point of the group `parley.capabilities`, or an import
    path `package.module:NAME` to its `CapabilityDescription`), and the other keys are its own
    settings, validated by its `config_model`, a subclass of this class."""


def _check_description(kind: str, target: Any) -> CapabilityDescription:
    if not isinstance(target, CapabilityDescription):
        raise PluginError(f"{kind!r}: expected an agent_node.registry.CapabilityDescription, got {type(target).__name__} {target!r}")
    model = target.config_model
    if not (inspect.isclass(model) and issubclass(model, CapabilityConfig)):
        raise PluginError(
            f"{kind!r}: capability {target.name!r} must give its settings' schema as `config_model`, a subclass of "
            f"agent_node.registry.CapabilityConfig (its section in a run is {{kind: {kind}, <settings>}}); got {model!r}"
        )
    if target.name in BUILTIN_DESCRIPTIONS:
        raise PluginError(f"{kind!r}: the name {target.name!r} is Parley's own capability's; give yours another")
    return target


class CapabilityRegistry(Registry):
    """`Registry` resolution (built-in name, entry point, import path) for descriptions, which
    are objects rather than classes: `resolve(kind).load_builder()` is the description."""

    def _entry_for_class(self, kind: str, target: Any, source: str) -> Entry:
        description = _check_description(kind, target)
        return Entry(name=kind, config_model=description.config_model, load_builder=lambda: description, source=source)

    def describe(self, kind: str) -> CapabilityDescription:
        return self.resolve(kind).load_builder()


CAPABILITIES = CapabilityRegistry(
    "capability", "parley.capabilities", (),
    {name: Entry(name=name, config_model=PluginConfig, load_builder=lambda path=path: import_object(path), source="built-in")
     for name, path in BUILTIN_DESCRIPTIONS.items()},
)


def builtin_descriptions() -> list[CapabilityDescription]:
    return [CAPABILITIES.describe(name) for name in BUILTIN_DESCRIPTIONS]


def run_descriptions(run: Any) -> list[CapabilityDescription]:
    """The capabilities of a run: Parley's own, then the user's its `capabilities` list names."""
    return builtin_descriptions() + [CAPABILITIES.describe(config.kind) for config in getattr(run, "capabilities", ())]


def settings(run: Any, description: CapabilityDescription) -> CapabilityConfig | None:
    """A user capability's own section of `run` (its entry in `capabilities`), or None."""
    return next((config for config in getattr(run, "capabilities", ()) if isinstance(config, description.config_model)), None)


def capability_problems(run: Any, topology: Topology | None) -> list[str]:
    """Every capability's cross-checks of `run`, in registration order."""
    return [problem for description in run_descriptions(run) for problem in description.problems(run, topology)]


def extra_nodes(run: Any) -> list[ExtraNode]:
    """The processes the run's capabilities add, in registration order."""
    return [node for description in run_descriptions(run) for node in description.extra_nodes(run)]


def node_builds(run: Any) -> list[str]:
    """The node-side `build` import paths of the run's capabilities, in registration order."""
    return [description.node_side for description in run_descriptions(run) if description.node_side is not None]


# ------------------------------------------------------------------ the `capabilities` section


def _validate_one(item: Any, section: str) -> CapabilityConfig:
    if isinstance(item, CapabilityConfig):
        return item
    check_list_entry(item, section, "capability", CAPABILITIES.group, "NAME")
    if item["kind"] in BUILTIN_DESCRIPTIONS:
        raise ValueError(f"{section}.kind: {item['kind']!r} is Parley's own capability, configured in its own section; "
                         "this list takes a user's capabilities")
    return CAPABILITIES.validate(item, lambda data: CapabilityConfig.model_validate(data), section)


def _validate_capabilities(value: Any) -> Any:
    """The run's `capabilities`: each entry resolved and validated by its own config model; every
    problem is one line naming `capabilities.<i>`."""
    built = validate_each(value, "capabilities", _validate_one)
    names = repeated([CAPABILITIES.describe(config.kind).name for config in built])
    if names:
        raise ValueError(f"capabilities: each capability runs once per agent; got {', '.join(repr(name) for name in names)} more than once")
    return tuple(built)


# The type of a run's `capabilities`: each entry the capability's own config model, dumped with its
# own fields (so the resolved config names the capability and its settings again).
CapabilityConfigs = Annotated[tuple[SerializeAsAny[CapabilityConfig], ...], BeforeValidator(_validate_capabilities)]
