"""An explicit --run-dir is claimed atomically, is private, and a bad path is a named error."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from orchestrator.config import load_config
from orchestrator.rundir import RunDirError, create_run_dir
from tests.conftest import REPO


@pytest.fixture(scope="module")
def config():
    return load_config(str(REPO / "configs" / "tiny_ring.yaml"), [])


def test_two_runs_started_at_once_on_one_run_dir_exactly_one_wins(tmp_path, config):
    for attempt in range(20):
        target = tmp_path / f"run{attempt}"
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def claim() -> None:
            barrier.wait()
            try:
                create_run_dir(config, target)
                outcomes.append("won")
            except RunDirError as error:
                outcomes.append(str(error))

        threads = [threading.Thread(target=claim) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert outcomes.count("won") == 1, outcomes
        assert str(target) in next(o for o in outcomes if o != "won")


def test_a_run_dir_is_private(tmp_path, config):
    path = create_run_dir(config, tmp_path / "run")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_a_run_dir_under_a_file_is_a_named_error(tmp_path, config):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"file/run: cannot create it: Not a directory"):
        create_run_dir(config, tmp_path / "file" / "run")
