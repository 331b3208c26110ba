"""State writes that wait for disk space instead of crashing the daemon.

Every write of the daemon's state that can meet a full disk — a registry
write (SQLite's FULL), a failed file's kept copy — goes through
:meth:`StateWrites.run`. When one fails for lack of space (ENOSPC, EDQUOT) it
is kept, with every write after it, in order, and retried every second; an
operation must therefore be safe to run again from its start (its registry
writes in one transaction). While writes wait the supervisor pauses intake
(polling goes on, so the group membership stays) and reports the daemon
degraded. Nothing that waits here has released its offsets: a stop or a crash
meanwhile re-reads those files on the next start.
"""

from __future__ import annotations

import errno
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
RETRY_EVERY_S = 1.0


def is_no_space(exc: BaseException) -> bool:
    """True for an error that means "the file system is full"."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def free_bytes(path: Path) -> int | None:
    """Bytes available to this process on the file system holding ``path`` (None if it cannot be told)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_report(directory: Path, waiting_writes: int, since: float, error: str | None) -> dict:
    """The ``disk_full`` part of health and status: where space ran out (``since``: a monotonic time)."""
    return {"directory": str(directory), "free_bytes": free_bytes(directory), "waiting_writes": waiting_writes,
            "since_s": round(time.monotonic() - since, 1), "error": error}


class StateWrites:
    """Writes waiting for space, in the order they were made."""

    def __init__(self, state_dir: Path, retry_every_s: float = RETRY_EVERY_S) -> None:
        self.state_dir = Path(state_dir)
        self.retry_every_s = retry_every_s
        self.waiting: deque[tuple[str, Callable[[], None]]] = deque()
        self.full_since: float | None = None
        self.directory: Path = self.state_dir  # where space ran out
        self.error: str | None = None
        self._next_retry = 0.0

    @property
    def blocked(self) -> bool:
        """True while some write waits for space."""
        return bool(self.waiting)

    def run(self, what: str, op: Callable[[], None]) -> bool:
        """Run ``op`` now, or after the writes already waiting; True when it was done now.

        Errors other than a full disk propagate.
        """
        if self.waiting:
            self.waiting.append((what, op))
            return False
        try:
            op()
            return True
        except OSError as exc:
            if not is_no_space(exc):
                raise
            self.waiting.append((what, op))
            self._full(what, exc)
            return False

    def _full(self, what: str, exc: OSError) -> None:
        where = getattr(exc, "path", None) or exc.filename
        self.directory = Path(where).parent if where else self.state_dir
        self.error = str(exc)
        self._next_retry = time.monotonic() + self.retry_every_s
        if self.full_since is None:
            self.full_since = time.monotonic()
            log.error("no space left for the daemon's state; intake paused, writes wait for space",
                      directory=str(self.directory), write=what, error=str(exc),
                      free_bytes=free_bytes(self.directory))

    def retry(self, now: float | None = None) -> None:
        """Run the waiting writes in order (at most every ``retry_every_s``); stop at one that fails again."""
        now = time.monotonic() if now is None else now
        if not self.waiting or now < self._next_retry:
            return
        done = 0
        while self.waiting:
            what, op = self.waiting[0]
            try:
                op()
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                self._full(what, exc)
                return
            self.waiting.popleft()
            done += 1
        log.info("space is back; state writes done, intake resumes", directory=str(self.directory), writes=done,
                 waited_s=round(now - (self.full_since or now), 1))
        self.full_since = None
        self.error = None

    def describe(self) -> dict | None:
        """For health and status: where space ran out, what is free there, how many writes wait."""
        if not self.waiting:
            return None
        return disk_full_report(self.directory, len(self.waiting), self.full_since or 0.0, self.error)
