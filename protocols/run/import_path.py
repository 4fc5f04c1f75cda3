"""The object a config names by import path, `package.module:name`: an environment factory
(`env.name`), a positions reader (`env.positions`), a plugin learner, world model, peer protocol or
capability, a built-in's builder.

`import_object` is the one reading of such a path. `ImportPathError` says what was wrong with it
(no `:`, a module whose import fails, no such attribute) without naming the field: each caller puts
its field and the path in front, as its own errors read.
"""

from __future__ import annotations

import importlib
import os
import traceback
from typing import Any


class ImportPathError(ValueError):
    """What is wrong with an import path, e.g. "cannot import module 'x': ModuleNotFoundError: ..."."""


def import_object(path: str) -> Any:
    """The object at `package.module:name`; `name` may be dotted (`Class.attribute`).

    Any exception the module's import raises is an ImportPathError naming its type: a plugin's
    module that fails for a reason of its own is the user's to see, as a config error.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ImportPathError("expected the form 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - whatever a module raises while it is imported
        raise ImportPathError(f"cannot import module {module_name!r}: {type(error).__name__}: {error}"
                              f"{_where_it_failed(error)}") from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ImportPathError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


def _where_it_failed(error: BaseException) -> str:
    """` (at file:line)` of the innermost frame of the failed import that is not the import
    machinery's own: where the user's module broke, for a one-line error that shows no traceback."""
    machinery = (__file__, os.path.dirname(importlib.__file__))
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith("<frozen ") and not frame.filename.startswith(machinery)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
