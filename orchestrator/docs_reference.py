"""The reference pages of the docs, written from the code itself.

    python -m orchestrator.docs_reference            # (re)write docs/reference/*.md
    python -m orchestrator.docs_reference --check    # exit 1 if a committed page is stale

- docs/reference/config.md: every key of a run config (`RunConfig`);
- docs/reference/messages.md: every message on the wire (`protocols.codec.messages.MESSAGE_TYPES`,
  filled by the modules of `protocols/` that register them), its fields and their types.

One source: the page is `RunConfig` walked key by key, so it cannot say what the schemas do not.
Each key gets its type (with its bounds), its default (or "required") and its reason: the field's
`description` where it has one, else the comment lines right above it in the class body (and a
comment at the end of its line), else the string right below it; a section gets its class's
docstring. Nothing is written that is not in the code: a field without any of these gets none.

Sections are walked depth-first in declaration order. A union chosen by a tag (`kind`, `mode`)
gets one section per member; a model used in several places is written once, at its first place,
and the others point there. `tests/unit/test_docs_reference.py` fails when the committed page
differs from what this writes, so a new or changed field shows up in review with the page.
Messages are listed by the module that registers them, in source order, with the module's
first paragraph, each message's docstring and its fields' comments, found the same way.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import importlib
import inspect
import json
import pkgutil
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

import protocols
from orchestrator.config import RunConfig
from protocols.run.config_errors import _is_model, _tag_of, _unwrap
from protocols.codec.messages import MESSAGE_TYPES

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"
PAGE = REFERENCE / "config.md"
MESSAGES_PAGE = REFERENCE / "messages.md"

HEADER = """\
# Config reference

<!-- Written by `python -m orchestrator.docs_reference` from the schemas; do not edit by hand.
     tests/unit/test_docs_reference.py fails when this page and the schemas disagree. -->

Every key a run config may hold, section by section, with its type, its default and the reason
the code gives for it (the field's comment or description in the schema; a key without one has
none here). Unknown keys are errors that list the valid ones. `orchestrate up` writes the
resolved config, every default filled, to the run directory's `resolved.yaml`.

A section chosen by a tag (`kind`, `mode`) has one entry per choice; `--set SECTION.kind=...`
swaps it (see the guide's [Configs](../guide/configs.md) page).
"""


# ------------------------------------------------------------------------------------------
# Reasons: description, comments above, trailing comment, string below
# ------------------------------------------------------------------------------------------


def _field_comments(model: type) -> dict[str, str]:
    """Field name -> the comment (or string) the class body gives it, for `model` and its bases
    (a pydantic model or a dataclass)."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls is object or cls is BaseModel or cls.__module__.split(".")[0] == "pydantic":
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for index, node in enumerate(body):
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            parts: list[str] = []
            above: list[str] = []
            row = node.lineno - 2  # the line above, 0-based
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            if above:
                parts.append(" ".join(above))
            trailing = _trailing_comment(lines[node.lineno - 1])
            if trailing:
                parts.append(trailing)
            below = body[index + 1] if index + 1 < len(body) else None
            if isinstance(below, ast.Expr) and isinstance(below.value, ast.Constant) and isinstance(below.value.value, str):
                parts.append(" ".join(inspect.cleandoc(below.value.value).split()))
            if parts:
                found[node.target.id] = " ".join(parts)
    return found


def _trailing_comment(line: str) -> str:
    """The `# ...` at the end of a code line, outside string literals; '' if none."""
    quote: str | None = None
    for position, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#":
            return line[position + 1 :].strip()
    return ""


def _reason(name: str, field: FieldInfo, comments: dict[str, str]) -> str:
    if field.description:
        return " ".join(field.description.split())
    return comments.get(name, "")


# ------------------------------------------------------------------------------------------
# Types, bounds and defaults as a config's author writes them
# ------------------------------------------------------------------------------------------


def _type_text(annotation: Any, anchors: dict[type, str]) -> str:
    annotation = _unwrap(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(json.dumps(_plain(value)) for value in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(member, anchors) for member in _members(annotation))
    if origin in (list, set, frozenset, tuple):
        args = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
        if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(annotation):
            return "[" + ", ".join(_type_text(arg, anchors) for arg in args) + "]"
        return f"list of ({_type_text(args[0], anchors)})" if args else "list"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"map of {_type_text(key, anchors)} to ({_type_text(value, anchors)})"
    if _is_model(annotation):
        return f"section {anchors[annotation]}" if annotation in anchors else "section"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " or ".join(json.dumps(_plain(member.value)) for member in annotation)
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.MinLen, "min_length", "length ≥"),
    (annotated_types.MaxLen, "max_length", "length ≤"),
)


