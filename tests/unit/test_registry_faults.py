"""The registry names its failures: damage (RegistryDamaged, remembered) and a full disk (RegistryFull)."""

from __future__ import annotations

import os
import sqlite3

import pytest

from omsd.registry import Registry, RegistryDamaged, RegistryFull, inspect_registry


def _filled(path, files: int = 300) -> Registry:
    registry = Registry(path)
    for i in range(files):
        record = registry.register("t", f"f{i}", f"{i:0128x}", i)
        registry.record_pipeline(record.id, "p", "done")
    registry.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return registry


def test_inspect_names_each_kind_of_damage(tmp_path) -> None:
    path = tmp_path / "r.sqlite"
    assert inspect_registry(path) is None  # absent: a fresh start
    _filled(path).close()
    assert inspect_registry(path) is None
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(os.urandom(size // 4))
    assert "quick_check" in inspect_registry(path) or "malformed" in inspect_registry(path)
    path.write_bytes(b"")
    assert "empty" in inspect_registry(path)
    path.write_bytes(b"hello" * 1000)
    assert "header" in inspect_registry(path)
    path.unlink()
    (tmp_path / "r.sqlite-wal").write_bytes(b"x" * 100)
    assert "write-ahead log" in inspect_registry(path)  # a log without its database is not a fresh start
    with pytest.raises(RegistryDamaged, match="write-ahead log"):
        Registry(path)


def test_corruption_found_by_a_later_query_is_named_and_remembered(tmp_path) -> None:
    path = tmp_path / "r.sqlite"
    registry = _filled(path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(4096)  # every page but the first (the schema)
        handle.write(os.urandom(size - 4096))
    registry.db.close()
    registry.db = sqlite3.connect(str(path), isolation_level=None)  # pages read for the first time
    with pytest.raises(RegistryDamaged) as caught:
        registry.failed()
    assert registry.damaged is caught.value and caught.value.path == path
    assert "processed again" in caught.value.advice


def test_a_full_disk_is_registry_full_and_records_nothing_half(tmp_path) -> None:
    registry = _filled(tmp_path / "r.sqlite", files=5)
    record = registry.register("t", "new", "ab" * 64, 1)
    (pages,) = registry.db.execute("PRAGMA page_count").fetchone()
    registry.db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    with pytest.raises(RegistryFull):
        with registry.transaction():
            for i in range(2000):
                registry.record_step(record.id, "p", i, "save", "done", 1, "x" * 200, 0.0)
    assert registry.damaged is None
    assert registry.done_steps(record.id) == {}  # rolled back as a whole
    registry.db.execute("PRAGMA max_page_count=1073741823")  # space returns
    with registry.transaction():
        registry.record_step(record.id, "p", 0, "save", "done", 1, None, 0.0)
    assert registry.done_steps(record.id) == {"p": [0]}


def test_a_registry_that_cannot_be_created_for_lack_of_space_is_registry_full(tmp_path, monkeypatch) -> None:
    import omsd.registry as registry_module

    def full(path) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(registry_module, "create_registry", full)
    with pytest.raises(RegistryFull, match="cannot create it"):
        Registry(tmp_path / "r.sqlite")


def test_atomic_writes_commit_alone_or_with_the_callers_transaction(tmp_path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    with registry.atomic():  # alone: a transaction of its own, committed
        record = registry.register("t", "run/a.dat", "00" * 64, 1)
    assert registry.get(record.id).status == "processing"
    statements: list[str] = []
    registry.db.set_trace_callback(statements.append)
    with pytest.raises(RuntimeError), registry.transaction():
        with registry.atomic():
            registry.set_status(record.id, "done")
        raise RuntimeError("the caller's group fails")
    registry.db.set_trace_callback(None)
    assert registry.get(record.id).status == "processing"  # rolled back with the caller's transaction
    assert not any("SAVEPOINT" in s for s in statements)  # and no savepoint of its own
    registry.close()
