"""Every repository path that the docs and the docstrings name exists.

A module that moves leaves its old path behind in prose, where no import fails. This reads the
pages (README.md, docs/**/*.md) and the docstrings of every module, class and function in the
repository's packages, and checks three kinds of name:

- a path under one of the repository's top-level folders (`agent_node/persistence.py`,
  `configs/tiny_ring.yaml`, `docs/guide/ctde.md`), from the repository root or, on a page, from
  the page's own folder;
- a module run with `python -m` (`python -m agent_node.consensus.shared_policy`);
- a bare file name (`subjects.py`): some file of the repository has it, unless it is one of the
  other projects' files the text cites (`EXTERNAL_FILES`), or a file a run writes.

Code spans count (a path is usually written as code); globs (`configs/*.yaml`) are skipped.
Links between pages are tests/unit/test_docs_links.py's.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("agent_node", "bench", "configs", "docs", "env_server", "examples", "orchestrator", "protocols", "tests")
PACKAGES = ("agent_node", "bench", "env_server", "examples", "orchestrator", "protocols", "tests")
EXTENSIONS = "py|yaml|yml|md|json|png|gif|toml|txt|sh|csv|npz"

# Files of other projects the docs cite by name: the reference implementations a Parley module
# is checked against (OG-MARL's odmar.py and env.py, mpe2's simple_spread.py, PMIC's ma_utils.py and run_maxminMADDPG.py,
# their run_seed.py, CleanRL's ppo.py), and resolved.yaml, which `orchestrate up` writes into
# each run's directory.
EXTERNAL_FILES = {"odmar.py", "env.py", "ma_utils.py", "run_maxminMADDPG.py", "run_seed.py", "ppo.py", "resolved.yaml",
                  "simple_spread.py"}

_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(FOLDERS)})/[\w./-]*?\.(?:{EXTENSIONS}))(?![\w/*-])")
_MODULE = re.compile(r"python\s+-m\s+([A-Za-z_][\w.]*\w)")
_BARE = re.compile(rf"(?<![\w./<>{{}}*-])([a-z][\w-]*\.(?:py|ya?ml))(?![\w/*-])")  # lower case: SWEEP.yaml is a placeholder


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]


def docstrings(path: Path) -> str:
    """The module's, its classes' and its functions' docstrings, one after the other."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return "\n".join(ast.get_docstring(node, clean=False) or "" for node in ast.walk(tree) if isinstance(node, kinds))


@lru_cache(maxsize=1)
def file_names() -> frozenset[str]:
    skip = {".git", ".venv", "site", "__pycache__", "node_modules"}
    return frozenset(path.name for path in REPO.rglob("*") if not skip & set(path.relative_to(REPO).parts))


def is_module(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file() or (base / "__main__.py").is_file()


def missing_names(text: str, where: Path) -> list[str]:
    """The names in `text` (from the file `where`) that name nothing in the repository."""
    missing = []
    for path in _PATH.findall(text):
        if not ((REPO / path).exists() or (where.parent / path).exists()):
            missing.append(path)
    for module in _MODULE.findall(text):
        if module.split(".")[0] in PACKAGES and not is_module(module):
            missing.append(f"python -m {module}")
    for name in _BARE.findall(text):
        if name not in EXTERNAL_FILES and name not in file_names():
            missing.append(name)
    return missing


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_every_path_a_page_names_exists(page: Path) -> None:
    assert missing_names(page.read_text(encoding="utf-8"), page) == []


def test_every_path_a_docstring_names_exists() -> None:
    stale = {str(path.relative_to(REPO)): found for path in sources() if (found := missing_names(docstrings(path), path))}
    assert stale == {}


def test_the_checker_finds_stale_names_and_passes_live_ones(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    text = (
        "`agent_node/persistence.py` and protocols/storage/files.py:40, `configs/*.yaml`, `python -m orchestrator.cli`,\n"
        "subjects.py, odmar.py line 917, resolved.yaml;\n"
        "stale: `agent_node/landmarks.py`, (configs/nowhere.yaml), `python -m agent_node.shared_policy`,\n"
        "consensus_subjects.py, training_config.py\n"
    )
    assert missing_names(text, page) == [
        "agent_node/landmarks.py", "configs/nowhere.yaml", "python -m agent_node.shared_policy",
        "consensus_subjects.py", "training_config.py",
    ]
    source = tmp_path / "module.py"
    source.write_text('"""See agent_node/datasets.py."""\n\ndef f():\n    """Uses protocols/codec/wire.py."""\n')
    assert missing_names(docstrings(source), source) == ["agent_node/datasets.py"]


def test_docs_root_holds_pages_only() -> None:
    """Data and figures live under docs/results/ (bench records beside their pages, the others in
    docs/results/data/), written there by the benches that make them, not loose beside the pages."""
    loose = sorted(path.name for path in (REPO / "docs").iterdir() if path.is_file() and path.suffix != ".md")
    assert not loose, f"files at the root of docs/ that are not pages: {loose}"
