"""The config reference (docs/reference/config.md), written from the schemas themselves.

    python -m orchestrator.docs_reference            # (re)write docs/reference/config.md
    python -m orchestrator.docs_reference --check    # exit 1 if the committed page is stale

One source: the page is `RunConfig` walked key by key, so it cannot say what the schemas do not.
Each key gets its type (with its bounds), its default (or "required") and its reason: the field's
`description` where it has one, else the comment lines right above it in the class body (and a
comment at the end of its line), else the string right below it; a section gets its class's
docstring. Nothing is written that is not in the code: a field without any of these gets none.

Sections are walked depth-first in declaration order. A union chosen by a tag (`kind`, `mode`)
gets one section per member; a model used in several places is written once, at its first place,
and the others point there. `tests/unit/test_docs_reference.py` fails when the committed page
differs from what this writes, so a new or changed field shows up in review with the page.
"""

from __future__ import annotations

import argparse
import ast
import enum
import inspect
import json
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

from orchestrator.config import RunConfig
from protocols.config_errors import _is_model, _tag_of, _unwrap

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "config.md"

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


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment (or string) the class body gives it, for `model` and its bases."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.docs_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the schemas' (write nothing)")
    parser.add_argument("--out", type=Path, default=PAGE, help=f"the page to write or check (default {PAGE})")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != page:
            print(f"{args.out} is stale: run `python -m orchestrator.docs_reference` and commit it", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
