"""`bench/consensus.py --hosts 3`: runs across namespaces with CURVE, and leaves no namespace behind."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, reaped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BENCH = [sys.executable, str(REPO / "bench" / "consensus.py")]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (run as root, as CI does)")


def namespaces_named(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(f"{prefix}-")]


def test_without_root_the_hosts_mode_says_why(tmp_path):
    # As root, drop to nobody for this one run (it needs nothing but to read the checkout).
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *BENCH, "--hosts", "3"]
    else:
        argv = [*BENCH, "--hosts", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 2, done.stderr
    assert "--hosts makes Linux network namespaces, which needs root" in done.stderr


@as_root
def test_hosts_mode_measures_both_sides_with_curve_and_deletes_its_namespaces():
    prefix = f"ptest{secrets.token_hex(2)}"
    done = subprocess.run([*BENCH, "--hosts", "3", "--sizes", "1e4", "--rounds", "3", "--repeats", "1", "--json",
                           "--netns-prefix", prefix], capture_output=True, text=True, timeout=100, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    payload = 4 * 10_000 * 2  # float32 shares to each of two neighbours, per round
    for side in ("parley", "raw"):
        assert result[f"{side}_s_per_round_1e4_hosts3_curve"] > 0
        # Both sides really crossed the veths. A worker reads its interface's counters as soon as
        # it has its neighbours' last shares, when its own last share may still be on its way out
        # (seen under load: 0.9 x payload): of 3 rounds, at least the first 2 rounds' shares.
        assert result[f"{side}_wire_bytes_per_round_per_node_1e4_hosts3_curve"] >= payload * 2 / 3
    assert result["max_abs_diff_parley_vs_raw_1e4_hosts3_curve"] <= 1e-4  # the same averaging on both sides
    assert namespaces_named(prefix) == []


@as_root
def test_an_interrupted_hosts_run_still_deletes_its_namespaces():
    prefix = f"ptest{secrets.token_hex(2)}"
    process = subprocess.Popen([*BENCH, "--hosts", "3", "--sizes", "1e5", "--rounds", "200", "--repeats", "50",
                                "--netns-prefix", prefix], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    with reaped(process):
        deadline = time.monotonic() + 60
        while len(namespaces_named(prefix)) < 4:  # three hosts and the bridge
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the namespaces never appeared"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode != 0
    assert namespaces_named(prefix) == []
