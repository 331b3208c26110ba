"""When to stop reading: the workers have enough files waiting.

Files are sharded by path, so a file can only wait for its own worker. Reading
stops when reading more would only lengthen queues: every worker already has
files waiting, or the waiting files hold half the staging memory, or the
queue has reached its hard cap. The file counts scale with how many files a
worker is sent ahead (``in_flight``: more when files are cheap). Reading resumes when some worker is about to
run dry and the waiting files hold less than a quarter of the memory. A single
slow worker therefore does not stall the others until its backlog has grown
to half the staging budget.
"""

from __future__ import annotations

from dataclasses import dataclass

FILES_AHEAD = 3  # a worker with this many files (running + waiting) needs no more
RESUME_AT = 1  # reading resumes once some worker is down to this many
MAX_FILES_PER_WORKER = 16  # hard cap on waiting files (small files hold little memory but cost bookkeeping)


@dataclass(frozen=True)
class Backlog:
    """The files handed to workers and not finished yet."""

    per_worker: tuple[int, ...]  # files running or waiting, per worker slot
    size_bytes: int  # their staged size
    in_flight: int = 1  # files a worker may hold at once (see WorkerPool.in_flight_limit)

    @property
    def files(self) -> int:
        return sum(self.per_worker)


def saturated(backlog: Backlog, memory_budget: int) -> bool:
    """True when reading more would only queue files."""
    if not backlog.per_worker:
        return False
    scale = max(1, backlog.in_flight)
    return (min(backlog.per_worker) >= FILES_AHEAD * scale
            or backlog.size_bytes >= memory_budget // 2
            or backlog.files >= MAX_FILES_PER_WORKER * scale * len(backlog.per_worker))


def drained(backlog: Backlog, memory_budget: int) -> bool:
    """True when reading should resume (with some hysteresis below :func:`saturated`)."""
    if not backlog.per_worker:
        return True
    scale = max(1, backlog.in_flight)
    return (min(backlog.per_worker) <= RESUME_AT * scale
            and backlog.size_bytes < memory_budget // 4
            and backlog.files <= MAX_FILES_PER_WORKER * scale * len(backlog.per_worker) // 2)
