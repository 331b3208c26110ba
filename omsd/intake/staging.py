"""The staging area: where file bytes wait between Kafka and the workers.

Each file in assembly gets one staging file: a POSIX shared-memory segment
(a file under /dev/shm, named with the ``omsd-`` prefix) while the memory
budget allows, or a spill file under ``state_dir/spill`` beyond it. Chunks are
written with ``pwrite`` at their offsets, so the supervisor never maps or
copies whole files; workers open the same path read-only by name.

The supervisor creates and unlinks every segment; workers only open and
close. A released segment of a small file is kept (up to :data:`POOL_SEGMENTS` of
them and :data:`POOL_BYTES` in all, counted in the memory budget as ``memory_kept``) and given to the next small file: a
new segment costs a creation, fresh pages and an unlink, about three times what
writing into a used one costs. A reused segment may be longer than its file; as
for every staging file, only its first ``size`` bytes belong to the file. Staging files on the state directory's file system (spill files, and
segments when there is no /dev/shm) leave ``reserve_bytes`` free there for the
registry: a chunk that would eat into it raises :class:`StagingFull`, like a
full disk, and intake pauses until space returns. Everything with this daemon's prefix is removed at start, since the
state-directory lock proves no other daemon is using it.
"""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import structlog

from omsd.statewrites import free_bytes, is_no_space

log = structlog.get_logger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "omsd-"
POOL_SEGMENT_MAX = 256 << 10  # released segments up to this size are kept for reuse
# At most this many, holding at most POOL_BYTES: enough for the files in flight at a few thousand small
# files per second (with 64 segments, one small file in six still got a fresh segment, and unlinked one).
POOL_SEGMENTS = 256
POOL_BYTES = 16 << 20


class StagingFull(OSError):
    """The spill directory ran out of space; fetching should pause."""


@dataclass
class StagedFile:
    """A staging file: where one file's bytes are being assembled."""

    path: str
    kind: str  # "shm" or "spill"
    reserved: int
    fd: int = -1
    size: int = 0
    capacity: int = 0  # bytes the segment holds (a reused one may hold more than ``size``)

    def ref(self) -> dict:
        """What a worker needs to attach: path and length, never the bytes."""
        return {"path": self.path, "kind": self.kind, "size": self.size}


