"""Unit tests of the daemon's bookkeeping: watermarks, staging, assembly, registry."""

from __future__ import annotations

import hashlib
import os

import pytest

from omsd.intake.assembly import Assembler, estimate_size
from omsd.wire.protocol import ProtocolError, decode_chunk
from omsd.registry import Registry
from omsd.intake.staging import Staging
from omsd.intake.watermark import Watermarks
from tests.chunks import chunk_messages

TP = ("topic", 0)


def test_watermark_is_lowest_hold_or_next_offset() -> None:
    marks = Watermarks()
    assert marks.safe(TP) is None
    for offset in range(10):
        marks.consumed(TP, offset)
    assert marks.safe(TP) == 10
    marks.hold(TP, holder=1, offset=3)
    marks.hold(TP, holder=1, offset=7)
    marks.hold(TP, holder=2, offset=5)
    assert marks.safe(TP) == 3
    assert marks.to_commit() == {TP: 3}
    marks.committed({TP: 3})
    assert marks.to_commit() == {}
    marks.release(1)
    assert marks.safe(TP) == 5
    marks.release(2)
    assert marks.to_commit() == {TP: 10}


def test_watermark_forget_and_assigned_filter() -> None:
    marks = Watermarks()
    marks.consumed(TP, 4)
    marks.consumed(("topic", 1), 8)
    assert marks.to_commit({TP}) == {TP: 5}
    marks.hold(TP, 9, 2)
    marks.forget({TP})
    assert marks.safe(TP) is None
    marks.release(9)  # releasing a holder of a forgotten partition is harmless
    assert marks.to_commit() == {("topic", 1): 9}


@pytest.fixture
def staging(tmp_path):
    area = Staging(tmp_path / "state", memory_budget=100_000)
    area.open()
    yield area
    area.close()


def test_staging_spills_beyond_budget_and_releases(staging) -> None:
    small = staging.allocate(60_000)
    big = staging.allocate(60_000)
    assert small.kind == "shm" and big.kind == "spill"
    assert staging.memory_used == 60_000 and staging.spill_used == 60_000
    staging.write(small, 10, b"abc")
    staging.write(small, 0, b"0123456789")
    staging.seal(small)
    with open(small.path, "rb") as handle:
        assert handle.read() == b"0123456789abc"
    assert staging.memory_used == 13
    staging.release(big)
    assert not os.path.exists(big.path)
    staging.release(small)  # a small segment is kept for the next small file, still counted
    assert os.path.exists(small.path)
    assert staging.memory_used == 0 and staging.memory_kept == 13 and staging.spill_used == 0 and staging.files == 0
    staging.close()
    assert not os.path.exists(small.path) and staging.memory_kept == 0


def test_a_released_small_segment_is_reused_and_only_its_first_size_bytes_are_the_file(staging) -> None:
    first = staging.allocate(100)
    staging.write(first, 0, b"x" * 100)
    staging.seal(first)
    staging.release(first)
    second = staging.allocate(10)
    assert second.path == first.path and second.kind == "shm" and second.size == 0
    staging.write(second, 0, b"0123456789")
    staging.seal(second)
    assert second.size == 10
    with open(second.path, "rb") as handle:
        assert handle.read(second.size) == b"0123456789"  # what a worker reads: size bytes
    assert os.path.getsize(second.path) == 100  # the segment keeps its pages for the next file
    assert staging.memory_used == 100 and staging.memory_kept == 0 and staging.files == 1
    third = staging.allocate(10)  # the kept one is in use: a new segment
    assert third.path != second.path
    os.close(third.fd)


def test_kept_segments_are_bounded_and_large_ones_are_never_kept(staging) -> None:
    from omsd.intake.staging import POOL_SEGMENT_MAX, POOL_SEGMENTS

    small = [staging.allocate(1) for _ in range(POOL_SEGMENTS + 3)]
    for staged in small:
        staging.write(staged, 0, b"s")
        staging.seal(staged)
    for staged in small:
        staging.release(staged)
    assert sum(os.path.exists(s.path) for s in small) == POOL_SEGMENTS
    assert staging.memory_used == 0 and staging.memory_kept == POOL_SEGMENTS
    large = Staging(staging.state_dir, memory_budget=4 * POOL_SEGMENT_MAX)
    large.open()
    try:
        big = large.allocate(POOL_SEGMENT_MAX + 1)
        large.write(big, 0, b"b" * (POOL_SEGMENT_MAX + 1))
        large.seal(big)
        large.release(big)
        assert not os.path.exists(big.path) and large.memory_used == large.memory_kept == 0
    finally:
        large.close()


