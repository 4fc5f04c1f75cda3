"""Seed derivation: one run seed, many independent streams.

Every random stream in a run (a node's policy, its exploration, the env copies, a link's loss
model) gets its seed from `derive_seed(run_seed, node_index, stream)`, so the same run seed gives
the same run wherever the system is deterministic, and no two streams share a seed by accident.
"""

import hashlib


def derive_seed(run_seed: int, node_index: int, stream: str) -> int:
    """A 31-bit seed from (run seed, node index, stream name), stable across Python versions."""
    digest = hashlib.blake2b(f"{run_seed}/{node_index}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF
