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
(SQLite's FULL) raises :class:`RegistryFull`, which the caller retries later.
A new registry is created under a temporary name and renamed into place once
its schema is written, so a zero-length or header-less registry file is never
one the daemon made: it is reported as damaged, not taken as empty.
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

from omsd.statewrites import free_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id          INTEGER PRIMARY KEY,
    topic       TEXT NOT NULL,
    rel_path    TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    sha512      TEXT NOT NULL,
    size        INTEGER,
    status      TEXT NOT NULL,          -- processing | done | failed | expired | corrupt
    error       TEXT,
    kept_path   TEXT,                   -- bytes kept for a retry of a failed file
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    UNIQUE (topic, rel_path, sha512)
);
CREATE TABLE IF NOT EXISTS pipeline_outcomes (
    file_id   INTEGER NOT NULL REFERENCES files(id),
    pipeline  TEXT NOT NULL,
    status    TEXT NOT NULL,            -- done | failed
    error     TEXT,
    updated   REAL NOT NULL,
    PRIMARY KEY (file_id, pipeline)
);
CREATE TABLE IF NOT EXISTS steps (
    file_id    INTEGER NOT NULL REFERENCES files(id),
    pipeline   TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    status     TEXT NOT NULL,           -- done | failed
    attempts   INTEGER NOT NULL,
    error      TEXT,
    duration_s REAL,
    updated    REAL NOT NULL,
    PRIMARY KEY (file_id, pipeline, step_index)
);
CREATE INDEX IF NOT EXISTS files_by_status ON files(status);
"""

REGISTRY_NAME = "registry.sqlite"
TERMINAL = ("done", "failed")
SQLITE_HEADER = b"SQLite format 3\x00"
_DAMAGE_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# Below this much free space an I/O error is taken for a full disk, not damage: growing the WAL index
# (SQLITE_IOERR_SHMSIZE), the WAL itself or opening either (SQLITE_CANTOPEN) fails that way.
SPACE_NEEDED_BYTES = 1 << 20
ABSENT_REMEMBERED = 4096  # paths remembered with content they do not have (see Registry.find)
_T = TypeVar("_T")


class RegistryDamaged(RuntimeError):
    """The registry file cannot be used; an operator must move it aside or recover it."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"registry {self.path} is damaged: {detail}")

    @property
    def advice(self) -> str:
        """What an operator can do, in one sentence."""
        return (f"try `omsd registry recover --config FILE`, or move {self.path} (and any "
                f"{self.path.name}-wal, {self.path.name}-shm) aside to start with an empty registry: "
                "files above the committed offsets will be processed again")


def registry_path(state_dir: Path) -> Path:
    """Where the daemon keeps its registry."""
    return Path(state_dir) / REGISTRY_NAME


def for_lack_of_space(exc: sqlite3.Error, directory: Path) -> bool:
    """True when an SQLite error of the registry in ``directory`` means that its file system is full."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return True
    if not name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
        return False
    free = free_bytes(directory)
    return free is not None and free < SPACE_NEEDED_BYTES


class RegistryFull(OSError):
    """A registry write was refused for lack of space; nothing of it was recorded."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(28, f"no space left for the registry {path}: {detail}")  # 28: ENOSPC
        self.path = Path(path)


def inspect_registry(path: Path) -> str | None:
    """Why the registry file at ``path`` cannot be used, or None when it is sound (or absent, and
    nothing of one is left beside it). Runs ``PRAGMA quick_check``, which reads every page."""
    path = Path(path)
    wal = Path(f"{path}-wal")
    if not path.exists():
        if wal.exists() and wal.stat().st_size > 0:
            return f"{path.name} is missing but its write-ahead log {wal.name} is there"
        return None
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes); omsd never leaves an empty registry"
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        return "the file does not start with the SQLite header (overwritten or not a database)"
    try:  # read-write: after a crash, reading a WAL database may need to rebuild its index (-shm)
        db = sqlite3.connect(str(path))
    except sqlite3.Error as exc:
        _raise_if_full(path, exc)
        return f"SQLite cannot open it: {exc}"
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        _raise_if_full(path, exc)
        return f"SQLite cannot read it: {exc}"
    finally:
        db.close()
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return "PRAGMA quick_check: " + "; ".join(problems[:3]) + more
    return None


def _raise_if_full(path: Path, exc: sqlite3.Error) -> None:
    """Raise :class:`RegistryFull` when ``exc`` comes from a full file system rather than a damaged file."""
    if for_lack_of_space(exc, path.parent):
        raise RegistryFull(path, f"SQLite cannot open it ({free_bytes(path.parent)} bytes free): {exc}") from exc


def create_registry(path: Path) -> None:
    """Write an empty registry at ``path`` atomically: schema under a temporary name, synced, renamed."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        db.executescript(SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file's header
    finally:
        db.close()
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
            _raise_if_full(self.path, exc)
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
        if base in _DAMAGE_CODES or "malformed" in str(exc) or "not a database" in str(exc):
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
        if known is None and len(self._absent) >= ABSENT_REMEMBERED:
            del self._absent[next(iter(self._absent))]
        self._absent[path] = (latest, (known[1] if known is not None else set()) | {sha512})
        return None

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
