"""Stable hashing of file paths: the same path always lands in the same place.

Used for the uploader's file-affine partitioning and for choosing the worker
slot of a completed file. Never Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

import hashlib


def stable_hash(relative_path: str) -> int:
    """A process-independent 64-bit hash of a relative path (blake2b of its utf-8).

    A mixing hash, not crc32: crc32 is linear, so sequentially named files
    (``scan_000`` … ``scan_015``) would crowd onto a few partitions.
    """
    digest = hashlib.blake2b(relative_path.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def shard_for(relative_path: str, n_shards: int) -> int:
    """The shard (partition or worker slot) index for a path among ``n_shards``."""
    if n_shards < 1:
        raise ValueError("n_shards must be at least 1")
    return stable_hash(relative_path) % n_shards


def worker_slot_for(relative_path: str, n_slots: int) -> int:
    """The worker slot for a path: a hash independent of the partition hash.

    With one hash for both, a daemon owning partitions {0, 2} of 4 would send
    every file to slot 0 of 2; a differently keyed blake2b spreads them.
    """
    if n_slots < 1:
        raise ValueError("n_slots must be at least 1")
    digest = hashlib.blake2b(relative_path.encode("utf-8", "surrogatepass"), digest_size=8, person=b"omsd-slot")
    return int.from_bytes(digest.digest(), "big") % n_slots
