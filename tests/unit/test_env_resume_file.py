"""The env server's resume point on disk (env_server/resume.py): two CRC-checked slots, newest wins;
a file without a valid slot is refused, never taken for a fresh start."""

from __future__ import annotations

import json
import random
import struct
import zlib

import pytest

from env_server.resume import SLOT_BYTES, ResumeFile, ResumePoint
from protocols.storage.durable_state import DamagedStateError
from protocols.storage.jsonlines import FileWriteError


def saved_file(path, points) -> bytearray:
    """Save `points` into a resume file at `path` in order, close it, and return its bytes."""
    writer = ResumeFile(path)
    for point in points:
        writer.save(point)
    writer.close()
    return bytearray(path.read_bytes())


def test_no_file_is_a_fresh_run(tmp_path):
    assert ResumeFile(tmp_path / "resume.bin").load() is None


def test_the_newest_saved_point_comes_back(tmp_path):
    path = tmp_path / "env" / "resume.bin"
    writer = ResumeFile(path)
    for step in range(1, 8):
        writer.save(ResumePoint(step=step, episodes=step // 3, last_return=-1.5 * step, evaluations_completed=step // 5))
    writer.close()
    assert path.stat().st_size == 2 * SLOT_BYTES, "two fixed slots, overwritten in turn"
    assert ResumeFile(path).load() == ResumePoint(step=7, episodes=2, last_return=-10.5, evaluations_completed=1)


def test_a_resumed_writer_goes_on_numbering_after_the_loaded_point(tmp_path):
    path = tmp_path / "resume.bin"
    first = ResumeFile(path)
    for step in (1, 2, 3):
        first.save(ResumePoint(step=step))
    first.close()
    second = ResumeFile(path)
    assert second.load().step == 3
    second.save(ResumePoint(step=4, incarnation=1))  # must overwrite the older slot, not the newest
    second.close()
    assert ResumeFile(path).load() == ResumePoint(step=4, incarnation=1)


def test_a_torn_slot_falls_back_to_the_other_one_step_older(tmp_path):
    path = tmp_path / "resume.bin"
    data = saved_file(path, [ResumePoint(step=10), ResumePoint(step=11, evaluation_running=True)])
    newest = 0 if b'"step":11' in data[:SLOT_BYTES] else 1
    data[newest * SLOT_BYTES + 30] ^= 0xFF  # a byte of its payload changed: the CRC no longer matches
    path.write_bytes(bytes(data))
    assert ResumeFile(path).load() == ResumePoint(step=10)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "0 bytes, where a resume file has 1024"),
        (b"\0" * 100, "100 bytes, where a resume file has 1024"),
        (bytes(range(256)) * 4, "slot 0: does not start with b'PRSM'; slot 1: does not start with b'PRSM'"),
    ],
)
def test_a_file_without_a_valid_slot_is_refused_naming_it_never_a_fresh_start(tmp_path, content, why):
    path = tmp_path / "resume.bin"
    path.write_bytes(content)
    with pytest.raises(DamagedStateError, match=f"damaged state file {path}: .*{why}") as refused:
        ResumeFile(path).load()
    assert refused.value.path == path
    assert path.read_bytes() == content  # looked at, not touched


def test_random_bytes_over_a_used_file_are_refused(tmp_path):
    path = tmp_path / "resume.bin"
    saved_file(path, [ResumePoint(step=step) for step in range(1, 30)])
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))
    with pytest.raises(DamagedStateError, match="no valid resume point in either slot"):
        ResumeFile(path).load()


def test_the_first_save_creates_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "env" / "resume.bin"
    writer = ResumeFile(path)
    writer.save(ResumePoint(step=0))
    # Before the second save the file already holds a valid slot and an empty, never-written one.
    assert path.stat().st_size == 2 * SLOT_BYTES
    loaded = ResumeFile(path)
    assert loaded.load() == ResumePoint(step=0) and loaded.damaged is None
    writer.close()
    assert [p.name for p in path.parent.iterdir()] == ["resume.bin"]


def test_a_damaged_slot_beside_a_good_one_is_said(tmp_path):
    path = tmp_path / "resume.bin"
    data = saved_file(path, [ResumePoint(step=10), ResumePoint(step=11)])
    data[SLOT_BYTES : SLOT_BYTES + 8] = b"garbage!"  # slot 1: not a resume point any more
    path.write_bytes(bytes(data))
    reader = ResumeFile(path)
    point = reader.load()
    assert reader.damaged == (f"{path}: slot 1 does not start with b'PRSM' (torn by a kill mid-save, or damaged); "
                              f"resumed from the other slot, step {point.step}, which may be one step older than the "
                              "server reached")


