"""Unit tests for omsd.wire.sharding: one path, one shard, in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from omsd.wire.sharding import shard_for, stable_hash

PATHS = [f"run{i % 7}/sample_{i:04d}/scan {i}.dat" for i in range(1000)] + ["", "数据/ünï.h5", "a", "a/b"]


def test_stable_hash_is_blake2b_of_utf8() -> None:
    import hashlib

    assert stable_hash("a/b.dat") == int.from_bytes(hashlib.blake2b(b"a/b.dat", digest_size=8).digest(), "big")
    assert stable_hash("数据.h5") == int.from_bytes(hashlib.blake2b("数据.h5".encode(), digest_size=8).digest(), "big")


def test_sequential_names_reach_every_partition() -> None:
    assert {shard_for(f"scan_{i:03d}.dat", 4) for i in range(16)} == {0, 1, 2, 3}
    assert 0 <= stable_hash("x" * 10_000) < 2**64


def test_stable_hash_does_not_crash_on_surrogates() -> None:
    assert stable_hash("bad\udcffname") == stable_hash("bad\udcffname")


@pytest.mark.parametrize("n_shards", [1, 2, 4, 7, 64])
def test_shard_in_range_and_repeatable(n_shards: int) -> None:
    for path in PATHS:
        shard = shard_for(path, n_shards)
        assert 0 <= shard < n_shards
        assert shard_for(path, n_shards) == shard


@pytest.mark.parametrize("n_shards", [0, -1])
def test_no_shards_is_an_error(n_shards: int) -> None:
    with pytest.raises(ValueError):
        shard_for("a", n_shards)


def _shards_in_subprocess(seed: str) -> dict[str, list[int]]:
    code = (
        "import json, sys\n"
        "from omsd.wire.sharding import shard_for, stable_hash\n"
        "paths = json.load(sys.stdin)\n"
        "json.dump({p: [stable_hash(p), shard_for(p, 4), shard_for(p, 7), hash(p)] for p in paths}, sys.stdout)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(PATHS), capture_output=True, text=True,
                         env=env, check=True, timeout=60)
    return json.loads(out.stdout)


def test_stable_across_processes_with_different_hash_seeds() -> None:
    one, two = _shards_in_subprocess("1"), _shards_in_subprocess("2")
    # The two interpreters really do salt str hashes differently ...
    assert sum(one[p][3] != two[p][3] for p in PATHS) > len(PATHS) // 2
    # ... and yet every path lands on the same shard in both, and in this process.
    for path in PATHS:
        assert one[path][:3] == two[path][:3] == [stable_hash(path), shard_for(path, 4), shard_for(path, 7)]


def test_distribution_over_four_shards_is_not_degenerate() -> None:
    counts = Counter(shard_for(f"instrument_{i % 3}/2024-05-{i % 28:02d}/frame_{i:05d}.tif", 4) for i in range(1000))
    assert set(counts) == {0, 1, 2, 3}
    # An even split is 250 each; allow wide statistical room but not a lopsided or empty shard.
    assert min(counts.values()) >= 150, counts
    assert max(counts.values()) <= 350, counts


def test_similar_paths_spread_out() -> None:
    """Paths differing only in a trailing counter must not all collapse onto one shard."""
    counts = Counter(shard_for(f"a/b/file{i}", 4) for i in range(1000))
    assert len(counts) == 4 and min(counts.values()) >= 150, counts


def test_worker_slots_are_independent_of_partitions() -> None:
    """A daemon owning partitions {0, 2} of 4 still uses both of its 2 worker slots."""
    from omsd.wire.sharding import shard_for, worker_slot_for

    paths = [f"run{i}/file_{i}.dat" for i in range(1000)]
    owned = [p for p in paths if shard_for(p, 4) in (0, 2)]
    slots = [worker_slot_for(p, 2) for p in owned]
    assert 0.35 < slots.count(0) / len(slots) < 0.65
    assert worker_slot_for("a/b.dat", 3) == worker_slot_for("a/b.dat", 3)
