"""Undecryptable messages kept on disk: raw, durable, listed, and tried again later.

One file per message under ``state_dir/undecryptable/<group>/``, named
``<topic>@<partition>@<offset>@<key id>.kept`` (the key id: a short hash of the encryption key's index,
so listing them and grouping them by key reads no file): a msgpack map
with the topic, partition, offset, timestamp, key index and the raw key and value. It is written to a temporary name,
fsynced and renamed (then the folder is fsynced), so once :meth:`UndecryptableStore.keep` returns the
message survives a crash and its offset may be committed past. A file is removed only when the message
has been decrypted and what it belonged to is finished (see :mod:`omsd.intake.decrypt`).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import msgpack
import structlog

log = structlog.get_logger(__name__)

SUFFIX = ".kept"


def key_id(key_index: bytes | None) -> str:
    """A short, file-name-safe name of an encryption key index ("-" when it is not known)."""
    return hashlib.blake2b(key_index, digest_size=8).hexdigest() if key_index else "-"


@dataclass(frozen=True)
class KeptEntry:
    """A kept message as its file name and size tell it (nothing is read)."""

    path: Path
    topic: str
    partition: int
    offset: int
    key_id: str  # the same for every message encrypted under one key
    size: int
    kept_at: float

    def describe(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "kept_at": self.kept_at,
                "bytes": self.size, "key_id": self.key_id, "file": str(self.path)}


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


class UndecryptableStore:
    """The kept messages of one consumer group."""

    def __init__(self, state_dir: Path, group_id: str) -> None:
        self.folder = state_dir / "undecryptable" / quote(group_id, safe="")
        self._count: int | None = None

    def _name(self, topic: str, partition: int, offset: int, key_index: bytes | None) -> Path:
        return self.folder / f"{topic}@{partition}@{offset}@{key_id(key_index)}{SUFFIX}"  # topic names are file-safe

    def keep(self, topic: str, partition: int, offset: int, timestamp: int | None, key: bytes | None,
             value: bytes, key_index: bytes | None, reason: str) -> Path:
        """Write one message durably (idempotent: the same message read twice is one file)."""
        path = self._name(topic, partition, offset, key_index)
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

    def entries(self) -> list[KeptEntry]:
        """Every kept message, from the file names (for listings and probes: no file is read)."""
        out = []
        for path in self.paths():
            try:
                topic, partition, offset, index = path.name[: -len(SUFFIX)].rsplit("@", 3)
                st = path.stat()
                out.append(KeptEntry(path=path, topic=topic, partition=int(partition), offset=int(offset),
                                     key_id=index, size=st.st_size, kept_at=st.st_mtime))
            except (ValueError, OSError):
                continue  # not one of ours, or removed meanwhile
        return out

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
