"""Chunks → files: tracks which chunks of each file arrived and where they came from.

A file in assembly is identified by (topic, relative path, whole-file hash),
so a re-upload of a changed file assembles as a new generation beside an
incomplete older one. Bytes go straight into the file's staging file.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from omsd.wire.protocol import Chunk, ProtocolError
from omsd.intake.staging import StagedFile, Staging
from omsd.intake.watermark import TopicPartitionKey, Watermarks

FileKey = tuple[str, str, bytes]  # topic, relative path, file hash

_ids = itertools.count(1)


@dataclass
class FileAssembly:
    """One file being put together from its chunks."""

    topic: str
    chunk: Chunk  # the first chunk seen: names, hashes, totals (its data is not kept)
    staged: StagedFile
    id: int = field(default_factory=lambda: next(_ids))
    received: set[int] = field(default_factory=set)
    bytes_received: int = 0
    first_seen: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    partitions: set[TopicPartitionKey] = field(default_factory=set)
    # Set when the whole-file hash failed and bad chunks are being replaced: chunks are then hashed on
    # arrival, and the messages already known to be bad are skipped.
    suspect: bool = False
    bad_messages: set[tuple[TopicPartitionKey, int]] = field(default_factory=set)
    repairs: int = 0
    # chunk_i → (offset in file, length, claimed sha512, partition, message offset)
    chunk_index: dict[int, tuple[int, int, bytes, int, int]] = field(default_factory=dict)
    # Fixed by the first chunk, and asked for several times per file on the per-file path: set once.
    relative_path: str = field(init=False)
    key: FileKey = field(init=False)

    def __post_init__(self) -> None:
        self.relative_path = self.chunk.relative_path
        self.key = (self.topic, self.relative_path, self.chunk.file_hash)

    def chunk_table(self) -> list[tuple[int, int, int, bytes]]:
        """(chunk_i, offset, length, sha512) of every chunk: what a worker needs to find a bad one."""
        return [(i, off, length, digest) for i, (off, length, digest, _p, _o) in sorted(self.chunk_index.items())]

    def message_of(self, chunk_i: int) -> tuple[TopicPartitionKey, int] | None:
        """Where chunk ``chunk_i`` was read from: ((topic, partition), offset)."""
        entry = self.chunk_index.get(chunk_i)
        return ((self.topic, entry[3]), entry[4]) if entry else None

    @property
    def n_total(self) -> int:
        return self.chunk.n_total_chunks

    @property
    def complete(self) -> bool:
        return len(self.received) == self.n_total

    def describe(self, now: float) -> dict:
        return {"path": self.relative_path, "topic": self.topic, "chunks_received": len(self.received),
                "chunks_total": self.n_total, "bytes": self.bytes_received, "age_s": round(now - self.first_seen, 1),
                "staging": self.staged.kind}


def estimate_size(chunk: Chunk, max_file_size: int) -> int:
    """An upper bound on the file's size from one chunk (chunks share one size but the last)."""
    if chunk.chunk_i == chunk.n_total_chunks:
        return chunk.end
    return min(max_file_size, max(chunk.end, chunk.n_total_chunks * len(chunk.data)))


class Assembler:
    """All files in assembly for one consumer; owns their staging files and watermark holds."""

    def __init__(self, staging: Staging, watermarks: Watermarks, max_file_size: int) -> None:
        self.staging = staging
        self.watermarks = watermarks
        self.max_file_size = max_file_size
        self.files: dict[FileKey, FileAssembly] = {}

    def add(self, topic: str, partition: int, offset: int, chunk: Chunk) -> FileAssembly | None:
        """Stage one chunk; returns the file when this chunk completed it.

        Raises ProtocolError for a chunk that contradicts the file's earlier chunks.
        """
        key = (topic, chunk.relative_path, chunk.file_hash)
        assembly = self.files.get(key)
        if assembly is None:
            staged = self.staging.allocate(estimate_size(chunk, self.max_file_size))
            assembly = FileAssembly(topic=topic, chunk=_header(chunk), staged=staged)
            self.files[key] = assembly
        elif chunk.n_total_chunks != assembly.n_total:
            raise ProtocolError("inconsistent", f"n_total_chunks {chunk.n_total_chunks} differs from "
                                f"{assembly.n_total} in earlier chunks of {chunk.relative_path!r}")
        assembly.last_seen = time.monotonic()
        if chunk.chunk_i in assembly.received:
            return None  # a duplicate: its bytes are already staged
        self.staging.write(assembly.staged, chunk.offset, chunk.data)
        assembly.received.add(chunk.chunk_i)
        assembly.chunk_index[chunk.chunk_i] = (chunk.offset, len(chunk.data), chunk.chunk_hash, partition, offset)
        assembly.bytes_received += len(chunk.data)
        tp = (topic, partition)
        assembly.partitions.add(tp)
        self.watermarks.hold(tp, assembly.id, offset)
        if assembly.complete:
            del self.files[key]
            self.staging.seal(assembly.staged)
            return assembly
        return None

    def reopen(self, assembly: FileAssembly, bad_chunks: list[int]) -> None:
        """Take a completed file back to replace chunks whose data did not match their hash."""
        for chunk_i in bad_chunks:
            entry = assembly.chunk_index.pop(chunk_i, None)
            if entry is not None and chunk_i in assembly.received:
                assembly.received.discard(chunk_i)
                assembly.bytes_received -= entry[1]
                assembly.bad_messages.add(((assembly.topic, entry[3]), entry[4]))
        assembly.suspect = True
        assembly.repairs += 1
        assembly.last_seen = time.monotonic()
        self.staging.reopen(assembly.staged)
        self.files[assembly.key] = assembly

    def expired(self, max_age_s: float, now: float | None = None) -> list[FileAssembly]:
        """Remove and return files that have received nothing for ``max_age_s``."""
        now = time.monotonic() if now is None else now
        stale = [a for a in self.files.values() if now - a.last_seen > max_age_s]
        for assembly in stale:
            self.discard(assembly)
        return stale

    def drop_partitions(self, tps: set[TopicPartitionKey]) -> list[FileAssembly]:
        """Partitions were revoked: drop files with chunks from them (the new owner re-reads them)."""
        dropped = [a for a in self.files.values() if a.partitions & tps]
        for assembly in dropped:
            self.discard(assembly, done=False)
        return dropped

    def discard(self, assembly: FileAssembly, done: bool = True) -> None:
        """Forget a file: staging freed, offsets released — as finished (``done``: its outcome is
        recorded) or as still needed by whoever reads its partitions next."""
        self.files.pop(assembly.key, None)
        self.staging.release(assembly.staged)
        self.watermarks.release(assembly.id, done)

    def discard_all(self) -> None:
        """At stop: forget every unfinished file (a restart reads it again)."""
        for assembly in list(self.files.values()):
            self.discard(assembly, done=False)


def _header(chunk: Chunk) -> Chunk:
    """The first chunk without its data, kept as the file's description."""
    return Chunk(filename=chunk.filename, file_hash=chunk.file_hash, chunk_hash=b"", offset=0, chunk_i=0,
                 n_total_chunks=chunk.n_total_chunks, subdir_str=chunk.subdir_str,
                 filename_append=chunk.filename_append, data=b"", file_mtime=chunk.file_mtime)
