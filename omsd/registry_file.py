"""The registry's file: its schema, how a new one is made, and how a damaged or full one is told apart.

A new registry is created under a temporary name and renamed into place once
its schema is written, so a zero-length or header-less registry file is never
one the daemon made: :func:`inspect_registry` reports it as damaged, not as
empty. SQLite's errors are named here: :class:`RegistryDamaged` for a file
SQLite cannot read, :class:`RegistryFull` for a write refused for lack of
space (:func:`for_lack_of_space` tells the two apart when SQLite only says
"I/O error"). :class:`omsd.registry.Registry` is the daemon's use of the file.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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
SQLITE_HEADER = b"SQLite format 3\x00"
DAMAGE_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# Below this much free space an I/O error is taken for a full disk, not damage: growing the WAL index
# (SQLITE_IOERR_SHMSIZE), the WAL itself or opening either (SQLITE_CANTOPEN) fails that way.
SPACE_NEEDED_BYTES = 1 << 20


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
        raise_if_full(path, exc)
        return f"SQLite cannot open it: {exc}"
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        raise_if_full(path, exc)
        return f"SQLite cannot read it: {exc}"
    finally:
        db.close()
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return "PRAGMA quick_check: " + "; ".join(problems[:3]) + more
    return None


def raise_if_full(path: Path, exc: sqlite3.Error) -> None:
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
