"""Undecryptable messages kept on disk: raw, durable, listed, and tried again later.

One file per message under ``state_dir/undecryptable/<group>/``: a msgpack map with the topic,
partition, offset, timestamp, key index and the raw key and value. It is written to a temporary name,
fsynced and renamed (then the folder is fsynced), so once :meth:`UndecryptableStore.keep` returns the
message survives a crash and its offset may be committed past. A file is removed only when the message
has been decrypted and what it belonged to is finished (see :mod:`omsd.intake.decrypt`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import msgpack
import structlog

log = structlog.get_logger(__name__)

SUFFIX = ".kept"


@dataclass(frozen=True)
class KeptMessage:
    """One kept message (``path``: its file)."""

    path: Path
    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes
    key_index: bytes | None
    kept_at: float
    reason: str

    def describe(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "kept_at": self.kept_at, "reason": self.reason, "bytes": len(self.value),
                "key_index": self.key_index.hex() if self.key_index else None, "file": str(self.path)}


class UndecryptableStore:
    """The kept messages of one consumer group."""

    def __init__(self, state_dir: Path, group_id: str) -> None:
        self.folder = state_dir / "undecryptable" / quote(group_id, safe="")
        self._count: int | None = None

    def _name(self, topic: str, partition: int, offset: int) -> Path:
        return self.folder / f"{topic}@{partition}@{offset}{SUFFIX}"  # Kafka topic names are filename-safe

    def keep(self, topic: str, partition: int, offset: int, timestamp: int | None, key: bytes | None,
             value: bytes, key_index: bytes | None, reason: str) -> Path:
        """Write one message durably (idempotent: the same message read twice is one file)."""
        path = self._name(topic, partition, offset)
        existed = path.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        body = msgpack.packb({"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp,
                              "key": key, "value": value, "key_index": key_index, "kept_at": time.time(),
                              "reason": reason}, use_bin_type=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if not existed and self._count is not None:
            self._count += 1
        return path

    def load(self, path: Path) -> KeptMessage | None:
        try:
            data = msgpack.unpackb(path.read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            log.warning("unreadable kept message", file=str(path), error=str(exc))
            return None
        return KeptMessage(path=path, topic=data["topic"], partition=int(data["partition"]),
                           offset=int(data["offset"]), timestamp=data.get("timestamp"), key=data.get("key"),
                           value=data["value"], key_index=data.get("key_index"),
                           kept_at=float(data.get("kept_at", 0.0)), reason=str(data.get("reason", "")))

    def paths(self) -> list[Path]:
        try:
            found = sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            found = []
        self._count = len(found)
        return found

    def all(self) -> list[KeptMessage]:
        return [m for m in map(self.load, self.paths()) if m is not None]

    def remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        if self._count is not None:
            self._count = max(0, self._count - 1)

    def count(self) -> int:
        if self._count is None:
            self.paths()
        return self._count or 0