def test_kept_segments_hold_at_most_pool_bytes(tmp_path) -> None:
    from omsd.intake.staging import POOL_BYTES, POOL_SEGMENT_MAX

    size = POOL_SEGMENT_MAX  # so that POOL_BYTES is reached before POOL_SEGMENTS
    area = Staging(tmp_path / "state", memory_budget=4 * POOL_BYTES)
    area.open()
    try:
        files = [area.allocate(size) for _ in range(POOL_BYTES // size + 2)]
        for staged in files:
            area.write(staged, 0, b"x" * size)
            area.seal(staged)
        for staged in files:
            area.release(staged)
        assert area.memory_kept == POOL_BYTES and area.memory_used == 0
        assert sum(os.path.exists(s.path) for s in files) == POOL_BYTES // size
    finally:
        area.close()


def test_kept_segments_give_their_memory_back_before_anything_spills(tmp_path) -> None:
    area = Staging(tmp_path / "state", memory_budget=1000)
    area.open()
    try:
        kept = area.allocate(400)
        area.write(kept, 0, b"k" * 400)
        area.seal(kept)
        area.release(kept)
        assert area.memory_used == 0 and area.memory_kept == 400
        roomy = area.allocate(900)  # fits only once the kept segment is gone
        assert roomy.kind == "shm" and not os.path.exists(kept.path) and area.memory_kept == 0
        os.close(roomy.fd)
        gone = area.allocate(10)
        area.write(gone, 0, b"g")
        area.seal(gone)
        area.release(gone)
        os.unlink(gone.path)  # removed behind the daemon's back: the next file gets a new segment
        fresh = area.allocate(10)
        assert fresh.path != gone.path and os.path.exists(fresh.path)
        os.close(fresh.fd)
    finally:
        area.close()


def test_staging_removes_stale_segments_of_its_state_dir(tmp_path) -> None:
    first = Staging(tmp_path / "state", 1 << 20)
    first.open()
    leftover = first.allocate(10)
    os.close(leftover.fd)  # as if the daemon had been killed
    second = Staging(tmp_path / "state", 1 << 20)
    assert second.open() == 1
    assert not os.path.exists(leftover.path)
    kept = second.allocate(10)
    os.close(kept.fd)
    assert second.close() == 1 and not os.path.exists(kept.path)


def _chunks(rel: str, data: bytes, size: int):
    return [decode_chunk(value) for _key, value in chunk_messages(rel, data, size)]


def test_assembly_out_of_order_duplicates_and_holds(staging) -> None:
    marks = Watermarks()
    assembler = Assembler(staging, marks, max_file_size=1 << 30)
    data = bytes(range(256)) * 100
    chunks = _chunks("d/f.bin", data, 5000)
    order = list(reversed(chunks)) + [chunks[0]]
    done = None
    for offset, chunk in enumerate(order[:-1], start=100):
        assert done is None
        done = assembler.add("topic", 0, offset, chunk)
        marks.consumed(TP, offset)
    assert done is not None and done.relative_path == "d/f.bin"
    with open(done.staged.path, "rb") as handle:
        assert hashlib.sha512(handle.read()).digest() == chunks[0].file_hash
    assert marks.safe(TP) == 100  # held until the outcome is recorded
    assembler.discard(done)
    assert marks.safe(TP) == 100 + len(chunks)
    # A late duplicate starts a new assembly, which the registry check upstream would skip.
    assert assembler.add("topic", 0, 200, order[-1]) is None


def test_assembly_rejects_inconsistent_totals_and_bounds_estimates(staging) -> None:
    assembler = Assembler(staging, Watermarks(), max_file_size=1 << 20)
    first = _chunks("x.bin", b"a" * 3000, 1000)
    assembler.add("topic", 0, 0, first[0])
    liar = _chunks("x.bin", b"a" * 3000, 500)[1]  # same file hash, other chunk count
    with pytest.raises(ProtocolError) as err:
        assembler.add("topic", 0, 1, liar)
    assert err.value.reason == "inconsistent"
    assert estimate_size(first[0], 1 << 20) == 3000
    assert estimate_size(first[2], 1 << 20) == 3000


def test_registry_sync_fsyncs_the_wal_once_per_batch_of_changes(tmp_path, monkeypatch) -> None:
    import omsd.registry as registry_module

    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    registry = Registry(tmp_path / "r.sqlite")
    monkeypatch.setattr(registry_module.os, "fsync", counting_fsync)
    record = registry.register("t", "a.txt", "aa", 1)
    registry.record_step(record.id, "p", 0, "save", "done", 1, None, 0.1)
    registry.set_status(record.id, "done", None)
    registry.sync()
    assert synced == [str(tmp_path / "r.sqlite-wal")]
    registry.sync()  # nothing changed since
    registry.find("t", "a.txt", "aa")  # reads change nothing
    registry.sync()
    assert len(synced) == 1 and registry.syncs == 1
    registry.set_status(record.id, "failed", "later")
    registry.sync()
    assert len(synced) == 2
    registry.close()


def test_content_found_absent_is_found_once_registered_even_after_a_rolled_back_insert(tmp_path) -> None:
    from omsd import registry as registry_module

    registry = Registry(tmp_path / "r.sqlite")
    assert registry.find("t", "new.bin", "cc") is None  # remembered as absent
    assert not registry.is_finished("t", "new.bin", "cc", ["p"])
    with pytest.raises(RuntimeError):
        with registry.transaction():
            registry.register("t", "new.bin", "cc", 3)
            raise RuntimeError("the turn failed")  # rolled back: still absent
    assert registry.find("t", "new.bin", "cc") is None
    record = registry.register("t", "new.bin", "cc", 3)
    assert record.new and registry.find("t", "new.bin", "cc").id == record.id
    assert not registry.register("t", "new.bin", "cc", 3).new
    # Two new contents of one path looked up before either is registered: generations still follow.
    assert registry.find("t", "new.bin", "c2") is None and registry.find("t", "new.bin", "c3") is None
    assert registry.register("t", "new.bin", "c2", 3).generation == 2
    assert registry.find("t", "new.bin", "c3") is None
    assert registry.register("t", "new.bin", "c3", 3).generation == 3
    assert [registry.find("t", "new.bin", sha).generation for sha in ("cc", "c2", "c3")] == [1, 2, 3]
    for i in range(registry_module.ABSENT_REMEMBERED + 5):  # the memory of absent content is bounded
        registry.find("t", f"gone-{i}", "dd")
    assert len(registry._absent) == registry_module.ABSENT_REMEMBERED
    registry.close()


def test_one_look_up_answers_the_finished_checks_and_registrations_of_a_batch(tmp_path, monkeypatch) -> None:
    from omsd import registry as registry_module

    monkeypatch.setattr(registry_module, "LOOK_UP_BATCH", 3)  # six paths: two queries
    registry = Registry(tmp_path / "r.sqlite")
    old = registry.register("t", "old.bin", "o1", 1)
    registry.record_pipeline(old.id, "p", "done")
    registry.set_status(old.id, "done")
    statements: list[str] = []
    registry.db.set_trace_callback(statements.append)
    batch = [("old.bin", "o1"), ("old.bin", "o2")] + [(f"new-{i}.bin", f"n{i}") for i in range(5)]
    registry.look_up("t", batch)
    assert len(statements) == 2 and all(q.startswith("SELECT rel_path, sha512, generation") for q in statements)
    statements.clear()
    assert not any(registry.is_finished("t", path, sha, ["p"]) for path, sha in batch[1:])
    records = [registry.register("t", path, sha, 1) for path, sha in batch[1:]]
    assert [q for q in statements if q.startswith("SELECT")] == []  # nothing looked up one by one
    assert [r.generation for r in records] == [2, 1, 1, 1, 1, 1]  # a new content of old.bin: its 2nd generation
    assert registry.is_finished("t", "old.bin", "o1", ["p"])  # known content is still found
    statements.clear()
    registry.look_up("t", [("new-0.bin", "n0")])  # registered since: found, not taken for absent
    assert registry.find("t", "new-0.bin", "n0").id == records[1].id
    assert registry.look_up("u", []) is None
    registry.close()


def test_registry_generations_and_outcomes(tmp_path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    one = registry.register("t", "a/b.txt", "aa", 10)
    assert registry.register("t", "a/b.txt", "aa", 10).id == one.id
    two = registry.register("t", "a/b.txt", "bb", 12)
    assert (one.generation, two.generation) == (1, 2)
    assert not registry.is_finished("t", "a/b.txt", "aa", ["p"])
    registry.record_step(one.id, "p", 0, "save", "done", 1, None, 0.1)
    registry.record_step(one.id, "p", 1, "call", "failed", 3, "boom", 0.1)
    registry.record_pipeline(one.id, "p", "failed", "call: boom")
    registry.set_status(one.id, "failed", "call: boom", kept_path="/kept/1")
    assert registry.is_finished("t", "a/b.txt", "aa", ["p"])
    assert registry.done_steps(one.id) == {"p": [0]}
    [failed] = registry.failed()
    assert (failed["path"], failed["step"], failed["attempts"], failed["kept"]) == ("a/b.txt", "call#1", 3, True)
    registry.clear_failure(one.id, "p")
    assert registry.failed() == [] and registry.done_steps(one.id) == {"p": [0]}
    registry.close()
    # Durable: a new connection sees everything.
    again = Registry(tmp_path / "r.sqlite")
    assert again.find("t", "a/b.txt", "bb").generation == 2


def test_settling_the_heap_freezes_start_up_and_collects_young_objects_less_often() -> None:
    import gc

    from omsd.heap import GEN0_THRESHOLD, settle_heap

    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == (GEN0_THRESHOLD, *before[1:])
        cycle: list = []
        cycle.append(cycle)  # cyclic garbage made after start-up is still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
