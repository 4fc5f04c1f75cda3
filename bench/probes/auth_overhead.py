"""What authentication costs: signed vs unsigned envelopes, CURVE vs plain tcp, side by side.

    python bench/probes/auth_overhead.py [--repeats N] [--json]

Two measurements, each variant timed interleaved with its baseline in the same run (so a loaded
machine slows both alike; still, read small differences as noise):

1. codec: `wire.encode` + `wire.decode` of one message, unsigned vs signed with the sender's node
   key (HMAC-SHA256 over the head's header and parent, the body and array buffers, checked with a per-sender key
   lookup, as ipc channels do), for a heartbeat, an observation of 8 env copies and consensus
   shares of 1 MiB and 8 MiB.
2. sockets: round trips (DEALER -> ROUTER -> DEALER, both hubs in this process, zmq's I/O
   threads doing the transfer) of a heartbeat and of a 1 MiB share over ipc unsigned vs ipc
   signed, and over tcp plain vs tcp with CURVE (libsodium encryption of every frame).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocols.codec import messages as m  # noqa: E402
from protocols.codec import wire  # noqa: E402
from protocols.net.auth import load_node_keys, signing_keys  # noqa: E402
from protocols.engines.consensus import ConsensusShare  # noqa: E402
from protocols.net.transport import Hub, generate_run_keys  # noqa: E402


def sample_messages() -> dict[str, object]:
    rng = np.random.default_rng(0)
    copies = 8
    observation = m.EnvObservation(
        step=1,
        observations={"agent_0": rng.standard_normal((copies, 18)).astype(np.float32)},
        rewards={"agent_0": np.zeros(copies, dtype=np.float32)},
        terminated={"agent_0": np.zeros(copies, dtype=bool)},
        truncated={"agent_0": np.zeros(copies, dtype=bool)},
        active={"agent_0": np.ones(copies, dtype=bool)},
        final_observations={},
        episode_start=np.zeros(copies, dtype=bool),
        missing=[],
        run_finished=False,
        evaluation=False,
    )
    return {
        "heartbeat": m.Heartbeat(node_id="agent_0", incarnation=1, state="running"),
        "observation x8": observation,
        "share 1 MiB": ConsensusShare(epoch=0, round=0, tensors={"w": rng.standard_normal(1 << 18).astype(np.float32)}),
        "share 8 MiB": ConsensusShare(epoch=0, round=0, tensors={"w": rng.standard_normal(1 << 21).astype(np.float32)}),
    }


def codec_us(message: object, key: bytes, verify, iterations: int) -> float:
    start = time.perf_counter()
    for seq in range(iterations):
        frames = wire.encode(message, sender="agent_0", run_id="bench", seq=seq, key=key)
        wire.decode(frames, key=verify)
    return (time.perf_counter() - start) / iterations * 1e6


def bench_codec(keys, repeats: int) -> list[dict]:
    rows = []
    own_key = keys.signing_key("agent_0")
    verify = signing_keys(keys)
    for name, message in sample_messages().items():
        iterations = 2000 if "MiB" not in name else (100 if "1 MiB" in name else 15)
        plain, signed = [], []
        for _ in range(repeats):  # interleaved: both see the same machine load
            plain.append(codec_us(message, b"", b"", iterations))
            signed.append(codec_us(message, own_key, verify, iterations))
        rows.append({"what": f"codec {name}", "baseline": "unsigned", "variant": "signed",
                     "baseline_us": statistics.median(plain), "variant_us": statistics.median(signed)})
    return rows


def round_trip_us(client, server, message: object, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        client.send(message)
        request = None
        while request is None:  # recv() is None when what arrived was dropped (it never is here)
            if not server.socket.poll(10_000):
                raise RuntimeError("no message within 10 s")
            request = server.recv()
        server.reply(request, message)
        if client.wait_for(type(message), timeout_s=10) is None:
            raise RuntimeError("no reply within 10 s")
    return (time.perf_counter() - start) / iterations * 1e6


def pair(keys_dir: Path | None, address: str):
    server_hub = Hub(sender="env", run_id="bench", keys=load_node_keys(keys_dir, "env") if keys_dir else None)
    client_hub = Hub(sender="agent_0", run_id="bench", keys=load_node_keys(keys_dir, "agent_0") if keys_dir else None)
    server = server_hub.bind_router(address, name="server")
    client = client_hub.connect_dealer(server.endpoint, name="client", identity="agent_0")
    return (server_hub, client_hub), client, server


def bench_sockets(keys_dir: Path, tmp: Path, repeats: int) -> list[dict]:
    messages = sample_messages()
    rows = []
    for transport, address in (("ipc", f"ipc://{tmp}/bench.sock"), ("tcp", "tcp://127.0.0.1:0")):
        variant = "signed" if transport == "ipc" else "CURVE"
        baseline = "unsigned" if transport == "ipc" else "plain"
        for name in ("heartbeat", "share 1 MiB"):
            iterations = 500 if name == "heartbeat" else 40
            results = {False: [], True: []}
            for _ in range(repeats):
                for secured in (False, True):
                    hubs, client, server = pair(keys_dir if secured else None, address)
                    try:
                        round_trip_us(client, server, messages[name], 5)  # connect, handshake
                        results[secured].append(round_trip_us(client, server, messages[name], iterations))
                    finally:
                        for hub in hubs:
                            hub.close()
            rows.append({"what": f"{transport} round trip {name}", "baseline": baseline, "variant": variant,
                         "baseline_us": statistics.median(results[False]), "variant_us": statistics.median(results[True])})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions per variant (median reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        keys_dir = generate_run_keys(Path(tmp) / "keys", ["env", "agent_0"])
        keys = load_node_keys(keys_dir, "env")
        rows = bench_codec(keys, args.repeats) + bench_sockets(keys_dir, Path(tmp), args.repeats)
    for row in rows:
        row["overhead"] = row["variant_us"] / row["baseline_us"] - 1.0
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'measurement':34} {'baseline':>10} {'us':>10} {'variant':>8} {'us':>10} {'overhead':>9}")
    for row in rows:
        print(f"{row['what']:34} {row['baseline']:>10} {row['baseline_us']:10.1f} {row['variant']:>8} "
              f"{row['variant_us']:10.1f} {row['overhead']:+9.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