def test_a_refusing_file_system_raises_a_file_write_error_naming_the_file(tmp_path):
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("a file where the directory should be")
    with pytest.raises(FileWriteError, match="not_a_dir"):
        ResumeFile(blocked / "resume.bin").save(ResumePoint(step=1))


def test_the_loss_of_a_torn_slot_is_reported_like_an_agents(tmp_path):
    path = tmp_path / "resume.bin"
    data = saved_file(path, [ResumePoint(step=10), ResumePoint(step=11)])
    newest = 0 if b'"step":11' in data[:SLOT_BYTES] else 1
    data[newest * SLOT_BYTES + 30] ^= 0xFF  # the newer slot's payload: its header still says it is newer
    path.write_bytes(bytes(data))
    reader = ResumeFile(path)
    assert reader.load() == ResumePoint(step=10)
    assert reader.notice.metrics() == {"persistence/restored_from_step": 10.0, "persistence/steps_lost": 1.0,
                                       "persistence/damaged_files": 1.0, "persistence/started_fresh": 0.0}
    assert reader.notice.what == reader.damaged and str(path) in reader.notice.what

    # The older slot damaged instead: nothing was lost, and it says 0.
    data = bytearray(path.read_bytes())
    data[newest * SLOT_BYTES + 30] ^= 0xFF
    data[(1 - newest) * SLOT_BYTES + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    reader = ResumeFile(path)
    assert reader.load() == ResumePoint(step=11) and reader.notice.steps_lost == 0


def test_with_start_fresh_a_file_without_a_valid_slot_is_set_aside_and_the_run_starts_again_saying_so(tmp_path):
    path = tmp_path / "resume.bin"
    saved_file(path, [ResumePoint(step=step) for step in range(1, 30)])
    damaged = random.Random(0).randbytes(path.stat().st_size)
    path.write_bytes(damaged)
    reader = ResumeFile(path, start_fresh=True)
    assert reader.load() is None  # a fresh run: step 0
    notice = reader.notice
    assert notice.started_fresh and notice.restored_from_step == 0 and notice.steps_lost is None
    assert "no valid resume point in either slot" in notice.what and "run.on_corrupt_state: start_fresh" in notice.what
    assert "persistence/steps_lost" not in notice.metrics()  # not known: not made up
    kept = tmp_path / "resume.bin.damaged"
    assert kept.read_bytes() == damaged and not path.exists()
    reader.save(ResumePoint(step=0))  # a new file beside it, never over it
    reader.close()
    assert kept.read_bytes() == damaged and ResumeFile(path).load() == ResumePoint(step=0)


def slot_bytes(sequence: int, payload: dict) -> bytes:
    """A whole slot (magic, sequence, length, CRC) holding `payload` as this file writes one,
    packed here independently of env_server/resume.py."""
    body = json.dumps(payload).encode()
    return (struct.pack("<4sQII", b"PRSM", sequence, len(body), zlib.crc32(body)) + body).ljust(SLOT_BYTES, b"\0")


def test_every_save_names_its_format_and_a_file_from_before_the_field_still_loads(tmp_path):
    path = tmp_path / "resume.bin"
    data = saved_file(path, [ResumePoint(step=7, episodes=2)])
    start = data.index(b"{")
    assert json.loads(data[start : data.index(b"\0", start)])["format"] == 1
    # Written before `format` existed: the same fields, no format.
    path.write_bytes(slot_bytes(4, {"step": 9, "episodes": 3, "last_return": -1.5, "evaluations_completed": 1,
                                    "evaluation_running": False, "incarnation": 2}) + bytes(SLOT_BYTES))
    assert ResumeFile(path).load() == ResumePoint(step=9, episodes=3, last_return=-1.5, evaluations_completed=1, incarnation=2)


def test_a_file_of_another_format_is_refused_by_name_and_a_fresh_start_over_it_counts_the_steps_run_again(tmp_path):
    path = tmp_path / "resume.bin"
    future = slot_bytes(11, {"format": 2, "step": 120, "shards": [1, 2]}) + slot_bytes(12, {"format": 2, "step": 121})
    path.write_bytes(future)
    with pytest.raises(DamagedStateError, match="written in resume format 2; this server reads format 1"):
        ResumeFile(path).load()
    assert path.read_bytes() == future  # looked at, not touched
    reader = ResumeFile(path, start_fresh=True)
    assert reader.load() is None
    assert reader.notice.started_fresh and reader.notice.steps_lost == 121  # run again from step 0
    assert reader.notice.metrics()["persistence/steps_lost"] == 121
    assert (tmp_path / "resume.bin.damaged").read_bytes() == future
