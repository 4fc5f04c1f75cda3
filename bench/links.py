"""Consensus round time against the emulated link delay, on real processes and sockets.

    python bench/links.py [--delays-ms 0,5,20,50] [--agents 3] [--rounds 20] [--size 10000] [--json]
                          [--save docs/results/links.json --page docs/results/links.md]
    python bench/links.py --page-from docs/results/links.json --page docs/results/links.md

For each configured one-way delay, `--agents` processes form a ring; each owns a `Hub` made with
the run's `LinkTable` (the `network:` section: `default_link.delay_s` = the delay) and runs
synchronous Metropolis consensus rounds (`SyncConsensus`, the engine agent nodes use) on a float32
tensor, sending shares through its links. A round needs every neighbour's share, so its time is at
least the one-way delay; the table shows how close to that floor a round gets, and what the
per-link counters and the receivers' measured message ages say.

Fresh processes per delay (the link table is fixed at hub creation, as in a run). Every wait has a
deadline; the hubs close their sockets with linger 0; every child is joined.

`--save` writes the invocation's record (command, date, machine, load, commit, rows:
bench/results_page.py) and `--page` the results page rendered from it; `--page-from` renders the
page of a saved record again without measuring.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import results_page  # noqa: E402  (bench/ is on the path)

from protocols.engines.consensus import ConsensusRequest, SyncConsensus  # noqa: E402
from protocols.codec.messages import Heartbeat  # noqa: E402
from protocols.run.settings import NetworkConfig  # noqa: E402
from protocols.engines.topology import metropolis_weights, ring  # noqa: E402
from protocols.net.transport import Hub  # noqa: E402

RUN_SEED = 0
TIMEOUT_S = 60.0


def worker(index: int, count: int, delay_s: float, rounds: int, size: int, socket_dir: str, start, results) -> None:
    node = f"agent_{index}"
    topology = ring(count, [f"agent_{i}" for i in range(count)])
    weights = metropolis_weights(topology)
    neighbour_weights = {topology.nodes[j]: float(weights[index, j]) for j in topology.neighbours(index)}
    self_weight = float(weights[index, index])
    network = NetworkConfig.model_validate({"default_link": {"delay_s": delay_s}})
    hub = Hub(sender=node, run_id="bench-links", links=network.link_table(node, RUN_SEED))
    try:
        inbox = hub.bind_router(f"ipc://{socket_dir}/{node}", name="inbox")
        peers = {
            peer: hub.connect_dealer(f"ipc://{socket_dir}/{peer}", name=peer, identity=None, peer=peer)
            for peer in sorted(neighbour_weights)
        }
        # Hello both ways on every link, then start together.
        for channel in peers.values():
            channel.send(Heartbeat(node_id=node, incarnation=0, state="ready"))
        waiting = set(peers)
        deadline = time.monotonic() + TIMEOUT_S
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node}: no hello from {sorted(waiting)}")
            if inbox in hub.wait(deadline - time.monotonic()):
                waiting -= {envelope.sender for envelope in inbox.recv_all()}
        start.wait(TIMEOUT_S)

        tensor = np.random.default_rng(index).standard_normal(size, dtype=np.float32)
        engine = SyncConsensus(node, neighbour_weights, self_weight, rounds, TIMEOUT_S)
        began = time.monotonic()

        def send(outgoing):
            for destination, message in outgoing:
                peers[destination].send(message)

        send(engine.start(ConsensusRequest({"x": tensor}, 1), now=began))
        while not engine.done:
            if time.monotonic() - began > TIMEOUT_S:
                raise TimeoutError(f"{node}: consensus did not finish in {TIMEOUT_S} s")
            if inbox in hub.wait(max(0.0, engine.next_deadline() - time.monotonic())):
                for envelope in inbox.recv_all():
                    send(engine.on_message(envelope.sender, envelope.message, time.monotonic()))
            send(engine.on_timer(time.monotonic()))
        elapsed = time.monotonic() - began
        # Let the last held shares out before closing (the neighbours still need them).
        while (due := hub.next_due()) is not None and time.monotonic() - began < TIMEOUT_S:
            hub.wait(max(0.0, due - time.monotonic()))
        late_rounds = sum(1 for missing in engine.missing_by_round if missing)
        metrics = hub.link_metrics()
        ages = [value for key, value in metrics.items() if key.endswith("age_p50_ms")]
        results.put({"node": node, "s_per_round": elapsed / rounds, "late_rounds": late_rounds, "age_p50_ms": float(np.median(ages))})
        # Wait for the others before closing: a neighbour may still be sending us its last share.
        start.wait(TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - reported to the parent
        results.put({"node": node, "error": f"{type(error).__name__}: {error}"})
    finally:
        hub.close()


def measure(delay_ms: float, count: int, rounds: int, size: int) -> dict:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(count)
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="parley-links-") as socket_dir:
        processes = [
            context.Process(target=worker, args=(i, count, delay_ms / 1000.0, rounds, size, socket_dir, start, results))
            for i in range(count)
        ]
        for process in processes:
            process.start()
        rows = [results.get(timeout=TIMEOUT_S * 3) for _ in processes]
        for process in processes:
            process.join(TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
    errors = [row["error"] for row in rows if "error" in row]
    if errors:
        raise RuntimeError(f"delay {delay_ms} ms: {errors}")
    return {
        "delay_ms": delay_ms,
        "ms_per_round_mean": 1000 * float(np.mean([row["s_per_round"] for row in rows])),
        "ms_per_round_max": 1000 * float(np.max([row["s_per_round"] for row in rows])),
        "age_p50_ms": float(np.median([row["age_p50_ms"] for row in rows])),
        "late_rounds": int(sum(row["late_rounds"] for row in rows)),
    }


PAGE_TITLE = "Consensus round time against the link delay (`bench/links.py`)"
COLUMNS = [
    ("delay ms", "right", lambda row: f"{row['delay_ms']:g}"),
    ("ms per round (mean over processes)", "right", lambda row: f"{row['ms_per_round_mean']:.2f}"),
    ("slowest process", "right", lambda row: f"{row['ms_per_round_max']:.2f}"),
    ("round − delay", "right", lambda row: f"{row['ms_per_round_mean'] - row['delay_ms']:.2f}"),
    ("message age p50 ms", "right", lambda row: f"{row['age_p50_ms']:.2f}"),
    ("rounds with a share late", "right", lambda row: str(row["late_rounds"])),
]


def render(record: dict, source: str) -> str:
    """The results page of a saved record."""
    settings = record["settings"]
    intro = (
        f"Synchronous Metropolis consensus (`SyncConsensus`, the agent nodes' engine) on a ring of "
        f"{settings['agents']} processes over ipc, {settings['rounds']} rounds of {settings['size']:,} float32 per "
        f"share, every link emulated with a constant one-way delay (`network.default_link.delay_s`):"
    )
    reading = (
        "A round needs every neighbour's share, so it cannot take less than the delay: \"round − delay\" "
        "is what a round costs above that floor. The message age is what the receivers measured (the "
        "median over processes of each link's p50); a round is counted late when its deadline passed "
        "before every neighbour's share had come."
    )
    return results_page.page(record, PAGE_TITLE, source, intro, COLUMNS, reading)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delays-ms", default="0,5,20,50")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--json", action="store_true")
    results_page.add_page_options(parser)
    args = parser.parse_args()
    if results_page.render_saved_page(parser, args, render):
        return 0
    record = results_page.begin("bench/links.py", sys.argv[1:])
    record["settings"] = {"agents": args.agents, "rounds": args.rounds, "size": args.size}
    table = [measure(float(d), args.agents, args.rounds, args.size) for d in args.delays_ms.split(",")]
    record["rows"] = table
    results_page.finish(record, args.save, args.page, render)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"sync consensus, ring of {args.agents} processes, {args.rounds} rounds, {args.size} float32 per share")
    print(f"{'delay ms':>9} {'ms/round mean':>14} {'ms/round max':>13} {'round - delay':>14} {'msg age p50 ms':>15} {'late rounds':>12}")
    for row in table:
        print(
            f"{row['delay_ms']:>9.0f} {row['ms_per_round_mean']:>14.2f} {row['ms_per_round_max']:>13.2f} "
            f"{row['ms_per_round_mean'] - row['delay_ms']:>14.2f} {row['age_p50_ms']:>15.2f} {row['late_rounds']:>12d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
