"""Which MAC for the envelope's buffers: HMAC-SHA256 or keyed BLAKE2b, side by side in one run.

Signing a consensus share MACs every array buffer, so the MAC's throughput on 1-8 MiB buffers
is what matters. Prints ms per MiB (best of N, interleaved) and the ratio; `--json` for JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time


def best_ms_per_mib(sign, buffer: bytes, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sign(buffer)
        best = min(best, time.perf_counter() - start)
    return best * 1e3 / (len(buffer) / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    key = os.urandom(32)
    macs = {
        "hmac_sha256": lambda data: hmac.new(key, data, hashlib.sha256).digest(),
        "blake2b_keyed": lambda data: hashlib.blake2b(data, key=key, digest_size=32).digest(),
    }
    rows = []
    for mib in (1, 2, 4, 8):
        buffer = os.urandom(mib << 20)
        row = {"mib": mib}
        for _ in range(2):  # interleave the two, twice, keeping each one's best
            for name, sign in macs.items():
                row[name] = min(row.get(name, float("inf")), best_ms_per_mib(sign, buffer, args.repeats))
        row["blake2b_over_hmac"] = row["blake2b_keyed"] / row["hmac_sha256"]
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'MiB':>4} {'HMAC-SHA256 ms/MiB':>19} {'BLAKE2b ms/MiB':>15} {'BLAKE2b/HMAC':>13}")
    for row in rows:
        print(f"{row['mib']:>4} {row['hmac_sha256']:>19.2f} {row['blake2b_keyed']:>15.2f} {row['blake2b_over_hmac']:>13.2f}")


if __name__ == "__main__":
    main()
