"""A bench's results page, written from the bench's own JSON record instead of edited by hand.

A record holds what one invocation measured and what is needed to read it: the command, when it
started and finished (UTC), the machine (CPU model, cores), the load average before and after,
the commit it ran, the bench's settings and its rows. The bench saves the record
(`docs/results/<bench>.json`) and renders its page from it (`docs/results/<bench>.md`); a page is
never edited by hand, so its figures, date and load cannot part from the run that made them
(tests/unit/test_bench_results_page.py renders every committed record again and compares).

    record = results_page.begin("bench/links.py", argv)      # before measuring
    record["rows"] = ...                                       # the bench's measurements
    results_page.end(record)                                   # load after, finish time
    results_page.save(record, json_path)
    page = results_page.header(record, title, source) + results_page.table(columns, record["rows"])
    page = results_page.page(record, title, source, intro, columns, reading)  # header, intro, table, reading

A bench with a page takes the same three options (`add_page_options`) and, given `--page-from`,
renders a saved record instead of measuring (`render_saved_page`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    """The checkout's short commit, with `+changes` when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def begin(script: str, argv: Sequence[str]) -> dict[str, Any]:
    """The record of an invocation of `script` with `argv`, before it measures anything."""
    return {
        "command": shlex.join(["python", script, *argv]),
        "started_utc": _now(),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "load_before": _load(),
        "commit": _commit(),
    }


def end(record: dict[str, Any]) -> dict[str, Any]:
    record["finished_utc"] = _now()
    record["load_after"] = _load()
    return record


def finish(record: dict[str, Any], save_path: Path | None, page_path: Path | None,
           render: Callable[[dict[str, Any], str], str]) -> None:
    """End the record, then a bench's `--save` (the record as JSON) and `--page` (the markdown
    page `render(record, source)` writes, its source the saved file's name), each when given."""
    end(record)
    if save_path is not None:
        save(record, save_path)
    if page_path is not None:
        page_path.write_text(render(record, save_path.name if save_path is not None else "its run"))


def add_page_options(parser: argparse.ArgumentParser, skipped: str = "measure nothing") -> None:
    """`--save` (the record as JSON), `--page` (the markdown page) and `--page-from` (render
    `--page` from a saved record; `skipped` says what the bench then does not do)."""
    parser.add_argument("--save", type=Path, help="write this invocation's record (JSON) here")
    parser.add_argument("--page", type=Path, help="write the results page (markdown) here")
    parser.add_argument("--page-from", type=Path, help=f"render --page from this saved record; {skipped}")


def render_saved_page(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      render: Callable[[dict[str, Any], str], str]) -> bool:
    """With `--page-from`: write `--page` from that saved record and return True (the bench then
    stops); without it: False. `--page-from` without `--page` is a usage error."""
    if args.page_from is None:
        return False
    if args.page is None:
        parser.error("--page-from needs --page (where to write the page)")
    args.page.write_text(render(load(args.page_from), args.page_from.name))
    return True


def save(record: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def load(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text())
    missing = [key for key in ("command", "started_utc", "finished_utc", "machine", "load_before", "load_after", "commit", "rows") if key not in record]
    if missing:
        raise ValueError(f"{path}: expected a bench record with {', '.join(missing)}, got keys {sorted(record)}")
    return record


def header(record: dict[str, Any], title: str, source: str) -> str:
    """The page's title and the lines that say when, where, under what load and how it ran."""
    machine = record["machine"]
    load_before = ", ".join(f"{value:g}" for value in record["load_before"])
    load_after = ", ".join(f"{value:g}" for value in record["load_after"])
    return (
        f"# {title}\n\n"
        f"<!-- Written by the bench from {source}; do not edit by hand: run the bench again. -->\n\n"
        f"Measured {record['started_utc']} to {record['finished_utc']} UTC on {machine['cpu']} "
        f"({machine['cores']} cores, Python {machine['python']}), commit {record['commit']}; load average "
        f"(1, 5, 15 min) {load_before} before and {load_after} after. The command:\n\n"
        f"    {record['command']}\n\n"
    )


def page(record: dict[str, Any], title: str, source: str, intro: str,
         columns: Sequence[tuple[str, str, Callable[[dict[str, Any]], str]]], reading: str) -> str:
    """A one-table results page: the header, `intro` (what was measured and how), the table of the
    record's rows, then `reading` (how to read it)."""
    return header(record, title, source) + intro + "\n\n" + table(columns, record["rows"]) + "\n" + reading + "\n"


def table(columns: Sequence[tuple[str, str, Callable[[dict[str, Any]], str]]], rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table: one column per (header, alignment ':'-side, cell of a row)."""
    lines = ["| " + " | ".join(head for head, _, _ in columns) + " |"]
    lines.append("| " + " | ".join("---:" if align == "right" else "---" for _, align, _ in columns) + " |")
    lines += ["| " + " | ".join(cell(row) for _, _, cell in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
