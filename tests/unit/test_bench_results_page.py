"""Results pages written by the benches from their JSON records (bench/results_page.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO, load_bench

sys.path.insert(0, str(REPO / "bench"))

import results_page  # noqa: E402

RECORDS = sorted((REPO / "docs" / "results").glob("*.json"))


def _bench(record: dict):
    """The bench module whose command made `record` (its `render` writes the page)."""
    return load_bench(REPO / shlex.split(record["command"])[1])


@pytest.mark.parametrize("path", RECORDS, ids=[path.name for path in RECORDS])
def test_a_committed_results_page_is_its_record_rendered(path: Path) -> None:
    record = results_page.load(path)
    page = path.with_suffix(".md")
    assert page.read_text() == _bench(record).render(record, path.name), (
        f"{page.relative_to(REPO)} is not what its record renders: run the bench again (its docstring says how)"
    )


def test_there_is_at_least_one_record() -> None:
    assert RECORDS, "docs/results/ holds no bench record"


def test_a_record_says_when_where_how_and_under_what_load(tmp_path: Path) -> None:
    record = results_page.begin("bench/links.py", ["--rounds", "2", "--save", "out dir/x.json"])
    record["rows"] = [{"delay_ms": 0.0, "ms": 1.25}]
    results_page.end(record)
    results_page.save(record, tmp_path / "x.json")
    loaded = results_page.load(tmp_path / "x.json")
    assert loaded == json.loads(json.dumps(record))
    assert loaded["command"] == "python bench/links.py --rounds 2 --save 'out dir/x.json'"
    assert len(loaded["load_before"]) == 3 and loaded["machine"]["cores"] >= 1
    text = results_page.header(loaded, "T", "x.json") + results_page.table(
        [("delay", "right", lambda row: f"{row['delay_ms']:g}"), ("ms", "left", lambda row: str(row["ms"]))], loaded["rows"]
    )
    assert text.startswith("# T\n")
    assert loaded["started_utc"] in text and loaded["commit"] in text and "python bench/links.py --rounds 2" in text
    assert "| delay | ms |\n| ---: | --- |\n| 0 | 1.25 |\n" in text


def test_a_record_without_its_rows_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"command": "python bench/links.py"}))
    with pytest.raises(ValueError, match="expected a bench record with started_utc"):
        results_page.load(tmp_path / "bad.json")


def test_page_from_renders_the_saved_record_and_needs_page(tmp_path: Path) -> None:
    record = results_page.end(results_page.begin("bench/links.py", []))
    record["rows"] = []
    results_page.save(record, tmp_path / "x.json")
    parser = argparse.ArgumentParser()
    results_page.add_page_options(parser)

    def render(saved: dict, source: str) -> str:
        return f"{saved['command']} from {source}"

    args = parser.parse_args(["--page-from", str(tmp_path / "x.json"), "--page", str(tmp_path / "x.md")])
    assert results_page.render_saved_page(parser, args, render)
    assert (tmp_path / "x.md").read_text() == "python bench/links.py from x.json"
    assert not results_page.render_saved_page(parser, parser.parse_args(["--page", str(tmp_path / "y.md")]), render)
    assert not (tmp_path / "y.md").exists()
    with pytest.raises(SystemExit):  # argparse's usage error: --page-from without --page
        results_page.render_saved_page(parser, parser.parse_args(["--page-from", str(tmp_path / "x.json")]), render)