class Staging:
    """Allocates staging files within a shared-memory budget, spilling to disk beyond it."""

    def __init__(self, state_dir: Path, memory_budget: int, shm_dir: Path = SHM_DIR, reserve_bytes: int = 0) -> None:
        self.memory_budget = memory_budget
        self.state_dir = Path(state_dir)
        self.reserve_bytes = reserve_bytes
        self.full_reason: str | None = None  # why the last chunk could not be staged
        self._reserved_kinds: set[str] = set()  # kinds of staging file on the state directory's file system
        tag = f"{zlib.crc32(str(Path(state_dir).resolve()).encode()):08x}"
        self.prefix = f"{SHM_PREFIX}{tag}-"
        self.shm_dir = shm_dir if shm_dir.is_dir() and os.access(shm_dir, os.W_OK) else Path(state_dir) / "shm"
        self.spill_dir = Path(state_dir) / "spill"
        self.memory_used = 0  # bytes of files in staging, in memory
        self.memory_kept = 0  # bytes of released segments kept for reuse
        self.spill_used = 0
        self.files = 0
        self._counter = 0
        self._pool: list[StagedFile] = []  # released small segments, closed, counted in memory_kept

    def open(self) -> int:
        """Create the directories and remove stale segments; returns how many were removed."""
        self.shm_dir.mkdir(parents=True, exist_ok=True)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        removed = self._remove_all()
        if removed:
            log.warning("removed stale staging files from an earlier run", count=removed)
        state_dev = os.stat(self.state_dir).st_dev
        self._reserved_kinds = {kind for kind, directory in (("shm", self.shm_dir), ("spill", self.spill_dir))
                                if os.stat(directory).st_dev == state_dev}
        return removed

    def close(self) -> int:
        """Remove every staging file still left (files in flight are read again after a restart)."""
        self._pool.clear()
        removed = self._remove_all()
        self.memory_used = self.memory_kept = self.spill_used = self.files = 0
        return removed

    def _remove_all(self) -> int:
        removed = 0
        for directory in (self.shm_dir, self.spill_dir):
            for stale in directory.glob(f"{self.prefix}*"):
                try:
                    stale.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def allocate(self, estimated_size: int) -> StagedFile:
        """A new, empty staging file for a file of about ``estimated_size`` bytes."""
        if self._pool:
            if self.memory_used + self.memory_kept + estimated_size > self.memory_budget:
                self._drain_pool()  # memory is short: kept segments go before anything spills
            elif estimated_size <= POOL_SEGMENT_MAX:
                reused = self._reuse()
                if reused is not None:
                    self.files += 1
                    return reused
        self._counter += 1
        name = f"{self.prefix}{os.getpid()}-{self._counter}"
        if self.memory_used + estimated_size <= self.memory_budget:
            path, kind = os.path.join(self.shm_dir, name), "shm"
        else:
            path, kind = os.path.join(self.spill_dir, name), "spill"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        staged = StagedFile(path=path, kind=kind, reserved=0, fd=fd)
        self._account(staged, estimated_size)
        self.files += 1
        return staged

    def _account(self, staged: StagedFile, new_reserved: int) -> None:
        delta = new_reserved - staged.reserved
        if delta == 0:
            return
        staged.reserved = new_reserved
        if staged.kind == "shm":
            self.memory_used += delta
        else:
            self.spill_used += delta

    def write(self, staged: StagedFile, offset: int, data: bytes) -> None:
        """Write one chunk at its offset (idempotent for duplicates)."""
        if staged.kind in self._reserved_kinds and self.reserve_bytes > 0 and offset + len(data) > staged.size:
            directory = Path(staged.path).parent
            free = free_bytes(directory)
            if free is not None and free - len(data) < self.reserve_bytes:
                self.full_reason = (f"{free} bytes free in {directory}, below the {self.reserve_bytes} bytes "
                                    "kept for the registry")
                raise StagingFull(errno.ENOSPC, f"spilling stopped: {self.full_reason}")
        try:
            written = os.pwrite(staged.fd, data, offset)
            while written < len(data):
                written += os.pwrite(staged.fd, memoryview(data)[written:], offset + written)
        except OSError as exc:
            if is_no_space(exc):
                directory = Path(staged.path).parent
                self.full_reason = f"no space left in {directory}"
                raise StagingFull(exc.errno, f"no space left for staging in {directory}") from exc
            raise
        end = offset + len(data)
        if end > staged.size:
            staged.size = end
        if end > staged.reserved:
            self._account(staged, end)

    def seal(self, staged: StagedFile) -> None:
        """The file is complete: trim the reservation to its real size and close our descriptor.

        A reused segment longer than the file keeps its length (and its pages, for the next file).
        """
        if staged.capacity <= staged.size:
            os.ftruncate(staged.fd, staged.size)
        self._account(staged, max(staged.size, staged.capacity))
        os.close(staged.fd)
        staged.fd = -1

    def reopen(self, staged: StagedFile) -> None:
        """A sealed file needs more chunks after all (a corrupt one is being replaced)."""
        if staged.fd < 0:
            staged.fd = os.open(staged.path, os.O_RDWR | os.O_CLOEXEC)

    def keep(self, staged: StagedFile, destination: Path) -> None:
        """Copy a staged file's bytes to ``destination`` (e.g. to retry a failed file later)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = destination.with_name(destination.name + ".tmp")
        shutil.copyfile(staged.path, tmp)
        os.truncate(tmp, staged.size)
        os.replace(tmp, destination)

    def release(self, staged: StagedFile) -> None:
        """Give the staging space back: close, then unlink (or keep a small segment for reuse)."""
        if staged.fd >= 0:
            os.close(staged.fd)
            staged.fd = -1
        self.files -= 1
        held = max(staged.size, staged.capacity)
        self._account(staged, 0)
        if staged.kind == "shm" and held <= POOL_SEGMENT_MAX and len(self._pool) < POOL_SEGMENTS \
                and self.memory_kept + held <= POOL_BYTES:
            staged.capacity = held
            self.memory_kept += held
            self._pool.append(staged)
            return
        _unlink(staged.path)

    def _reuse(self) -> StagedFile | None:
        """A kept segment, open for writing, or None if it has gone (its memory is then given back)."""
        staged = self._pool.pop()
        self.memory_kept -= staged.capacity
        try:
            staged.fd = os.open(staged.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        staged.size = 0
        self._account(staged, staged.capacity)
        return staged

    def _drain_pool(self) -> None:
        while self._pool:
            staged = self._pool.pop()
            self.memory_kept -= staged.capacity
            _unlink(staged.path)

    def snapshot(self) -> dict:
        return {"memory_used": self.memory_used, "memory_kept": self.memory_kept, "memory_budget": self.memory_budget,
                "spill_used": self.spill_used, "files": self.files}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
