"""Learners, world models and peer protocols that Parley does not ship: found by name, checked, built.

Every learner and every world model of a run, Parley's own and a user's alike, is reached through
one `Registry` (`agent_node.algos.LEARNERS`, `agent_node.world_models.WORLD_MODELS`); a user's
peer protocols through a third (`agent_node.peer_protocols.PROTOCOLS`, group `parley.protocols`,
no built-ins: Parley's own protocols are capabilities with sections of their own). The
`kind` of the YAML section names it in one of three ways, tried in this order:

1. a built-in short name (`dqn`, `sac`, `ensemble`, ...): the registry's own table;
2. the name of an installed entry point in the group `parley.learners` (or
   `parley.world_models`), which a package declares in its pyproject.toml:

       [project.entry-points."parley.learners"]
       ippo = "parley_ippo.learner:IPPOLearner"

3. an import path `package.module:Class`, like `env.name` takes for environments.

A plugin class carries its own typed config as the class attribute `config_model`, a subclass of
`PluginConfig` (extra keys forbidden, `kind` the name it was reached by), and implements the
methods of its role (`LEARNER_METHODS`, `WORLD_MODEL_METHODS`); the runtime builds it as
`Class(config, spec)`, where `spec` is what the run knows at build time (`LearnerSpec`,
`WorldModelSpec`). A built-in is the same thing with a builder function in place of the class.

Resolution happens while the config is validated (`orchestrate validate`, `up`, and each node
reading its resolved config), so a wrong import path, a missing class, a class without the
role's methods or a bad plugin config is a config error (exit 2) naming the field, before any
process starts. Resolving a plugin imports its module (and whatever that imports, torch
included); the built-ins' table imports nothing heavy, so a config of built-ins still validates
without torch.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, PlainSerializer, SerializationInfo, ValidationError, ValidationInfo, WrapValidator

from protocols.run.config_errors import describe_value, format_validation_error
from protocols.run.import_path import ImportPathError, import_object

ActionSpaceKind = Literal["discrete", "box"]

# What a learner the node drives must have (agent_node/roles.py: NodeLearner).
LEARNER_METHODS = ("act", "observe", "gradient_steps_due", "update", "counters", "state_dict", "load_state_dict")
# What a world model trained beside a learner must have (agent_node/consensus_subjects.py:
# LocalWorldModel fits it and scores it with predict) ...
WORLD_MODEL_METHODS = ("fit", "predict")
# ... and what consensus averages: its parameters (protocols.consensus.what:
# world_model_parameters) or its sufficient statistics (world_model_statistics). A world model
# has one pair or both; the run's schema holds `what` against the pairs it has.
WORLD_MODEL_PARAMETER_METHODS = ("get_params", "set_params")
WORLD_MODEL_STATISTICS_METHODS = ("export_statistics", "import_statistics")


class PluginError(ValueError):
    """A `kind` that names nothing usable; the message says what was expected and what came."""


class PluginConfig(BaseModel):
    """The base of a plugin's config model: unknown keys are errors, the config is frozen, and
    `kind` holds the name the plugin was reached by (so the resolved config names it again)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str


@dataclass(frozen=True)
class LearnerSpec:
    """What the runtime knows when it builds a node's learner (after the env server's welcome).

    - `observation_space`, `action_space`: this agent's gymnasium spaces (a landmark agent's
      observation already has its landmark's one-hot appended);
    - `seed`: the node's derived seed for the learner's stream (`derive_seed(run, node, "learner")`);
    - `num_agents`, `agent_index`: the env's possible agents and this node's place among them;
    - `state_space`: the env's global state space, when the env server publishes the global view;
    - `task_spec`: the task's reward function as data, when the env sends one (og_marl needs it);
    - `world_model_config`: the agent's `world_model` section, or None;
    - `goals`: the goal space a goal capability conditions its learner on (`goal_dqn`), or None;
    - `init_seed`: the seed of the initial networks when every agent starts from the same policy
      (`protocols.consensus.same_initial_policy`), else None (they come from `seed`).
    """

    observation_space: Any
    action_space: Any
    seed: int
    num_agents: int | None = None
    agent_index: int | None = None
    state_space: Any = None
    task_spec: Mapping[str, Any] | None = None
    world_model_config: BaseModel | None = None
    goals: GoalSpace | None = None
    init_seed: int | None = None


@dataclass(frozen=True)
class GoalSpace:
    """The goals a goal-conditioned learner acts towards, given by the capability that owns it
    (agent_node/goals/session.py, agent_node/amigo/session.py): how many, the reward of reaching one (for
    hindsight relabelling: `reward_fn(goal, achieved)`), and what the network sees of each
    (one row per goal; None: one-hot)."""

    num_goals: int
    reward_fn: Callable[[int, Any], float]
    goal_features: Any = None


@dataclass(frozen=True)
class WorldModelSpec:
    """What the runtime knows when it builds a world model: the flattened state size, the action
    size (a Discrete action enters one-hot, so its `n`) and the node's seed for the model."""

    state_dim: int
    action_dim: int
    seed: int


