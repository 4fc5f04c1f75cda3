"""Whole lines or nothing: protocols/storage/jsonlines.py on a real, small tmpfs that fills up
(`small_tmpfs`, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from protocols.storage.jsonlines import LineFile, LineWriteError
from protocols.storage.metrics import MetricsWriter
from tests.conftest import fill_disk


def test_lines_are_appended_whole(tmp_path):
    file = LineFile(tmp_path / "a.jsonl")
    for i in range(3):
        file.append(json.dumps({"i": i}))
    file.close()
    assert [json.loads(line)["i"] for line in (tmp_path / "a.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert os.stat(tmp_path / "a.jsonl").st_mode & 0o777 == 0o600


def test_a_full_disk_leaves_only_whole_lines_and_a_clear_error(small_tmpfs):
    path = small_tmpfs / "metrics.jsonl"
    writer = MetricsWriter(path)
    with pytest.raises(LineWriteError) as raised:
        for step in range(100_000):
            writer.write(step, {"env/episode_return": 1.5, "learner/loss": 0.25 + step})
    assert str(path) in str(raised.value) and "no space left on its file system" in str(raised.value)
    text = path.read_text()
    assert text.endswith("\n")
    steps = [json.loads(line)["step"] for line in text.splitlines()]  # every line parses
    assert steps == list(range(len(steps))) and len(steps) > 100
    # After the failure the writer refuses more lines rather than writing around a hole.
    with pytest.raises(LineWriteError):
        writer.write(10**9, {"x": 1.0})
    assert path.read_text() == text


def test_a_line_torn_by_a_full_disk_is_taken_back(small_tmpfs):
    """A page or so free and a 20 KB line: the kernel writes part of it (a short write);
    the writer truncates it away, so the file keeps only the whole line before it."""
    events = LineFile(small_tmpfs / "events.jsonl")
    events.append(json.dumps({"event": "first"}))
    filler = small_tmpfs / "filler"
    fill_disk(filler, chunk_bytes=1024)
    size = os.stat(filler).st_size // 4096 * 4096
    while os.statvfs(small_tmpfs).f_bavail == 0:  # free pages until one is free
        size -= 4096
        os.truncate(filler, size)
    assert os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize < 20_000
    try:
        with pytest.raises(LineWriteError, match="no space left on its file system"):
            events.append(json.dumps({"event": "x" * 20_000}))
    finally:
        events.close()
    assert (small_tmpfs / "events.jsonl").read_text() == json.dumps({"event": "first"}) + "\n"


def test_a_read_only_file_system_is_named_in_the_error(tmp_path):
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        with pytest.raises(LineWriteError, match=f"{mount_point}/events.jsonl.*Read-only file system"):
            LineFile(Path(mount_point) / "events.jsonl")
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.timeout(60)
def test_a_tensorboard_mirror_on_a_full_disk_says_so_in_one_line_and_never_stops_the_node(tmp_path, small_tmpfs,
                                                                                         caplog, capsys):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", small_tmpfs / "tb")
    fill_disk(small_tmpfs / "filler")
    step = 0
    while writer._tensorboard is not None and step < 200_000:  # the mirror's buffer fills, then its file refuses it
        writer.write(step, {"learner/loss": float(step), "learner/q": 1.0})  # metrics.jsonl is on a disk with room
        step += 1
    assert writer._tensorboard is None, "the full disk stopped the mirror"
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard mirror stopped writing" in r.getMessage()]
    assert len(warnings) == 1 and str(small_tmpfs / "tb") in warnings[0] and "no space left" in warnings[0], warnings
    for extra in range(100):  # the record goes on, without the mirror
        writer.write(step + extra, {"learner/loss": 0.0, "learner/q": 1.0})
    writer.close()  # never raises
    assert "Traceback" not in capsys.readouterr().err
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == step + 100


def test_the_tensorboard_mirror_reaches_its_file_every_ten_seconds_and_at_close(tmp_path, monkeypatch):
    from protocols.storage import metrics

    clock = [1000.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tmp_path / "tb")
    writer.write(1, {"learner/loss": 1.0})
    assert _tensorboard_scalars(tmp_path / "tb") == []  # buffered
    clock[0] += metrics.MIRROR_FLUSH_EVERY_S
    writer.write(2, {"learner/loss": 2.0})
    assert [step for _, step, _, _ in _tensorboard_scalars(tmp_path / "tb")] == [1, 2]
    writer.write(3, {"learner/loss": 3.0})
    writer.close()
    assert [step for _, step, _, _ in _tensorboard_scalars(tmp_path / "tb")] == [1, 2, 3]


def _tensorboard_scalars(directory: Path) -> list[tuple[int, int, str, float]]:
    """(event number, step, tag, value) of every scalar in the event files under `directory`, in
    file order (each record: a little-endian u64 length, its masked CRC, the Event, the Event's
    masked CRC; events without scalars are not numbered)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars = []
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            if event.summary.value:
                number = scalars[-1][0] + 1 if scalars else 0
                scalars += [(number, event.step, value.tag, value.simple_value) for value in event.summary.value]
    return scalars


def test_the_tensorboard_mirror_holds_every_finite_scalar_of_every_record(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tmp_path / "tb")
    writer.write(3, {"learner/loss": 0.5, "link/a_to_b/sent": 7.0, "skipped": float("nan")})
    writer.write(4, {"nothing finite": float("inf")})
    writer.write(5, {"/odd key:1": 2.25})
    writer.close()
    # one event per record (not one per scalar), nothing for a record without a finite value
    assert _tensorboard_scalars(tmp_path / "tb") == [
        (0, 3, "learner/loss", 0.5), (0, 3, "link/a_to_b/sent", 7.0), (1, 5, "odd_key_1", 2.25)]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "t"} for line in lines] == [
        {"step": 3, "learner/loss": 0.5, "link/a_to_b/sent": 7.0}, {"step": 4}, {"step": 5, "/odd key:1": 2.25}]
