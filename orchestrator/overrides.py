"""Command-line overrides: `--set a.b.c=VALUE` applied to the YAML tree before validation.

VALUE is parsed as YAML, so `--set run.steps=100` gives an int, `--set env.kwargs.continuous_actions=true`
a bool, `--set agents.learner.hidden_sizes=[32,32]` a list and `--set topology={kind: star}` a
map. Missing intermediates are created: a list when the next segment is a number, else a map.
A numeric segment indexes a list (`network.links.0.src=agent_0`); the index may equal the
list's length, which appends a new entry. Overrides are applied to plain data, before the schema sees it, so the schema validates
the result exactly as if it had been written in the file.

Swapping a kind. `--set agents.learner.kind=sac` on a file whose learner is `{kind: dqn,
train_every: 2, batch_size: 16}` changes which model the section is: the DQN keys that SAC does
not have (`train_every`) are dropped, so the section is SAC's defaults plus the keys both kinds
share (`batch_size: 16`, which the file set on purpose and SAC reads the same way). Each drop is
reported in a note (nothing disappears silently), and any key set after the kind, by a later
`--set`, is validated against the new kind as usual. The same holds for every tagged section
(`kind` of learners, world models, topologies; `mode` of training); `kind_fields` (given by
orchestrator/config.py, which knows the schema) says which keys a kind takes.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable

import yaml

from protocols.run.config_errors import TAG_FIELDS, ConfigError

_SEGMENT = re.compile(r"^[A-Za-z_][\w-]*$|^\d+$")

OVERRIDE_SYNTAX = "expected KEY=VALUE with a dotted KEY, e.g. run.steps=100 or agents.learner.kind=sac"


class Yaml12BoolLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false (any case) are booleans.

    YAML 1.1 (PyYAML's default) also reads on/off/yes/no/y/n as booleans, so `live_view: off`
    silently became False and then failed as "expected 'auto', 'on', 'off', got False". Here
    those words stay strings; a bool field still accepts them through pydantic's own parsing.
    """


Yaml12BoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12BoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """YAML text -> Python value, with YAML 1.2 booleans (see Yaml12BoolLoader)."""
    return yaml.load(text, Loader=Yaml12BoolLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`'a.b.0.c=VALUE'` -> (['a', 'b', '0', 'c'], parsed VALUE)."""
    key, separator, raw_value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError([f"--set {text!r}: {OVERRIDE_SYNTAX}"])
    segments = key.split(".")
    bad = [segment for segment in segments if not _SEGMENT.match(segment)]
    if bad:
        raise ConfigError([f"--set {text!r}: key segment {bad[0]!r} is not a name or a list index; {OVERRIDE_SYNTAX}"])
    try:
        value = load_yaml(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as error:
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError([f"--set {text!r}: VALUE is not valid YAML ({reason})"]) from None
    return segments, value


def _empty_container(next_segment: str) -> list[Any] | dict[str, Any]:
    """A missing intermediate: a list when the next segment is an index, else a map."""
    return [] if next_segment.isdigit() else {}


# (path of a tagged section, its new tag) -> the keys a section with that tag takes, or None
# when the path is no tagged section.
KindFields = Callable[[list[str], Any], "tuple[str, ...] | None"]


def _swap_kind(node: dict[str, Any], segments: list[str], value: Any, text: str, kind_fields: KindFields) -> str | None:
    """Before `node[tag] = value` changes a section's kind: drop the keys the new kind does not
    take; the note saying so, or None when nothing changes."""
    tag, old = segments[-1], node.get(segments[-1])
    if old is None or old == value:
        return None
    takes = kind_fields(segments[:-1], value)
    if takes is None:
        return None
    dropped = [key for key in node if key not in takes]
    if not dropped:
        return None
    for key in dropped:
        del node[key]
    kept = [key for key in node if key != tag]
    return (f"--set {text}: dropped the {old} key(s) that {tag} {value!r} does not take ({', '.join(dropped)})"
            + (f"; kept {', '.join(kept)}, which both take" if kept else ""))


def _set_path(tree: dict[str, Any], segments: list[str], value: Any, text: str,
              kind_fields: KindFields | None = None, notes: list[str] | None = None) -> None:
    node: Any = tree
    for depth, segment in enumerate(segments):
        last = depth == len(segments) - 1
        where = ".".join(segments[:depth]) or "the top level"
        if isinstance(node, list):
            if not segment.isdigit():
                raise ConfigError([f"--set {text!r}: {where} is a list; expected an index, got {segment!r}"])
            index = int(segment)
            if index > len(node):
                raise ConfigError(
                    [f"--set {text!r}: index {index} is out of range for {where} (a list of {len(node)} items; "
                     f"use {len(node)} to append)"]
                )
            if index == len(node):
                node.append(None if last else {})
            if last:
                node[index] = value
            else:
                if node[index] is None:
                    node[index] = _empty_container(segments[depth + 1])
                node = node[index]
        elif isinstance(node, dict):
            if last:
                if kind_fields is not None and segment in TAG_FIELDS:
                    note = _swap_kind(node, segments, value, text, kind_fields)
                    if note is not None and notes is not None:
                        notes.append(note)
                node[segment] = value
            else:
                if node.get(segment) is None:
                    node[segment] = _empty_container(segments[depth + 1])
                node = node[segment]
        else:
            raise ConfigError(
                [f"--set {text!r}: cannot set a key inside {where}, which is {type(node).__name__} {node!r}, not a map or list"]
            )


def apply_overrides(tree: dict[str, Any], overrides: list[str], kind_fields: KindFields | None = None,
                    notes: list[str] | None = None) -> dict[str, Any]:
    """A copy of `tree` with every override applied in order (later ones win). With `kind_fields`,
    an override of a section's `kind` (or `mode`) drops the old kind's keys the new one does not
    take (see the module docstring), and says so in `notes`."""
    result = copy.deepcopy(tree)
    problems: list[str] = []
    for text in overrides:
        try:
            segments, value = parse_override(text)
            _set_path(result, segments, value, text, kind_fields, notes)
        except ConfigError as error:
            problems.extend(error.problems)
    if problems:
        raise ConfigError(problems)
    return result
