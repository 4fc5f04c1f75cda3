"""`env.max_steps_per_s` (standalone: --max-steps-per-s): the env server takes at most that many
training lockstep steps per second, however fast its clients answer, so a fault schedule in
seconds meets the same steps on a fast machine as on a slow one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, read_line_with_deadline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STEPS, PER_S = 40, 20.0


def test_the_server_paces_its_training_steps(spawn, tmp_path):
    server = spawn([sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3",
                    "--kwargs", json.dumps({"N": 2, "max_cycles": 25}), "--bind", f"ipc://{tmp_path}/env.sock",
                    "--max-steps", str(STEPS), "--max-steps-per-s", str(PER_S)],
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = read_line_with_deadline(server, 60)
    assert line.startswith("READY "), line
    endpoint = line.split(" ", 1)[1]
    clients = [spawn([sys.executable, str(REPO / "bench" / "random_client.py"), endpoint, str(i), str(i)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for client in clients:
        out, err = client.communicate(timeout=90)
        assert client.returncode == 0, err.decode()[-2000:]
        answered, defaulted, seconds, *_ = out.decode().split("TIMING ")[1].split()
        # Step 1 goes at once, each of the other 39 at least 1/20 s after the one before it (the
        # clients answer within milliseconds: unpaced, the 40 steps take a few tens of them).
        assert int(defaulted) == 0 and float(seconds) >= (STEPS - 1) / PER_S * 0.999, (answered, defaulted, seconds)


def test_a_pace_that_is_not_a_positive_number_is_refused(spawn):
    server = spawn([sys.executable, "-m", "env_server", "--env", "mpe2.simple_spread_v3", "--max-steps-per-s", "0"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = server.communicate(timeout=60)
    assert server.returncode == 2 and b"expected a positive number of steps per second, got 0.0" in err