@dataclass(frozen=True)
class Entry:
    """One buildable kind: its config model, how to build it, and what the run checks against it.

    `builder` is called as `builder(config, spec)`; it is imported only when a node builds (the
    built-ins' builders import torch). `action_space` is the action space a learner acts in
    ("discrete", "box", or None for any), checked against the env before launch.
    """

    name: str
    config_model: type[BaseModel]
    load_builder: Callable[[], Callable[[Any, Any], Any]]
    source: str  # "built-in", "entry point <dist>", "import path"
    action_space: ActionSpaceKind | None = None
    # World models: what consensus can average (WORLD_MODEL_PARAMETER_METHODS, WORLD_MODEL_STATISTICS_METHODS).
    has_params: bool = True
    has_statistics: bool = True
    # What the built object must have, where it is not the role's own methods: a learner that a
    # capability wraps before the node drives it (goal_dqn inside its goal session).
    methods: tuple[str, ...] | None = None

    def build(self, config: BaseModel, spec: Any) -> Any:
        return self.load_builder()(config, spec)


class Registry:
    """The kinds of one role (learners, or world models): built-ins, entry points, import paths."""

    def __init__(self, role: str, group: str, methods: tuple[str, ...], builtins: Mapping[str, Entry],
                 check_class: Callable[[str, type], None] | None = None) -> None:
        self.role = role  # "learner" | "world model" | "peer protocol", for messages
        self.group = group  # the entry-point group
        self.methods = methods
        self.builtins = dict(builtins)
        # What else a plugin class of this role must have (a peer protocol: registered message
        # types); raises PluginError naming what is wrong.
        self.check_class = check_class

    # ------------------------------------------------------------------ resolution

    def resolve(self, kind: str) -> Entry:
        """The entry `kind` names (see the module docstring for the order); PluginError otherwise."""
        if not isinstance(kind, str) or not kind:
            raise PluginError(f"expected a {self.role} kind (a name or 'package.module:Class'), got {kind!r}")
        entry = self.builtins.get(kind)
        if entry is not None:
            return entry
        point = self._entry_point(kind)
        if point is not None:
            try:
                target = point.load()
            except Exception as error:  # noqa: BLE001 - any import failure of a plugin is a config error
                raise PluginError(
                    f"{kind!r} is the entry point {point.value!r} (group {self.group}), which cannot be loaded: "
                    f"{type(error).__name__}: {error}"
                ) from None
            distribution = getattr(getattr(point, "dist", None), "name", None) or "an installed package"
            return self._entry_for_class(kind, target, f"entry point of {distribution}")
        if ":" not in kind:
            installed = ", ".join(f"'{name}'" for name in self.installed()) or f"none installed in group {self.group}"
            builtins = f"one of {', '.join(repr(name) for name in self.builtins)}, " if self.builtins else ""
            raise PluginError(
                f"expected {builtins}an installed plugin ({installed}) "
                f"or an import path 'package.module:Class', got {describe_value(kind)}"
            )
        try:
            target = import_object(kind)
        except ImportPathError as error:
            raise PluginError(f"{kind!r}: {error}") from None
        return self._entry_for_class(kind, target, "import path")

    def installed(self) -> list[str]:
        """The names of the installed entry points of this role's group."""
        return sorted({point.name for point in importlib.metadata.entry_points(group=self.group)})

    def _entry_point(self, name: str) -> importlib.metadata.EntryPoint | None:
        for point in importlib.metadata.entry_points(group=self.group):
            if point.name == name:
                return point
        return None

    def _entry_for_class(self, kind: str, target: Any, source: str) -> Entry:
        if not inspect.isclass(target):
            raise PluginError(f"{kind!r}: expected a class implementing the {self.role} interface, got {type(target).__name__} {target!r}")
        missing = [name for name in self.methods if not callable(getattr(target, name, None))]
        if missing:
            raise PluginError(
                f"{kind!r}: class {target.__name__} does not implement the {self.role} interface: "
                f"missing {', '.join(missing)} (expected {', '.join(self.methods)})"
            )
        config_model = getattr(target, "config_model", None)
        if not (inspect.isclass(config_model) and issubclass(config_model, PluginConfig)):
            raise PluginError(
                f"{kind!r}: class {target.__name__} must name its config as the class attribute `config_model`, "
                f"a subclass of agent_node.plugins.PluginConfig; got {config_model!r}"
            )
        action_space = getattr(target, "action_space", None)
        if action_space not in (None, "discrete", "box"):
            raise PluginError(
                f"{kind!r}: class {target.__name__}.action_space must be 'discrete', 'box' or None, got {action_space!r}"
            )
        if self.check_class is not None:
            self.check_class(kind, target)
        has_params = all(callable(getattr(target, name, None)) for name in WORLD_MODEL_PARAMETER_METHODS)
        has_statistics = all(callable(getattr(target, name, None)) for name in WORLD_MODEL_STATISTICS_METHODS)
        if self.methods == WORLD_MODEL_METHODS and not (has_params or has_statistics):
            raise PluginError(
                f"{kind!r}: class {target.__name__} gives consensus nothing to average: expected "
                f"{' and '.join(WORLD_MODEL_PARAMETER_METHODS)}, or {' and '.join(WORLD_MODEL_STATISTICS_METHODS)}"
            )
        return Entry(
            name=kind,
            config_model=config_model,
            load_builder=lambda: target,
            source=source,
            action_space=action_space,
            has_params=has_params,
            has_statistics=has_statistics,
        )

    # ------------------------------------------------------------------ config validation

    def validate(self, data: Any, builtin_handler: Callable[[Any], Any], section: str = "") -> Any:
        """A config section of this role: built-ins through their own schema (`builtin_handler`,
        the discriminated union, whose errors the run's formatter already words), a plugin
        through the plugin's `config_model`, its errors worded the same way under the section."""
        if isinstance(data, BaseModel):
            return data
        kind = data.get("kind") if isinstance(data, Mapping) else None
        if kind is None or kind in self.builtins:
            return builtin_handler(data)
        # Each line starts with the section's own name, which the run's formatter merges into the
        # path it shows (`agents.learner.clip_coef: ...`).
        prefix = f"{section}." if section else ""
        try:
            entry = self.resolve(kind)
        except PluginError as error:
            raise ValueError(f"{prefix}kind: {error}") from None
        try:
            return entry.config_model.model_validate(dict(data))
        except ValidationError as error:
            raise ValueError("\n".join(prefix + line for line in format_validation_error(error, entry.config_model))) from None

    def config_type(self, builtin_union: Any) -> Any:
        """The annotation of a config field of this role: the built-ins' union, opened to plugins.

        Serialization dumps whichever model the field holds (a plugin's config has fields the
        union does not know), so the resolved config names the plugin and its settings again."""
        registry = self

        def _validate(value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
            return registry.validate(value, handler, info.field_name or "")

        def _dump(value: BaseModel, info: SerializationInfo) -> Any:
            return value.model_dump(
                mode=info.mode, round_trip=True, by_alias=bool(info.by_alias), exclude_unset=info.exclude_unset,
                exclude_defaults=info.exclude_defaults, exclude_none=info.exclude_none,
            )

        return Annotated[builtin_union, WrapValidator(_validate), PlainSerializer(_dump)]

    # ------------------------------------------------------------------ building

    def build(self, config: BaseModel, spec: Any) -> Any:
        """The object `config.kind` names, built for `spec`; checked against the role's methods."""
        entry = self.resolve(config.kind)
        if not isinstance(config, entry.config_model):
            raise TypeError(
                f"{self.role} kind {config.kind!r}: expected a {entry.config_model.__name__}, got {type(config).__name__}"
            )
        built = entry.build(config, spec)
        methods = entry.methods or self.methods
        missing = [name for name in methods if not callable(getattr(built, name, None))]
        if missing:
            raise TypeError(
                f"{self.role} kind {config.kind!r} built a {type(built).__name__}, which lacks {', '.join(missing)} "
                f"(the {self.role} interface: {', '.join(methods)})"
            )
        return built


def builtin(name: str, config_model: type[BaseModel], builder_path: str, **traits: Any) -> Entry:
    """A built-in entry whose builder `module:function` is imported only when a node builds."""
    return Entry(
        name=name, config_model=config_model, load_builder=lambda: import_object(builder_path), source="built-in", **traits
    )


# ------------------------------------------------------------------ a run's list of plugins


def check_list_entry(item: Any, section: str, what: str, group: str, import_target: str) -> None:
    """One entry of a run's list of plugins (`agents.protocols`, `capabilities`) is a mapping
    `{kind: <an entry point of `group` or 'package.module:<import_target>'>, <what's settings>}`;
    a ValueError naming `section` otherwise."""
    if not isinstance(item, Mapping):
        raise ValueError(f"{section}: expected a mapping {{kind: ..., <the {what}'s settings>}}, got {describe_value(item)}")
    if "kind" not in item:
        raise ValueError(
            f"{section}.kind: required field is missing; expected an installed {what}'s entry point "
            f"(group {group}) or an import path 'package.module:{import_target}'"
        )


def validate_each(value: Any, section: str, validate_one: Callable[[Any, str], PluginConfig]) -> tuple[PluginConfig, ...]:
    """A run's list of plugins, each entry through `validate_one(entry, '<section>.<i>')`; the
    problems of every entry are the lines of one ValueError."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{section}: expected a list of {{kind: ..., <settings>}}, got {describe_value(value)}")
    built, problems = [], []
    for index, item in enumerate(value):
        try:
            built.append(validate_one(item, f"{section}.{index}"))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("\n".join(problems))
    return tuple(built)
