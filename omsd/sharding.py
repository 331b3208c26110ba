"""Stable hashing of file paths: the same path always lands in the same place.

Used for the uploader's file-affine partitioning and for choosing the worker
slot of a completed file. Never Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

import zlib


def stable_hash(relative_path: str) -> int:
    """A process-independent 32-bit hash of a relative path (crc32 of its utf-8)."""
    return zlib.crc32(relative_path.encode("utf-8", "surrogatepass"))


def shard_for(relative_path: str, n_shards: int) -> int:
    """The shard (partition or worker slot) index for a path among ``n_shards``."""
    if n_shards < 1:
        raise ValueError("n_shards must be at least 1")
    return stable_hash(relative_path) % n_shards
