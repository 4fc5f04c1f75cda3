"""Config errors that name the field, what it expected and what it got.

pydantic's own messages are precise but shaped for programmers (`agents.learner.dqn.lr` with
the union tag in the path, "Extra inputs are not permitted"). `format_validation_error` turns a
`ValidationError` raised by a config schema (the orchestrator's whole run, or the sections a node
reads from its resolved config) into one line per problem, in the vocabulary of the YAML file:

    run.steps: expected greater than 0, got -5 (int)
    agents.lerner: unknown key; valid keys: count, learner, world_model, ... (did you mean 'learner'?)
    agents.learner.kind: expected one of 'dqn', 'sac', got 'ppo'

To do that it walks the schema along each error's location, which tells it the model a key
belongs to (for the list of valid keys) and which path segments are union tags (dropped).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Iterable, Literal, Sequence, Union

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A run config is invalid. `problems` holds one `field.path: ...` line per problem."""

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        header = f"invalid config {source}" if source else "invalid config"
        if len(self.problems) == 1:
            message = f"{header}: {self.problems[0]}"
        else:
            message = header + ":\n" + "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(message)


# ------------------------------------------------------------------------------------------
# Walking the schema along an error location
# ------------------------------------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """Strip `Annotated[...]` layers (constraints, discriminators) down to the type."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _union_members(annotation: Any) -> list[Any]:
    """Members of a union (without None), or [] when `annotation` is not a union."""
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [_unwrap(member) for member in typing.get_args(annotation) if member is not type(None)]
    return []


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# The fields that tag the members of our discriminated unions (`kind` of learners, world models,
# topologies...; `mode` of the training section).
_TAG_FIELDS = ("kind", "mode")


def _tag_of(model: type[BaseModel]) -> str | None:
    """The `kind` (or `mode`) literal of a union member model, if it has one."""
    for name in _TAG_FIELDS:
        field = model.model_fields.get(name)
        if field is None:
            continue
        args = typing.get_args(_unwrap(field.annotation))
        return args[0] if typing.get_origin(_unwrap(field.annotation)) is Literal and len(args) == 1 else None
    return None


def _single_model(annotation: Any) -> Any:
    """`X | None` -> X, so that an optional section is walked like a required one."""
    members = _union_members(annotation)
    return members[0] if len(members) == 1 else _unwrap(annotation)


def union_tags(annotation: Any) -> list[str]:
    """The `kind` values of a discriminated union of models, in declaration order."""
    members = _union_members(_single_model(annotation))
    return [tag for member in members if _is_model(member) and (tag := _tag_of(member))]


TAG_FIELDS = _TAG_FIELDS


def tagged_member_fields(root: type[BaseModel], path: list[str], tag: Any) -> tuple[str, ...] | None:
    """The keys of the union member tagged `tag` at the YAML path `path` of `root` (the learner
    models at ['agents', 'learner'], the topologies at ['topology'], ...), or None when `path` is
    not a tagged union or no member carries `tag`. List indices in `path` step into the items."""
    current: Any = root
    for part in path:
        current = _single_model(current)
        if _is_model(current):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) in (list, tuple) and part.isdigit() and typing.get_args(current):
            current = typing.get_args(current)[0]
        elif typing.get_origin(current) is dict and len(typing.get_args(current)) == 2:
            current = typing.get_args(current)[1]
        else:
            return None
    for member in _union_members(_single_model(current)):
        if _is_model(member) and _tag_of(member) == tag:
            return tuple(member.model_fields)
    return None


class _Walk:
    """The schema type at each step of an error location, and the path to show the user."""

    def __init__(self, root: type[BaseModel], loc: tuple[int | str, ...]) -> None:
        self.shown: list[str] = []
        self.parent: Any = None  # the type that holds the last location segment
        current: Any = root
        for part in loc:
            self.parent = current
            current = self._step(current, part)

        self.leaf = current

    def _step(self, current: Any, part: int | str) -> Any:
        current = _single_model(current)
        members = _union_members(current)
        if members:
            # A union: pydantic puts the chosen member (a `kind` tag or a type name) into the
            # location. It is not a key of the YAML file, so it is not shown.
            for member in members:
                if _is_model(member) and (_tag_of(member) == part or member.__name__ == part):
                    return member
            if isinstance(part, str) and not any(_is_model(m) and part in m.model_fields for m in members):
                return current
        if _is_model(current):
            self.shown.append(str(part))
            field = current.model_fields.get(str(part))
            return field.annotation if field is not None else None
        origin = typing.get_origin(current)
        args = typing.get_args(current)
        self.shown.append(str(part))
        if origin in (list, tuple, set, frozenset) and args:
            return args[0]
        if origin is dict and len(args) == 2:
            return args[1]
        return None

    @property
    def path(self) -> str:
        return ".".join(self.shown)

    def parent_model(self) -> type[BaseModel] | None:
        parent = _single_model(self.parent)
        return parent if _is_model(parent) else None


# ------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------