def _bounds_text(field: FieldInfo) -> str:
    bounds = []
    for constraint in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(constraint, kind):
                bounds.append(f"{sign} {_plain(getattr(constraint, attribute))}")
    return ", ".join(bounds)


def _plain(value: Any) -> Any:
    """`value` as the YAML of a config holds it: models as mappings, tuples and sets as lists."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(item) for item in value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        tag = _tag_of(type(value))
        return f"its section's defaults ({tag})" if tag else "its section's defaults"
    return "`" + json.dumps(_plain(value), ensure_ascii=False) + "`"


# ------------------------------------------------------------------------------------------
# Walking RunConfig
# ------------------------------------------------------------------------------------------


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a type, unions within unions flattened (`WorldModelConfig | None`)."""
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _members(arg)]
    return [annotation]


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The models a field's value may hold, each with the suffix its path gets: '' for the field
    itself, '[]' for an item of a list, '.<key>' for a value of a map."""
    members = _members(annotation)
    found: list[tuple[str, type[BaseModel]]] = []
    for member in members:
        origin = typing.get_origin(member)
        if _is_model(member):
            found.append(("", member))
        elif origin in (list, set, frozenset, tuple):
            for arg in typing.get_args(member):
                found += [("[]" + suffix, model) for suffix, model in _models_in(arg)]
        elif origin is dict:
            found += [(".<key>" + suffix, model) for suffix, model in _models_in(typing.get_args(member)[1])]
    return found


def _slug(path: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in path).strip("-").lower()


def _walk(model: type[BaseModel], path: str, order: list[tuple[str, type[BaseModel]]], anchors: dict[type, str]) -> None:
    """Records (path, model) for `model` and every model below it, each model once."""
    if model in anchors:
        return
    anchors[model] = f"`{path}`" if path else "the top level"
    order.append((path, model))
    for name, field in model.model_fields.items():
        key = field.alias or name
        for suffix, child in _models_in(field.annotation):
            tag = _tag_of(child)
            child_path = f"{path}.{key}{suffix}" if path else f"{key}{suffix}"
            if tag and len([model for model in _members(field.annotation) if _is_model(model)]) > 1:
                child_path += f" ({tag})"
            _walk(child, child_path, order, anchors)


def render() -> str:
    order: list[tuple[str, type[BaseModel]]] = []
    anchors: dict[type, str] = {}
    _walk(RunConfig, "", order, anchors)
    links = {model: f"[`{path}`](#{_slug(path)})" for path, model in order if path}
    out = [HEADER]
    for path, model in order:
        if not path:
            continue  # the top level's keys are the sections themselves: listed by their own headings
        out.append(f"## `{path}` {{#{_slug(path)}}}\n")
        doc = inspect.getdoc(model) if model.__doc__ else None
        if doc:
            out.append(_quote_doc(doc) + "\n")
        comments = _field_comments(model)
        for name, field in model.model_fields.items():
            key = field.alias or name
            kind = _type_text(field.annotation, links)
            bounds = _bounds_text(field)
            line = f"- **`{key}`**: {kind}" + (f" ({bounds})" if bounds else "") + f"; default {_default_text(field)}."
            reason = _reason(name, field, comments)
            if reason:
                line += f" {reason}"
            out.append(line)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _quote_doc(doc: str) -> str:
    """A class docstring as a block: its lines kept (they hold lists and code), outside a table."""
    return "\n".join(f"> {line}" if line else ">" for line in doc.splitlines())


# ------------------------------------------------------------------------------------------
# The messages
# ------------------------------------------------------------------------------------------

MESSAGES_HEADER = """\
# Messages

