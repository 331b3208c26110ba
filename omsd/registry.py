"""The durable registry (SQLite, WAL): every file, its generations and step outcomes.

A file is identified by (topic, relative path, sha512). The same path with
different content is a new generation. Step outcomes are recorded per
pipeline so a restart never re-runs a step that finished for a generation.

Commits are not synced one by one (``synchronous=NORMAL``: a killed daemon
loses nothing, the operating system has the writes). :meth:`Registry.sync`
makes everything committed so far durable with one fsync of the WAL, and the
intake calls it before every offset commit: an offset is never committed past
a file whose outcome could still be lost to a power cut.

Failures are named: a registry SQLite cannot read (at opening, by ``PRAGMA
quick_check``, or in any later query) raises :class:`RegistryDamaged` and
stays marked in :attr:`Registry.damaged`; a write refused for lack of space
(SQLite's FULL) raises :class:`RegistryFull`, which the caller retries later
(both defined, with the file's schema and creation, in :mod:`omsd.registry_file`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omsd.registry_file import (
    DAMAGE_CODES, SCHEMA, RegistryDamaged, RegistryFull, create_registry, for_lack_of_space, inspect_registry,
    raise_if_full, registry_path,
)

# What the registry raises, and where its file lives, come with it (they are defined in omsd.registry_file).
__all__ = ["FileRecord", "Registry", "RegistryDamaged", "RegistryFull", "inspect_registry", "registry_path"]

TERMINAL = ("done", "failed")
ABSENT_REMEMBERED = 4096  # paths remembered with content they do not have (see Registry.find)
LOOK_UP_BATCH = 500  # paths per query of Registry.look_up (well below SQLite's limit on parameters)
_T = TypeVar("_T")


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """Turn SQLite's corruption and disk-full errors of a registry method into named exceptions."""
    @functools.wraps(method)
    def wrapper(self: "Registry", *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise self._classify(exc) from exc
    return wrapper


@dataclass(frozen=True)
class FileRecord:
    id: int
    topic: str
    rel_path: str
    generation: int
    sha512: str
    size: int | None
    status: str
    error: str | None
    kept_path: str | None
    new: bool = False  # created by the register() call that returned it: no outcomes or steps yet


class Registry:
    """Record of files and outcomes; every write is committed before it returns, and durable after :meth:`sync`.

    Opening raises :class:`RegistryDamaged` when the file is not a sound registry (see
    :func:`inspect_registry`); a missing file is created empty.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.damaged: RegistryDamaged | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problem = inspect_registry(self.path)
        if problem is not None:
            raise RegistryDamaged(self.path, problem)
        if not self.path.exists():
            try:
                create_registry(self.path)
            except (sqlite3.OperationalError, OSError) as exc:  # nothing is left behind but the temporary file
                raise RegistryFull(self.path, f"cannot create it: {exc}") from exc
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise_if_full(self.path, exc)
            raise RegistryDamaged(self.path, f"SQLite cannot use it: {exc}") from exc
        self._wal = f"{path}-wal"
        self._synced_changes = -1
        self.syncs = 0
        # Paths looked up for content they do not have: (topic, rel_path) -> (their latest generation then,
        # the sha512s not found). The daemon is the registry's only writer while it runs (the state-directory
        # lock) and only register() inserts, dropping its path here first: what is remembered stays true.
        # A new file is then looked up once (intake asks first) and register() only inserts.
        self._absent: dict[tuple[str, str], tuple[int, set[str]]] = {}

    def _classify(self, exc: sqlite3.DatabaseError) -> Exception:
        """The named exception for an SQLite error (the error itself when it is neither kind)."""
        base = "_".join((getattr(exc, "sqlite_errorname", "") or "").split("_")[:2])  # SQLITE_IOERR_WRITE → SQLITE_IOERR
        if for_lack_of_space(exc, self.path.parent):
            return RegistryFull(self.path, str(exc))
        if base in DAMAGE_CODES or "malformed" in str(exc) or "not a database" in str(exc):
            self.damaged = self.damaged or RegistryDamaged(self.path, f"a query failed: {exc}")
            return self.damaged
        return exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes that are recorded together or not at all (rolled back on any error, disk full included).

        Inside another transaction it is a savepoint: its writes are undone on an error, and committed
        with the outer transaction.
        """
        if self.db.in_transaction:
            with self._savepoint():
                yield
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
            yield
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            raise self._classify(exc) from exc
        except BaseException:
            self._rollback()
            raise

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Writes recorded together or not at all: a transaction of their own, or, inside the caller's
        transaction, no savepoint (two statements fewer), for callers that roll their whole transaction
        back on any error (the supervisor's per-turn groups do)."""
        if self.db.in_transaction:
            yield
            return
        with self.transaction():
            yield

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        self.db.execute("SAVEPOINT inner_writes")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK TO inner_writes")
                self.db.execute("RELEASE inner_writes")
            raise
        self.db.execute("RELEASE inner_writes")

    def _rollback(self) -> None:
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    def sync(self) -> None:
        """Make every committed write durable (one fsync of the WAL; nothing to do if nothing changed)."""
        changes = self.db.total_changes
        if changes == self._synced_changes:
            return
        try:
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # checkpointed and removed: the database file itself was synced
            self._synced_changes = changes
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._synced_changes = changes
        self.syncs += 1

    def close(self) -> None:
        self.db.close()

    def _file(self, row: tuple | None) -> FileRecord | None:
        return FileRecord(*row) if row else None

    _COLS = "id, topic, rel_path, generation, sha512, size, status, error, kept_path"

    @_guarded
    def find(self, topic: str, rel_path: str, sha512: str) -> FileRecord | None:
        path = (topic, rel_path)
        known = self._absent.get(path)
        if known is not None and sha512 in known[1]:
            return None
        latest, file_id = self.db.execute(
            "SELECT COALESCE(MAX(generation), 0), MAX(CASE WHEN sha512=? THEN id END) FROM files "
            "WHERE topic=? AND rel_path=?", (sha512, topic, rel_path)).fetchone()
        if file_id is not None:
            return self.get(file_id)
        self._remember_absent(topic, rel_path, latest, {sha512})
        return None

    @_guarded
    def look_up(self, topic: str, files: list[tuple[str, str]]) -> None:
        """Look up many (rel_path, sha512) of one topic with one query per :data:`LOOK_UP_BATCH`: those
        the registry has no record of are remembered as absent, so that :meth:`find` (and so
        :meth:`is_finished` and :meth:`register`) answers them without a query of its own."""
        wanted: dict[str, set[str]] = {}
        for rel_path, sha512 in files:
            known = self._absent.get((topic, rel_path))
            if known is None or sha512 not in known[1]:
                wanted.setdefault(rel_path, set()).add(sha512)
        paths = list(wanted)
        for start in range(0, len(paths), LOOK_UP_BATCH):
            batch = paths[start:start + LOOK_UP_BATCH]
            found: dict[str, tuple[int, set[str]]] = {}
            for rel_path, sha512, generation in self.db.execute(
                    f"SELECT rel_path, sha512, generation FROM files WHERE topic=? "
                    f"AND rel_path IN ({','.join('?' * len(batch))})", (topic, *batch)):
                latest, hashes = found.get(rel_path, (0, set()))
                found[rel_path] = (max(latest, generation), hashes | {sha512})
            for rel_path in batch:
                latest, hashes = found.get(rel_path, (0, set()))
                absent = wanted[rel_path] - hashes
                if absent:
                    self._remember_absent(topic, rel_path, latest, absent)

    def _remember_absent(self, topic: str, rel_path: str, latest: int, absent: set[str]) -> None:
        path = (topic, rel_path)
        known = self._absent.get(path)
        if known is None and len(self._absent) >= ABSENT_REMEMBERED:
            del self._absent[next(iter(self._absent))]
        self._absent[path] = (latest, (known[1] if known is not None else set()) | absent)

    @_guarded
    def get(self, file_id: int) -> FileRecord | None:
        return self._file(self.db.execute(f"SELECT {self._COLS} FROM files WHERE id=?", (file_id,)).fetchone())

    @_guarded
    def is_finished(self, topic: str, rel_path: str, sha512: str, pipelines: list[str]) -> bool:
        """True when every one of ``pipelines`` has a final outcome for this content."""
        record = self.find(topic, rel_path, sha512)
        if record is None:
            return False
        if record.status in TERMINAL and not pipelines:
            return True
        rows = self.db.execute(
            f"SELECT COUNT(*) FROM pipeline_outcomes WHERE file_id=? AND pipeline IN ({','.join('?' * len(pipelines))})",
            (record.id, *pipelines)).fetchone()
        return rows[0] == len(pipelines)

    @_guarded
    def register(self, topic: str, rel_path: str, sha512: str, size: int) -> FileRecord:
        """The record for this content, creating a new generation when it is new."""
        existing = self.find(topic, rel_path, sha512)
        if existing is not None:
            return existing
        now = time.time()
        known = self._absent.pop((topic, rel_path), None)  # the path's latest generation, just looked up
        with self.atomic():  # inside the caller's transaction the one INSERT is atomic by itself
            if known is not None:
                latest = known[0]
            else:
                (latest,) = self.db.execute("SELECT COALESCE(MAX(generation), 0) FROM files "
                                            "WHERE topic=? AND rel_path=?", (topic, rel_path)).fetchone()
            row_id = self.db.execute(
                "INSERT INTO files (topic, rel_path, generation, sha512, size, status, created, updated) "
                "VALUES (?, ?, ?, ?, ?, 'processing', ?, ?)", (topic, rel_path, latest + 1, sha512, size, now, now)
            ).lastrowid
        return FileRecord(row_id, topic, rel_path, latest + 1, sha512, size, "processing", None, None, new=True)

    @_guarded
    def done_steps(self, file_id: int) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for pipeline, index in self.db.execute(
                "SELECT pipeline, step_index FROM steps WHERE file_id=? AND status='done'", (file_id,)):
            out.setdefault(pipeline, []).append(index)
        return out

    @_guarded
    def finished_pipelines(self, file_id: int) -> dict[str, str]:
        return dict(self.db.execute("SELECT pipeline, status FROM pipeline_outcomes WHERE file_id=?", (file_id,)))

    @_guarded
    def record_step(self, file_id: int, pipeline: str, index: int, kind: str, status: str, attempts: int,
                    error: str | None, duration_s: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (file_id, pipeline, index, kind, status, attempts, error, duration_s, time.time()))

    @_guarded
    def record_pipeline(self, file_id: int, pipeline: str, status: str, error: str | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO pipeline_outcomes VALUES (?, ?, ?, ?, ?)",
                        (file_id, pipeline, status, error, time.time()))

    @_guarded
    def set_status(self, file_id: int, status: str, error: str | None = None, kept_path: str | None = None) -> None:
        self.db.execute("UPDATE files SET status=?, error=?, kept_path=COALESCE(?, kept_path), updated=? WHERE id=?",
                        (status, error, kept_path, time.time(), file_id))

    @_guarded
    def record_rejected_file(self, topic: str, rel_path: str, sha512: str, status: str, error: str) -> FileRecord:
        """A file that could not be processed at all (expired, corrupt): recorded, never processed."""
        record = self.register(topic, rel_path, sha512, 0)
        self.set_status(record.id, status, error)
        return record

    @_guarded
    def failed(self) -> list[dict]:
        """Files with a failed pipeline (with the failing step's error), and corrupt files."""
        rows = self.db.execute(
            "SELECT f.id, f.topic, f.rel_path, f.generation, o.pipeline, o.error, f.kept_path, "
            "(SELECT kind || '#' || step_index FROM steps s WHERE s.file_id=f.id AND s.pipeline=o.pipeline "
            " AND s.status='failed' LIMIT 1), "
            "(SELECT attempts FROM steps s WHERE s.file_id=f.id AND s.pipeline=o.pipeline AND s.status='failed' LIMIT 1), "
            "o.updated "
            "FROM files f JOIN pipeline_outcomes o ON o.file_id=f.id WHERE o.status='failed' ORDER BY f.updated")
        out = [{"file_id": r[0], "topic": r[1], "path": r[2], "generation": r[3], "pipeline": r[4], "error": r[5],
                "kept": r[6] is not None, "step": r[7], "attempts": r[8], "updated": r[9]} for r in rows]
        corrupt = self.db.execute("SELECT id, topic, rel_path, generation, error, updated FROM files "
                                  "WHERE status='corrupt' ORDER BY updated")
        out += [{"file_id": r[0], "topic": r[1], "path": r[2], "generation": r[3], "pipeline": None,
                 "error": r[4], "kept": False, "step": None, "attempts": None, "updated": r[5]} for r in corrupt]
        return out

    @_guarded
    def clear_failure(self, file_id: int, pipeline: str) -> None:
        """Forget a pipeline's failure so it runs again (its finished steps stay done)."""
        with self.transaction():
            self.db.execute("DELETE FROM pipeline_outcomes WHERE file_id=? AND pipeline=?", (file_id, pipeline))
            self.db.execute("DELETE FROM steps WHERE file_id=? AND pipeline=? AND status='failed'", (file_id, pipeline))
            self.db.execute("UPDATE files SET status='processing', updated=? WHERE id=?", (time.time(), file_id))