def describe_value(value: Any) -> str:
    """A short, unambiguous rendering of a config value for 'got ...'."""
    if isinstance(value, dict):
        keys = ", ".join(str(key) for key in list(value)[:6])
        return f"a mapping with keys [{keys}{', ...' if len(value) > 6 else ''}]"
    if isinstance(value, (list, tuple)):
        text = repr(list(value))
        return text if len(text) <= 60 else f"a list of {len(value)} items"
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def repeated(values: Sequence[Any]) -> list[Any]:
    """The values that stand more than once in `values`, each once and sorted (for a message)."""
    return sorted({value for value in values if values.count(value) > 1})


def _expected(message: str) -> str:
    """pydantic's 'Input should be X' -> 'expected X'."""
    for prefix in ("Input should be ", "Input should have "):
        if message.startswith(prefix):
            return "expected " + message[len(prefix) :]
    return message[:1].lower() + message[1:]


def _with_path(path: str, text: str, fields: Iterable[str] = ()) -> str:
    """Prefix a validator's sentence with the field path, merging a field name it starts with.

    Nested validators often name their field already: at path `topology`, "topology.rows is
    required ..." becomes "topology.rows: is required ..."; at `protocols.consensus`,
    "consensus.rounds must be >= 0" becomes "protocols.consensus.rounds: must be >= 0".
    A sentence "nodes: ..." from the model at `faults.schedule.0`, whose field `nodes` is,
    becomes "faults.schedule.0.nodes: ...".
    """
    if not path:
        return text
    field_named = re.match(r"(\w+):\s*(.*)", text, re.S)
    if field_named and field_named.group(1) in fields:
        return f"{path}.{field_named.group(1)}: {field_named.group(2)}"
    last = path.rpartition(".")[2]
    named = re.match(rf"{re.escape(last)}((?:\.\w+)*)(?::\s*|\s+)(.*)", text, re.S)
    if named:
        return f"{path}{named.group(1)}: {named.group(2)}"
    return f"{path}: {text}"


def _format_one(root: type[BaseModel], error: dict[str, Any]) -> list[str]:
    walk = _Walk(root, tuple(error["loc"]))
    path = walk.path
    kind = error["type"]
    value = error.get("input")
    context = error.get("ctx") or {}

    if kind == "extra_forbidden":
        model = walk.parent_model()
        key = walk.shown[-1] if walk.shown else str(error["loc"][-1])
        if model is None:
            return [f"{path}: unknown key"]
        valid = list(model.model_fields)
        hint = difflib.get_close_matches(key, valid, n=1)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
        return [f"{path}: unknown key; valid keys: {', '.join(valid)}{suffix}"]
    if kind == "missing":
        return [f"{path}: required field is missing"]
    if kind == "union_tag_invalid":
        discriminator = str(context.get("discriminator", "kind")).strip("'")
        tags = union_tags(walk.leaf) or [t.strip(" '") for t in str(context.get("expected_tags", "")).split(",")]
        listed = ", ".join(f"'{tag}'" for tag in tags)
        return [f"{path}.{discriminator}: expected one of {listed}, got {describe_value(context.get('tag'))}"]
    if kind == "union_tag_not_found":
        discriminator = str(context.get("discriminator", "kind")).strip("'")
        listed = ", ".join(f"'{tag}'" for tag in union_tags(walk.leaf))
        return [f"{path}.{discriminator}: required field is missing; expected one of {listed}"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [f"{path or 'config'}: expected a mapping, got {describe_value(value)}"]
    if kind == "literal_error":
        return [f"{path}: expected one of {context.get('expected', '?').replace(' or ', ', ')}, got {describe_value(value)}"]
    if kind in ("value_error", "assertion_error"):
        # Our validators write full sentences; a multi-line message is several problems, each
        # already prefixed with its field path (cross-field checks of the run schema).
        text = str(context.get("error", error["msg"]))
        leaf = _single_model(walk.leaf)
        fields = list(leaf.model_fields) if _is_model(leaf) else []
        return [_with_path(path, line, fields) for line in text.splitlines() if line.strip()]
    message = error["msg"]
    if kind.endswith("_parsing"):
        # "Input should be a valid integer, unable to parse string as an integer": the second
        # half only repeats what "got 'abc' (str)" shows.
        message = message.split(", ")[0]
    return [f"{path or 'config'}: {_expected(message)}, got {describe_value(value)}"]


def format_validation_error(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """One `field.path: expected ..., got ...` line per problem, without repeats."""
    items = error.errors(include_url=False)
    locations = [tuple(item["loc"]) for item in items]
    lines: list[str] = []
    for item in items:
        loc = tuple(item["loc"])
        if item["type"] == "too_short" and any(other[: len(loc)] == loc and other != loc for other in locations):
            # pydantic also reports a sequence as too short when one of its items failed;
            # the item's own error is the one that helps.
            continue
        for line in _format_one(root, item):
            if line not in lines:
                lines.append(line)
    return lines


def changed_from_default(model: BaseModel, names: Iterable[str]) -> list[str]:
    """The fields among `names` whose value is not their default: the ones a "set only with ..."
    check names. (Not `model_fields_set`: the resolved config, written with every default, is
    validated again by each process.)"""
    return [name for name in names if getattr(model, name) != type(model).model_fields[name].default]
