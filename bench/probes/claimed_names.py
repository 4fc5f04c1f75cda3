"""What made-up sender names cost a running node: the RSS of the env server and of one
agent while a stranger sends them messages that each claim a sender name of their own.

    python bench/probes/claimed_names.py [--config configs/4agents_ring.yaml] [--messages 256]
                                  [--name-kib 256] [--signed-too] [--repo PATH] [--json]

Starts `orchestrate up CONFIG` (ipc, signed, as every run is), waits until the run has started,
then, from a raw zmq DEALER of a same-user process without the run's keys (it knows the endpoints
from events.jsonl), sends to the env server's socket and to agent_1's peer socket, in turn:

1. nothing (`idle`): how much the nodes grow on their own over the same wait;
2. `--messages` unsigned heartbeats all claiming one name of `--name-kib` KiB (`one name`);
3. `--messages` unsigned heartbeats each claiming a name of its own of that size (`distinct`);
4. with `--signed-too`, the same as 3 signed with a random key (`distinct, wrong key`).

After each step it waits `--settle-s` and reads VmRSS from /proc/<pid>/status of both nodes; the
table gives the growth of each step. `--repo` runs another checkout's code (the numbers before a
change: `git archive <commit> | tar -x -C DIR`, then `--repo DIR`). The run is interrupted
(SIGINT, as Ctrl-C) at the end. A benchmark, not a test: tests/integration/test_security.py
asserts the bound; this prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import zmq  # noqa: E402

from protocols.codec import messages as m  # noqa: E402
from protocols.codec import wire  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def wait_started(run_dir: Path, process: subprocess.Popen, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = events(run_dir)
        if any(e["event"] == "started" for e in found):
            return found
        if process.poll() is not None:
            raise RuntimeError(f"orchestrate exited early: {process.communicate()[1].decode()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"the run did not start within {timeout_s} s")


def made_up_names(count: int, size: int, tag: str) -> list[str]:
    """`count` distinct names of `size` characters (the same name `count` times when `tag` is "one")."""
    if tag == "one":
        return ["x" * size] * count
    return [f"{tag}{index:08d}".ljust(size, "x") for index in range(count)]


def send_all(sockets: list[zmq.Socket], names: list[str], run_id: str, key: bytes) -> None:
    heartbeat = m.Heartbeat(node_id="agent_1", incarnation=1, state="running")
    for index, name in enumerate(names):
        frames = wire.encode(heartbeat, sender=name, run_id=run_id, seq=index, key=key)
        for socket in sockets:
            socket.send_multipart(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/4agents_ring.yaml")
    parser.add_argument("--messages", type=int, default=256)
    parser.add_argument("--name-kib", type=float, default=256.0)
    parser.add_argument("--signed-too", action="store_true", help="also send the distinct names signed with a wrong key")
    parser.add_argument("--settle-s", type=float, default=6.0, help="wait after each step before reading RSS")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="wait after the run started, before the first reading")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code the run runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    size = int(args.name_kib * 1024)
    with tempfile.TemporaryDirectory(prefix="claimed_names-") as tmp:
        run_dir = Path(tmp) / "run"
        env = {**os.environ, "PYTHONPATH": str(args.repo)}
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "up", str(REPO / args.config), "--run-dir", str(run_dir),
             "--set", "run.steps=1000000", "--set", "launch.live_view=off"],
            cwd=args.repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        context = zmq.Context()
        sockets: list[zmq.Socket] = []
        rows: list[dict] = []
        try:
            found = wait_started(run_dir, process, 180.0)
            endpoints = {e["node"]: e["endpoints"] for e in found if e["event"] == "registered"}
            pids = {e["node"]: e["pid"] for e in found if e["event"] == "launched"}
            run_id = next(e["run_id"] for e in found if e["event"] == "run_started")
            for endpoint in (endpoints["env"]["env"], endpoints["agent_1"]["peer"]):
                socket = context.socket(zmq.DEALER)
                socket.setsockopt(zmq.LINGER, 0)
                socket.setsockopt(zmq.SNDTIMEO, 30_000)
                socket.identity = b"intruder"
                socket.connect(endpoint)
                sockets.append(socket)
            time.sleep(args.warmup_s)
            steps = [("idle", []), ("one name", made_up_names(args.messages, size, "one")),
                     ("distinct", made_up_names(args.messages, size, "d"))]
            if args.signed_too:
                steps.append(("distinct, wrong key", made_up_names(args.messages, size, "w")))
            before = {node: rss_mib(pids[node]) for node in ("env", "agent_1")}
            for what, names in steps:
                send_all(sockets, names, run_id, os.urandom(32) if "wrong key" in what else b"")
                time.sleep(args.settle_s)
                after = {node: rss_mib(pids[node]) for node in ("env", "agent_1")}
                rows.append({"step": what, "messages": len(names), "name_kib": args.name_kib if names else 0,
                             **{f"{node}_rss_mib": round(after[node], 1) for node in after},
                             **{f"{node}_growth_mib": round(after[node] - before[node], 1) for node in after}})
                before = after
        finally:
            for socket in sockets:
                socket.close(linger=0)
            context.term()
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        logs = {node: (run_dir / "nodes" / node / "log").read_text(errors="replace") if (run_dir / "nodes" / node / "log").exists() else ""
                for node in ("env", "agent_1")}
    lines = {node: sum("invalid message" in line for line in text.splitlines()) for node, text in logs.items()}
    if args.json:
        print(json.dumps({"repo": str(args.repo), "rows": rows, "log_lines": lines}))
        return
    print(f"code: {args.repo}  config: {args.config}")
    print(f"{'step':<22}{'msgs':>6}{'name KiB':>10}{'env RSS':>10}{'growth':>8}{'agent_1 RSS':>13}{'growth':>8}")
    for row in rows:
        print(f"{row['step']:<22}{row['messages']:>6}{row['name_kib']:>10}{row['env_rss_mib']:>10}{row['env_growth_mib']:>8}"
              f"{row['agent_1_rss_mib']:>13}{row['agent_1_growth_mib']:>8}")
    print(f"log lines about invalid messages: env {lines['env']}, agent_1 {lines['agent_1']}")


if __name__ == "__main__":
    main()
