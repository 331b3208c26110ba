"""The durable registry (SQLite, WAL): every file, its generations and step outcomes.

A file is identified by (topic, relative path, sha512). The same path with
different content is a new generation. Step outcomes are recorded per
pipeline so a restart never re-runs a step that finished for a generation.

Commits are not synced one by one (``synchronous=NORMAL``: a killed daemon
loses nothing, the operating system has the writes). :meth:`Registry.sync`
makes everything committed so far durable with one fsync of the WAL, and the
intake calls it before every offset commit: an offset is never committed past
a file whose outcome could still be lost to a power cut.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

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

TERMINAL = ("done", "failed")


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


class Registry:
    """Record of files and outcomes; every write is committed before it returns, and durable after :meth:`sync`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._wal = f"{path}-wal"
        self._synced_changes = -1
        self.syncs = 0

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

    def find(self, topic: str, rel_path: str, sha512: str) -> FileRecord | None:
        row = self.db.execute(f"SELECT {self._COLS} FROM files WHERE topic=? AND rel_path=? AND sha512=?",
                              (topic, rel_path, sha512)).fetchone()
        return self._file(row)

    def get(self, file_id: int) -> FileRecord | None:
        return self._file(self.db.execute(f"SELECT {self._COLS} FROM files WHERE id=?", (file_id,)).fetchone())

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

    def register(self, topic: str, rel_path: str, sha512: str, size: int) -> FileRecord:
        """The record for this content, creating a new generation when it is new."""
        existing = self.find(topic, rel_path, sha512)
        if existing is not None:
            return existing
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            (latest,) = self.db.execute("SELECT COALESCE(MAX(generation), 0) FROM files WHERE topic=? AND rel_path=?",
                                        (topic, rel_path)).fetchone()
            self.db.execute(
                "INSERT INTO files (topic, rel_path, generation, sha512, size, status, created, updated) "
                "VALUES (?, ?, ?, ?, ?, 'processing', ?, ?)", (topic, rel_path, latest + 1, sha512, size, now, now))
        record = self.find(topic, rel_path, sha512)
        assert record is not None
        return record

    def done_steps(self, file_id: int) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for pipeline, index in self.db.execute(
                "SELECT pipeline, step_index FROM steps WHERE file_id=? AND status='done'", (file_id,)):
            out.setdefault(pipeline, []).append(index)
        return out

    def finished_pipelines(self, file_id: int) -> dict[str, str]:
        return dict(self.db.execute("SELECT pipeline, status FROM pipeline_outcomes WHERE file_id=?", (file_id,)))

    def record_step(self, file_id: int, pipeline: str, index: int, kind: str, status: str, attempts: int,
                    error: str | None, duration_s: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (file_id, pipeline, index, kind, status, attempts, error, duration_s, time.time()))

    def record_pipeline(self, file_id: int, pipeline: str, status: str, error: str | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO pipeline_outcomes VALUES (?, ?, ?, ?, ?)",
                        (file_id, pipeline, status, error, time.time()))

    def set_status(self, file_id: int, status: str, error: str | None = None, kept_path: str | None = None) -> None:
        self.db.execute("UPDATE files SET status=?, error=?, kept_path=COALESCE(?, kept_path), updated=? WHERE id=?",
                        (status, error, kept_path, time.time(), file_id))

    def record_rejected_file(self, topic: str, rel_path: str, sha512: str, status: str, error: str) -> FileRecord:
        """A file that could not be processed at all (expired, corrupt): recorded, never processed."""
        record = self.register(topic, rel_path, sha512, 0)
        self.set_status(record.id, status, error)
        return record

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

    def clear_failure(self, file_id: int, pipeline: str) -> None:
        """Forget a pipeline's failure so it runs again (its finished steps stay done)."""
        with self.db:
            self.db.execute("DELETE FROM pipeline_outcomes WHERE file_id=? AND pipeline=?", (file_id, pipeline))
            self.db.execute("DELETE FROM steps WHERE file_id=? AND pipeline=? AND status='failed'", (file_id, pipeline))
            self.db.execute("UPDATE files SET status='processing', updated=? WHERE id=?", (time.time(), file_id))