<!-- Written by `python -m orchestrator.docs_reference` from protocols/; do not edit by hand.
     tests/unit/test_docs_reference.py fails when this page and the code disagree. -->

Every message body that crosses the wire, by its `msg_type`, grouped by the module that
registers it. A body is a frozen dataclass; the codec (`protocols/codec/wire.py`) sends it as a msgpack
map inside the envelope (numpy arrays as raw frames) and checks every field against the types
below on receipt. A received body's unknown extra fields are ignored; a field with a default may
be left out. How the envelope, the lockstep and the engines use them:
[How it is built](../guide/architecture.md).
"""


def _register_every_message() -> None:
    """Imports every module of `protocols/`: each engine registers its messages beside it."""
    for module in pkgutil.walk_packages(protocols.__path__, "protocols."):
        importlib.import_module(module.name)


def _first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()) if doc else ""


def _dataclass_default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return "`" + json.dumps(_plain(field.default), ensure_ascii=False) + "`"
    if field.default_factory is not dataclasses.MISSING:
        return "`" + json.dumps(_plain(field.default_factory()), ensure_ascii=False) + "`"
    return "required"


def parleys_messages() -> dict[str, type]:
    """The registered messages that are Parley's own (defined under protocols/). A plugin's
    messages (an installed protocol's, a test's) register in the same table, and are its own to
    document."""
    return {msg_type: cls for msg_type, cls in MESSAGE_TYPES.items() if cls.__module__.startswith("protocols.")}


def render_messages() -> str:
    _register_every_message()
    by_module: dict[str, list[tuple[str, type]]] = {}
    for msg_type, cls in parleys_messages().items():
        by_module.setdefault(cls.__module__, []).append((msg_type, cls))
    out = [MESSAGES_HEADER]
    # The order is the code's, not the imports': protocols/codec/messages.py (the control plane and the
    # env) first, then the engines' modules by name, each in the order of its source.
    modules = sorted(by_module, key=lambda name: (name != "protocols.codec.messages", name))
    for module_name in modules:
        messages = sorted(by_module[module_name], key=lambda item: inspect.getsourcelines(item[1])[1])
        module = sys.modules[module_name]
        out.append(f"## `{module_name.replace('.', '/')}.py`\n")
        intro = _first_paragraph(module.__doc__)
        if intro:
            out.append(intro + "\n")
        for msg_type, cls in messages:
            out.append(f"### `{msg_type}` {{#{_slug(msg_type)}}}\n")
            doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else None
            out.append(f"`{cls.__name__}`" + (f": {' '.join(doc.split())}" if doc else "") + "\n")
            hints = typing.get_type_hints(cls)
            comments = _field_comments(cls)
            for field in dataclasses.fields(cls):
                line = f"- **`{field.name}`**: {_type_text(hints[field.name], {})}; default {_dataclass_default(field)}."
                if comments.get(field.name):
                    line += f" {comments[field.name]}"
                out.append(line)
            if not dataclasses.fields(cls):
                out.append("- (no fields)")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def pages() -> dict[Path, str]:
    """Each reference page and what the code writes into it."""
    return {PAGE: render(), MESSAGES_PAGE: render_messages()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.docs_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page differs from the code's (write nothing)")
    parser.add_argument("--out", type=Path, default=REFERENCE, help=f"the folder to write or check (default {REFERENCE})")
    args = parser.parse_args(argv)
    written = {args.out / path.name: text for path, text in pages().items()}
    if args.check:
        stale = [path for path, text in written.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path} is stale: run `python -m orchestrator.docs_reference` and commit it", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in written.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
