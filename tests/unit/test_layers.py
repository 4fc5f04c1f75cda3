"""The layer rules that can be checked by reading the source: zmq is imported only by
protocols/net/transport.py, and protocols/ never imports torch (ARCHITECTURE.md, BRIEF "Layer rules").

Imports inside functions count too: a lazy `import zmq` is still a second place that knows zmq.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = ("agent_node", "env_server", "protocols", "orchestrator")


def imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules_importing(top_module: str, packages: tuple[str, ...]) -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if top_module in imported_top_modules(path)
    )


def test_only_the_transport_module_imports_zmq() -> None:
    assert modules_importing("zmq", PRODUCTION_PACKAGES) == ["protocols/net/transport.py"]


def test_protocols_never_import_torch() -> None:
    assert modules_importing("torch", ("protocols",)) == []
