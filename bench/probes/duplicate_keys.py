"""What refusing duplicate msgpack keys costs `wire.decode`.

    python bench/probes/duplicate_keys.py [--repeats 7] [--json]

msgpack's unpacker has no option to refuse a repeated key, so `wire._unpack` passes every map
through `_map_without_duplicates` (`object_pairs_hook`). This times `wire.decode` of a few
messages with that hook and with msgpack's own dict building (the hook swapped out for this
bench only), interleaved, best of `--repeats`, in CPU time of this process
(`time.process_time`: on a shared machine, time spent waiting for a core does not count); each variant decodes signed frames as an ipc
channel does (per-node key function). Packed lockstep messages (protocols/codec/packed.py) carry no
msgpack and are not affected; they are listed for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocols.codec import messages as m  # noqa: E402
from protocols.codec import wire  # noqa: E402
from protocols.engines.consensus import ConsensusShare  # noqa: E402


def samples() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    agents = [f"agent_{i}" for i in range(4)]
    copies = 8

    def per_agent(make):
        return {agent: make() for agent in agents}

    observation = m.EnvObservation(
        step=1, observations=per_agent(lambda: rng.standard_normal((copies, 24)).astype(np.float32)),
        rewards=per_agent(lambda: np.zeros(copies, dtype=np.float32)), terminated=per_agent(lambda: np.zeros(copies, dtype=bool)),
        truncated=per_agent(lambda: np.zeros(copies, dtype=bool)), active=per_agent(lambda: np.ones(copies, dtype=bool)),
        final_observations={}, episode_start=np.zeros(copies, dtype=bool),
    )
    messages = {
        "heartbeat": m.Heartbeat(node_id="agent_0", incarnation=1, state="running"),
        "env.observation, 4 agents x 8 copies (msgpack)": observation,
        "env.action, 4 agents x 8 copies (msgpack)": m.EnvAction(step=1, actions=per_agent(lambda: np.zeros(copies, dtype=np.int64))),
        "consensus share, 8 tensors": ConsensusShare(epoch=0, round=0, tensors={f"w{i}": rng.standard_normal(256).astype(np.float32) for i in range(8)}),
    }
    return {name: [bytes(memoryview(f).cast("B")) for f in wire.encode(message, sender="agent_0", run_id="bench", seq=1, key=KEY)]
            for name, message in messages.items()}


KEY = b"k" * 32


def keys(sender: str) -> bytes:
    return KEY if sender == "agent_0" else b""


def best_us(frames: list[bytes], repeats: int, number: int = 300) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(number):
            wire.decode(frames, key=keys)
        best = min(best, (time.process_time() - started) / number)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hook = wire._map_without_duplicates
    rows = []
    for name, frames in samples().items():
        timings = {"refused": [], "last kept": []}
        for _ in range(args.repeats):  # interleaved: a load change slows both alike
            wire._map_without_duplicates = hook
            timings["refused"].append(best_us(frames, 1))
            wire._map_without_duplicates = None  # msgpack builds its dicts itself
            timings["last kept"].append(best_us(frames, 1))
        wire._map_without_duplicates = hook
        with_hook, without = min(timings["refused"]), min(timings["last kept"])
        rows.append({"message": name, "decode_us_duplicates_refused": round(with_hook, 2),
                     "decode_us_last_value_kept": round(without, 2), "extra_us": round(with_hook - without, 2)})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'message':<50}{'refused (us)':>14}{'last kept (us)':>16}{'extra (us)':>12}")
    for row in rows:
        print(f"{row['message']:<50}{row['decode_us_duplicates_refused']:>14}{row['decode_us_last_value_kept']:>16}{row['extra_us']:>12}")


if __name__ == "__main__":
    main()
