"""Every relative link and image in README.md and docs/**/*.md points at a file that exists.

Links to the web (`http:`, `https:`, `mailto:`) and to an anchor of the same page are left to the
reader; an anchor after a file (`page.md#part`) is checked for the file only. Code spans and
fenced blocks are skipped: a path written as code is not a link.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; the text may hold one level of [].
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
_HTML = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.IGNORECASE)


def targets(text: str) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", text))
    return [*_LINK.findall(text), *_REFERENCE.findall(text), *_HTML.findall(text)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in targets(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(REPO)) for page in PAGES])
def test_every_relative_link_and_image_resolves(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(REPO)} links to files that do not exist"


def test_the_checker_finds_what_is_broken_and_passes_what_is_not(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("x")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#part) ![ok](img/a.png) [web](https://example.org/x) [self](#top)\n"
        "[gone](missing.md) ![gone](img/b.png)\n[ref]: nowhere.md\n"
        "`[code](not_a_link.md)`\n```\n[fenced](not_a_link_either.md)\n```\n"
        "[a [nested] text](gone_too.md) <img src=\"img/c.png\">\n"
    )
    assert broken_links(page) == ["missing.md", "img/b.png", "gone_too.md", "nowhere.md", "img/c.png"]
